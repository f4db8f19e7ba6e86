//! One key's bounded queue of jobs and its state machine. The producers', sweepers' and
//! `close_now`'s sides are here; the worker's side of a turn is in `turn`; the producers
//! waiting for room, and room held for them or by permits, in `room`.
//!
//! # States of a key
//!
//! ```text
//!                 push (producer)                 pop from ready (worker)
//!   [absent] ─────────────────────▶ Queued ───────────────────────────────▶ Running ⟲ next batch
//!       ▲      creates the mailbox   ▲  ▲                                    │  │  (while nothing
//!       │      under the map's       │  └──── end of turn, jobs left ────────┘  │  else is ready)
//!       │      write lock            │        (worker requeues the key)         │
//!       │                            │ push (producer schedules the key)        │
//!       │                            │                                          │
//!       │   evict (sweeper, under  Idle ◀──── end of turn, queue empty ─────────┘
//!       └──── the map's write ───── │
//!             lock)                 ▼
//!                                Evicted   (out of the map; once unshared, a spare that a
//!                                           new key's creation may turn into its Queued mailbox)
//!
//!   retrying dispatchers only (`build_retrying`):
//!
//!            end of turn, the head job failed            backoff timer fires (pool timer
//!   Running ───── with attempts left ─────▶ Waiting ──── thread, `Core::on_backoff_timer`) ──▶ Queued
//!            (worker: the job back at the     │           (the timer schedules the key)
//!             front, attempts kept)           │
//!                                             └── close_now takes its jobs ──▶ Evicted
//!
//!   paused keys (`pause_key`; `paused` is a flag beside the state):
//!
//!   Idle, paused ── push ──────────────────────────────────────────▶ Held
//!   Queued, paused ── popped: the turn takes no job ───────────────▶ Held (or Idle if empty)
//!   Running, paused ── the running job ends; the rest go back ─────▶ Held (or Idle if empty)
//!   Waiting, paused ── backoff timer fires ────────────────────────▶ Held
//!   Held ── resume_key (resumer schedules it) ──────────────────────▶ Queued
//!   Held, Idle or Waiting ── cancel_key takes its jobs ─────────────▶ Idle
//!   Held ── close_now takes its jobs ──────────────────────────────▶ Evicted
//! ```
//!
//! - **Queued**: the mailbox holds jobs and sits in its dispatcher's ready queue, exactly once.
//! - **Running**: one worker owns the key and runs a *turn*: batches of at most
//!   `jobs_per_turn` jobs, each taken out of the queue at once. Producers keep pushing behind
//!   them without scheduling. After a batch the turn goes on with the next one only while no
//!   other key is ready (the worker may linger a few spin steps for a job to arrive, or, while
//!   jobs keep arriving, for a larger batch to gather); otherwise the worker puts the key back
//!   in the ready queue if jobs are left (so one hot key cannot hold a thread while other keys
//!   wait), or makes it Idle.
//! - **Idle**: in the map, empty, owned by nobody. A push makes it Queued again and schedules
//!   it. An idle key is evicted by a *sweep* once it has stayed idle from one of its
//!   dispatcher's periodic sweeps to the next, every `idle_timeout` or by default every 20 ms
//!   (by default also sooner when the dispatcher has too many idle keys, and at once in
//!   `wait_idle`).
//! - **Evicted**: removed from the map under the shard's write lock, in the same critical
//!   section that checked it was still Idle. Producers only push while holding the shard lock,
//!   so none can push into an evicted mailbox; a dispatch that comes later finds the key absent
//!   and creates a new mailbox. An evicted mailbox that nothing refers to any more (the sweeper
//!   holds the last reference, and finds it empty) may be kept as a *spare* and become the
//!   Queued mailbox of a new key: reuse needs exclusive access, so no producer or worker can
//!   still see it as the old key's.
//! - **Waiting** (retrying dispatchers only): the key's head job failed an attempt and waits
//!   out its backoff, back at the front of the queue with its attempt count kept in
//!   `Inner::attempts` (only the head job can have failed attempts: no later job of the key
//!   starts before it succeeded or was dead-lettered). The key is in neither the ready queue
//!   nor the idle list's reach (a sweep evicts only Idle keys), and no thread waits for it:
//!   an entry in the dispatcher's backoff heap stands for it, and the pool timer armed for the
//!   heap's earliest entry makes it Queued and schedules it. Producers push behind it as
//!   behind a Running key, without scheduling it; its jobs hold their room and their gate
//!   count, so `close` and `wait_idle` wait for the retry, and `close_now` hands the retried
//!   job back first. The timer acts only on a key still Waiting: one that `close_now` emptied
//!   is Evicted and left alone.
//! - **Paused** is a flag beside the state (`Inner::paused`), set by `pause_key` (which
//!   creates an Idle mailbox for an absent key) and cleared by `resume_key` and by `close`. A
//!   paused key starts no job: a push onto it when Idle makes it **Held** (jobs, owned by
//!   nobody, in no queue) rather than Queued; a turn of a paused key takes no job, and a
//!   running turn stops after its running job (it looks at the `stop` hint after each job)
//!   and puts the rest back, leaving the key Held; a paused Waiting key's timer makes it Held.
//!   A sweep never evicts a paused key. `resume_key` makes a Held key Queued and schedules it,
//!   and lists an Idle one for eviction. Its queue stays bounded by `key_capacity`.
//! - **Cancelling**: `cancel_key` takes a key's queued jobs. If the key is Running, it first
//!   holds it back as a pause would (`Inner::cancelling`), waits for the running job to end
//!   and the turn to put the rest back, then takes them all. A Held or Waiting key it empties
//!   becomes Idle (a backoff timer that fires later finds it not Waiting and leaves it); a
//!   Queued one stays in the ready queue, and its next turn finds nothing and makes it Idle.
//! - **Closed** is not a state of a key but of its dispatcher (see `gate`): producers are
//!   refused at the gate, and keys drain through the states above until all are evicted.
//!
//! # Why order holds across eviction
//!
//! A key has at most one mailbox in the map, and only that mailbox's current owner runs its
//! jobs, in queue order. A mailbox is evicted only when Idle, that is when every job pushed into
//! it has finished. So if `dispatch(k, a)` returned before `dispatch(k, b)` began, either `b`
//! went into the same mailbox behind `a`, or `a`'s mailbox was evicted first, after `a` had
//! finished.
//!
//! # Marks: group jobs and flush barriers
//!
//! Every job of a key has an absolute index, counted from the mailbox's first job; `taken` is
//! the index of the queue's first job (jobs moved into turns so far, less any put back). A
//! *mark* at position `p` is a latch (see `latch`) to complete once the key's first `p` jobs
//! have finished:
//!
//! - a job pushed with a group, at index `i`, gets a mark at `i + 1`: its group is completed,
//!   with the job's outcome, right after it runs;
//! - [`Mailbox::flush`] puts a barrier at the key's current end, `taken + queue.len()`: it
//!   completes once every job pushed before the flush has finished, and waits for none pushed
//!   after. Flushes at the same position share one barrier, so a key holds at most
//!   `key_capacity + 1` of them.
//!
//! Marks are kept beside the queue (`Inner::marks`, sorted by position), not in it: the queue
//! holds exactly the jobs, so a job outside any group costs no wider queue slot and no atomic
//! operation, and barriers take no room from the key's capacity. A batch takes the marks that
//! fall within it and completes each as soon as the job before it has finished, so a later job
//! of the same batch that runs long holds neither an earlier job's group nor a flush. Barriers
//! registered during a batch wait in the mailbox and are handed out when it ends (by the next
//! batch of the turn, or the turn's end); `take_all` hands back the marks of a key
//! that `close_now` empties (each group mark stands for one handed-back job). An Idle mailbox
//! has no mark left, since all its jobs have finished.
//!
//! # Locks
//!
//! The order is: map shard, then mailbox. No lock is held while user code runs.

