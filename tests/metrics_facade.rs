//! With the `metrics` feature: each dispatcher's figures reach the `metrics` facade, labelled
//! with its name, through a real recorder (metrics-util's debugging recorder, installed as the
//! process's global recorder, as an exporter would be). Run with
//! `cargo test --release --features metrics --test metrics_facade`.

mod common;

use common::Watchdog;
use keyed_dispatch::{Dispatcher, WorkerPool};
use metrics_util::{
    debugging::{DebugValue, DebuggingRecorder},
    MetricKind,
};
use std::time::Duration;

/// The value of `name` labelled `dispatcher = of`, if published.
fn find<'a>(
    snapshot: &'a [(metrics_util::CompositeKey, DebugValue)],
    kind: MetricKind,
    name: &str,
    of: &str,
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, value)| {
        let k = key.key();
        let labelled = k
            .labels()
            .any(|label| label.key() == "dispatcher" && label.value() == of);
        (key.kind() == kind && k.name() == name && labelled).then_some(value)
    })
}

#[test]
fn each_dispatchers_figures_reach_the_facade_under_its_name() {
    let _watchdog = Watchdog::new("metrics_facade", Duration::from_secs(60));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let pool = WorkerPool::new(2).unwrap();
    let alpha = Dispatcher::builder()
        .pool(&pool)
        .name("alpha")
        .record_latency(true)
        .build(|_: &u8, n: u32| if n == 3 { Err("three") } else { Ok(()) })
        .unwrap();
    let beta = Dispatcher::builder()
        .pool(&pool)
        .name("beta")
        .build(|_: &u8, _: u32| {})
        .unwrap();
    for n in 0..10 {
        alpha.dispatch((n % 3) as u8, n).unwrap();
    }
    for n in 0..5 {
        beta.dispatch(1, n).unwrap();
    }
    // Closing publishes the final figures.
    alpha.close();
    beta.close();
    pool.close();

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    let counter = |name, of| find(&snapshot, MetricKind::Counter, name, of);
    assert_eq!(
        counter("keyed_dispatch_completed_total", "alpha"),
        Some(&DebugValue::Counter(10))
    );
    assert_eq!(
        counter("keyed_dispatch_failed_total", "alpha"),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        counter("keyed_dispatch_completed_total", "beta"),
        Some(&DebugValue::Counter(5))
    );
    assert_eq!(
        counter("keyed_dispatch_dispatched_total", "beta"),
        Some(&DebugValue::Counter(5))
    );
    match find(&snapshot, MetricKind::Gauge, "keyed_dispatch_keys", "alpha") {
        Some(DebugValue::Gauge(keys)) => assert_eq!(keys.into_inner(), 0.0),
        other => panic!("no keys gauge: {other:?}"),
    }
    match find(
        &snapshot,
        MetricKind::Histogram,
        "keyed_dispatch_run_seconds",
        "alpha",
    ) {
        Some(DebugValue::Histogram(runs)) => assert_eq!(runs.len(), 10),
        other => panic!("no run histogram: {other:?}"),
    }
    match find(
        &snapshot,
        MetricKind::Histogram,
        "keyed_dispatch_wait_seconds",
        "beta",
    ) {
        None | Some(DebugValue::Histogram(_)) => {}
        Some(other) => panic!("not a histogram: {other:?}"),
    }
    assert!(
        !matches!(
            find(&snapshot, MetricKind::Histogram, "keyed_dispatch_run_seconds", "beta"),
            Some(DebugValue::Histogram(runs)) if !runs.is_empty()
        ),
        "beta does not record latency"
    );
}
