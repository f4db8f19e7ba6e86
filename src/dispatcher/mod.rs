//! [`Dispatcher`]: the handle producers dispatch through.
//!
//! The handle forwards each call to the engine behind it, [`Core`]: the state it shares with the
//! worker threads. The engine is split by concern, one file each, so that each protocol is told
//! beside the code that runs it:
//!
//! - `core`: the shared state, and what a job carries on its way to its key;
//! - `route`: producers: gate, key map, mailbox; waiting for room; flush barriers;
//! - `tokens`: the ready queue, and the tokens that bring threads to it (the protocol in
//!   numbered steps, with why no wake-up is lost);
//! - `worker`: turns of ready keys, running each job and catching its panic;
//! - `evict`: the idle list, sweeps, spare mailboxes, the sweep timer;
//! - `pause`: pausing, resuming and cancelling one key;
//! - `backoff`: retried jobs' keys waiting out their backoff, and the timer that wakes them;
//! - `delay`: `dispatch_after`'s jobs waiting for their delay, and the timer that routes them;
//! - `due`: the heap of due instants and the timer bookkeeping those two share;
//! - `watch`: slow jobs, reported by a watchdog thread while they run;
//! - `latency`: each job's wait and run, counted per thread and merged for `metrics`;
//! - `publish`: with the `metrics` feature, the figures through the `metrics` crate's facade;
//! - `shutdown`: `close`, `close_now` and the waits; its docs number the shutdown steps and
//!   the races they must win.

mod backoff;
mod close;
pub(crate) mod core;
mod delay;
mod due;
mod evict;
#[cfg(feature = "async")]
mod future;
mod keys;
pub(crate) mod latency;
mod pause;
mod permit;
#[cfg(feature = "metrics")]
mod publish;
mod route;
mod shutdown;
#[cfg(feature = "tokio")]
mod tasks;
mod tokens;
pub(crate) mod watch;
mod worker;

use self::core::{Core, Item, Wait};
#[cfg(feature = "async")]
pub use self::future::{DispatchAsync, Reserve};
pub use self::{close::CloseReport, permit::Permit};
use crate::{
    builder::Builder,
    error::{DispatchError, WaitError},
    handler::BoxedJob,
    job_handle::JobHandle,
    pool::Client,
    stats::Stats,
    sync::Arc,
};
use std::{
    fmt::{self, Debug},
    hash::Hash,
    time::Duration,
};

/// Runs jobs one at a time per key, in dispatch order, and different keys in parallel on a
/// bounded pool of threads.
///
/// Build one with [`Dispatcher::builder`]. See the [crate docs](crate) for the guarantees.
///
/// # Sharing and dropping
///
/// `Dispatcher` is a handle: clone it to share it between threads; the last clone's drop closes
/// it, draining and joining.
///
/// Clones share one dispatcher: the same keys, queues, threads and counters, so a key's order
/// holds across them. Cloning costs two reference count increments, and no `Arc` is needed
/// around the handle (being `Send + Sync`, it can also be shared by reference, with scoped
/// threads). The last clone's drop closes the dispatcher as [`close`](Dispatcher::close) does:
/// every accepted job runs, and the threads of a private pool are joined, before `drop`
/// returns. Dropping any other clone does nothing. `close` (or `close_now`) through any clone
/// closes the dispatcher for all of them. A [`Group`] does not keep the dispatcher open.
///
/// # Re-entrancy
///
/// A handler may use the dispatcher it runs on (through a clone, or a `Weak` of an `Arc`):
/// dispatching never blocks on a worker thread of the dispatcher's own pool (where waiting for
/// room could deadlock, a full queue refuses with `Full`); `wait_idle`, `flush_key`,
/// `close_now` and a [`Group`]'s waits return [`WaitError::WouldDeadlock`] there (in a handler
/// of any dispatcher on the same pool); `close` stops accepting but does not wait. Dropping the
/// last clone inside a handler behaves like that `close`: the shutdown finishes when the last
/// job does, and no accepted job is lost. A clone kept in the dispatcher's own handler makes a
/// reference cycle, which keeps the dispatcher open until `close` is called.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// let d = Dispatcher::builder().build(|_: &u32, _: u32| {})?;
/// std::thread::scope(|s| {
///     for producer in 0..4 {
///         let d = &d; // shared by reference: no clone needed with scoped threads
///         s.spawn(move || {
///             for n in 0..100 {
///                 d.dispatch(producer, n).unwrap();
///             }
///         });
///     }
/// });
/// assert_eq!(d.close().stats.completed, 400);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`Group`]: crate::Group
pub struct Dispatcher<K, J> {
    pub(crate) core: Arc<Core<K, J>>,
    /// Shared by every clone: the last clone's drop drops it, which closes the dispatcher. Apart
    /// from `core`, so that a dispatch goes to the core without reading through it.
    handle: Arc<LastHandle>,
}

