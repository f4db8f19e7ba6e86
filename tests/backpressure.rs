//! Capacity: a full key or dispatcher blocks `dispatch`, refuses `try_dispatch` with `Full` (saying
//! which bound it reached) and `dispatch_timeout` with `Timeout`, each handing the exact job back.
//! A capacity counts the jobs that wait, not the ones running. Dispatching from a handler into a
//! full queue refuses instead of deadlocking; `close` wakes every blocked producer at once.

mod common;

use common::{wait_for, Latch, Watchdog, HANG};
use keyed_dispatch::{Bound, DispatchError, Dispatcher};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    time::Duration,
};

/// A dispatcher whose handler holds every job until `latch` opens, reporting each start.
fn held(
    latch: &Arc<Latch>,
    builder: keyed_dispatch::Builder<u32, u32>,
) -> (Dispatcher<u32, u32>, mpsc::Receiver<(u32, u32)>) {
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let latch = Arc::clone(latch);
    let d = builder
        .build(move |key: &u32, job: u32| {
            started.lock().unwrap().send((*key, job)).unwrap();
            latch.wait();
        })
        .unwrap();
    (d, starts)
}

#[test]
fn full_key_blocks_dispatch_until_its_job_finishes() {
    let _watchdog = Watchdog::new("blocks", HANG);
    let latch = Latch::new();
    let (d, starts) = held(&latch, Dispatcher::builder().workers(2).key_capacity(1));
    d.dispatch(7, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), (7, 0));
    d.dispatch(7, 1).unwrap(); // waits behind the running job
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            d.dispatch(7, 2).unwrap();
            returned.store(true, Ordering::SeqCst);
        });
        wait_for(|| d.stats().blocked == 1);
        assert!(
            !returned.load(Ordering::SeqCst),
            "dispatch returned on a full key"
        );
        // Other keys are not held back by the full one.
        d.try_dispatch(8, 0).unwrap();
        assert_eq!(starts.recv().unwrap(), (8, 0));
        latch.open();
    });
    assert!(returned.load(Ordering::SeqCst));
    assert_eq!(d.close().stats.completed, 4);
}

#[test]
fn try_dispatch_on_a_full_key_hands_the_job_back() {
    let _watchdog = Watchdog::new("try full", HANG);
    let latch = Latch::new();
    let (d, starts) = held(&latch, Dispatcher::builder().workers(1).key_capacity(1));
    d.dispatch(1, 10).unwrap();
    starts.recv().unwrap();
    d.try_dispatch(1, 11).unwrap();
    let err = d.try_dispatch(1, 12).unwrap_err();
    assert_eq!(err.bound(), Some(Bound::Key));
    assert_eq!(err.to_string(), "dispatching on a full key");
    match err {
        DispatchError::Full {
            key: 1,
            job: 12,
            bound: Bound::Key,
        } => {}
        other => panic!("expected Full(1, 12), got {other:?}"),
    }
    let stats = d.stats();
    assert_eq!((stats.refused, stats.dispatched), (1, 2));
    latch.open();
    d.close();
}

#[test]
fn dispatch_timeout_on_a_full_key_times_out_with_the_job() {
    let _watchdog = Watchdog::new("timeout", HANG);
    let latch = Latch::new();
    let (d, starts) = held(&latch, Dispatcher::builder().workers(1).key_capacity(0));
    d.dispatch(1, 10).unwrap();
    starts.recv().unwrap();
    let err = d
        .dispatch_timeout(1, 11, Duration::from_millis(20))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.into_inner(), (1, 11));
    latch.open();
    // With room, the same call succeeds.
    d.dispatch_timeout(1, 12, Duration::from_secs(30)).unwrap();
    assert_eq!(d.close().stats.completed, 2);
}

#[test]
fn full_dispatcher_refuses_other_keys_too() {
    let _watchdog = Watchdog::new("global full", HANG);
    let latch = Latch::new();
    let (d, starts) = held(&latch, Dispatcher::builder().workers(1).capacity(1));
    d.dispatch(1, 0).unwrap();
    starts.recv().unwrap();
    d.dispatch(2, 0).unwrap(); // waits: the running job does not count
    let full = d.try_dispatch(3, 0).unwrap_err();
    assert_eq!(full.bound(), Some(Bound::Dispatcher));
    assert_eq!(full.to_string(), "dispatching on a full dispatcher");
    let err = d
        .dispatch_timeout(3, 0, Duration::from_millis(10))
        .unwrap_err();
    assert!(err.is_timeout());
    std::thread::scope(|s| {
        let blocked = s.spawn(|| d.dispatch(3, 1));
        wait_for(|| d.stats().blocked == 1);
        latch.open();
        blocked.join().unwrap().unwrap();
    });
    assert_eq!(d.close().stats.completed, 3);
}

#[test]
fn close_wakes_producers_blocked_on_a_full_dispatcher() {
    let _watchdog = Watchdog::new("close wakes", HANG);
    let latch = Latch::new();
    let (d, starts) = held(&latch, Dispatcher::builder().workers(1).capacity(0));
    d.dispatch(1, 0).unwrap();
    starts.recv().unwrap();
    let d = &d;
    std::thread::scope(|s| {
        let blocked: Vec<_> = (0..4)
            .map(|i| s.spawn(move || (i, d.dispatch(2, i))))
            .collect();
        wait_for(|| d.stats().blocked == 4);
        let closer = s.spawn(|| d.close());
        for handle in blocked {
            let (i, result) = handle.join().unwrap();
            let err = result.expect_err("dispatched after close began");
            assert!(err.is_closed());
            assert_eq!(err.into_inner(), (2, i));
        }
        latch.open();
        assert_eq!(closer.join().unwrap().stats.completed, 1);
    });
}

