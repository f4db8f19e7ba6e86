//! The workers' side of the key protocol: turns of ready keys, the search for the next one,
//! and the sweeps that evict idle keys (see the parent module's docs).

use super::{Shared, IDLE_LIST_MAX, SPARES_MAX};
use crate::{
    keymap::{Hashed, Keyed},
    latch::Outcome,
    mailbox::{EndTurn, Mailbox, Mark, Marks},
    pool::{Source, Worker},
    sync::{dekker_fence, fence, lock, spin_once, Arc, Fault, Ordering},
    unwind::{contained, drop_contained, panic_message, Show, ShowKey},
};
use std::{
    any::Any,
    collections::VecDeque,
    fmt::{Debug, Display},
    hash::Hash,
    mem::size_of,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Instant,
};

/// How many spin steps a token holder waits for a ready key before it gives the token back,
/// where the pool spins at all (see `PoolShared::spins`).
const SEARCH_STEPS: u32 = 8;

/// How many spin steps a turn waits for its key's next job before it ends.
const LINGER_STEPS: u32 = if crate::sync::CHECKED { 0 } else { 7 };

/// How many jobs a turn lets gather behind its batch, while they keep arriving, before it goes
/// on with them (at most `jobs_per_turn`, and fewer than `key_capacity` allows).
const GATHER_JOBS: usize = 32;

/// How many spin-loop hints a gathering turn waits between two looks at its key's queue: about
/// half a microsecond where a hint takes 15 ns (as on the benchmark's VM), up to three times
/// that on CPUs with a slow `pause`. None in the models, where spinning is only more steps to
/// explore.
const GATHER_SPINS: u32 = if crate::sync::CHECKED { 0 } else { 32 };

/// The most buffer space, in bytes, that a worker keeps for each of its two turn buffers
/// between tokens (see `pool::Kept`): a buffer swapped in from a key after a backlog may have
/// grown to the key's capacity. A batch of the default 64 jobs reaches it only with jobs over
/// 64 bytes.
const KEPT_BYTES: usize = 4096;