mod evict;
mod hold;
mod queue;
mod room;
mod turn;

pub(crate) use hold::{Cancelled, Resumed, Woken};
use queue::JobQueue;
pub(crate) use room::{Reserve, Waited};

use crate::{
    gate::Gate,
    keymap::Keyed,
    latch::Latch,
    sync::{fault, lock, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering},
    unwind::drop_contained,
    waiters::{Queue, Wakeups},
};
use std::{collections::VecDeque, time::Instant};

/// The largest queue buffer, in bytes, that a spare mailbox keeps (see [`Mailbox::retire`]).
const SPARE_QUEUE_BYTES: usize = 1024;

/// A group's job, or a flush barrier, beside the queue (see the module docs).
#[derive(Debug)]
pub(crate) struct Mark {
    /// How many of the key's jobs must have finished before `state` is completed: counted from
    /// the mailbox's first job in `Inner::marks`, from the batch's first job in a batch's `due`.
    pub(crate) position: u64,
    /// The group (or barrier) to complete.
    pub(crate) state: Arc<Latch>,
    /// A flush barrier, which later flushes at the same position may share.
    flush: bool,
}

/// Marks in position order.
pub(crate) type Marks = VecDeque<Mark>;

/// One key's mailbox; shared between the map, the ready queue and the worker running it.
#[derive(Debug)]
pub(crate) struct Mailbox<K, J> {
    /// `None` only while the mailbox is a spare (see [`Mailbox::retire`]).
    key: Option<K>,
    /// The key's hash, computed once by the producer that created the mailbox (see `keymap`).
    hash: u64,
    inner: Mutex<Inner<J>>,
    /// `inner.queue.len()`, for the worker running the key to see without the lock how many
    /// jobs arrived behind its batch. Stored after the lock is released, so it may lag.
    queued: AtomicUsize,
    /// `cancel_key` waits here for a running turn to end.
    turn_ended: Condvar,
    /// Set while the key is paused or being cancelled: a hint for its running turn to stop
    /// after the running job (see [`Mailbox::stop_hint`]). Written under the lock.
    stop: AtomicBool,
}

