//! Pausing, resuming and cancelling one key: `pause_key`, `resume_key`, `cancel_key`. The
//! key's side (the `Held` state, the `paused` flag, the running turn's stop hint) is in
//! `mailbox`; here the dispatcher's: finding or creating the key, scheduling a resumed key,
//! listing an emptied one for eviction, handing cancelled jobs out of the gate, and the count
//! of Held keys that `wait_idle` looks at.

use super::core::Core;
use crate::{
    error::WaitError,
    keymap::Hashed,
    mailbox::{Cancelled, Mailbox, Resumed},
    sync::{lock, Arc, Ordering},
    unwind::ShowKey,
};
use std::{fmt::Debug, hash::Hash};

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Pauses `key`, creating its mailbox (Idle, paused) if it has none. Does nothing once the
    /// dispatcher is closed.
    pub(crate) fn pause_key(&self, key: &K) {
        let hash = self.keys.hash(key);
        // Counted before the key's hint is set: a turn reads this count first, then the hint,
        // so a pause that happened before its running job ended is seen through both. Undone
        // below unless this call paused the key.
        self.stopping.fetch_add(1, Ordering::SeqCst);
        let found = self.keys.get(Hashed { hash, key }, (), |mailbox, ()| {
            mailbox.pause(&self.gate)
        });
        let paused = match found {
            Ok(paused) => paused,
            Err(()) => {
                if self.gate.is_closed() {
                    self.stopping.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                let mailbox = Arc::new(Mailbox::new_paused(key.clone(), hash));
                let (paused, unfiled) = self.keys.insert_unless_present(
                    Arc::clone(&mailbox),
                    |existing| match existing {
                        Some(existing) => (existing.pause(&self.gate), false),
                        // Checked under the write lock, before `close` resumes the keys
                        // it finds in the map.
                        None if self.gate.is_closed() => (None, false),
                        None => (Some(true), true),
                    },
                );
                drop(unfiled);
                paused
            }
        };
        if paused != Some(true) {
            self.stopping.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.counters.paused(1);
            log::debug!("{}: key {} paused", self.config.name, ShowKey(key));
        }
    }

    /// Resumes `key` if it is paused.
    pub(crate) fn resume_key(&self, key: &K) {
        let hash = self.keys.hash(key);
        let resumed = self.keys.get(Hashed { hash, key }, (), |mailbox, ()| {
            (Arc::clone(mailbox), mailbox.resume())
        });
        if let Ok((mailbox, resumed)) = resumed {
            self.resumed(mailbox, resumed);
        }
    }

    /// Files a key that [`Mailbox::resume`] unpaused: schedules it if it was Held, lists it
    /// for eviction if it is Idle and was not listed.
    pub(super) fn resumed(&self, mailbox: Arc<Mailbox<K, J>>, resumed: Resumed) {
        if !resumed.was_paused {
            return;
        }
        self.counters.paused(-1);
        self.stopping.fetch_sub(1, Ordering::SeqCst);
        log::debug!(
            "{}: key {} resumed",
            self.config.name,
            ShowKey(mailbox.key())
        );
        if resumed.schedule {
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.schedule(mailbox);
        } else if resumed.list {
            self.list_idle(mailbox);
        }
    }

    /// Takes `key`'s jobs that have not started, in order, waiting for its running job (if
    /// any) to end first.
    pub(crate) fn cancel_key(&self, key: &K) -> Result<Vec<J>, WaitError> {
        if self.pool.must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        let hash = self.keys.hash(key);
        let Ok(mailbox) = self
            .keys
            .get(Hashed { hash, key }, (), |mailbox, ()| Arc::clone(mailbox))
        else {
            return Ok(Vec::new());
        };
        // Outside the map's lock: it may wait for the running job, which stops at the hint.
        self.stopping.fetch_add(1, Ordering::SeqCst);
        let cancelled = mailbox.cancel();
        self.stopping.fetch_sub(1, Ordering::SeqCst);
        let Some(Cancelled {
            jobs,
            marks,
            was_held,
            list,
        }) = cancelled
        else {
            return Ok(Vec::new());
        };
        for mark in marks {
            mark.state.handed_back();
        }
        if was_held {
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        if list {
            self.list_idle(mailbox);
        }
        let n = jobs.len();
        self.counters.handed_back(n);
        self.left(n);
        Ok(Vec::from(jobs))
    }

    /// Enters an Idle key that nothing listed (created by `pause_key`, or emptied by
    /// `cancel_key`) in the idle list, so that a sweep evicts it once it is unpaused.
    pub(super) fn list_idle(&self, mailbox: Arc<Mailbox<K, J>>) {
        let mut sched = lock(&self.sched);
        if sched.cleared {
            return;
        }
        self.listed.fetch_add(1, Ordering::SeqCst);
        sched.idle.push_back(mailbox);
        drop(sched);
        self.set_timer();
    }

    /// A key became Held: `wait_idle` must look again.
    pub(super) fn held_more(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.idle.notify_all();
    }

    /// Whether a paused key holds jobs (that `wait_idle` would wait for in vain).
    pub(super) fn any_held(&self) -> bool {
        self.held.load(Ordering::SeqCst) > 0
    }
}
