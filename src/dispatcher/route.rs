//! Producers: a dispatch enters the gate, finds its key's mailbox in the map (or creates it
//! under the shard's write lock) and pushes its job there, scheduling the key if that made it
//! Queued (see `tokens`). Where there is no room, in the gate or in the key, it waits as its
//! [`Wait`] allows. Flush barriers are registered here too, as a producer would push a job.

use super::core::{Core, Item, Wait};
use crate::{
    error::{Bound, DispatchError, WaitError},
    gate::Refused,
    keymap::{Hashed, Keyed},
    latch::Latch,
    mailbox::{Mailbox, Push, Waited},
    stats::Refusal,
    sync::Arc,
    unwind::{drop_contained, ShowKey},
};
use std::{fmt::Debug, hash::Hash, time::Instant};

/// Gives back a slot of the gate that a dispatch took, unless disarmed: routing runs the key's
/// `Eq`, which may panic.
pub(super) struct Reserved<'a, K, J>(pub(super) &'a Core<K, J>)
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static;

impl<K, J> Reserved<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(super) fn disarm(self) {
        std::mem::forget(self);
    }
}

impl<K, J> Drop for Reserved<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn drop(&mut self) {
        self.0.left(1);
    }
}

/// What a producer's push did, as `route` sees it: the mailbox to schedule, if any, or the
/// refused job with the mailbox to wait on if the key was full.
type Pushed<K, J> = Result<Option<Arc<Mailbox<K, J>>>, (J, Option<Arc<Mailbox<K, J>>>)>;

/// What happened to a new key's mailbox under the map's write lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filing {
    Filed,
    /// Another producer created the key first.
    Present,
    /// `close_now` has begun.
    Halted,
}

/// How a job comes to its key, as `route`'s `DUE` parameter (a constant, so that the
/// producers' path is compiled without the other case): from a producer, bounded by the key's
/// capacity and counted as it is queued.
pub(super) const DISPATCHED: bool = false;
/// A delayed job whose delay is over (see `delay`): accepted and counted when it was
/// dispatched, so it joins its key's queue whatever the key holds.
pub(super) const DUE: bool = true;

/// What one try at dispatching did ([`Core::try_send`]).
pub(crate) enum Tried<K, J> {
    Sent,
    /// Closed; the error holds the job.
    Refused(DispatchError<K, J>),
    /// No room in `Room`; the caller may wait for it and try again.
    NoRoom(K, Item<J>, Room<K, J>),
}

/// Where a dispatch found no room.
pub(crate) enum Room<K, J> {
    /// The dispatcher's capacity, in the gate: waiters queue in `Core::room`.
    Dispatcher,
    /// The key's queue: waiters queue in its mailbox.
    Key(Arc<Mailbox<K, J>>),
}

/// What routing a job to its key's mailbox did.
pub(super) enum Routed<K, J> {
    /// Queued behind the key's other jobs; the key, unless the map keeps it, comes back to be
    /// dropped once the job's slot is no longer the caller's to give back.
    Added(Option<K>),
    /// Queued on an Idle or new key, which must be scheduled.
    Schedule(Arc<Mailbox<K, J>>, Option<K>),
    /// The key is full; wait on its mailbox for room.
    Full(K, Item<J>, Arc<Mailbox<K, J>>),
    /// `close_now` has begun.
    Halted(K, Item<J>),
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// `dispatch`'s wait: forever, except on a worker thread of this dispatcher's pool, where
    /// waiting for room could deadlock.
    pub(crate) fn blocking(&self) -> Wait {
        if self.pool.must_not_block() {
            Wait::Never
        } else {
            Wait::Forever
        }
    }

