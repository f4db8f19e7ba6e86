//! Settings at the edge of their types: each is either refused by `build` with a
//! `BuildError`, or works; none panics, on the building thread or later on a worker.

use crate::{in_child, test_path, watchdog};
use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Duration,
};

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn idle_timeout_of_duration_max_builds_runs_jobs_and_closes() {
    let test = test_path(
        module_path!(),
        "idle_timeout_of_duration_max_builds_runs_jobs_and_closes",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        // "Never evict an idle key before close."
        let built = Dispatcher::builder()
            .workers(2)
            .name("hostile-forever")
            .idle_timeout(Duration::MAX)
            .build(|_: &u64, _: u32| {});
        let Ok(d) = built else {
            return; // refused: an answer too
        };
        let group = d.group();
        for n in 0..10 {
            group.dispatch(u64::from(n % 3), n).unwrap();
        }
        assert_eq!(group.wait().unwrap().completed, 10);
        // The keys went idle, and the workers that ran them armed the eviction timer.
        d.wait_idle().unwrap();
        d.dispatch(1, 10).unwrap();
        let report = d.close();
        assert!(report.drained);
        assert_eq!(
            (report.stats.completed, report.stats.keys),
            (11, 0),
            "{:?}",
            report.stats
        );
    });
}

/// A build to try, its result reduced to success or the error.
type Build = Box<dyn FnOnce() -> Result<(), BuildError>>;

/// What building did, if it was not refusing with a `BuildError`.
fn build_outcome(build: impl FnOnce() -> Result<(), BuildError>) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(build)) {
        Ok(Err(_)) => None,
        Ok(Ok(())) => Some("built".to_owned()),
        Err(payload) => Some(format!("panicked: {}", message(&*payload))),
    }
}

fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[test]
fn builder_extremes_return_a_build_error_instead_of_panicking() {
    let _watchdog = watchdog("builder extremes");
    let handler = |_: &u64, _: u32| {};
    let cases: Vec<(&str, Build)> = vec![
        (
            "Dispatcher::builder().workers(usize::MAX)",
            Box::new(move || {
                Dispatcher::builder()
                    .workers(usize::MAX)
                    .build(handler)
                    .map(drop)
            }),
        ),
        (
            "WorkerPool::builder().workers(usize::MAX)",
            Box::new(|| WorkerPool::builder().workers(usize::MAX).build().map(drop)),
        ),
        (
            "Dispatcher::builder().name(\"a\\0b\")",
            Box::new(move || {
                Dispatcher::builder()
                    .workers(1)
                    .name("a\0b")
                    .build(handler)
                    .map(drop)
            }),
        ),
        (
            "WorkerPool::builder().name(\"a\\0b\")",
            Box::new(|| {
                WorkerPool::builder()
                    .workers(1)
                    .name("a\0b")
                    .build()
                    .map(drop)
            }),
        ),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(what, build)| {
            build_outcome(build).map(|outcome| format!("{what}: {outcome}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "build did not return a BuildError: {wrong:#?}"
    );
}
