//! Backoffs of retried jobs: the heap of Waiting keys and the one pool timer that wakes them.
//!
//! When a retrying dispatcher's job fails an attempt and is to be retried, its turn ends with
//! the job back at the front of the key's queue and the key Waiting (see `mailbox`). The worker
//! files the key here, in a min-heap of (due instant, sequence number, mailbox) under a lock,
//! and moves on to other keys: no thread waits for a backoff.
//!
//! One pool timer of kind [`TimerKind::Backoff`] is kept armed for the heap's earliest entry.
//! `Backoffs::armed` is the due instant of the earliest such timer known to be pending: filing
//! an entry due before it (or with none pending) arms a new one. When a timer fires, every entry
//! due by then is popped, and each key still Waiting is made Queued and scheduled; if entries
//! remain and no pending timer is due before the next of them, the pool re-arms the timer for
//! it. A superseded, later timer still fires; it finds nothing due and arms nothing new, since
//! the earlier one re-armed as needed. So each entry is popped by the first timer at or after
//! its due instant, and entries wait for at most their own delay plus the pool's timer latency.
//!
//! The entry's sequence number orders entries due at the same instant by filing, so that keys
//! are woken first in, first out. A key is filed once per failed attempt and popped once, so
//! the heap holds at most one entry per Waiting key. The shutdown empties it (`clear_sched`).

use super::core::Core;
use crate::{
    mailbox::{Mailbox, Woken},
    pool::TimerKind,
    sync::{lock, Arc},
};
use std::{
    cmp::Ordering as CmpOrdering,
    collections::BinaryHeap,
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// A backoff far past any real one, for a delay the clock cannot add.
const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// The Waiting keys, earliest due first, and the timer armed for them.
pub(super) struct Backoffs<K, J> {
    heap: BinaryHeap<Due<K, J>>,
    /// The sequence number of the next entry.
    next: u64,
    /// The due instant of the earliest pending pool timer, if any is known to be.
    armed: Option<Instant>,
}

impl<K, J> Default for Backoffs<K, J> {
    fn default() -> Self {
        Backoffs {
            heap: BinaryHeap::new(),
            next: 0,
            armed: None,
        }
    }
}

impl<K, J> Backoffs<K, J> {
    /// Empties the heap (the shutdown): its mailboxes are no longer the map's.
    pub(super) fn clear(&mut self) -> Vec<Arc<Mailbox<K, J>>> {
        self.armed = None;
        self.heap.drain().map(|due| due.mailbox).collect()
    }
}

/// One Waiting key: ordered so that the `BinaryHeap`, a max-heap, pops the earliest first.
struct Due<K, J> {
    at: Instant,
    seq: u64,
    mailbox: Arc<Mailbox<K, J>>,
}

impl<K, J> PartialEq for Due<K, J> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<K, J> Eq for Due<K, J> {}

impl<K, J> PartialOrd for Due<K, J> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl<K, J> Ord for Due<K, J> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Files a key that just became Waiting, to be scheduled again after `delay`.
    pub(super) fn file_backoff(&self, mailbox: Arc<Mailbox<K, J>>, delay: Duration) {
        let now = Instant::now();
        let at = now
            .checked_add(delay)
            .or_else(|| now.checked_add(FAR))
            .unwrap_or(now);
        let arm = {
            let mut backoffs = lock(&self.backoffs);
            let seq = backoffs.next;
            backoffs.next += 1;
            backoffs.heap.push(Due { at, seq, mailbox });
            let arm = backoffs.armed.map_or(true, |armed| at < armed);
            if arm {
                backoffs.armed = Some(at);
            }
            arm
        };
        if arm {
            self.pool
                .set_timer(at, self.as_client(), TimerKind::Backoff);
        }
    }

    /// The backoff timer: schedules every key whose backoff is over and is still Waiting.
    /// Returns when the pool should fire it next, if no pending timer already will.
    pub(super) fn on_backoff_timer(&self, now: Instant) -> Option<Instant> {
        let mut over = Vec::new();
        let next = {
            let mut backoffs = lock(&self.backoffs);
            while backoffs.heap.peek().is_some_and(|due| due.at <= now) {
                over.push(backoffs.heap.pop().expect("peeked").mailbox);
            }
            match backoffs.heap.peek().map(|due| due.at) {
                None => {
                    backoffs.armed = None;
                    None
                }
                // A pending timer will fire in time for the next entry.
                Some(next) if backoffs.armed.is_some_and(|a| a > now && a <= next) => None,
                Some(next) => {
                    backoffs.armed = Some(next);
                    Some(next)
                }
            }
        };
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
