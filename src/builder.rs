//! [`Builder`]: configures a dispatcher and checks the configuration before starting anything;
//! [`PoolBuilder`], the same for a shared [`WorkerPool`].

use crate::{
    config::{Config, ErrorHook, PanicHook, ThreadSettings},
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
pub struct Builder<K, J> {
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
            jobs: PhantomData,
        }
    }

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
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().workers(1).capacity(1).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs on the one thread
    /// d.try_dispatch(2, 1)?; // the one job that may wait
    /// let err = d.try_dispatch(3, 2).unwrap_err();
    /// assert_eq!(err.bound(), Some(Bound::Dispatcher));
    /// drop(started);
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().key_capacity(0).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs: key 1 has its one job
    /// let err = d.try_dispatch(1, 1).unwrap_err();
    /// assert_eq!(err.bound(), Some(Bound::Key));
    /// d.try_dispatch(2, 2)?; // other keys have room
    /// drop(started);
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher};
    /// use std::sync::{mpsc, Mutex};
    ///
    /// static RAN: Mutex<Vec<(char, u32)>> = Mutex::new(Vec::new());
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().workers(1).jobs_per_turn(1).build(move |key: &char, n: u32| {
    ///     RAN.lock().unwrap().push((*key, n));
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch('a', 0)?;
    /// started.recv()?; // job 0 runs on the one thread
    /// for n in 1..3 {
    ///     d.dispatch('a', n)?;
    ///     d.dispatch('b', n)?;
    /// }
    /// drop(started);
    /// d.close();
    /// assert_eq!(*RAN.lock().unwrap(), [('a', 0), ('b', 1), ('a', 1), ('b', 2), ('a', 2)]);
    ///
    /// let err = Dispatcher::builder().jobs_per_turn(0).build(|_: &u8, _: u8| {}).unwrap_err();
    /// assert!(matches!(err, BuildError::ZeroJobsPerTurn));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn jobs_per_turn(mut self, jobs_per_turn: usize) -> Self {
        self.jobs_per_turn = jobs_per_turn;
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
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::time::Duration;
    ///
    /// let d = Dispatcher::builder()
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .build(|_: &u32, _: u32| {})?;
    /// for key in 0..3 {
    ///     d.dispatch(key, 1)?;
    /// }
    /// d.wait_idle()?;
    /// assert_eq!(d.stats().keys, 3); // idle, and kept for a minute
    /// assert_eq!(d.close().stats.keys, 0); // close evicts every key
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
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

    /// Called with the key and the error when a fallible handler fails, after the failure has
    /// been logged at `warn` and counted. A panic inside the hook counts as the job's panic.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let d = Dispatcher::builder()
    ///     .on_error(move |key: &u32, err| tx.send(format!("{key}: {err}")).unwrap())
    ///     .build(|_: &u32, n: u32| if n == 0 { Err("empty") } else { Ok(()) })?;
    /// d.dispatch(7, 0)?;
    /// d.dispatch(7, 1)?;
    /// assert_eq!(d.close().stats.failed, 1);
    /// assert_eq!(rx.recv()?, "7: empty");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            None => PoolShared::start(workers, &config.name, false, &self.threads)?,
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

impl<K, J> fmt::Debug for Builder<K, J> {
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
