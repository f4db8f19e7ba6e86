//! Many producers racing `close` and eviction: every job is either run exactly once, in order
//! per producer and key, or handed back inside its error. Sized for a 2-core CI; `STRESS_SCALE`
//! multiplies the work for a longer local run.

mod common;

use common::{Job, Recorder, Rng, Watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

fn scale() -> usize {
    std::env::var("STRESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// The idle timeout of a round: the default eviction, or an eager one (a timeout of 1 µs:
/// idle keys are swept whenever a worker has nothing else to do, and evicted once they stayed
/// idle from one sweep to the next), so that eviction races the producers far more often.
fn eviction(rng: &mut Rng) -> Duration {
    if rng.below(2) == 0 {
        Duration::ZERO
    } else {
        Duration::from_micros(1)
    }
}

/// One round: `producers` threads dispatch `per_producer` jobs each over `keys` keys while a
/// closer closes once `close_after` jobs have been accepted.
fn round(seed: u64, producers: usize, per_producer: u64, keys: u64, close_after: usize) {
    let mut rng = Rng::new(seed);
    let recorder = Recorder::new();
    let rec = Arc::clone(&recorder);
    let d = Dispatcher::builder()
        .workers(1 + rng.below(4) as usize)
        .capacity(64 + rng.below(512) as usize)
        .key_capacity(1 + rng.below(8) as usize)
        .jobs_per_turn(1 + rng.below(16) as usize)
        .idle_timeout(eviction(&mut rng))
        .build(move |key: &u64, job: Job| rec.record(key, job))
        .unwrap();
    let accepted_count = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let accepted: Vec<Job> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|producer| {
                let (d, count, finished) = (&d, &accepted_count, &finished);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (producer as u64 + 1) << 32);
                    let mut accepted = Vec::new();
                    for seq in 0..per_producer {
                        let job = Job {
                            producer,
                            key: rng.below(keys),
                            seq,
                        };
                        let result = match rng.below(4) {
                            0 => d.try_dispatch(job.key, job),
                            1 => d.dispatch_timeout(job.key, job, Duration::from_micros(50)),
                            _ => d.dispatch(job.key, job),
                        };
                        match result {
                            Ok(()) => {
                                accepted.push(job);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                let closed = err.is_closed();
                                assert_eq!(err.into_inner(), (job.key, job), "wrong job back");
                                if closed {
                                    // Closed is final: every later dispatch is refused too.
                                    assert!(d.try_dispatch(job.key, job).unwrap_err().is_closed());
                                    break;
                                }
                            }
                        }
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    accepted
                })
            })
            .collect();
        let closer = s.spawn(|| {
            // Refusals can make the threshold unreachable: stop waiting once producers are done.
            while accepted_count.load(Ordering::Relaxed) < close_after
                && finished.load(Ordering::SeqCst) < producers
            {
                std::thread::yield_now();
            }
            d.close()
        });
        let accepted: Vec<Job> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let report = closer.join().unwrap();
        assert!(report.drained);
        accepted
    });
    let stats = d.stats();
    assert_eq!(stats.panicked, 0, "two jobs of a key ran at once");
    assert_eq!(stats.dispatched, accepted.len() as u64);
    assert_eq!((stats.completed, stats.keys), (accepted.len() as u64, 0));
    recorder.check(&accepted);
}

#[test]
fn producers_racing_close_and_eviction_lose_nothing() {
    let _watchdog = Watchdog::new("stress", Duration::from_secs(300));
    let rounds = 8 * scale();
    let per_producer = common::scaled(10_000) as u64;
    for seed in 0..rounds as u64 {
        let total = 8 * per_producer as usize;
        let close_after = Rng::new(seed + 100).below(total as u64) as usize;
        round(seed, 8, per_producer, 1_000, close_after);
    }
}
