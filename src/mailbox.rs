//! One key's bounded queue of jobs and its state machine.
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

use crate::{
    gate::Gate,
    keymap::Keyed,
    latch::Latch,
    sync::{lock, wait, wait_timeout, Arc, AtomicUsize, Condvar, Mutex, Ordering},
    unwind::drop_contained,
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
    /// Producers waiting for room in this key's queue; notified when a batch or a turn ends, or
    /// the queue is taken by `close_now`.
    room: Condvar,
}

#[derive(Debug)]
struct Inner<J> {
    /// Jobs not yet taken by a worker, in dispatch order.
    queue: VecDeque<J>,
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
    /// Producers blocked on `room`.
    waiters: usize,
}

impl<J> Inner<J> {
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
}

/// How a turn ended, and so where the worker files the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndTurn {
    /// Jobs are left: back into the ready queue.
    Requeue,
    /// The key is Idle; `list` says it must be entered in the idle list (it was not already).
    Idle { list: bool },
    /// `close_now` stopped the turn; the key's jobs wait in its queue to be handed back.
    Halted,
}

impl<K, J> Mailbox<K, J> {
    /// A mailbox holding `job` (counted in `group`, if any), Queued: its creator must put it in
    /// the ready queue.
    pub(crate) fn new(key: K, hash: u64, job: J, group: Option<Arc<Latch>>) -> Self {
        let mut mailbox = Mailbox {
            key: Some(key),
            hash,
            inner: Mutex::new(Inner {
                queue: VecDeque::with_capacity(1),
                in_turn: 0,
                taken: 0,
                marks: Marks::new(),
                state: State::Evicted,
                listed: false,
                used: false,
                waiters: 0,
            }),
            queued: AtomicUsize::new(0),
            room: Condvar::new(),
        };
        mailbox.refill(job, group);
        mailbox
    }

    /// The key; the mailbox is live (not a spare).
    pub(crate) fn key(&self) -> &K {
        self.key.as_ref().expect("a spare mailbox was shared")
    }

    /// Makes a spare the mailbox of `key`, holding `job`, as [`Mailbox::new`] would, but
    /// keeping its allocations.
    pub(crate) fn reuse(&mut self, key: K, hash: u64, job: J, group: Option<Arc<Latch>>) {
        self.refill(job, group);
        self.key = Some(key);
        self.hash = hash;
    }

