//! User code that panics on a worker thread outside a job: a key's `Drop` or `Hash` when a
//! sweep evicts it, a key's `Debug` while the error line of a panicking job is formatted, and
//! the drop of the payload of a panicking `on_panic` hook. Each panic must be caught there, as
//! a job's own panic is: the process goes on, later jobs run, and `close` returns.
//!
//! Each scenario runs in a child process, since a panic escaping a worker thread aborts it.

use crate::common::wait_for;
use crate::hostile::{Call, Fuse, Key};
use crate::{format_every_log_line, in_child, test_path, watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

/// A dispatcher whose handler arms `fuse` for `call` (its next such call panics) when the job
/// says so, with eager eviction: idle keys are swept by the pool's timer, on a worker thread.
fn arming_dispatcher(name: &str, fuse: &Arc<Fuse>, call: Call) -> Dispatcher<Key, bool> {
    let fuse = Arc::clone(fuse);
    Dispatcher::builder()
        .workers(2)
        .idle_timeout(Duration::from_millis(1))
        .name(name)
        .build(move |_: &Key, arm: bool| {
            if arm {
                fuse.arm(call.bit(), 0);
            }
        })
        .unwrap()
}

/// After the hostile key's turn: later jobs of another key run, and close drains and evicts.
fn later_jobs_run_and_close_returns(d: &Dispatcher<Key, bool>, before: u64) {
    for _ in 0..3 {
        d.dispatch(Key::plain(2), false).unwrap();
    }
    d.flush_key(&Key::plain(2)).unwrap();
    let report = d.close();
    assert!(report.drained);
    assert_eq!(
        (report.stats.completed, report.stats.dispatched),
        (before + 3, before + 3),
        "{:?}",
        report.stats
    );
    assert_eq!((report.stats.queued, report.stats.keys), (0, 0));
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn key_drop_panicking_when_a_sweep_evicts_it_does_not_abort() {
    let test = test_path(
        module_path!(),
        "key_drop_panicking_when_a_sweep_evicts_it_does_not_abort",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        let fuse = Fuse::new();
        let d = arming_dispatcher("hostile-drop", &fuse, Call::Drop);
        // The job arms the key's Drop; the next drop of the key (or its clone) is the sweep's.
        d.dispatch(Key::hostile(1, &fuse), true).unwrap();
        wait_for(|| d.stats().keys == 0);
        later_jobs_run_and_close_returns(&d, 1);
    });
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn key_hash_panicking_when_a_sweep_evicts_it_does_not_abort() {
    let test = test_path(
        module_path!(),
        "key_hash_panicking_when_a_sweep_evicts_it_does_not_abort",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        let fuse = Fuse::new();
        let d = arming_dispatcher("hostile-hash", &fuse, Call::Hash);
        // The job arms the key's Hash; the next hash of the key is the sweep's, which looks it
        // up to remove it. (A map that never hashes it again simply evicts it.)
        d.dispatch(Key::hostile(1, &fuse), true).unwrap();
        wait_for(|| d.stats().keys == 0 || !fuse.fired().is_empty());
        later_jobs_run_and_close_returns(&d, 1);
    });
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn key_debug_panicking_in_the_log_line_of_a_panicking_job_does_not_abort() {
    let test = test_path(
        module_path!(),
        "key_debug_panicking_in_the_log_line_of_a_panicking_job_does_not_abort",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        format_every_log_line();
        let fuse = Fuse::new();
        let armer = Arc::clone(&fuse);
        let d = Dispatcher::builder()
            .workers(2)
            .name("hostile-debug")
            .build(move |_: &Key, boom: bool| {
                if boom {
                    // The next Debug of the key is the one in the error line of this panic.
                    armer.arm(Call::Debug.bit(), 0);
                    panic!("this job panics on purpose");
                }
            })
            .unwrap();
        let group = d.group();
        group.dispatch(Key::hostile(1, &fuse), true).unwrap();
        let report = group.wait().unwrap();
        fuse.disarm();
        assert_eq!((report.completed, report.panicked), (1, 1), "{report:?}");
        later_jobs_run_and_close_returns(&d, 1);
        assert_eq!(d.stats().panicked, 1);
    });
}

/// Panics in its drop, once per process.
struct PanicsWhenDropped;

static PAYLOAD_ARMED: AtomicBool = AtomicBool::new(true);

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() && PAYLOAD_ARMED.swap(false, SeqCst) {
            panic!("the payload of the on_panic hook's panic panics when dropped");
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn on_panic_hook_panicking_with_a_payload_whose_drop_panics_does_not_abort() {
    let test = test_path(
        module_path!(),
        "on_panic_hook_panicking_with_a_payload_whose_drop_panics_does_not_abort",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        let d = Dispatcher::builder()
            .workers(2)
            .name("hostile-hook")
            .on_panic(|_: &Key, _| std::panic::panic_any(PanicsWhenDropped))
            .build(|_: &Key, boom: bool| {
                if boom {
                    panic!("this job panics on purpose");
                }
            })
            .unwrap();
        let group = d.group();
        group.dispatch(Key::plain(1), true).unwrap();
        let report = group.wait().unwrap();
        assert_eq!((report.completed, report.panicked), (1, 1), "{report:?}");
        later_jobs_run_and_close_returns(&d, 1);
        assert_eq!(d.stats().panicked, 1);
    });
}
