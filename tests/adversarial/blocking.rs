//! Backpressure: producers blocked on full keys and on a full dispatcher while `close` runs,
//! scripted and in seeded races with the release of the handlers that hold their keys.

use crate::common::{wait_for, wait_threads_gone, Job, Latch, Rng};
use crate::{rounds, seed, watchdog, Runs};
use keyed_dispatch::Dispatcher;
use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

/// A dispatcher whose handler reports each start and then waits for `latch`.
fn held_dispatcher(
    latch: &Arc<Latch>,
    name: &str,
    workers: usize,
    capacity: usize,
    key_capacity: usize,
) -> (Dispatcher<u64, u64>, mpsc::Receiver<u64>) {
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let latch = Arc::clone(latch);
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .name(name)
        .build(move |key: &u64, _: u64| {
            started.lock().unwrap().send(*key).unwrap();
            latch.wait();
        })
        .unwrap();
    (d, starts)
}

#[test]
fn close_returns_sixteen_producers_blocked_on_full_keys_and_a_full_dispatcher() {
    let _watchdog = watchdog("blocked on close");
    let latch = Latch::new();
    // Eight jobs at most: two running, six waiting; one per key.
    let (d, starts) = held_dispatcher(&latch, "bpclose", 2, 6, 0);
    // Keys 0 and 1 hold both threads; keys 2 to 5 wait behind them, one job each.
    for key in 0..6 {
        d.dispatch(key, 0).unwrap();
    }
    let mut started = [starts.recv().unwrap(), starts.recv().unwrap()];
    started.sort_unstable();
    assert_eq!(started, [0, 1]);
    let d = &d;
    std::thread::scope(|s| {
        // Eight producers blocked on full keys...
        let on_keys: Vec<_> = (0..8u64)
            .map(|i| s.spawn(move || (i % 6, 100 + i, d.dispatch(i % 6, 100 + i))))
            .collect();
        wait_for(|| d.stats().blocked == 8);
        // ...then the dispatcher fills up, and eight more block on it.
        d.dispatch(6, 0).unwrap();
        d.dispatch(7, 0).unwrap();
        let on_dispatcher: Vec<_> = (0..8u64)
            .map(|i| s.spawn(move || (10 + i, 200 + i, d.dispatch(10 + i, 200 + i))))
            .collect();
        wait_for(|| d.stats().blocked == 16);
        let closer = s.spawn(|| d.close());
        // Those waiting for room in the dispatcher get their jobs back at once, while every
        // accepted job is still held.
        for producer in on_dispatcher {
            let (key, job, result) = producer.join().unwrap();
            let err = result.expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (key, job));
        }
        assert!(
            !closer.is_finished(),
            "close returned before the held jobs ran"
        );
        // Those waiting on a full key get theirs back when the key's job finishes.
        latch.open();
        for producer in on_keys {
            let (key, job, result) = producer.join().unwrap();
            let err = result.expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (key, job));
        }
        let report = closer.join().unwrap();
        assert!(report.drained);
        assert_eq!((report.stats.completed, report.stats.keys), (8, 0));
    });
    // Read once every producer has returned: close's own report may predate the last
    // refusals, since a producer woken by the drain is refused after it.
    let stats = d.stats();
    assert_eq!((stats.completed, stats.refused, stats.blocked), (8, 16, 0));
    if !cfg!(miri) {
        wait_threads_gone("bpclose-");
    }
}

/// One round: sixteen producers dispatch (blocking) until every one of them is blocked on a
/// full key or a full dispatcher, behind handlers held by a latch; then `close` and the latch's
/// release race in a random order.
fn blocked_round(seed: u64) {
    const PRODUCERS: usize = 16;
    let mut rng = Rng::new(seed);
    let workers = 1 + rng.below(3) as usize;
    let key_capacity = rng.below(2) as usize;
    let capacity = key_capacity + rng.below(8) as usize;
    let keys = 1 + rng.below(6);
    let order = rng.below(3);
    let latch = Latch::new();
    let runs = Runs::new(keys as usize);
    let (held, log) = (Arc::clone(&latch), Arc::clone(&runs));
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .name("bprace")
        .build(move |key: &u64, job: Job| {
            held.wait();
            log.record(*key, job);
        })
        .unwrap();
    let d = &d;
    let accepted: Vec<_> = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let mut accepted = vec![Vec::new(); keys as usize];
                    for seq in 0.. {
                        let key = rng.below(keys);
                        let job = Job { producer, key, seq };
                        let result = if rng.below(4) == 0 {
                            d.dispatch_timeout(key, job, Duration::from_secs(3600))
                        } else {
                            d.dispatch(key, job)
                        };
                        match result {
                            Ok(()) => accepted[key as usize].push(seq),
                            Err(err) => {
                                assert!(err.is_closed(), "a blocking dispatch gave {err:?}");
                                assert_eq!(err.into_inner(), (key, job));
                                break;
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        // Nothing finishes while the latch holds, so every producer ends up blocked.
        wait_for(|| d.stats().blocked == PRODUCERS);
        let closer = match order {
            0 => {
                let closer = s.spawn(|| d.close());
                wait_for(|| d.is_closed());
                latch.open();
                closer
            }
            1 => {
                latch.open();
                s.spawn(|| d.close())
            }
            _ => {
                let closer = s.spawn(|| d.close());
                s.spawn(|| latch.open());
                closer
            }
        };
        let accepted = producers.into_iter().map(|p| p.join().unwrap()).collect();
        let report = closer.join().unwrap();
        assert!(report.drained);
        accepted
    });
    let accepted_total: usize = accepted.iter().flatten().map(Vec::len).sum();
    let stats = d.stats();
    assert_eq!(
        (stats.completed, stats.dispatched),
        (accepted_total as u64, accepted_total as u64)
    );
    assert_eq!(
        stats.refused, PRODUCERS as u64,
        "one Closed refusal per producer"
    );
    assert_eq!((stats.blocked, stats.keys), (0, 0));
    runs.check(&accepted);
}

#[test]
fn sixteen_blocked_producers_race_close_and_the_release_of_their_keys() {
    let _watchdog = watchdog("blocked producers race close");
    let seed = seed("blocked producers race close");
    for round in 0..rounds(30) {
        blocked_round(seed.wrapping_add(round));
    }
    if !cfg!(miri) {
        wait_threads_gone("bprace-");
    }
}
