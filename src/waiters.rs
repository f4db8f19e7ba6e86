//! [`Waiter`] and [`Queue`]: one FIFO for the threads and the tasks that wait for the same
//! thing, so that what frees up goes to the one that has waited longest, whichever kind it is.
//!
//! A waiter is a thread blocked on its own condition variable, or a task that left its `Waker`
//! (see [`Waiter::poll`]). Its queue lives under a lock its owner holds: a mailbox's for room
//! in a key, a [`Signal`](crate::signal::Signal)'s own otherwise.
//!
//! # Protocol
//!
//! 1. A waiter is *queued* from its push until a notifier pops it or it removes itself. Both
//!    happen under the queue's lock, so exactly one of them does.
//! 2. A notifier pops waiters into a [`Wakeups`], declared before the guard of the queue's lock
//!    so that it wakes them after the unlock: a task's `Waker` is the runtime's code, which
//!    must not run under a lock of ours (a waker that polls at once would come back for it).
//!    Waking sets the waiter's `notified` flag under the waiter's own lock, then unblocks the
//!    thread or wakes the task.
//! 3. A waiter that stops waiting (a thread's deadline passed, a future was dropped) removes
//!    itself. If it was no longer queued, a notification is on its way to it: a thread then
//!    tries again as if woken; a dropped future tries nothing, so it passes what it was given
//!    on to the next waiter, and no wake-up is lost.
//!
//! # Grants
//!
//! A notification may carry what was freed: [`Queue::grant`] pops a waiter *granted* a slot
//! that its owner holds for it (a key's room, see `mailbox::room`), so that no producer
//! arriving meanwhile takes the slot first: room in a key goes to its waiters in arrival
//! order. The grant is recorded in the waiter under the queue's lock, as it is popped, so that
//! whoever removes a waiter under that lock knows whether it holds a slot to give back.
//! [`Queue::notify`] pops without a grant: the waiter tries again, and may find the slot
//! taken (the dispatcher's capacity, and barriers, where there is no slot to hand over).

use crate::{
    sync::{fault, lock, wait, wait_timeout, Arc, Condvar, Mutex},
    unwind::contained,
};
use std::{
    collections::VecDeque,
    task::{Context, Waker},
    time::Instant,
};

/// One waiting thread or task (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    slot: Mutex<Slot>,
    /// A blocked thread waits here for `notified`.
    woken: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    notified: bool,
    /// Popped with a slot held for it (see the module docs).
    granted: bool,
    /// The task to wake, if a task waits.
    waker: Option<Waker>,
}

impl Waiter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Waiter::default())
    }

    /// Thread: blocks until notified, or `deadline` passes. Returns whether it was notified.
    pub(crate) fn block(&self, deadline: Option<Instant>) -> bool {
        let mut slot = lock(&self.slot);
        while !slot.notified {
            slot = match deadline {
                None => wait(&self.woken, slot),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    wait_timeout(&self.woken, slot, deadline - now)
                }
            };
        }
        true
    }

    /// Task: whether it has been notified; if not, leaves the task's waker to be woken when it
    /// is.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> bool {
        {
            let slot = lock(&self.slot);
            if slot.notified && !(fault!(PollMissesEarlyNotify) && slot.waker.is_none()) {
                return true;
            }
            if slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return false;
            }
        }
        // Cloned, and the old one dropped, outside the lock: a waker is the runtime's code.
        let waker = cx.waker().clone();
        let old = {
            let mut slot = lock(&self.slot);
            if slot.notified && !fault!(PollMissesEarlyNotify) {
                return true;
            }
            slot.waker.replace(waker)
        };
        drop(old);
        false
    }

    /// Whether it was popped with a slot held for it. Read once notified, or under the queue's
    /// lock after it failed to remove itself.
    pub(crate) fn granted(&self) -> bool {
        lock(&self.slot).granted
    }

    /// Step 2 of the protocol, after the queue's lock is released.
    fn wake(&self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.notified = true;
            slot.waker.take()
        };
        self.woken.notify_one();
        if let Some(waker) = waker {
            // The runtime's code: a panic here must not stop the other wake-ups of the batch,
            // nor the bookkeeping of whoever drops it.
            if contained(|| waker.wake()).is_none() {
                log::error!("keyed-dispatch: a task's waker panicked; that task was not woken");
            }
        }
    }
}

/// Waiters popped under a queue's lock, woken when this is dropped (step 2 of the module docs):
/// declare it before the guard, so that the guard goes first.
#[derive(Debug, Default)]
#[must_use = "dropping it at once wakes the waiters under the lock"]
pub(crate) struct Wakeups(Vec<Arc<Waiter>>);

impl Drop for Wakeups {
    fn drop(&mut self) {
        for waiter in self.0.drain(..) {
            waiter.wake();
        }
    }
}

/// Waiters in arrival order, under their owner's lock. Boxed, and allocated at the first wait:
/// one word in each key's mailbox, where a bare `VecDeque` would take four.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub(crate) struct Queue(Option<Box<VecDeque<Arc<Waiter>>>>);

impl Queue {
    pub(crate) fn push(&mut self, waiter: Arc<Waiter>) {
        self.0.get_or_insert_with(Box::default).push_back(waiter);
    }

    /// Pops up to `n` waiters, longest waiting first, into `wakeups`. Returns how many.
    pub(crate) fn notify(&mut self, n: usize, wakeups: &mut Wakeups) -> usize {
        self.pop(n, false, wakeups)
    }

    /// As [`Queue::notify`], each waiter popped being granted a slot (see the module docs).
    /// Returns how many: the slots the caller now holds for them.
    pub(crate) fn grant(&mut self, n: usize, wakeups: &mut Wakeups) -> usize {
        self.pop(n, true, wakeups)
    }

    fn pop(&mut self, n: usize, granted: bool, wakeups: &mut Wakeups) -> usize {
        let Some(queue) = self.0.as_mut() else {
            return 0;
        };
        let n = n.min(queue.len());
        for waiter in queue.drain(..n) {
            if granted {
                lock(&waiter.slot).granted = true;
            }
            wakeups.0.push(waiter);
        }
        n
    }

    /// Pops every waiter into `wakeups`. Returns how many.
    pub(crate) fn notify_all(&mut self, wakeups: &mut Wakeups) -> usize {
        self.notify(usize::MAX, wakeups)
    }

    /// Step 3 of the protocol: takes `waiter` out; false if a notifier popped it first.
    pub(crate) fn remove(&mut self, waiter: &Arc<Waiter>) -> bool {
        let Some(queue) = self.0.as_mut() else {
            return false;
        };
        match queue.iter().position(|queued| Arc::ptr_eq(queued, waiter)) {
            Some(at) => {
                queue.remove(at);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().map_or(true, |queue| queue.is_empty())
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn notifies_in_arrival_order_and_removal_misses_the_notified() {
        let (a, b, c) = (Waiter::new(), Waiter::new(), Waiter::new());
        let mut queue = Queue::default();
        for waiter in [&a, &b, &c] {
            queue.push(Arc::clone(waiter));
        }
        {
            let mut wakeups = Wakeups::default();
            assert_eq!(queue.notify(1, &mut wakeups), 1);
            assert!(!a.block(Some(Instant::now())), "woken only once dropped");
        }
        assert!(a.block(None) && !a.granted());
        assert!(!queue.remove(&a), "a was popped by the notification");
        assert!(queue.remove(&c));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.grant(5, &mut Wakeups::default()), 1);
        assert!(b.block(None) && b.granted() && !c.block(Some(Instant::now())));
        assert!(queue.is_empty());
    }
}
