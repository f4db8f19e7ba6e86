//! One key's bounded queue of jobs and its state machine.
//!
//! # States of a key
//!
//! ```text
//!                 push (producer)                 pop from ready (worker)
//!   [absent] ─────────────────────▶ Queued ───────────────────────────────▶ Running
//!       ▲      creates the mailbox   ▲  ▲                                    │  │
//!       │      under the map's       │  └──── end of turn, jobs left ────────┘  │
//!       │      write lock            │        (worker requeues the key)         │
//!       │                            │ push (producer schedules the key)        │
//!       │                            │                                          │
//!       │   evict (sweeper, under  Idle ◀──── end of turn, queue empty ─────────┘
//!       └──── the map's write ───── │
//!             lock)                 ▼
//!                                Evicted   (out of the map; never used again)
//! ```
//!
//! - **Queued**: the mailbox holds jobs and sits in its dispatcher's ready queue, exactly once.
//! - **Running**: one worker owns the key and runs a *turn*: at most `jobs_per_turn` jobs,
//!   taken out of the queue at once. Producers keep pushing behind them without scheduling.
//!   At the end of the turn the worker puts the key back in the ready queue if jobs are left
//!   (so one hot key cannot hold a thread while other keys wait), or makes it Idle.
//! - **Idle**: in the map, empty, owned by nobody. A push makes it Queued again and schedules
//!   it. An idle key is evicted by a *sweep*: lazily when its dispatcher runs out of ready keys
//!   (or has too many idle keys), or after `idle_timeout` when one is set.
//! - **Evicted**: removed from the map under the shard's write lock, in the same critical
//!   section that checked it was still Idle. Producers only push while holding the shard lock,
//!   so none can push into an evicted mailbox; a dispatch that comes later finds the key absent
//!   and creates a fresh mailbox.
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
//! # Locks
//!
//! The order is: map shard, then mailbox. No lock is held while user code runs.

use crate::{
    gate::Gate,
    sync::{lock, wait, wait_timeout, Condvar, Mutex},
};
use std::{collections::VecDeque, time::Instant};

/// One key's mailbox; shared between the map, the ready queue and the worker running it.
#[derive(Debug)]
pub(crate) struct Mailbox<K, J> {
    pub(crate) key: K,
    inner: Mutex<Inner<J>>,
    /// Producers waiting for room in this key's queue; notified when a turn ends or the queue
    /// is taken by `close_now`.
    room: Condvar,
}

#[derive(Debug)]
struct Inner<J> {
    /// Jobs not yet taken by a worker, in dispatch order.
    queue: VecDeque<J>,
    /// Jobs the running worker took for its turn and has not finished. They still count
    /// against the key's capacity.
    in_turn: usize,
    state: State,
    /// True while the mailbox has an entry in its dispatcher's idle list, so that it has at
    /// most one there.
    listed: bool,
    /// Producers blocked on `room`.
    waiters: usize,
    /// When the key last became Idle; kept only when an idle timeout is set.
    idle_since: Option<Instant>,
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
    /// A mailbox holding `job`, Queued: its creator must put it in the ready queue.
    pub(crate) fn new(key: K, job: J) -> Self {
        let mut queue = VecDeque::with_capacity(1);
        queue.push_back(job);
        Mailbox {
            key,
            inner: Mutex::new(Inner {
                queue,
                in_turn: 0,
                state: State::Queued,
                listed: false,
                waiters: 0,
                idle_since: None,
            }),
            room: Condvar::new(),
        }
    }

