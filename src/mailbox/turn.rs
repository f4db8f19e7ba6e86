//! The worker's side of a mailbox: the batches of a turn, the marks due within them, and the end
//! of the turn that decides where the key goes next. Apart from the producers' side, which the
//! parent module keeps with the state machine it draws.

use super::{EndTurn, Inner, Mailbox, Marks, State, Stop};
use crate::{
    sync::{fault, lock, Ordering},
    waiters::Wakeups,
};
use std::{collections::VecDeque, time::Instant};

impl<K, J> Mailbox<K, J> {
    /// Worker: starts a turn of the key it popped from the ready queue, moving up to `max`
    /// jobs into `batch` (which must be empty). Returns how many.
    ///
    /// The marks that fall within the batch move into `due` (which must be empty), each with
    /// the number of the batch's jobs that must finish before it is completed.
    #[cfg(test)]
    pub(crate) fn begin_turn(&self, max: usize, batch: &mut VecDeque<J>, due: &mut Marks) -> usize {
        self.begin_turn_attempts(max, batch, due)
            .expect("a turn of an evicted key")
            .0
    }

    #[cfg(test)]
    pub(crate) fn begin_turn_attempts(
        &self,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
    ) -> Option<(usize, u32)> {
        self.begin_turn_stamped(max, batch, due, &mut VecDeque::new())
    }

    /// [`Mailbox::begin_turn`], also returning the failed attempts of the batch's first job
    /// (the key's head job), which the turn takes over; `None`, changing nothing, if
    /// `close_timeout` has taken the key's jobs. `stamps` (empty) receives the dispatch
    /// instants of the batch's jobs that have them (see [`Mailbox::push_stamped`]).
    pub(crate) fn begin_turn_stamped(
        &self,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
    ) -> Option<(usize, u32)> {
        debug_assert!(batch.is_empty() && due.is_empty());
        let mut inner = lock(&self.inner);
        // `close_timeout` took the key's jobs between its pop and this turn: nothing to run.
        if inner.state == State::Evicted {
            return None;
        }
        debug_assert_eq!(
            inner.state,
            State::Queued,
            "a turn of a key that was not queued"
        );
        inner.state = State::Running;
        // A paused key (or one being cancelled) takes no job: its turn ends at once, Held.
        if inner.held_back() {
            return Some((self.take_batch(&mut inner, 0, batch, due, stamps), 0));
        }
        let attempts = std::mem::take(&mut inner.attempts);
        Some((
            self.take_batch(&mut inner, max, batch, due, stamps),
            attempts,
        ))
    }

