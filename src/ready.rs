//! The ready queue: Queued keys waiting for a turn, first in first out.
//!
//! Producers push the keys they make Queued, workers push the keys whose turn ends with jobs
//! left, and token holders pop them, all without a lock: an unbounded `crossbeam-channel`
//! whose two ends the queue holds, so it never disconnects. Taking a lock here put every
//! producer and every worker on one contended line for each key scheduled.
//!
//! Under loom and shuttle it is a `VecDeque` behind the checker's `Mutex`, so that the models
//! see each push and pop as one step, with its length in an atomic that
//! [`ReadyQueue::is_empty`] reads without the lock, as the channel's does: a lock there would
//! order that read after every earlier push by itself, and hide from loom a missing fence in
//! the protocol. The protocol relies only on what both give: every pushed item is popped once,
//! in push order, and a push that `SeqCst` fences order before [`ReadyQueue::is_empty`] is seen
//! by it.

#[cfg(any(loom, shuttle))]
use crate::sync::{lock, AtomicUsize, Mutex, Ordering};
#[cfg(any(loom, shuttle))]
use std::collections::VecDeque;

/// See the module docs.
pub(crate) struct ReadyQueue<T> {
    #[cfg(not(any(loom, shuttle)))]
    sender: crossbeam_channel::Sender<T>,
    #[cfg(not(any(loom, shuttle)))]
    receiver: crossbeam_channel::Receiver<T>,
    #[cfg(any(loom, shuttle))]
    queue: Mutex<VecDeque<T>>,
    /// `queue.len()`, changed under the lock.
    #[cfg(any(loom, shuttle))]
    len: AtomicUsize,
}

#[cfg(not(any(loom, shuttle)))]
impl<T> ReadyQueue<T> {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        ReadyQueue { sender, receiver }
    }

    pub(crate) fn push(&self, item: T) {
        if self.sender.send(item).is_err() {
            unreachable!("the ready queue holds its own receiver");
        }
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.receiver.try_recv().ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// Pops every item.
    pub(crate) fn take_all(&self) -> Vec<T> {
        self.receiver.try_iter().collect()
    }
}

#[cfg(any(loom, shuttle))]
impl<T> ReadyQueue<T> {
    pub(crate) fn new() -> Self {
        ReadyQueue {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn push(&self, item: T) {
        let mut queue = lock(&self.queue);
        queue.push_back(item);
        // ORDERING: SeqCst, as the channel's index; loom weakens it to acquire-release anyway.
        self.len.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn pop(&self) -> Option<T> {
        let mut queue = lock(&self.queue);
        let item = queue.pop_front()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(item)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// Pops every item.
    pub(crate) fn take_all(&self) -> Vec<T> {
        let mut queue = lock(&self.queue);
        self.len.store(0, Ordering::SeqCst);
        queue.drain(..).collect()
    }
}

#[cfg(all(test, not(any(loom, shuttle))))]
mod tests {
    use super::ReadyQueue;

    #[test]
    fn pops_in_push_order_then_reports_empty() {
        let queue = ReadyQueue::new();
        assert!(queue.is_empty());
        for i in 0..100 {
            queue.push(i);
        }
        assert!(!queue.is_empty());
        assert_eq!(queue.pop(), Some(0));
        assert_eq!(queue.take_all(), (1..100).collect::<Vec<_>>());
        assert!(queue.is_empty());
        assert_eq!(queue.pop(), None);
    }
}
