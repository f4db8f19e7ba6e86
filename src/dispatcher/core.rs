//! The state a dispatcher's handle shares with the worker threads, [`Core`], and what a job
//! carries on its way to its key ([`Item`], [`Wait`]).
//!
//! Both sides of the key protocol act on this state, each concern in a file of its own that
//! holds its own `impl Core` block: producers routing jobs to mailboxes (`route`), the ready
//! queue and the tokens that staff it (`tokens`), workers running turns (`worker`), eviction
//! (`evict`) and the shutdown (`shutdown`). The fields are `pub(super)` for them.
//!
//! # Groups and flushes
//!
//! A producer routes an [`Item`]: a job and its group, if any. The mailbox queues the job and
//! keeps the group beside the queue as a *mark* (see `mailbox`), as it keeps flush barriers.
//! After each job of a turn the worker completes the marks due behind it: the job's group
//! (see `group`), with the job's outcome whatever it was, and the flush barriers behind it;
//! after each batch, the barriers registered during it. `close_now` completes the groups of the
//! jobs it hands back, and releases the barriers of the keys it empties.

use super::{delay::Delays, latency::Latency, watch::Watch};
use crate::{
    config::{Config, PanicHook},
    gate::Gate,
    handler::ErasedHandler,
    keymap::KeyMap,
    latch::Latch,
    mailbox::Mailbox,
    pool::{Client, PoolShared},
    ready::ReadyQueue,
    signal::Signal,
    stats::{Counters, Stats},
    sync::{Arc, AtomicBool, AtomicUsize, Mutex, Weak},
    unwind::contained,
};
use crossbeam_utils::CachePadded;
use std::{
    collections::VecDeque,
    fmt::{self, Debug},
    hash::Hash,
    time::{Duration, Instant},
};

/// How long a dispatch may wait for room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// `try_dispatch`, or `dispatch` on a worker thread: refuse with `Full`.
    Never,
    /// `dispatch`.
    Forever,
    /// `dispatch_timeout`: refuse with `Timeout` after the instant.
    Until(Instant),
}

impl Wait {
    /// `dispatch_timeout`'s wait: until `timeout` from now (forever if that overflows).
    pub(crate) fn within(timeout: Duration) -> Wait {
        Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until)
    }
}

/// A job on its way to its key's mailbox, with the group it counts in (see `group`).
///
/// Only the job is queued; the mailbox keeps the group in a mark beside the queue, so a job
/// outside any group is queued exactly as it came. A grouped job's `Arc` was cloned by its
/// group's dispatch.
#[derive(Debug)]
pub(crate) struct Item<J> {
    pub(crate) job: J,
    pub(crate) group: Option<Arc<Latch>>,
}

/// See the module docs.
pub(crate) struct Core<K, J> {
    pub(super) keys: KeyMap<Arc<Mailbox<K, J>>>,
    pub(super) gate: Gate,
    /// Padded, as the other fields written while jobs flow, so that their writes do not evict
    /// the read-mostly fields (map, handler, config) from the other threads' caches.
    pub(super) sched: CachePadded<Mutex<Sched<K, J>>>,
    /// Queued keys waiting for a turn, each once.
    pub(super) ready: ReadyQueue<Arc<Mailbox<K, J>>>,
    /// Whether the token holders out will see any key pushed on the ready queue: all
    /// `max_parallel` tokens are out, or a holder is searching. Written under `sched`'s lock
    /// whenever its counts change, so that a producer takes that lock only when a token may be
    /// needed (see `tokens`).
    pub(super) staffed: CachePadded<AtomicBool>,
    /// Entries in `sched.idle`: keys that may still be in the map although idle.
    pub(super) listed: CachePadded<AtomicUsize>,
    /// Evicted mailboxes that nothing refers to any more, to be reused for new keys.
    pub(super) spares: CachePadded<Spares<K, J>>,
    pub(super) counters: Counters,
    pub(super) handler: Runner<K, J>,
    pub(super) on_panic: Option<PanicHook<K>>,
    pub(super) config: Config,
    pub(super) pool: Arc<PoolShared>,
    /// Announced when the gate empties, the idle list empties, or (after `close_now`) the last
    /// running turn ends.
    pub(super) idle: Signal,
    /// Announced when jobs leave the gate or it closes: producers wait here for global room.
    pub(super) room: Signal,
    /// Keys whose running turn must look at their stop hint after each job: paused keys,
    /// and `cancel_key` calls under way. Read once per job, on a line of its own that only
    /// `pause_key`, `resume_key`, `cancel_key` and the shutdown write, so that the job path
    /// reads the key's own hint (beside the fields its producer writes) only while some key
    /// is stopping (see `pause`).
    pub(super) stopping: CachePadded<AtomicUsize>,
    /// Held keys: paused with jobs (see `pause`); `wait_idle` refuses to wait while any is.
    pub(super) held: AtomicUsize,
    /// Permits out (see `permit`): each holds a slot of the gate that `close_now` and
    /// `close_timeout` do not wait for.
    pub(super) permits: AtomicUsize,
    /// Waiting keys of retried jobs (see `backoff`).
    pub(super) backoffs: Mutex<super::backoff::Backoffs<K, J>>,
    /// The `metrics` facade's handles (see `publish`).
    #[cfg(feature = "metrics")]
    pub(super) publisher: super::publish::Publisher,
    /// The latency recorders, if the dispatcher records latency (see `latency`).
    pub(super) latency: Option<Box<Latency>>,
    /// The slow-job watch, if the dispatcher was built with `slow_job` (see `watch`).
    pub(super) watch: Option<Arc<Watch<K, J>>>,
    /// Jobs of `dispatch_after` (see `delay`): cold, so kept out of line.
    pub(super) delays: Box<Delays<K, J>>,
    /// Whether the pool timer that sweeps the idle list is set.
    pub(super) timer_set: AtomicBool,
    /// Set by a `close` that could not wait (it ran on a worker thread): whoever empties the
    /// gate afterwards finishes the shutdown.
    pub(super) finish_pending: AtomicBool,
    /// Held while a shutdown takes keys and delayed jobs out (`close_now`, `close_timeout`,
    /// and a close giving up on what close_timeout kept), so that each sees the others'
    /// results whole.
    pub(super) taking: Mutex<()>,
    /// Set once `close_timeout` has returned leaving jobs behind running ones.
    pub(super) timed_out: AtomicBool,
    /// Set by a `close` after that: whoever sees the last running turn end drops those jobs
    /// and finishes the shutdown (see `shutdown`).
    pub(super) abandoned: AtomicBool,
    /// Whether the shutdown has finished: keys evicted, pool detached.
    pub(super) finished: Mutex<bool>,
    /// This dispatcher as the pool sees it.
    pub(super) me: Weak<Self>,
}

