//! A key whose `Hash`, `Eq` or `Clone` panics while it is being dispatched: the panic reaches
//! the caller, the dispatch is refused as if it had never been made (nothing pending, no
//! group counting it), and the dispatcher goes on as before: `wait_idle`, a group's `wait` and
//! `close` return, and later jobs run in order.

use crate::common::Latch;
use crate::hostile::{Call, Fuse, Key};
use crate::{in_child, step_handler, test_path, watchdog, LeakOnPanic, Ledger, Step};
use keyed_dispatch::Dispatcher;
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::mpsc,
};

/// Plain keys, each with a job in the group and then `LATER` more jobs.
const PLAIN: [u64; 3] = [1, 2, 3];
const LATER: u64 = 5;

/// The scenario, for a key whose `call` always panics.
fn dispatch_of_a_panicking_key(test: &str, call: Call) {
    let _watchdog = watchdog(test);
    let fuse = Fuse::new();
    fuse.always(call.bit());
    let ledger = Ledger::new();
    let (started_tx, started) = mpsc::channel();
    let release = Latch::new();
    let d = LeakOnPanic::new(
        Dispatcher::builder()
            .workers(2)
            .name("hostile-dispatch")
            .build(step_handler(&ledger, started_tx, &release))
            .unwrap(),
    );
    // Key 0 stays in the map, running, while the hostile keys (ids 4 and 8) are dispatched:
    // they hash alike, so that finding them compares them with key 0 through `Eq`.
    d.dispatch(Key::plain(0), Step::held(0)).unwrap();
    assert_eq!(started.recv().unwrap(), 0);
    let plain = catch_unwind(AssertUnwindSafe(|| {
        d.dispatch(Key::hostile(4, &fuse), Step::quick(0))
    }));
    let group = d.group();
    let grouped = catch_unwind(AssertUnwindSafe(|| {
        group.dispatch(Key::hostile(8, &fuse), Step::quick(0))
    }));
    let mut accepted = Vec::new();
    for (id, outcome) in [(4, &plain), (8, &grouped)] {
        match outcome {
            Err(_) => {}
            // Clone may not be needed to dispatch: then the key is simply accepted.
            Ok(Ok(())) if call == Call::Clone => accepted.push(id),
            Ok(Ok(())) => panic!("key {id}, whose {call:?} panics, was dispatched without a panic"),
            Ok(Err(err)) => panic!("key {id} was refused ({err}) instead of panicking"),
        }
    }
    release.open();
    d.flush_key(&Key::plain(0)).unwrap();
    for &id in &accepted {
        d.flush_key(&Key::hostile(id, &fuse)).unwrap();
    }
    // Every job that was dispatched has finished: a refused one left nothing behind. Read once
    // idle, where the snapshot is exact (a flush returns as soon as its job has run, before the
    // worker has counted the batch).
    d.wait_idle().unwrap();
    let stats = d.stats();
    assert_eq!(
        (
            stats.queued,
            stats.running,
            stats.dispatched - stats.completed
        ),
        (0, 0, 0),
        "a dispatch that panicked left a job pending: {stats:?}"
    );
    let group_jobs = u64::from(grouped.is_ok());
    assert_eq!(
        group.pending(),
        0,
        "the group counts the job whose dispatch panicked"
    );
    // The group and the dispatcher go on.
    for &id in &PLAIN {
        group.dispatch(Key::plain(id), Step::quick(0)).unwrap();
    }
    let report = group.wait().unwrap();
    assert_eq!(
        (report.dispatched, report.completed),
        (group_jobs + 3, group_jobs + 3),
        "the group's report counts the refused job: {report:?}"
    );
    for seq in 1..=LATER {
        for id in [0].iter().chain(&PLAIN) {
            d.dispatch(Key::plain(*id), Step::quick(seq)).unwrap();
        }
    }
    let report = d.close();
    assert!(report.drained);
    let expected = 1 + 3 + 4 * LATER + accepted.len() as u64;
    assert_eq!(
        (report.stats.dispatched, report.stats.completed),
        (expected, expected),
        "{:?}",
        report.stats
    );
    assert_eq!((report.stats.queued, report.stats.keys), (0, 0));
    ledger.check();
    for id in [0].iter().chain(&PLAIN) {
        assert_eq!(
            ledger.runs_of(*id),
            (0..=LATER).collect::<Vec<_>>(),
            "key {id}"
        );
    }
    for id in accepted {
        assert_eq!(ledger.runs_of(id), [0], "accepted hostile key {id}");
    }
    fuse.disarm();
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn dispatch_of_a_key_whose_hash_panics_panics_and_leaves_nothing_pending() {
    let test = test_path(
        module_path!(),
        "dispatch_of_a_key_whose_hash_panics_panics_and_leaves_nothing_pending",
    );
    in_child(&test, || dispatch_of_a_panicking_key(&test, Call::Hash));
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn dispatch_of_a_key_whose_eq_panics_panics_and_leaves_nothing_pending() {
    let test = test_path(
        module_path!(),
        "dispatch_of_a_key_whose_eq_panics_panics_and_leaves_nothing_pending",
    );
    in_child(&test, || dispatch_of_a_panicking_key(&test, Call::Eq));
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn dispatch_of_a_key_whose_clone_panics_is_accepted_or_leaves_nothing_pending() {
    let test = test_path(
        module_path!(),
        "dispatch_of_a_key_whose_clone_panics_is_accepted_or_leaves_nothing_pending",
    );
    in_child(&test, || dispatch_of_a_panicking_key(&test, Call::Clone));
}