#[derive(Debug)]
struct Inner<J> {
    /// Jobs not yet taken by a worker, in dispatch order.
    queue: JobQueue<J>,
    /// Jobs the running worker took for its current batch and has not finished. They still
    /// count against the key's capacity.
    in_turn: usize,
    /// The absolute index of `queue[0]`: jobs moved into turns since the mailbox was made, less
    /// those a halted turn put back. The running batch's jobs are `taken - in_turn..taken`.
    taken: u64,
    /// Marks not yet handed to a worker, sorted by position. Each position is above
    /// `taken - in_turn`: the jobs before the running batch have all finished.
    marks: Marks,
    state: State,
    /// True while the mailbox has an entry in its dispatcher's idle list, so that it has at
    /// most one there.
    listed: bool,
    /// Set when the key is listed, and when it is scheduled again while listed: the next sweep
    /// that meets its entry keeps it listed (clearing this) instead of evicting it. See
    /// [`Mailbox::second_chance`].
    used: bool,
    /// Producers waiting for room in this key's queue, threads and tasks in arrival order (see
    /// `waiters`): as many as the slots freed are woken when a batch or a turn ends, or a permit
    /// is given back; all of them when the queue is taken or the dispatcher closes.
    waiting: Queue,
    /// Room held by permits (see `Dispatcher::reserve`): counted against the key's capacity,
    /// and keeping the key from eviction. Beside `attempts`, in the same word.
    reserved: u32,
    /// Failed attempts of `queue[0]`, the head job, which a Waiting key retries; zero
    /// otherwise. Taken by the turn that runs the head job next.
    attempts: u32,
    /// Set by `pause_key`, cleared by `resume_key` and `close`: see the module docs.
    paused: bool,
    /// `cancel_key` calls waiting for the running turn to end; they hold the key back as a
    /// pause would.
    cancelling: usize,
    /// The dispatch instants of the queued jobs that never started, when the dispatcher
    /// records latency (`None` otherwise, and until the first): a suffix of `queue`, since
    /// only a retried head job has started. Boxed: one word per key when unused, where a
    /// bare `VecDeque` would take four.
    #[allow(clippy::box_collection)]
    stamps: Option<Box<VecDeque<Instant>>>,
}