impl<K, J> Shared<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Runs one turn of `mailbox`, a key just popped from the ready queue. `batch` and `due`
    /// are the worker's buffers, empty between turns.
    ///
    /// A turn runs batches of up to `jobs_per_turn` jobs. While no other key of this dispatcher
    /// is ready and no other dispatcher waits for the thread, it goes on with the jobs that
    /// arrived behind its batch (lingering briefly for them if none has yet), so that a key fed
    /// as fast as it runs keeps its worker without going through the ready queue per job.
    fn run_turn(
        &self,
        mailbox: &Mailbox<K, J>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        worker: &Worker<'_>,
    ) -> EndTurn {
        // ORDERING: `turn_started` is SeqCst and so is `halt`: either `close_now` sees this
        // turn and waits for it, or this turn sees the halt flag and leaves the key alone.
        self.counters.turn_started();
        dekker_fence();
        if self.gate.is_halted() {
            self.turn_ended();
            return EndTurn::Halted;
        }
        let max = self.config.jobs_per_turn;
        mailbox.begin_turn(max, batch, due);
        let mut done;
        let mut halted;
        loop {
            (done, halted) = self.run_batch(mailbox.key(), batch, due);
            self.counters.completed(done);
            if halted
                || !self.more_jobs(mailbox, done, worker)
                || mailbox.continue_turn(max, batch, due) == 0
            {
                break;
            }
            // The jobs just taken keep the gate's count above zero, so this cannot empty it
            // while the key is still to be filed (see below).
            self.left(done);
        }
        let end = mailbox.end_turn(batch, due, halted);
        // Barriers registered during the turn, behind its last job.
        for mark in due.drain(..) {
            mark.state.ran(Outcome::default());
        }
        // Counted before the jobs leave the gate, so that `wait_idle` cannot see both at zero
        // while this key is still to be swept.
        if end == (EndTurn::Idle { list: true }) {
            self.listed.fetch_add(1, Ordering::SeqCst);
        }
        self.turn_ended();
        self.left(done);
        end
    }

    /// Runs the jobs of a batch in order, completing the marks due behind each. Returns how
    /// many ran, and whether `close_now` stopped the batch (its unstarted jobs left in `batch`).
    fn run_batch(&self, key: &K, batch: &mut VecDeque<J>, due: &mut Marks) -> (usize, bool) {
        // Marks are only ever due within the batch if some were handed out: a batch of jobs
        // without groups or flushes skips looking for them.
        let marked = !due.is_empty();
        let mut done = 0;
        let mut outcome = Outcome::default();
        loop {
            // The marks behind the jobs finished so far (at first: barriers due before any): a
            // job's group, flush barriers. A barrier gets the outcome too, and ignores it.
            while marked && due.front().is_some_and(|mark| mark.position <= done as u64) {
                due.pop_front().expect("checked").state.ran(outcome);
            }
            let Some(job) = batch.pop_front() else {
                return (done, false);
            };
            // A hint: a turn that misses it runs its batch to the end, and `close_now` waits.
            if self.gate.halt_seen() {
                batch.push_front(job);
                return (done, true);
            }
            outcome = self.run_job(key, job);
            done += 1;
        }
    }

    /// At the end of a batch of `ran` jobs: whether the turn should go on with the key's next
    /// jobs, waiting a few spin steps for one to arrive. Not when another key is ready, another
    /// dispatcher waits for the thread, or `close_now` has begun; and no waiting while the key
    /// or the gate is full, since the batch's jobs still hold their room until the turn ends
    /// or goes on, so no job can arrive.
    ///
    /// Jobs that are arriving while it looks are left to gather, up to [`GATHER_JOBS`], as long
    /// as each look finds more than the last: taken one or two at a time, every job of a key
    /// fed as fast as it runs would cost a hand-off of the key's lock between the producer and
    /// the worker (with one key, paired runs went from about 3 to about 8 M jobs/s). A job
    /// waits one look for this, and more only while others keep arriving behind it, at most
    /// [`GATHER_JOBS`] looks (about 16 µs on the benchmark's VM).
    fn more_jobs(&self, mailbox: &Mailbox<K, J>, ran: usize, worker: &Worker<'_>) -> bool {
        let gather = GATHER_JOBS.min(self.config.jobs_per_turn);
        let mut step = 0;
        let mut seen = 0;
        loop {
            // Hints, read without a lock: a stale one costs a turn of fairness or a short wait.
            if !self.ready.is_empty() || worker.others_waiting() || self.gate.halt_seen() {
                return false;
            }
            let queued = mailbox.queued_hint();
            if queued > 0 {
                // Enough, no longer growing, or the key full: go on. The count grows at each
                // look, so there are at most `gather` of them.
                if queued >= gather
                    || queued <= seen
                    || queued + ran >= self.config.key_capacity
                    || GATHER_SPINS == 0
                {
                    return true;
                }
                seen = queued;
                for _ in 0..GATHER_SPINS {
                    std::hint::spin_loop();
                }
                continue;
            }
            if step >= LINGER_STEPS
                || (step == 0
                    && (ran >= self.config.key_capacity
                        || self.gate.count() >= self.config.capacity))
            {
                return false;
            }
            spin_once(step);
            step += 1;
        }
    }

    fn turn_ended(&self) {
        let running = self.counters.turn_ended();
        // The turn count, then the halt flag (see `close_now`).
        dekker_fence();
        if running == 0 && self.gate.is_halted() {
            self.idle.notify();
        }
    }

    /// Runs one job, catching its panic, and says how it ended.
    fn run_job(&self, key: &K, job: J) -> Outcome {
        log::trace!(
            "{}: running a job of key {}",
            self.config.name,
            ShowKey(key)
        );
        let handler = &*self.handler;
        let mut outcome = Outcome::default();
        let ran = catch_unwind(AssertUnwindSafe(|| {
            handler.run(key, job, &mut |err| {
                outcome.failed = true;
                self.job_failed(key, err);
            });
        }));
        if let Err(payload) = ran {
            outcome.panicked = true;
            self.job_panicked(key, payload);
        }
        outcome
    }

    /// Runs inside the job's `catch_unwind`: a panicking `on_error` counts as the job's panic.
    fn job_failed(&self, key: &K, err: &dyn Display) {
        self.counters.failed();
        log::warn!(
            "{}: job of key {} failed: {}",
            self.config.name,
            ShowKey(key),
            Show(err)
        );
        if let Some(hook) = &self.on_error {
            hook(key, err);
        }
    }

    fn job_panicked(&self, key: &K, payload: Box<dyn Any + Send>) {
        self.counters.panicked();
        log::error!(
            "{}: job of key {} panicked: {}",
            self.config.name,
            ShowKey(key),
            panic_message(&*payload)
        );
        if let Some(hook) = &self.on_panic {
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| hook(key, &*payload))) {
                log::error!(
                    "{}: on_panic hook panicked for key {}",
                    self.config.name,
                    ShowKey(key)
                );
                drop_contained(again);
            }
        }
        // A payload may panic in its own drop; that must not unwind into the worker.
        drop_contained(payload);
    }

    /// Files the key whose turn just ended, and pops the next ready key. With none ready, it
    /// searches briefly, arms the sweep timer if keys are listed, and releases the token
    /// (returning `None`) unless a key arrived meanwhile.
    fn next_key(
        &self,
        ended: Option<(Arc<Mailbox<K, J>>, EndTurn)>,
        worker: &Worker<'_>,
    ) -> Option<Arc<Mailbox<K, J>>> {
        if let Some((mailbox, end)) = ended {
            if let Some(oldest) = self.file(mailbox, end) {
                self.sweep(oldest, true);
            }
        }
        loop {
            if let Some(mailbox) = self.pop() {
                return Some(mailbox);
            }
            if self.pool.spins() && !worker.others_waiting() && !self.gate.is_halted() {
                self.search(worker);
                if let Some(mailbox) = self.pop() {
                    return Some(mailbox);
                }
            }
            let mut sched = lock(&self.sched);
            // At once in the models, where the timer's sweeps would do the same after two
            // periods without work; after the shutdown too, which evicted every key but may
            // have missed one filed since.
            if (self.sweep_period().is_none() || sched.cleared) && !sched.idle.is_empty() {
                let idle = std::mem::take(&mut sched.idle);
                drop(sched);
                self.sweep(idle, false);
                if let Some(mailbox) = self.pop() {
                    return Some(mailbox);
                }
                sched = lock(&self.sched);
            }
            let listed = !sched.idle.is_empty();
            sched.tokens -= 1;
            self.set_staffed(&sched);
            drop(sched);
            // ORDERING: SeqCst, the releasing side of the Dekker pair (see the module docs): a
            // key pushed before `staffed` was stored is seen here, and its producer, having
            // read `staffed` before, did not add a token for it.
            fence(Ordering::SeqCst);
            if !self.ready.is_empty() && !Fault::ReleaseWithoutRecheck.on() {
                let mut sched = lock(&self.sched);
                if sched.tokens < self.config.max_parallel {
                    sched.tokens += 1;
                    self.set_staffed(&sched);
                    continue;
                }
                // Every token is out again: their holders will pop the key.
            }
            if listed {
                self.set_timer();
            }
            return None;
        }
    }

    /// Spins for a while, counted as searching, until a key is ready.
    fn search(&self, worker: &Worker<'_>) {
        let mut sched = lock(&self.sched);
        sched.searching += 1;
        self.set_staffed(&sched);
        drop(sched);
        let mut step = 0;
        while step < SEARCH_STEPS && self.ready.is_empty() && !worker.others_waiting() {
            spin_once(step);
            step += 1;
        }
        let mut sched = lock(&self.sched);
        sched.searching -= 1;
        self.set_staffed(&sched);
    }

    /// Pops a ready key; if keys remain, brings in another thread unless one is searching or
    /// every token is out.
    fn pop(&self) -> Option<Arc<Mailbox<K, J>>> {
        let mailbox = self.ready.pop()?;
        if !self.ready.is_empty() {
            self.add_token_if_needed();
        }
        Some(mailbox)
    }

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
        // the allocator's locks that producers take too (with a million keys coming and
        // going, sizing them made the dispatcher 1.4x faster).
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
            let early = crate::sync::Fault::EvictBeforeMapLock.on() && mailbox.try_evict();
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

    /// Hands this thread on to another source after a turn, if keys of this dispatcher are
    /// ready: files the key and puts the token back at the end of the pool's queue. Returns
    /// false, leaving `ended` to the caller, if no key is ready.
    fn hand_on(&self, ended: &mut Option<(Arc<Mailbox<K, J>>, EndTurn)>) -> bool {
        let requeue = matches!(ended, Some((_, EndTurn::Requeue)));
        if self.ready.is_empty() && !requeue {
            return false;
        }
        let overflow = ended
            .take()
            .and_then(|(mailbox, end)| self.file(mailbox, end));
        // The ready keys first: the sweep can wait.
        self.submit_token();
        if let Some(oldest) = overflow {
            self.sweep(oldest, true);
        }
        true
    }

    /// Files a key whose turn ended: back on the ready queue, or into the idle list. Returns
    /// the oldest idle keys, for the caller to sweep, if the list grew too long.
    fn file(&self, mailbox: Arc<Mailbox<K, J>>, end: EndTurn) -> Option<Vec<Arc<Mailbox<K, J>>>> {
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
            EndTurn::Idle { list: false } | EndTurn::Halted => {}
        }
        None
    }

    /// Arms the pool timer that sweeps the idle list (see `sweep_period`).
    fn set_timer(&self) {
        let Some(delay) = self.sweep_period() else {
            return;
        };
        // An instant past what the clock can count is never due: no sweep then.
        let Some(due) = Instant::now().checked_add(delay) else {
            return;
        };
        // ORDERING: SeqCst, paired with `on_timer`'s disarm-then-recheck.
        if !self.timer_set.swap(true, Ordering::SeqCst) {
            self.pool.set_timer(due, self.as_source());
        }
    }
}

impl<K, J> Source for Shared<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn run(self: Arc<Self>, worker: &Worker<'_>) {
        // Empty between turns. Their allocations travel: a turn swaps `batch` with its key's
        // queue, so that the producer pushes into a buffer that has already grown.
        let (mut batch, mut due): (VecDeque<J>, Marks) = worker.kept.take();
        let mut ended = None;
        while let Some(mailbox) = self.next_key(ended.take(), worker) {
            let end = self.run_turn(&mailbox, &mut batch, &mut due, worker);
            ended = Some((mailbox, end));
            if worker.others_waiting() && self.hand_on(&mut ended) {
                break;
            }
        }
        debug_assert!(
            batch.is_empty() && due.is_empty(),
            "a turn left work behind"
        );
        batch.shrink_to(KEPT_BYTES / size_of::<J>().max(1));
        due.shrink_to(KEPT_BYTES / size_of::<Mark>());
        worker.kept.put((batch, due));
    }

    /// The sweep timer: sweeps the idle list, giving the keys listed or scheduled since the
    /// last sweep a second chance, and comes back after another period while keys remain
    /// listed.
    fn on_timer(&self, now: Instant) -> Option<Instant> {
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

    fn close_source(&self) {
        self.close();
    }
}
