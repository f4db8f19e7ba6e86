//! Closing a dispatcher, and waiting for it to go idle. The shutdown sequence and the races it
//! must win are told here, beside the code that performs them.
//!
//! # Shutdown sequence
//!
//! [`Dispatcher::close`](crate::Dispatcher::close) (and the drop of the dispatcher's last clone,
//! which calls it):
//!
//! 1. Sets the gate's closed flag with one atomic read-modify-write. Every dispatch that entered
//!    the gate before it is accepted and counted; every later one is refused with `Closed`.
//! 2. Wakes producers waiting for global room, so that they see the flag and get their job back.
//!    Producers waiting for room in one key's queue are woken too: each key's mailbox is
//!    notified under its lock, where a waiting producer reads the flag, so none sleeps on.
//! 3. Waits until the gate's count of accepted, unfinished jobs reaches zero. Workers keep
//!    running turns meanwhile, so every accepted job runs, in order per key.
//! 4. Evicts every key still in the map and detaches from the pool. A private pool then has no
//!    user left: it shuts down, and close joins its threads.
//!
//! [`Dispatcher::close_now`](crate::Dispatcher::close_now) differs in step 3: it also sets the
//! halt flag, so that workers start no new job; it waits until every running turn has ended
//! (each puts the jobs it had not started back at the front of its key's queue), takes the
//! delayed jobs that are not yet in their keys' queues (see `delay`), takes every key's queue
//! out of the map, and hands them back. Each handed-back job of a
//! [`Group`](crate::Group) completes it as `handed_back`, and each pending
//! [`flush_key`](crate::Dispatcher::flush_key) barrier is released, so that no wait hangs on
//! a job that will never run.
//!
//! The races these steps must win, and how:
//!
//! - *A dispatch racing close*: the dispatch's `fetch_add` on the gate and close's `fetch_or`
//!   are ordered on one atomic word, so the dispatch is either counted (and close waits for it)
//!   or refused.
//! - *A dispatch racing close_now*: a producer that entered the gate just before the halt flag
//!   checks the flag under the mailbox lock (or the map's write lock, when it creates the key),
//!   which close_now also takes to drain that key, so its job is either drained or refused.
//! - *Close racing close*: only the first sets the flag; all wait for the same drain; the
//!   finishing steps run once under a lock, and every caller returns after the threads are
//!   joined.
//! - *Close from a handler*: waiting there could deadlock, since the jobs being drained (the
//!   calling one included) need the pool's threads. Close then performs steps 1 and 2 only and
//!   returns with [`CloseReport::drained`](crate::CloseReport::drained) false; the shutdown
//!   finishes when the last job does, and a later `close` from outside (or `Drop`) still waits
//!   and joins.

use super::{core::Core, delay::Delayed, evict::SWEEP_PERIOD};
use crate::{
    error::WaitError,
    keymap::Keyed,
    mailbox::{Mailbox, Marks},
    stats::Stats,
    sync::{dekker_fence, fault, lock, Arc, Ordering},
    unwind::{contained, drop_contained},
};
use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::Hash,
    time::Instant,
};

