//! The handle's shutdown calls: [`Dispatcher::close`], [`Dispatcher::close_now`] and
//! [`Dispatcher::close_timeout`], and [`CloseReport`]. The engine's side, with the shutdown's
//! steps and races, is in `shutdown`.

use super::Dispatcher;
use crate::{error::WaitError, stats::Stats};
use std::{fmt::Debug, hash::Hash, time::Duration};

/// What [`Dispatcher::close`] found.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
/// use std::sync::mpsc;
///
/// let d = Dispatcher::builder().build_spawner()?;
/// let (tx, rx) = mpsc::channel();
/// let handle = d.clone();
/// d.spawn(1, move || tx.send(handle.close()).unwrap())?;
/// assert!(!rx.recv()?.drained); // from a job: it only stopped accepting
/// let report = d.close(); // waits for the drain and joins the threads
/// assert!(report.drained);
/// assert_eq!(report.stats.completed, 1);
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// The counters when close returned; exact when `drained` is true.
    pub stats: Stats,
    /// True when every accepted job had finished and the threads were joined before close
    /// returned; false when close was called on one of the pool's worker threads (from a
    /// handler), where it only stops accepting.
    pub drained: bool,
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Stops accepting jobs, runs every job already accepted, evicts every key and joins the
    /// worker threads (of a private pool; a shared pool keeps its threads). Idempotent: a
    /// second call, concurrent or later, waits for the same drain and returns the same counts.
    ///
    /// From a handler it only stops accepting and returns at once with
    /// [`CloseReport::drained`] false: the shutdown finishes when the last job does, and a
    /// later `close` from outside (or the last clone's drop) still waits and joins.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().workers(2).build(|_: &u32, _: u32| {})?;
    /// for i in 0..100 {
    ///     d.dispatch(i % 7, i)?;
    /// }
    /// let report = d.close();
    /// assert!(report.drained);
    /// assert_eq!(report.stats.completed, 100);
    /// assert_eq!(report.stats.keys, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) -> CloseReport {
        let closed = self.core.close();
        CloseReport {
            stats: closed.stats,
            drained: closed.drained,
        }
    }

    /// Stops accepting jobs and starting them, waits for the jobs running right now, and hands
    /// back every accepted job that had not started, grouped by key, each key's jobs in
    /// dispatch order, so that they can be persisted and replayed later without breaking any
    /// key's order. Then evicts every key and joins the threads, as [`close`](Dispatcher::close).
    ///
    /// A job in backoff comes back first among its key's jobs; jobs of
    /// [`dispatch_after`](Dispatcher::dispatch_after) that were not yet due come back after
    /// their key's queued jobs, earliest due first.
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once, changing nothing, when called on a worker thread of
    /// the dispatcher's pool (from a handler): it would wait for its own job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{mpsc, Mutex};
    ///
    /// let (started, wait_start) = mpsc::channel();
    /// let (release, gate) = mpsc::channel::<()>();
    /// let gate = Mutex::new(gate);
    /// let d = Dispatcher::builder().workers(1).build(move |_: &char, n: u32| {
    ///     if n == 0 {
    ///         started.send(()).unwrap();
    ///         gate.lock().unwrap().recv().unwrap();
    ///     }
    /// })?;
    /// d.dispatch('a', 0)?;
    /// wait_start.recv()?; // job 0 is running
    /// for n in 1..4 {
    ///     d.dispatch('a', n)?;
    /// }
    /// let left = std::thread::scope(|s| {
    ///     // Let job 0 finish once close_now has begun.
    ///     s.spawn(|| {
    ///         while !d.is_closed() {
    ///             std::thread::yield_now();
    ///         }
    ///         release.send(()).unwrap();
    ///     });
    ///     d.close_now()
    /// })?;
    /// assert_eq!(left, [('a', vec![1, 2, 3])]);
    /// assert_eq!(d.stats().handed_back, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_now(&self) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        self.core.close_now()
    }

    /// Closes within `timeout`: stops accepting, drains as [`close`](Dispatcher::close) does
    /// until the deadline, and then stops as [`close_now`](Dispatcher::close_now) does,
    /// handing back every accepted job that has not started, by key in dispatch order
    /// (empty if the drain finished in time). Jobs in backoff and delayed jobs come back too,
    /// as with `close_now`.
    ///
    /// It returns within the deadline plus a short grace (a few milliseconds, for turns
    /// between two jobs to stop), even if a handler never returns. A job still running then
    /// cannot be stopped, and its key's unstarted jobs stay with it: the running turn holds
    /// some of them, and handing back the others alone would break the key's order on replay.
    /// Such a key comes back whole, or not at all. Then the dispatcher is halted but not
    /// finished: [`stats`](Dispatcher::stats) counts the keys still `running`, and their
    /// jobs as unfinished until their turns end, and the pool's threads are not joined (a
    /// private pool's threads end on their own once their jobs return). Afterwards:
    ///
    /// - `close_now` waits for those jobs to return and hands back the kept ones;
    /// - `close` (and the last handle's drop) does not wait: the kept jobs are dropped once
    ///   the running ones return, logged at `error` and counted in
    ///   [`Stats::dropped`](crate::Stats::dropped), and `drained` is false;
    /// - [`wait_idle`](Dispatcher::wait_idle) returns [`WaitError::Halted`].
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once, changing nothing, when called on a worker thread
    /// of the dispatcher's pool (from a handler).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::{sync::{mpsc, Mutex}, time::Duration};
    ///
    /// let (started, wait_start) = mpsc::channel();
    /// let (release, hung) = mpsc::channel::<()>();
    /// let hung = Mutex::new(hung);
    /// let d = Dispatcher::builder().workers(1).build(move |_: &char, n: u32| {
    ///     if n == 0 {
    ///         started.send(()).unwrap();
    ///         hung.lock().unwrap().recv().ok(); // a call that hangs until released
    ///     }
    /// })?;
    /// d.dispatch('a', 0)?;
    /// wait_start.recv()?;
    /// d.dispatch('a', 1)?;
    /// d.dispatch('b', 2)?; // never starts: the one thread is stuck in job 0
    /// let left = d.close_timeout(Duration::from_millis(10))?;
    /// assert_eq!(left, [('b', vec![2])]); // 'a' keeps job 1 behind its running job
    /// assert_eq!((d.stats().running, d.stats().queued), (1, 1));
    /// release.send(())?; // job 0 returns
    /// assert_eq!(d.close_now()?, [('a', vec![1])]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_timeout(&self, timeout: Duration) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        self.core.close_timeout(timeout)
    }
}
