//! The workers' side: turns of ready keys and the jobs in them. A worker holding one of the
//! dispatcher's tokens runs a turn of each key it pops (see `tokens`), completes the marks due
//! behind each job (see `core`), and catches each job's panic. Also what the pool calls: the
//! [`Client`] impl, through which a worker runs the dispatcher's keys.

use super::core::Core;
use crate::{
    handler::Report,
    latch::Outcome,
    mailbox::{EndTurn, Mailbox, Mark, Marks, Stop},
    pool::{Client, TimerKind, Worker},
    sync::{dekker_fence, spin_once, Arc, Ordering},
    unwind::{drop_contained, panic_message, Show, ShowKey},
};
use std::{
    any::Any,
    collections::VecDeque,
    fmt::{Debug, Display},
    hash::Hash,
    mem::size_of,
    panic::{catch_unwind, AssertUnwindSafe},
    time::{Duration, Instant},
};

/// How many spin steps a turn waits for its key's next job before it ends.
const LINGER_STEPS: u32 = if crate::sync::CHECKED { 0 } else { 7 };

/// How many jobs a turn lets gather behind its batch, while they keep arriving, before it goes
/// on with them (at most `jobs_per_turn`, and fewer than `key_capacity` allows). Measured
/// against going on with whatever arrived (DESIGN.md, "Variants tried and dropped").
const GATHER_JOBS: usize = 32;

/// How many spin-loop hints a gathering turn waits between two looks at its key's queue: well
/// under a microsecond on common CPUs (figures in DESIGN.md, "Notes moved from the code"). None
/// in the models, where spinning is only more steps to explore.
const GATHER_SPINS: u32 = if crate::sync::CHECKED { 0 } else { 32 };

/// The most buffer space, in bytes, that a worker keeps for each of its two turn buffers
/// between tokens (see `pool::TurnBuffers`): a buffer swapped in from a key after a backlog may
/// have grown to the key's capacity. A batch of the default 64 jobs reaches it only with jobs
/// over 64 bytes.
const KEPT_BYTES: usize = 4096;

