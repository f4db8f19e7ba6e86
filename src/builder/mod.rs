//! [`Builder`]: configures a dispatcher and checks the configuration before starting anything;
//! [`PoolBuilder`], the same for a shared [`WorkerPool`](crate::WorkerPool). The dispatcher's settings are split
//! by what they shape: its threads (`threads`), its queues (`queues`), and here its name, its
//! hooks and the build.

mod pool;
mod queues;
mod retry;
#[cfg(feature = "tokio")]
mod tasks;
mod threads;

pub use pool::PoolBuilder;
#[cfg(feature = "tokio")]
pub use tasks::DEFAULT_MAX_IN_FLIGHT;

use crate::{
    config::{Config, PanicHook, ThreadSettings},
    dispatcher::{
        core::{Core, Runner},
        latency::Latency,
        watch::{SlowHook, Watch},
        Dispatcher,
    },
    error::BuildError,
    gate::MAX_CAPACITY,
    handler::{BoxedJob, ErasedHandler, Handler, HandlerOutput, Never, Plain},
    hooks::{ErrorHook, ErrorHookFn, NoDeadLetter, NoErrorHook},
    pool::{default_workers, PoolShared, DEFAULT_NAME, MAX_WORKERS},
    retry::RetryPolicy,
    sync::Arc,
};
use std::{
    any::Any,
    fmt::{self, Debug},
    hash::Hash,
    marker::PhantomData,
    time::Duration,
};

