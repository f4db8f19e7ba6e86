//! Producers racing `close` on small queues, with eager eviction in half the rounds, and
//! refused dispatches racing the counters of a closed dispatcher.

use crate::common::{self, wait_threads_gone, Job, Rng};
use crate::{rounds, seed, watchdog, Runs};
use keyed_dispatch::{DispatchError, Dispatcher};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

const RACE_PRODUCERS: usize = 8;
const RACE_KEYS: u64 = 1_000;

/// One round: eight producers dispatch `per_producer` jobs each over 1,000 keys, by every
/// method, into small queues (with eager eviction in half the rounds), while `close`
/// (sometimes two at once) fires once a random number of jobs has been accepted.
fn racing_round(seed: u64, per_producer: u64) {
    let mut rng = Rng::new(seed);
    let workers = 1 + rng.below(3) as usize;
    let capacity = 4 + rng.below(60) as usize;
    let key_capacity = 1 + rng.below(4) as usize;
    let jobs_per_turn = 1 + rng.below(8) as usize;
    let close_after = rng.below(RACE_PRODUCERS as u64 * per_producer + 1) as usize;
    let two_closers = rng.below(2) == 0;
    let runs = Runs::new(RACE_KEYS as usize);
    let log = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .jobs_per_turn(jobs_per_turn)
        // Half the rounds evict eagerly: idle keys are swept whenever a worker has nothing
        // else to do, and go once they stayed idle from one sweep to the next.
        .idle_timeout(if rng.below(2) == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(1)
        })
        .name("race")
        .build(move |key: &u64, job: Job| log.record(*key, job))
        .unwrap();
    let accepted_count = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let (accepted, refused): (Vec<_>, Vec<_>) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..RACE_PRODUCERS)
            .map(|producer| {
                let (d, count, finished) = (&d, &accepted_count, &finished);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let mut accepted = vec![Vec::new(); RACE_KEYS as usize];
                    let mut refused = 0u64;
                    let mut closed = false;
                    for seq in 0..per_producer {
                        let key = rng.below(RACE_KEYS);
                        let job = Job { producer, key, seq };
                        let method = rng.below(8);
                        let result = match method {
                            0 => d.try_dispatch(key, job),
                            1 => d.dispatch_timeout(key, job, Duration::from_micros(rng.below(50))),
                            _ => d.dispatch(key, job),
                        };
                        let err = match result {
                            Ok(()) => {
                                assert!(!closed, "accepted after a Closed refusal");
                                accepted[key as usize].push(seq);
                                count.fetch_add(1, SeqCst);
                                continue;
                            }
                            Err(err) => err,
                        };
                        refused += 1;
                        // Each method refuses only in its own ways, and Closed is final.
                        match (method, &err) {
                            (_, DispatchError::Closed { .. }) => closed = true,
                            (0, DispatchError::Full { .. })
                            | (1, DispatchError::Timeout { .. })
                                if !closed => {}
                            _ => panic!("method {method} refused with {err:?} (closed: {closed})"),
                        }
                        assert_eq!(
                            err.into_inner(),
                            (key, job),
                            "a refusal returned another job"
                        );
                    }
                    finished.fetch_add(1, SeqCst);
                    (accepted, refused)
                })
            })
            .collect();
        let close = || {
            // Refusals can leave the threshold unreached: close anyway once producers are done.
            while accepted_count.load(SeqCst) < close_after
                && finished.load(SeqCst) < RACE_PRODUCERS
            {
                std::thread::yield_now();
            }
            d.close()
        };
        let closers: Vec<_> = (0..1 + two_closers as usize)
            .map(|_| s.spawn(close))
            .collect();
        let results = producers.into_iter().map(|p| p.join().unwrap()).unzip();
        let reports: Vec<_> = closers.into_iter().map(|c| c.join().unwrap()).collect();
        for report in &reports {
            assert!(report.drained, "close returned before draining");
            // Only the drain is compared: refusals go on while the closes return, and may show
            // for a moment in `dispatched` (checked on its own, after close, below).
            assert_eq!(
                report.stats.completed, reports[0].stats.completed,
                "closes saw different drains"
            );
        }
        results
    });
    let accepted_total: usize = accepted.iter().flatten().map(Vec::len).sum();
    let refused_total: u64 = refused.iter().sum();
    let stats = d.stats();
    assert_eq!(stats.dispatched, accepted_total as u64);
    assert_eq!(stats.completed, accepted_total as u64);
    assert_eq!(stats.refused, refused_total);
    assert_eq!((stats.panicked, stats.handed_back), (0, 0));
    assert_eq!(
        (stats.queued, stats.running, stats.blocked, stats.keys),
        (0, 0, 0, 0)
    );
    assert_eq!(runs.count(), accepted_total);
    runs.check(&accepted);
    if !cfg!(miri) {
        wait_threads_gone("race-");
    }
}

#[test]
fn producers_racing_close_on_small_queues_lose_nothing() {
    let _watchdog = watchdog("racing close");
    let seed = seed("racing close");
    let per_producer = common::scaled(100_000) as u64;
    for round in 0..rounds(3) {
        racing_round(seed.wrapping_add(round), per_producer);
    }
}

// ---------------------------------------------------------------------------------------------
// Counters after close

#[test]
fn stats_after_close_stay_exact_while_refused_dispatches_race() {
    let _watchdog = watchdog("stats after close");
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &u64, _: u64| {})
        .unwrap();
    for n in 0..1_000 {
        d.dispatch(n % 10, n).unwrap();
    }
    let report = d.close();
    assert!(report.drained);
    assert_eq!(
        (report.stats.dispatched, report.stats.completed),
        (1_000, 1_000)
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for thread in 0..2u64 {
            let (d, stop) = (&d, &stop);
            s.spawn(move || {
                while !stop.load(SeqCst) {
                    assert!(d.try_dispatch(thread, 0).unwrap_err().is_closed());
                }
            });
        }
        // The dispatcher is closed and drained: a refused dispatch must not show, even for a
        // moment, as a job dispatched and queued.
        let snapshots = common::scaled(100_000);
        let inexact = (0..snapshots)
            .map(|_| d.stats())
            .find(|stats| stats.dispatched != 1_000 || stats.queued != 0);
        stop.store(true, SeqCst);
        assert_eq!(
            inexact, None,
            "a snapshot after close counted a refused dispatch"
        );
    });
}