    /// Worker: the turn's batch has run to its end and jobs wait behind it; goes on with the
    /// next batch of up to `max`, in the same turn, as [`Mailbox::end_turn`] followed by
    /// [`Mailbox::begin_turn`] would under one lock, without the key leaving the worker. Returns
    /// how many jobs it took (none if the queue was empty: the caller then ends the turn).
    ///
    /// `due` (empty, as the batch left it) is refilled with the flush barriers registered
    /// during the batch, at position 0 (due before the next job), then with the next batch's
    /// marks.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn continue_turn(
        &self,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
    ) -> usize {
        self.continue_turn_stamped(max, batch, due, &mut VecDeque::new())
    }

    /// [`Mailbox::continue_turn`], with the batch's dispatch instants (see
    /// [`Mailbox::begin_turn_stamped`]).
    pub(crate) fn continue_turn_stamped(
        &self,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
    ) -> usize {
        debug_assert!(batch.is_empty() && due.is_empty());
        let mut wakeups = Wakeups::default();
        let mut inner = lock(&self.inner);
        debug_assert_eq!(inner.state, State::Running);
        if inner.queue.is_empty() || inner.held_back() {
            return 0;
        }
        let freed = std::mem::take(&mut inner.in_turn);
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
        if !fault!(NoRoomWake) {
            inner.grant_room(freed, &mut wakeups);
        }
        self.take_batch(&mut inner, max, batch, due, stamps)
    }

    /// Moves up to `max` queued jobs into `batch`, and the marks that fall within it into
    /// `due`, each with the number of the batch's jobs that must finish before it is due.
    ///
    /// The stamps of the jobs taken move into `stamps`. They cover a suffix of the queue (a
    /// retried head job, having started, has none), and so a suffix of the batch.
    fn take_batch(
        &self,
        inner: &mut Inner<J>,
        max: usize,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
    ) -> usize {
        if let Some(queued) = inner.stamps.as_deref_mut() {
            debug_assert!(queued.len() <= inner.queue.len(), "more stamps than jobs");
            let unstamped = inner.queue.len() - queued.len();
            let taken = inner.queue.len().min(max);
            stamps.extend(queued.drain(..taken.saturating_sub(unstamped)));
        }
        debug_assert!(batch.is_empty(), "a batch taken on top of another");
        inner.queue.take_into(max, batch);
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
    #[cfg(test)]
    pub(crate) fn end_turn(
        &self,
        leftovers: &mut VecDeque<J>,
        due: &mut Marks,
        halted: bool,
    ) -> EndTurn {
        let stop = if halted { Stop::Halted } else { Stop::Ran };
        self.end_turn_as(leftovers, due, stop)
    }

    #[cfg(test)]
    pub(crate) fn end_turn_as(
        &self,
        leftovers: &mut VecDeque<J>,
        due: &mut Marks,
        stop: Stop,
    ) -> EndTurn {
        self.end_turn_stamped(leftovers, due, stop, &mut VecDeque::new())
    }

    /// [`Mailbox::end_turn`], for any [`Stop`]. With [`Stop::Backoff`], `leftovers` starts
    /// with the job that failed: it goes back to the front with its attempt count, and the
    /// key becomes Waiting (returning [`EndTurn::Backoff`]) for the worker to file it in the
    /// backoff heap. Its mark (if it counts in a group) goes back behind it, as a halted
    /// turn's leftovers' marks do, so the group counts the job once, when it finally ends.
    ///
    /// `stamps` holds the dispatch instants of the leftovers that have one (a suffix of them);
    /// they go back in front of the queue's.
    pub(crate) fn end_turn_stamped(
        &self,
        leftovers: &mut VecDeque<J>,
        due: &mut Marks,
        stop: Stop,
        stamps: &mut VecDeque<Instant>,
    ) -> EndTurn {
        let mut wakeups = Wakeups::default();
        let mut inner = lock(&self.inner);
        if !stamps.is_empty() {
            let queued = inner.stamps.get_or_insert_with(Box::default);
            while let Some(stamp) = stamps.pop_back() {
                queued.push_front(stamp);
            }
        }
        debug_assert_eq!(inner.state, State::Running);
        let start = inner.taken - inner.in_turn as u64;
        while let Some(mut mark) = due.pop_back() {
            mark.position += start;
            inner.marks.push_front(mark);
        }
        // The leftovers keep their room.
        let freed = std::mem::take(&mut inner.in_turn) - leftovers.len();
        while let Some(job) = leftovers.pop_back() {
            inner.queue.push_front(job);
            inner.taken -= 1;
        }
        self.queued.store(inner.queue.len(), Ordering::Relaxed);
        while inner
            .marks
            .front()
            .is_some_and(|mark| mark.position <= inner.taken)
        {
            let mark = inner.marks.pop_front().expect("checked");
            debug_assert!(mark.flush, "a job's mark outlived its turn");
            due.push_back(mark);
        }
        if !fault!(NoRoomWake) {
            inner.grant_room(freed, &mut wakeups);
        }
        if inner.cancelling > 0 && !fault!(NoRoomWake) {
            self.turn_ended.notify_all();
        }
        match stop {
            Stop::Halted => {
                inner.state = State::Queued;
                return EndTurn::Halted;
            }
            Stop::Backoff { attempts } => {
                debug_assert!(!inner.queue.is_empty(), "a retried job was not put back");
                inner.attempts = attempts;
                inner.state = if fault!(BackoffEndsIdle) {
                    State::Idle
                } else {
                    State::Waiting
                };
                return EndTurn::Backoff;
            }
            // The head job goes back with the attempts it had made.
            Stop::Stopped { attempts } => inner.attempts = attempts,
            Stop::Ran => {}
        }
        if inner.held_back() && !inner.queue.is_empty() {
            inner.state = State::Held;
            return EndTurn::Held;
        }
        if !inner.queue.is_empty() && !fault!(IdleWithJobsLeft) {
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
}
