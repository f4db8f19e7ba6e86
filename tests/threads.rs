//! However many keys there are, the dispatcher uses exactly its `workers` threads. This file
//! holds one test so that the process's thread count is its own.

mod common;

use common::{thread_count, threads_named, wait_for, Latch, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

#[test]
fn ten_thousand_keys_run_on_the_configured_threads() {
    let _watchdog = Watchdog::new("bounded threads", HANG);
    let before = thread_count();
    let workers = 3;
    let latch = Latch::new();
    let busy = Arc::new(AtomicUsize::new(0));
    let (held, running) = (Arc::clone(&latch), Arc::clone(&busy));
    let d = Dispatcher::builder()
        .workers(workers)
        .name("bounded")
        .build(move |_: &u64, _: u64| {
            running.fetch_add(1, Ordering::SeqCst);
            held.wait();
        })
        .unwrap();
    wait_for(|| threads_named("bounded-") == workers);
    // 10,000 keys, each with a job that blocks until the latch opens: every thread is busy and
    // thousands of keys wait, yet no thread is added.
    let keys = 10_000;
    for key in 0..keys {
        d.dispatch(key, key).unwrap();
    }
    wait_for(|| busy.load(Ordering::SeqCst) == workers);
    assert_eq!(thread_count(), before + workers);
    assert_eq!(d.stats().workers, workers);
    assert!(d.stats().keys > 9_000, "keys waiting: {}", d.stats().keys);
    latch.open();
    d.wait_idle().unwrap();
    assert_eq!(busy.load(Ordering::SeqCst), keys as usize);
    assert_eq!(thread_count(), before + workers);
    // Thread names follow the dispatcher's name.
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("bounded-"))
        .collect();
    names.sort();
    assert_eq!(names, ["bounded-0", "bounded-1", "bounded-2"]);
    d.close();
    // Joined threads may linger in /proc for a moment while the kernel reaps them.
    wait_for(|| thread_count() == before);
}
