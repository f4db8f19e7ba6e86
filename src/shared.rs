//! The state a dispatcher's handle shares with the worker threads, and both sides of the key
//! protocol: producers routing jobs to mailboxes, and workers running turns of ready keys.
//!
//! # Scheduling
//!
//! A dispatcher keeps a FIFO *ready queue* of Queued keys (see `ready`) and holds up to
//! `max_parallel` *tokens* of its pool (see `pool`): each token is one thread's permission to
//! run this dispatcher's keys. A producer that makes a key Queued pushes it on the ready queue
//! and, if fewer than `max_parallel` tokens are out and no token holder is already looking for
//! work (`searching`), hands a new token to the pool, waking one thread. A token holder pops
//! keys and runs a turn of each; when the ready queue is empty it spins briefly (as
//! `searching`, where the pool spins at all: see `PoolShared::spins`), then arms the sweep
//! timer if idle keys are listed (see below) and releases its token.
//!
//! The ready queue takes no lock; tokens and searchers are counted under the scheduler's lock
//! and mirrored in `staffed` (all tokens out, or one searching), which a producer reads after
//! its push to decide whether it needs that lock at all. A holder releasing its token stores
//! `staffed` before it looks at the ready queue once more; a producer pushes before it reads
//! `staffed`; with a `SeqCst` fence on each side (the Dekker pattern), a key pushed there
//! either is seen by the releasing holder, who takes its token back, or sees the token gone and
//! adds one.
//!
//! # Eviction
//!
//! When a key's turn ends with its queue empty it becomes Idle and is entered in the idle list
//! (unless it is there already). A *sweep* evicts the listed keys that are still Idle, except
//! those listed or scheduled again since the last sweep met them: those get a second chance
//! and stay listed. Sweeps run from a pool timer every `idle_timeout`, or [`SWEEP_PERIOD`]
//! without one, armed by a token holder that runs out of ready keys while keys are listed. A
//! key that comes back within a period thus keeps its entry (re-creating it costs the map's
//! write lock and the producers' time), and a key idle for two periods is gone.
//!
//! Without an idle timeout, memory stays bounded by the live keys plus the list (and the
//! spares below): whenever the list grows past [`IDLE_LIST_MAX`], its oldest [`SPARES_MAX`]
//! entries are swept at once (no more than the spares can take, so that keys coming and going
//! reuse what such a sweep evicts), and `wait_idle` evicts every idle key at once. The
//! shutdown evicts every key in any case.
//!
//! A sweep keeps up to [`SPARES_MAX`] of the mailboxes it evicts as spares, for new keys: with
//! keys coming and going, a mailbox would otherwise be allocated by a producer and freed by a
//! worker for every key, and the allocator's locks would be contended between the two. A spare
//! holds no key (the evicted key is dropped when the mailbox is retired) and a small queue
//! buffer; a sweep that races the shutdown may leave a few spares until the dispatcher drops.
//!
//! # Groups and flushes
//!
//! A producer routes an [`Item`]: a job and its group, if any. The mailbox queues the job and
//! keeps the group beside the queue as a *mark* (see `mailbox`), as it keeps flush barriers.
//! After each job of a turn the worker completes the marks due behind it: the job's group
//! (see `group`), with the job's outcome whatever it was, and the flush barriers behind it;
//! after each batch, the barriers registered during it. `close_now` completes the groups of the
//! jobs it hands back, and releases the barriers of the keys it empties.
//!
//! This module holds the shared state, the producers' side and the shutdown; `turns` holds the
//! workers' side.

mod turns;

use crate::{
    config::{Config, ErrorHook, PanicHook},
    error::{DispatchError, WaitError},
    gate::{Gate, Refused},
    handler::ErasedHandler,
    keymap::{Hashed, KeyMap, Keyed},
    latch::Latch,
    mailbox::{Mailbox, Marks, Push},
    pool::{PoolShared, Source},
    ready::ReadyQueue,
    signal::Signal,
    stats::{Counters, Stats},
    sync::{dekker_fence, fence, lock, Arc, AtomicBool, AtomicUsize, Mutex, Ordering, Weak},
    unwind::{contained, drop_contained, ShowKey},
};
use crossbeam_utils::CachePadded;
use std::{
    collections::VecDeque,
    fmt::{self, Debug},
    hash::Hash,
    time::{Duration, Instant},
};