impl<J> Inner<J> {
    /// Whether the key may start no job: paused, or being cancelled.
    fn held_back(&self) -> bool {
        self.paused || self.cancelling > 0
    }
}

impl<J> Inner<J> {
    /// Whether `capacity` jobs wait behind the one running (or to run next): the jobs of the
    /// running batch count until the batch ends.
    fn is_full(&self, capacity: usize) -> bool {
        self.queue.len() + self.in_turn + self.reserved as usize > capacity
    }

    /// Marks the job just pushed as one of `group`'s; kept out of line, off the path of jobs
    /// without a group.
    #[cold]
    fn mark_last(&mut self, group: &mut Option<Arc<Latch>>) {
        if let Some(state) = group.take() {
            let position = self.taken + self.queue.len() as u64;
            self.marks.push_back(Mark {
                position,
                state,
                flush: false,
            });
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Idle,
    Queued,
    Running,
    /// The head job waits out its backoff before its next attempt (see the module docs).
    Waiting,
    /// Paused with jobs: owned by nobody, in no queue, until `resume_key` (see the module docs).
    Held,
    Evicted,
}

/// What a producer's push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<J> {
    /// Queued behind jobs that are queued or running: nothing else to do.
    Added,
    /// The key was Idle and is now Queued: the producer must put it in the ready queue.
    Schedule,
    /// The key's queue is at capacity; the job is handed back.
    Full(J),
    /// `close_now` has begun; the job is handed back.
    Halted(J),
    /// Queued on a paused Idle key, which is now Held: the producer counts it (see `Core::held`).
    Held,
}

/// How a turn ended, and so where the worker files the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndTurn {
    /// Jobs are left: back into the ready queue.
    Requeue,
    /// The key is Idle; `list` says it must be entered in the idle list (it was not already).
    Idle { list: bool },
    /// The key is paused and keeps jobs: Held.
    Held,
    /// `close_now` stopped the turn; the key's jobs wait in its queue to be handed back.
    Halted,
    /// The head job failed an attempt and is to be retried: the key is Waiting, and the
    /// worker files it in the backoff heap.
    Backoff,
}

/// Why a turn stopped, as the worker tells [`Mailbox::end_turn_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its batches ran to their end.
    Ran,
    /// `close_now` stopped it.
    Halted,
    /// The first leftover job failed its `attempts`-th attempt and is to be retried.
    Backoff { attempts: u32 },
    /// The key was paused or is being cancelled: the turn stopped after its running job. The
    /// first leftover job had made `attempts` failed attempts.
    Stopped { attempts: u32 },
}

impl<K, J> Mailbox<K, J> {
    /// A mailbox holding `job` (counted in `group`, if any), Queued: its creator must put it in
    /// the ready queue.
    pub(crate) fn new(key: K, hash: u64, job: J, group: Option<Arc<Latch>>) -> Self {
        let mut mailbox = Mailbox {
            key: Some(key),
            hash,
            inner: Mutex::new(Inner {
                queue: JobQueue::default(),
                in_turn: 0,
                taken: 0,
                marks: Marks::new(),
                state: State::Evicted,
                listed: false,
                used: false,
                waiting: Queue::default(),
                reserved: 0,
                attempts: 0,
                paused: false,
                cancelling: 0,
                stamps: None,
            }),
            queued: AtomicUsize::new(0),
            turn_ended: Condvar::new(),
            stop: AtomicBool::new(false),
        };
        mailbox.refill(job, group);
        mailbox
    }

    /// A mailbox for `key` with no job, Idle and paused, not listed: `pause_key` of an absent
    /// key files it.
    pub(crate) fn new_paused(key: K, hash: u64) -> Self {
        Mailbox {
            key: Some(key),
            hash,
            inner: Mutex::new(Inner {
                queue: JobQueue::default(),
                in_turn: 0,
                taken: 0,
                marks: Marks::new(),
                state: State::Idle,
                listed: false,
                used: false,
                waiting: Queue::default(),
                reserved: 0,
                attempts: 0,
                paused: true,
                cancelling: 0,
                stamps: None,
            }),
            queued: AtomicUsize::new(0),
            turn_ended: Condvar::new(),
            stop: AtomicBool::new(true),
        }
    }