    /// Takes a mailbox that [`Mailbox::new`] or [`Mailbox::reuse`] just made, and that was
    /// never shared, apart again: its key, its job and the job's group. It is left a spare.
    pub(crate) fn unmake(&mut self) -> (K, J, Option<Arc<Latch>>) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        debug_assert_eq!((inner.state, inner.queue.len()), (State::Queued, 1));
        let job = inner
            .queue
            .pop_front()
            .expect("a new mailbox holds its job");
        let group = inner.marks.pop_front().map(|mark| mark.state);
        inner.state = State::Evicted;
        self.queued.store(0, Ordering::Relaxed);
        (
            self.key.take().expect("a new mailbox has its key"),
            job,
            group,
        )
    }

    /// Turns an evicted mailbox that nothing else refers to any more into a spare, dropping
    /// its key (here: an evicted key is not kept alive by its spare; the caller holds no lock)
    /// and a queue buffer grown past [`SPARE_QUEUE_BYTES`]. Returns false, leaving it as it
    /// is, if it is not evicted and empty, as eviction leaves it.
    pub(crate) fn retire(&mut self) -> bool {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        if inner.state != State::Evicted || !inner.queue.is_empty() || !inner.marks.is_empty() {
            return false;
        }
        if inner
            .queue
            .capacity()
            .saturating_mul(std::mem::size_of::<J>())
            > SPARE_QUEUE_BYTES
        {
            inner.queue = VecDeque::new();
        }
        if let Some(key) = self.key.take() {
            drop_contained(key);
        }
        true
    }

    /// The key of a mailbox that nothing else refers to any more, taken out of it (which is
    /// left a spare).
    pub(crate) fn into_key(mut self) -> K {
        self.key.take().expect("a spare mailbox was shared")
    }

    fn refill(&mut self, job: J, group: Option<Arc<Latch>>) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        debug_assert_eq!(inner.state, State::Evicted, "reusing a live mailbox");
        debug_assert!(inner.queue.is_empty() && inner.marks.is_empty() && inner.waiters == 0);
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
        self.queued.store(1, Ordering::Relaxed);
    }

    /// Producer: queues `job` unless the key is full or `close_now` has begun. If `group` is
    /// set, the job counts in it: the mailbox takes the group (marking the job) only when it
    /// takes the job, and leaves it to the caller otherwise.
    ///
    /// The caller holds the map shard's lock (read or write) that found this mailbox, so the
    /// mailbox cannot be Evicted here.
    ///
    /// `accepted` runs under the lock once the job is queued, before any worker can take it.
    pub(crate) fn push(
        &self,
        job: J,
        group: &mut Option<Arc<Latch>>,
        capacity: usize,
        gate: &Gate,
        accepted: impl FnOnce(),
    ) -> Push<J> {
        let mut inner = lock(&self.inner);
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
        if inner.queue.len() + inner.in_turn >= capacity {
            return Push::Full(job);
        }
        inner.queue.push_back(job);
        accepted();
        if group.is_some() {
            inner.mark_last(group);
        }
        if inner.state == State::Idle {
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

    /// Producer: blocks until the key has room, the mailbox is evicted (the caller retries
    /// through the map) or `deadline` passes. Returns false on timeout.
    pub(crate) fn wait_for_room(&self, capacity: usize, deadline: Option<Instant>) -> bool {
        let mut inner = lock(&self.inner);
        while inner.state != State::Evicted && inner.queue.len() + inner.in_turn >= capacity {
            inner.waiters += 1;
            inner = match deadline {
                None => wait(&self.room, inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        inner.waiters -= 1;
                        return false;
                    }
                    wait_timeout(&self.room, inner, deadline - now)
                }
            };
            inner.waiters -= 1;
        }
        true
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

    /// Worker: starts a turn of the key it popped from the ready queue, moving up to `max`
    /// jobs into `batch` (which must be empty). Returns how many.
    ///
    /// The marks that fall within the batch move into `due` (which must be empty), each with
    /// the number of the batch's jobs that must finish before it is completed.
    pub(crate) fn begin_turn(&self, max: usize, batch: &mut VecDeque<J>, due: &mut Marks) -> usize {
        debug_assert!(batch.is_empty() && due.is_empty());
        let mut inner = lock(&self.inner);
        debug_assert_eq!(
            inner.state,
            State::Queued,
            "a turn of a key that was not queued"
        );
        inner.state = State::Running;
        self.take_batch(&mut inner, max, batch, due)
    }

    /// Worker: the turn's batch has run to its end and jobs wait behind it; goes on with the
    /// next batch of up to `max`, in the same turn, as [`Mailbox::end_turn`] followed by
    /// [`Mailbox::begin_turn`] would under one lock, without the key leaving the worker. Returns
    /// how many jobs it took (none if the queue was empty: the caller then ends the turn).
    ///
    /// `due` (empty, as the batch left it) is refilled with the flush barriers registered
    /// during the batch, at position 0 (due before the next job), then with the next batch's
    /// marks.
    pub(crate) fn continue_turn(
        &self,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
    ) -> usize {
        debug_assert!(batch.is_empty() && due.is_empty());
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.state, State::Running);
        if inner.queue.is_empty() {
            return 0;
        }
        inner.in_turn = 0;
        while inner
            .marks
            .front()
            .is_some_and(|mark| mark.position <= inner.taken)
        {
            let mut mark = inner.marks.pop_front().expect("checked");
            debug_assert!(mark.flush, "a job's mark outlived its batch");
            mark.position = 0;
            due.push_back(mark);
        }
        if inner.waiters > 0 && !crate::sync::Fault::NoRoomWake.on() {
            self.room.notify_all();
        }
        self.take_batch(&mut inner, max, batch, due)
    }

    /// Moves up to `max` queued jobs into `batch`, and the marks that fall within it into
    /// `due`, each with the number of the batch's jobs that must finish before it is due.
    fn take_batch(
        &self,
        inner: &mut Inner<J>,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
    ) -> usize {
        if inner.queue.len() <= max {
            // Swapping keeps both buffers' allocations alive for reuse.
            std::mem::swap(&mut inner.queue, batch);
        } else {
            batch.extend(inner.queue.drain(..max));
        }
        self.queued.store(inner.queue.len(), Ordering::Relaxed);
        inner.in_turn = batch.len();
        let start = inner.taken;
        inner.taken += batch.len() as u64;
        while inner
            .marks
            .front()
            .is_some_and(|mark| mark.position <= inner.taken)
        {
            let mut mark = inner.marks.pop_front().expect("checked");
            debug_assert!(mark.position > start, "a mark outlived its jobs");
            mark.position = mark.position.saturating_sub(start);
            due.push_back(mark);
        }
        inner.in_turn
    }

    /// Worker: how many jobs wait in the queue, as a hint read without the lock: it may lag a
    /// push, or still count jobs that a batch already took.
    pub(crate) fn queued_hint(&self) -> usize {
        // ORDERING: Relaxed; `continue_turn` and `end_turn` look again under the lock.
        self.queued.load(Ordering::Relaxed)
    }

    /// Worker: ends the turn. `leftovers` are the jobs of the turn that did not start (only
    /// when `close_now` stopped it); they go back to the front of the queue, in order. `due`
    /// holds the batch's marks not yet completed (as [`Mailbox::begin_turn`] or
    /// [`Mailbox::continue_turn`] left them); they go
    /// back too, and `due` is refilled with every mark whose jobs have now all finished (flush
    /// barriers registered during the turn), for the worker to complete.
    ///
    /// With `halted`, the key is left Queued but out of the ready queue: `close_now` will take
    /// its jobs. Otherwise the key is requeued or made Idle, to be entered in the idle list if
    /// it is not there yet.
    pub(crate) fn end_turn(
        &self,
        leftovers: &mut VecDeque<J>,
        due: &mut Marks,
        halted: bool,
    ) -> EndTurn {
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.state, State::Running);
        let start = inner.taken - inner.in_turn as u64;
        while let Some(mut mark) = due.pop_back() {
            mark.position += start;
            inner.marks.push_front(mark);
        }
        while let Some(job) = leftovers.pop_back() {
            inner.queue.push_front(job);
            inner.taken -= 1;
        }
        self.queued.store(inner.queue.len(), Ordering::Relaxed);
        inner.in_turn = 0;
        while inner
            .marks
            .front()
            .is_some_and(|mark| mark.position <= inner.taken)
        {
            let mark = inner.marks.pop_front().expect("checked");
            debug_assert!(mark.flush, "a job's mark outlived its turn");
            due.push_back(mark);
        }
        if inner.waiters > 0 && !crate::sync::Fault::NoRoomWake.on() {
            self.room.notify_all();
        }
        if halted {
            inner.state = State::Queued;
            EndTurn::Halted
        } else if !inner.queue.is_empty() && !crate::sync::Fault::IdleWithJobsLeft.on() {
            inner.state = State::Queued;
            EndTurn::Requeue
        } else {
            inner.state = State::Idle;
            let list = !inner.listed;
            if list {
                // Counted as used, so that the first sweep to meet it spares it: a key is
                // evicted only once it has stayed idle from one sweep to the next.
                inner.listed = true;
                inner.used = true;
            }
            EndTurn::Idle { list }
        }
    }

    /// Sweeper: called under the map shard's write lock with this key's entry; marks the
    /// mailbox Evicted and returns true if it is Idle. Either way its idle-list entry is
    /// consumed.
    pub(crate) fn try_evict(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        inner.used = false;
        if inner.state == State::Idle {
            debug_assert!(inner.queue.is_empty() && inner.in_turn == 0);
            debug_assert!(inner.marks.is_empty(), "an idle key kept a mark");
            inner.state = State::Evicted;
            true
        } else {
            false
        }
    }

    /// Sweeper: forgets the key's idle-list entry without evicting it (its eviction failed),
    /// so that the key is listed again when it next goes idle.
    pub(crate) fn unlist(&self) {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        inner.used = false;
    }

    /// Sweeper, for a listed key: true if it was listed or scheduled since the last sweep that
    /// met it, in which case it stays listed and the sweeper files its entry again instead of
    /// evicting it. A key that comes back between two sweeps is thus kept; one that stays idle
    /// from one sweep to the next is evicted by the second. No map lock is needed: keeping a
    /// key is always safe.
    pub(crate) fn second_chance(&self) -> bool {
        let mut inner = lock(&self.inner);
        // Not listed any more if the shutdown evicted it meanwhile.
        let keep = inner.listed && inner.used;
        inner.used = false;
        keep
    }

    /// `close_now`: takes every queued job and every mark (one per grouped job among them, and
    /// the flush barriers behind them), and marks the mailbox Evicted. Called under the map
    /// shard's write lock, after every turn has ended.
    pub(crate) fn take_all(&self) -> (VecDeque<J>, Marks) {
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.in_turn, 0, "close_now took a key during its turn");
        inner.state = State::Evicted;
        if inner.waiters > 0 {
            self.room.notify_all();
        }
        let marks = std::mem::take(&mut inner.marks);
        self.queued.store(0, Ordering::Relaxed);
        (std::mem::take(&mut inner.queue), marks)
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn state(&self) -> State {
        lock(&self.inner).state
    }

    #[cfg(all(test, not(loom)))]
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
mod tests {
    use super::*;

