//! Latency histograms: [`Recorder`], written by one thread and read by any, and [`Histogram`],
//! the merged snapshot a caller reads quantiles from.
//!
//! Values are nanoseconds, counted in log-linear buckets: below 8 ns one bucket per value; above,
//! each power of two is cut into 8 equal buckets, so a bucket's width is at most an eighth of
//! its lower bound. A quantile is reported as its bucket's midpoint: within 1/16 (6.25%) of the
//! true value, relative. Counts are exact. Values past about 39 hours land in the last bucket.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The largest power of two counted apart: 2^47 ns, about 39 hours.
const MAX_EXP: u32 = 47;
/// Buckets in all.
const BUCKETS: usize = (MAX_EXP - SUB_BITS + 2) as usize * SUB;

/// The bucket of `nanos`.
fn bucket(nanos: u64) -> usize {
    if nanos < SUB as u64 {
        return nanos as usize;
    }
    let exp = (63 - nanos.leading_zeros()).min(MAX_EXP);
    let sub = if exp == MAX_EXP && nanos >> MAX_EXP > 1 {
        SUB - 1
    } else {
        ((nanos >> (exp - SUB_BITS)) as usize) & (SUB - 1)
    };
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

/// The range of values, in nanoseconds, that bucket `index` counts: `lo..hi`.
fn range(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, index as u64 + 1);
    }
    let exp = (index / SUB) as u32 + SUB_BITS - 1;
    let sub = (index % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let lo = (1u64 << exp) + sub * width;
    (lo, lo + width)
}

/// Counts durations; written by one thread only (a worker, for the dispatcher it runs), read by
/// any. Plain loads and stores: no read-modify-write on the job's path.
pub(crate) struct Recorder {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// Counts `duration`. Only the recorder's one writer calls it.
    #[inline]
    pub(crate) fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        // ORDERING: Relaxed: a snapshot is approximate while jobs run, and exact once the
        // dispatcher is idle (the waits that establish it synchronize with the workers).
        let count = &self.buckets[bucket(nanos)];
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.sum.store(
            self.sum.load(Ordering::Relaxed).saturating_add(nanos),
            Ordering::Relaxed,
        );
        if nanos > self.max.load(Ordering::Relaxed) {
            self.max.store(nanos, Ordering::Relaxed);
        }
    }

    /// Adds this recorder's counts to `into`.
    pub(crate) fn add_to(&self, into: &mut Histogram) {
        for (total, count) in into.buckets.iter_mut().zip(self.buckets.iter()) {
            *total += count.load(Ordering::Relaxed);
        }
        into.sum = into.sum.saturating_add(self.sum.load(Ordering::Relaxed));
        into.max = into.max.max(self.max.load(Ordering::Relaxed));
    }
}

/// A snapshot of a latency histogram: how many durations were counted, and their quantiles.
///
/// Counts are exact; a quantile is within 6.25% of the true value (log-linear buckets, eight per
/// power of two, reported at their midpoints), and `max` is exact.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
/// use std::time::Duration;
///
/// let d = Dispatcher::builder()
///     .record_latency(true)
///     .build(|_: &u8, ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
/// for _ in 0..3 {
///     d.dispatch(1, 2)?;
/// }
/// d.wait_idle()?;
/// let run = d.metrics().run;
/// assert_eq!(run.count(), 3);
/// assert!(run.p50() >= Duration::from_millis(2) * 15 / 16);
/// assert!(run.max() >= Duration::from_millis(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    sum: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            sum: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q`-quantile (`0.0..=1.0`): the smallest value at least a fraction `q` of the
    /// counts are at or below, within 6.25%. Zero if nothing was counted.
    pub fn quantile(&self, q: f64) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = range(index);
                let mid = lo + (hi - lo - 1) / 2;
                return Duration::from_nanos(mid.min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// The largest duration counted, exact.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The mean, exact to the nanosecond.
    pub fn mean(&self) -> Duration {
        match self.count() {
            0 => Duration::ZERO,
            count => Duration::from_nanos(self.sum / count),
        }
    }

    /// The non-empty buckets, in order: each bucket's range of durations (`lo..hi`) and count.
    /// For drawing the histogram.
    ///
    /// # Examples
    ///
    /// ```
    /// let empty = keyed_dispatch::Histogram::default();
    /// assert_eq!(empty.buckets().count(), 0);
    /// ```
    pub fn buckets(&self) -> impl Iterator<Item = (std::ops::Range<Duration>, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(index, &n)| {
                let (lo, hi) = range(index);
                (Duration::from_nanos(lo)..Duration::from_nanos(hi), n)
            })
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50", &self.p50())
            .field("p99", &self.p99())
            .field("max", &self.max())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once_within_an_eighth() {
        let mut last = 0;
        for index in 0..BUCKETS {
            let (lo, hi) = range(index);
            assert_eq!(lo, last, "bucket {index} leaves a gap");
            assert!(hi > lo);
            if lo >= SUB as u64 {
                assert!((hi - lo) * 8 <= lo, "bucket {index} is too wide");
            }
            assert_eq!(bucket(lo), index);
            assert_eq!(bucket(hi - 1), index);
            last = hi;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_their_stated_error_and_counts_exact() {
        let recorder = Recorder::default();
        for micros in 1..=1000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let mut h = Histogram::default();
        recorder.add_to(&mut h);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), Duration::from_micros(1000));
        for (q, truth) in [(0.5, 500.0), (0.99, 990.0), (0.01, 10.0)] {
            let got = h.quantile(q).as_nanos() as f64 / 1000.0;
            assert!(
                (got - truth).abs() <= truth / 16.0,
                "q {q}: {got} against {truth}"
            );
        }
        assert_eq!(h.mean(), Duration::from_nanos(500_500));
        assert_eq!(h.buckets().map(|(_, n)| n).sum::<u64>(), 1000);
        assert_eq!(Histogram::default().p99(), Duration::ZERO);
    }
}
