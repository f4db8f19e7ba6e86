//! Backoffs of retried jobs: the heap of Waiting keys and the one pool timer that wakes them.
//!
//! When a retrying dispatcher's job fails an attempt and is to be retried, its turn ends with
//! the job back at the front of the key's queue and the key Waiting (see `mailbox`). The worker
//! files the key here, in a min-heap of (due instant, sequence number, mailbox) under a lock,
//! and moves on to other keys: no thread waits for a backoff.
//!
//! The heap is a [`DueHeap`] (see `due`), with one pool timer of kind [`TimerKind::Backoff`]
//! armed for its earliest entry. When the timer fires, each key whose backoff is over and that
//! is still Waiting is made Queued and scheduled. A key is filed once per failed attempt and
//! popped once, so the heap holds at most one entry per Waiting key. The shutdown empties it
//! (`clear_sched`).

use super::{
    core::Core,
    due::{due_in, DueHeap},
};
use crate::{
    mailbox::{Mailbox, Woken},
    pool::TimerKind,
    sync::{lock, Arc},
};
use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// The Waiting keys, earliest due first.
pub(super) type Backoffs<K, J> = DueHeap<Arc<Mailbox<K, J>>>;

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Files a key that just became Waiting, to be scheduled again after `delay`.
    pub(super) fn file_backoff(&self, mailbox: Arc<Mailbox<K, J>>, delay: Duration) {
        let at = due_in(delay);
        if lock(&self.backoffs).push(at, mailbox) {
            self.pool
                .set_timer(at, self.as_client(), TimerKind::Backoff);
        }
    }

    /// The backoff timer: schedules every key whose backoff is over and is still Waiting.
    /// Returns when the pool should fire it next, if no pending timer already will.
    pub(super) fn on_backoff_timer(&self, now: Instant) -> Option<Instant> {
        let mut over = Vec::new();
        let next = lock(&self.backoffs).pop_due(now, &mut over);
        for mailbox in over {
            match mailbox.backoff_over() {
                Woken::Schedule => self.schedule(mailbox),
                Woken::Held => self.held_more(),
                Woken::Gone => {}
            }
        }
        next
    }
}