/// What the clones of one [`Dispatcher`] share; its drop closes the dispatcher.
struct LastHandle {
    /// The core, erased so that `Drop` (which cannot require `K`'s bounds) can close it.
    client: Arc<dyn Client>,
}

impl Drop for LastHandle {
    /// The last clone is gone: close as [`Dispatcher::close`] does, which on a worker thread
    /// (in a handler) only stops accepting (see the type's docs).
    fn drop(&mut self) {
        self.client.close_client();
    }
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Marks the calling thread as inside one of this dispatcher's jobs, as an async
    /// dispatcher's task is while it polls one: for the models of the calls that must not
    /// block there.
    #[cfg(all(test, loom))]
    pub(crate) fn enter_job(&self) -> crate::pool::InJob {
        self.core.pool().enter_job()
    }

    /// A [`Builder`] with every setting at its default.
    ///
    /// `K` needs `Debug` because every log line names its key.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// // With the types named here, the handler's argument types are inferred.
    /// let d = Dispatcher::<u64, String>::builder().build(|account, memo| {
    ///     assert!(*account > 0 && !memo.is_empty());
    /// })?;
    /// d.dispatch(7, "opened".to_string())?;
    /// assert_eq!(d.close().stats.panicked, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> Builder<K, J> {
        Builder::new()
    }

    pub(crate) fn from_core(core: Arc<Core<K, J>>) -> Self {
        let client = Arc::clone(&core) as Arc<dyn Client>;
        Dispatcher {
            core,
            handle: Arc::new(LastHandle { client }),
        }
    }

    /// Dispatches `job` on `key`. It runs after every job dispatched on `key` before this call
    /// returned, and before any dispatched after; jobs of other keys run in parallel.
    ///
    /// Blocks while the key's queue ([`key_capacity`](Builder::key_capacity)) or the whole
    /// dispatcher ([`capacity`](Builder::capacity)) is full. Called on a worker thread of the
    /// dispatcher's own pool (from a handler), it never blocks: it refuses with `Full` instead,
    /// since waiting there could deadlock.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Closed`] once [`close`](Dispatcher::close) has begun;
    /// [`DispatchError::Full`] only from a handler, as above. The error holds the key and job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let d = Dispatcher::builder().build(move |key: &&'static str, n: u32| {
    ///     log.lock().unwrap().push((*key, n));
    /// })?;
    /// for n in 0..3 {
    ///     d.dispatch("a", n)?;
    /// }
    /// d.close();
    /// assert_eq!(*seen.lock().unwrap(), [("a", 0), ("a", 1), ("a", 2)]);
    /// assert!(d.dispatch("a", 3).unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dispatch(&self, key: K, job: J) -> Result<(), DispatchError<K, J>> {
        self.core
            .send(key, Item { job, group: None }, self.core.blocking())
    }

    /// Dispatches `job` on `key` if there is room right now; never blocks.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Full`] if the key's queue or the dispatcher is full,
    /// [`DispatchError::Closed`] once close has begun. The error holds the key and job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let (started, wait_start) = mpsc::channel();
    /// let (release, gate) = mpsc::channel::<()>();
    /// let gate = std::sync::Mutex::new(gate);
    /// let d = Dispatcher::builder().key_capacity(0).build(move |_: &u8, _: u32| {
    ///     started.send(()).unwrap();
    ///     gate.lock().unwrap().recv().unwrap();
    /// })?;
    /// # let release = release; // dropped before `d`, should an assertion fail
    /// d.try_dispatch(1, 10)?;
    /// wait_start.recv()?; // job 10 is running, and no job may wait behind it
    /// let err = d.try_dispatch(1, 11).unwrap_err();
    /// assert_eq!(err.bound(), Some(Bound::Key));
    /// assert_eq!(err.into_inner(), (1, 11));
    /// release.send(())?;
    /// # d.close();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_dispatch(&self, key: K, job: J) -> Result<(), DispatchError<K, J>> {
        self.core.send(key, Item { job, group: None }, Wait::Never)
    }

    /// Dispatches `job` on `key`, waiting at most `timeout` for room. Unlike
    /// [`dispatch`](Dispatcher::dispatch), it waits on worker threads too, since its wait is
    /// bounded.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Timeout`] if there was no room within `timeout`,
    /// [`DispatchError::Closed`] once close has begun. The error holds the key and job.
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
    /// d.dispatch_timeout(1, 0, Duration::from_secs(1))?;
    /// started.recv()?; // job 0 runs: key 1 has its one job
    /// let err = d.dispatch_timeout(1, 1, Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_timeout());
    /// drop(started);
    /// d.dispatch_timeout(1, 1, Duration::from_secs(60))?; // room once job 0 ends
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dispatch_timeout(
        &self,
        key: K,
        job: J,
        timeout: Duration,
    ) -> Result<(), DispatchError<K, J>> {
        let item = Item { job, group: None };
        self.core.send(key, item, Wait::within(timeout))
    }

    /// Blocks until no job is queued or running and, with the default eviction, every idle key
    /// has been evicted (so `stats().keys == 0`). Jobs dispatched meanwhile are waited for too.
    ///
    /// A paused key holding jobs would keep it waiting for ever: it returns
    /// [`WaitError::KeysPaused`] instead, checked when it begins and whenever it wakes (a key
    /// paused while it waits is seen once its running job ends). A paused key without jobs
    /// stays in the map; the wait does not count it.
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once when called on a worker thread of the dispatcher's
    /// pool (from a handler): the calling job itself would never finish.
    /// [`WaitError::KeysPaused`] as above.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WaitError};
    /// use std::sync::mpsc;
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let (tx, rx) = mpsc::channel();
    /// for n in 0..10 {
    ///     let (tx, handle) = (tx.clone(), d.clone());
    ///     d.spawn(n % 3, move || tx.send(handle.wait_idle()).unwrap())?;
    /// }
    /// d.wait_idle()?; // all 10 have run
    /// assert_eq!(d.stats().keys, 0); // and their idle keys are evicted
    /// let waits: Vec<_> = rx.try_iter().collect();
    /// assert_eq!(waits, [Err(WaitError::WouldDeadlock); 10]); // a job cannot wait for itself
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn wait_idle(&self) -> Result<(), WaitError> {
        self.core.wait_idle()
    }

    /// A snapshot of the counters; see [`Stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// d.dispatch(1, 1)?;
    /// d.close();
    /// assert!(d.try_dispatch(1, 2).is_err());
    /// let stats = d.stats();
    /// assert_eq!((stats.dispatched, stats.completed, stats.refused), (1, 1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Whether [`close`](Dispatcher::close) or [`close_now`](Dispatcher::close_now) has begun.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// let producer = d.clone();
    /// assert!(!producer.is_closed());
    /// d.close();
    /// assert!(producer.is_closed()); // closed through any clone, for all of them
    /// assert!(producer.dispatch(1, 1).unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// The name given by [`Builder::name`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().name("ledger").build(|_: &u8, _: u8| {})?;
    /// assert_eq!(d.name(), "ledger");
    /// let unnamed = Dispatcher::builder().build(|_: &u8, _: u8| {})?;
    /// assert_eq!(unnamed.name(), "keyed-dispatch");
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.core.config().name
    }
}

