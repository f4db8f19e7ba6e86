//! The [`Stats`] snapshot and the counters behind it.

use crate::histogram::Histogram;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;

/// A snapshot of a dispatcher's counters, from [`Dispatcher::stats`](crate::Dispatcher::stats).
///
/// The counters are read one after another while jobs may be moving, so a snapshot taken
/// while the dispatcher is busy is approximate; once it is idle (after
/// [`wait_idle`](crate::Dispatcher::wait_idle) or [`close`](crate::Dispatcher::close)) it is
/// exact: `dispatched == completed + handed_back` and `queued == running == 0`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// let d = Dispatcher::builder().build(|_: &u8, n: u8| if n == 0 { Err("zero") } else { Ok(()) })?;
/// for n in 0..3 {
///     d.dispatch(n, n)?;
/// }
/// d.wait_idle()?;
/// let stats = d.stats();
/// assert_eq!((stats.dispatched, stats.completed, stats.failed), (3, 3, 1));
/// assert_eq!((stats.queued, stats.running, stats.blocked, stats.keys), (0, 0, 0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs accepted since the dispatcher was built.
    pub dispatched: u64,
    /// Jobs that finished running, whatever their outcome (`failed` and `panicked` included).
    pub completed: u64,
    /// Jobs whose handler returned an error.
    pub failed: u64,
    /// Jobs whose handler panicked.
    pub panicked: u64,
    /// Dispatches refused (`Full`, `Timeout` or `Closed`); each handed its job back. Split by
    /// cause in `refusals`.
    pub refused: u64,
    /// `refused`, by cause.
    pub refusals: Refusals,
    /// Accepted jobs that never ran because [`close_now`](crate::Dispatcher::close_now) (or
    /// [`close_timeout`](crate::Dispatcher::close_timeout)) handed them back.
    pub handed_back: u64,
    /// Accepted jobs that neither ran nor came back, each logged at `error`: those left behind
    /// a job still running when [`close_timeout`](crate::Dispatcher::close_timeout) returned,
    /// dropped by a later `close` (or the last handle's drop) once that job ended; and delayed
    /// jobs whose key's `Eq` panicked as they fell due.
    pub dropped: u64,
    /// Attempts after the first, of a retrying dispatcher's jobs (see
    /// [`Builder::build_retrying`](crate::Builder::build_retrying)).
    pub retried: u64,
    /// Jobs of a retrying dispatcher that failed for good and went to the dead-letter hook
    /// (or, without one, were logged and dropped). Each is counted once in `completed` too.
    pub dead_lettered: u64,
    /// Keys paused right now (see [`Dispatcher::pause_key`](crate::Dispatcher::pause_key)).
    pub paused: usize,
    /// Jobs accepted and not yet started.
    pub queued: usize,
    /// Keys being run by a worker right now (at most one job each is executing).
    pub running: usize,
    /// Producers waiting for room right now: threads blocked in
    /// [`dispatch`](crate::Dispatcher::dispatch) or
    /// [`dispatch_timeout`](crate::Dispatcher::dispatch_timeout), and tasks queued in
    /// `dispatch_async` or `reserve` (feature `async`). A current count, not a total.
    pub blocked: usize,
    /// Keys held in the routing map.
    pub keys: usize,
    /// Threads of the pool the dispatcher runs on.
    pub workers: usize,
}

/// A snapshot of a dispatcher's counters and latency histograms, from
/// [`Dispatcher::metrics`](crate::Dispatcher::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// The counters, as [`Dispatcher::stats`](crate::Dispatcher::stats) gives them.
    pub stats: Stats,
    /// From dispatch to start, once per job (a job dispatched with `dispatch_after`: from
    /// when it fell due). Empty unless the dispatcher records latency.
    pub wait: Histogram,
    /// From start to end, once per attempt. Empty unless the dispatcher records latency.
    pub run: Histogram,
}

/// Refused dispatches by cause: the parts of [`Stats::refused`].
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// let d = Dispatcher::builder().key_capacity(0).capacity(0).build(|_: &u8, _: u8| {})?;
/// d.close();
/// let _ = d.try_dispatch(1, 1); // refused: closed
/// let refusals = d.stats().refusals;
/// assert_eq!((refusals.closed, refusals.full_key, refusals.full_dispatcher), (1, 0, 0));
/// # Ok::<(), keyed_dispatch::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Refusals {
    /// `Full` because the key's queue was full ([`Bound::Key`](crate::Bound::Key)).
    pub full_key: u64,
    /// `Full` because the dispatcher was full ([`Bound::Dispatcher`](crate::Bound::Dispatcher)).
    pub full_dispatcher: u64,
    /// `Timeout`: `dispatch_timeout` waited in vain.
    pub timed_out: u64,
    /// `Closed`: close had begun.
    pub closed: u64,
}

/// Why a dispatch was refused, for [`Counters::refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    FullKey,
    FullDispatcher,
    TimedOut,
    Closed,
}

/// Stripes of the accepted-jobs count (see [`Counters::accepted`]).
const STRIPES: usize = 8;

