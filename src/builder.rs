//! [`Builder`]: configures a dispatcher and checks the configuration before starting anything;
//! [`PoolBuilder`], the same for a shared [`WorkerPool`].

use crate::{
    config::{Config, ErrorHook, PanicHook},
    dispatcher::{core::Core, Dispatcher},
    error::BuildError,
    gate::MAX_CAPACITY,
    handler::{BoxedJob, Handler, HandlerOutput},
    pool::{default_workers, PoolShared, WorkerPool, DEFAULT_NAME},
    sync::Arc,
};
use std::{
    any::Any,
    fmt::{self, Debug, Display},
    hash::Hash,
    marker::PhantomData,
    time::Duration,
};

/// Jobs a dispatcher accepts and has not finished, in all, unless [`Builder::capacity`] says
/// otherwise.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Jobs a key runs while others are ready before its thread goes to the next of them, unless
/// [`Builder::jobs_per_turn`] says otherwise.
pub const DEFAULT_JOBS_PER_TURN: usize = 64;

/// Configures and builds a [`Dispatcher`]; from [`Dispatcher::builder`].
///
/// Every setting has a default, so `Dispatcher::builder().build(handler)` works. The
/// configuration is checked by [`build`](Builder::build), which returns a [`BuildError`] naming
/// what is wrong instead of panicking.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{BuildError, Dispatcher};
/// use std::time::Duration;
///
/// let d = Dispatcher::builder()
///     .workers(4)
///     .key_capacity(1024)
///     .capacity(100_000)
///     .jobs_per_turn(32)
///     .idle_timeout(Duration::from_secs(30))
///     .name("ledger")
///     .build(|account: &u64, amount: i64| println!("{account}: {amount}"))?;
/// d.close();
///
/// let err = Dispatcher::builder().workers(0).build(|_: &u64, _: i64| {}).unwrap_err();
/// assert!(matches!(err, BuildError::ZeroWorkers));
/// # Ok::<(), BuildError>(())
/// ```
pub struct Builder<K, J> {
    workers: Option<usize>,
    pin_workers: bool,
    pool: Option<Arc<PoolShared>>,
    max_parallel: Option<usize>,
    capacity: usize,
    key_capacity: Option<usize>,
    jobs_per_turn: usize,
    name: Option<String>,
    idle_timeout: Duration,
    on_panic: Option<PanicHook<K>>,
    on_error: Option<ErrorHook<K>>,
    jobs: PhantomData<fn(J)>,
}

