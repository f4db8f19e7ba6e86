//! With the `metrics` feature: a dispatcher's figures through the `metrics` crate's facade, so
//! that whatever exporter the application installed (Prometheus, StatsD, ...) picks them up.
//!
//! Every name starts with `keyed_dispatch_` and carries the label `dispatcher` (the builder's
//! `name`). The counters (`dispatched_total`, `completed_total`, `failed_total`,
//! `panicked_total`, `refused_total` with a label `cause`, `handed_back_total`, `dropped_total`,
//! `retried_total`, `dead_lettered_total`) and gauges (`queued`, `running`, `keys`, `paused`,
//! `blocked`) are published from `stats()` once a second on the pool's timer, and once more
//! when the dispatcher finishes. With `record_latency(true)`, each job's wait and each
//! attempt's run also go to the histograms `wait_seconds` and `run_seconds` as they are
//! counted (see `latency`).

use super::core::Core;
use crate::{pool::TimerKind, stats::Stats};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// How often the counters and gauges are published.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// A handle and the figure of `Stats` it publishes.
type Published<M, T> = (M, fn(&Stats) -> T);

/// The facade's handles for one dispatcher, registered when it is built.
pub(crate) struct Publisher {
    counters: [Published<Counter, u64>; 12],
    gauges: [Published<Gauge, usize>; 5],
}

impl Publisher {
    pub(crate) fn new(name: &str) -> Self {
        let label = ("dispatcher", name.to_owned());
        let labels = std::slice::from_ref(&label);
        let refused = |cause: &'static str| {
            counter!(
                "keyed_dispatch_refused_total",
                &[label.clone(), ("cause", cause.to_owned())]
            )
        };
        Publisher {
            counters: [
                (counter!("keyed_dispatch_dispatched_total", labels), |s| {
                    s.dispatched
                }),
                (counter!("keyed_dispatch_completed_total", labels), |s| {
                    s.completed
                }),
                (counter!("keyed_dispatch_failed_total", labels), |s| {
                    s.failed
                }),
                (counter!("keyed_dispatch_panicked_total", labels), |s| {
                    s.panicked
                }),
                (refused("full_key"), |s| s.refusals.full_key),
                (refused("full_dispatcher"), |s| s.refusals.full_dispatcher),
                (refused("timed_out"), |s| s.refusals.timed_out),
                (refused("closed"), |s| s.refusals.closed),
                (counter!("keyed_dispatch_handed_back_total", labels), |s| {
                    s.handed_back
                }),
                (counter!("keyed_dispatch_dropped_total", labels), |s| {
                    s.dropped
                }),
                (counter!("keyed_dispatch_retried_total", labels), |s| {
                    s.retried
                }),
                (
                    counter!("keyed_dispatch_dead_lettered_total", labels),
                    |s| s.dead_lettered,
                ),
            ],
            gauges: [
                (gauge!("keyed_dispatch_queued", labels), |s| s.queued),
                (gauge!("keyed_dispatch_running", labels), |s| s.running),
                (gauge!("keyed_dispatch_keys", labels), |s| s.keys),
                (gauge!("keyed_dispatch_paused", labels), |s| s.paused),
                (gauge!("keyed_dispatch_blocked", labels), |s| s.blocked),
            ],
        }
    }

    /// The latency histograms' handles, for `latency`.
    pub(crate) fn histograms(name: &str) -> (Histogram, Histogram) {
        let label = [("dispatcher", name.to_owned())];
        (
            histogram!("keyed_dispatch_wait_seconds", &label),
            histogram!("keyed_dispatch_run_seconds", &label),
        )
    }

    pub(crate) fn publish(&self, stats: &Stats) {
        for (counter, read) in &self.counters {
            counter.absolute(read(stats));
        }
        for (gauge, read) in &self.gauges {
            gauge.set(read(stats) as f64);
        }
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Publishes now, and arms the timer for the next time.
    pub(crate) fn start_publishing(&self) {
        self.publisher.publish(&self.stats());
        let next = Instant::now() + PERIOD;
        self.pool
            .set_timer(next, self.as_client(), TimerKind::Publish);
    }

    /// The publishing timer: publishes, and fires again in a period unless the dispatcher has
    /// finished (its last figures were published then).
    pub(super) fn on_publish_timer(&self, now: Instant) -> Option<Instant> {
        if *crate::sync::lock(&self.finished) {
            return None;
        }
        self.publisher.publish(&self.stats());
        Some(now + PERIOD)
    }
}
