//! Items due at instants, earliest first, and the bookkeeping of the one pool timer armed for
//! them: what the backoffs of retried jobs (`backoff`) and the delayed dispatches (`delay`)
//! share.
//!
//! A [`DueHeap`] is a min-heap of (due instant, sequence number, item), kept under its owner's
//! lock. `armed` is the due instant of the earliest pool timer known to be pending for it:
//! pushing an item due before it (or with none pending) asks the caller to arm a new one. When
//! a timer fires, every item due by then is popped; if items remain and no pending timer is due
//! before the next of them, the pool re-arms the timer for it. A superseded, later timer still
//! fires; it finds nothing due and arms nothing new, since the earlier one re-armed as needed.
//! So each item is popped by the first timer at or after its due instant: it waits for at most
//! its own delay plus the pool's timer latency.
//!
//! The sequence number orders items due at the same instant by their filing, so that they come
//! out first in, first out.

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    time::{Duration, Instant},
};

/// A delay far past any real one, for a delay the clock cannot add.
const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// The instant `delay` from now, or far in the future if the clock cannot count that far.
pub(super) fn due_in(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// See the module docs.
pub(super) struct DueHeap<T> {
    heap: BinaryHeap<Due<T>>,
    /// The sequence number of the next item.
    next: u64,
    /// The due instant of the earliest pending pool timer, if any is known to be.
    armed: Option<Instant>,
}

impl<T> Default for DueHeap<T> {
    fn default() -> Self {
        DueHeap {
            heap: BinaryHeap::new(),
            next: 0,
            armed: None,
        }
    }
}

impl<T> DueHeap<T> {
    /// Files `item`, due at `at`. Returns whether the caller must arm a pool timer for `at`.
    pub(super) fn push(&mut self, at: Instant, item: T) -> bool {
        let seq = self.next;
        self.next += 1;
        self.heap.push(Due { at, seq, item });
        let arm = self.armed.map_or(true, |armed| at < armed);
        if arm {
            self.armed = Some(at);
        }
        arm
    }

    /// Moves every item due by `now` into `due`, earliest first. Returns when the pool should
    /// fire the timer next, if no pending timer already will.
    pub(super) fn pop_due(&mut self, now: Instant, due: &mut Vec<T>) -> Option<Instant> {
        while self.heap.peek().is_some_and(|next| next.at <= now) {
            due.push(self.heap.pop().expect("peeked").item);
        }
        match self.heap.peek().map(|next| next.at) {
            None => {
                self.armed = None;
                None
            }
            // A pending timer will fire in time for the next item.
            Some(next) if self.armed.is_some_and(|a| a > now && a <= next) => None,
            Some(next) => {
                self.armed = Some(next);
                Some(next)
            }
        }
    }

    /// Empties the heap (the shutdown), earliest first.
    pub(super) fn clear(&mut self) -> Vec<T> {
        self.armed = None;
        let mut due: Vec<_> = std::mem::take(&mut self.heap).into_vec();
        due.sort_unstable_by(|a, b| b.cmp(a));
        due.into_iter().map(|due| due.item).collect()
    }
}

/// One item: ordered so that the `BinaryHeap`, a max-heap, pops the earliest first.
struct Due<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Due<T> {}

impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_due_items_earliest_first_and_asks_for_one_timer_per_earlier_item() {
        let now = Instant::now();
        let ms = |n| now + Duration::from_millis(n);
        let mut heap = DueHeap::default();
        assert!(heap.push(ms(20), "b"));
        assert!(!heap.push(ms(30), "c"), "a timer is pending before it");
        assert!(heap.push(ms(10), "a"));
        assert!(
            !heap.push(ms(20), "b2"),
            "same instant: after b, and no new timer"
        );
        let mut due = Vec::new();
        // The timer for 10 fires, and is re-armed for the next item.
        assert_eq!(heap.pop_due(ms(10), &mut due), Some(ms(20)));
        assert_eq!(due, ["a"]);
        assert_eq!(heap.pop_due(ms(25), &mut due), Some(ms(30)));
        assert_eq!(due, ["a", "b", "b2"]);
        assert!(!heap.push(ms(40), "d"));
        assert_eq!(heap.clear(), ["c", "d"]);
        assert_eq!(heap.pop_due(ms(100), &mut due), None);
    }
}
