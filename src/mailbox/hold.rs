//! Keys held back: a key waiting out a retry's backoff, a paused key, a key being cancelled
//! (see the parent module's state machine).

use super::{Mailbox, Marks, State};
use crate::{
    gate::Gate,
    sync::{lock, wait, Ordering},
    waiters::Wakeups,
};
use std::collections::VecDeque;

/// What the backoff timer did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Queued: the caller schedules it.
    Schedule,
    /// Paused, so Held: the caller counts it.
    Held,
    /// No longer Waiting: left alone.
    Gone,
}

/// What `resume_key` did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Resumed {
    /// It was paused.
    pub(crate) was_paused: bool,
    /// It was Held and is now Queued: the caller schedules it and uncounts it as held.
    pub(crate) schedule: bool,
    /// It is Idle and not listed: the caller enters it in the idle list.
    pub(crate) list: bool,
}

/// What `cancel_key` took from a key.
#[derive(Debug)]
pub(crate) struct Cancelled<J> {
    pub(crate) jobs: VecDeque<J>,
    pub(crate) marks: Marks,
    /// It was Held: the caller uncounts it.
    pub(crate) was_held: bool,
    /// It is now Idle and not listed: the caller enters it in the idle list.
    pub(crate) list: bool,
}

impl<K, J> Mailbox<K, J> {
    /// The backoff timer: a Waiting key's backoff is over; makes it Queued and returns true
    /// (the caller schedules it), or returns false if it is no longer Waiting (`close_now`
    /// took its jobs).
    pub(crate) fn backoff_over(&self) -> Woken {
        let mut inner = lock(&self.inner);
        if inner.state != State::Waiting {
            Woken::Gone
        } else if inner.held_back() {
            inner.state = State::Held;
            Woken::Held
        } else {
            inner.state = State::Queued;
            Woken::Schedule
        }
    }

    /// The running turn's hint to stop after its running job: the key was paused or is being
    /// cancelled. Read without the lock once per job; `continue_turn` and `end_turn` look
    /// again under it.
    #[inline]
    pub(crate) fn stop_hint(&self) -> bool {
        // ORDERING: Relaxed; a turn that misses it stops after its next job, or at the end of
        // its batch, where the lock is taken.
        self.stop.load(Ordering::Relaxed)
    }

    /// `pause_key`: pauses the key, unless its dispatcher has closed (checked under this lock,
    /// which `close`'s resuming pass takes after setting the flag, so that no key stays paused
    /// through a close). Returns `None` once closed, else whether this call paused it.
    pub(crate) fn pause(&self, gate: &Gate) -> Option<bool> {
        let mut inner = lock(&self.inner);
        if gate.is_closed() || inner.state == State::Evicted {
            return None;
        }
        if inner.paused {
            return Some(false);
        }
        inner.paused = true;
        self.stop.store(true, Ordering::Relaxed);
        Some(true)
    }

    /// `resume_key`, and `close`: unpauses the key; see [`Resumed`].
    pub(crate) fn resume(&self) -> Resumed {
        let mut inner = lock(&self.inner);
        if !inner.paused {
            return Resumed::default();
        }
        inner.paused = false;
        if inner.cancelling == 0 {
            self.stop.store(false, Ordering::Relaxed);
        }
        let mut resumed = Resumed {
            was_paused: true,
            ..Resumed::default()
        };
        match inner.state {
            State::Held if inner.cancelling == 0 => {
                inner.state = State::Queued;
                inner.used = true;
                resumed.schedule = true;
            }
            State::Idle if !inner.listed => {
                inner.listed = true;
                inner.used = true;
                resumed.list = true;
            }
            _ => {}
        }
        resumed
    }

    /// `cancel_key`: takes every job not started, with their marks (see [`Cancelled`]). If the
    /// key is Running, holds it back and waits for its turn to end first. `None` if the key was
    /// evicted meanwhile (every job of it had finished, or `close_now` took them).
    pub(crate) fn cancel(&self) -> Option<Cancelled<J>> {
        let mut wakeups = Wakeups::default();
        let mut inner = lock(&self.inner);
        if inner.state == State::Running {
            inner.cancelling += 1;
            self.stop.store(true, Ordering::Relaxed);
            while inner.state == State::Running {
                inner = wait(&self.turn_ended, inner);
            }
            inner.cancelling -= 1;
            if !inner.held_back() {
                self.stop.store(false, Ordering::Relaxed);
            }
        }
        if inner.state == State::Evicted {
            return None;
        }
        debug_assert_eq!(inner.in_turn, 0);
        let jobs = inner.queue.take_all();
        let marks = std::mem::take(&mut inner.marks);
        inner.attempts = 0;
        inner.stamps = None;
        self.queued.store(0, Ordering::Relaxed);
        inner.waiting.notify_all(&mut wakeups);
        let was_held = inner.state == State::Held;
        let mut list = false;
        match inner.state {
            // Its next turn finds nothing and makes it Idle.
            State::Queued => {}
            State::Held | State::Waiting | State::Idle => {
                inner.state = State::Idle;
                if !inner.listed {
                    inner.listed = true;
                    inner.used = true;
                    list = true;
                }
            }
            State::Running | State::Evicted => unreachable!("checked above"),
        }
        Some(Cancelled {
            jobs,
            marks,
            was_held,
            list,
        })
    }
}
