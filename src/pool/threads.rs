//! The worker threads: started, pinned, sleeping and waking, taking tokens and timers from the
//! pool's queue, shutting down and joined.
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
//!
//! [`WorkerPool`]: super::WorkerPool
//! [`WorkerPool::close`]: super::WorkerPool::close

use super::{
    client::{Client, TimerKind, TurnBuffers, Worker},
    default_workers,
    runtime::Runtime,
};
use crate::{
    affinity::{self, Cpu},
    config::{ThreadHook, ThreadSettings},
    error::BuildError,
    sync::{
        fault, lock, spin_once, thread, wait, wait_timeout, Arc, AtomicUsize, Condvar, Mutex,
        Ordering, Weak, CHECKED,
    },
    unwind::{drop_contained, panic_message},
};
use crossbeam_channel::Sender;
use std::{
    cell::Cell,
    collections::VecDeque,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Instant,
};

/// How many spin steps (see `sync::spin_once`) an idle thread takes before it sleeps, where it
/// spins at all (see [`PoolShared::spins`]).
const SPIN_STEPS: u32 = 10;

/// The most threads a pool may have: far more than any machine has cores, and few enough that
/// a typo's `usize::MAX` is an error rather than an allocation failure.
pub(crate) const MAX_WORKERS: usize = 1 << 16;

#[cfg(not(any(loom, shuttle)))]
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
#[cfg(all(shuttle, not(loom)))]
shuttle::thread_local! {
    static CURRENT_POOL: Cell<usize> = Cell::new(0);
}

/// See [`PoolShared::enter_job`]: holds the pool id the thread had before.
#[cfg(any(feature = "tokio", all(test, loom)))]
pub(crate) struct InJob(usize);

#[cfg(any(feature = "tokio", all(test, loom)))]
impl Drop for InJob {
    fn drop(&mut self) {
        CURRENT_POOL.with(|current| current.set(self.0));
    }
}

static NEXT_POOL_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// What a worker thread is handed.
enum Work {
    Run(Arc<dyn Client>),
    Timer(Arc<dyn Client>, TimerKind),
}

/// The state every worker and every dispatcher of a pool shares.
pub(crate) struct PoolShared {
    id: usize,
    pub(super) workers: usize,
    /// See [`PoolShared::spins`].
    spins: bool,
    pub(super) name: String,
    state: Mutex<PoolState>,
    /// Sleeping workers wait here.
    wake: Condvar,
    /// Closers of the `WorkerPool` handle wait here for the first one to finish closing.
    handle_closed: Condvar,
    /// `state.queue.len()`, readable without the lock by spinning and turn-taking workers.
    pub(super) queued: AtomicUsize,
    /// Join handles of the threads, taken by whoever joins them.
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Run by each thread before it takes work (see [`PoolShared::main`]).
    on_start: Option<ThreadHook>,
    /// Run by each thread right before it exits.
    on_stop: Option<ThreadHook>,
    /// Set for an async dispatcher's pool, which has no threads: its tokens and timers are
    /// tasks on this runtime (see `runtime`).
    runtime: Option<Runtime>,
}

