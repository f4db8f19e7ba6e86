//! An async dispatcher's tokens (feature `tokio`): each is a task on the user's runtime that
//! runs turns of ready keys as a worker thread does, awaiting each job's future where a thread
//! calls its handler. Everything else is the thread-run dispatcher's: the key map, mailboxes,
//! gate, ready queue and token protocol (see `tokens`), eviction, retries and the shutdown.
//!
//! `max_in_flight` is the dispatcher's `max_parallel`: a token runs one key's job at a time, so
//! at most that many futures are in flight. A token that finds the ready queue empty gives
//! itself back at once, since a task that waited for keys would hold a runtime thread; and a
//! turn never waits for its key's next job for the same reason (see `more_jobs`).
//!
//! Each job spends a unit of the task's budget with the runtime's cooperative scheduling, so
//! that keys whose futures never wait (and so never give the runtime its thread back) still
//! let the runtime's other tasks run: the task yields once its budget is spent. Yielding after
//! every turn instead cost a trip through the runtime's queue per job where keys get one job
//! at a time (BENCHMARKS.md, "Async handlers").

use super::{
    core::Core,
    worker::{BatchEnd, BatchState, JobReport},
};
use crate::{
    async_handler::ErasedAsync,
    latch::Outcome,
    mailbox::{EndTurn, Mailbox, Marks},
    sync::Arc,
    unwind::ShowKey,
};
use std::{collections::VecDeque, fmt::Debug, future::poll_fn, hash::Hash, time::Instant};

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Holds one token: runs turns of ready keys until none is left.
    pub(super) async fn run_token(self: Arc<Self>) {
        let super::core::Runner::Tasks(handler) = &self.handler else {
            unreachable!("a thread-run dispatcher's tokens go to its threads");
        };
        let (mut batch, mut due): (VecDeque<J>, Marks) = Default::default();
        let mut stamps = VecDeque::new();
        let mut ended = None;
        while let Some(mailbox) = self.next_key(ended.take(), None) {
            let end = self
                .run_task_turn(&**handler, &mailbox, &mut batch, &mut due, &mut stamps)
                .await;
            ended = Some((mailbox, end));
        }
    }

    /// As `run_turn`, with each job awaited.
    async fn run_task_turn(
        &self,
        handler: &dyn ErasedAsync<K, J>,
        mailbox: &Arc<Mailbox<K, J>>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
    ) -> EndTurn {
        let Some(mut attempts) = self.begin_turn(mailbox, batch, due, stamps, 0) else {
            return EndTurn::Halted;
        };
        let key = mailbox.key();
        let max = self.config.jobs_per_turn;
        loop {
            let mut state = BatchState::new(self, due, attempts, 0);
            let stop = loop {
                let (job, attempt) = match self.next_job(mailbox, batch, due, stamps, &mut state) {
                    Ok(next) => next,
                    Err(end) => break end,
                };
                log::trace!(
                    "{}: running a job of key {}",
                    self.config.name,
                    ShowKey(key)
                );
                let mut report = JobReport {
                    core: self,
                    key,
                    outcome: Outcome::default(),
                };
                let mut attempt_run = handler.run(key, job, attempt, &mut report);
                // Each poll runs inside the job, as a worker thread's call does: the job's
                // own waits on its dispatcher are refused rather than deadlock.
                let retry = poll_fn(|cx| {
                    let _in_job = self.pool.enter_job();
                    attempt_run.as_mut().poll(cx)
                })
                .await;
                drop(attempt_run);
                let ran = match retry {
                    None => Ok(report.outcome),
                    Some(retry) => Err(retry),
                };
                if let Err(end) = self.job_ran(batch, &mut state, ran, attempt) {
                    break end;
                }
                tokio::task::coop::consume_budget().await;
            };
            let done = state.done();
            attempts = 0;
            self.counters.completed(done);
            if stop != BatchEnd::Ran
                || !self.more_jobs(mailbox, done, None)
                || mailbox.continue_turn_stamped(max, batch, due, stamps) == 0
            {
                return self.end_turn(mailbox, batch, due, stamps, done, stop, 0);
            }
            // As in `run_turn`: the jobs just taken keep the gate open.
            self.left(done);
        }
    }
}
