//! `pin_workers`: each worker thread runs only on the CPU planned for it, and pinning leaves
//! the thread that built the pool as it was. Where pinning is not offered, `tests/config.rs`
//! checks that it is refused.
#![cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]

mod common;

use common::{wait_for, Latch, Watchdog, HANG};
use keyed_dispatch::{Dispatcher, WorkerPool};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    thread,
};

/// The CPUs the calling thread may run on.
fn allowed() -> Vec<usize> {
    let cpus = core_affinity::get_core_ids().expect("this platform lists a thread's CPUs");
    cpus.into_iter().map(|cpu| cpu.id).collect()
}

/// Runs one blocking job on each of `workers` keys, so that every worker holds one, and
/// returns the CPUs each worker thread (by name) may run on.
fn cpus_of_workers(
    workers: usize,
    build: impl FnOnce(Box<dyn Fn(&usize, ()) + Send + Sync>) -> Dispatcher<usize, ()>,
) -> BTreeMap<String, Vec<usize>> {
    let latch = Latch::new();
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let (held, saw) = (Arc::clone(&latch), Arc::clone(&seen));
    let d = build(Box::new(move |_: &usize, ()| {
        let name = thread::current().name().unwrap().to_owned();
        saw.lock().unwrap().insert(name, allowed());
        held.wait();
    }));
    for key in 0..workers {
        d.dispatch(key, ()).unwrap();
    }
    // A worker blocked in one key's job cannot take another key: each key has its own thread.
    wait_for(|| seen.lock().unwrap().len() == workers);
    latch.open();
    assert!(d.close().drained);
    let seen = seen.lock().unwrap().clone();
    seen
}

#[test]
fn each_worker_runs_only_on_its_own_cpu() {
    let _watchdog = Watchdog::new("pinned workers", HANG);
    let cpus = allowed();
    // One more thread than CPUs: the last one shares the first one's CPU.
    let workers = cpus.len() + 1;
    let seen = cpus_of_workers(workers, |handler| {
        Dispatcher::builder()
            .workers(workers)
            .name("pinned")
            .pin_workers(true)
            .build(handler)
            .unwrap()
    });
    for (index, cpu) in cpus.iter().cycle().take(workers).enumerate() {
        assert_eq!(seen[&format!("pinned-{index}")], [*cpu], "worker {index}");
    }
    assert_eq!(allowed(), cpus, "the building thread is left unpinned");
}

#[test]
fn a_pinned_pool_pins_its_threads_for_every_dispatcher() {
    let _watchdog = Watchdog::new("pinned pool", HANG);
    let cpus = allowed();
    let pool = WorkerPool::builder()
        .workers(2)
        .name("pinned-pool")
        .pin_workers(true)
        .build()
        .unwrap();
    let seen = cpus_of_workers(2, |handler| {
        Dispatcher::builder().pool(&pool).build(handler).unwrap()
    });
    for index in 0..2 {
        assert_eq!(
            seen[&format!("pinned-pool-{index}")],
            [cpus[index % cpus.len()]],
            "worker {index}"
        );
    }
    pool.close();
}

#[test]
fn unpinned_workers_may_run_on_every_cpu() {
    let _watchdog = Watchdog::new("unpinned workers", HANG);
    let cpus = allowed();
    let seen = cpus_of_workers(2, |handler| {
        Dispatcher::builder()
            .workers(2)
            .name("unpinned")
            .build(handler)
            .unwrap()
    });
    assert!(seen.values().all(|seen| *seen == cpus), "{seen:?}");
}

#[test]
fn the_start_hook_runs_on_the_pinned_thread() {
    let _watchdog = Watchdog::new("start hook after pinning", HANG);
    let cpus = allowed();
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let saw = Arc::clone(&seen);
    let d = Dispatcher::builder()
        .workers(2)
        .name("pin-hook")
        .pin_workers(true)
        .on_thread_start(move || {
            let name = thread::current().name().unwrap().to_owned();
            saw.lock().unwrap().insert(name, allowed());
        })
        .build(|_: &u32, _: u32| {})
        .unwrap();
    d.close(); // joins the threads: every start hook has run
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for index in 0..2 {
        assert_eq!(
            seen[&format!("pin-hook-{index}")],
            [cpus[index % cpus.len()]],
            "worker {index}"
        );
    }
}
