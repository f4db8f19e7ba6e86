//! Eviction: the idle list, the sweeps that evict idle keys, the spare mailboxes they keep,
//! and the pool timer that runs them. Apart from the turns, since a sweep runs from the timer,
//! from a token holder, from `wait_idle` or from the shutdown.
//!
//! # Eviction
//!
//! When a key's turn ends with its queue empty it becomes Idle and is entered in the idle list
//! (unless it is there already). A *sweep* evicts the listed keys that are still Idle, except
//! those listed or scheduled again since the last sweep met them: those get a second chance
//! and stay listed. Sweeps run from a pool timer every `idle_timeout`, or [`SWEEP_PERIOD`]
//! without one, armed by a token holder that runs out of ready keys while keys are listed. A
//! key that comes back within a period thus keeps its entry (re-creating it costs the map's
//! write lock and the producers' time), and a key idle for two periods is gone.
//!
//! Without an idle timeout, memory stays bounded by the live keys plus the list (and the
//! spares below): whenever the list grows past [`IDLE_LIST_MAX`], its oldest [`SPARES_MAX`]
//! entries are swept at once (no more than the spares can take, so that keys coming and going
//! reuse what such a sweep evicts), and `wait_idle` evicts every idle key at once. The
//! shutdown evicts every key in any case.
//!
//! A sweep keeps up to [`SPARES_MAX`] of the mailboxes it evicts as spares, for new keys: with
//! keys coming and going, a mailbox would otherwise be allocated by a producer and freed by a
//! worker for every key, and the allocator's locks would be contended between the two. A spare
//! holds no key (the evicted key is dropped when the mailbox is retired) and a small queue
//! buffer; a sweep that races the shutdown may leave a few spares until the dispatcher drops.

use super::core::Core;
use crate::{
    keymap::{Hashed, Keyed},
    mailbox::{EndTurn, Mailbox},
    pool::TimerKind,
    sync::{fault, lock, Arc, Ordering},
    unwind::{contained, ShowKey},
};
use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// Idle keys kept in the idle list before its oldest entries are swept even though the
/// dispatcher is busy. Measured against a shorter list and a growing one (DESIGN.md, "Variants
/// tried and dropped").
const IDLE_LIST_MAX: usize = 4096;

/// How often the idle list is swept while keys are listed, without an idle timeout (see the
/// module docs). `None` in the models, where a token holder that runs out of ready keys
/// sweeps the whole list at once, as the timer's sweeps would after two periods without work.
pub(super) const SWEEP_PERIOD: Option<Duration> = if crate::sync::CHECKED {
    None
} else {
    Some(Duration::from_millis(20))
};

