//! The worker threads' settings, on a dispatcher's private pool and on a shared one: names from
//! `thread_name`, `stack_size`, and the `on_thread_start` / `on_thread_stop` hooks, which run
//! once on each thread, the start hook before the thread takes work and the stop hook before
//! `close` returns, and whose panics neither abort nor hang. (Apart from `tests/threads.rs`,
//! which counts the process's threads and so keeps its file to itself.)

mod common;

use common::{wait_for, wait_threads_gone, Watchdog, HANG};
use keyed_dispatch::{Dispatcher, WorkerPool};
use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
};

/// The names of this process's threads that start with `prefix`, sorted, from /proc.
#[cfg(target_os = "linux")]
fn names_in_proc(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
#[cfg(target_os = "linux")] // thread names from /proc
#[cfg_attr(miri, ignore = "reads the thread names from /proc")]
fn the_name_function_names_each_thread() {
    let _watchdog = Watchdog::new("thread names", HANG);
    let d = Dispatcher::builder()
        .workers(3)
        .name("by-prefix")
        .thread_name(|i| format!("by-fn-{}", 10 + i))
        .build(|_: &u32, _: u32| {})
        .unwrap();
    // A thread sets its own name as it starts, which may be after `build` returns.
    wait_for(|| names_in_proc("by-fn-").len() == 3);
    assert_eq!(
        names_in_proc("by-fn-"),
        ["by-fn-10", "by-fn-11", "by-fn-12"]
    );
    assert!(names_in_proc("by-prefix").is_empty(), "no default names");
    assert_eq!(d.name(), "by-prefix", "the dispatcher keeps its own name");
    d.close();
    wait_threads_gone("by-fn-");

    let pool = WorkerPool::builder()
        .workers(2)
        .name("pool-prefix")
        .thread_name(|i| format!("pool-fn-{i}"))
        .build()
        .unwrap();
    wait_for(|| names_in_proc("pool-fn-").len() == 2);
    assert_eq!(names_in_proc("pool-fn-"), ["pool-fn-0", "pool-fn-1"]);
    assert!(names_in_proc("pool-prefix").is_empty(), "no default names");
    pool.close();
    wait_threads_gone("pool-fn-");
}

#[test]
fn a_handler_sees_its_thread_named_by_the_name_function() {
    let _watchdog = Watchdog::new("thread name in a handler", HANG);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let saw = Arc::clone(&seen);
    let d = Dispatcher::builder()
        .workers(1)
        .thread_name(|i| format!("only-{i}"))
        .build(move |_: &u32, _: u32| {
            saw.lock()
                .unwrap()
                .push(thread::current().name().map(str::to_owned));
        })
        .unwrap();
    d.dispatch(1, 1).unwrap();
    d.close();
    assert_eq!(*seen.lock().unwrap(), [Some("only-0".to_owned())]);
}

#[test]
fn workers_with_a_set_stack_size_run_jobs() {
    let _watchdog = Watchdog::new("stack size", HANG);
    let ran = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(2)
        .stack_size(4 << 20)
        .build(move |_: &u32, _: u32| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for job in 0..100 {
        d.dispatch(job % 7, job).unwrap();
    }
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.panicked), (100, 0));
    assert_eq!(ran.load(Ordering::SeqCst), 100);

    let pool = WorkerPool::builder()
        .workers(2)
        .stack_size(4 << 20)
        .build()
        .unwrap();
    let d = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u32, _: u32| {})
        .unwrap();
    for job in 0..100 {
        d.dispatch(job % 7, job).unwrap();
    }
    assert_eq!(d.close().stats.completed, 100);
    pool.close();
}

