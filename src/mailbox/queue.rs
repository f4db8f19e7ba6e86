//! A key's queued jobs: the first held inline, in the mailbox, and the rest in a ring buffer.
//!
//! Most keys hold one job at a time when keys are many. Held inline, that job is written by the
//! producer and read by the worker on the cache lines that their locking of the mailbox has
//! just brought to them, instead of on a buffer of its own that moves between their cores once
//! more per job (BENCHMARKS.md, "One job inline").

use std::collections::VecDeque;

/// Jobs in dispatch order. `first` is `None` only when the queue is empty, so `first` is always
/// the front.
#[derive(Debug)]
pub(crate) struct JobQueue<J> {
    first: Option<J>,
    rest: VecDeque<J>,
}

impl<J> Default for JobQueue<J> {
    fn default() -> Self {
        JobQueue {
            first: None,
            rest: VecDeque::new(),
        }
    }
}

impl<J> JobQueue<J> {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn push_back(&mut self, job: J) {
        if self.first.is_none() {
            self.first = Some(job);
        } else {
            self.rest.push_back(job);
        }
    }

    pub(crate) fn push_front(&mut self, job: J) {
        if let Some(first) = self.first.replace(job) {
            self.rest.push_front(first);
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<J> {
        let first = self.first.take()?;
        self.first = self.rest.pop_front();
        Some(first)
    }

    /// Moves up to `max` jobs from the front to the back of `batch`; returns how many.
    pub(crate) fn take_into(&mut self, max: usize, batch: &mut VecDeque<J>) -> usize {
        if max == 0 {
            return 0;
        }
        let Some(first) = self.first.take() else {
            return 0;
        };
        if !self.rest.is_empty() && self.rest.len() < max && batch.is_empty() {
            // All of them: swapping buffers copies none (one hot key's batches), and keeps
            // both allocations alive for reuse.
            std::mem::swap(&mut self.rest, batch);
            batch.push_front(first);
            return batch.len();
        }
        batch.push_back(first);
        let more = self.rest.len().min(max - 1);
        batch.extend(self.rest.drain(..more));
        self.first = self.rest.pop_front();
        1 + more
    }

    /// Takes every job, in order, leaving the queue empty.
    pub(crate) fn take_all(&mut self) -> VecDeque<J> {
        let mut jobs = std::mem::take(&mut self.rest);
        if let Some(first) = self.first.take() {
            jobs.push_front(first);
        }
        jobs
    }

    /// Frees the ring buffer if it holds more than `bytes`, for an empty queue kept as a spare.
    pub(crate) fn shrink(&mut self, bytes: usize) {
        if self
            .rest
            .capacity()
            .saturating_mul(std::mem::size_of::<J>())
            > bytes
        {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::JobQueue;
    use std::collections::VecDeque;

    #[test]
    fn keeps_order_through_every_operation() {
        let mut q = JobQueue::default();
        assert!(q.is_empty() && q.pop_front().is_none());
        (1..=5).for_each(|j| q.push_back(j));
        q.push_front(0);
        assert_eq!(q.len(), 6);
        let mut batch = VecDeque::new();
        assert_eq!(q.take_into(3, &mut batch), 3);
        assert_eq!(batch, [0, 1, 2]);
        assert_eq!(q.len(), 3);
        // Leftovers go back in front, last first, as a halted turn puts them back.
        while let Some(j) = batch.pop_back() {
            q.push_front(j);
        }
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.take_into(usize::MAX, &mut batch), 5);
        assert_eq!(batch, [1, 2, 3, 4, 5]);
        assert!(q.is_empty());
        assert_eq!(q.take_into(4, &mut batch), 0);
    }

    #[test]
    fn appends_to_a_batch_that_holds_jobs() {
        let mut q = JobQueue::default();
        (2..5).for_each(|j| q.push_back(j));
        let mut batch = VecDeque::from([0, 1]);
        assert_eq!(q.take_into(8, &mut batch), 3);
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn takes_at_most_max() {
        let mut q = JobQueue::default();
        (0..3).for_each(|j| q.push_back(j));
        let mut batch = VecDeque::new();
        assert_eq!(q.take_into(0, &mut batch), 0);
        assert_eq!(q.take_into(1, &mut batch), 1);
        assert_eq!(q.take_into(1, &mut batch), 1);
        assert_eq!(batch, [0, 1]);
        assert_eq!(q.take_all(), [2]);
        assert!(q.is_empty() && q.take_all().is_empty());
    }

    #[test]
    fn shrink_frees_only_a_large_buffer() {
        let mut q = JobQueue::<u64>::default();
        (0..100).for_each(|j| q.push_back(j));
        while q.pop_front().is_some() {}
        q.shrink(8 * 1024);
        assert!(q.rest.capacity() >= 99);
        q.shrink(64);
        assert_eq!(q.rest.capacity(), 0);
    }
}