struct PoolState {
    /// Tokens waiting for a thread, in FIFO order.
    queue: VecDeque<Arc<dyn Client>>,
    /// Workers spinning in `next_work` before they sleep.
    spinning: usize,
    /// Workers asleep on `wake`.
    sleeping: usize,
    /// Timers of clients, each due at its instant.
    timers: Vec<(Instant, Weak<dyn Client>, TimerKind)>,
    /// Open dispatchers attached to the pool, for `WorkerPool::close`.
    clients: Vec<Weak<dyn Client>>,
    /// Whether a `WorkerPool` handle still exists and has not been closed (a dispatcher's
    /// private pool has none).
    handle: bool,
    /// Whether a dispatcher may attach: while the handle lives, or until a private pool's one
    /// dispatcher has attached.
    accepting: bool,
    /// Set once `close_handle` has closed every dispatcher that was attached.
    closed_clients: bool,
    /// Set once no more work can come: workers exit when the queue is empty.
    shutdown: bool,
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
    /// Starts `workers` threads, named `{name}-{i}` unless `threads` names them otherwise, and
    /// set up as `threads` says (stack size, pinning, hooks). `handle` says whether a
    /// `WorkerPool` handle owns the pool (else it is private to the one dispatcher that attaches
    /// right away).
    pub(crate) fn start(
        workers: usize,
        name: &str,
        handle: bool,
        threads: &ThreadSettings,
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
        let cpus = if threads.pin {
            Some(affinity::plan(workers)?)
        } else {
            None
        };
        Self::start_on(workers, name, handle, threads, cpus)
    }