/// Evicted mailboxes kept for new keys, so that keys coming and going do not allocate and free
/// a mailbox each (across threads: a worker frees what a producer allocated). More were faster
/// but hold more memory (DESIGN.md, "Variants tried and dropped").
const SPARES_MAX: usize = 1024;

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Evicts the keys of a swept part of the idle list that are still Idle. With
    /// `second_chance`, keys listed or scheduled since the last sweep are filed again instead
    /// (see `Mailbox::second_chance`).
    pub(super) fn sweep(
        &self,
        idle: impl IntoIterator<Item = Arc<Mailbox<K, J>>>,
        second_chance: bool,
    ) {
        let idle = idle.into_iter();
        // Sized up front: grown from empty, they were reallocated ten times a sweep, through
        // the allocator's locks that producers take too (DESIGN.md, "Variants tried and
        // dropped").
        let entries = idle.size_hint().0;
        let mut swept = 0;
        let mut kept = Vec::with_capacity(if second_chance { entries } else { 0 });
        let mut evicted_all = Vec::with_capacity(entries);
        for mailbox in idle {
            if second_chance && mailbox.second_chance() {
                kept.push(mailbox);
                continue;
            }
            swept += 1;
            let early = fault!(EvictBeforeMapLock) && mailbox.try_evict();
            let key = Hashed {
                hash: mailbox.stored_hash(),
                key: mailbox.key(),
            };
            // The map compares keys with their `Eq`; should it panic, the key stays, idle,
            // until it runs again or the shutdown evicts it.
            let evicted = contained(|| {
                self.keys.remove_if(key, |current| {
                    Arc::ptr_eq(current, &mailbox) && (early || current.try_evict())
                })
            });
            match evicted {
                Some(true) => {
                    log::trace!(
                        "{}: key {} evicted",
                        self.config.name,
                        ShowKey(mailbox.key())
                    );
                    evicted_all.push(mailbox);
                }
                Some(false) => {}
                None => mailbox.unlist(),
            }
        }
        if !kept.is_empty() {
            let mut sched = lock(&self.sched);
            if sched.cleared {
                // The shutdown evicted every key meanwhile.
                swept += kept.len();
            } else {
                sched.idle.extend(kept.drain(..));
                drop(sched);
                // A timer that found the list empty meanwhile has disarmed.
                self.set_timer();
            }
        }
        self.keep_spares(&mut evicted_all);
        // ORDERING: SeqCst, see `Signal`; the keys are out of the map before this is announced.
        if swept > 0 && self.listed.fetch_sub(swept, Ordering::SeqCst) == swept {
            self.progressed();
        }
    }

    /// Files a key whose turn ended: back on the ready queue, or into the idle list. Returns
    /// the oldest idle keys, for the caller to sweep, if the list grew too long.
    pub(super) fn file(
        &self,
        mailbox: Arc<Mailbox<K, J>>,
        end: EndTurn,
    ) -> Option<Vec<Arc<Mailbox<K, J>>>> {
        match end {
            EndTurn::Requeue => self.ready.push(mailbox),
            EndTurn::Idle { list: true } => {
                let mut sched = lock(&self.sched);
                sched.idle.push_back(mailbox);
                // Not with an idle timeout, which keeps every key for at least that long.
                let overflow =
                    sched.idle.len() > IDLE_LIST_MAX && self.config.idle_timeout.is_none();
                return overflow.then(|| sched.idle.drain(..SPARES_MAX).collect());
            }
            // A Waiting key was filed in the backoff heap by its worker.
            EndTurn::Idle { list: false } | EndTurn::Halted | EndTurn::Backoff | EndTurn::Held => {}
        }
        None
    }

    /// Arms the pool timer that sweeps the idle list (see `sweep_period`).
    pub(super) fn set_timer(&self) {
        let Some(delay) = self.sweep_period() else {
            return;
        };
        // An instant past what the clock can count is never due: no sweep then.
        let Some(due) = Instant::now().checked_add(delay) else {
            return;
        };
        // ORDERING: SeqCst, paired with `on_sweep_timer`'s disarm-then-recheck.
        if !self.timer_set.swap(true, Ordering::SeqCst) {
            self.pool.set_timer(due, self.as_client(), TimerKind::Sweep);
        }
    }

    /// The sweep timer: sweeps the idle list, giving the keys listed or scheduled since the
    /// last sweep a second chance, and comes back after another period while keys remain
    /// listed.
    pub(super) fn on_sweep_timer(&self, now: Instant) -> Option<Instant> {
        let period = self.sweep_period()?;
        let idle = std::mem::take(&mut lock(&self.sched).idle);
        self.sweep(idle, true);
        let listed = || !lock(&self.sched).idle.is_empty();
        if listed() {
            return now.checked_add(period);
        }
        // Disarm, then look again: a worker that listed a key meanwhile saw the timer armed.
        self.timer_set.store(false, Ordering::SeqCst);
        if listed() && !self.timer_set.swap(true, Ordering::SeqCst) {
            return now.checked_add(period);
        }
        None
    }

    /// Keeps evicted mailboxes that nothing else refers to as spares, up to [`SPARES_MAX`];
    /// drops the others. Each is checked empty, so that a job stranded in an evicted mailbox
    /// by a broken eviction is lost (and shows in the models) rather than run under the next
    /// key to reuse the mailbox. Called without locks: retiring drops the evicted keys.
    pub(super) fn keep_spares(&self, evicted: &mut Vec<Arc<Mailbox<K, J>>>) {
        evicted.retain_mut(|mailbox| Arc::get_mut(mailbox).is_some_and(Mailbox::retire));
        if evicted.is_empty() {
            return;
        }
        let mut spares = lock(&self.spares);
        let room = SPARES_MAX.saturating_sub(spares.len());
        let keep = evicted.len().min(room);
        spares.extend(evicted.drain(..keep));
        drop(spares);
        evicted.clear();
    }

    /// How often the idle list is swept while keys are listed: every `idle_timeout`, else
    /// every [`SWEEP_PERIOD`].
    pub(super) fn sweep_period(&self) -> Option<Duration> {
        self.config.idle_timeout.or(SWEEP_PERIOD)
    }
}
