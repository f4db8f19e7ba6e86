//! Room in a key: the producers waiting in its line (see `waiters`), the room its turns
//! grant them, and room held by permits (`Dispatcher::reserve`). Held room counts against the
//! key's capacity until the job is pushed or the room given back, and keeps the key in the map
//! meanwhile (a sweep evicts no key with room held, see `Mailbox::try_evict`).

use super::{Inner, Mailbox, Push, State};
use crate::{
    gate::Gate,
    latch::Latch,
    sync::{fault, lock, Arc, AtomicBool},
    waiters::{Waiter, Wakeups},
};
use std::time::Instant;

/// How a producer waiting for room in a key stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Granted room, held for it: its job goes in with [`Mailbox::push_reserved`].
    Granted,
    /// Woken without a grant: try again through the gate and the map.
    Retry,
    TimedOut,
}

/// What [`Mailbox::reserve`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reserve {
    Reserved,
    Full,
    /// `close_now` has begun.
    Halted,
}

impl<J> Inner<J> {
    /// Room for `n` more jobs was freed: grants it to as many waiting producers, holding it
    /// for them (see `waiters`).
    pub(super) fn grant_room(&mut self, n: usize, wakeups: &mut Wakeups) {
        let granted = self.waiting.grant(n, wakeups);
        // At most the key's capacity plus one: it fits.
        self.reserved += granted as u32;
    }
}

impl<K, J> Mailbox<K, J> {
    /// Producer: blocks until the key grants it room (see `waiters`), or may have room (the
    /// mailbox is evicted, the dispatcher closed, the queue emptied: the caller tries again
    /// through the gate and the map), or `deadline` passes.
    pub(crate) fn wait_for_room(
        &self,
        capacity: usize,
        deadline: Option<Instant>,
        gate: &Gate,
    ) -> Waited {
        let Some(waiter) = self.wait_in_line(capacity, gate) else {
            return Waited::Retry;
        };
        // A notification that came as the deadline passed is taken, as if it came first.
        if !waiter.block(deadline) && lock(&self.inner).waiting.remove(&waiter) {
            return Waited::TimedOut;
        }
        if waiter.granted() {
            Waited::Granted
        } else {
            Waited::Retry
        }
    }

    /// Producer: queues a new waiter for room in the key, unless the key has room, is evicted,
    /// or the dispatcher closed (then `None`: try again now). The closed flag is read under
    /// this lock, which `wake_producers` takes after setting it: a producer either sees it here
    /// or is queued when the wake-up comes.
    pub(crate) fn wait_in_line(&self, capacity: usize, gate: &Gate) -> Option<Arc<Waiter>> {
        let mut inner = lock(&self.inner);
        if inner.state == State::Evicted || !inner.is_full(capacity) || gate.is_closed() {
            return None;
        }
        // Made under the lock: the room often frees before a producer would need it.
        let waiter = Waiter::new();
        inner.waiting.push(Arc::clone(&waiter));
        Some(waiter)
    }

    /// A task's `waiter` stopped waiting before it took its notification: takes it out of the
    /// line, or gives back the room it was granted (step 3 of `waiters`). Returns true if the
    /// key is left Idle with nothing to list it for eviction (the caller lists it).
    pub(crate) fn leave_line(&self, waiter: &Arc<Waiter>) -> bool {
        let mut wakeups = Wakeups::default();
        let mut inner = lock(&self.inner);
        if inner.waiting.remove(waiter) || !waiter.granted() {
            return false;
        }
        Self::unreserve_locked(&mut inner, &mut wakeups)
    }

    /// `close`: pops the producers waiting for room in this key into `wakeups`, for the caller
    /// to wake once it holds no lock (the map's, here), so that they see the dispatcher closed.
    pub(crate) fn wake_producers(&self, wakeups: &mut Wakeups) {
        lock(&self.inner).waiting.notify_all(wakeups);
    }

    /// A mailbox for `key` with no job and one slot held, Idle and not listed: `reserve` of an
    /// absent key files it.
    pub(crate) fn new_reserved(key: K, hash: u64) -> Self {
        let mut mailbox = Mailbox::new_paused(key, hash);
        let inner = mailbox
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        inner.paused = false;
        inner.reserved = 1;
        mailbox.stop = AtomicBool::new(false);
        mailbox
    }

    /// Producer, under the map shard's lock that found this mailbox: holds one slot of the
    /// key's room unless it has none.
    pub(crate) fn reserve(&self, capacity: usize, gate: &Gate) -> Reserve {
        let mut inner = lock(&self.inner);
        if gate.halt_seen() {
            return Reserve::Halted;
        }
        if inner.is_full(capacity) || inner.reserved == u32::MAX {
            return Reserve::Full;
        }
        inner.reserved += 1;
        Reserve::Reserved
    }

    /// The job of a permit, or of a producer granted room (see `waiters`): queued in the slot
    /// held for it, whatever the key holds. `close_now` may have taken the key meanwhile: then
    /// `Halted`, with the job. `group` as in [`Mailbox::push`].
    pub(crate) fn push_reserved(
        &self,
        job: J,
        stamp: Option<Instant>,
        group: &mut Option<Arc<Latch>>,
        gate: &Gate,
        accepted: impl FnOnce(),
    ) -> Push<J> {
        let mut inner = lock(&self.inner);
        inner.reserved -= 1;
        if gate.halt_seen() || inner.state == State::Evicted {
            return Push::Halted(job);
        }
        self.push_locked(inner, job, stamp, group, usize::MAX, gate, accepted)
    }

    /// A slot held and not used (a permit dropped, a granted producer refused or gone): gives
    /// it to the next producer waiting for room, and returns true if the key is left Idle with
    /// nothing to list it for eviction (the caller lists it).
    pub(crate) fn unreserve(&self) -> bool {
        let mut wakeups = Wakeups::default();
        let mut inner = lock(&self.inner);
        Self::unreserve_locked(&mut inner, &mut wakeups)
    }

    /// [`Mailbox::unreserve`], under the lock.
    pub(super) fn unreserve_locked(inner: &mut Inner<J>, wakeups: &mut Wakeups) -> bool {
        inner.reserved -= 1;
        if !fault!(AbandonedNotifyLost) {
            inner.grant_room(1, wakeups);
        }
        Self::list_if_idle(inner)
    }

    fn list_if_idle(inner: &mut Inner<J>) -> bool {
        if inner.state == State::Idle && !inner.listed && inner.reserved == 0 && !inner.paused {
            inner.listed = true;
            inner.used = true;
            return true;
        }
        false
    }
}