    /// As `start`, with thread `i` pinned to `cpus[i]` where `cpus` is given (whatever
    /// `threads.pin` says).
    fn start_on(
        workers: usize,
        name: &str,
        handle: bool,
        threads: &ThreadSettings,
        cpus: Option<Vec<Cpu>>,
    ) -> Result<Arc<Self>, BuildError> {
        // Every name is made and checked before the first thread starts.
        let names = threads.names(name, workers)?;
        // Each pinned thread says whether it could pin itself before it takes any work. A real
        // channel, not a modeled one: the models never pin.
        let (pinned_tx, pinned_rx) = crossbeam_channel::bounded(workers);
        let pool = Self::new(workers, name, handle, threads, None);
        for (index, thread_name) in names.into_iter().enumerate() {
            let worker = Arc::clone(&pool);
            let pin = cpus.as_ref().map(|cpus| (cpus[index], pinned_tx.clone()));
            let mut builder = thread::Builder::new().name(thread_name);
            if let Some(size) = threads.stack_size {
                builder = builder.stack_size(size);
            }
            let spawned = builder.spawn(move || worker.main(index, pin));
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

    /// The pool of an async dispatcher: no threads; its tokens and timers are tasks on
    /// `runtime`.
    #[cfg(feature = "tokio")]
    pub(crate) fn on_runtime(runtime: Runtime, name: &str) -> Arc<Self> {
        let workers = runtime.workers();
        Self::new(
            workers,
            name,
            false,
            &ThreadSettings::default(),
            Some(runtime),
        )
    }

    fn new(
        workers: usize,
        name: &str,
        handle: bool,
        threads: &ThreadSettings,
        runtime: Option<Runtime>,
    ) -> Arc<Self> {
        Arc::new(PoolShared {
            id: NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            workers,
            spins: !CHECKED && runtime.is_none() && workers < default_workers(),
            name: name.to_owned(),
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                spinning: 0,
                sleeping: 0,
                timers: Vec::new(),
                clients: Vec::new(),
                handle,
                accepting: true,
                closed_clients: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            handle_closed: Condvar::new(),
            queued: AtomicUsize::new(0),
            threads: Mutex::new(Vec::with_capacity(workers)),
            on_start: threads.on_start.clone(),
            on_stop: threads.on_stop.clone(),
            runtime,
        })
    }

    /// Whether idle threads (and dispatchers' token holders out of ready keys) spin before
    /// they sleep: only where the pool's threads leave a core spare, never under a schedule
    /// checker. Where they fill every core, a spinning thread yields its core to whatever
    /// else wants it, and the kernel can then run a long job there for a whole time slice
    /// while the spinner, once given work, waits behind it. Sleeping costs throughput on tiny
    /// jobs instead (a wake-up where a spinner would have taken the work). Figures for both in
    /// DESIGN.md, "Notes moved from the code".
    pub(crate) fn spins(&self) -> bool {
        self.spins
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the caller must not block: on one of this pool's threads or in one of its jobs
    /// (see [`PoolShared::is_current`]), or, for an async dispatcher's pool, anywhere on a
    /// runtime, where blocking would hold up the runtime's thread.
    pub(crate) fn must_not_block(&self) -> bool {
        self.is_current() || self.runtime.as_ref().is_some_and(Runtime::in_context)
    }

    /// Marks the calling thread as running a job of this pool until the guard drops: what an
    /// async dispatcher's task does around each poll of a job's future, so that the job's
    /// calls into its dispatcher see [`PoolShared::is_current`] as a worker thread's do.
    #[cfg(any(feature = "tokio", all(test, loom)))]
    pub(crate) fn enter_job(&self) -> InJob {
        InJob(CURRENT_POOL.with(|current| current.replace(self.id)))
    }

    /// Whether the calling thread is one of this pool's workers, or polls one of its jobs.
    pub(crate) fn is_current(&self) -> bool {
        CURRENT_POOL.with(|current| current.get() == self.id)
    }

    /// A worker thread's life: pinned first where `pin` says so (reporting whether it could
    /// be), then the start hook, the work until the pool shuts down, and the stop hook.
    ///
    /// Every thread that runs the start hook runs the stop hook, also when the pool's start
    /// failed after the thread's (a refused pin): the pool then shuts down at once, and the
    /// thread finds no work. The thread counts as the pool's in both hooks (see
    /// [`PoolShared::is_current`]), so that a hook that closes a dispatcher or the pool does not
    /// wait for itself.
    fn main(self: Arc<Self>, index: usize, pin: Option<(Cpu, Sender<Pinned>)>) {
        let guard = AbortOnPanic;
        if let Some((cpu, pinned)) = pin {
            // Cannot fail: `start_on` holds the receiver until every thread has sent.
            let _ = pinned.send((index, cpu, affinity::pin_current(cpu)));
        }
        CURRENT_POOL.with(|current| current.set(self.id));
        self.run_hook(self.on_start.as_ref(), "on_thread_start", index);
        let worker = Worker {
            pool: &self,
            index,
            turn_buffers: TurnBuffers::default(),
        };
        while let Some(work) = self.next_work() {
            match work {
                Work::Run(client) => client.run(&worker),
                Work::Timer(client, kind) => {
                    if let Some(due) = client.on_timer(Instant::now(), kind) {
                        self.set_timer(due, Arc::downgrade(&client), kind);
                    }
                }
            }
        }
        drop(worker);
        self.run_hook(self.on_stop.as_ref(), "on_thread_stop", index);
        log::debug!("pool {} worker {index} stopped", self.name);
        std::mem::forget(guard);
    }

    /// Runs a thread hook, if set, catching and logging its panic: the thread goes on as if the
    /// hook had returned. Unwinding on would abort the process (`AbortOnPanic`).
    fn run_hook(&self, hook: Option<&ThreadHook>, which: &str, index: usize) {
        let Some(hook) = hook else { return };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook())) {
            log::error!(
                "pool {} worker {index}: {which} panicked: {}",
                self.name,
                panic_message(&*payload)
            );
            // A payload may panic in its own drop; that must not unwind into the worker.
            drop_contained(payload);
        }
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
            let next_timer = state.timers.iter().map(|(due, _, _)| *due).min();
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
        if let Some(client) = state.queue.pop_front() {
            self.queued.store(state.queue.len(), Ordering::Relaxed);
            // More tokens than spinners can take: hand one to a sleeper too.
            if state.queue.len() > state.spinning && state.sleeping > 0 {
                self.wake.notify_one();
            }
            return Some(Work::Run(client));
        }
        if state.timers.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(at) = state.timers.iter().position(|(due, _, _)| *due <= now) {
            let (_, client, kind) = state.timers.swap_remove(at);
            if let Some(client) = client.upgrade() {
                return Some(Work::Timer(client, kind));
            }
        }
        None
    }

    /// Queues a token of `client` and wakes a thread if none is spinning to take it.
    ///
    /// Once the pool has shut down the token is dropped: its dispatcher has closed. A producer
    /// that added a token just as a holder already out ran the key it scheduled (and so let
    /// the close finish) may come here after the last thread has left. Queued, the token would
    /// keep its dispatcher alive, and through it this pool: a cycle that nothing breaks.
    pub(crate) fn submit(&self, client: Arc<dyn Client>) {
        let mut state = lock(&self.state);
        if state.shutdown && !fault!(TokenAfterShutdown) {
            drop(state);
            // Outside the lock: this may be the dispatcher's last reference.
            drop(client);
            return;
        }
        if let Some(runtime) = &self.runtime {
            drop(state);
            runtime.spawn_token(client);
            return;
        }
        state.queue.push_back(client);
        // ORDERING: Relaxed; only a hint for spinners, who re-check under the lock.
        self.queued.store(state.queue.len(), Ordering::Relaxed);
        if state.sleeping > 0 && state.queue.len() > state.spinning {
            self.wake.notify_one();
        }
    }

    /// Calls `client.on_timer` with `kind` on a worker thread once `due` has passed.
    pub(crate) fn set_timer(&self, due: Instant, client: Weak<dyn Client>, kind: TimerKind) {
        let mut state = lock(&self.state);
        if state.shutdown {
            return;
        }
        if let Some(runtime) = &self.runtime {
            drop(state);
            runtime.spawn_timer(due, client, kind);
            return;
        }
        state.timers.push((due, client, kind));
        if state.sleeping > 0 {
            // A sleeper may be waiting for a later timer, or for none: let it recompute.
            self.wake.notify_one();
        }
    }

    /// Attaches a dispatcher; fails once the pool is closing.
    pub(crate) fn attach(&self, client: Weak<dyn Client>) -> Result<(), BuildError> {
        let mut state = lock(&self.state);
        if !state.accepting {
            return Err(BuildError::PoolClosed);
        }
        state.accepting = state.handle;
        state.clients.retain(|s| s.strong_count() > 0);
        state.clients.push(client);
        Ok(())
    }

    /// Detaches a closed dispatcher, and shuts the pool down if nothing can give it work any
    /// more. The caller then joins the threads with [`PoolShared::join`] where it may.
    pub(crate) fn detach(&self, client: &Weak<dyn Client>) {
        let last = {
            let mut state = lock(&self.state);
            state
                .clients
                .retain(|s| !Weak::ptr_eq(s, client) && s.strong_count() > 0);
            state
                .timers
                .retain(|(_, s, _)| !Weak::ptr_eq(s, client) && s.strong_count() > 0);
            state.clients.is_empty() && !state.handle
        };
        if last {
            self.shut_down();
        }
    }

    /// The `WorkerPool` handle is gone or was closed: closes every dispatcher still attached
    /// (each drains and detaches), then shuts the pool down and joins it. A second caller waits
    /// for the first to get that far, except on one of the pool's threads.
    pub(crate) fn close_handle(&self) {
        let clients: Vec<_> = {
            let mut state = lock(&self.state);
            if !state.handle {
                while !state.closed_clients
                    && !self.is_current()
                    && !fault!(SecondPoolCloseSkipsWait)
                {
                    state = wait(&self.handle_closed, state);
                }
                drop(state);
                self.join();
                return;
            }
            state.handle = false;
            state.accepting = false;
            state.clients.iter().filter_map(Weak::upgrade).collect()
        };
        for client in clients {
            client.close_client();
        }
        let idle = lock(&self.state).clients.is_empty();
        if idle {
            self.shut_down();
        }
        lock(&self.state).closed_clients = true;
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

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", not(any(loom, shuttle))))] // real threads, /proc
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
        let threads = crate::config::ThreadSettings::default();
        let refused = PoolShared::start_on(3, "pin-refused", true, &threads, Some(cpus));
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
}