/// Idle keys kept in the idle list before its oldest entries are swept even though the
/// dispatcher is busy.
pub(crate) const IDLE_LIST_MAX: usize = 4096;

/// How often the idle list is swept while keys are listed, without an idle timeout (see the
/// module docs). `None` in the models, where a token holder that runs out of ready keys
/// sweeps the whole list at once, as the timer's sweeps would after two periods without work.
const SWEEP_PERIOD: Option<Duration> = if crate::sync::CHECKED {
    None
} else {
    Some(Duration::from_millis(20))
};

/// Evicted mailboxes kept for new keys, so that keys coming and going do not allocate and free
/// a mailbox each (across threads: a worker frees what a producer allocated). 4,096 was faster
/// with a million keys coming and going, but then a dispatcher holds about a MiB of spares once
/// it has seen enough keys.
pub(crate) const SPARES_MAX: usize = 1024;

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

/// The result of [`Shared::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) stats: Stats,
    pub(crate) drained: bool,
}

/// See the module docs.
pub(crate) struct Shared<K, J> {
    keys: KeyMap<Arc<Mailbox<K, J>>>,
    gate: Gate,
    /// Padded, as the other fields written while jobs flow, so that their writes do not evict
    /// the read-mostly fields (map, handler, config) from the other threads' caches.
    sched: CachePadded<Mutex<Sched<K, J>>>,
    /// Queued keys waiting for a turn, each once.
    ready: ReadyQueue<Arc<Mailbox<K, J>>>,
    /// Whether the token holders out will see any key pushed on the ready queue: all
    /// `max_parallel` tokens are out, or a holder is searching. Written under `sched`'s lock
    /// whenever its counts change, so that a producer takes that lock only when a token may be
    /// needed (see the module docs).
    staffed: CachePadded<AtomicBool>,
    /// Entries in `sched.idle`: keys that may still be in the map although idle.
    listed: CachePadded<AtomicUsize>,
    /// Evicted mailboxes that nothing refers to any more, to be reused for new keys.
    spares: CachePadded<Spares<K, J>>,
    counters: Counters,
    handler: Box<dyn ErasedHandler<K, J>>,
    on_panic: Option<PanicHook<K>>,
    on_error: Option<ErrorHook<K>>,
    config: Config,
    pool: Arc<PoolShared>,
    /// Announced when the gate empties, the idle list empties, or (after `close_now`) the last
    /// running turn ends.
    idle: Signal,
    /// Announced when jobs leave the gate or it closes: producers wait here for global room.
    room: Signal,
    /// Whether the pool timer that sweeps the idle list is set.
    timer_set: AtomicBool,
    /// Set by a `close` that could not wait (it ran on a worker thread): whoever empties the
    /// gate afterwards finishes the shutdown.
    finish_pending: AtomicBool,
    /// Whether the shutdown has finished: keys evicted, pool detached.
    finished: Mutex<bool>,
    /// This dispatcher as the pool sees it.
    me: Weak<Self>,
}

/// Evicted mailboxes kept for reuse.
type Spares<K, J> = Mutex<Vec<Arc<Mailbox<K, J>>>>;

/// Scheduling state, under one lock.
struct Sched<K, J> {
    /// Idle keys to be swept, each once (see `Mailbox::listed`).
    idle: VecDeque<Arc<Mailbox<K, J>>>,
    /// Tokens out: queued in the pool or held by a thread. At most `max_parallel`.
    tokens: usize,
    /// Token holders spinning for a ready key.
    searching: usize,
    /// Set once the shutdown has taken the lists: a sweep racing it files no key again.
    cleared: bool,
}

