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

use super::{core::Core, delay::Delayed, due::due_in, evict::SWEEP_PERIOD};
use crate::{
    error::WaitError,
    keymap::{Hashed, Keyed},
    mailbox::{Mailbox, Marks},
    stats::Stats,
    sync::{dekker_fence, fault, lock, Arc, Ordering},
    unwind::{contained, drop_contained},
    waiters::Wakeups,
};
use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// How long `close_timeout`, at its deadline, waits for the running turns to stop at their
/// next job and put their unstarted jobs back, before it leaves the keys of those still
/// running: long enough for any turn between two short jobs. None in the models, where time
/// does not pass and the turns' interleavings are what is explored.
const HALT_GRACE: Duration = if crate::sync::CHECKED {
    Duration::ZERO
} else {
    Duration::from_millis(20)
};

/// A key taken out of the map, with its queue.
type Taken<K, J> = (Arc<Mailbox<K, J>>, VecDeque<J>);

/// Which keys `take_keys` takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    All,
    /// Those that no turn holds (`close_timeout`).
    Unheld,
}

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
    ///
    /// After a `close_timeout` that left jobs behind running ones, it does not wait: those
    /// jobs are dropped once the running ones end (see [`Core::abandon`]).
    pub(crate) fn close(&self) -> Closed {
        let skip_drain = (fault!(CountBeforeClose) && self.gate.count() == 0)
            || (fault!(LateCloseSkipsDrain) && self.gate.is_closed());
        self.stop_accepting();
        let stranded = || self.timed_out.load(Ordering::SeqCst) && self.gate.count() > 0;
        if self.pool.must_not_block() {
            if stranded() {
                self.abandon();
            }
            // ORDERING: SeqCst, see `progressed`.
            self.finish_pending.store(true, Ordering::SeqCst);
            // Drained already where `close_async` awaited the drain.
            let drained = self.gate.count() == 0;
            if drained {
                self.finish();
            }
            return Closed {
                stats: self.stats(),
                drained,
            };
        }
        self.idle.wait_until(None, || {
            skip_drain || self.gate.count() == 0 || self.timed_out.load(Ordering::SeqCst)
        });
        if stranded() {
            if self.abandon() {
                self.pool.join();
            }
            return Closed {
                stats: self.stats(),
                drained: false,
            };
        }
        self.finish();
        self.pool.join();
        Closed {
            stats: self.stats(),
            drained: true,
        }
    }

    /// Steps 1 and 2 of the shutdown sequence, once: closes the gate, wakes every waiting
    /// producer, and resumes the paused keys.
    fn stop_accepting(&self) {
        if !self.gate.close() {
            return;
        }
        log::debug!("{}: close begun", self.config.name);
        self.room.notify_all();
        let mut resumed = Vec::new();
        // Woken once the map's locks are released: a waker is the runtime's code.
        let mut wakeups = Wakeups::default();
        self.keys.for_each(|mailbox| {
            if !fault!(CloseLeavesKeyWaiters) {
                mailbox.wake_producers(&mut wakeups);
            }
            // Paused keys drain too: no pause survives close (`pause` checks the flag under
            // the mailbox lock that this takes after setting it).
            let resume = mailbox.resume();
            if resume.was_paused {
                resumed.push((Arc::clone(mailbox), resume));
            }
        });
        drop(wakeups);
        // Outside the map's locks, as producers schedule.
        for (mailbox, resume) in resumed {
            self.resumed(mailbox, resume);
        }
    }

    /// Sets the halt flag: no turn starts a job any more, and producers that entered the gate
    /// are refused.
    fn halt(&self, how: &str) {
        if self.gate.halt() {
            log::debug!("{}: {how} begun", self.config.name);
        }
        // The halt flag, then the turn count (see `run_turn`).
        dekker_fence();
        self.room.notify_all();
    }

    /// Stops accepting and starting jobs, waits for the running ones, and hands back every job
    /// that had not started, grouped by key in dispatch order.
    pub(crate) fn close_now(&self) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        if self.pool.must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        self.halt("close_now");
        // Every turn puts its unstarted jobs back into its mailbox before it ends.
        self.idle.wait_until(None, || self.counters.turns() == 0);
        Ok(self.hand_back_all())
    }

    /// Drains until `deadline`; then as `close_now`, except that a key whose job is still
    /// running after a short grace keeps its unstarted jobs (its turn holds some of them):
    /// see [`Dispatcher::close_timeout`](crate::Dispatcher::close_timeout).
    pub(crate) fn close_timeout(&self, timeout: Duration) -> Result<Vec<(K, Vec<J>)>, WaitError> {
        if self.pool.must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        let deadline = Instant::now().checked_add(timeout);
        self.stop_accepting();
        if self.idle.wait_until(deadline, || self.gate.count() == 0) {
            self.finish();
            self.pool.join();
            return Ok(Vec::new());
        }
        self.halt("close_timeout's halt");
        let grace = deadline.and_then(|deadline| deadline.checked_add(HALT_GRACE));
        if self.idle.wait_until(grace, || self.counters.turns() == 0) {
            return Ok(self.hand_back_all());
        }
        let (left, running) = {
            // One taker at a time: this, `close_now`'s hand-back, or a close dropping what a
            // timed-out close_timeout kept.
            let _taking = lock(&self.taking);
            let mut delayed = self.halt_delays();
            let mut taken = self.take_keys(Take::Unheld);
            let running = self.counters.turns();
            if running == 0 {
                // Every turn ended meanwhile: nothing is left behind after all.
                taken.extend(self.take_keys(Take::All));
            } else {
                delayed = self.keep_delayed_of_kept_keys(delayed);
            }
            (self.hand_back(taken, delayed), running)
        };
        if running == 0 {
            self.idle.wait_until(None, || self.in_flight() == 0);
            self.finish();
            self.pool.join();
        } else {
            // Only now, with the keys settled: a close from here on gives up on the kept jobs
            // (and one waiting for the drain wakes for it, below).
            self.timed_out.store(true, Ordering::SeqCst);
            log::warn!(
                "{}: close_timeout returned with {running} jobs still running; their keys keep \
                 {} jobs that did not start (close_now hands them back)",
                self.config.name,
                self.gate.count().saturating_sub(running)
            );
        }
        self.idle.notify_all();
        Ok(left.into_iter().map(|(_, key, jobs)| (key, jobs)).collect())
    }

    /// Files back the delayed jobs whose key stays in the map (its job still running), so that
    /// the key comes back whole, later; returns the others. A key whose `Eq` panics is taken
    /// for absent.
    fn keep_delayed_of_kept_keys(&self, delayed: Vec<Delayed<K, J>>) -> Vec<Delayed<K, J>> {
        let mut heap = lock(&self.delays.delayed);
        let mut left = Vec::new();
        for job in delayed {
            let key = Hashed {
                hash: job.hash,
                key: &job.key,
            };
            if contained(|| self.keys.get(key, (), |_, ()| ()).is_ok()).unwrap_or(false) {
                // Never due: no timer is armed for it; `close_now` or `drop_stranded` takes it.
                heap.push(due_in(Duration::MAX), job);
            } else {
                left.push(job);
            }
        }
        left
    }

    /// After a timed-out `close_timeout`, on `close` or the last handle's drop: gives up on the
    /// jobs left behind running ones. They are dropped, and the shutdown finished, by whoever
    /// sees the last running turn end: this call, or that turn (see `turn_ended`). Returns
    /// whether it was this call.
    pub(super) fn abandon(&self) -> bool {
        self.abandoned.store(true, Ordering::SeqCst);
        // The flag, then the turn count; `turn_ended` does the converse.
        dekker_fence();
        if self.counters.turns() == 0 {
            self.drop_stranded();
            return true;
        }
        false
    }

    /// Drops every job left in the map once no turn runs (see `abandon`), and the delayed jobs
    /// kept with them, and finishes.
    pub(super) fn drop_stranded(&self) {
        let (delayed, taken) = {
            let _taking = lock(&self.taking);
            (
                lock(&self.delays.delayed).clear(),
                self.take_keys(Take::All),
            )
        };
        let jobs = delayed.len() + taken.iter().map(|(_, queue)| queue.len()).sum::<usize>();
        if jobs > 0 {
            log::error!(
                "{}: {jobs} jobs left behind by close_timeout are dropped",
                self.config.name
            );
        }
        for (mailbox, queue) in taken {
            drop(mailbox);
            for job in queue {
                drop_contained(job);
            }
        }
        for Delayed { key, job, .. } in delayed {
            drop_contained((key, job));
        }
        self.counters.dropped(jobs);
        self.left(jobs);
        self.finish();
    }

    /// The end of `close_now`, once no turn runs: takes every delayed job and every key's
    /// queue, hands them back, and finishes.
    fn hand_back_all(&self) -> Vec<(K, Vec<J>)> {
        let left = {
            let _taking = lock(&self.taking);
            let delayed = self.halt_delays();
            let taken = self.take_keys(Take::All);
            self.hand_back(taken, delayed)
        };
        // Producers that entered the gate before it closed see the halt flag and leave. Permits
        // are not waited for: used after this, they hand their job back.
        self.idle.wait_until(None, || self.in_flight() == 0);
        self.finish();
        self.pool.join();
        log::debug!("{}: close_now done", self.config.name);
        left.into_iter().map(|(_, key, jobs)| (key, jobs)).collect()
    }

    /// Takes the keys out of the map with their queues (all of them, or those no turn holds),
    /// completing the marks of their jobs as handed back.
    fn take_keys(&self, take: Take) -> Vec<Taken<K, J>> {
        let mut queues = Vec::new();
        let mut released = Marks::new();
        let (mut paused, mut held) = (0, 0);
        // Woken once the map's locks are released: a waker is the runtime's code.
        let mut wakeups = Wakeups::default();
        let removed = self.keys.remove_where(|mailbox| {
            let taken = match take {
                Take::All => {
                    let (queue, marks, paused) = mailbox.take_all(&mut wakeups);
                    Some((queue, marks, paused, false))
                }
                Take::Unheld => mailbox.take_all_unless_running(&mut wakeups),
            };
            let Some((queue, marks, was_paused, was_held)) = taken else {
                return false;
            };
            paused += isize::from(was_paused);
            held += usize::from(was_held);
            released.extend(marks);
            queues.push(queue);
            true
        });
        drop(wakeups);
        // Outside the map's locks: one mark per handed-back job of a group, and the flush
        // barriers behind them. Each wakes its waiters, who see the jobs handed back.
        for mark in released {
            mark.state.handed_back();
        }
        self.counters.paused(-paused);
        self.stopping
            .fetch_sub(paused.unsigned_abs(), Ordering::SeqCst);
        match take {
            Take::All => {
                self.held.store(0, Ordering::SeqCst);
                self.clear_sched();
            }
            Take::Unheld => {
                self.held.fetch_sub(held, Ordering::SeqCst);
            }
        }
        removed.into_iter().zip(queues).collect()
    }

    /// Pairs the mailboxes taken out of the map with their jobs, by key with each key's hash,
    /// appends the delayed jobs to their keys, and counts them all as handed back.
    ///
    /// Each key is moved out of its mailbox, which nothing else refers to once the ready and
    /// idle lists are cleared, except where a dispatch that raced the halt still holds it (or,
    /// after `close_timeout`, a turn that was about to begin on it): that key is cloned. Should
    /// that clone panic, the key's jobs cannot be handed back; they are dropped, logged at
    /// `error` and counted as handed back.
    fn hand_back(
        &self,
        taken: Vec<Taken<K, J>>,
        delayed: Vec<Delayed<K, J>>,
    ) -> Vec<(u64, K, Vec<J>)> {
        let mut left = Vec::new();
        let mut jobs = delayed.len();
        for (mailbox, queue) in taken {
            if queue.is_empty() {
                continue;
            }
            jobs += queue.len();
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
        merge_delayed(&mut left, delayed);
        self.counters.handed_back(jobs);
        self.left(jobs);
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
            let evicted = mailbox.evict_drained();
            debug_assert!(evicted, "a key was busy after its dispatcher drained");
            true
        });
        self.clear_sched();
        self.pool.detach(&self.as_client());
        *finished = true;
        #[cfg(feature = "metrics")]
        self.publisher.publish(&self.stats());
        drop(finished);
        // Outside the lock: the watchdog may be in a slow-job hook that closes the dispatcher
        // too, and so waits for that lock.
        if let Some(watch) = &self.watch {
            watch.stop(!self.pool.is_current());
        }
        log::trace!("{name}: {} keys evicted", evicted.len());
        // Outside every lock: dropping a key runs its `Drop`, which may call back into this
        // dispatcher (for its stats, say).
        drop(evicted);
        log::debug!("{name}: close done");
        self.idle.notify_all();
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
        self.idle.notify_all();
        // ORDERING: SeqCst, paired with `close`, which sets the flag and then checks the gate:
        // of the two, at least one sees the other's write.
        let pending = self.finish_pending.load(Ordering::SeqCst) && !fault!(PendingCloseUnfinished);
        if pending && self.gate.count() == 0 {
            self.finish();
        }
    }

    pub(crate) fn wait_idle(&self) -> Result<(), WaitError> {
        if self.pool.must_not_block() {
            return Err(WaitError::WouldDeadlock);
        }
        let stuck = || self.stuck();
        let done = || stuck().map_or(Ok(()), Err);
        let (None, Some(period)) = (self.config.idle_timeout, SWEEP_PERIOD) else {
            self.idle
                .wait_until(None, || stuck().is_some() || self.is_idle());
            return done();
        };
        loop {
            // Once every job has finished, evict the idle keys now rather than at the next
            // sweep. A key that a worker has counted but not yet filed is swept by the next
            // round, or by the timer.
            self.idle
                .wait_until(None, || stuck().is_some() || self.gate.count() == 0);
            if let Some(err) = stuck() {
                return Err(err);
            }
            let idle = std::mem::take(&mut lock(&self.sched).idle);
            self.sweep(idle, false);
            let deadline = Some(Instant::now() + period);
            if self
                .idle
                .wait_until(deadline, || stuck().is_some() || self.is_idle())
            {
                return done();
            }
        }
    }

    /// A task's [`Core::wait_idle`]. Where that one sweeps every period, this leaves it to the
    /// sweep timer, which announces the idle list emptied.
    pub(crate) async fn wait_idle_async(&self) -> Result<(), WaitError> {
        if self.pool.is_current() {
            return Err(WaitError::WouldDeadlock);
        }
        let stuck = || self.stuck();
        if self.config.idle_timeout.is_none() && SWEEP_PERIOD.is_some() {
            self.idle
                .until(|| stuck().is_some() || self.gate.count() == 0)
                .await;
            if let Some(err) = stuck() {
                return Err(err);
            }
            let idle = std::mem::take(&mut lock(&self.sched).idle);
            self.sweep(idle, false);
        }
        self.idle
            .until(|| stuck().is_some() || self.is_idle())
            .await;
        stuck().map_or(Ok(()), Err)
    }

    /// A task's [`Core::close`]: the drain is awaited; then the shutdown finishes as `close`
    /// does (its threads have no job left to wait for by then).
    pub(crate) async fn close_async(&self) -> Closed {
        if !self.pool.is_current() {
            self.stop_accepting();
            self.idle
                .until(|| self.gate.count() == 0 || self.timed_out.load(Ordering::SeqCst))
                .await;
        }
        self.close()
    }

    /// The gate's slots held by others than permits: after a halt, producers on their way to
    /// be refused. Never below the truth, once the gate is closed: a permit is counted after
    /// its slot and uncounted before it, no slot is taken any more, and the count is read
    /// before the permits, so that every permit read holds one of the slots counted.
    fn in_flight(&self) -> usize {
        // ORDERING: SeqCst, as the gate's count (see `Signal`).
        let slots = self.gate.count();
        slots.saturating_sub(self.permits.load(Ordering::SeqCst))
    }

    /// Jobs that would never run, which `wait_idle` would wait for in vain. Checked at the
    /// start and whenever the wait wakes: a key that becomes Held announces it (see
    /// `held_more`), and so does `close_timeout`.
    fn stuck(&self) -> Option<WaitError> {
        if self.timed_out.load(Ordering::SeqCst) && self.gate.count() > 0 {
            Some(WaitError::Halted)
        } else if self.any_held() {
            Some(WaitError::KeysPaused)
        } else {
            None
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
