//! A mailbox leaving service and coming back: eviction from the map, its entry in the idle
//! list, and its reuse as a spare for another key.

use super::{Mailbox, State, SPARE_QUEUE_BYTES};
use crate::{
    latch::Latch,
    sync::{fault, lock, Arc, Ordering},
    unwind::drop_contained,
};

impl<K, J> Mailbox<K, J> {
    /// Makes a spare the mailbox of `key`, holding `job`, as [`Mailbox::new`] would, but
    /// keeping its allocations.
    pub(crate) fn reuse(&mut self, key: K, hash: u64, job: J, group: Option<Arc<Latch>>) {
        self.refill(job, group);
        self.key = Some(key);
        self.hash = hash;
    }

    /// Takes a mailbox that [`Mailbox::new`] or [`Mailbox::reuse`] just made, and that was
    /// never shared, apart again: its key, its job and the job's group. It is left a spare.
    pub(crate) fn unmake(&mut self) -> (K, J, Option<Arc<Latch>>) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        debug_assert_eq!((inner.state, inner.queue.len()), (State::Queued, 1));
        let job = inner
            .queue
            .pop_front()
            .expect("a new mailbox holds its job");
        let group = inner.marks.pop_front().map(|mark| mark.state);
        inner.state = State::Evicted;
        inner.stamps = None;
        self.queued.store(0, Ordering::Relaxed);
        (
            self.key.take().expect("a new mailbox has its key"),
            job,
            group,
        )
    }

    /// Turns an evicted mailbox that nothing else refers to any more into a spare, dropping
    /// its key (here: an evicted key is not kept alive by its spare; the caller holds no lock)
    /// and a queue buffer grown past [`SPARE_QUEUE_BYTES`]. Returns false, leaving it as it
    /// is, if it is not evicted and empty, as eviction leaves it.
    pub(crate) fn retire(&mut self) -> bool {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        if inner.state != State::Evicted || !inner.queue.is_empty() || !inner.marks.is_empty() {
            return false;
        }
        inner.queue.shrink(SPARE_QUEUE_BYTES);
        if let Some(key) = self.key.take() {
            drop_contained(key);
        }
        true
    }

    /// The key of a mailbox that nothing else refers to any more, taken out of it (which is
    /// left a spare).
    pub(crate) fn into_key(mut self) -> K {
        self.key.take().expect("a spare mailbox was shared")
    }

    /// Sweeper: called under the map shard's write lock with this key's entry; marks the
    /// mailbox Evicted and returns true if it is Idle. Either way its idle-list entry is
    /// consumed.
    pub(crate) fn try_evict(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        inner.used = false;
        if inner.state == State::Idle
            && !inner.paused
            && (inner.reserved == 0 || fault!(SweepEvictsReservedKeys))
        {
            debug_assert!(inner.queue.is_empty() && inner.in_turn == 0);
            debug_assert!(inner.marks.is_empty(), "an idle key kept a mark");
            // Freed room goes to waiters as grants, which keep the key from eviction.
            debug_assert!(
                inner.waiting.is_empty(),
                "an idle key kept waiting producers"
            );
            inner.state = State::Evicted;
            true
        } else {
            false
        }
    }

    /// The shutdown, once the dispatcher has drained: marks the mailbox Evicted if it is Idle,
    /// as [`Mailbox::try_evict`], also if it holds room granted to a producer that has not yet
    /// used it (a granted producer holds no slot of the gate, so the drain does not wait for
    /// it): that producer finds the gate closed and gives the room back.
    pub(crate) fn evict_drained(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        inner.used = false;
        if inner.state == State::Idle && !inner.paused {
            debug_assert!(inner.queue.is_empty() && inner.in_turn == 0);
            inner.state = State::Evicted;
            true
        } else {
            false
        }
    }

    /// Sweeper: forgets the key's idle-list entry without evicting it (its eviction failed),
    /// so that the key is listed again when it next goes idle.
    pub(crate) fn unlist(&self) {
        let mut inner = lock(&self.inner);
        inner.listed = false;
        inner.used = false;
    }

    /// Sweeper, for a listed key: true if it was listed or scheduled since the last sweep that
    /// met it, in which case it stays listed and the sweeper files its entry again instead of
    /// evicting it. A key that comes back between two sweeps is thus kept; one that stays idle
    /// from one sweep to the next is evicted by the second. No map lock is needed: keeping a
    /// key is always safe.
    pub(crate) fn second_chance(&self) -> bool {
        let mut inner = lock(&self.inner);
        // Not listed any more if the shutdown evicted it meanwhile.
        let keep = inner.listed && inner.used;
        inner.used = false;
        keep
    }
}