impl<K, J> Core<K, J>
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
        mailbox: &Arc<Mailbox<K, J>>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        worker: &Worker<'_>,
    ) -> EndTurn {
        let index = worker.index;
        let Some(mut attempts) = self.begin_turn(mailbox, batch, due, stamps, index) else {
            return EndTurn::Halted;
        };
        loop {
            let (done, stop) = self.run_batch(mailbox, batch, due, stamps, attempts, index);
            attempts = 0;
            if !self.next_batch(mailbox, batch, due, stamps, done, stop, Some(worker)) {
                return self.end_turn(mailbox, batch, due, stamps, done, stop, index);
            }
        }
    }

    /// After a batch that ran `done` jobs and stopped as `stop`: counts them, and takes the
    /// key's next batch if the turn goes on (see [`Core::more_jobs`]), letting the jobs just
    /// run leave the gate. Returns whether it goes on; if not, the caller ends the turn, and
    /// the jobs leave the gate there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn next_batch(
        &self,
        mailbox: &Mailbox<K, J>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        done: usize,
        stop: BatchEnd,
        worker: Option<&Worker<'_>>,
    ) -> bool {
        self.counters.completed(done);
        let max = self.config.jobs_per_turn;
        let more = stop == BatchEnd::Ran
            && self.more_jobs(mailbox, done, worker)
            && mailbox.continue_turn_stamped(max, batch, due, stamps) > 0;
        if more {
            // The jobs just taken keep the gate's count above zero, so this cannot empty it
            // while the key is still to be filed (see `end_turn`).
            self.left(done);
        }
        more
    }

    /// The start of a turn: counts it, and takes the key's first batch. Returns the failed
    /// attempts of the batch's first job, or `None` if `close_now` has begun (the turn is
    /// over then).
    pub(super) fn begin_turn(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        index: usize,
    ) -> Option<u32> {
        // ORDERING: `turn_started` is SeqCst and so is `halt`: either `close_now` sees this
        // turn and waits for it, or this turn sees the halt flag and leaves the key alone.
        self.counters.turn_started();
        dekker_fence();
        if self.gate.is_halted() {
            self.turn_ended();
            return None;
        }
        let max = self.config.jobs_per_turn;
        let Some((_, attempts)) = mailbox.begin_turn_stamped(max, batch, due, stamps) else {
            self.turn_ended();
            return None;
        };
        if let Some(watch) = &self.watch {
            watch.turn_began(index, mailbox);
        }
        Some(attempts)
    }

    /// The end of a turn whose last batch ran `done` jobs and stopped as `stop`: gives the
    /// key's leftovers back to it, completes the barriers due, and counts the turn and its
    /// last jobs out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn end_turn(
        &self,
        mailbox: &Arc<Mailbox<K, J>>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        done: usize,
        stop: BatchEnd,
        index: usize,
    ) -> EndTurn {
        let end = match stop {
            BatchEnd::Ran => mailbox.end_turn_stamped(batch, due, Stop::Ran, stamps),
            BatchEnd::Halted => mailbox.end_turn_stamped(batch, due, Stop::Halted, stamps),
            BatchEnd::Stopped { attempts } => {
                mailbox.end_turn_stamped(batch, due, Stop::Stopped { attempts }, stamps)
            }
            BatchEnd::Retry { delay, attempts } => {
                let stop = Stop::Backoff { attempts };
                let end = mailbox.end_turn_stamped(batch, due, stop, stamps);
                // Filed before the turn ends, while the retried job holds the gate open.
                if end == EndTurn::Backoff {
                    self.file_backoff(Arc::clone(mailbox), delay);
                }
                end
            }
        };
        // Barriers registered during the turn, behind its last job.
        for mark in due.drain(..) {
            mark.state.ran(Outcome::default());
        }
        if let Some(watch) = &self.watch {
            watch.turn_ended(index);
        }
        // Counted before the jobs leave the gate, so that `wait_idle` cannot see both at zero
        // while this key is still to be swept.
        if end == (EndTurn::Idle { list: true }) {
            self.listed.fetch_add(1, Ordering::SeqCst);
        }
        if end == EndTurn::Held {
            self.held_more();
        }
        self.turn_ended();
        self.left(done);
        end
    }

    /// Runs the jobs of a batch in order, completing the marks due behind each. Returns how
    /// many ran, and whether `close_now` stopped the batch (its unstarted jobs left in `batch`).
    ///
    /// `attempts` are the failed attempts of the batch's first job (the key's head job, when a
    /// Waiting key's turn begins). A job to be retried goes back to the front of `batch`, and
    /// the batch stops there: no later job of the key starts before it.
    fn run_batch(
        &self,
        mailbox: &Mailbox<K, J>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        attempts: u32,
        index: usize,
    ) -> (usize, BatchEnd) {
        let key = mailbox.key();
        let mut state = BatchState::new(self, due, attempts, index);
        loop {
            let (job, attempt) = match self.next_job(mailbox, batch, due, stamps, &mut state) {
                Ok(next) => next,
                Err(end) => return (state.done(), end),
            };
            let ran = self.run_job(key, job, attempt, index);
            if let Err(end) = self.job_ran(batch, &mut state, ran, attempt) {
                return (state.done(), end);
            }
        }
    }

    /// The batch's next job and its attempt number, once the marks due before it are
    /// completed; or how the batch ends before it.
    pub(super) fn next_job(
        &self,
        mailbox: &Mailbox<K, J>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
        state: &mut BatchState,
    ) -> Result<(J, u32), BatchEnd> {
        let done = state.done;
        // The marks behind the jobs finished so far (at first: barriers due before any): a
        // job's group, flush barriers. A barrier gets the outcome too, and ignores it.
        while state.marked && due.front().is_some_and(|mark| mark.position <= done as u64) {
            due.pop_front().expect("checked").state.ran(state.outcome);
        }
        let Some(job) = batch.pop_front() else {
            return Err(BatchEnd::Ran);
        };
        // A hint: a turn that misses it runs its batch to the end, and `close_now` waits.
        if self.gate.halt_seen() {
            batch.push_front(job);
            return Err(BatchEnd::Halted);
        }
        // Paused, or being cancelled: the running job has ended; the rest go back.
        // ORDERING: Relaxed, as the hint itself (see `Mailbox::stop_hint`): a pause that
        // happened before the running job ended is seen; one racing it, at the next job or at
        // the end of the batch, under the key's lock.
        if self.stopping.load(Ordering::Relaxed) > 0 && mailbox.stop_hint() {
            batch.push_front(job);
            let attempts = if done == 0 { state.attempts } else { 0 };
            return Err(BatchEnd::Stopped { attempts });
        }
        // The stamps cover a suffix of the batch: the job has one if as many remain.
        let latency = self.latency.as_deref();
        let stamp = if latency.is_some() && stamps.len() > batch.len() {
            stamps.pop_front()
        } else {
            None
        };
        if let (Some(latency), Some(start), Some(stamp)) = (latency, state.clock, stamp) {
            latency.waited(state.index, start.saturating_duration_since(stamp));
        }
        let attempt = if done == 0 && state.attempts > 0 {
            // Only a Waiting key's head job has failed attempts: off the plain path.
            self.counters.retried();
            state.attempts + 1
        } else {
            1
        };
        Ok((job, attempt))
    }

    /// Records how attempt `attempt` of the batch's job ended; a job to be retried goes back
    /// to the front of `batch`, and ends the batch.
    pub(super) fn job_ran(
        &self,
        batch: &mut VecDeque<J>,
        state: &mut BatchState,
        ran: Result<Outcome, (J, Duration)>,
        attempt: u32,
    ) -> Result<(), BatchEnd> {
        if let (Some(latency), Some(start)) = (self.latency.as_deref(), state.clock) {
            let end = Instant::now();
            latency.ran(state.index, end.saturating_duration_since(start));
            state.clock = Some(end);
        }
        state.outcome = match ran {
            Ok(outcome) => outcome,
            Err((job, delay)) => {
                batch.push_front(job);
                let attempts = attempt;
                return Err(BatchEnd::Retry { delay, attempts });
            }
        };
        state.done += 1;
        Ok(())
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
    /// the worker. A job waits one look for this, and more only while others keep arriving
    /// behind it, at most [`GATHER_JOBS`] looks (figures in DESIGN.md, "Notes moved from the
    /// code").
    ///
    /// A task's turn (`worker` is `None`) never waits: its wait would hold a runtime thread.
    pub(super) fn more_jobs(
        &self,
        mailbox: &Mailbox<K, J>,
        ran: usize,
        worker: Option<&Worker<'_>>,
    ) -> bool {
        let others_waiting = || worker.is_some_and(Worker::others_waiting);
        let gather = GATHER_JOBS.min(self.config.jobs_per_turn);
        let mut step = 0;
        let mut seen = 0;
        loop {
            // Hints, read without a lock: a stale one costs a turn of fairness or a short wait.
            if !self.ready.is_empty() || others_waiting() || self.gate.halt_seen() {
                return false;
            }
            let queued = mailbox.queued_hint();
            if queued > 0 {
                // Enough, no longer growing, or the key full: go on. The count grows at each
                // look, so there are at most `gather` of them.
                if queued >= gather
                    || queued <= seen
                    || queued + ran > self.config.key_capacity
                    || GATHER_SPINS == 0
                    || worker.is_none()
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
                || worker.is_none()
                || (step == 0
                    && (ran > self.config.key_capacity
                        || self.gate.count() >= self.config.admitted))
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
            self.idle.notify_all();
            // ORDERING: SeqCst, paired with `abandon`: of the two, one sees the other.
            if self.abandoned.load(Ordering::SeqCst) {
                self.drop_stranded();
            }
        }
    }

    /// Runs attempt `attempt` of one job, catching its panic, and says how it ended; or hands
    /// the job back with its backoff, if it is to be retried.
    fn run_job(
        &self,
        key: &K,
        job: J,
        attempt: u32,
        index: usize,
    ) -> Result<Outcome, (J, Duration)> {
        log::trace!(
            "{}: running a job of key {}",
            self.config.name,
            ShowKey(key)
        );
        let handler = self.handler.threads();
        let mut report = JobReport {
            core: self,
            key,
            outcome: Outcome::default(),
        };
        if let Some(watch) = &self.watch {
            watch.job_edge(index);
        }
        let ran = catch_unwind(AssertUnwindSafe(|| {
            handler.run(key, job, attempt, &mut report)
        }));
        if let Some(watch) = &self.watch {
            watch.job_edge(index);
        }
        match ran {
            Ok(None) => Ok(report.outcome),
            Ok(Some(retry)) => Err(retry),
            Err(payload) => {
                report.outcome.panicked = true;
                self.job_panicked(key, payload);
                Ok(report.outcome)
            }
        }
    }

    fn job_failed(&self, key: &K, err: &dyn Display) {
        self.counters.failed();
        log::warn!(
            "{}: job of key {} failed: {}",
            self.config.name,
            ShowKey(key),
            Show(err)
        );
    }

    pub(super) fn job_panicked(&self, key: &K, payload: Box<dyn Any + Send>) {
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
}

/// Where a running batch stands between its jobs.
pub(super) struct BatchState {
    /// Jobs run so far.
    done: usize,
    /// How the last of them ended, for the marks due behind it.
    outcome: Outcome,
    /// The failed attempts of the batch's first job.
    attempts: u32,
    /// Whether marks were due within the batch when it began: a batch of jobs without groups
    /// or flushes skips looking for them.
    marked: bool,
    /// With latency recorded: the end of the last job, the start of the next.
    clock: Option<Instant>,
    /// The worker's slot in the per-thread recorders.
    index: usize,
}

impl BatchState {
    pub(super) fn new<K, J>(core: &Core<K, J>, due: &Marks, attempts: u32, index: usize) -> Self {
        BatchState {
            done: 0,
            outcome: Outcome::default(),
            attempts,
            marked: !due.is_empty(),
            clock: core.latency.as_ref().map(|_| Instant::now()),
            index,
        }
    }

    pub(super) fn done(&self) -> usize {
        self.done
    }
}

/// How a batch stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum BatchEnd {
    /// Every job ran.
    Ran,
    /// `close_now` stopped it; its unstarted jobs are left in the batch.
    Halted,
    /// The batch's first leftover job failed attempt `attempts` and is retried after `delay`.
    Retry { delay: Duration, attempts: u32 },
    /// The key was paused or is being cancelled; its first leftover job had made `attempts`
    /// failed attempts.
    Stopped { attempts: u32 },
}

/// What a job's attempt reports, counted and logged for the dispatcher that ran it.
pub(super) struct JobReport<'a, K, J> {
    pub(super) core: &'a Core<K, J>,
    pub(super) key: &'a K,
    pub(super) outcome: Outcome,
}