/// The atomic counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Jobs accepted, counted on one of several stripes by each producer thread, so that
    /// producers on different keys do not contend for one line; summed when read.
    accepted: [CachePadded<AtomicU64>; STRIPES],
    /// Added once per batch of a turn, by the worker that ran it.
    completed: CachePadded<AtomicU64>,
    /// Workers inside a turn of this dispatcher.
    running: CachePadded<AtomicUsize>,
    /// Producers waiting for room.
    blocked: AtomicUsize,
    failed: AtomicU64,
    panicked: AtomicU64,
    refused: AtomicU64,
    /// By [`Refusal`], in its order. This and `dropped` are `std`'s atomics even under loom
    /// and shuttle: they take no part in the protocol, and every atomic a model sees
    /// multiplies the schedules it explores.
    refusals: [std::sync::atomic::AtomicU64; 4],
    handed_back: AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    paused: AtomicUsize,
}

// ORDERING: the counters synchronize nothing but their own snapshot, which is documented as
// approximate while jobs move; once the dispatcher is idle the waits that establish idleness
// (`wait_idle`, `close`) synchronize with the workers through the gate, which is SeqCst. The
// exceptions: the turn count (see `turn_started`), and `completed` and `handed_back`, written
// with Release and read with Acquire before the accepted count, so that a snapshot never counts
// a job as finished without counting it as accepted.
impl Counters {
    /// A job was accepted: called under its mailbox's lock, before a worker can take it.
    pub(crate) fn accepted(&self) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES
            };
        }
        let stripe = STRIPE.with(|stripe| *stripe);
        self.accepted[stripe].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn completed(&self, n: usize) {
        self.completed.fetch_add(n as u64, Ordering::Release);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn panicked(&self) {
        self.panicked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Keys paused (`1`) or resumed (`-1`).
    pub(crate) fn paused(&self, n: isize) {
        if n >= 0 {
            self.paused.fetch_add(n as usize, Ordering::Relaxed);
        } else {
            self.paused.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a producer as blocked while `wait` runs.
    pub(crate) fn blocked<R>(&self, wait: impl FnOnce() -> R) -> R {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let result = wait();
        self.blocked.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// An async producer queued for room: counted in `blocked` until [`Counters::unblocked`].
    pub(crate) fn blocking(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unblocked(&self) {
        self.blocked.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn handed_back(&self, n: usize) {
        self.handed_back.fetch_add(n as u64, Ordering::Release);
    }

    pub(crate) fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Release);
    }

    // ORDERING: the turn count is SeqCst: `close_now` sets the halt flag and then waits for it
    // to reach zero, while a turn counts itself and then checks the flag (see `Core::run_turn`).
    pub(crate) fn turn_started(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns the number of turns still running.
    pub(crate) fn turn_ended(&self) -> usize {
        self.running.fetch_sub(1, Ordering::SeqCst) - 1
    }

    pub(crate) fn turns(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Builds a snapshot. Every counter in it only grows but `queued`, `running` and `blocked`.
    pub(crate) fn snapshot(&self, keys: usize, workers: usize) -> Stats {
        let completed = self.completed.load(Ordering::Acquire);
        let handed_back = self.handed_back.load(Ordering::Acquire);
        let dropped = self.dropped.load(Ordering::Acquire);
        let dispatched: u64 = self
            .accepted
            .iter()
            .map(|stripe| stripe.load(Ordering::Relaxed))
            .sum();
        let pending = dispatched.saturating_sub(completed + handed_back + dropped) as usize;
        let running = self.running.load(Ordering::Relaxed).min(pending);
        Stats {
            dispatched,
            completed,
            failed: self.failed.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            refusals: Refusals {
                full_key: self.refusals[Refusal::FullKey as usize].load(Ordering::Relaxed),
                full_dispatcher: self.refusals[Refusal::FullDispatcher as usize]
                    .load(Ordering::Relaxed),
                timed_out: self.refusals[Refusal::TimedOut as usize].load(Ordering::Relaxed),
                closed: self.refusals[Refusal::Closed as usize].load(Ordering::Relaxed),
            },
            handed_back,
            dropped,
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            queued: pending - running,
            running,
            blocked: self.blocked.load(Ordering::Relaxed),
            keys,
            workers,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn snapshot_derives_queued() {
        let c = Counters::default();
        for _ in 0..10 {
            c.accepted();
        }
        c.completed(5);
        c.handed_back(2);
        c.failed();
        c.panicked();
        c.refused(Refusal::TimedOut);
        c.turn_started();
        let s = c.blocked(|| c.snapshot(4, 8));
        assert_eq!(s.blocked, 1);
        assert_eq!(s.dispatched, 10);
        assert_eq!((s.completed, s.failed, s.panicked, s.refused), (5, 1, 1, 1));
        assert_eq!((s.refusals.timed_out, s.refusals.closed), (1, 0));
        assert_eq!((s.queued, s.running, s.keys, s.workers), (2, 1, 4, 8));
        c.turn_ended();
        assert_eq!(c.snapshot(0, 8).running, 0);
    }
}
