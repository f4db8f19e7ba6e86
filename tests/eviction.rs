//! Idle keys leave the map: memory follows the live keys. A dispatch racing its key's eviction is
//! neither lost nor reordered.

mod common;

use common::{wait_for, Job, Recorder, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::{
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

#[test]
fn idle_keys_are_evicted_to_zero() {
    let _watchdog = Watchdog::new("evict to zero", HANG);
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &u64, _: u64| {})
        .unwrap();
    let keys = common::scaled(10_000) as u64;
    for key in 0..keys {
        d.dispatch(key, key).unwrap();
        d.dispatch(key, key + 1).unwrap();
    }
    d.wait_idle().unwrap();
    let stats = d.stats();
    assert_eq!(stats.keys, 0, "keys held after wait_idle");
    assert_eq!(
        (stats.completed, stats.queued, stats.running),
        (2 * keys, 0, 0)
    );
    // A second wave reuses nothing and leaves nothing.
    for key in 0..keys {
        d.dispatch(key, 0).unwrap();
    }
    d.wait_idle().unwrap();
    assert_eq!(d.stats().keys, 0);
}

/// A key that owns a resource: equal and hashed by its id, holding a share of a token (only
/// for its drop).
#[derive(Debug, Clone)]
struct Owning {
    id: u64,
    _token: Arc<()>,
}

impl PartialEq for Owning {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Owning {}

impl std::hash::Hash for Owning {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

#[test]
fn an_evicted_key_is_dropped_not_kept_with_its_mailbox() {
    let _watchdog = Watchdog::new("evicted keys dropped", HANG);
    let token = Arc::new(());
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &Owning, _: u64| {})
        .unwrap();
    // Waves of fresh keys, so that later waves reuse the mailboxes the earlier ones left.
    for wave in 0..3 {
        for id in 0..common::scaled(5_000) as u64 {
            let key = Owning {
                id: wave * 1_000_000 + id,
                _token: Arc::clone(&token),
            };
            d.dispatch(key, id).unwrap();
        }
        d.wait_idle().unwrap();
        assert_eq!(d.stats().keys, 0);
        assert_eq!(
            Arc::strong_count(&token),
            1,
            "wave {wave}: keys outlived their eviction"
        );
    }
    d.close();
}

#[test]
fn memory_follows_live_keys_while_busy() {
    let _watchdog = Watchdog::new("bounded idle keys", HANG);
    // One key stays busy for the whole test while a hundred thousand fresh keys go idle
    // faster than the sweep timer comes round: the idle list is swept once it is long.
    let (release, hold) = mpsc::channel::<()>();
    let hold = Mutex::new(hold);
    let d = Dispatcher::builder()
        .workers(2)
        .build(move |key: &u64, _: ()| {
            if *key == u64::MAX {
                hold.lock().unwrap().recv().unwrap();
            }
        })
        .unwrap();
    d.dispatch(u64::MAX, ()).unwrap();
    let keys = common::scaled(100_000) as u64;
    for key in 0..keys {
        d.dispatch(key, ()).unwrap();
    }
    wait_for(|| d.stats().completed == keys);
    let held = d.stats().keys;
    assert!(
        held <= 5_000,
        "{held} keys held while idle keys should be swept in bulk"
    );
    release.send(()).unwrap();
    d.wait_idle().unwrap();
    assert_eq!(d.stats().keys, 0);
}

#[test]
fn dispatch_racing_eviction_keeps_order() {
    let _watchdog = Watchdog::new("eviction race", HANG);
    // Few jobs per key, and eager eviction (idle keys are swept whenever a worker has nothing
    // else to do), so that keys go idle, get evicted and are re-created all the time while two
    // producers keep dispatching on them.
    let recorder = Recorder::new();
    let rec = Arc::clone(&recorder);
    let d = Dispatcher::builder()
        .workers(3)
        .jobs_per_turn(1)
        .idle_timeout(Duration::from_micros(1))
        .build(move |key: &u64, job: Job| rec.record(key, job))
        .unwrap();
    let per_producer = common::scaled(100_000) as u64;
    let accepted: Vec<Job> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|producer| {
                let d = &d;
                s.spawn(move || {
                    let mut rng = common::Rng::new(producer as u64 + 1);
                    let mut sent = Vec::new();
                    for seq in 0..per_producer {
                        let job = Job {
                            producer,
                            key: rng.below(64),
                            seq,
                        };
                        d.dispatch(job.key, job).unwrap();
                        sent.push(job);
                        if seq % 64 == 0 {
                            // Let the workers catch up so that keys go idle.
                            std::thread::yield_now();
                        }
                    }
                    sent
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let report = d.close();
    assert_eq!(report.stats.panicked, 0);
    assert_eq!(report.stats.keys, 0);
    recorder.check(&accepted);
}

#[test]
fn idle_keys_are_evicted_without_waiting_once_the_dispatcher_is_quiet() {
    let _watchdog = Watchdog::new("eviction by the sweep timer", HANG);
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &u64, _: ()| {})
        .unwrap();
    let keys = common::scaled(1_000) as u64;
    for key in 0..keys {
        d.dispatch(key, ()).unwrap();
    }
    wait_for(|| d.stats().completed == keys);
    // No `wait_idle`: the periodic sweep alone evicts them.
    wait_for(|| d.stats().keys == 0);
    assert_eq!(d.close().stats.completed, keys);
}

#[test]
fn idle_timeout_keeps_a_key_until_it_expires() {
    let _watchdog = Watchdog::new("idle timeout", HANG);
    let timeout = Duration::from_millis(50);
    let d = Dispatcher::builder()
        .workers(1)
        .idle_timeout(timeout)
        .build(|_: &u8, _: ()| {})
        .unwrap();
    let start = Instant::now();
    d.dispatch(1, ()).unwrap();
    d.wait_idle().unwrap();
    // The job ran; the key stays until the timeout has passed. The count is read before the
    // clock, so that an eviction between the two cannot be taken for an early one.
    let keys = d.stats().keys;
    if start.elapsed() < timeout {
        assert_eq!(keys, 1, "evicted before its idle timeout");
    }
    wait_for(|| d.stats().keys == 0);
    assert!(
        start.elapsed() >= timeout,
        "evicted before its idle timeout"
    );
    // A key coming back after eviction gets a fresh entry and runs.
    d.dispatch(1, ()).unwrap();
    assert_eq!(d.close().stats.completed, 2);
}