impl<K> Dispatcher<K, BoxedJob>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    /// Dispatches a closure on `key`; see [`dispatch`](Dispatcher::dispatch), whose rules and
    /// errors it shares. For dispatchers built with [`Builder::build_spawner`].
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Dispatcher::dispatch); the error holds the closure as a [`BoxedJob`].
    /// It is `Send + Sync`, so `?` turns it into a `Box<dyn Error + Send + Sync>` or an
    /// `anyhow::Error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{atomic::{AtomicU32, Ordering}, Arc};
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let count = Arc::new(AtomicU32::new(0));
    /// for tenant in ["acme", "globex"] {
    ///     let count = Arc::clone(&count);
    ///     d.spawn(tenant, move || {
    ///         count.fetch_add(1, Ordering::Relaxed);
    ///     })?;
    /// }
    /// d.close();
    /// assert_eq!(count.load(Ordering::Relaxed), 2);
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn spawn(
        &self,
        key: K,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), DispatchError<K, BoxedJob>> {
        self.dispatch(key, BoxedJob::new(job))
    }

    /// Dispatches a closure on `key` as [`spawn`](Dispatcher::spawn) does, and returns a
    /// handle on its result: [`join`](JobHandle::join) it, or `.await` it.
    ///
    /// Dropping the handle does not cancel the job. A job that panics gives
    /// [`JobError::Panicked`](crate::JobError::Panicked) with its payload, and counts as a panic in the dispatcher's
    /// [`stats`](Dispatcher::stats) (its `on_panic` hook sees a message in place of the
    /// payload, which went to the handle). The handle is filled as the job ends, a moment
    /// before the worker counts it. A job handed back by
    /// [`close_now`](Dispatcher::close_now) gives [`JobError::HandedBack`](crate::JobError::HandedBack) once it is dropped
    /// unrun (running it gives its value).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Dispatcher::spawn); the refused job, in the error, would fill the handle
    /// (which is not returned) if run.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, JobError};
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let answer = d.spawn_with_result("calc", || 6 * 7)?;
    /// assert_eq!(answer.join()?, 42);
    /// let failed = d.spawn_with_result("calc", || -> u32 { panic!("no") })?;
    /// assert!(matches!(failed.join(), Err(JobError::Panicked(_))));
    /// assert_eq!(d.close().stats.panicked, 1); // counted once the worker is done with it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_with_result<T: Send + 'static>(
        &self,
        key: K,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobHandle<T>, DispatchError<K, BoxedJob>> {
        let (completer, handle) = crate::job_handle::pair(Arc::clone(self.core.pool()));
        self.spawn(key, move || completer.run(job))?;
        Ok(handle)
    }
}

impl<K, J> Clone for Dispatcher<K, J> {
    /// Another handle on the same dispatcher. The dispatcher closes when the last handle is
    /// dropped, or when any of them calls [`close`](Dispatcher::close).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::thread;
    ///
    /// let d = Dispatcher::builder().build(|_: &u32, _: u32| {})?;
    /// let producers: Vec<_> = (0..4)
    ///     .map(|p| {
    ///         let d = d.clone();
    ///         thread::spawn(move || {
    ///             for n in 0..100 {
    ///                 d.dispatch(p, n).unwrap();
    ///             }
    ///         }) // dropping this clone leaves the dispatcher open
    ///     })
    ///     .collect();
    /// for producer in producers {
    ///     producer.join().unwrap();
    /// }
    /// assert_eq!(d.close().stats.completed, 400);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn clone(&self) -> Self {
        Dispatcher {
            core: Arc::clone(&self.core),
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<K, J> Debug for Dispatcher<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("core", &self.core)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
