//! The worker threads: a fixed number of them, shared by every dispatcher on the pool.
//!
//! Threads do not know about keys. They take *tokens* from the pool's FIFO queue; a token is a
//! dispatcher's permission to use one thread (a dispatcher holds at most `max_parallel`), and a
//! thread holding one runs that dispatcher's ready keys, a bounded turn each. When other tokens
//! wait in the queue, the thread puts its token back at the end after each turn, so threads are
//! shared fairly between dispatchers as turns are between keys.
//!
//! # Sleeping and waking
//!
//! A thread that finds the queue empty spins briefly (counted in `spinning`), then sleeps on the
//! condition variable (counted in `sleeping`). It spins only where the pool leaves a core spare
//! (see [`PoolShared::spins`]). [`PoolShared::submit`] wakes a sleeper only if
//! the queue holds more tokens than there are spinners to take them. No wake-up is lost: a
//! spinner stops spinning and re-checks the queue under the lock before it sleeps, and `submit`
//! pushes under that same lock.
//!
//! # Shutdown
//!
//! A pool shuts down once nothing can give it work any more: its [`WorkerPool`] handle is gone
//! (or [`WorkerPool::close`] was called) and every dispatcher on it has closed. Threads finish
//! the tokens still queued, then exit; the thread that shut the pool down joins them, unless it
//! is one of them.

use crate::{
    affinity::{self, Cpu},
    error::BuildError,
    sync::{
        lock, spin_once, thread, wait, wait_timeout, Arc, AtomicUsize, Condvar, Mutex, Ordering,
        Weak, CHECKED,
    },
};
use crossbeam_channel::Sender;
use std::{any::Any, cell::Cell, collections::VecDeque, fmt, time::Instant};

/// How many spin steps (see `sync::spin_once`) an idle thread takes before it sleeps, where it
/// spins at all (see [`PoolShared::spins`]).
const SPIN_STEPS: u32 = 10;

/// The most threads a pool may have: far more than any machine has cores, and few enough that
/// a typo's `usize::MAX` is an error rather than an allocation failure.
pub(crate) const MAX_WORKERS: usize = 1 << 16;

/// Something that gives a pool work: a dispatcher.
pub(crate) trait Source: Send + Sync + 'static {
    /// Runs ready keys while holding one of the source's tokens; returns once the token has
    /// been released or handed back to the pool's queue.
    fn run(self: Arc<Self>, worker: &Worker<'_>);

    /// A timer set with [`PoolShared::set_timer`] is due; returns when the next one is.
    fn on_timer(&self, now: Instant) -> Option<Instant>;

    /// Closes the source, draining its jobs: the pool is closing, or its handle was dropped.
    fn close_source(&self);
}

#[cfg(not(any(loom, feature = "shuttle")))]
thread_local! {
    /// The id of the pool this thread works for; 0 on threads that are not workers.
    static CURRENT_POOL: Cell<usize> = const { Cell::new(0) };
}
// Loom runs its threads as coroutines on one OS thread, so they need loom's thread locals.
#[cfg(loom)]
loom::thread_local! {
    static CURRENT_POOL: Cell<usize> = Cell::new(0);
}
// Shuttle too: its threads are coroutines on the thread that runs the test.
#[cfg(all(feature = "shuttle", not(loom)))]
shuttle::thread_local! {
    static CURRENT_POOL: Cell<usize> = Cell::new(0);
}

static NEXT_POOL_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// What a worker thread is handed.
enum Work {
    Run(Arc<dyn Source>),
    Timer(Arc<dyn Source>),
}

