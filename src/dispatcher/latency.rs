//! Latency recording, for dispatchers built with `record_latency(true)`: each job's wait
//! (dispatch to start) and each attempt's run (start to end), counted per pool thread and
//! merged when read.
//!
//! A producer reads the clock once per dispatch and the mailbox keeps the instant beside the
//! job (see `Mailbox::push_stamped`); a worker reads it once per job, the end of one job being
//! the start of the next in a batch, and counts both durations in its own thread's recorders
//! with plain stores (see `histogram`). `metrics` adds the recorders up. A retried job's wait
//! is counted once, up to its first attempt; each attempt counts its run.

use super::{core::Core, Dispatcher};
use crate::{
    histogram::{Histogram, Recorder},
    stats::Metrics,
};
use crossbeam_utils::CachePadded;
use std::{fmt::Debug, hash::Hash, time::Duration};

/// See the module docs.
pub(crate) struct Latency {
    slots: Box<[CachePadded<Recorders>]>,
    /// The `metrics` facade's histograms, fed each duration as it is counted.
    #[cfg(feature = "metrics")]
    facade: (metrics::Histogram, metrics::Histogram),
}

#[derive(Default)]
struct Recorders {
    wait: Recorder,
    run: Recorder,
}

impl Latency {
    pub(crate) fn new(workers: usize, name: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = name;
        Latency {
            slots: (0..workers).map(|_| CachePadded::default()).collect(),
            #[cfg(feature = "metrics")]
            facade: super::publish::Publisher::histograms(name),
        }
    }

    /// Counts a job's wait on pool thread `index`, which alone writes its recorders.
    #[inline]
    pub(super) fn waited(&self, index: usize, wait: Duration) {
        self.slots[index].wait.record(wait);
        #[cfg(feature = "metrics")]
        self.facade.0.record(wait.as_secs_f64());
    }

    /// Counts an attempt's run on pool thread `index`.
    #[inline]
    pub(super) fn ran(&self, index: usize, run: Duration) {
        self.slots[index].run.record(run);
        #[cfg(feature = "metrics")]
        self.facade.1.record(run.as_secs_f64());
    }

    fn snapshot(&self) -> (Histogram, Histogram) {
        let (mut wait, mut run) = (Histogram::default(), Histogram::default());
        for slot in self.slots.iter() {
            slot.wait.add_to(&mut wait);
            slot.run.add_to(&mut run);
        }
        (wait, run)
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn metrics(&self) -> Metrics {
        let (wait, run) = match &self.latency {
            Some(latency) => latency.snapshot(),
            None => Default::default(),
        };
        Metrics {
            stats: self.stats(),
            wait,
            run,
        }
    }
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// A snapshot of the dispatcher's counters ([`stats`](Dispatcher::stats)) and of its
    /// latency histograms: `wait`, from dispatch to start, once per job, and `run`, from start
    /// to end, once per attempt. The histograms count only on a dispatcher built with
    /// [`record_latency(true)`](crate::Builder::record_latency); otherwise they are empty.
    /// Each dispatcher counts its own jobs, on a shared pool too.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().record_latency(true).build(|_: &u8, _: u32| {})?;
    /// for n in 0..100 {
    ///     d.dispatch((n % 4) as u8, n)?;
    /// }
    /// d.wait_idle()?;
    /// let m = d.metrics();
    /// assert_eq!((m.stats.completed, m.wait.count(), m.run.count()), (100, 100, 100));
    /// assert!(m.wait.p50() <= m.wait.p99() && m.wait.p99() <= m.wait.max());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.core.metrics()
    }
}