/// Jobs that wait to run in a dispatcher, over all keys, unless [`Builder::capacity`] says
/// otherwise.
///
/// # Examples
///
/// ```
/// assert_eq!(keyed_dispatch::DEFAULT_CAPACITY, 1 << 20);
/// ```
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Jobs a key runs while others are ready before its thread goes to the next of them, unless
/// [`Builder::jobs_per_turn`] says otherwise.
///
/// # Examples
///
/// ```
/// assert_eq!(keyed_dispatch::DEFAULT_JOBS_PER_TURN, 64);
/// ```
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
///
/// The last two type parameters are the typed failure hooks: `D` the dead-letter hook of a
/// retrying dispatcher, set by [`on_dead_letter`](Builder::on_dead_letter), and `O` the error
/// hook, set by [`on_error`](Builder::on_error). They stay [`NoDeadLetter`] and
/// [`NoErrorHook`] otherwise, and need never be named.
pub struct Builder<K, J, D = NoDeadLetter, O = NoErrorHook> {
    workers: Option<usize>,
    /// The private pool's thread settings: none of them may be set with `pool`.
    threads: ThreadSettings,
    pool: Option<Arc<PoolShared>>,
    max_parallel: Option<usize>,
    capacity: usize,
    key_capacity: Option<usize>,
    jobs_per_turn: usize,
    name: Option<String>,
    idle_timeout: Duration,
    on_panic: Option<PanicHook<K>>,
    slow_job: Option<(Duration, SlowHook<K>)>,
    record_latency: bool,
    on_error: O,
    retry: Option<RetryPolicy>,
    dead_letter: D,
    /// `build_async`'s cap on futures in flight.
    max_in_flight: Option<usize>,
    /// `build_async`'s runtime, if not the caller's.
    #[cfg(feature = "tokio")]
    runtime: Option<tokio::runtime::Handle>,
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
            threads: ThreadSettings::default(),
            pool: None,
            max_parallel: None,
            capacity: DEFAULT_CAPACITY,
            key_capacity: None,
            jobs_per_turn: DEFAULT_JOBS_PER_TURN,
            name: None,
            idle_timeout: Duration::ZERO,
            on_panic: None,
            slow_job: None,
            record_latency: false,
            on_error: NoErrorHook,
            retry: None,
            dead_letter: NoDeadLetter,
            max_in_flight: None,
            #[cfg(feature = "tokio")]
            runtime: None,
            jobs: PhantomData,
        }
    }
}

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// The most threads of its pool the dispatcher uses at once; defaults to all of them.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
    /// use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    ///
    /// static RUNNING: AtomicUsize = AtomicUsize::new(0);
    /// static MOST: AtomicUsize = AtomicUsize::new(0);
    /// let pool = WorkerPool::new(4)?;
    /// let d = Dispatcher::builder().pool(&pool).max_parallel(2).build(|_: &u32, _: u32| {
    ///     MOST.fetch_max(RUNNING.fetch_add(1, SeqCst) + 1, SeqCst);
    ///     RUNNING.fetch_sub(1, SeqCst);
    /// })?;
    /// for n in 0..1000 {
    ///     d.dispatch(n % 50, n)?;
    /// }
    /// d.close();
    /// assert!(MOST.load(SeqCst) <= 2); // of the pool's 4 threads
    ///
    /// let err = Dispatcher::builder().pool(&pool).max_parallel(5).build(|_: &u8, _: u8| {});
    /// let err = err.unwrap_err();
    /// assert!(matches!(err, BuildError::MaxParallelAboveWorkers { max_parallel: 5, workers: 4 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_parallel(mut self, max_parallel: usize) -> Self {
        self.max_parallel = Some(max_parallel);
        self
    }

    /// Names the dispatcher in log lines, and its private pool's threads (`{name}-0`,
    /// `{name}-1`, ..., unless [`thread_name`](Builder::thread_name) names them); defaults to
    /// `keyed-dispatch`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher};
    ///
    /// let d = Dispatcher::builder().name("ledger").workers(2).build(|_: &u8, _: u8| {
    ///     assert!(std::thread::current().name().unwrap().starts_with("ledger-"));
    /// })?;
    /// assert_eq!(d.name(), "ledger");
    /// d.dispatch(1, 1)?;
    /// assert_eq!(d.close().stats.panicked, 0);
    ///
    /// let err = Dispatcher::builder().name("led\0ger").build(|_: &u8, _: u8| {}).unwrap_err();
    /// assert!(matches!(err, BuildError::NameWithNul));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Called with the key and the panic payload when a job panics, after the panic has been
    /// logged at `error` and counted. A panic inside the hook is caught and logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let d = Dispatcher::builder()
    ///     .on_panic(move |key: &u32, _payload| tx.send(*key).unwrap())
    ///     .build(|_: &u32, n: u32| assert_ne!(n, 13, "unlucky"))?;
    /// for n in 12..15 {
    ///     d.dispatch(n % 2, n)?;
    /// }
    /// let stats = d.close().stats;
    /// assert_eq!((stats.completed, stats.panicked), (3, 1));
    /// assert_eq!(rx.recv()?, 1); // the key of job 13, which went on to run job 15
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_panic(
        mut self,
        hook: impl Fn(&K, &(dyn Any + Send)) + Send + Sync + 'static,
    ) -> Self {
        self.on_panic = Some(Box::new(hook));
        self
    }

    /// Whether to record each job's wait (dispatch to start) and run (start to end) in the
    /// latency histograms of [`Dispatcher::metrics`]; off by default.
    ///
    /// Recording reads the clock once per dispatch and once per job, and stores the dispatch
    /// instant beside the queued job (BENCHMARKS.md, "Latency recording", has what it costs:
    /// on tiny jobs, clock reads are a large part of a job's cost). Counts go to per-thread
    /// recorders with plain stores, merged when read.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::time::Duration;
    ///
    /// let d = Dispatcher::builder()
    ///     .record_latency(true)
    ///     .build(|_: &u8, _: u8| std::thread::sleep(Duration::from_millis(20)))?;
    /// d.dispatch(1, 1)?;
    /// d.wait_idle()?;
    /// let run = d.metrics().run;
    /// assert_eq!(run.count(), 1);
    /// // Within 6.25% of the truth, which is at least the 20 ms slept.
    /// assert!(run.p50() >= Duration::from_millis(20) * 15 / 16);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn record_latency(mut self, record: bool) -> Self {
        self.record_latency = record;
        self
    }

    /// Reports jobs still running `threshold` after they started, while they run (a hung
    /// handler is found before it returns, if ever): a `warn` line with the key and how long,
    /// and `hook` with the same, once per job. A job that runs for `threshold` plus a quarter
    /// of it is always reported; one that ends between the two may not be; a job under
    /// `threshold` never is. How long is a lower bound, within a quarter of the threshold of
    /// the truth.
    ///
    /// A watchdog thread of the dispatcher's own (named `{name}-watch`) samples the workers
    /// every quarter of the threshold, so that it finds slow jobs even when every pool thread
    /// is stuck in one. The hook runs there; a panic in it is caught and logged. The workers
    /// pay two plain stores per job and a lock per turn, and only with this setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let (slow, reports) = mpsc::channel();
    /// let (release, hung) = mpsc::channel::<()>();
    /// let hung = std::sync::Mutex::new(hung);
    /// let d = Dispatcher::builder()
    ///     .slow_job(Duration::from_millis(20), move |key: &u32, running_for| {
    ///         slow.send((*key, running_for)).unwrap();
    ///     })
    ///     .build(move |_: &u32, n: u32| {
    ///         if n == 0 {
    ///             hung.lock().unwrap().recv().unwrap(); // hangs until released
    ///         }
    ///     })?;
    /// d.dispatch(7, 0)?;
    /// let (key, running_for) = reports.recv()?; // while job 0 still hangs
    /// assert_eq!(key, 7);
    /// assert!(running_for >= Duration::from_millis(20));
    /// release.send(())?;
    /// d.close();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn slow_job(
        mut self,
        threshold: Duration,
        hook: impl Fn(&K, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.slow_job = Some((threshold, Box::new(hook)));
        self
    }

    /// Called with the key, the error (by reference, as the handler returned it) and the
    /// attempt number when a fallible handler fails, after the failure has been logged at
    /// `warn` and counted. The attempt is 1 on a plain dispatcher; on a retrying one
    /// ([`build_retrying`](Builder::build_retrying)) the hook hears of every failed attempt,
    /// the last included, before the job is retried or dead-lettered. The error type must be
    /// the handler's: name it in the closure (`err: &MyError`).
    ///
    /// A panic inside the hook is caught, logged at `error` and counted in
    /// [`Stats::panicked`](crate::Stats::panicked); it changes nothing for the job, which is
    /// retried or dead-lettered as it would have been, and the key goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let d = Dispatcher::builder()
    ///     .on_error(move |key: &u32, err: &&str, attempt| {
    ///         tx.send(format!("{key}: {err} (attempt {attempt})")).unwrap()
    ///     })
    ///     .build(|_: &u32, n: u32| if n == 0 { Err("empty") } else { Ok(()) })?;
    /// d.dispatch(7, 0)?;
    /// d.dispatch(7, 1)?;
    /// assert_eq!(d.close().stats.failed, 1);
    /// assert_eq!(rx.recv()?, "7: empty (attempt 1)");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_error<E, F>(self, hook: F) -> Builder<K, J, D, ErrorHookFn<F, E>>
    where
        F: Fn(&K, &E, u32) + Send + Sync + 'static,
        E: 'static,
    {
        let hook = ErrorHookFn(hook, PhantomData);
        self.map_hooks(|dead_letter, _| (dead_letter, hook, ())).0
    }

    /// The same settings with the failure hooks that `f` makes of the current ones, and what
    /// else `f` returns.
    fn map_hooks<D2, O2, T>(
        self,
        f: impl FnOnce(D, O) -> (D2, O2, T),
    ) -> (Builder<K, J, D2, O2>, T) {
        let (dead_letter, on_error, rest) = f(self.dead_letter, self.on_error);
        let builder = Builder {
            workers: self.workers,
            threads: self.threads,
            pool: self.pool,
            max_parallel: self.max_parallel,
            capacity: self.capacity,
            key_capacity: self.key_capacity,
            jobs_per_turn: self.jobs_per_turn,
            name: self.name,
            idle_timeout: self.idle_timeout,
            on_panic: self.on_panic,
            slow_job: self.slow_job,
            record_latency: self.record_latency,
            on_error,
            retry: self.retry,
            dead_letter,
            max_in_flight: self.max_in_flight,
            #[cfg(feature = "tokio")]
            runtime: self.runtime,
            jobs: PhantomData,
        };
        (builder, rest)
    }

    /// Separates the failure hooks from the other settings, to be stored with the handler.
    fn split_hooks(self) -> (Builder<K, J>, D, O) {
        let (builder, (dead_letter, on_error)) =
            self.map_hooks(|d, o| (NoDeadLetter, NoErrorHook, (d, o)));
        (builder, dead_letter, on_error)
    }

    /// Checks the settings for a pool of `workers` threads.
    fn check(&self, workers: usize) -> Result<Config, BuildError> {
        if self.max_in_flight.is_some() {
            return Err(BuildError::AsyncOnly {
                setting: "max_in_flight",
            });
        }
        if self.workers.is_some() && self.pool.is_some() {
            return Err(BuildError::WorkersWithPool);
        }
        if self.threads.pin && self.pool.is_some() {
            return Err(BuildError::PinWithPool);
        }
        if let (Some(setting), Some(_)) = (self.threads.first_set(), &self.pool) {
            return Err(BuildError::ThreadSettingsWithPool { setting });
        }
        if self.workers == Some(0) {
            return Err(BuildError::ZeroWorkers);
        }
        if workers > MAX_WORKERS {
            return Err(BuildError::TooManyWorkers {
                workers,
                max: MAX_WORKERS,
            });
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
        self.config(max_parallel)
    }

    /// Checks the settings that do not depend on what runs the jobs, for a dispatcher that
    /// runs at most `max_parallel` of them at once.
    fn config(&self, max_parallel: usize) -> Result<Config, BuildError> {
        if self.capacity > MAX_CAPACITY {
            return Err(BuildError::CapacityTooLarge {
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        let key_capacity = self.key_capacity.unwrap_or(self.capacity);
        if key_capacity > self.capacity {
            return Err(BuildError::KeyCapacityAboveCapacity {
                key_capacity,
                capacity: self.capacity,
            });
        }
        if self.jobs_per_turn == 0 {
            return Err(BuildError::ZeroJobsPerTurn);
        }
        Ok(Config {
            name: self.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            // Cannot overflow: both are far below their bounds, checked above.
            admitted: self.capacity + max_parallel,
            key_capacity,
            jobs_per_turn: self.jobs_per_turn,
            max_parallel,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        })
    }
}

impl<K, J, O> Builder<K, J, NoDeadLetter, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
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
    /// A [`BuildError`] naming the setting that cannot work (zero workers, too many workers, a
    /// key capacity above the capacity, a thread setting beside [`pool`](Builder::pool), a
    /// thread name with a NUL byte, ...), [`BuildError::PoolClosed`] for a closed pool, or
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
        O: ErrorHook<K, R::Error>,
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
    pub fn build_handler<H>(self, handler: H) -> Result<Dispatcher<K, J>, BuildError>
    where
        H: Handler<K, J>,
        O: ErrorHook<K, H::Error>,
    {
        if self.retry.is_some() {
            return Err(BuildError::RetryWithoutRetryingHandler);
        }
        let (builder, NoDeadLetter, on_error) = self.split_hooks();
        builder.start(Box::new(Plain { handler, on_error }))
    }
}

impl<K, J> Builder<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Checks the configuration and starts the dispatcher on `handler`.
    fn start(self, handler: Box<dyn ErasedHandler<K, J>>) -> Result<Dispatcher<K, J>, BuildError> {
        let workers = match &self.pool {
            Some(pool) => pool.workers(),
            None => self.workers.unwrap_or_else(default_workers),
        };
        let config = self.check(workers)?;
        let pool = match self.pool {
            Some(pool) => pool,
            None => PoolShared::start(workers, &config.name, false, &self.threads)?,
        };
        let watch = self
            .slow_job
            .map(|(threshold, hook)| Watch::new(&config.name, threshold, hook, pool.workers()));
        let latency = self
            .record_latency
            .then(|| Latency::new(pool.workers(), &config.name));
        let core = Core::new(
            config,
            pool,
            Runner::Threads(handler),
            self.on_panic,
            watch,
            latency,
        );
        core.pool().attach(core.as_client())?;
        if let Err(err) = core.start_watch() {
            Dispatcher::from_core(core).close();
            return Err(err);
        }
        #[cfg(feature = "metrics")]
        core.start_publishing();
        log::debug!(
            "{}: dispatcher built on pool {} ({} workers)",
            core.config().name,
            core.pool().name(),
            core.pool().workers()
        );
        Ok(Dispatcher::from_core(core))
    }
}

impl<K, O> Builder<K, BoxedJob, NoDeadLetter, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    O: ErrorHook<K, Never>,
{
    /// Builds a dispatcher of boxed closures, which runs each job by calling it. Use
    /// [`Dispatcher::spawn`] to dispatch them.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BoxedJob, Dispatcher};
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// d.spawn("acme", || println!("first"))?;
    /// d.dispatch("acme", BoxedJob::new(|| println!("second")))?; // the same, boxed by hand
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn build_spawner(self) -> Result<Dispatcher<K, BoxedJob>, BuildError> {
        self.build(|_: &K, job: BoxedJob| job.run())
    }
}

impl<K, J, D, O> fmt::Debug for Builder<K, J, D, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("threads", &self.threads)
            .field("pool", &self.pool)
            .field("max_parallel", &self.max_parallel)
            .field("capacity", &self.capacity)
            .field("key_capacity", &self.key_capacity)
            .field("jobs_per_turn", &self.jobs_per_turn)
            .field("name", &self.name)
            .field("idle_timeout", &self.idle_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}