thread_local! {
    /// Set by the start hook of the test below, on the thread it runs on.
    static STARTED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// What the hooks of one pool saw: the name of each thread that ran them, in order.
#[derive(Default)]
struct HookLog {
    started: Mutex<Vec<String>>,
    stopped: Mutex<Vec<String>>,
}

impl HookLog {
    fn start(&self) {
        assert!(
            !STARTED_HERE.with(Cell::get),
            "a second start on one thread"
        );
        STARTED_HERE.with(|here| here.set(true));
        self.started.lock().unwrap().push(current_name());
    }

    fn stop(&self) {
        assert!(STARTED_HERE.with(Cell::get), "a stop without a start first");
        self.stopped.lock().unwrap().push(current_name());
    }

    fn started(&self) -> Vec<String> {
        sorted(&self.started)
    }

    fn stopped(&self) -> Vec<String> {
        sorted(&self.stopped)
    }
}

fn current_name() -> String {
    thread::current().name().unwrap().to_owned()
}

fn sorted(names: &Mutex<Vec<String>>) -> Vec<String> {
    let mut names = names.lock().unwrap().clone();
    names.sort();
    names
}

#[test]
fn hooks_run_once_per_worker_and_every_stop_before_close_returns() {
    let _watchdog = Watchdog::new("thread hooks", HANG);
    let log = Arc::new(HookLog::default());
    let (on_start, on_stop) = (Arc::clone(&log), Arc::clone(&log));
    let d = Dispatcher::builder()
        .workers(3)
        .name("hooked")
        .on_thread_start(move || on_start.start())
        .on_thread_stop(move || on_stop.stop())
        .build(|_: &u32, _: u32| {
            // The start hook ran on this thread before it took any work.
            assert!(STARTED_HERE.with(Cell::get), "a job before the start hook");
        })
        .unwrap();
    for job in 0..300 {
        d.dispatch(job % 10, job).unwrap();
    }
    d.wait_idle().unwrap();
    wait_for(|| log.started.lock().unwrap().len() == 3);
    assert!(log.stopped().is_empty(), "no thread stops before close");
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.panicked), (300, 0));
    let workers = ["hooked-0", "hooked-1", "hooked-2"];
    assert_eq!(log.started(), workers, "each worker started once");
    // Without waiting: `close` has joined the threads, so every stop hook has run.
    assert_eq!(log.stopped(), workers, "each worker stopped once");
}

#[test]
fn a_shared_pools_hooks_stop_with_the_pool_not_its_dispatchers() {
    let _watchdog = Watchdog::new("shared pool hooks", HANG);
    let log = Arc::new(HookLog::default());
    let (on_start, on_stop) = (Arc::clone(&log), Arc::clone(&log));
    let pool = WorkerPool::builder()
        .workers(2)
        .name("hooked-pool")
        .on_thread_start(move || on_start.start())
        .on_thread_stop(move || on_stop.stop())
        .build()
        .unwrap();
    for _ in 0..2 {
        let d = Dispatcher::builder()
            .pool(&pool)
            .build(|_: &u32, _: u32| {
                assert!(STARTED_HERE.with(Cell::get), "a job before the start hook");
            })
            .unwrap();
        for job in 0..100 {
            d.dispatch(job % 5, job).unwrap();
        }
        let report = d.close();
        assert_eq!((report.stats.completed, report.stats.panicked), (100, 0));
    }
    wait_for(|| log.started.lock().unwrap().len() == 2);
    assert!(
        log.stopped().is_empty(),
        "the pool's threads outlive its dispatchers"
    );
    pool.close();
    let workers = ["hooked-pool-0", "hooked-pool-1"];
    assert_eq!(log.started(), workers, "each worker started once");
    assert_eq!(log.stopped(), workers, "each worker stopped once");
}

#[test]
fn panicking_hooks_neither_abort_nor_hang() {
    let _watchdog = Watchdog::new("panicking hooks", HANG);
    let stopped = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&stopped);
    let d = Dispatcher::builder()
        .workers(2)
        .on_thread_start(|| panic!("start hook"))
        .on_thread_stop(move || {
            count.fetch_add(1, Ordering::SeqCst);
            panic!("stop hook");
        })
        .build(|_: &u32, _: u32| {})
        .unwrap();
    for job in 0..50 {
        d.dispatch(job % 5, job).unwrap();
    }
    d.wait_idle().unwrap();
    let report = d.close();
    assert!(report.drained);
    assert_eq!((report.stats.completed, report.stats.panicked), (50, 0));
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        2,
        "each thread ran its stop hook"
    );

    // A shared pool, closed by its drop.
    let pool = WorkerPool::builder()
        .workers(2)
        .on_thread_start(|| panic!("start hook"))
        .on_thread_stop(|| panic!("stop hook"))
        .build()
        .unwrap();
    let d = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u32, _: u32| {})
        .unwrap();
    d.dispatch(1, 1).unwrap();
    d.flush_key(&1).unwrap();
    drop(pool);
    assert_eq!(d.stats().completed, 1);
    assert!(d.dispatch(1, 2).unwrap_err().is_closed());
}
