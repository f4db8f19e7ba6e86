//! Shared pools: dispatchers of different types run on one `WorkerPool`'s threads only,
//! `max_parallel` caps each one's share, a busy dispatcher cannot starve another, and closing a
//! dispatcher or the pool leaves nothing half done.

mod common;

use common::{threads_named, wait_for, Latch, Watchdog, HANG};
use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
};

fn pool(name: &str, workers: usize) -> WorkerPool {
    WorkerPool::builder()
        .workers(workers)
        .name(name)
        .build()
        .unwrap()
}

// A joined thread leaves /proc a moment after `join` returns, and a new one is named a moment
// after it starts, hence `wait_for` around thread counts.

/// The name of the thread a handler runs on.
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

#[test]
fn dispatchers_of_different_types_run_only_on_the_pool_threads() {
    let _watchdog = Watchdog::new("shared pool threads", HANG);
    let pool = pool("sp-types", 3);
    wait_for(|| threads_named("sp-types-") == 3);
    let names = Arc::new(Mutex::new(HashSet::new()));
    let (seen, bytes) = (Arc::clone(&names), Arc::new(AtomicUsize::new(0)));
    let numbers = Dispatcher::builder()
        .pool(&pool)
        .name("sp-numbers")
        .build(move |_: &u64, text: String| {
            assert!(!text.is_empty());
            seen.lock().unwrap().insert(thread_name());
        })
        .unwrap();
    let (seen, total) = (Arc::clone(&names), Arc::clone(&bytes));
    let blobs = Dispatcher::builder()
        .pool(&pool)
        .name("sp-blobs")
        .build(move |_: &String, blob: Vec<u8>| {
            total.fetch_add(blob.len(), Ordering::SeqCst);
            seen.lock().unwrap().insert(thread_name());
        })
        .unwrap();
    for n in 0..1_000u64 {
        numbers.dispatch(n % 37, n.to_string()).unwrap();
        blobs
            .dispatch(format!("blob-{}", n % 11), vec![0; 3])
            .unwrap();
    }
    numbers.wait_idle().unwrap();
    blobs.wait_idle().unwrap();
    assert_eq!(bytes.load(Ordering::SeqCst), 3_000);
    let names = names.lock().unwrap();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|name| name.starts_with("sp-types-")),
        "handlers ran on {names:?}"
    );
    // No thread of its own for either dispatcher; the pool kept exactly its threads.
    assert_eq!(threads_named("sp-numbers"), 0);
    assert_eq!(threads_named("sp-blobs"), 0);
    assert_eq!(threads_named("sp-types-"), 3);
    assert_eq!((numbers.stats().workers, blobs.stats().workers), (3, 3));
    numbers.close();
    blobs.close();
    assert_eq!(
        threads_named("sp-types-"),
        3,
        "the pool outlives its dispatchers"
    );
    pool.close();
    wait_for(|| threads_named("sp-types-") == 0);
}

#[test]
fn max_parallel_caps_a_dispatchers_concurrent_handlers() {
    let _watchdog = Watchdog::new("max_parallel", HANG);
    let pool = pool("sp-cap", 4);
    let latch = Latch::new();
    let gauge = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (held, now, max) = (Arc::clone(&latch), Arc::clone(&gauge), Arc::clone(&peak));
    let capped = Dispatcher::builder()
        .pool(&pool)
        .max_parallel(2)
        .jobs_per_turn(1)
        .build(move |_: &u64, _: u64| {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(running, Ordering::SeqCst);
            held.wait();
            now.fetch_sub(1, Ordering::SeqCst);
        })
        .unwrap();
    let keys = 100;
    for key in 0..keys {
        capped.dispatch(key, key).unwrap();
    }
    wait_for(|| gauge.load(Ordering::SeqCst) == 2);
    // The two other threads are free although 98 keys of the capped dispatcher are ready: a
    // second dispatcher gets both of them at once.
    let free_latch = Latch::new();
    let free_running = Arc::new(AtomicUsize::new(0));
    let (free_held, free_now) = (Arc::clone(&free_latch), Arc::clone(&free_running));
    let other = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u8, _: u8| {
            free_now.fetch_add(1, Ordering::SeqCst);
            free_held.wait();
        })
        .unwrap();
    other.dispatch(1, 0).unwrap();
    other.dispatch(2, 0).unwrap();
    wait_for(|| free_running.load(Ordering::SeqCst) == 2);
    assert_eq!(gauge.load(Ordering::SeqCst), 2);
    assert_eq!(capped.stats().queued, keys as usize - 2);
    free_latch.open();
    other.wait_idle().unwrap();
    // With all four threads free, the capped dispatcher still runs two keys at a time.
    latch.open();
    capped.wait_idle().unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(capped.stats().completed, keys);
    pool.close();
}

