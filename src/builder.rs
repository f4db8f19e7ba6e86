//! [`Builder`]: configures a dispatcher and checks the configuration before starting anything;
//! [`PoolBuilder`], the same for a shared [`WorkerPool`].

use crate::{
    config::{Config, ErrorHook, PanicHook, ThreadSettings},
    dispatcher::{core::Core, Dispatcher},
    error::BuildError,
    gate::MAX_CAPACITY,
    handler::{BoxedJob, ErasedHandler, Handler, HandlerOutput, Plain},
    pool::{default_workers, PoolShared, WorkerPool, DEFAULT_NAME},
    retry::{DeadLetter, DeadLetterFn, NoDeadLetter, RetryOutput, RetryPolicy, Retrying},
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
///
/// The third type parameter is the dead-letter hook of a retrying dispatcher, set by
/// [`on_dead_letter`](Builder::on_dead_letter); it stays [`NoDeadLetter`] otherwise, and
/// need never be named.
pub struct Builder<K, J, D = NoDeadLetter> {
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
    on_error: Option<ErrorHook<K>>,
    retry: Option<RetryPolicy>,
    dead_letter: D,
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
            on_error: None,
            retry: None,
            dead_letter: NoDeadLetter,
            jobs: PhantomData,
        }
    }

    // `build` and `build_handler` follow the settings below.
}