    fn turn(mb: &Mailbox<u8, u32>, max: usize) -> Vec<u32> {
        let mut batch = VecDeque::new();
        mb.begin_turn(max, &mut batch, &mut Marks::new());
        batch.into_iter().collect()
    }

    fn end(mb: &Mailbox<u8, u32>, leftovers: &mut VecDeque<u32>, halted: bool) -> EndTurn {
        let mut due = Marks::new();
        let end = mb.end_turn(leftovers, &mut due, halted);
        assert!(due.is_empty());
        end
    }

    #[test]
    fn new_mailbox_is_queued_with_its_job() {
        let mb = Mailbox::new(1u8, 0, 10u32, None);
        assert_eq!(mb.state(), State::Queued);
        assert_eq!(mb.len(), 1);
    }

    #[test]
    fn pushes_behind_a_queued_key_do_not_schedule() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 10u32, None);
        assert_eq!(mb.push(11, &mut None, 8, &gate, || {}), Push::Added);
        let mut batch = VecDeque::new();
        assert_eq!(mb.begin_turn(8, &mut batch, &mut Marks::new()), 2);
        assert_eq!(mb.state(), State::Running);
        assert_eq!(mb.push(12, &mut None, 8, &gate, || {}), Push::Added);
        assert_eq!(batch, [10, 11]);
    }

    #[test]
    fn capacity_counts_jobs_in_the_running_turn() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 10u32, None);
        let mut batch = VecDeque::new();
        mb.begin_turn(8, &mut batch, &mut Marks::new());
        assert_eq!(mb.push(11, &mut None, 1, &gate, || {}), Push::Full(11));
        batch.clear();
        assert_eq!(end(&mb, &mut batch, false), EndTurn::Idle { list: true });
        assert_eq!(mb.push(11, &mut None, 1, &gate, || {}), Push::Schedule);
    }

    #[test]
    fn turn_takes_at_most_max_and_requeues_the_rest() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        for job in 1..5 {
            mb.push(job, &mut None, 100, &gate, || {});
        }
        assert_eq!(turn(&mb, 3), [0, 1, 2]);
        assert_eq!(end(&mb, &mut VecDeque::new(), false), EndTurn::Requeue);
        assert_eq!(mb.state(), State::Queued);
        assert_eq!(turn(&mb, 3), [3, 4]);
    }

    #[test]
    fn idle_key_is_listed_once() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        turn(&mb, 8);
        let mut none = VecDeque::new();
        assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: true });
        assert_eq!(mb.push(1, &mut None, 8, &gate, || {}), Push::Schedule);
        turn(&mb, 8);
        assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: false });
    }

    #[test]
    fn a_key_listed_or_scheduled_since_the_last_sweep_gets_a_second_chance() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        turn(&mb, 8);
        let mut none = VecDeque::new();
        assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: true });
        assert!(mb.second_chance(), "listed since the last sweep");
        assert!(!mb.second_chance(), "idle from one sweep to the next");
        assert_eq!(mb.push(1, &mut None, 8, &gate, || {}), Push::Schedule);
        assert!(mb.second_chance(), "scheduled since it was listed");
        assert!(!mb.second_chance(), "the chance was used up");
        turn(&mb, 8);
        assert_eq!(end(&mb, &mut none, false), EndTurn::Idle { list: false });
        assert!(mb.try_evict());
        assert!(!mb.second_chance(), "evicted: not listed any more");
    }

    #[test]
    fn only_an_idle_key_is_evicted() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        assert!(!mb.try_evict(), "queued");
        turn(&mb, 8);
        assert!(!mb.try_evict(), "running");
        end(&mb, &mut VecDeque::new(), false);
        assert!(mb.try_evict());
        assert_eq!(mb.state(), State::Evicted);
        let _ = gate;
    }

    #[test]
    fn halted_turn_puts_leftovers_back_in_order() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        for job in 1..4 {
            mb.push(job, &mut None, 100, &gate, || {});
        }
        let mut batch = VecDeque::new();
        mb.begin_turn(8, &mut batch, &mut Marks::new());
        mb.push(4, &mut None, 100, &gate, || {});
        batch.pop_front(); // job 0 ran
        assert_eq!(end(&mb, &mut batch, true), EndTurn::Halted);
        gate.halt();
        assert!(matches!(
            mb.push(5, &mut None, 100, &gate, || {}),
            Push::Halted(5)
        ));
        let (left, flushes) = mb.take_all();
        assert_eq!(left, [1, 2, 3, 4]);
        assert!(flushes.is_empty());
        assert_eq!(mb.state(), State::Evicted);
    }

    #[test]
    fn flush_of_an_idle_key_has_nothing_to_wait_for() {
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        turn(&mb, 8);
        end(&mb, &mut VecDeque::new(), false);
        assert!(mb.flush().is_none());
    }

    #[test]
    fn flush_barrier_is_due_after_the_jobs_pushed_before_it() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        mb.push(1, &mut None, 100, &gate, || {});
        let first = mb.flush().expect("jobs are queued");
        let again = mb.flush().expect("jobs are queued");
        assert!(Arc::ptr_eq(&first, &again), "same position, same barrier");
        mb.push(2, &mut None, 100, &gate, || {});
        let second = mb.flush().expect("jobs are queued");
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        assert_eq!(mb.begin_turn(8, &mut batch, &mut due), 3);
        // The first barrier is due once two jobs of the batch have finished, the second after
        // three.
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].position, 2);
        assert!(Arc::ptr_eq(&due[0].state, &first));
        assert_eq!(due[1].position, 3);
        assert!(Arc::ptr_eq(&due[1].state, &second));
    }

    #[test]
    fn flush_during_a_turn_is_handed_out_when_the_turn_ends() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        mb.push(1, &mut None, 100, &gate, || {});
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        assert!(due.is_empty());
        let during = mb.flush().expect("the turn is running");
        mb.push(2, &mut None, 100, &gate, || {});
        let behind = mb.flush().expect("a job is queued");
        batch.clear();
        assert_eq!(mb.end_turn(&mut batch, &mut due, false), EndTurn::Requeue);
        assert_eq!(due.len(), 1, "only the barrier behind the turn's jobs");
        assert!(Arc::ptr_eq(&due[0].state, &during));
        due.clear();
        mb.begin_turn(8, &mut batch, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].position, 1, "due after the one job of this turn");
        assert!(Arc::ptr_eq(&due[0].state, &behind));
    }

    #[test]
    fn halted_turn_keeps_its_unreached_barriers_for_take_all() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        mb.push(1, &mut None, 100, &gate, || {});
        let first = mb.flush().expect("jobs are queued");
        mb.push(2, &mut None, 100, &gate, || {});
        let second = mb.flush().expect("jobs are queued");
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        // Jobs 0 and 1 ran, so the first barrier was completed in the turn; job 2 did not.
        batch.drain(..2);
        due.pop_front();
        gate.halt();
        assert_eq!(mb.end_turn(&mut batch, &mut due, true), EndTurn::Halted);
        assert!(due.is_empty());
        let (left, flushes) = mb.take_all();
        assert_eq!(left, [2]);
        assert_eq!(flushes.len(), 1);
        assert!(Arc::ptr_eq(&flushes[0].state, &second));
        drop(first);
    }

    #[test]
    fn grouped_jobs_get_a_mark_and_plain_jobs_none() {
        let gate = Gate::new();
        let group = Arc::new(Latch::new(0));
        let mb = Mailbox::new(1u8, 0, 0u32, Some(Arc::clone(&group)));
        mb.push(1, &mut None, 100, &gate, || {});
        let mut member = Some(Arc::clone(&group));
        assert_eq!(mb.push(2, &mut member, 100, &gate, || {}), Push::Added);
        assert!(member.is_none(), "the mailbox took the group with the job");
        // A flush behind job 2 shares no state with job 2's group.
        let barrier = mb.flush().expect("jobs are queued");
        assert!(!Arc::ptr_eq(&barrier, &group));
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        let positions: Vec<u64> = due.iter().map(|mark| mark.position).collect();
        assert_eq!(
            positions,
            [1, 3, 3],
            "after jobs 0 and 2, and the barrier after job 2"
        );
        assert!(Arc::ptr_eq(&due[2].state, &barrier));
    }

    #[test]
    fn refused_push_leaves_the_group_with_the_caller() {
        let gate = Gate::new();
        let group = Arc::new(Latch::new(0));
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        let mut member = Some(Arc::clone(&group));
        assert_eq!(mb.push(1, &mut member, 1, &gate, || {}), Push::Full(1));
        assert!(member.is_some());
        gate.halt();
        assert_eq!(mb.push(1, &mut member, 10, &gate, || {}), Push::Halted(1));
        assert!(member.is_some());
        let (left, marks) = mb.take_all();
        assert_eq!(left, [0]);
        assert!(marks.is_empty());
    }

    #[test]
    fn a_turn_goes_on_with_jobs_pushed_during_its_batch() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        assert_eq!(mb.queued_hint(), 0);
        assert_eq!(mb.push(1, &mut None, 100, &gate, || {}), Push::Added);
        assert_eq!(mb.push(2, &mut None, 100, &gate, || {}), Push::Added);
        assert_eq!(
            mb.queued_hint(),
            2,
            "the hint counts the jobs behind the batch"
        );
        batch.clear(); // job 0 ran
        assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 2);
        assert_eq!(batch, [1, 2]);
        assert_eq!(mb.state(), State::Running);
        assert_eq!(mb.len(), 2, "the new batch counts against the capacity");
        assert_eq!(
            mb.push(3, &mut None, 100, &gate, || {}),
            Push::Added,
            "no schedule"
        );
        batch.clear();
        assert_eq!(end(&mb, &mut batch, false), EndTurn::Requeue);
    }

    #[test]
    fn a_turn_with_nothing_behind_its_batch_ends_idle() {
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        batch.clear();
        assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 0);
        assert!(batch.is_empty() && due.is_empty());
        assert_eq!(end(&mb, &mut batch, false), EndTurn::Idle { list: true });
    }

    #[test]
    fn going_on_hands_out_the_batch_barriers_before_the_next_jobs_marks() {
        let gate = Gate::new();
        let group = Arc::new(Latch::new(0));
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        mb.begin_turn(8, &mut batch, &mut due);
        let barrier = mb.flush().expect("the batch is running");
        let mut member = Some(Arc::clone(&group));
        assert_eq!(mb.push(1, &mut member, 100, &gate, || {}), Push::Added);
        batch.clear();
        assert_eq!(mb.continue_turn(8, &mut batch, &mut due), 1);
        let positions: Vec<u64> = due.iter().map(|mark| mark.position).collect();
        assert_eq!(
            positions,
            [0, 1],
            "the barrier before job 1, the group after it"
        );
        assert!(Arc::ptr_eq(&due[0].state, &barrier));
        assert!(Arc::ptr_eq(&due[1].state, &group));
    }

    #[test]
    fn an_evicted_mailbox_is_reused_for_another_key() {
        let group = Arc::new(Latch::new(0));
        let mut mb = Mailbox::new(1u8, 0, 0u32, None);
        turn(&mb, 8);
        end(&mb, &mut VecDeque::new(), false);
        assert!(mb.try_evict());
        assert!(mb.retire());
        assert!(mb.key.is_none(), "a spare does not keep its old key alive");
        mb.reuse(2, 0, 20, Some(Arc::clone(&group)));
        assert_eq!((*mb.key(), mb.state(), mb.len()), (2, State::Queued, 1));
        assert!(mb.queued_hint() > 0);
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        assert_eq!(mb.begin_turn(8, &mut batch, &mut due), 1);
        assert_eq!(batch, [20]);
        assert_eq!(
            due.len(),
            1,
            "the job's group, counted from the reused mailbox's start"
        );
        assert_eq!(due[0].position, 1);
        assert_eq!(
            end(&mb, &mut VecDeque::new(), false),
            EndTurn::Idle { list: true }
        );
    }

    #[test]
    fn a_new_mailbox_is_taken_apart_again() {
        let group = Arc::new(Latch::new(1));
        let mut mb = Mailbox::new(3u8, 0, 30u32, Some(Arc::clone(&group)));
        let (key, job, member) = mb.unmake();
        assert_eq!((key, job), (3, 30));
        assert!(member.is_some_and(|member| Arc::ptr_eq(&member, &group)));
        assert_eq!(mb.state(), State::Evicted);
        assert!(mb.retire(), "it is a spare");
    }

    #[test]
    fn room_wait_times_out_on_a_full_key() {
        let mb = Mailbox::new(1u8, 0, 0u32, None);
        assert!(!mb.wait_for_room(1, Some(Instant::now())));
        assert!(mb.wait_for_room(2, None));
    }
}