#[test]
fn a_busy_dispatcher_cannot_starve_another_on_the_same_pool() {
    let _watchdog = Watchdog::new("shared pool starvation", HANG);
    // One thread, so that the bound below depends on the order in which the pool hands the
    // thread out, not on how promptly the OS schedules a second thread.
    let pool = pool("sp-starve", 1);
    let latch = Latch::new();
    let busy_done = Arc::new(AtomicU64::new(0));
    let (held, done) = (Arc::clone(&latch), Arc::clone(&busy_done));
    let busy = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u64, _: u64| {
            held.wait();
            done.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let (ran, other_ran) = mpsc::channel();
    let ran = Mutex::new(ran);
    let done = Arc::clone(&busy_done);
    let other = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &&str, _: ()| {
            ran.lock()
                .unwrap()
                .send(done.load(Ordering::SeqCst))
                .unwrap();
        })
        .unwrap();
    // The thread is held by the busy dispatcher, which queues 20,000 jobs on 2,000 keys
    // behind it; only then does the other dispatcher get a job.
    let busy_jobs = 20_000;
    for n in 0..busy_jobs {
        busy.dispatch(n % 2_000, n).unwrap();
    }
    wait_for(|| busy.stats().running == 1);
    other.dispatch("cold", ()).unwrap();
    latch.open();
    let busy_before_other = other_ran.recv().unwrap();
    // The thread finished at most the turn it was in before handing over: a key has 10 jobs.
    assert!(
        busy_before_other <= 10,
        "the other dispatcher waited for {busy_before_other} busy jobs"
    );
    busy.wait_idle().unwrap();
    assert_eq!(busy.stats().completed, busy_jobs);
    pool.close();
}

#[test]
fn closing_one_dispatcher_leaves_the_pool_serving_the_other() {
    let _watchdog = Watchdog::new("shared pool close one", HANG);
    let pool = pool("sp-one", 2);
    wait_for(|| threads_named("sp-one-") == 2);
    let first_ran = Arc::new(AtomicU64::new(0));
    let second_ran = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&first_ran);
    let first = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u64, _: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let counter = Arc::clone(&second_ran);
    let second = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u64, _: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for n in 0..1_000 {
        first.dispatch(n % 10, n).unwrap();
        second.dispatch(n % 10, n).unwrap();
    }
    let report = first.close();
    assert!(report.drained);
    assert_eq!(first_ran.load(Ordering::SeqCst), 1_000);
    assert!(first.dispatch(1, 1).unwrap_err().is_closed());
    assert_eq!(threads_named("sp-one-"), 2, "the pool keeps its threads");
    // The other dispatcher keeps running, old jobs and new.
    let group = second.group();
    for n in 0..1_000 {
        group.dispatch(n % 10, n).unwrap();
    }
    assert_eq!(group.wait().unwrap().completed, 1_000);
    second.wait_idle().unwrap();
    assert_eq!(second_ran.load(Ordering::SeqCst), 2_000);
    // A dispatcher can still be added to the pool.
    let third = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u8, _: u8| {})
        .unwrap();
    third.dispatch(1, 1).unwrap();
    assert_eq!(third.close().stats.completed, 1);
    pool.close();
    assert!(second.is_closed());
    wait_for(|| threads_named("sp-one-") == 0);
}

