//! [`PoolBuilder`]: configures a shared [`WorkerPool`]. The pool's constructors are here too,
//! beside its builder, so that the pool needs nothing from the builder.

use crate::{
    config::ThreadSettings,
    error::BuildError,
    pool::{default_workers, PoolShared, WorkerPool, DEFAULT_NAME},
    sync::Arc,
};

impl WorkerPool {
    /// Starts a pool of `workers` threads named `keyed-dispatch-0`, `keyed-dispatch-1`, ...
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for zero workers, [`BuildError::TooManyWorkers`] for more
    /// than a pool may have, [`BuildError::Spawn`] if a thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, WorkerPool};
    ///
    /// let pool = WorkerPool::new(2)?;
    /// assert_eq!(pool.workers(), 2);
    /// assert!(matches!(WorkerPool::new(0), Err(BuildError::ZeroWorkers)));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn new(workers: usize) -> Result<WorkerPool, BuildError> {
        WorkerPool::builder().workers(workers).build()
    }

    /// A builder to set the threads up as well: their names, stack size, pinning and hooks.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::WorkerPool;
    ///
    /// let pool = WorkerPool::builder().workers(2).name("io").build()?;
    /// assert_eq!(pool.workers(), 2);
    /// let default = WorkerPool::builder().build()?;
    /// assert_eq!(default.workers(), std::thread::available_parallelism()?.get());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            workers: None,
            name: None,
            threads: ThreadSettings::default(),
        }
    }
}

/// Configures a [`WorkerPool`]: `WorkerPool::builder().workers(8).name("shared").build()`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, WorkerPool};
///
/// let pool = WorkerPool::builder().workers(2).name("shared").stack_size(4 << 20).build()?;
/// let d = Dispatcher::builder().pool(&pool).build(|_: &u8, _: u8| {})?;
/// d.dispatch(1, 1)?;
/// pool.close(); // closes and drains `d` too
/// assert_eq!(d.stats().completed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: Option<usize>,
    name: Option<String>,
    threads: ThreadSettings,
}

impl PoolBuilder {
    /// Number of threads; defaults to [`std::thread::available_parallelism`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, WorkerPool};
    ///
    /// assert_eq!(WorkerPool::builder().workers(3).build()?.workers(), 3);
    /// let err = WorkerPool::builder().workers(0).build().unwrap_err();
    /// assert!(matches!(err, BuildError::ZeroWorkers));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Names the pool in log lines, and its threads `{name}-0`, `{name}-1`, ... (unless
    /// [`thread_name`](PoolBuilder::thread_name) names them); defaults to `keyed-dispatch`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WorkerPool};
    ///
    /// let pool = WorkerPool::builder().workers(2).name("shared").build()?;
    /// let d = Dispatcher::builder().pool(&pool).build(|_: &u8, _: u8| {
    ///     assert!(std::thread::current().name().unwrap().starts_with("shared-"));
    /// })?;
    /// d.dispatch(1, 1)?;
    /// assert_eq!(d.close().stats.panicked, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Pins thread `i` to the `i`-th CPU the building thread may run on; off by default. As
    /// [`Builder::pin_workers`](crate::Builder::pin_workers), which says when it pays.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, WorkerPool};
    ///
    /// match WorkerPool::builder().workers(2).pin_workers(true).build() {
    ///     Ok(pool) => assert_eq!(pool.workers(), 2),
    ///     // Another system, or one that refused to pin a thread.
    ///     Err(err) => {
    ///         assert!(matches!(err, BuildError::PinUnsupported | BuildError::PinRefused { .. }))
    ///     }
    /// }
    /// ```
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.threads.pin = pin;
        self
    }

    /// Names thread `i` `name(i)`, in place of the default `{name}-{i}`; called once for each
    /// thread by [`build`](PoolBuilder::build) before it starts any. As
    /// [`Builder::thread_name`](crate::Builder::thread_name): a name holding a NUL byte is
    /// [`BuildError::NameWithNul`].
    ///
    /// # Panics
    ///
    /// `build` panics if `name` does, with no thread started.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::WorkerPool;
    ///
    /// let pool = WorkerPool::builder()
    ///     .workers(2)
    ///     .thread_name(|i| format!("io-{i}"))
    ///     .build()?;
    /// pool.close();
    ///
    /// let err = WorkerPool::builder().thread_name(|_| "a\0b".into()).build().unwrap_err();
    /// assert!(matches!(err, keyed_dispatch::BuildError::NameWithNul));
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn thread_name(mut self, name: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.threads.name = Some(Arc::new(name));
        self
    }

    /// The stack size, in bytes, of each thread, as [`std::thread::Builder::stack_size`] sets
    /// it; defaults to the standard library's (2 MiB, unless `RUST_MIN_STACK` says otherwise).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::WorkerPool;
    ///
    /// let pool = WorkerPool::builder().workers(2).stack_size(8 << 20).build()?;
    /// pool.close();
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.threads.stack_size = Some(bytes);
        self
    }

    /// Runs `hook` on each thread when it starts, before it takes any work (and after it is
    /// pinned, with [`pin_workers`](PoolBuilder::pin_workers)). As
    /// [`Builder::on_thread_start`](crate::Builder::on_thread_start): a panic in `hook` is
    /// caught and logged at `error`, and the thread goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::WorkerPool;
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let count = Arc::clone(&started);
    /// let pool = WorkerPool::builder()
    ///     .workers(2)
    ///     .on_thread_start(move || {
    ///         count.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .build()?;
    /// pool.close(); // joins the threads, so each has run the hook
    /// assert_eq!(started.load(Ordering::SeqCst), 2);
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn on_thread_start(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.threads.on_start = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` on each thread right before it exits, once the pool has shut down.
    /// [`WorkerPool::close`] (or the drop of the pool) joins the threads, so every thread has
    /// run it by the time `close` returns, unless `close` is called from one of the pool's
    /// threads. As [`Builder::on_thread_stop`](crate::Builder::on_thread_stop): a panic in
    /// `hook` is caught and logged at `error`, and the thread exits.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::WorkerPool;
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    ///
    /// let stopped = Arc::new(AtomicUsize::new(0));
    /// let count = Arc::clone(&stopped);
    /// let pool = WorkerPool::builder()
    ///     .workers(2)
    ///     .on_thread_stop(move || {
    ///         count.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .build()?;
    /// pool.close();
    /// assert_eq!(stopped.load(Ordering::SeqCst), 2);
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn on_thread_stop(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.threads.on_stop = Some(Arc::new(hook));
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for zero workers, [`BuildError::TooManyWorkers`] for more
    /// than a pool may have, [`BuildError::NameWithNul`] for a thread
    /// name with a NUL byte, [`BuildError::Spawn`] if a thread cannot be started,
    /// [`BuildError::PinUnsupported`] or [`BuildError::PinRefused`] if a thread cannot be
    /// pinned (those already started are stopped and joined).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, WorkerPool};
    ///
    /// let pool = WorkerPool::builder().workers(2).build()?;
    /// assert_eq!(pool.workers(), 2);
    /// let err = WorkerPool::builder().workers(usize::MAX).build().unwrap_err();
    /// assert!(matches!(err, BuildError::TooManyWorkers { workers: usize::MAX, .. }));
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn build(self) -> Result<WorkerPool, BuildError> {
        let workers = self.workers.unwrap_or_else(default_workers);
        let name = self.name.as_deref().unwrap_or(DEFAULT_NAME);
        let shared = PoolShared::start(workers, name, true, &self.threads)?;
        Ok(WorkerPool::from_shared(shared))
    }
}