/// The state every worker and every dispatcher of a pool shares.
pub(crate) struct PoolShared {
    id: usize,
    workers: usize,
    /// See [`PoolShared::spins`].
    spins: bool,
    name: String,
    state: Mutex<PoolState>,
    /// Sleeping workers wait here.
    wake: Condvar,
    /// Closers of the `WorkerPool` handle wait here for the first one to finish closing.
    handle_closed: Condvar,
    /// `state.queue.len()`, readable without the lock by spinning and turn-taking workers.
    queued: AtomicUsize,
    /// Join handles of the threads, taken by whoever joins them.
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

struct PoolState {
    /// Tokens waiting for a thread, in FIFO order.
    queue: VecDeque<Arc<dyn Source>>,
    /// Workers spinning in `next_work` before they sleep.
    spinning: usize,
    /// Workers asleep on `wake`.
    sleeping: usize,
    /// Timers of sources, each due at its instant.
    timers: Vec<(Instant, Weak<dyn Source>)>,
    /// Open dispatchers attached to the pool, for `WorkerPool::close`.
    sources: Vec<Weak<dyn Source>>,
    /// Whether a `WorkerPool` handle still exists and has not been closed (a dispatcher's
    /// private pool has none).
    handle: bool,
    /// Whether a dispatcher may attach: while the handle lives, or until a private pool's one
    /// dispatcher has attached.
    accepting: bool,
    /// Set once `close_handle` has closed every dispatcher that was attached.
    closed_sources: bool,
    /// Set once no more work can come: workers exit when the queue is empty.
    shutdown: bool,
}

/// Passed to a running source: what it may ask of the worker thread it runs on.
pub(crate) struct Worker<'a> {
    pool: &'a PoolShared,
    /// What a source left on this thread for the next of its type (see [`Kept`]).
    pub(crate) kept: Kept,
}

impl Worker<'_> {
    /// Whether tokens wait in the pool's queue: a source holding a thread should hand it on
    /// after its current turn.
    ///
    /// A dispatcher's own second token counts too, although handing the thread on to it gains
    /// no fairness: the round trip through the pool lets jobs gather behind the keys, which
    /// then run in larger batches with less contention with the producers on their locks.
    /// Counting only other sources' tokens was slower in paired runs: 0.72x with 64 keys and
    /// 0.90x with 10,000.
    pub(crate) fn others_waiting(&self) -> bool {
        // ORDERING: Relaxed; a stale answer costs one turn of unfairness, never correctness.
        self.pool.queued.load(Ordering::Relaxed) > 0
    }
}

/// A value that a source leaves on a worker thread for the next one of its type to take
/// there: a dispatcher's turn buffers, so that a thread that gives its token back whenever the
/// ready keys run out (as often as every few dozen jobs) does not free them and allocate them
/// again at its next token.
#[derive(Default)]
pub(crate) struct Kept(Cell<Option<Box<dyn Any>>>);

impl Kept {
    /// Takes the value left by [`Kept::put`] if it is a `T`, or else a default one.
    pub(crate) fn take<T: Default + 'static>(&self) -> T {
        let mut kept = self.0.take();
        let value = kept
            .as_mut()
            .and_then(|kept| kept.downcast_mut::<T>())
            .map(std::mem::take)
            .unwrap_or_default();
        self.0.set(kept);
        value
    }

    /// Leaves `value` in place of what was kept before. It allocates only for the first value
    /// of its type in a row: where sources with different types take turns on the thread,
    /// each replaces (and frees) the other's.
    pub(crate) fn put<T: 'static>(&self, value: T) {
        let mut kept = self.0.take();
        match kept.as_mut().and_then(|kept| kept.downcast_mut::<T>()) {
            Some(slot) => *slot = value,
            None => kept = Some(Box::new(value)),
        }
        self.0.set(kept);
    }
}

/// What a pinned thread reports before it takes work: its index, its CPU, whether it is pinned.
type Pinned = (usize, Cpu, bool);

/// Aborts the process if a worker thread unwinds out of the crate's own code: the pool's
/// invariants would be broken and `close` could hang. User code never unwinds this far; its
/// panics are caught around each job.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        // Not under loom or shuttle, which unwind every modeled thread when a model fails.
        if std::thread::panicking() && !CHECKED {
            log::error!("keyed-dispatch: internal panic on a worker thread; aborting");
            std::process::abort();
        }
    }
}