impl<K, J> Report for JobReport<'_, K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn failed(&mut self, err: &dyn Display) {
        self.outcome.failed = true;
        self.core.job_failed(self.key, err);
    }

    fn panicked(&mut self, payload: Box<dyn Any + Send>) {
        self.outcome.panicked = true;
        self.core.job_panicked(self.key, payload);
    }

    fn dead_lettered(&mut self, attempts: u32, hooked: bool) {
        self.core.counters.dead_lettered();
        if hooked {
            log::warn!(
                "{}: job of key {} dead-lettered after {attempts} attempts",
                self.core.config.name,
                ShowKey(self.key)
            );
        } else {
            log::error!(
                "{}: job of key {} failed for good after {attempts} attempts and is dropped \
                 (no dead-letter hook)",
                self.core.config.name,
                ShowKey(self.key)
            );
        }
    }

    fn hook_panicked(&mut self, hook: &'static str) {
        self.core.counters.panicked();
        log::error!(
            "{}: the {hook} hook panicked for key {}",
            self.core.config.name,
            ShowKey(self.key)
        );
    }
}

impl<K, J> Client for Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    fn run(self: Arc<Self>, worker: &Worker<'_>) {
        // Empty between turns. Their allocations travel: a turn that takes all of a key's
        // backlog swaps `batch` with the key's queue buffer, so that the producer pushes into a
        // buffer that has already grown (see `mailbox::queue`).
        let (mut batch, mut due): (VecDeque<J>, Marks) = worker.turn_buffers.take();
        // Allocated only by a dispatcher that records latency.
        let mut stamps = VecDeque::new();
        let mut ended = None;
        while let Some(mailbox) = self.next_key(ended.take(), Some(worker)) {
            let end = self.run_turn(&mailbox, &mut batch, &mut due, &mut stamps, worker);
            ended = Some((mailbox, end));
            if worker.others_waiting() && self.hand_on(&mut ended) {
                break;
            }
        }
        debug_assert!(
            batch.is_empty() && due.is_empty() && stamps.is_empty(),
            "a turn left work behind"
        );
        batch.shrink_to(KEPT_BYTES / size_of::<J>().max(1));
        due.shrink_to(KEPT_BYTES / size_of::<Mark>());
        worker.turn_buffers.put((batch, due));
    }

    /// The sweep timer (see `evict`), the backoff timer (see `backoff`) or the delay timer
    /// (see `delay`).
    fn on_timer(&self, now: Instant, kind: TimerKind) -> Option<Instant> {
        match kind {
            TimerKind::Sweep => self.on_sweep_timer(now),
            TimerKind::Backoff => self.on_backoff_timer(now),
            TimerKind::Delay => self.on_delay_timer(now),
            #[cfg(feature = "metrics")]
            TimerKind::Publish => self.on_publish_timer(now),
        }
    }

    fn close_client(&self) {
        self.close();
    }

    #[cfg(feature = "tokio")]
    fn run_task(
        self: Arc<Self>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        self.token_task()
    }
}