    /// Dispatches `item` on `key`, waiting for room as `wait` allows. A refused item's group
    /// reference is dropped; the caller undoes its count.
    pub(crate) fn send(
        &self,
        mut key: K,
        mut item: Item<J>,
        wait: Wait,
    ) -> Result<(), DispatchError<K, J>> {
        // The key's one call of `Hash`, before anything that would need undoing if it panics.
        let hash = self.keys.hash(&key);
        loop {
            let (k, i, room) = match self.try_send(hash, key, item) {
                Tried::Sent => return Ok(()),
                Tried::Refused(err) => return Err(err),
                Tried::NoRoom(k, i, room) => (k, i, room),
            };
            let deadline = match wait {
                Wait::Never => {
                    let bound = match room {
                        Room::Dispatcher => Bound::Dispatcher,
                        Room::Key(_) => Bound::Key,
                    };
                    return Err(self.refuse(too_full(wait, k, i.job, bound)));
                }
                Wait::Forever => None,
                Wait::Until(deadline) => Some(deadline),
            };
            match room {
                Room::Dispatcher => {
                    if !self.wait_for_global_room(deadline) {
                        let bound = Bound::Dispatcher;
                        return Err(self.refuse(too_full(wait, k, i.job, bound)));
                    }
                }
                Room::Key(mailbox) => {
                    let capacity = self.config.key_capacity;
                    let waited = self
                        .counters
                        .blocked(|| mailbox.wait_for_room(capacity, deadline, &self.gate));
                    match waited {
                        Waited::Retry => {}
                        Waited::Granted => return self.send_granted(mailbox, k, i, wait),
                        Waited::TimedOut => {
                            return Err(self.refuse(too_full(wait, k, i.job, Bound::Key)));
                        }
                    }
                }
            }
            (key, item) = (k, i);
        }
    }

    /// `send`, once granted room in `mailbox`: waits for the gate's room as `wait` allows.
    fn send_granted(
        &self,
        mailbox: Arc<Mailbox<K, J>>,
        mut key: K,
        mut item: Item<J>,
        wait: Wait,
    ) -> Result<(), DispatchError<K, J>> {
        let deadline = match wait {
            Wait::Until(deadline) => Some(deadline),
            Wait::Never | Wait::Forever => None,
        };
        loop {
            match self.try_send_granted(&mailbox, key, item) {
                Tried::Sent => return Ok(()),
                Tried::Refused(err) => return Err(err),
                Tried::NoRoom(k, i, _) => {
                    if !self.wait_for_global_room(deadline) {
                        self.release_room(mailbox);
                        let bound = Bound::Dispatcher;
                        return Err(self.refuse(too_full(wait, k, i.job, bound)));
                    }
                    (key, item) = (k, i);
                }
            }
        }
    }

    /// Enters the gate, waiting for nothing.
    pub(super) fn try_enter(&self) -> Result<(), Refused> {
        self.gate
            .enter(self.config.admitted)
            .map_err(|(refused, emptied)| {
                if emptied {
                    self.progressed();
                }
                refused
            })
    }

    /// One try at dispatching `item` on `key`, whose hash is `hash`, waiting for nothing.
    pub(crate) fn try_send(&self, hash: u64, key: K, item: Item<J>) -> Tried<K, J> {
        if let Err(refused) = self.try_enter() {
            return match refused {
                Refused::Closed => {
                    let job = item.job;
                    Tried::Refused(self.refuse(DispatchError::Closed { key, job }))
                }
                Refused::Full => Tried::NoRoom(key, item, Room::Dispatcher),
            };
        }
        let reserved = Reserved(self);
        let stamp = self.latency.is_some().then(Instant::now);
        let routed = self.route::<DISPATCHED>(hash, key, item, stamp);
        reserved.disarm();
        match routed {
            Routed::Added(key) => {
                drop_accepted(key);
                Tried::Sent
            }
            Routed::Schedule(mailbox, key) => {
                self.schedule(mailbox);
                drop_accepted(key);
                Tried::Sent
            }
            Routed::Halted(key, refused) => {
                self.left(1);
                let job = refused.job;
                Tried::Refused(self.refuse(DispatchError::Closed { key, job }))
            }
            Routed::Full(key, item, mailbox) => {
                self.left(1);
                Tried::NoRoom(key, item, Room::Key(mailbox))
            }
        }
    }