impl PoolShared {
    /// Starts `workers` threads named `{name}-{i}`. `handle` says whether a `WorkerPool` handle
    /// owns the pool (else it is private to the one dispatcher that attaches right away); `pin`,
    /// whether each thread is pinned to a CPU of its own (see `affinity`).
    pub(crate) fn start(
        workers: usize,
        name: &str,
        handle: bool,
        pin: bool,
    ) -> Result<Arc<Self>, BuildError> {
        if workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if workers > MAX_WORKERS {
            return Err(BuildError::TooManyWorkers {
                workers,
                max: MAX_WORKERS,
            });
        }
        if name.contains('\0') {
            return Err(BuildError::NameWithNul);
        }
        let cpus = if pin {
            Some(affinity::plan(workers)?)
        } else {
            None
        };
        Self::start_on(workers, name, handle, cpus)
    }

    /// As `start`, with thread `i` pinned to `cpus[i]` where `cpus` is given.
    fn start_on(
        workers: usize,
        name: &str,
        handle: bool,
        cpus: Option<Vec<Cpu>>,
    ) -> Result<Arc<Self>, BuildError> {
        // Each pinned thread says whether it could pin itself before it takes any work. A real
        // channel, not a modeled one: the models never pin.
        let (pinned_tx, pinned_rx) = crossbeam_channel::bounded(workers);
        let pool = Arc::new(PoolShared {
            id: NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            workers,
            spins: !CHECKED && workers < default_workers(),
            name: name.to_owned(),
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                spinning: 0,
                sleeping: 0,
                timers: Vec::new(),
                sources: Vec::new(),
                handle,
                accepting: true,
                closed_sources: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            handle_closed: Condvar::new(),
            queued: AtomicUsize::new(0),
            threads: Mutex::new(Vec::with_capacity(workers)),
        });
        for index in 0..workers {
            let worker = Arc::clone(&pool);
            let pin = cpus.as_ref().map(|cpus| (cpus[index], pinned_tx.clone()));
            let spawned = thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || worker.main(index, pin));
            match spawned {
                Ok(handle) => lock(&pool.threads).push(handle),
                Err(err) => {
                    pool.shut_down();
                    pool.join();
                    return Err(BuildError::Spawn(err));
                }
            }
        }
        drop(pinned_tx);
        // Every thread sends once, so this ends; the lowest refused index, whatever the order.
        let refused = pinned_rx.iter().filter(|&(_, _, pinned)| !pinned).min();
        if let Some((worker, Cpu(cpu), _)) = refused {
            pool.shut_down();
            pool.join();
            return Err(BuildError::PinRefused { worker, cpu });
        }
        log::debug!("pool {name} started with {workers} workers");
        Ok(pool)
    }

    /// Whether idle threads (and dispatchers' token holders out of ready keys) spin before
    /// they sleep: only where the pool's threads leave a core spare, never under a schedule
    /// checker. Where they fill every core, a spinning thread yields its core to whatever
    /// else wants it, and the kernel can then run a long job there for a whole time slice
    /// while the spinner, once given work, waits: with two workers on two cores and one key
    /// running 2 ms jobs, the other keys' p99 wait went from about 1.3 ms to about 0.1 ms
    /// without spinning. Sleeping costs throughput on tiny jobs instead (a wake-up where a
    /// spinner would have taken the work): 0.8x with 10,000 keys there.
    pub(crate) fn spins(&self) -> bool {
        self.spins
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the calling thread is one of this pool's workers.
    pub(crate) fn is_current(&self) -> bool {
        CURRENT_POOL.with(|current| current.get() == self.id)
    }

    /// A worker thread's life: pinned first where `pin` says so (reporting whether it could
    /// be), then the work until the pool shuts down.
    fn main(self: Arc<Self>, index: usize, pin: Option<(Cpu, Sender<Pinned>)>) {
        let guard = AbortOnPanic;
        if let Some((cpu, pinned)) = pin {
            // Cannot fail: `start_on` holds the receiver until every thread has sent.
            let _ = pinned.send((index, cpu, affinity::pin_current(cpu)));
        }
        CURRENT_POOL.with(|current| current.set(self.id));
        let worker = Worker {
            pool: &self,
            kept: Kept::default(),
        };
        while let Some(work) = self.next_work() {
            match work {
                Work::Run(source) => source.run(&worker),
                Work::Timer(source) => {
                    if let Some(due) = source.on_timer(Instant::now()) {
                        self.set_timer(due, Arc::downgrade(&source));
                    }
                }
            }
        }
        log::debug!("pool {} worker {index} stopped", self.name);
        std::mem::forget(guard);
    }

    /// Blocks until there is work for this thread; `None` once the pool has shut down and its
    /// queue is empty.
    fn next_work(&self) -> Option<Work> {
        let mut state = lock(&self.state);
        if let Some(work) = self.pop(&mut state) {
            return Some(work);
        }
        if self.spins && !state.shutdown {
            state.spinning += 1;
            drop(state);
            let mut step = 0;
            // ORDERING: Relaxed; the queue is re-checked under the lock below.
            while step < SPIN_STEPS && self.queued.load(Ordering::Relaxed) == 0 {
                spin_once(step);
                step += 1;
            }
            state = lock(&self.state);
            state.spinning -= 1;
        }
        loop {
            if let Some(work) = self.pop(&mut state) {
                return Some(work);
            }
            if state.shutdown {
                return None;
            }
            let next_timer = state.timers.iter().map(|(due, _)| *due).min();
            state.sleeping += 1;
            state = match next_timer {
                Some(due) => wait_timeout(
                    &self.wake,
                    state,
                    due.saturating_duration_since(Instant::now()),
                ),
                None => wait(&self.wake, state),
            };
            state.sleeping -= 1;
        }
    }

    /// Takes the next token, or a due timer, from the locked state.
    fn pop(&self, state: &mut PoolState) -> Option<Work> {
        if let Some(source) = state.queue.pop_front() {
            self.queued.store(state.queue.len(), Ordering::Relaxed);
            // More tokens than spinners can take: hand one to a sleeper too.
            if state.queue.len() > state.spinning && state.sleeping > 0 {
                self.wake.notify_one();
            }
            return Some(Work::Run(source));
        }
        if state.timers.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(at) = state.timers.iter().position(|(due, _)| *due <= now) {
            let (_, source) = state.timers.swap_remove(at);
            if let Some(source) = source.upgrade() {
                return Some(Work::Timer(source));
            }
        }
        None
    }

    /// Queues a token of `source` and wakes a thread if none is spinning to take it.
    ///
    /// Once the pool has shut down the token is dropped: its dispatcher has closed. A producer
    /// that added a token just as a holder already out ran the key it scheduled (and so let
    /// the close finish) may come here after the last thread has left. Queued, the token would
    /// keep its dispatcher alive, and through it this pool: a cycle that nothing breaks.
    pub(crate) fn submit(&self, source: Arc<dyn Source>) {
        let mut state = lock(&self.state);
        if state.shutdown && !crate::sync::Fault::TokenAfterShutdown.on() {
            drop(state);
            // Outside the lock: this may be the dispatcher's last reference.
            drop(source);
            return;
        }
        state.queue.push_back(source);
        // ORDERING: Relaxed; only a hint for spinners, who re-check under the lock.
        self.queued.store(state.queue.len(), Ordering::Relaxed);
        if state.sleeping > 0 && state.queue.len() > state.spinning {
            self.wake.notify_one();
        }
    }

    /// Calls `source.on_timer` on a worker thread once `due` has passed.
    pub(crate) fn set_timer(&self, due: Instant, source: Weak<dyn Source>) {
        let mut state = lock(&self.state);
        if state.shutdown {
            return;
        }
        state.timers.push((due, source));
        if state.sleeping > 0 {
            // A sleeper may be waiting for a later timer, or for none: let it recompute.
            self.wake.notify_one();
        }
    }

    /// Attaches a dispatcher; fails once the pool is closing.
    pub(crate) fn attach(&self, source: Weak<dyn Source>) -> Result<(), BuildError> {
        let mut state = lock(&self.state);
        if !state.accepting {
            return Err(BuildError::PoolClosed);
        }
        state.accepting = state.handle;
        state.sources.retain(|s| s.strong_count() > 0);
        state.sources.push(source);
        Ok(())
    }

    /// Detaches a closed dispatcher, and shuts the pool down if nothing can give it work any
    /// more. The caller then joins the threads with [`PoolShared::join`] where it may.
    pub(crate) fn detach(&self, source: &Weak<dyn Source>) {
        let last = {
            let mut state = lock(&self.state);
            state
                .sources
                .retain(|s| !Weak::ptr_eq(s, source) && s.strong_count() > 0);
            state
                .timers
                .retain(|(_, s)| !Weak::ptr_eq(s, source) && s.strong_count() > 0);
            state.sources.is_empty() && !state.handle
        };
        if last {
            self.shut_down();
        }
    }

    /// The `WorkerPool` handle is gone or was closed: closes every dispatcher still attached
    /// (each drains and detaches), then shuts the pool down and joins it. A second caller waits
    /// for the first to get that far, except on one of the pool's threads.
    pub(crate) fn close_handle(&self) {
        let sources: Vec<_> = {
            let mut state = lock(&self.state);
            if !state.handle {
                while !state.closed_sources && !self.is_current() {
                    state = wait(&self.handle_closed, state);
                }
                drop(state);
                self.join();
                return;
            }
            state.handle = false;
            state.accepting = false;
            state.sources.iter().filter_map(Weak::upgrade).collect()
        };
        for source in sources {
            source.close_source();
        }
        let idle = lock(&self.state).sources.is_empty();
        if idle {
            self.shut_down();
        }
        lock(&self.state).closed_sources = true;
        self.handle_closed.notify_all();
        self.join();
    }

    /// Stops the threads once the queue is empty.
    fn shut_down(&self) {
        let mut state = lock(&self.state);
        if !state.shutdown {
            state.shutdown = true;
            state.timers.clear();
            self.wake.notify_all();
            log::debug!("pool {} stopping", self.name);
        }
    }

    /// Joins the threads if the pool has shut down, unless called on one of them: that one's
    /// handle stays, and is dropped (detaching the thread, which exits by itself) with the pool.
    pub(crate) fn join(&self) {
        if self.is_current() || !lock(&self.state).shutdown {
            return;
        }
        // Held while joining, so that a concurrent `join` returns only once all are joined.
        let mut threads = lock(&self.threads);
        if threads.is_empty() {
            return;
        }
        for handle in threads.drain(..) {
            // A worker never unwinds (see `AbortOnPanic`), so this cannot fail.
            let _ = handle.join();
        }
        log::debug!("pool {} stopped", self.name);
    }
}