#[test]
fn dispatch_from_a_handler_into_its_own_full_key_refuses_instead_of_deadlocking() {
    let _watchdog = Watchdog::new("re-entrant full", HANG);
    let (results, outcomes) = mpsc::channel();
    let results = Mutex::new(results);
    let me: Arc<Mutex<Weak<Dispatcher<u8, u32>>>> = Arc::default();
    let handle = Arc::clone(&me);
    let d = Arc::new(
        Dispatcher::builder()
            .workers(1)
            .key_capacity(0)
            .build(move |key: &u8, job: u32| {
                if job == 0 {
                    let d = handle.lock().unwrap().upgrade().unwrap();
                    // The running job fills the key's only slot.
                    let refused = d.dispatch(*key, 1).unwrap_err();
                    results.lock().unwrap().send(refused.into_inner()).unwrap();
                }
            })
            .unwrap(),
    );
    *me.lock().unwrap() = Arc::downgrade(&d);
    d.dispatch(5, 0).unwrap();
    assert_eq!(outcomes.recv().unwrap(), (5, 1));
    assert_eq!(d.close().stats.refused, 1);
}

/// A dispatcher on one worker with room for `capacity` jobs, whose handler reports each start
/// and holds key 1's jobs until `first` opens and key 2's until `second` does.
fn one_worker_holding_keys_1_and_2(
    capacity: usize,
) -> (
    Dispatcher<u32, u32>,
    mpsc::Receiver<u32>,
    Arc<Latch>,
    Arc<Latch>,
) {
    let (first, second) = (Latch::new(), Latch::new());
    let (held_first, held_second) = (Arc::clone(&first), Arc::clone(&second));
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let d = Dispatcher::builder()
        .workers(1)
        .capacity(capacity)
        .build(move |key: &u32, _: u32| {
            started.lock().unwrap().send(*key).unwrap();
            match key {
                1 => held_first.wait(),
                2 => held_second.wait(),
                _ => {}
            }
        })
        .unwrap();
    (d, starts, first, second)
}

#[test]
fn jobs_finished_on_a_busy_worker_make_room_at_once() {
    let _watchdog = Watchdog::new("finished room", HANG);
    let (d, starts, first, second) = one_worker_holding_keys_1_and_2(5);
    // Key 1's job holds the only worker while key 0's three jobs and key 2's are queued, so
    // that key 0 runs them in one turn and the worker goes straight on to key 2, which holds it.
    d.try_dispatch(1, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), 1);
    for job in 0..3 {
        d.try_dispatch(0, job).unwrap();
    }
    d.try_dispatch(2, 0).unwrap();
    first.open();
    wait_for(|| {
        let stats = d.stats();
        stats.completed == 4 && stats.running + stats.queued == 1
    });
    // Key 2's job runs and does not count: five dispatches find room, and no more.
    let tries: Vec<_> = (3..9).map(|job| d.try_dispatch(0, job)).collect();
    second.open();
    assert!(tries[..5].iter().all(Result::is_ok), "{tries:?}");
    assert!(matches!(
        tries[5],
        Err(DispatchError::Full {
            key: 0,
            job: 8,
            bound: Bound::Dispatcher
        })
    ));
    assert_eq!(d.close().stats.completed, 10);
}

#[test]
fn a_blocked_producer_gets_the_room_of_a_job_that_finished_on_a_busy_worker() {
    let _watchdog = Watchdog::new("blocked room", HANG);
    let (d, starts, first, second) = one_worker_holding_keys_1_and_2(1);
    d.dispatch(1, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), 1);
    d.dispatch(2, 0).unwrap();
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            d.dispatch(3, 0).unwrap();
            returned.store(true, Ordering::SeqCst);
        });
        wait_for(|| d.stats().blocked == 1);
        // Key 1's job finishes; the worker goes on to key 2's, which holds it: the room key 1's
        // job left must reach the blocked producer now, not when the worker is free again.
        first.open();
        assert_eq!(starts.recv().unwrap(), 2);
        wait_for(|| returned.load(Ordering::SeqCst));
        second.open();
    });
    assert_eq!(d.close().stats.completed, 3);
}

#[test]
fn close_wakes_producers_blocked_on_a_full_key_at_once() {
    let _watchdog = Watchdog::new("close wakes key", HANG);
    // The running job of key 1 waits until the producer blocked on key 1 has returned: only a
    // close that wakes that producer at once lets either finish.
    let (returned_tx, returned_rx) = mpsc::channel::<()>();
    let returned_rx = Mutex::new(returned_rx);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let d = Dispatcher::builder()
        .workers(1)
        .key_capacity(0)
        .build(move |_: &u32, job: u32| {
            started.lock().unwrap().send(job).unwrap();
            if job == 0 {
                returned_rx.lock().unwrap().recv().unwrap();
            }
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), 0);
    let d = &d;
    std::thread::scope(|s| {
        let blocked = s.spawn(move || {
            let result = d.dispatch(1, 1);
            returned_tx.send(()).unwrap();
            result
        });
        wait_for(|| d.stats().blocked == 1);
        let report = d.close();
        let err = blocked.join().unwrap().unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(err.into_inner(), (1, 1));
        assert_eq!(report.stats.completed, 1);
    });
}