/// What runs a dispatcher's jobs: a handler that its worker threads call, or an async one
/// whose futures its tasks await (see `tasks`).
pub(crate) enum Runner<K, J> {
    Threads(Box<dyn ErasedHandler<K, J>>),
    #[cfg(feature = "tokio")]
    Tasks(Box<dyn super::tasks::Tokens<K, J>>),
}

impl<K, J> Runner<K, J> {
    /// The handler that worker threads call; only their turns ask for it.
    pub(super) fn threads(&self) -> &dyn ErasedHandler<K, J> {
        match self {
            Runner::Threads(handler) => &**handler,
            #[cfg(feature = "tokio")]
            Runner::Tasks(_) => unreachable!("an async dispatcher's jobs run in tasks"),
        }
    }
}

/// Evicted mailboxes kept for reuse.
pub(super) type Spares<K, J> = Mutex<Vec<Arc<Mailbox<K, J>>>>;

/// Scheduling state, under one lock.
pub(super) struct Sched<K, J> {
    /// Idle keys to be swept, each once (see `Mailbox::listed`).
    pub(super) idle: VecDeque<Arc<Mailbox<K, J>>>,
    /// Tokens out: queued in the pool or held by a thread. At most `max_parallel`.
    pub(super) tokens: usize,
    /// Token holders spinning for a ready key.
    pub(super) searching: usize,
    /// Set once the shutdown has taken the lists: a sweep racing it files no key again.
    pub(super) cleared: bool,
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn new(
        config: Config,
        pool: Arc<PoolShared>,
        handler: Runner<K, J>,
        on_panic: Option<PanicHook<K>>,
        watch: Option<Watch<K, J>>,
        latency: Option<Latency>,
    ) -> Arc<Self> {
        #[cfg(feature = "metrics")]
        let publisher = super::publish::Publisher::new(&config.name);
        Arc::new_cyclic(|me| Core {
            keys: KeyMap::new(),
            gate: Gate::new(),
            sched: CachePadded::new(Mutex::new(Sched {
                idle: VecDeque::new(),
                tokens: 0,
                searching: 0,
                cleared: false,
            })),
            ready: ReadyQueue::new(),
            staffed: CachePadded::new(AtomicBool::new(false)),
            listed: CachePadded::new(AtomicUsize::new(0)),
            spares: CachePadded::new(Mutex::new(Vec::new())),
            counters: Counters::default(),
            handler,
            on_panic,
            config,
            pool,
            idle: Signal::default(),
            room: Signal::default(),
            stopping: CachePadded::new(AtomicUsize::new(0)),
            held: AtomicUsize::new(0),
            permits: AtomicUsize::new(0),
            backoffs: Mutex::new(Default::default()),
            delays: Box::default(),
            watch: watch.map(Arc::new),
            latency: latency.map(Box::new),
            #[cfg(feature = "metrics")]
            publisher,
            timer_set: AtomicBool::new(false),
            finish_pending: AtomicBool::new(false),
            taking: Mutex::new(()),
            timed_out: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            finished: Mutex::new(false),
            me: me.clone(),
        })
    }

    /// This dispatcher as a weak pool client, to attach, detach and set timers.
    pub(crate) fn as_client(&self) -> Weak<dyn Client> {
        self.me.clone()
    }

    pub(crate) fn pool(&self) -> &Arc<PoolShared> {
        &self.pool
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.keys.len(), self.pool.workers())
    }

    /// See [`Dispatcher::hot_keys`](crate::Dispatcher::hot_keys).
    pub(crate) fn hot_keys(&self, n: usize) -> Vec<(K, usize)> {
        let mut deep = Vec::new();
        self.keys.for_each(|mailbox| {
            let depth = mailbox.len();
            if depth > 0 {
                deep.push((Arc::clone(mailbox), depth));
            }
        });
        deep.sort_by_key(|&(_, depth)| std::cmp::Reverse(depth));
        deep.truncate(n);
        // Outside the map's locks: a key's `Clone` may call back into the dispatcher.
        deep.into_iter()
            .filter_map(|(mailbox, depth)| Some((contained(|| mailbox.key().clone())?, depth)))
            .collect()
    }
}

impl<K, J> fmt::Debug for Core<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}
