//! [`Signal`]: threads and tasks wait until a condition holds; others announce that it may hold
//! now, to every waiter or to the next few in arrival order.

use crate::{
    sync::{dekker_fence, lock, AtomicUsize, Mutex, Ordering},
    waiters::{Queue, Waiter, Wakeups},
};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

/// A FIFO of waiters (see `waiters`) with a count of them, so that announcing a change costs one
/// atomic load while nobody waits.
///
/// No wake-up is lost as long as the state the condition reads is changed with `SeqCst` before
/// [`Signal::notify`], and read with `SeqCst` by the condition: a waiter counts itself (as it
/// queues, under the lock) before its check, a notifier changes the state before it reads the
/// count, so at least one of them sees the other (the Dekker pattern), and a notifier that sees
/// the count takes the lock after the waiter queued.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    count: AtomicUsize,
    queue: Mutex<Queue>,
}

impl Signal {
    /// Blocks until `ready()` returns true, or `deadline` passes. Returns the last `ready()`.
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        loop {
            if ready() {
                return true;
            }
            let waiter = self.enqueue();
            if ready() {
                self.dequeue(&waiter);
                return true;
            }
            if !waiter.block(deadline) {
                // A notification that came meanwhile is taken by the check below, as a woken
                // waiter's would be.
                self.dequeue(&waiter);
                return ready();
            }
        }
    }

    /// Resolves once `ready()` returns true; a task's [`Signal::wait_until`].
    pub(crate) fn until<F: FnMut() -> bool + Unpin>(&self, ready: F) -> Until<'_, F> {
        Until {
            signal: self,
            ready,
            waiter: None,
        }
    }

    /// Queues a new waiter and counts it; then the fence of the Dekker pair (see the type's docs).
    pub(crate) fn enqueue(&self) -> Arc<Waiter> {
        let waiter = Waiter::new();
        {
            let mut queue = lock(&self.queue);
            queue.push(Arc::clone(&waiter));
            // ORDERING: SeqCst, see the type's docs.
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        dekker_fence();
        waiter
    }

    /// Takes `waiter` out of the queue; false if a notifier had popped it.
    pub(crate) fn dequeue(&self, waiter: &Arc<Waiter>) -> bool {
        let mut queue = lock(&self.queue);
        let queued = queue.remove(waiter);
        if queued {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
        queued
    }

    /// A task's waiter dropped before it took its notification: takes it out, or passes the
    /// notification on to the next waiter (step 3 of `waiters`).
    pub(crate) fn abandon(&self, waiter: &Arc<Waiter>) {
        if !self.dequeue(waiter) {
            self.notify(1);
        }
    }

    /// Wakes the `n` longest-waiting waiters: `n` units of what they wait for were freed.
    pub(crate) fn notify(&self, n: usize) {
        // ORDERING: SeqCst, see the type's docs.
        dekker_fence();
        if self.count.load(Ordering::SeqCst) > 0 {
            let mut wakeups = Wakeups::default();
            let mut queue = lock(&self.queue);
            let popped = queue.notify(n, &mut wakeups);
            self.count.fetch_sub(popped, Ordering::SeqCst);
        }
    }

    /// Wakes every waiter to re-check its condition.
    pub(crate) fn notify_all(&self) {
        self.notify(usize::MAX);
    }
}

/// The future of [`Signal::until`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub(crate) struct Until<'a, F> {
    signal: &'a Signal,
    ready: F,
    /// Queued, or notified and not yet polled.
    waiter: Option<Arc<Waiter>>,
}

impl<F: FnMut() -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.signal
            .poll_until(&mut this.waiter, cx, &mut this.ready)
    }
}

impl Signal {
    /// A task's wait for `ready()`, polled: `waiter` is its place in line, kept between polls
    /// (and given up with [`Signal::abandon`] by a future dropped while it holds one).
    pub(crate) fn poll_until(
        &self,
        waiter: &mut Option<Arc<Waiter>>,
        cx: &mut Context<'_>,
        mut ready: impl FnMut() -> bool,
    ) -> Poll<()> {
        loop {
            if let Some(queued) = waiter {
                if !queued.poll(cx) {
                    return Poll::Pending;
                }
                *waiter = None;
            }
            if ready() {
                return Poll::Ready(());
            }
            let queued = self.enqueue();
            if ready() {
                self.dequeue(&queued);
                return Poll::Ready(());
            }
            *waiter = Some(queued);
        }
    }
}

impl<F> Drop for Until<'_, F> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.signal.abandon(&waiter);
        }
    }
}