impl fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolShared")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A pool of worker threads that several dispatchers can share.
///
/// Each dispatcher built with [`Builder::pool`](crate::Builder::pool) runs its keys on these
/// threads, with its own key type, job type and handler; [`max_parallel`] caps how many threads
/// one dispatcher may use at once, and turns are handed out fairly between dispatchers as between
/// keys. A dispatcher built without a pool owns a private one.
///
/// # Shutdown
///
/// [`close`](WorkerPool::close) (or dropping the handle) closes every dispatcher still on the
/// pool, which drains each one, then stops and joins the threads. A dispatcher closed earlier
/// simply leaves the pool; the others keep running.
///
/// Closing the pool while dispatchers are open is safe: each is closed exactly as by its own
/// [`Dispatcher::close`](crate::Dispatcher::close), so every job it accepted runs (and every
/// [`Group`](crate::Group) waiting on them completes), and from then on its dispatches return
/// `Closed`; its handle stays usable for `stats`, `close` (which returns at once with the same
/// counts) and the like. No dispatcher can be built on a closed pool
/// ([`BuildError::PoolClosed`]).
///
/// [`max_parallel`]: crate::Builder::max_parallel
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, WorkerPool};
///
/// let pool = WorkerPool::new(4)?;
/// let emails = Dispatcher::builder()
///     .pool(&pool)
///     .max_parallel(2)
///     .build(|to: &String, body: String| assert!(!body.is_empty() && !to.is_empty()))?;
/// let ledger = Dispatcher::builder().pool(&pool).build(|_account: &u64, _amount: i64| {})?;
/// emails.dispatch("ann@example.com".into(), "hello".into())?;
/// ledger.dispatch(7, -30)?;
/// emails.close(); // drains emails only; ledger keeps running
/// ledger.dispatch(7, 30)?;
/// pool.close(); // closes ledger, drains it, joins the threads
/// assert!(ledger.dispatch(7, 1).unwrap_err().is_closed());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkerPool {
    shared: Arc<PoolShared>,
}

