//! The settings of a dispatcher's threads: how many, on which pool, named and set up how.

use super::Builder;
use crate::pool::WorkerPool;
use crate::sync::Arc;
#[cfg(doc)]
use crate::{BuildError, PoolBuilder};
use std::{fmt::Debug, hash::Hash};

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Threads of the dispatcher's private pool; defaults to
    /// [`std::thread::available_parallelism`]. However many keys there are, the dispatcher uses
    /// exactly this many threads. Not to be combined with [`pool`](Builder::pool).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher};
    ///
    /// let d = Dispatcher::builder().workers(3).build(|_: &u8, _: u8| {})?;
    /// assert_eq!(d.stats().workers, 3);
    ///
    /// let err = Dispatcher::builder().workers(0).build(|_: &u8, _: u8| {}).unwrap_err();
    /// assert!(matches!(err, BuildError::ZeroWorkers));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Pins thread `i` of the dispatcher's private pool to the `i`-th CPU the building thread
    /// may run on (in turn, where there are more threads than CPUs); off by default. Not to be
    /// combined with [`pool`](Builder::pool): pin the shared pool instead
    /// ([`PoolBuilder::pin_workers`](crate::PoolBuilder::pin_workers)).
    ///
    /// It trades throughput for latency where the workers fill every core. Unpinned, a worker
    /// woken for a key may be queued by the kernel behind another worker's long job on the
    /// same core, for the rest of that job's time slice; pinned, each worker has its own core.
    /// But a pinned worker cannot move off a core that the producers, or anything else on the
    /// machine, are using. `BENCHMARKS.md` has the figures. Two pinned pools
    /// share the same CPUs.
    ///
    /// Offered on Linux, Android and FreeBSD, where a thread's affinity is a hard mask;
    /// elsewhere [`build`](Builder::build) returns [`BuildError::PinUnsupported`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
    ///
    /// match Dispatcher::builder().workers(2).pin_workers(true).build(|_: &u8, _: u8| {}) {
    ///     Ok(d) => assert_eq!(d.close().stats.workers, 2),
    ///     // Another system, or one that refused to pin a thread.
    ///     Err(err) => {
    ///         assert!(matches!(err, BuildError::PinUnsupported | BuildError::PinRefused { .. }))
    ///     }
    /// }
    ///
    /// let pool = WorkerPool::new(2)?;
    /// let err = Dispatcher::builder().pool(&pool).pin_workers(true).build(|_: &u8, _: u8| {});
    /// assert!(matches!(err.unwrap_err(), BuildError::PinWithPool));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.threads.pin = pin;
        self
    }

    /// Names thread `i` of the dispatcher's private pool `name(i)`, in place of the default
    /// `{name}-{i}` (see [`name`](Builder::name), which still names the dispatcher in log
    /// lines). As with [`std::thread::Builder::name`], Linux shows only the first 15 bytes of a
    /// name in `/proc` and tools such as `top`. Not to be combined with
    /// [`pool`](Builder::pool): name the shared pool's threads instead
    /// ([`PoolBuilder::thread_name`]).
    ///
    /// [`build`](Builder::build) calls `name` once for each thread, on the calling thread,
    /// before it starts any of them; a name holding a NUL byte is
    /// [`BuildError::NameWithNul`], and nothing is started.
    ///
    /// # Panics
    ///
    /// `build` panics if `name` does, with no thread started.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder()
    ///     .workers(2)
    ///     .thread_name(|i| format!("ledger-worker-{i}"))
    ///     .build(|_: &u64, _: i64| {
    ///         let name = std::thread::current().name().map(str::to_owned);
    ///         assert!(name.unwrap().starts_with("ledger-worker-"));
    ///     })?;
    /// d.dispatch(1, 10)?;
    /// assert_eq!(d.close().stats.panicked, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn thread_name(mut self, name: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.threads.name = Some(Arc::new(name));
        self
    }

    /// The stack size, in bytes, of each thread of the dispatcher's private pool, as
    /// [`std::thread::Builder::stack_size`] sets it: for handlers that need a deep stack. The
    /// default is the standard library's (2 MiB, unless `RUST_MIN_STACK` says otherwise). Not to
    /// be combined with [`pool`](Builder::pool) ([`PoolBuilder::stack_size`] instead).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder()
    ///     .stack_size(8 << 20) // 8 MiB for each worker thread
    ///     .build(|_: &u64, document: String| {
    ///         // A deeply recursive parse of `document`, say.
    ///         assert!(!document.is_empty());
    ///     })?;
    /// d.dispatch(1, "[[[[]]]]".to_owned())?;
    /// assert_eq!(d.close().stats.panicked, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.threads.stack_size = Some(bytes);
        self
    }

    /// Runs `hook` on each thread of the dispatcher's private pool when the thread starts:
    /// before it takes any work (and after it is pinned, with
    /// [`pin_workers`](Builder::pin_workers)). For per-thread setup, such as registering the
    /// thread with a profiler or setting a thread local. Not to be combined with
    /// [`pool`](Builder::pool) ([`PoolBuilder::on_thread_start`] instead).
    ///
    /// A panic in `hook` is caught and logged at `error`; the thread then goes on as if the hook
    /// had returned. A hook that blocks holds its thread: the pool's other threads take the work
    /// meanwhile, and [`close`](crate::Dispatcher::close) waits for it. `build` may return
    /// before every thread has run it.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let count = Arc::clone(&started);
    /// let d = Dispatcher::builder()
    ///     .workers(3)
    ///     .on_thread_start(move || {
    ///         count.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .build(|_: &u64, _: i64| {})?;
    /// d.close(); // joins the threads, so each has run the hook
    /// assert_eq!(started.load(Ordering::SeqCst), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_thread_start(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.threads.on_start = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` on each thread of the dispatcher's private pool right before the thread
    /// exits, once the pool has shut down: the last thing it does. [`close`](crate::Dispatcher::close)
    /// (or the drop of the dispatcher) joins the threads, so every thread has run it by the
    /// time `close` returns, except where `close` is called from inside a handler, which cannot
    /// wait for its own thread. Each thread that ran the
    /// [`on_thread_start`](Builder::on_thread_start) hook runs this one, also when `build`
    /// failed after it started. Not to be combined with [`pool`](Builder::pool)
    /// ([`PoolBuilder::on_thread_stop`] instead).
    ///
    /// A panic in `hook` is caught and logged at `error`; the thread then exits as if the hook
    /// had returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    ///
    /// let stopped = Arc::new(AtomicUsize::new(0));
    /// let count = Arc::clone(&stopped);
    /// let d = Dispatcher::builder()
    ///     .workers(2)
    ///     .on_thread_stop(move || {
    ///         count.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .build(|_: &u64, _: i64| {})?;
    /// d.dispatch(7, 1)?;
    /// assert_eq!(stopped.load(Ordering::SeqCst), 0);
    /// d.close();
    /// assert_eq!(stopped.load(Ordering::SeqCst), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_thread_stop(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.threads.on_stop = Some(Arc::new(hook));
        self
    }

    /// Runs the dispatcher on a shared [`WorkerPool`] instead of threads of its own. The
    /// threads' settings are then the pool's: [`workers`](Builder::workers),
    /// [`pin_workers`](Builder::pin_workers), [`thread_name`](Builder::thread_name),
    /// [`stack_size`](Builder::stack_size), [`on_thread_start`](Builder::on_thread_start) and
    /// [`on_thread_stop`](Builder::on_thread_stop) cannot be set with it, and
    /// [`build`](Builder::build) says so with a [`BuildError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
    ///
    /// let pool = WorkerPool::new(2)?;
    /// let d = Dispatcher::builder().pool(&pool).build(|_: &u8, _: u8| {})?;
    /// assert_eq!(d.stats().workers, 2); // the pool's threads
    ///
    /// let err = Dispatcher::builder().pool(&pool).workers(4).build(|_: &u8, _: u8| {});
    /// assert!(matches!(err.unwrap_err(), BuildError::WorkersWithPool));
    /// let err = Dispatcher::builder().pool(&pool).stack_size(1 << 20).build(|_: &u8, _: u8| {});
    /// let err = err.unwrap_err();
    /// assert!(matches!(err, BuildError::ThreadSettingsWithPool { setting: "stack_size" }));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn pool(mut self, pool: &WorkerPool) -> Self {
        self.pool = Some(Arc::clone(pool.shared()));
        self
    }
}