impl<K, J, D> Builder<K, J, D>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
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
    pub fn pool(mut self, pool: &WorkerPool) -> Self {
        self.pool = Some(Arc::clone(pool.shared()));
        self
    }

    /// The most threads of its pool the dispatcher uses at once; defaults to all of them.
    pub fn max_parallel(mut self, max_parallel: usize) -> Self {
        self.max_parallel = Some(max_parallel);
        self
    }

    /// The most jobs that wait to run, over all keys; defaults to [`DEFAULT_CAPACITY`]. The jobs
    /// running do not count: up to one per thread the dispatcher holds
    /// ([`max_parallel`](Builder::max_parallel)) runs besides them, as a bounded channel of
    /// capacity `n` holds `n` messages besides the one being handled. So at most
    /// `capacity + max_parallel` jobs are accepted and unfinished at once, and that many jobs
    /// is the most the dispatcher holds in memory. A full dispatcher makes
    /// [`dispatch`](Dispatcher::dispatch) wait, and [`try_dispatch`](Dispatcher::try_dispatch)
    /// refuse with [`Full`](crate::DispatchError::Full) and [`Bound::Dispatcher`].
    ///
    /// `capacity(0)` accepts a job only when a thread is free to run it.
    ///
    /// [`Bound::Dispatcher`]: crate::Bound::Dispatcher
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most jobs of one key that wait behind the job it runs (backpressure on a hot key);
    /// defaults to the global [`capacity`](Builder::capacity). A key holds at most
    /// `key_capacity + 1` jobs accepted and unfinished; the jobs of a running batch (see
    /// [`jobs_per_turn`](Builder::jobs_per_turn)) count until the batch ends. A full key makes
    /// [`dispatch`](Dispatcher::dispatch) wait, and [`try_dispatch`](Dispatcher::try_dispatch)
    /// refuse with [`Full`](crate::DispatchError::Full) and [`Bound::Key`].
    ///
    /// `key_capacity(0)` accepts a job of a key only while it has none.
    ///
    /// [`Bound::Key`]: crate::Bound::Key
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
    /// `{name}-1`, ..., unless [`thread_name`](Builder::thread_name) names them); defaults to
    /// `keyed-dispatch`.
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
    ///
    /// On a retrying dispatcher ([`build_retrying`](Builder::build_retrying)) it is called for
    /// every failed attempt, the last included, before the job is retried or dead-lettered;
    /// a panic inside it then also drops the job, which is neither retried nor dead-lettered.
    /// One hook for both kinds of dispatcher, rather than a typed one for retrying ones: the
    /// typed error reaches the [`on_dead_letter`](Builder::on_dead_letter) hook.
    pub fn on_error(mut self, hook: impl Fn(&K, &dyn Display) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Box::new(hook));
        self
    }

    /// How [`build_retrying`](Builder::build_retrying)'s dispatcher retries a failed job;
    /// without it, [`RetryPolicy::default`]. Not for [`build`](Builder::build), whose handler
    /// takes its job by value and so cannot run it again: `build` refuses it with
    /// [`BuildError::RetryWithoutRetryingHandler`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Called with the key, the job, the last error and the number of attempts made, when a
    /// retrying dispatcher's job fails for good: after its last attempt, or at once for a
    /// [`Failure::permanent`](crate::Failure::permanent). For
    /// [`build_retrying`](Builder::build_retrying), whose handler's error type must be `E`.
    ///
    /// It runs on the worker, before the key's next job starts. A panic inside it is caught,
    /// logged at `error` and counted in [`Stats::panicked`](crate::Stats::panicked); the key
    /// goes on. Without it, a dead job is logged at `error`, counted in
    /// [`Stats::dead_lettered`](crate::Stats::dead_lettered) and dropped.
    pub fn on_dead_letter<E, F>(self, hook: F) -> Builder<K, J, DeadLetterFn<F, E>>
    where
        F: Fn(&K, J, E, u32) + Send + Sync + 'static,
        E: 'static,
    {
        Builder {
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
            on_error: self.on_error,
            retry: self.retry,
            dead_letter: DeadLetterFn(hook, PhantomData),
            jobs: PhantomData,
        }
    }

    /// Builds a dispatcher that retries failed jobs in order: a failed attempt of a key's job
    /// is retried after its backoff ([`retry`](Builder::retry)), and no later job of the key
    /// starts before it has succeeded or been dead-lettered
    /// ([`on_dead_letter`](Builder::on_dead_letter)). Other keys go on meanwhile, and no
    /// thread waits out a backoff.
    ///
    /// The handler borrows its job, `Fn(&K, &J)`, since it may run again. It returns
    /// `Result<(), E>`, retried as the policy says, or `Result<(), Failure<E>>` to name its
    /// own delay ([`Failure::retry_after`](crate::Failure::retry_after)) or give up at once
    /// ([`Failure::permanent`](crate::Failure::permanent)); `E: Display`. A panic is not
    /// retried unless [`RetryPolicy::retry_panics`] says so.
    ///
    /// A retried job counts once in its [`Group`](crate::Group), in `flush_key` and in
    /// [`Stats::completed`](crate::Stats::completed): when it finally succeeds or is
    /// dead-lettered. Until then it holds its room and keeps the dispatcher busy:
    /// [`close`](crate::Dispatcher::close) and [`wait_idle`](crate::Dispatcher::wait_idle)
    /// wait for its retries, and [`close_now`](crate::Dispatcher::close_now) hands it back
    /// first among its key's jobs.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build), and [`BuildError::ZeroAttempts`] or
    /// [`BuildError::BackoffBelowInitial`] for a policy that cannot work.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, Failure, RetryPolicy};
    /// use std::{sync::{Arc, Mutex}, time::Duration};
    ///
    /// let dead = Arc::new(Mutex::new(Vec::new()));
    /// let parked = Arc::clone(&dead);
    /// let d = Dispatcher::builder()
    ///     .retry(RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(10))
    ///         .max_attempts(3))
    ///     .on_dead_letter(move |key: &u64, job: String, err: String, attempts: u32| {
    ///         parked.lock().unwrap().push((*key, job, err, attempts));
    ///     })
    ///     .build_retrying(|_key: &u64, job: &String| -> Result<(), Failure<String>> {
    ///         match job.as_str() {
    ///             "ok" => Ok(()),
    ///             "bad" => Err(Failure::permanent("malformed".to_string())),
    ///             _ => Err("unreachable host".to_string())?, // retried, 3 attempts in all
    ///         }
    ///     })?;
    /// for job in ["ok", "bad", "down"] {
    ///     d.dispatch(7, job.to_string())?;
    /// }
    /// let stats = d.close().stats;
    /// assert_eq!((stats.completed, stats.retried, stats.dead_lettered), (3, 2, 2));
    /// assert_eq!(
    ///     *dead.lock().unwrap(),
    ///     [(7, "bad".into(), "malformed".into(), 1), (7, "down".into(), "unreachable host".into(), 3)]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_retrying<F, R>(self, handler: F) -> Result<Dispatcher<K, J>, BuildError>
    where
        F: Fn(&K, &J) -> R + Send + Sync + 'static,
        R: RetryOutput + 'static,
        D: DeadLetter<K, J, R::Error>,
    {
        let policy = self.retry.unwrap_or_default();
        if policy.max_attempts == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        if policy.max < policy.initial {
            return Err(BuildError::BackoffBelowInitial {
                initial: policy.initial,
                max: policy.max,
            });
        }
        let (erased, parts) = self.split_dead_letter();
        erased.start(Box::new(Retrying {
            handler,
            policy,
            dead: parts,
            output: PhantomData,
        }))
    }

    /// Separates the dead-letter hook from the other settings.
    fn split_dead_letter(self) -> (Builder<K, J>, D) {
        (
            Builder {
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
                on_error: self.on_error,
                retry: self.retry,
                dead_letter: NoDeadLetter,
                jobs: PhantomData,
            },
            self.dead_letter,
        )
    }

    /// Checks the settings for a pool of `workers` threads.
    fn check(&self, workers: usize) -> Result<Config, BuildError> {
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
            admitted: self.capacity + max_parallel,
            key_capacity,
            jobs_per_turn: self.jobs_per_turn,
            max_parallel,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        })
    }
}