/// The result of [`Core::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) stats: Stats,
    pub(crate) drained: bool,
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Stops accepting, waits for every accepted job to finish, evicts every key and leaves
    /// the pool (joining it if this was its last user). On a worker thread it only stops
    /// accepting; the shutdown then finishes when the last job does.
    pub(crate) fn close(&self) -> Closed {
        let skip_drain = (fault!(CountBeforeClose) && self.gate.count() == 0)
            || (fault!(LateCloseSkipsDrain) && self.gate.is_closed());
        if self.gate.close() {
            log::debug!("{}: close begun", self.config.name);
            self.room.notify();
            let mut resumed = Vec::new();
            self.keys.for_each(|mailbox| {
                if !fault!(CloseLeavesKeyWaiters) {
                    mailbox.wake_producers();
                }
                // Paused keys drain too: no pause survives close (`pause` checks the flag
                // under the mailbox lock that this takes after setting it).
                let resume = mailbox.resume();
                if resume.was_paused {
                    resumed.push((Arc::clone(mailbox), resume));
                }
            });
            // Outside the map's locks, as producers schedule.
            for (mailbox, resume) in resumed {
                self.resumed(mailbox, resume);
            }
        }
        if self.pool.is_current() {
            // ORDERING: SeqCst, see `progressed`.
            self.finish_pending.store(true, Ordering::SeqCst);
            if self.gate.count() == 0 {
                self.finish();
            }
            return Closed {
                stats: self.stats(),
                drained: false,
            };
        }
        self.idle
            .wait_until(None, || skip_drain || self.gate.count() == 0);
        self.finish();
        self.pool.join();
        Closed {
            stats: self.stats(),
            drained: true,
        }
    }

    /// Stops accepting and starting jobs, waits for the running ones, and hands back every job
    /// that had not started, grouped by key in dispatch order.
    pub(crate) fn close_now(&self) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        if self.gate.halt() {
            log::debug!("{}: close_now begun", self.config.name);
        }
        // The halt flag, then the turn count (see `run_turn`).
        dekker_fence();
        self.room.notify();
        // Every turn puts its unstarted jobs back into its mailbox before it ends.
        self.idle.wait_until(None, || self.counters.turns() == 0);
        let delayed = self.halt_delays();
        let mut queues = Vec::new();
        let mut jobs = 0;
        let mut released = Marks::new();
        let mut paused = 0;
        let removed = self.keys.remove_where(|mailbox| {
            let (queue, marks, was_paused) = mailbox.take_all();
            paused += isize::from(was_paused);
            released.extend(marks);
            jobs += queue.len();
            queues.push(queue);
            true
        });
        // Outside the map's locks: one mark per handed-back job of a group, and the flush
        // barriers behind them. Each wakes its waiters, who see the jobs handed back.
        for mark in released {
            mark.state.handed_back();
        }
        self.counters.paused(-paused);
        self.stopping
            .fetch_sub(paused.unsigned_abs(), Ordering::SeqCst);
        self.held.store(0, Ordering::SeqCst);
        self.clear_sched();
        let mut left = self.hand_back(removed, queues);
        jobs += delayed.len();
        merge_delayed(&mut left, delayed);
        self.counters.handed_back(jobs);
        self.left(jobs);
        let left = left.into_iter().map(|(_, key, jobs)| (key, jobs)).collect();
        // Producers that entered the gate before it closed see the halt flag and leave.
        self.idle.wait_until(None, || self.gate.count() == 0);
        self.finish();
        self.pool.join();
        log::debug!(
            "{}: close_now done, {jobs} jobs handed back",
            self.config.name
        );
        Ok(left)
    }

    /// Pairs the mailboxes that `close_now` took out of the map with their jobs, by key, with
    /// each key's hash.
    ///
    /// Each key is moved out of its mailbox, which nothing else refers to once the ready and
    /// idle lists are cleared, except where a dispatch that raced `close_now` still holds it:
    /// that key is cloned. Should that clone panic, the key's jobs cannot be handed back; they
    /// are dropped, logged at `error` and counted as handed back.
    fn hand_back(
        &self,
        removed: Vec<Arc<Mailbox<K, J>>>,
        queues: Vec<VecDeque<J>>,
    ) -> Vec<(u64, K, Vec<J>)> {
        let mut left = Vec::new();
        for (mailbox, queue) in removed.into_iter().zip(queues) {
            if queue.is_empty() {
                continue;
            }
            let hash = mailbox.stored_hash();
            let key = match Arc::try_unwrap(mailbox) {
                Ok(mailbox) => Some(mailbox.into_key()),
                Err(shared) => contained(|| shared.key().clone()),
            };
            match key {
                Some(key) => left.push((hash, key, Vec::from(queue))),
                None => {
                    log::error!(
                        "{}: a key's Clone panicked in close_now; its {} jobs are dropped",
                        self.config.name,
                        queue.len()
                    );
                    for job in queue {
                        drop_contained(job);
                    }
                }
            }
        }
        left
    }

    /// The last steps of a shutdown, once the gate is closed and empty: evict every key, leave
    /// the pool. Idempotent; never joins (the caller does, where it may).
    fn finish(&self) {
        let mut finished = lock(&self.finished);
        if *finished {
            return;
        }
        let name = &self.config.name;
        let evicted = self.keys.remove_where(|mailbox| {
            let evicted = mailbox.try_evict();
            debug_assert!(evicted, "a key was busy after its dispatcher drained");
            true
        });
        self.clear_sched();
        self.pool.detach(&self.as_client());
        *finished = true;
        drop(finished);
        log::trace!("{name}: {} keys evicted", evicted.len());
        // Outside every lock: dropping a key runs its `Drop`, which may call back into this
        // dispatcher (for its stats, say).
        drop(evicted);
        log::debug!("{name}: close done");
        self.idle.notify();
    }

    /// Empties the ready and idle lists once every key has been taken out of the map.
    fn clear_sched(&self) {
        let (ready, idle) = {
            let mut sched = lock(&self.sched);
            sched.cleared = true;
            (self.ready.take_all(), std::mem::take(&mut sched.idle))
        };
        drop(ready);
        let waiting = lock(&self.backoffs).clear();
        drop(waiting);
        drop(std::mem::take(&mut *lock(&self.spares)));
        if !idle.is_empty() {
            self.listed.fetch_sub(idle.len(), Ordering::SeqCst);
        }
    }

    /// The gate or the idle list emptied, or the last turn ended after `close_now`: wake the
    /// waiters, and finish a shutdown that a worker thread had to leave pending.
    pub(super) fn progressed(&self) {
        self.idle.notify();
        // ORDERING: SeqCst, paired with `close`, which sets the flag and then checks the gate:
        // of the two, at least one sees the other's write.
        if self.finish_pending.load(Ordering::SeqCst) && self.gate.count() == 0 {
            self.finish();
        }
    }

    pub(crate) fn wait_idle(&self) -> Result<(), WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        // Checked at the start and whenever the wait wakes: a key that becomes Held announces
        // it (see `held_more`).
        let paused = || self.any_held();
        let (None, Some(period)) = (self.config.idle_timeout, SWEEP_PERIOD) else {
            self.idle.wait_until(None, || paused() || self.is_idle());
            return if paused() {
                Err(WaitError::KeysPaused)
            } else {
                Ok(())
            };
        };
        loop {
            // Once every job has finished, evict the idle keys now rather than at the next
            // sweep. A key that a worker has counted but not yet filed is swept by the next
            // round, or by the timer.
            self.idle
                .wait_until(None, || paused() || self.gate.count() == 0);
            if paused() {
                return Err(WaitError::KeysPaused);
            }
            let idle = std::mem::take(&mut lock(&self.sched).idle);
            self.sweep(idle, false);
            if self
                .idle
                .wait_until(Some(Instant::now() + period), || paused() || self.is_idle())
            {
                return if paused() {
                    Err(WaitError::KeysPaused)
                } else {
                    Ok(())
                };
            }
        }
    }

    /// No job accepted and unfinished, and no idle key left to sweep (with an idle timeout,
    /// keys wait for it whatever `wait_idle` does).
    fn is_idle(&self) -> bool {
        // ORDERING: SeqCst, see `Signal`.
        self.gate.count() == 0
            && (self.config.idle_timeout.is_some() || self.listed.load(Ordering::SeqCst) == 0)
    }
}

/// Appends each delayed job that `close_now` took to its key's jobs in `left`, or to a new
/// entry for a key that had none queued. A key whose `Eq` panics is taken for another.
fn merge_delayed<K: Eq, J>(left: &mut Vec<(u64, K, Vec<J>)>, delayed: Vec<Delayed<K, J>>) {
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for (index, (hash, ..)) in left.iter().enumerate() {
        by_hash.entry(*hash).or_default().push(index);
    }
    for Delayed { hash, key, job } in delayed {
        let same = by_hash.get(&hash).and_then(|indices| {
            indices
                .iter()
                .copied()
                .find(|&i| contained(|| left[i].1 == key).unwrap_or(false))
        });
        match same {
            Some(index) => {
                left[index].2.push(job);
                drop_contained(key);
            }
            None => {
                by_hash.entry(hash).or_default().push(left.len());
                left.push((hash, key, vec![job]));
            }
        }
    }
}