impl WorkerPool {
    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Closes every dispatcher still on the pool, one after the other, each draining its
    /// accepted jobs as [`Dispatcher::close`](crate::Dispatcher::close) does; then stops and
    /// joins the threads. Idempotent. Dispatches on those dispatchers return `Closed` from then
    /// on.
    ///
    /// Called from one of the pool's own threads (inside a handler), it closes the dispatchers
    /// without waiting for them and does not join: the threads drain the work and exit by
    /// themselves.
    pub fn close(&self) {
        self.shared.close_handle();
    }

    pub(crate) fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<PoolShared>) -> WorkerPool {
        WorkerPool { shared }
    }
}

impl Drop for WorkerPool {
    /// Same as [`close`](WorkerPool::close).
    fn drop(&mut self) {
        self.shared.close_handle();
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.shared.name)
            .field("workers", &self.shared.workers)
            .finish()
    }
}

/// Thread name prefix when none is given.
pub(crate) const DEFAULT_NAME: &str = "keyed-dispatch";

/// The default number of workers: the machine's available parallelism.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    #[cfg(all(target_os = "linux", not(any(loom, feature = "shuttle"))))] // real threads, /proc
    #[cfg_attr(miri, ignore = "reads the thread names from /proc")]
    fn a_refused_pin_is_a_typed_error_and_stops_the_started_threads() {
        use super::PoolShared;
        use crate::{
            affinity::{self, Cpu},
            BuildError,
        };
        // A CPU that no machine this runs on has, inside the affinity mask's range.
        const NO_SUCH_CPU: usize = 1023;
        let allowed = affinity::plan(1).unwrap()[0];
        let cpus = vec![allowed, Cpu(NO_SUCH_CPU), allowed];
        let refused = PoolShared::start_on(3, "pin-refused", true, Some(cpus));
        assert!(matches!(
            refused,
            Err(BuildError::PinRefused {
                worker: 1,
                cpu: NO_SUCH_CPU
            })
        ));
        // Stopped before the error came back; their /proc entries may outlive them for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let left = || {
            let tasks = std::fs::read_dir("/proc/self/task").unwrap();
            let names = tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok());
            names.filter(|n| n.starts_with("pin-refused")).count()
        };
        while left() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool's threads run on"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn kept_value_comes_back_once_and_only_as_its_own_type() {
        let kept = Kept::default();
        assert_eq!(kept.take::<Vec<u8>>(), Vec::<u8>::new());
        kept.put(Vec::<u8>::with_capacity(64));
        let buffer: Vec<u8> = kept.take();
        assert!(buffer.capacity() >= 64, "the kept allocation came back");
        assert_eq!(kept.take::<Vec<u8>>().capacity(), 0, "taken once");
        kept.put(buffer);
        assert_eq!(
            kept.take::<Vec<u16>>(),
            Vec::<u16>::new(),
            "another type gets a default"
        );
        kept.put(String::from("x"));
        assert_eq!(
            kept.take::<String>(),
            "x",
            "a value of another type replaces it"
        );
        assert_eq!(
            kept.take::<Vec<u8>>().capacity(),
            0,
            "replaced, not kept beside it"
        );
    }
}