#[test]
fn pool_close_drains_its_open_dispatchers_then_refuses() {
    let _watchdog = Watchdog::new("pool close drains", HANG);
    let pool = pool("sp-drain", 2);
    let latch = Latch::new();
    let (held, first_ran) = (Arc::clone(&latch), Arc::new(AtomicU64::new(0)));
    let counter = Arc::clone(&first_ran);
    let first = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u64, n: u64| {
            if n == 0 {
                held.wait();
            }
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let second_ran = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&second_ran);
    let second = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &String, _: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let group = second.group();
    let jobs = common::scaled(10_000) as u64;
    for n in 0..jobs {
        first.dispatch(n % 13, n).unwrap();
        group.dispatch(format!("k{}", n % 7), n).unwrap();
    }
    std::thread::scope(|s| {
        // Job 0 of the first dispatcher is still running when the pool begins to close its
        // dispatchers (one after the other, each drained before the next).
        s.spawn(|| {
            wait_for(|| first.is_closed() || second.is_closed());
            latch.open();
        });
        pool.close();
    });
    // Every accepted job ran before close returned, and the threads are joined.
    assert_eq!(first_ran.load(Ordering::SeqCst), jobs);
    assert_eq!(second_ran.load(Ordering::SeqCst), jobs);
    wait_for(|| threads_named("sp-drain-") == 0);
    assert_eq!(group.wait().unwrap().completed, jobs);
    assert_eq!(first.stats().keys, 0);
    let err = first.dispatch(1, 1).unwrap_err();
    assert!(err.is_closed());
    assert_eq!(err.into_inner(), (1, 1));
    assert!(second.try_dispatch("k".into(), 1).unwrap_err().is_closed());
    assert!(group.dispatch("k".into(), 1).unwrap_err().is_closed());
    assert_eq!(
        first.close().stats.completed,
        jobs,
        "close after the pool's"
    );
}

#[test]
fn dropping_the_pool_handle_closes_it_like_close() {
    let _watchdog = Watchdog::new("pool drop", HANG);
    let pool = pool("sp-dropped", 2);
    let ran = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u64, _: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for n in 0..100 {
        d.dispatch(n % 3, n).unwrap();
    }
    drop(pool);
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    assert!(d.is_closed());
    wait_for(|| threads_named("sp-dropped-") == 0);
}

#[test]
fn workers_together_with_a_pool_is_a_build_error() {
    let pool = pool("sp-both", 1);
    let err = Dispatcher::builder()
        .workers(2)
        .pool(&pool)
        .build(|_: &u8, _: u8| {})
        .unwrap_err();
    assert!(matches!(err, BuildError::WorkersWithPool));
    assert_eq!(
        err.to_string(),
        "workers(n) and pool(&pool) cannot both be set on one dispatcher"
    );
    // The order of the two calls does not matter.
    let err = Dispatcher::builder()
        .pool(&pool)
        .workers(1)
        .build(|_: &u8, _: u8| {})
        .unwrap_err();
    assert!(matches!(err, BuildError::WorkersWithPool));
    // Nothing was attached: the pool closes at once.
    pool.close();
    wait_for(|| threads_named("sp-both-") == 0);
}

#[test]
fn building_on_a_closed_pool_fails() {
    let pool = pool("sp-closed", 1);
    pool.close();
    let err = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u8, _: u8| {})
        .unwrap_err();
    assert!(matches!(err, BuildError::PoolClosed));
    assert_eq!(err.to_string(), "the worker pool has been closed");
    // A dispatcher built before the pool closed is closed with it.
    let pool = pool_with_one("sp-closed2");
    assert!(pool.1.is_closed());
    assert!(pool.1.dispatch(1, 1).unwrap_err().is_closed());
}

/// A pool with one dispatcher, after the pool was closed.
fn pool_with_one(name: &str) -> (WorkerPool, Dispatcher<u8, u8>) {
    let pool = pool(name, 1);
    let d = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u8, _: u8| {})
        .unwrap();
    pool.close();
    (pool, d)
}