impl<K, J> Builder<K, J>
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
    /// A [`BuildError`] naming the setting that cannot work (zero workers, zero capacity, a
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
        if self.retry.is_some() {
            return Err(BuildError::RetryWithoutRetryingHandler);
        }
        self.start(Box::new(Plain(handler)))
    }

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
        let core = Core::new(config, pool, handler, self.on_panic, self.on_error);
        core.pool().attach(core.as_client())?;
        log::debug!(
            "{}: dispatcher built on pool {} ({} workers)",
            core.config().name,
            core.pool().name(),
            core.pool().workers()
        );
        Ok(Dispatcher::from_core(core))
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

impl<K, J, D> fmt::Debug for Builder<K, J, D> {
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

    /// A builder to set the threads up as well: their names, stack size, pinning and hooks.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            workers: None,
            name: None,
            threads: ThreadSettings::default(),
        }
    }
}

/// Configures a [`WorkerPool`]: `WorkerPool::builder().workers(8).name("shared").build()`.
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: Option<usize>,
    name: Option<String>,
    threads: ThreadSettings,
}

impl PoolBuilder {
    /// Number of threads; defaults to [`std::thread::available_parallelism`].
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Names the pool in log lines, and its threads `{name}-0`, `{name}-1`, ... (unless
    /// [`thread_name`](PoolBuilder::thread_name) names them); defaults to `keyed-dispatch`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Pins thread `i` to the `i`-th CPU the building thread may run on; off by default. As
    /// [`Builder::pin_workers`](crate::Builder::pin_workers), which says when it pays.
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
    /// [`BuildError::ZeroWorkers`] for zero workers, [`BuildError::NameWithNul`] for a thread
    /// name with a NUL byte, [`BuildError::Spawn`] if a thread cannot be started,
    /// [`BuildError::PinUnsupported`] or [`BuildError::PinRefused`] if a thread cannot be
    /// pinned (those already started are stopped and joined).
    pub fn build(self) -> Result<WorkerPool, BuildError> {
        let workers = self.workers.unwrap_or_else(default_workers);
        let name = self.name.as_deref().unwrap_or(DEFAULT_NAME);
        let shared = PoolShared::start(workers, name, true, &self.threads)?;
        Ok(WorkerPool::from_shared(shared))
    }
}