    /// One try at dispatching `item` on `key` in the room `mailbox` granted it (see
    /// `waiters`): enters the gate, then queues the job in that room. Without room in the gate,
    /// the grant is kept; refused, it is given back.
    pub(crate) fn try_send_granted(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        key: K,
        item: Item<J>,
    ) -> Tried<K, J> {
        match self.try_enter() {
            Ok(()) => match self.push_granted(mailbox, key, item) {
                Ok(()) => Tried::Sent,
                Err(err) => Tried::Refused(err),
            },
            Err(Refused::Full) => Tried::NoRoom(key, item, Room::Dispatcher),
            Err(Refused::Closed) => {
                self.release_room(Arc::clone(mailbox));
                let job = item.job;
                Tried::Refused(self.refuse(DispatchError::Closed { key, job }))
            }
        }
    }

    /// Whether a dispatch waiting for room in the gate should try again: it has room, or is
    /// closed.
    pub(super) fn has_room(&self) -> bool {
        self.gate.is_closed() || self.gate.count() < self.config.admitted
    }

    /// Blocks until the gate may have room or closes, or `deadline` passes; false on timeout.
    fn wait_for_global_room(&self, deadline: Option<Instant>) -> bool {
        self.counters
            .blocked(|| self.room.wait_until(deadline, || self.has_room()))
    }

    /// Takes a slot of the gate, waiting for one as `wait` allows.
    #[inline]
    pub(super) fn admit(&self, wait: Wait) -> Result<(), Refused> {
        loop {
            let Err(refused) = self.try_enter() else {
                return Ok(());
            };
            let deadline = match wait {
                Wait::Never => return Err(refused),
                Wait::Forever => None,
                Wait::Until(deadline) => Some(deadline),
            };
            if refused == Refused::Closed || !self.wait_for_global_room(deadline) {
                return Err(refused);
            }
        }
    }

    /// Pushes `item` into `key`'s mailbox, creating it if the key has none. The caller has
    /// entered the gate. `hash` is the key's (see `keymap`).
    pub(super) fn route<const DUE: bool>(
        &self,
        hash: u64,
        mut key: K,
        item: Item<J>,
        stamp: Option<Instant>,
    ) -> Routed<K, J> {
        // The mailbox takes the group only with the job; a refused job gets it back here.
        let Item { mut job, mut group } = item;
        loop {
            // Fast path: the key has a mailbox; push under the shard's read lock.
            let found = self
                .keys
                .get(Hashed { hash, key: &key }, job, |mailbox, job| {
                    self.push::<DUE>(mailbox, job, stamp, &mut group)
                });
            match found {
                Ok(Ok(None)) => return Routed::Added(Some(key)),
                Ok(Ok(Some(mailbox))) => return Routed::Schedule(mailbox, Some(key)),
                Ok(Err((job, Some(mailbox)))) => {
                    return Routed::Full(key, Item { job, group }, mailbox);
                }
                Ok(Err((job, None))) => return Routed::Halted(key, Item { job, group }),
                Err(refused) => job = refused,
            }
            // Slow path: a mailbox for the key, made before the shard's write lock is taken,
            // filed under it unless another producer created the key meanwhile.
            let mut mailbox = self.mailbox_for(key, hash, job, group.take(), stamp);
            let (filing, unfiled) =
                self.keys
                    .insert_unless_present(Arc::clone(&mailbox), |existing| {
                        let filing = match existing {
                            Some(_) => Filing::Present,
                            // Checked under the write lock: `close_now` sets the flag before it
                            // drains the map, so a mailbox filed here is either drained or
                            // never filed.
                            None if self.gate.halt_seen() => Filing::Halted,
                            None => {
                                if !DUE {
                                    self.counters.accepted();
                                }
                                Filing::Filed
                            }
                        };
                        (filing, filing == Filing::Filed)
                    });
            drop(unfiled);
            if filing == Filing::Filed {
                log::trace!(
                    "{}: key {} created",
                    self.config.name,
                    ShowKey(mailbox.key())
                );
                return Routed::Schedule(mailbox, None);
            }
            let unshared = Arc::get_mut(&mut mailbox).expect("an unfiled mailbox is unshared");
            (key, job, group) = unshared.unmake();
            self.keep_spares(&mut vec![mailbox]);
            if filing == Filing::Halted {
                return Routed::Halted(key, Item { job, group });
            }
            // Present: push into the other producer's mailbox, through the fast path.
        }
    }

