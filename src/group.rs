//! [`Group`]: a count of a set of jobs across keys, to wait for all of them at once.
//!
//! # Protocol
//!
//! A group is a shared [`Latch`] (see `latch`): `pending`, the group's jobs accepted and not yet
//! finished; tallies of how the finished ones ended; and a signal its waiters block on.
//!
//! 1. [`Group::dispatch`] counts the job (`pending += 1`) *before* routing it, so that a worker
//!    that runs it at once cannot take the count below zero. If the dispatch is refused (`Full`,
//!    `Timeout`, `Closed`) the count is undone, waking the waiters if that emptied the group: a
//!    refused job never counts.
//! 2. The key's mailbox queues the job as any other, and keeps a clone of the group's `Arc`
//!    beside the queue, as a *mark* at the job's position (see `mailbox`). Jobs outside any
//!    group have no mark: no allocation, no atomic operation and no wider queue slot for them.
//! 3. The worker that runs the job tallies its outcome (`completed`, and `failed` or `panicked`)
//!    and then decrements `pending`, right after the job and whatever the outcome: a failing or
//!    panicking job still completes its group.
//! 4. [`close_now`](crate::Dispatcher::close_now) tallies each job it hands back as
//!    `handed_back` and decrements `pending`, so a waiter never hangs on a job that will not run.
//! 5. A waiter returns once it sees `pending == 0`. Jobs may be added at any time, also while
//!    others wait: a wait covers the jobs counted before it returned, like a `WaitGroup` that
//!    can be reused.
//!
//! Why no wake-up is lost, and how the same count serves as the barrier behind
//! [`Dispatcher::flush_key`](crate::Dispatcher::flush_key): see `latch`.

use crate::{
    dispatcher::{
        core::{Core, Item, Wait},
        Dispatcher,
    },
    error::{DispatchError, WaitError},
    handler::BoxedJob,
    latch::{GroupReport, Latch},
    sync::Arc,
};
use std::{
    fmt::{self, Debug},
    hash::Hash,
    time::{Duration, Instant},
};

/// A job counted in a group and not (yet) accepted: dropped, it undoes the count.
struct Counted<'a>(&'a Latch);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.refused();
    }
}

/// A set of jobs, across any keys, that can be waited for together.
///
/// Made by [`Dispatcher::group`](crate::Dispatcher::group). Jobs dispatched through the group
/// go to the same per-key queues as any other job, with the same order and backpressure; the
/// group only counts them. [`wait`](Group::wait) blocks until every job dispatched through the
/// group so far has finished, and reports how they ended ([`GroupReport`]).
///
/// - A job that fails or panics still completes the group; the report counts it.
/// - A refused dispatch (`Full`, `Timeout`, `Closed`) hands its job back and is not counted.
/// - A job handed back by [`close_now`](crate::Dispatcher::close_now) completes the group as
///   [`handed_back`](GroupReport::handed_back): it will not run, so nothing waits for it.
/// - Waiting does not stop anyone from dispatching, through the group or not, nor from waiting
///   too: clones of a group share its count, and jobs dispatched while others wait are waited
///   for by waits that have not yet returned. A group with no pending job is done.
///
/// The group keeps its dispatcher's state alive, not the dispatcher open: once the last clone
/// of the [`Dispatcher`] is dropped (which closes it), dispatching through the group returns
/// `Closed`. A group
/// stored in its own dispatcher's handler makes a reference cycle; store it in another
/// dispatcher's handler, or pass it along with the job.
///
/// # Re-entrancy
///
/// [`wait`](Group::wait) and [`wait_timeout`](Group::wait_timeout) return
/// [`WaitError::WouldDeadlock`] at once on a worker thread of the dispatcher's pool (in a
/// handler of any dispatcher on that pool): the group's jobs may need that very thread, and if
/// every thread waited, none would be left to run them. Dispatching through a group from a
/// handler follows [`Dispatcher::dispatch`](crate::Dispatcher::dispatch): it never blocks there.
/// [`is_done`](Group::is_done) and [`report`](Group::report) never block.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, WaitError};
///
/// let d = Dispatcher::builder().workers(2).build(|_: &u32, n: i64| -> Result<(), String> {
///     if n < 0 {
///         return Err(format!("negative: {n}"));
///     }
///     Ok(())
/// })?;
/// let batch = d.group();
/// for (key, n) in [(1, 10), (2, -5), (1, 7), (3, 0)] {
///     batch.dispatch(key, n)?;
/// }
/// d.dispatch(4, 1)?; // not in the group
/// let report = batch.wait()?;
/// assert!(batch.is_done());
/// assert_eq!((report.dispatched, report.completed, report.failed), (4, 4, 1));
/// assert!(!report.all_succeeded());
/// # d.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Group<K, J> {
    core: Arc<Core<K, J>>,
    state: Arc<Latch>,
}

