//! Clones of a `Dispatcher`: handles on one dispatcher. Any clone dispatches and closes it; only
//! the last clone's drop closes it, draining and joining.

mod common;

use common::{wait_for, wait_threads_gone, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
};

/// A dispatcher of `workers` threads named `name-..` that counts the jobs it ran.
fn counting(name: &str, workers: usize) -> (Dispatcher<u64, u64>, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(workers)
        .name(name)
        .build(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    (d, ran)
}

#[test]
fn clones_dispatch_from_other_threads_in_one_order_per_key() {
    let _watchdog = Watchdog::new("clones dispatch", HANG);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let d = Dispatcher::builder()
        .workers(2)
        .build(move |key: &u64, n: u64| log.lock().unwrap().push((*key, n)))
        .unwrap();
    let producers: Vec<_> = (0..3u64)
        .map(|key| {
            let d = d.clone();
            thread::spawn(move || {
                for n in 0..100 {
                    d.dispatch(key, n).unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let report = d.close();
    assert_eq!(report.stats.completed, 300);
    let seen = seen.lock().unwrap();
    for key in 0..3 {
        let order: Vec<u64> = seen.iter().filter(|j| j.0 == key).map(|j| j.1).collect();
        assert_eq!(
            order,
            (0..100).collect::<Vec<_>>(),
            "key {key} out of order"
        );
    }
}

#[test]
fn dropping_a_clone_leaves_the_dispatcher_open() {
    let _watchdog = Watchdog::new("drop a clone", HANG);
    let (d, ran) = counting("dropclone", 1);
    let other = d.clone();
    other.dispatch(1, 1).unwrap();
    drop(other);
    assert!(!d.is_closed());
    d.dispatch(1, 2).unwrap();
    d.flush_key(&1).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    // A clone dropped on another thread leaves it open too.
    let sent = d.clone();
    thread::spawn(move || sent.dispatch(2, 3).unwrap())
        .join()
        .unwrap();
    assert!(!d.is_closed());
    d.dispatch(2, 4).unwrap();
    let report = d.close();
    assert!(report.drained);
    assert_eq!(report.stats.completed, 4);
}

#[test]
fn dropping_the_last_clone_drains_and_joins() {
    let _watchdog = Watchdog::new("drop the last clone", HANG);
    let (started, job_started) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (started, held) = (Mutex::new(started), Mutex::new(held));
    let finished = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&finished);
    let first = Dispatcher::builder()
        .workers(2)
        .name("lastclone")
        .build(move |_: &u64, n: u64| {
            if n == 0 {
                started.lock().unwrap().send(()).unwrap();
                held.lock().unwrap().recv().unwrap();
                done.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    let last = first.clone();
    let probe = first.group(); // a group does not keep the dispatcher open
    first.dispatch(1, 0).unwrap();
    job_started.recv().unwrap(); // job 0 runs, held on the channel
    drop(first);
    assert!(!last.is_closed(), "a clone was left, yet the drop closed");
    thread::scope(|s| {
        // Release job 0 once the drop below has begun to close: the probe's dispatches are
        // refused from then on.
        s.spawn(|| {
            wait_for(|| probe.try_dispatch(2, 1).is_err_and(|err| err.is_closed()));
            release.send(()).unwrap();
        });
        drop(last);
        assert!(
            finished.load(Ordering::SeqCst),
            "the last clone's drop returned before the held job finished"
        );
    });
    wait_threads_gone("lastclone-");
}

#[test]
fn close_through_one_clone_closes_every_clone() {
    let _watchdog = Watchdog::new("close a clone", HANG);
    let (d, ran) = counting("closeclone", 2);
    let other = d.clone();
    d.dispatch(1, 1).unwrap();
    let report = other.close();
    assert!(report.drained);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(d.is_closed());
    let refused = d.dispatch(1, 2).unwrap_err();
    assert!(refused.is_closed());
    assert_eq!(refused.into_inner(), (1, 2));
    drop(other);
    assert!(d.try_dispatch(3, 3).unwrap_err().is_closed());
    // Closing again through the other clone returns the same counts.
    assert_eq!(d.close().stats.completed, 1);
    wait_threads_gone("closeclone-");
}
