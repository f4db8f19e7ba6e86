//! Shutdown: `close` drains and joins, idempotently and from any thread; later dispatches come
//! back `Closed`; a handler may close its own dispatcher; dropping drains; `close_now` hands
//! back every job that had not started, per key in order.

mod common;

use common::{threads_named, wait_for, wait_threads_gone, Latch, Watchdog, HANG};
use keyed_dispatch::{Dispatcher, WaitError};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, Arc, Mutex, Weak,
};

/// A dispatcher that counts the jobs it ran.
fn counting(name: &str, workers: usize) -> (Dispatcher<u64, u64>, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(workers)
        .name(name)
        .build(move |_: &u64, _: u64| {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    (d, ran)
}

#[test]
fn close_runs_every_accepted_job_then_refuses_with_the_job() {
    let _watchdog = Watchdog::new("close drains", HANG);
    let (d, ran) = counting("drain", 2);
    let jobs = common::scaled(100_000) as u64;
    for n in 0..jobs {
        d.dispatch(n % 1000, n).unwrap();
    }
    let report = d.close();
    assert!(report.drained);
    assert_eq!(ran.load(Ordering::SeqCst), jobs);
    assert_eq!((report.stats.completed, report.stats.keys), (jobs, 0));
    wait_threads_gone("drain-");
    let err = d.dispatch(3, 42).unwrap_err();
    assert!(err.is_closed());
    assert_eq!(err.into_inner(), (3, 42));
    assert!(d.try_dispatch(3, 43).unwrap_err().is_closed());
    assert!(d.is_closed());
}

#[test]
fn concurrent_closes_all_wait_for_the_same_drain() {
    let _watchdog = Watchdog::new("concurrent close", HANG);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let d = Dispatcher::builder()
        .workers(2)
        .name("twice")
        .build(move |_: &u64, n: u64| {
            if n == 0 {
                held.wait();
            }
        })
        .unwrap();
    for n in 0..100 {
        d.dispatch(n % 3, n).unwrap();
    }
    let reports: Vec<_> = std::thread::scope(|s| {
        let closers: Vec<_> = (0..4).map(|_| s.spawn(|| d.close())).collect();
        wait_for(|| d.is_closed());
        latch.open();
        closers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for report in reports {
        assert!(report.drained);
        assert_eq!(report.stats.completed, 100);
    }
    wait_threads_gone("twice-");
    assert_eq!(
        d.close().stats.completed,
        100,
        "a later close returns the same"
    );
}

#[test]
fn close_from_a_handler_stops_accepting_without_deadlock() {
    let _watchdog = Watchdog::new("close in handler", HANG);
    let me: Arc<Mutex<Weak<Dispatcher<u64, u64>>>> = Arc::default();
    let (reports, closed_in_handler) = mpsc::channel();
    let reports = Mutex::new(reports);
    let ran = Arc::new(AtomicU64::new(0));
    let (handle, r) = (Arc::clone(&me), Arc::clone(&ran));
    let d = Arc::new(
        Dispatcher::builder()
            .workers(2)
            .name("selfclose")
            .build(move |_: &u64, n: u64| {
                r.fetch_add(1, Ordering::SeqCst);
                if n == 50 {
                    let d = handle.lock().unwrap().upgrade().unwrap();
                    let report = d.close();
                    let refused = d.dispatch(9, 1000).unwrap_err();
                    reports
                        .lock()
                        .unwrap()
                        .send((report, refused.is_closed()))
                        .unwrap();
                }
            })
            .unwrap(),
    );
    *me.lock().unwrap() = Arc::downgrade(&d);
    let mut accepted = 0;
    for n in 0..100 {
        if d.dispatch(n % 4, n).is_ok() {
            accepted += 1;
        }
    }
    let (report, refused_closed) = closed_in_handler.recv().unwrap();
    assert!(!report.drained, "close in a handler cannot have waited");
    assert!(refused_closed);
    let report = d.close();
    assert!(report.drained);
    assert_eq!(ran.load(Ordering::SeqCst), accepted);
    assert_eq!(report.stats.completed, accepted);
    wait_threads_gone("selfclose-");
}

#[test]
fn dropping_without_close_runs_every_accepted_job_and_joins() {
    let _watchdog = Watchdog::new("drop drains", HANG);
    let (d, ran) = counting("dropped", 3);
    let jobs = common::scaled(50_000) as u64;
    for n in 0..jobs {
        d.dispatch(n % 100, n).unwrap();
    }
    drop(d);
    assert_eq!(ran.load(Ordering::SeqCst), jobs);
    wait_threads_gone("dropped-");
}

#[test]
fn dropping_the_last_handle_inside_a_handler_still_runs_every_job() {
    let _watchdog = Watchdog::new("drop in handler", HANG);
    type Slot = Mutex<Option<Arc<Dispatcher<u64, u64>>>>;
    let me: Arc<Slot> = Arc::default();
    let handed_over = Latch::new();
    let ran = Arc::new(AtomicU64::new(0));
    let (handle, over, r) = (Arc::clone(&me), Arc::clone(&handed_over), Arc::clone(&ran));
    let d = Arc::new(
        Dispatcher::builder()
            .workers(2)
            .name("lastdrop")
            .build(move |_: &u64, n: u64| {
                r.fetch_add(1, Ordering::SeqCst);
                if n == 10 {
                    // Job 10 may start before the test has let go of its handle: wait for
                    // that, then take the only handle left and drop it here, on a worker
                    // thread.
                    over.wait();
                    drop(
                        handle
                            .lock()
                            .unwrap()
                            .take()
                            .expect("the handle was handed over"),
                    );
                }
            })
            .unwrap(),
    );
    for n in 0..100 {
        d.dispatch(n % 5, n).unwrap();
    }
    *me.lock().unwrap() = Some(d);
    handed_over.open();
    // The handler drops the last handle; every accepted job still runs and the threads exit.
    wait_for(|| ran.load(Ordering::SeqCst) == 100 && threads_named("lastdrop-") == 0);
}

#[test]
fn close_now_hands_back_unstarted_jobs_per_key_in_order() {
    let _watchdog = Watchdog::new("close_now", HANG);
    let latch = Latch::new();
    let (started, first_started) = mpsc::channel();
    let started = Mutex::new(started);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (held, r) = (Arc::clone(&latch), Arc::clone(&ran));
    let d = Dispatcher::builder()
        .workers(2)
        .name("closenow")
        .build(move |key: &u64, n: u64| {
            if n == 0 {
                started.lock().unwrap().send(*key).unwrap();
                held.wait();
            }
            r.lock().unwrap().push((*key, n));
        })
        .unwrap();
    // Keys 0 and 1 each start a job that holds its thread; then every key gets more jobs.
    d.dispatch(0, 0).unwrap();
    d.dispatch(1, 0).unwrap();
    first_started.recv().unwrap();
    first_started.recv().unwrap();
    let keys = 10u64;
    for n in 1..=100 {
        for key in 0..keys {
            d.dispatch(key, n).unwrap();
        }
    }
    let left = std::thread::scope(|s| {
        s.spawn(|| {
            wait_for(|| d.is_closed());
            latch.open();
        });
        d.close_now().unwrap()
    });
    // The two held jobs ran; nothing else could start after close_now began.
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 2, "jobs started after close_now: {ran:?}");
    let mut keys_back: Vec<u64> = left.iter().map(|(key, _)| *key).collect();
    keys_back.sort_unstable();
    assert_eq!(keys_back, (0..keys).collect::<Vec<_>>());
    for (key, jobs) in &left {
        assert_eq!(*jobs, (1..=100).collect::<Vec<_>>(), "key {key}");
    }
    let stats = d.stats();
    assert_eq!(
        (stats.handed_back, stats.completed, stats.keys),
        (1000, 2, 0)
    );
    wait_threads_gone("closenow-");
    assert!(d.dispatch(0, 1).unwrap_err().is_closed());
    assert_eq!(
        d.close_now().unwrap(),
        [],
        "a second close_now has nothing left"
    );
}

#[test]
fn waits_from_a_handler_refuse_instead_of_deadlocking() {
    let _watchdog = Watchdog::new("waits in handler", HANG);
    let me: Arc<Mutex<Weak<Dispatcher<u8, u8>>>> = Arc::default();
    let (results, outcomes) = mpsc::channel();
    let results = Mutex::new(results);
    let handle = Arc::clone(&me);
    let d = Arc::new(
        Dispatcher::builder()
            .workers(1)
            .build(move |_: &u8, _: u8| {
                let d = handle.lock().unwrap().upgrade().unwrap();
                let idle = d.wait_idle();
                let now = d.close_now().map(|left| left.len());
                results.lock().unwrap().send((idle, now)).unwrap();
            })
            .unwrap(),
    );
    *me.lock().unwrap() = Arc::downgrade(&d);
    d.dispatch(1, 1).unwrap();
    assert_eq!(
        outcomes.recv().unwrap(),
        (Err(WaitError::WouldDeadlock), Err(WaitError::WouldDeadlock))
    );
    assert!(!d.is_closed(), "a refused close_now changes nothing");
    d.dispatch(1, 2).unwrap();
    assert_eq!(
        outcomes.recv().unwrap(),
        (Err(WaitError::WouldDeadlock), Err(WaitError::WouldDeadlock))
    );
    assert_eq!(d.close().stats.completed, 2);
}

#[test]
fn dispatches_after_close_all_come_back() {
    let _watchdog = Watchdog::new("after close", HANG);
    let (d, ran) = counting("afterclose", 1);
    d.close();
    let attempts = common::scaled(1_000_000) as u64;
    for n in 0..attempts {
        let (key, job) = d.dispatch(n, n).unwrap_err().into_inner();
        assert_eq!((key, job), (n, n));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(d.stats().refused, attempts);
}