    /// Producer: queues `job` unless the key is full or `close_now` has begun.
    ///
    /// The caller holds the map shard's lock (read or write) that found this mailbox, so the
    /// mailbox cannot be Evicted here.
    pub(crate) fn push(&self, job: J, capacity: usize, gate: &Gate) -> Push<J> {
        let mut inner = lock(&self.inner);
        debug_assert_ne!(
            inner.state,
            State::Evicted,
            "pushed into an evicted mailbox"
        );
        // Checked under this lock: `close_now` sets the flag before taking any queue, and takes
        // each queue under this lock, so a job pushed here is either taken or refused.
        if gate.is_halted() {
            return Push::Halted(job);
        }
        if inner.queue.len() + inner.in_turn >= capacity {
            return Push::Full(job);
        }
        inner.queue.push_back(job);
        if inner.state == State::Idle {
            inner.state = State::Queued;
            Push::Schedule
        } else {
            Push::Added
        }
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

    /// Worker: starts a turn of the key it popped from the ready queue, moving up to `max`
    /// jobs into `batch` (which must be empty). Returns how many.
    pub(crate) fn begin_turn(&self, max: usize, batch: &mut VecDeque<J>) -> usize {
        debug_assert!(batch.is_empty());
        let mut inner = lock(&self.inner);
        debug_assert_eq!(
            inner.state,
            State::Queued,
            "a turn of a key that was not queued"
        );
        inner.state = State::Running;
        if inner.queue.len() <= max {
            // Swapping keeps both buffers' allocations alive for reuse.
            std::mem::swap(&mut inner.queue, batch);
        } else {
            batch.extend(inner.queue.drain(..max));
        }
        inner.in_turn = batch.len();
        inner.in_turn
    }

    /// Worker: ends the turn. `leftovers` are the jobs of the turn that did not start (only
    /// when `close_now` stopped it); they go back to the front of the queue, in order.
    ///
    /// With `halted`, the key is left Queued but out of the ready queue: `close_now` will take
    /// its jobs. Otherwise the key is requeued or made Idle: stamped with `now` if given (an
    /// idle timeout is set), else to be entered in the idle list if it is not there yet.
    pub(crate) fn end_turn(
        &self,
        leftovers: &mut VecDeque<J>,
        halted: bool,
        now: Option<Instant>,
    ) -> EndTurn {
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.state, State::Running);
        while let Some(job) = leftovers.pop_back() {
            inner.queue.push_front(job);
        }
        inner.in_turn = 0;
        if inner.waiters > 0 {
            self.room.notify_all();
        }
        if halted {
            inner.state = State::Queued;
            EndTurn::Halted
        } else if !inner.queue.is_empty() {
            inner.state = State::Queued;
            EndTurn::Requeue
        } else {
            inner.state = State::Idle;
            inner.idle_since = now;
            // A stamped key waits for its idle timeout; only the others go to the idle list.
            let list = now.is_none() && !inner.listed;
            inner.listed |= list;
            EndTurn::Idle { list }
        }
    }

    /// Sweeper: called under the map shard's write lock with this key's entry; marks the
    /// mailbox Evicted and returns true if it is Idle (and, with `expiry`, has been since
    /// before it). Either way its idle-list entry is consumed.
    pub(crate) fn try_evict(&self, expiry: Option<Instant>) -> bool {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        let expired = match (expiry, inner.idle_since) {
            (None, _) => true,
            (Some(expiry), Some(since)) => since <= expiry,
            (Some(_), None) => false,
        };
        if inner.state == State::Idle && expired {
            debug_assert!(inner.queue.is_empty() && inner.in_turn == 0);
            inner.state = State::Evicted;
            true
        } else {
            false
        }
    }

    /// `close_now`: takes every queued job and marks the mailbox Evicted. Called under the map
    /// shard's write lock, after every turn has ended.
    pub(crate) fn take_all(&self) -> VecDeque<J> {
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.in_turn, 0, "close_now took a key during its turn");
        inner.state = State::Evicted;
        if inner.waiters > 0 {
            self.room.notify_all();
        }
        std::mem::take(&mut inner.queue)
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        lock(&self.inner).state
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let inner = lock(&self.inner);
        inner.queue.len() + inner.in_turn
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn turn(mb: &Mailbox<u8, u32>, max: usize) -> Vec<u32> {
        let mut batch = VecDeque::new();
        mb.begin_turn(max, &mut batch);
        batch.into_iter().collect()
    }