/// Gives back a slot of the gate that a dispatch took, unless disarmed: routing runs the key's
/// `Eq`, which may panic.
struct Reserved<'a, K, J>(&'a Shared<K, J>)
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static;

impl<K, J> Reserved<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl<K, J> Drop for Reserved<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn drop(&mut self) {
        self.0.left(1);
    }
}

/// What a producer's push did, as `route` sees it: the mailbox to schedule, if any, or the
/// refused job with the mailbox to wait on if the key was full.
type Pushed<K, J> = Result<Option<Arc<Mailbox<K, J>>>, (J, Option<Arc<Mailbox<K, J>>>)>;

/// What happened to a new key's mailbox under the map's write lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filing {
    Filed,
    /// Another producer created the key first.
    Present,
    /// `close_now` has begun.
    Halted,
}

/// What routing a job to its key's mailbox did.
enum Routed<K, J> {
    /// Queued behind the key's other jobs.
    Added,
    /// Queued on an Idle or new key, which must be scheduled.
    Schedule(Arc<Mailbox<K, J>>),
    /// The key is full; wait on its mailbox for room.
    Full(K, Item<J>, Arc<Mailbox<K, J>>),
    /// `close_now` has begun.
    Halted(K, Item<J>),
}

impl<K, J> Shared<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn new(
        config: Config,
        pool: Arc<PoolShared>,
        handler: Box<dyn ErasedHandler<K, J>>,
        on_panic: Option<PanicHook<K>>,
        on_error: Option<ErrorHook<K>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Shared {
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
            on_error,
            config,
            pool,
            idle: Signal::default(),
            room: Signal::default(),
            timer_set: AtomicBool::new(false),
            finish_pending: AtomicBool::new(false),
            finished: Mutex::new(false),
            me: me.clone(),
        })
    }

    /// This dispatcher as a weak pool source, to attach, detach and set timers.
    pub(crate) fn as_source(&self) -> Weak<dyn Source> {
        self.me.clone()
    }

    pub(crate) fn pool(&self) -> &Arc<PoolShared> {
        &self.pool
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    // ---------------------------------------------------------------------------------------
    // Producers

    /// `dispatch`'s wait: forever, except on a worker thread of this dispatcher's pool, where
    /// waiting for room could deadlock.
    pub(crate) fn blocking(&self) -> Wait {
        if self.pool.is_current() {
            Wait::Never
        } else {
            Wait::Forever
        }
    }

    /// Dispatches `item` on `key`, waiting for room as `wait` allows. A refused item's group
    /// reference is dropped; the caller undoes its count.
    pub(crate) fn send(
        &self,
        mut key: K,
        mut item: Item<J>,
        wait: Wait,
    ) -> Result<(), DispatchError<K, J>> {
        // The key's one call of `Hash`, before anything that would need undoing if it panics.
        let hash = self.keys.hash(&key);
        loop {
            if let Err((refused, emptied)) = self.gate.enter(self.config.capacity) {
                if emptied {
                    self.progressed();
                }
                match refused {
                    Refused::Closed => {
                        let job = item.job;
                        return Err(self.refuse(DispatchError::Closed { key, job }));
                    }
                    Refused::Full => {
                        if self.wait_for_global_room(wait) {
                            continue;
                        }
                        return Err(self.refuse(too_full(wait, key, item.job)));
                    }
                }
            }
            let reserved = Reserved(self);
            let routed = self.route(hash, key, item);
            reserved.disarm();
            match routed {
                Routed::Added => return Ok(()),
                Routed::Schedule(mailbox) => {
                    self.schedule(mailbox);
                    return Ok(());
                }
                Routed::Halted(key, refused) => {
                    self.left(1);
                    let job = refused.job;
                    return Err(self.refuse(DispatchError::Closed { key, job }));
                }
                Routed::Full(k, i, mailbox) => {
                    self.left(1);
                    let capacity = self.config.key_capacity;
                    let room = match wait {
                        Wait::Never => false,
                        Wait::Forever => self
                            .counters
                            .blocked(|| mailbox.wait_for_room(capacity, None)),
                        Wait::Until(deadline) => self
                            .counters
                            .blocked(|| mailbox.wait_for_room(capacity, Some(deadline))),
                    };
                    if !room {
                        return Err(self.refuse(too_full(wait, k, i.job)));
                    }
                    (key, item) = (k, i);
                }
            }
        }
    }

    /// Pushes `item` into `key`'s mailbox, creating it if the key has none. The caller has
    /// entered the gate. `hash` is the key's (see `keymap`).
    fn route(&self, hash: u64, mut key: K, item: Item<J>) -> Routed<K, J> {
        // The mailbox takes the group only with the job; a refused job gets it back here.
        let Item { mut job, mut group } = item;
        loop {
            // Fast path: the key has a mailbox; push under the shard's read lock.
            let found = self
                .keys
                .get(Hashed { hash, key: &key }, job, |mailbox, job| {
                    self.push(mailbox, job, &mut group)
                });
            match found {
                Ok(Ok(None)) => return Routed::Added,
                Ok(Ok(Some(mailbox))) => return Routed::Schedule(mailbox),
                Ok(Err((job, Some(mailbox)))) => {
                    return Routed::Full(key, Item { job, group }, mailbox);
                }
                Ok(Err((job, None))) => return Routed::Halted(key, Item { job, group }),
                Err(refused) => job = refused,
            }
            // Slow path: a mailbox for the key, made before the shard's write lock is taken,
            // filed under it unless another producer created the key meanwhile.
            let mut mailbox = self.mailbox_for(key, hash, job, group.take());
            let (filing, unfiled) =
                self.keys
                    .insert_unless_present(Arc::clone(&mailbox), |existing| {
                        let filing = match existing {
                            Some(_) => Filing::Present,
                            // Checked under the write lock: `close_now` sets the flag before it
                            // drains the map, so a mailbox filed here is either drained or
                            // never filed.
                            None if self.gate.halt_seen() => Filing::Halted,
                            None => {
                                self.counters.accepted();
                                Filing::Filed
                            }
                        };
                        (filing, filing == Filing::Filed)
                    });
            drop(unfiled);
            if filing == Filing::Filed {
                log::trace!(
                    "{}: key {} created",
                    self.config.name,
                    ShowKey(mailbox.key())
                );
                return Routed::Schedule(mailbox);
            }
            let unshared = Arc::get_mut(&mut mailbox).expect("an unfiled mailbox is unshared");
            (key, job, group) = unshared.unmake();
            self.keep_spares(&mut vec![mailbox]);
            if filing == Filing::Halted {
                return Routed::Halted(key, Item { job, group });
            }
            // Present: push into the other producer's mailbox, through the fast path.
        }
    }

    /// Pushes `job` into the mailbox found for its key, counting it if accepted.
    fn push(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        job: J,
        group: &mut Option<Arc<Latch>>,
    ) -> Pushed<K, J> {
        let capacity = self.config.key_capacity;
        match mailbox.push(job, group, capacity, &self.gate, || {
            self.counters.accepted()
        }) {
            Push::Added => Ok(None),
            Push::Schedule => Ok(Some(Arc::clone(mailbox))),
            Push::Full(job) => Err((job, Some(Arc::clone(mailbox)))),
            Push::Halted(job) => Err((job, None)),
        }
    }

    /// A mailbox for a new key holding `job`: a spare one if there is one at hand, else a fresh
    /// one.
    fn mailbox_for(
        &self,
        key: K,
        hash: u64,
        job: J,
        group: Option<Arc<Latch>>,
    ) -> Arc<Mailbox<K, J>> {
        // Not waiting for a sweeper that is putting spares back: allocating is as good.
        let spare = self
            .spares
            .try_lock()
            .ok()
            .and_then(|mut spares| spares.pop());
        match spare {
            Some(mut mailbox) => {
                let unshared = Arc::get_mut(&mut mailbox).expect("a spare mailbox is unshared");
                unshared.reuse(key, hash, job, group);
                mailbox
            }
            None => Arc::new(Mailbox::new(key, hash, job, group)),
        }
    }

    /// Keeps evicted mailboxes that nothing else refers to as spares, up to [`SPARES_MAX`];
    /// drops the others. Each is checked empty, so that a job stranded in an evicted mailbox
    /// by a broken eviction is lost (and shows in the models) rather than run under the next
    /// key to reuse the mailbox. Called without locks: retiring drops the evicted keys.
    fn keep_spares(&self, evicted: &mut Vec<Arc<Mailbox<K, J>>>) {
        evicted.retain_mut(|mailbox| Arc::get_mut(mailbox).is_some_and(Mailbox::retire));
        if evicted.is_empty() {
            return;
        }
        let mut spares = lock(&self.spares);
        let room = SPARES_MAX.saturating_sub(spares.len());
        let keep = evicted.len().min(room);
        spares.extend(evicted.drain(..keep));
        drop(spares);
        evicted.clear();
    }

    /// Puts a key that became Queued on the ready queue, adding a token if one is needed.
    fn schedule(&self, mailbox: Arc<Mailbox<K, J>>) {
        self.ready.push(mailbox);
        self.add_token_if_needed();
    }

    /// Adds a token if keys are ready and no holder out will see them: fewer than
    /// `max_parallel` tokens are out and none is searching. Called after a push on the ready
    /// queue, or a pop that left keys there.
    fn add_token_if_needed(&self) {
        // ORDERING: SeqCst, one side of the Dekker pair with a holder releasing its token (see
        // the module docs): the key was pushed before `staffed` is read here.
        fence(Ordering::SeqCst);
        if self.staffed.load(Ordering::SeqCst) {
            return;
        }
        let mut sched = lock(&self.sched);
        let needed = !self.ready.is_empty()
            && sched.searching == 0
            && sched.tokens < self.config.max_parallel;
        if needed {
            sched.tokens += 1;
            self.set_staffed(&sched);
        }
        drop(sched);
        if needed {
            self.submit_token();
        }
    }

    /// Mirrors the tokens and searchers just counted in `staffed`; called under `sched`'s lock.
    fn set_staffed(&self, sched: &Sched<K, J>) {
        let staffed = sched.searching > 0 || sched.tokens >= self.config.max_parallel;
        // ORDERING: SeqCst, the other side of `add_token_if_needed`'s pair.
        self.staffed.store(staffed, Ordering::SeqCst);
    }

    /// Queues a token of this dispatcher in the pool (already counted in `Sched::tokens`).
    fn submit_token(&self) {
        if let Some(me) = self.me.upgrade() {
            self.pool.submit(me);
        }
    }

    /// Blocks until the gate has room or closes, as `wait` allows. Returns false if it may not
    /// wait or timed out.
    fn wait_for_global_room(&self, wait: Wait) -> bool {
        let deadline = match wait {
            Wait::Never => return false,
            Wait::Forever => None,
            Wait::Until(deadline) => Some(deadline),
        };
        let capacity = self.config.capacity;
        self.counters.blocked(|| {
            self.room.wait_until(deadline, || {
                self.gate.is_closed() || self.gate.count() < capacity
            })
        })
    }

    fn refuse(&self, err: DispatchError<K, J>) -> DispatchError<K, J> {
        self.counters.refused();
        err
    }

    /// `n` jobs (or reservations) left the gate.
    fn left(&self, n: usize) {
        if self.gate.leave(n) {
            self.progressed();
        }
        self.room.notify();
    }

    /// The gate or the idle list emptied, or the last turn ended after `close_now`: wake the
    /// waiters, and finish a shutdown that a worker thread had to leave pending.
    fn progressed(&self) {
        self.idle.notify();
        // ORDERING: SeqCst, paired with `close`, which sets the flag and then checks the gate:
        // of the two, at least one sees the other's write.
        if self.finish_pending.load(Ordering::SeqCst) && self.gate.count() == 0 {
            self.finish();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Waiting and closing

    /// No job accepted and unfinished, and no idle key left to sweep (with an idle timeout,
    /// keys wait for it whatever `wait_idle` does).
    fn is_idle(&self) -> bool {
        // ORDERING: SeqCst, see `Signal`.
        self.gate.count() == 0
            && (self.config.idle_timeout.is_some() || self.listed.load(Ordering::SeqCst) == 0)
    }

    /// How often the idle list is swept while keys are listed: every `idle_timeout`, else
    /// every [`SWEEP_PERIOD`].
    fn sweep_period(&self) -> Option<Duration> {
        self.config.idle_timeout.or(SWEEP_PERIOD)
    }

    pub(crate) fn wait_idle(&self) -> Result<(), WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        let (None, Some(period)) = (self.config.idle_timeout, SWEEP_PERIOD) else {
            self.idle.wait_until(None, || self.is_idle());
            return Ok(());
        };
        loop {
            // Once every job has finished, evict the idle keys now rather than at the next
            // sweep. A key that a worker has counted but not yet filed is swept by the next
            // round, or by the timer.
            self.idle.wait_until(None, || self.gate.count() == 0);
            let idle = std::mem::take(&mut lock(&self.sched).idle);
            self.sweep(idle, false);
            if self
                .idle
                .wait_until(Some(Instant::now() + period), || self.is_idle())
            {
                return Ok(());
            }
        }
    }

    /// Blocks until every job of `key` pushed before the call has finished (or was handed
    /// back), or `deadline` passes. See `mailbox` for the barrier it waits on.
    pub(crate) fn flush_key(&self, key: &K, deadline: Option<Instant>) -> Result<(), WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        match self.flush_barrier(key) {
            Some(barrier) if !barrier.wait(deadline) => Err(WaitError::Timeout),
            _ => Ok(()),
        }
    }

    /// Registers a flush barrier behind `key`'s jobs; `None` if it has none queued or running.
    pub(crate) fn flush_barrier(&self, key: &K) -> Option<Arc<Latch>> {
        let hash = self.keys.hash(key);
        // Under the shard's read lock, so the mailbox found is the key's current one; one that
        // was evicted had finished every job pushed into it.
        self.keys
            .get(Hashed { hash, key }, (), |mailbox, ()| mailbox.flush())
            .ok()
            .flatten()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.keys.len(), self.pool.workers())
    }

    /// Stops accepting, waits for every accepted job to finish, evicts every key and leaves
    /// the pool (joining it if this was its last user). On a worker thread it only stops
    /// accepting; the shutdown then finishes when the last job does.
    pub(crate) fn close(&self) -> Closed {
        let skip_drain = (crate::sync::Fault::CountBeforeClose.on() && self.gate.count() == 0)
            || (crate::sync::Fault::LateCloseSkipsDrain.on() && self.gate.is_closed());
        if self.gate.close() {
            log::debug!("{}: close begun", self.config.name);
            self.room.notify();
        }
        if self.pool.is_current() {
            // ORDERING: SeqCst, see `progressed`.
            self.finish_pending.store(true, Ordering::SeqCst);
            if self.gate.count() == 0 {
                self.finish();
            }
            return Closed {
                stats: self.stats(),
                drained: false,
            };
        }
        self.idle
            .wait_until(None, || skip_drain || self.gate.count() == 0);
        self.finish();
        self.pool.join();
        Closed {
            stats: self.stats(),
            drained: true,
        }
    }

    /// Stops accepting and starting jobs, waits for the running ones, and hands back every job
    /// that had not started, grouped by key in dispatch order.
    pub(crate) fn close_now(&self) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        if self.gate.halt() {
            log::debug!("{}: close_now begun", self.config.name);
        }
        // The halt flag, then the turn count (see `run_turn`).
        dekker_fence();
        self.room.notify();
        // Every turn puts its unstarted jobs back into its mailbox before it ends.
        self.idle.wait_until(None, || self.counters.turns() == 0);
        let mut queues = Vec::new();
        let mut jobs = 0;
        let mut released = Marks::new();
        let removed = self.keys.remove_where(|mailbox| {
            let (queue, marks) = mailbox.take_all();
            released.extend(marks);
            jobs += queue.len();
            queues.push(queue);
            true
        });
        // Outside the map's locks: one mark per handed-back job of a group, and the flush
        // barriers behind them. Each wakes its waiters, who see the jobs handed back.
        for mark in released {
            mark.state.handed_back();
        }
        self.clear_sched();
        let left = self.hand_back(removed, queues);
        self.counters.handed_back(jobs);
        self.left(jobs);
        // Producers that entered the gate before it closed see the halt flag and leave.
        self.idle.wait_until(None, || self.gate.count() == 0);
        self.finish();
        self.pool.join();
        log::debug!(
            "{}: close_now done, {jobs} jobs handed back",
            self.config.name
        );
        Ok(left)
    }

    /// Pairs the mailboxes that `close_now` took out of the map with their jobs, by key.
    ///
    /// Each key is moved out of its mailbox, which nothing else refers to once the ready and
    /// idle lists are cleared, except where a dispatch that raced `close_now` still holds it:
    /// that key is cloned. Should that clone panic, the key's jobs cannot be handed back; they
    /// are dropped, logged at `error` and counted as handed back.
    fn hand_back(
        &self,
        removed: Vec<Arc<Mailbox<K, J>>>,
        queues: Vec<VecDeque<J>>,
    ) -> Vec<(K, Vec<J>)> {
        let mut left = Vec::new();
        for (mailbox, queue) in removed.into_iter().zip(queues) {
            if queue.is_empty() {
                continue;
            }
            let key = match Arc::try_unwrap(mailbox) {
                Ok(mailbox) => Some(mailbox.into_key()),
                Err(shared) => contained(|| shared.key().clone()),
            };
            match key {
                Some(key) => left.push((key, Vec::from(queue))),
                None => {
                    log::error!(
                        "{}: a key's Clone panicked in close_now; its {} jobs are dropped",
                        self.config.name,
                        queue.len()
                    );
                    for job in queue {
                        drop_contained(job);
                    }
                }
            }
        }
        left
    }

    /// The last steps of a shutdown, once the gate is closed and empty: evict every key, leave
    /// the pool. Idempotent; never joins (the caller does, where it may).
    fn finish(&self) {
        let mut finished = lock(&self.finished);
        if *finished {
            return;
        }
        let name = &self.config.name;
        let evicted = self.keys.remove_where(|mailbox| {
            let evicted = mailbox.try_evict();
            debug_assert!(evicted, "a key was busy after its dispatcher drained");
            true
        });
        self.clear_sched();
        self.pool.detach(&self.as_source());
        *finished = true;
        drop(finished);
        log::trace!("{name}: {} keys evicted", evicted.len());
        // Outside every lock: dropping a key runs its `Drop`, which may call back into this
        // dispatcher (for its stats, say).
        drop(evicted);
        log::debug!("{name}: close done");
        self.idle.notify();
    }

    /// Empties the ready and idle lists once every key has been taken out of the map.
    fn clear_sched(&self) {
        let (ready, idle) = {
            let mut sched = lock(&self.sched);
            sched.cleared = true;
            (self.ready.take_all(), std::mem::take(&mut sched.idle))
        };
        drop(ready);
        drop(std::mem::take(&mut *lock(&self.spares)));
        if !idle.is_empty() {
            self.listed.fetch_sub(idle.len(), Ordering::SeqCst);
        }
    }
}

/// The error for a dispatch that found no room and could not wait, or waited in vain.
fn too_full<K, J>(wait: Wait, key: K, job: J) -> DispatchError<K, J> {
    match wait {
        Wait::Until(_) => DispatchError::Timeout { key, job },
        Wait::Never | Wait::Forever => DispatchError::Full { key, job },
    }
}

impl<K, J> fmt::Debug for Shared<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}