    /// The key; the mailbox is live (not a spare).
    pub(crate) fn key(&self) -> &K {
        self.key.as_ref().expect("a spare mailbox was shared")
    }

    fn refill(&mut self, job: J, group: Option<Arc<Latch>>) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        debug_assert_eq!(inner.state, State::Evicted, "reusing a live mailbox");
        debug_assert!(inner.queue.is_empty() && inner.marks.is_empty() && inner.waiting.is_empty());
        inner.queue.push_back(job);
        inner.in_turn = 0;
        inner.taken = 0;
        if let Some(state) = group {
            inner.marks.push_back(Mark {
                position: 1,
                state,
                flush: false,
            });
        }
        inner.state = State::Queued;
        inner.listed = false;
        inner.used = false;
        inner.attempts = 0;
        inner.paused = false;
        inner.cancelling = 0;
        inner.stamps = None;
        self.stop.store(false, Ordering::Relaxed);
        self.queued.store(1, Ordering::Relaxed);
    }

    /// Stamps the one job of a mailbox that [`Mailbox::new`] or [`Mailbox::reuse`] just made,
    /// and that is not shared yet, with its dispatch instant.
    pub(crate) fn stamp_first(&mut self, stamp: Instant) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        debug_assert_eq!(inner.queue.len(), 1);
        inner.stamps = Some(Box::new(VecDeque::from([stamp])));
    }

    /// Producer: queues `job` unless the key is full or `close_now` has begun. If `group` is
    /// set, the job counts in it: the mailbox takes the group (marking the job) only when it
    /// takes the job, and leaves it to the caller otherwise.
    ///
    /// The caller holds the map shard's lock (read or write) that found this mailbox, so the
    /// mailbox cannot be Evicted here.
    ///
    /// `accepted` runs under the lock once the job is queued, before any worker can take it.
    #[cfg(test)]
    pub(crate) fn push(
        &self,
        job: J,
        group: &mut Option<Arc<Latch>>,
        capacity: usize,
        gate: &Gate,
        accepted: impl FnOnce(),
    ) -> Push<J> {
        self.push_stamped(job, None, group, capacity, gate, accepted)
    }

    /// [`Mailbox::push`], with the job's dispatch instant when the dispatcher records latency.
    pub(crate) fn push_stamped(
        &self,
        job: J,
        stamp: Option<Instant>,
        group: &mut Option<Arc<Latch>>,
        capacity: usize,
        gate: &Gate,
        accepted: impl FnOnce(),
    ) -> Push<J> {
        let inner = lock(&self.inner);
        self.push_locked(inner, job, stamp, group, capacity, gate, accepted)
    }

    /// [`Mailbox::push_stamped`], under the lock `inner` holds.
    #[allow(clippy::too_many_arguments)]
    fn push_locked(
        &self,
        mut inner: MutexGuard<'_, Inner<J>>,
        job: J,
        stamp: Option<Instant>,
        group: &mut Option<Arc<Latch>>,
        capacity: usize,
        gate: &Gate,
        accepted: impl FnOnce(),
    ) -> Push<J> {
        debug_assert_ne!(
            inner.state,
            State::Evicted,
            "pushed into an evicted mailbox"
        );
        // Checked under this lock: `close_now` sets the flag before taking any queue, and takes
        // each queue under this lock, so a job pushed here is either taken or refused.
        if gate.halt_seen() {
            return Push::Halted(job);
        }
        if inner.is_full(capacity) {
            return Push::Full(job);
        }
        inner.queue.push_back(job);
        if let Some(stamp) = stamp {
            inner
                .stamps
                .get_or_insert_with(Box::default)
                .push_back(stamp);
        }
        accepted();
        if group.is_some() {
            inner.mark_last(group);
        }
        if inner.state == State::Idle {
            if inner.paused {
                inner.state = State::Held;
                return Push::Held;
            }
            inner.state = State::Queued;
            inner.used = true;
            return Push::Schedule;
        }
        let queued = inner.queue.len();
        drop(inner);
        // After the unlock, so that a worker lingering for this job does not try the lock while
        // it is still held here.
        self.queued.store(queued, Ordering::Relaxed);
        Push::Added
    }

    /// Producer: registers a flush barrier behind every job pushed so far (see the module
    /// docs), or returns `None` if the key has no job queued or running.
    pub(crate) fn flush(&self) -> Option<Arc<Latch>> {
        let mut inner = lock(&self.inner);
        if inner.queue.is_empty() && inner.in_turn == 0 {
            // Idle or Evicted: every job pushed here has finished (or was handed back).
            return None;
        }
        let position = inner.taken + inner.queue.len() as u64;
        if let Some(last) = inner.marks.back() {
            debug_assert!(last.position <= position, "marks out of order");
            if last.flush && last.position == position {
                return Some(Arc::clone(&last.state));
            }
        }
        let barrier = Arc::new(Latch::new(1));
        inner.marks.push_back(Mark {
            position,
            state: Arc::clone(&barrier),
            flush: true,
        });
        Some(barrier)
    }

    /// `close_now`: takes every queued job and every mark (one per grouped job among them, and
    /// the flush barriers behind them), and marks the mailbox Evicted. Called under the map
    /// shard's write lock, after every turn has ended. Also says whether the key was paused.
    ///
    /// The producers waiting for room go into `wakeups`, for the caller to wake once it holds
    /// no lock (the map's, here).
    pub(crate) fn take_all(&self, wakeups: &mut Wakeups) -> (VecDeque<J>, Marks, bool) {
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.in_turn, 0, "close_now took a key during its turn");
        self.take_locked(&mut inner, wakeups)
    }

    /// `close_timeout`: as [`Mailbox::take_all`], unless a turn holds the key, whose batch it
    /// cannot reach: then `None`, and the key keeps its jobs. A turn about to begin on a key
    /// taken here finds it Evicted and leaves it (see [`Mailbox::begin_turn_attempts`]).
    ///
    /// Also says whether the key was Held (its dispatcher counts Held keys).
    pub(crate) fn take_all_unless_running(
        &self,
        wakeups: &mut Wakeups,
    ) -> Option<(VecDeque<J>, Marks, bool, bool)> {
        let mut inner = lock(&self.inner);
        if inner.state == State::Running && !fault!(TimeoutTakesRunningKeys) {
            return None;
        }
        let held = inner.state == State::Held;
        let (queue, marks, paused) = self.take_locked(&mut inner, wakeups);
        Some((queue, marks, paused, held))
    }

    fn take_locked(
        &self,
        inner: &mut Inner<J>,
        wakeups: &mut Wakeups,
    ) -> (VecDeque<J>, Marks, bool) {
        let paused = std::mem::take(&mut inner.paused);
        inner.state = State::Evicted;
        inner.attempts = 0;
        inner.waiting.notify_all(wakeups);
        let marks = std::mem::take(&mut inner.marks);
        self.queued.store(0, Ordering::Relaxed);
        inner.stamps = None;
        (inner.queue.take_all(), marks, paused)
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn state(&self) -> State {
        lock(&self.inner).state
    }

    /// The jobs queued, and those the running turn took and may not have run yet: an upper
    /// bound of the key's backlog, for `hot_keys`.
    pub(crate) fn len(&self) -> usize {
        let inner = lock(&self.inner);
        inner.queue.len() + inner.in_turn
    }
}

impl<K, J> Keyed for Mailbox<K, J> {
    type Key = K;

    fn stored_hash(&self) -> u64 {
        self.hash
    }

    fn key(&self) -> &K {
        Mailbox::key(self)
    }
}

impl<K, J> Drop for Mailbox<K, J> {
    /// The last reference to a mailbox may go on a worker thread: the key's `Drop`, user code,
    /// must not unwind there (see `unwind`).
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            drop_contained(key);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