    #[test]
    fn new_mailbox_is_queued_with_its_job() {
        let mb = Mailbox::new(1u8, 10u32);
        assert_eq!(mb.state(), State::Queued);
        assert_eq!(mb.len(), 1);
    }

    #[test]
    fn pushes_behind_a_queued_key_do_not_schedule() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 10u32);
        assert_eq!(mb.push(11, 8, &gate), Push::Added);
        let mut batch = VecDeque::new();
        assert_eq!(mb.begin_turn(8, &mut batch), 2);
        assert_eq!(mb.state(), State::Running);
        assert_eq!(mb.push(12, 8, &gate), Push::Added);
        assert_eq!(batch, [10, 11]);
    }

    #[test]
    fn capacity_counts_jobs_in_the_running_turn() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 10u32);
        let mut batch = VecDeque::new();
        mb.begin_turn(8, &mut batch);
        assert_eq!(mb.push(11, 1, &gate), Push::Full(11));
        batch.clear();
        assert_eq!(
            mb.end_turn(&mut batch, false, None),
            EndTurn::Idle { list: true }
        );
        assert_eq!(mb.push(11, 1, &gate), Push::Schedule);
    }

    #[test]
    fn turn_takes_at_most_max_and_requeues_the_rest() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0u32);
        for job in 1..5 {
            mb.push(job, 100, &gate);
        }
        assert_eq!(turn(&mb, 3), [0, 1, 2]);
        assert_eq!(
            mb.end_turn(&mut VecDeque::new(), false, None),
            EndTurn::Requeue
        );
        assert_eq!(mb.state(), State::Queued);
        assert_eq!(turn(&mb, 3), [3, 4]);
    }

    #[test]
    fn idle_key_is_listed_once() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0u32);
        turn(&mb, 8);
        let mut none = VecDeque::new();
        assert_eq!(
            mb.end_turn(&mut none, false, None),
            EndTurn::Idle { list: true }
        );
        assert_eq!(mb.push(1, 8, &gate), Push::Schedule);
        turn(&mb, 8);
        assert_eq!(
            mb.end_turn(&mut none, false, None),
            EndTurn::Idle { list: false }
        );
    }

    #[test]
    fn only_an_idle_key_is_evicted() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0u32);
        assert!(!mb.try_evict(None), "queued");
        turn(&mb, 8);
        assert!(!mb.try_evict(None), "running");
        mb.end_turn(&mut VecDeque::new(), false, None);
        assert!(mb.try_evict(None));
        assert_eq!(mb.state(), State::Evicted);
        let _ = gate;
    }

    #[test]
    fn eviction_with_expiry_waits_for_the_idle_timeout() {
        let mb = Mailbox::new(1u8, 0u32);
        turn(&mb, 8);
        let idle_at = Instant::now();
        mb.end_turn(&mut VecDeque::new(), false, Some(idle_at));
        let before = idle_at - std::time::Duration::from_millis(1);
        assert!(!mb.try_evict(Some(before)));
        assert!(mb.try_evict(Some(idle_at)));
    }

    #[test]
    fn halted_turn_puts_leftovers_back_in_order() {
        let gate = Gate::new();
        let mb = Mailbox::new(1u8, 0u32);
        for job in 1..4 {
            mb.push(job, 100, &gate);
        }
        let mut batch = VecDeque::new();
        mb.begin_turn(8, &mut batch);
        mb.push(4, 100, &gate);
        batch.pop_front(); // job 0 ran
        assert_eq!(mb.end_turn(&mut batch, true, None), EndTurn::Halted);
        gate.halt();
        assert!(matches!(mb.push(5, 100, &gate), Push::Halted(5)));
        assert_eq!(mb.take_all(), [1, 2, 3, 4]);
        assert_eq!(mb.state(), State::Evicted);
    }

    #[test]
    fn room_wait_times_out_on_a_full_key() {
        let mb = Mailbox::new(1u8, 0u32);
        assert!(!mb.wait_for_room(1, Some(Instant::now())));
        assert!(mb.wait_for_room(2, None));
    }
}