    /// Pushes `job` into the mailbox found for its key, counting it if accepted.
    fn push<const DUE: bool>(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        job: J,
        stamp: Option<Instant>,
        group: &mut Option<Arc<Latch>>,
    ) -> Pushed<K, J> {
        let capacity = if DUE {
            usize::MAX
        } else {
            self.config.key_capacity
        };
        match mailbox.push_stamped(job, stamp, group, capacity, &self.gate, || {
            if !DUE {
                self.counters.accepted();
            }
        }) {
            Push::Added => Ok(None),
            Push::Held => {
                self.held_more();
                Ok(None)
            }
            Push::Schedule => Ok(Some(Arc::clone(mailbox))),
            Push::Full(job) => Err((job, Some(Arc::clone(mailbox)))),
            Push::Halted(job) => Err((job, None)),
        }
    }

    /// A mailbox for a new key holding `job`: a spare one if there is one at hand, else a fresh
    /// one.
    fn mailbox_for(
        &self,
        key: K,
        hash: u64,
        job: J,
        group: Option<Arc<Latch>>,
        stamp: Option<Instant>,
    ) -> Arc<Mailbox<K, J>> {
        // Not waiting for a sweeper that is putting spares back: allocating is as good.
        let spare = self
            .spares
            .try_lock()
            .ok()
            .and_then(|mut spares| spares.pop());
        let mut mailbox = match spare {
            Some(mut mailbox) => {
                let unshared = Arc::get_mut(&mut mailbox).expect("a spare mailbox is unshared");
                unshared.reuse(key, hash, job, group);
                mailbox
            }
            None => Arc::new(Mailbox::new(key, hash, job, group)),
        };
        if let Some(stamp) = stamp {
            Arc::get_mut(&mut mailbox)
                .expect("a new mailbox is unshared")
                .stamp_first(stamp);
        }
        mailbox
    }

    pub(super) fn refuse(&self, err: DispatchError<K, J>) -> DispatchError<K, J> {
        self.counters.refused(match &err {
            DispatchError::Full {
                bound: Bound::Key, ..
            } => Refusal::FullKey,
            DispatchError::Full { .. } => Refusal::FullDispatcher,
            DispatchError::Timeout { .. } => Refusal::TimedOut,
            DispatchError::Closed { .. } => Refusal::Closed,
        });
        err
    }

    /// `n` jobs (or reservations) left the gate.
    pub(super) fn left(&self, n: usize) {
        if self.gate.leave(n) {
            self.progressed();
        }
        self.room.notify(n);
    }

    /// Blocks until every job of `key` pushed before the call has finished (or was handed
    /// back), or `deadline` passes. See `mailbox` for the barrier it waits on.
    pub(crate) fn flush_key(&self, key: &K, deadline: Option<Instant>) -> Result<(), WaitError> {
        if self.pool.must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        match self.flush_barrier(key) {
            Some(barrier) if !barrier.wait(deadline) => Err(WaitError::Timeout),
            _ => Ok(()),
        }
    }

    /// Registers a flush barrier behind `key`'s jobs; `None` if it has none queued or running.
    pub(crate) fn flush_barrier(&self, key: &K) -> Option<Arc<Latch>> {
        let hash = self.keys.hash(key);
        // Under the shard's read lock, so the mailbox found is the key's current one; one that
        // was evicted had finished every job pushed into it.
        self.keys
            .get(Hashed { hash, key }, (), |mailbox, ()| mailbox.flush())
            .ok()
            .flatten()
    }
}

/// Drops the key of an accepted dispatch. The job is queued: a panic of the key's `Drop` must not
/// make the caller think otherwise, so it is caught and logged (see `unwind`).
pub(super) fn drop_accepted<K>(key: Option<K>) {
    if let Some(key) = key {
        drop_contained(key);
    }
}

/// The error for a dispatch that found no room and could not wait, or waited in vain.
fn too_full<K, J>(wait: Wait, key: K, job: J, bound: Bound) -> DispatchError<K, J> {
    match wait {
        Wait::Until(_) => DispatchError::Timeout { key, job },
        Wait::Never | Wait::Forever => DispatchError::Full { key, job, bound },
    }
}
