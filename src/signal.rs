//! [`Signal`]: threads block until a condition holds; others announce that it may hold now.

use crate::sync::{dekker_fence, lock, wait, wait_timeout, AtomicUsize, Condvar, Mutex, Ordering};
use std::time::Instant;

/// A condition variable with a count of its waiters, so that announcing a change costs one
/// atomic load while nobody waits.
///
/// No wake-up is lost as long as the state the condition reads is changed with `SeqCst` before
/// [`Signal::notify`], and read with `SeqCst` by the condition: a waiter counts itself before
/// its check, a notifier changes the state before it reads the count, so at least one of them
/// sees the other (the Dekker pattern), and the notifier takes the lock before notifying, so a
/// waiter that saw the old state is already waiting by then.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Signal {
    /// Blocks until `ready()` returns true, or `deadline` passes. Returns the last `ready()`.
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        if ready() {
            return true;
        }
        // ORDERING: SeqCst, see the type's docs.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        dekker_fence();
        let mut guard = lock(&self.lock);
        let result = loop {
            if ready() {
                break true;
            }
            guard = match deadline {
                None => wait(&self.condvar, guard),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break false;
                    }
                    wait_timeout(&self.condvar, guard, deadline - now)
                }
            };
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Wakes every waiter to re-check its condition.
    pub(crate) fn notify(&self) {
        // ORDERING: SeqCst, see the type's docs.
        dekker_fence();
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.lock);
            self.condvar.notify_all();
        }
    }
}