impl<K, J> Builder<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn new() -> Self {
        Builder {
            workers: None,
            pin_workers: false,
            pool: None,
            max_parallel: None,
            capacity: DEFAULT_CAPACITY,
            key_capacity: None,
            jobs_per_turn: DEFAULT_JOBS_PER_TURN,
            name: None,
            idle_timeout: Duration::ZERO,
            on_panic: None,
            on_error: None,
            jobs: PhantomData,
        }
    }

    /// Threads of the dispatcher's private pool; defaults to
    /// [`std::thread::available_parallelism`]. However many keys there are, the dispatcher uses
    /// exactly this many threads. Not to be combined with [`pool`](Builder::pool).
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
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.pin_workers = pin;
        self
    }

    /// Runs the dispatcher on a shared [`WorkerPool`] instead of threads of its own.
    pub fn pool(mut self, pool: &WorkerPool) -> Self {
        self.pool = Some(Arc::clone(pool.shared()));
        self
    }

    /// The most threads of its pool the dispatcher uses at once; defaults to all of them.
    pub fn max_parallel(mut self, max_parallel: usize) -> Self {
        self.max_parallel = Some(max_parallel);
        self
    }

    /// The most jobs accepted and not yet finished, over all keys; defaults to
    /// [`DEFAULT_CAPACITY`]. A full dispatcher makes [`dispatch`](Dispatcher::dispatch) wait,
    /// and [`try_dispatch`](Dispatcher::try_dispatch) refuse with `Full`.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most jobs accepted and not yet finished for any one key (backpressure on a hot key);
    /// defaults to the global [`capacity`](Builder::capacity).
    pub fn key_capacity(mut self, key_capacity: usize) -> Self {
        self.key_capacity = Some(key_capacity);
        self
    }

    /// The most jobs a key runs while other keys are ready before its thread moves on to the
    /// next of them; defaults to [`DEFAULT_JOBS_PER_TURN`]. Lower is fairer to other keys, higher
    /// is cheaper for a hot key. While no other key is ready, a key keeps its thread for as long
    /// as it has jobs.
    pub fn jobs_per_turn(mut self, jobs_per_turn: usize) -> Self {
        self.jobs_per_turn = jobs_per_turn;
        self
    }

    /// Names the dispatcher in log lines, and its private pool's threads (`{name}-0`,
    /// `{name}-1`, ...); defaults to `keyed-dispatch`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Keeps an idle key in the routing map for at least `timeout` (and at most about twice
    /// that) before evicting it, so that a key that comes back within it keeps its entry. Idle
    /// keys are swept every `timeout`, and a key that stayed idle from one sweep to the next
    /// is evicted; [`wait_idle`](crate::Dispatcher::wait_idle) does not evict them sooner.
    ///
    /// The default, zero, sweeps every 20 ms once the dispatcher has run out of work (so an
    /// idle key goes 20 to 40 ms later), and sooner when more than 4,096 keys are idle while
    /// it is busy; `wait_idle` evicts every idle key at once.
    ///
    /// A timeout pays off when keys come back after longer gaps than that: a key's first job
    /// after its eviction creates its entry again, under the map shard's write lock. It costs
    /// memory: every key seen within the timeout stays, however many there are.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Called with the key and the panic payload when a job panics, after the panic has been
    /// logged at `error` and counted. A panic inside the hook is caught and logged.
    pub fn on_panic(
        mut self,
        hook: impl Fn(&K, &(dyn Any + Send)) + Send + Sync + 'static,
    ) -> Self {
        self.on_panic = Some(Box::new(hook));
        self
    }

    /// Called with the key and the error when a fallible handler fails, after the failure has
    /// been logged at `warn` and counted. A panic inside the hook counts as the job's panic.
    pub fn on_error(mut self, hook: impl Fn(&K, &dyn Display) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Box::new(hook));
        self
    }

    /// Checks the configuration, starts the threads (or attaches to the pool) and returns the
    /// dispatcher, which calls `handler` for every job: an infallible `Fn(&K, J)`, or a
    /// fallible `Fn(&K, J) -> Result<(), E>` with `E: Display` (see [`Handler`] for what
    /// happens to a failure). For a type of your own that implements [`Handler`], use
    /// [`build_handler`](Builder::build_handler).
    ///
    /// A closure passed straight to `build` needs no argument types: it takes them from the
    /// dispatcher's `K` and `J`, wherever those are named (`Dispatcher::<u64, String>::builder()`,
    /// a `let d: Dispatcher<u64, String>`, a later `dispatch`). Where the closure's body calls
    /// methods on its arguments, name the types before the closure: on the builder, or on the
    /// arguments (`|key: &u64, job: String|`). A closure first stored in a variable needs its
    /// key argument's type written out (`&u64`), as for any closure taking a reference.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting that cannot work (zero workers, zero capacity, a
    /// key capacity above the capacity, ...), [`BuildError::PoolClosed`] for a closed pool, or
    /// [`BuildError::Spawn`] if a thread could not be started (or [`BuildError::PinUnsupported`]
    /// or [`BuildError::PinRefused`] if it could not be pinned). Nothing keeps running then.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// // The types come from the `let`.
    /// let d: Dispatcher<u64, String> = Dispatcher::builder().build(|k, j| println!("{k} {j}"))?;
    /// d.dispatch(7, "hello".to_string())?;
    ///
    /// let checked = Dispatcher::<u64, i64>::builder().build(|account, amount| {
    ///     if amount.is_negative() {
    ///         return Err(format!("{account}: negative amount {amount}"));
    ///     }
    ///     Ok(())
    /// })?;
    /// checked.dispatch(7, -5)?; // fails: logged at `warn` and counted
    /// assert_eq!(checked.close().stats.failed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    // The `Fn` bound, rather than `H: Handler<K, J>`, is what lets the closure's signature be
    // inferred: the compiler gives a closure passed to an `Fn(&K, J)` bound a signature for
    // every lifetime of `&K`, while through the blanket `Handler` impl it would infer one
    // lifetime, and the closure would then not implement `Handler`.
    pub fn build<F, R>(self, handler: F) -> Result<Dispatcher<K, J>, BuildError>
    where
        F: Fn(&K, J) -> R + Send + Sync + 'static,
        R: HandlerOutput,
    {
        self.build_handler(handler)
    }

    /// As [`build`](Builder::build), for any [`Handler`]: a type of your own that carries state
    /// or a named error type. Closures implement `Handler` too, but pass them to `build`, which
    /// infers their argument types.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, Handler};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// struct Counter(AtomicU64);
    ///
    /// impl Handler<u8, u64> for Counter {
    ///     type Error = keyed_dispatch::Never;
    ///
    ///     fn handle(&self, _key: &u8, n: u64) -> Result<(), Self::Error> {
    ///         self.0.fetch_add(n, Ordering::Relaxed);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let d = Dispatcher::builder().build_handler(Counter(AtomicU64::new(0)))?;
    /// d.dispatch(1, 40)?;
    /// d.dispatch(2, 2)?;
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_handler<H: Handler<K, J>>(
        self,
        handler: H,
    ) -> Result<Dispatcher<K, J>, BuildError> {
        let workers = match &self.pool {
            Some(pool) => pool.workers(),
            None => self.workers.unwrap_or_else(default_workers),
        };
        let config = self.check(workers)?;
        let pool = match self.pool {
            Some(pool) => pool,
            None => PoolShared::start(workers, &config.name, false, self.pin_workers)?,
        };
        let core = Core::new(
            config,
            pool,
            Box::new(handler),
            self.on_panic,
            self.on_error,
        );
        core.pool().attach(core.as_client())?;
        log::debug!(
            "{}: dispatcher built on pool {} ({} workers)",
            core.config().name,
            core.pool().name(),
            core.pool().workers()
        );
        Ok(Dispatcher::from_core(core))
    }

    /// Checks the settings for a pool of `workers` threads.
    fn check(&self, workers: usize) -> Result<Config, BuildError> {
        if self.workers.is_some() && self.pool.is_some() {
            return Err(BuildError::WorkersWithPool);
        }
        if self.pin_workers && self.pool.is_some() {
            return Err(BuildError::PinWithPool);
        }
        if self.workers == Some(0) {
            return Err(BuildError::ZeroWorkers);
        }
        if self.capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        if self.capacity > MAX_CAPACITY {
            return Err(BuildError::CapacityTooLarge {
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        let key_capacity = self.key_capacity.unwrap_or(self.capacity);
        if key_capacity == 0 {
            return Err(BuildError::ZeroKeyCapacity);
        }
        if key_capacity > self.capacity {
            return Err(BuildError::KeyCapacityAboveCapacity {
                key_capacity,
                capacity: self.capacity,
            });
        }
        if self.jobs_per_turn == 0 {
            return Err(BuildError::ZeroJobsPerTurn);
        }
        let max_parallel = self.max_parallel.unwrap_or(workers);
        if max_parallel == 0 {
            return Err(BuildError::ZeroMaxParallel);
        }
        if max_parallel > workers {
            return Err(BuildError::MaxParallelAboveWorkers {
                max_parallel,
                workers,
            });
        }
        Ok(Config {
            name: self.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            capacity: self.capacity,
            key_capacity,
            jobs_per_turn: self.jobs_per_turn,
            max_parallel,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        })
    }
}

impl<K> Builder<K, BoxedJob>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    /// Builds a dispatcher of boxed closures, which runs each job by calling it. Use
    /// [`Dispatcher::spawn`] to dispatch them.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    pub fn build_spawner(self) -> Result<Dispatcher<K, BoxedJob>, BuildError> {
        self.build(|_: &K, job: BoxedJob| job.run())
    }
}

