//! Permits: room held for one job of a key ([`Dispatcher::reserve`]), so that a producer can
//! wait for room first and give the job only once it is sure to be accepted. The room a key
//! grants a waiting producer (see `waiters`) is held the same way, and its job goes in the
//! same way ([`Core::push_granted`]).
//!
//! A permit holds a slot of the gate (so `close` waits for it, as for a queued job) and a slot
//! of its key's room (see `mailbox::room`; the key's mailbox is created, Idle, if it had
//! none, and is not evicted while room is held in it). [`Permit::dispatch`] queues the job in
//! that slot; dropping the permit gives both slots back, waking the next producer waiting for
//! each.

use super::{
    core::{Core, Item},
    route::{drop_accepted, Reserved, Room},
    Dispatcher,
};
use crate::{
    error::DispatchError,
    gate::Refused,
    keymap::Hashed,
    mailbox::{Mailbox, Push, Reserve},
    sync::{Arc, Ordering},
};
use std::{
    fmt::{self, Debug},
    hash::Hash,
    time::Instant,
};

/// What one try at reserving did.
pub(super) enum Tried<K, J> {
    Held(Arc<Mailbox<K, J>>),
    Closed,
    NoRoom(Room<K, J>),
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// One try at holding room for a job of `key`, whose hash is `hash`, waiting for nothing.
    pub(super) fn try_reserve(&self, hash: u64, key: &K) -> Tried<K, J> {
        if let Err(refused) = self.try_enter() {
            return match refused {
                Refused::Closed => Tried::Closed,
                Refused::Full => Tried::NoRoom(Room::Dispatcher),
            };
        }
        let reserved = Reserved(self);
        let capacity = self.config.key_capacity;
        let tried = loop {
            let found = self.keys.get(Hashed { hash, key }, (), |mailbox, ()| {
                (mailbox.reserve(capacity, &self.gate), Arc::clone(mailbox))
            });
            match found {
                Ok((Reserve::Reserved, mailbox)) => break Tried::Held(mailbox),
                Ok((Reserve::Full, mailbox)) => break Tried::NoRoom(Room::Key(mailbox)),
                Ok((Reserve::Halted, _)) => break Tried::Closed,
                Err(()) => {}
            }
            // Outside the map's locks: the key's `Clone` is user code. If it panics, `reserved`
            // gives the slot back as the panic unwinds.
            let mailbox = Arc::new(Mailbox::new_reserved(key.clone(), hash));
            let (filed, unfiled) =
                self.keys
                    .insert_unless_present(Arc::clone(&mailbox), |existing| match existing {
                        Some(_) => (None, false),
                        // Checked under the write lock, as `route` does.
                        None if self.gate.halt_seen() => (Some(false), false),
                        None => (Some(true), true),
                    });
            drop(unfiled);
            match filed {
                Some(true) => break Tried::Held(mailbox),
                Some(false) => break Tried::Closed,
                // Another producer created the key first: reserve in its mailbox.
                None => {}
            }
        };
        reserved.disarm();
        if !matches!(tried, Tried::Held(_)) {
            self.left(1);
        }
        tried
    }

    /// Queues `item` in the room held for it in `mailbox` (by a permit, or granted to a
    /// waiting producer); the caller has entered the gate. Refused only once `close_now` has
    /// begun, as [`Permit::dispatch`] says; the item's group reference is then dropped, and the
    /// caller undoes its count.
    pub(super) fn push_granted(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        key: K,
        item: Item<J>,
    ) -> Result<(), DispatchError<K, J>> {
        let Item { job, mut group } = item;
        let stamp = self.latency.is_some().then(Instant::now);
        let accepted = || self.counters.accepted();
        match mailbox.push_reserved(job, stamp, &mut group, &self.gate, accepted) {
            Push::Added => {}
            Push::Held => self.held_more(),
            Push::Schedule => self.schedule(Arc::clone(mailbox)),
            Push::Halted(job) => {
                self.left(1);
                return Err(self.refuse(DispatchError::Closed { key, job }));
            }
            Push::Full(_) => unreachable!("the room is held"),
        }
        drop_accepted(Some(key));
        Ok(())
    }

    /// Gives back room held in `mailbox` and not used, to the next producer waiting for it.
    pub(super) fn release_room(&self, mailbox: Arc<Mailbox<K, J>>) {
        if mailbox.unreserve() {
            self.list_idle(mailbox);
        }
    }
}

/// Room held for one job of a key: see [`Dispatcher::reserve`].
///
/// [`dispatch`](Permit::dispatch) queues the job in it; dropping the permit unused gives the
/// room back to the next producer waiting for it. `close` (and `wait_idle`) wait for every
/// permit to be used or dropped, as for queued jobs; `close_now` and `close_timeout` do not:
/// a permit used after them hands its job back as [`DispatchError::Closed`].
#[must_use = "dropping a permit gives its room back"]
pub struct Permit<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    core: &'a Core<K, J>,
    key: Option<K>,
    mailbox: Option<Arc<Mailbox<K, J>>>,
}

impl<'a, K, J> Permit<'a, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(super) fn new(core: &'a Core<K, J>, key: K, mailbox: Arc<Mailbox<K, J>>) -> Self {
        // Counted after its gate slot and uncounted before it: the shutdown's count of other
        // slots (`Core::in_flight`) may only come out high.
        core.permits.fetch_add(1, Ordering::SeqCst);
        Permit {
            core,
            key: Some(key),
            mailbox: Some(mailbox),
        }
    }

    /// The key the room is held in.
    pub fn key(&self) -> &K {
        self.key
            .as_ref()
            .expect("a permit keeps its key until used")
    }

    /// Queues `job` in the room held, behind the key's jobs dispatched before it.
    ///
    /// It cannot be refused for lack of room, nor by `close`, which waits for it. The one error
    /// is [`DispatchError::Closed`], with the job and its key, when
    /// [`close_now`](Dispatcher::close_now) (or a [`close_timeout`](Dispatcher::close_timeout)
    /// that ran out of time) began while the permit was held: the job would never run.
    pub fn dispatch(mut self, job: J) -> Result<(), DispatchError<K, J>> {
        let key = self.key.take().expect("a permit keeps its key until used");
        let mailbox = self.mailbox.take().expect("a permit is used once");
        self.core.permits.fetch_sub(1, Ordering::SeqCst);
        let item = Item { job, group: None };
        self.core.push_granted(&mailbox, key, item)
    }
}

impl<K, J> Drop for Permit<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            self.core.permits.fetch_sub(1, Ordering::SeqCst);
            self.core.release_room(mailbox);
            self.core.left(1);
        }
    }
}

impl<K, J> Debug for Permit<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("key", &self.key).finish()
    }
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Holds room for one job of `key` if there is some right now; never blocks. See
    /// [`reserve`](Dispatcher::reserve). `None` if there is no room or the dispatcher is
    /// closed.
    pub fn try_reserve(&self, key: &K) -> Option<Permit<'_, K, J>> {
        let copy = key.clone();
        let hash = self.core.keys.hash(key);
        match self.core.try_reserve(hash, key) {
            Tried::Held(mailbox) => Some(Permit::new(&self.core, copy, mailbox)),
            Tried::Closed | Tried::NoRoom(_) => None,
        }
    }
}