// Here rather than in `dispatcher`, so that the dispatcher needs nothing from this module.
impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// A new, empty [`Group`] on this dispatcher: jobs dispatched through it are counted, so
    /// that they can be waited for together, across keys. See [`Group`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u32| {})?;
    /// let batch = d.group();
    /// for n in 0..10 {
    ///     batch.dispatch((n % 3) as u8, n)?;
    /// }
    /// let report = batch.wait()?;
    /// assert_eq!(report.completed, 10);
    /// assert!(report.all_succeeded());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group(&self) -> Group<K, J> {
        Group::new(Arc::clone(&self.core))
    }
}

impl<K, J> Group<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn new(core: Arc<Core<K, J>>) -> Self {
        Group {
            core,
            state: Arc::new(Latch::new(0)),
        }
    }

    /// Dispatches `job` on `key` as [`Dispatcher::dispatch`](crate::Dispatcher::dispatch) does,
    /// and counts it in the group.
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::dispatch`](crate::Dispatcher::dispatch): `Closed`, or `Full` from a
    /// handler. The error holds the key and job, and the job is not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u32, _: u32| {})?;
    /// let batch = d.group();
    /// for n in 0..6 {
    ///     batch.dispatch(n % 3, n)?; // across three keys
    /// }
    /// assert_eq!(batch.wait()?.completed, 6);
    /// d.close();
    /// assert!(batch.dispatch(0, 6).unwrap_err().is_closed());
    /// assert_eq!(batch.report().dispatched, 6); // the refused job is not counted
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dispatch(&self, key: K, job: J) -> Result<(), DispatchError<K, J>> {
        self.send(key, job, self.core.blocking())
    }

    /// Dispatches `job` on `key` if there is room right now, counting it in the group; never
    /// blocks.
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::try_dispatch`](crate::Dispatcher::try_dispatch): `Full` or `Closed`.
    /// The error holds the key and job, and the job is not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().key_capacity(0).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// let batch = d.group();
    /// batch.try_dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs: key 1 has its one job
    /// assert!(batch.try_dispatch(1, 1).unwrap_err().is_full());
    /// drop(started);
    /// assert_eq!(batch.wait()?.dispatched, 1); // the refused job is not counted
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_dispatch(&self, key: K, job: J) -> Result<(), DispatchError<K, J>> {
        self.send(key, job, Wait::Never)
    }

    /// Dispatches `job` on `key`, waiting at most `timeout` for room, counting it in the group.
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::dispatch_timeout`](crate::Dispatcher::dispatch_timeout): `Timeout` or
    /// `Closed`. The error holds the key and job, and the job is not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().key_capacity(0).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// let batch = d.group();
    /// batch.dispatch_timeout(1, 0, Duration::from_secs(1))?;
    /// started.recv()?; // job 0 runs: key 1 has its one job
    /// let err = batch.dispatch_timeout(1, 1, Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(started);
    /// assert_eq!(batch.wait()?.dispatched, 1); // the refused job is not counted
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dispatch_timeout(
        &self,
        key: K,
        job: J,
        timeout: Duration,
    ) -> Result<(), DispatchError<K, J>> {
        self.send(key, job, Wait::within(timeout))
    }

    /// Dispatches `job` on `key`, counting it in the group, waiting for room without blocking
    /// a thread: [`Dispatcher::dispatch_async`](crate::Dispatcher::dispatch_async), whose
    /// rules, errors and cancellation it shares. The job counts in the group from this call
    /// on; if the future resolves with an error or is dropped before its job was accepted,
    /// the count is undone.
    #[cfg(feature = "async")]
    pub fn dispatch_async(&self, key: K, job: J) -> crate::DispatchAsync<'_, K, J> {
        crate::DispatchAsync::new(&self.core, key, job, Some(Arc::clone(&self.state)))
    }

    fn send(&self, key: K, job: J, wait: Wait) -> Result<(), DispatchError<K, J>> {
        self.state.add();
        // Undoes the count unless the job was accepted: it was refused, or the key's `Hash` or
        // `Eq` panicked while it was routed.
        let counted = Counted(&self.state);
        let item = Item {
            job,
            group: Some(Arc::clone(&self.state)),
        };
        let sent = self.core.send(key, item, wait);
        if sent.is_ok() {
            std::mem::forget(counted);
        }
        sent
    }

    /// Blocks until every job dispatched through the group so far has finished (or was handed
    /// back by `close_now`), and reports how they ended. Returns at once if none is pending.
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once on a worker thread of the dispatcher's pool (see
    /// the type's docs).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WaitError};
    /// use std::sync::mpsc;
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let batch = d.group();
    /// assert_eq!(batch.wait()?.dispatched, 0); // nothing pending: returns at once
    /// let (tx, rx) = mpsc::channel();
    /// let handle = batch.clone();
    /// batch.spawn(1, move || tx.send(handle.wait().err()).unwrap())?;
    /// assert_eq!(batch.wait()?.completed, 1);
    /// assert_eq!(rx.recv()?, Some(WaitError::WouldDeadlock)); // a job cannot wait for itself
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn wait(&self) -> Result<GroupReport, WaitError> {
        self.wait_until(None)
    }

    /// As [`wait`](Group::wait), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if jobs of the group were still pending after `timeout`;
    /// [`WaitError::WouldDeadlock`] as for [`wait`](Group::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WaitError};
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// let batch = d.group();
    /// batch.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs
    /// assert_eq!(batch.wait_timeout(Duration::from_millis(10)), Err(WaitError::Timeout));
    /// drop(started);
    /// assert_eq!(batch.wait_timeout(Duration::from_secs(60))?.completed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<GroupReport, WaitError> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// Waits, without blocking a thread, until no job of the group is pending: the async
    /// [`wait`](Group::wait), with the same report and errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let d = Dispatcher::builder().build(|_: &u8, _: u32| {})?;
    /// let batch = d.group();
    /// for n in 0..10 {
    ///     batch.dispatch(n as u8 % 3, n)?;
    /// }
    /// assert_eq!(batch.wait_async().await?.completed, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "async")]
    pub async fn wait_async(&self) -> Result<GroupReport, WaitError> {
        if self.core.pool().is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        self.state.finished().await;
        Ok(self.state.report())
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<GroupReport, WaitError> {
        if self.core.pool().must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        if self.state.wait(deadline) {
            Ok(self.state.report())
        } else {
            Err(WaitError::Timeout)
        }
    }

    /// Whether no job of the group is pending right now; never blocks. True for a group that
    /// has no job yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// let batch = d.group();
    /// assert!(batch.is_done()); // no job yet
    /// batch.dispatch(1, 1)?;
    /// batch.wait()?;
    /// assert!(batch.is_done());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_done(&self) -> bool {
        self.state.pending() == 0
    }

    /// The group's jobs accepted and not yet finished, right now.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// let batch = d.group();
    /// batch.dispatch(1, 0)?;
    /// batch.dispatch(1, 1)?;
    /// started.recv()?; // job 0 runs, job 1 waits behind it
    /// assert_eq!(batch.pending(), 2);
    /// drop(started);
    /// batch.wait()?;
    /// assert_eq!(batch.pending(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pending(&self) -> usize {
        self.state.pending()
    }

    /// A snapshot of the counts, without waiting; approximate while jobs move (see
    /// [`GroupReport`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, GroupReport};
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// let batch = d.group();
    /// assert_eq!(batch.report(), GroupReport::default());
    /// batch.dispatch(1, 1)?;
    /// let waited = batch.wait()?;
    /// assert_eq!(batch.report(), waited); // nothing moves once the jobs have finished
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn report(&self) -> GroupReport {
        self.state.report()
    }
}

impl<K> Group<K, BoxedJob>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    /// Dispatches a closure on `key`, counting it in the group; see
    /// [`Dispatcher::spawn`](crate::Dispatcher::spawn).
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Group::dispatch); the error holds the closure as a [`BoxedJob`], and is
    /// `Send + Sync`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let batch = d.group();
    /// for tenant in ["acme", "globex"] {
    ///     batch.spawn(tenant, move || println!("report for {tenant}"))?;
    /// }
    /// assert_eq!(batch.wait()?.completed, 2);
    /// d.close();
    /// assert!(batch.spawn("acme", || {}).unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn spawn(
        &self,
        key: K,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), DispatchError<K, BoxedJob>> {
        self.dispatch(key, BoxedJob::new(job))
    }
}

impl<K, J> Clone for Group<K, J> {
    /// Another handle on the same group: both count the same jobs.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// let batch = d.group();
    /// let other = batch.clone();
    /// other.dispatch(1, 1)?;
    /// batch.dispatch(2, 2)?;
    /// assert_eq!(batch.wait()?.completed, 2); // the jobs of both handles
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn clone(&self) -> Self {
        Group {
            core: Arc::clone(&self.core),
            state: Arc::clone(&self.state),
        }
    }
}

impl<K, J> Debug for Group<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("dispatcher", &self.core)
            .field("pending", &self.state.pending())
            .finish()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Through a dispatcher on one loom worker: a group's wait, then a flush of the group job's
    /// key, each return after the job ran. Bounded to two preemptions, as in `tests::loom`.
    #[test]
    fn loom_group_and_flush_wait_for_the_worker() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let count = Arc::clone(&ran);
            let d = crate::Dispatcher::builder()
                .workers(1)
                .build(move |_: &u8, _: u8| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .unwrap();
            let group = d.group();
            group.dispatch(1, 1).unwrap();
            d.dispatch(1, 2).unwrap();
            let report = group.wait().unwrap();
            assert_eq!(report.completed, 1);
            assert!(ran.load(std::sync::atomic::Ordering::SeqCst) >= 1);
            d.flush_key(&1).unwrap();
            assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
            d.close();
        });
    }
}