impl<K, J> fmt::Debug for Builder<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("pin_workers", &self.pin_workers)
            .field("pool", &self.pool)
            .field("max_parallel", &self.max_parallel)
            .field("capacity", &self.capacity)
            .field("key_capacity", &self.key_capacity)
            .field("jobs_per_turn", &self.jobs_per_turn)
            .field("name", &self.name)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

// The pool's constructors are here, beside its builder, so that the pool needs nothing from
// this module.
impl WorkerPool {
    /// Starts a pool of `workers` threads named `keyed-dispatch-0`, `keyed-dispatch-1`, ...
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for zero workers, [`BuildError::Spawn`] if a thread cannot be
    /// started.
    pub fn new(workers: usize) -> Result<WorkerPool, BuildError> {
        WorkerPool::builder().workers(workers).build()
    }

    /// A builder to name the threads as well.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            workers: None,
            name: None,
            pin_workers: false,
        }
    }
}

/// Configures a [`WorkerPool`]: `WorkerPool::builder().workers(8).name("shared").build()`.
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: Option<usize>,
    name: Option<String>,
    pin_workers: bool,
}

impl PoolBuilder {
    /// Number of threads; defaults to [`std::thread::available_parallelism`].
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Thread name prefix: threads are named `{name}-0`, `{name}-1`, ...; defaults to
    /// `keyed-dispatch`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Pins thread `i` to the `i`-th CPU the building thread may run on; off by default. As
    /// [`Builder::pin_workers`](crate::Builder::pin_workers), which says when it pays.
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.pin_workers = pin;
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for zero workers, [`BuildError::Spawn`] if a thread cannot be
    /// started, [`BuildError::PinUnsupported`] or [`BuildError::PinRefused`] if a thread cannot
    /// be pinned (those already started are stopped and joined).
    pub fn build(self) -> Result<WorkerPool, BuildError> {
        let workers = self.workers.unwrap_or_else(default_workers);
        let name = self.name.as_deref().unwrap_or(DEFAULT_NAME);
        let shared = PoolShared::start(workers, name, true, self.pin_workers)?;
        Ok(WorkerPool::from_shared(shared))
    }
}
