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
//! A job whose future never waited (and so never gave the runtime its thread back) spends a
//! unit of the task's budget with the runtime's cooperative scheduling, so that a key of such
//! jobs still lets the runtime's other tasks run: the task yields once its budget is spent.
//! Yielding after every turn instead cost a trip through the runtime's queue per job where
//! keys get one job at a time, and spending the budget after every job about a tenth of the
//! throughput of 1 ms I/O jobs (BENCHMARKS.md, "Async handlers").
//!
//! The loop is generic over the handler ([`AsyncJobs`]), so that each job's future lives
//! inline in the task's own future: one allocation per token, none per job.

use super::{
    core::{Core, Runner},
    worker::{BatchState, JobReport},
};
use crate::{
    async_handler::AsyncJobs,
    handler::Report,
    latch::Outcome,
    mailbox::{EndTurn, Mailbox, Marks},
    pool::PoolShared,
    sync::Arc,
    unwind::ShowKey,
};
use std::{
    any::Any,
    collections::VecDeque,
    fmt::Debug,
    future::{poll_fn, Future},
    hash::Hash,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::{pin, Pin},
    task::Poll,
    time::Instant,
};

/// An async dispatcher's handler, erased: what makes its tokens' tasks.
pub(crate) trait Tokens<K, J>: Send + Sync {
    /// The future of one token of `core`.
    fn token(&self, core: Arc<Core<K, J>>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<K, J, A> Tokens<K, J> for Arc<A>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
    A: AsyncJobs<K, J>,
{
    fn token(&self, core: Arc<Core<K, J>>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(core.run_token(Arc::clone(self)))
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// A token's task (see [`Tokens`]).
    pub(super) fn token_task(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match &self.handler {
            Runner::Tasks(tokens) => tokens.token(Arc::clone(&self)),
            Runner::Threads(_) => {
                unreachable!("a thread-run dispatcher's tokens go to its threads")
            }
        }
    }

    /// Holds one token: runs turns of ready keys until none is left.
    async fn run_token<A: AsyncJobs<K, J>>(self: Arc<Self>, jobs: Arc<A>) {
        let (mut batch, mut due): (VecDeque<J>, Marks) = Default::default();
        let mut stamps = VecDeque::new();
        let mut ended = None;
        while let Some(mailbox) = self.next_key(ended.take(), None) {
            let end = self
                .run_task_turn(&*jobs, &mailbox, &mut batch, &mut due, &mut stamps)
                .await;
            ended = Some((mailbox, end));
        }
    }

    /// As `run_turn`, with each job awaited.
    async fn run_task_turn<A: AsyncJobs<K, J>>(
        &self,
        jobs: &A,
        mailbox: &Arc<Mailbox<K, J>>,
        batch: &mut VecDeque<J>,
        due: &mut Marks,
        stamps: &mut VecDeque<Instant>,
    ) -> EndTurn {
        let Some(mut attempts) = self.begin_turn(mailbox, batch, due, stamps, 0) else {
            return EndTurn::Halted;
        };
        let key = mailbox.key();
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
                // Every step is user code (the handler, a clone, the future's poll and drop, the
                // output's drop, the hooks): a panic in any ends the job, counted, and never the
                // task, which would leave the key's turn unfinished.
                // Inside the job, as each poll is (see `run_contained`).
                let in_job = self.pool.enter_job();
                let started = catch_unwind(AssertUnwindSafe(|| jobs.start(key.clone(), job)));
                drop(in_job);
                let (retry, waited) = match started {
                    Ok((future, kept)) => {
                        let (ran, dropped, waited) = run_contained(future, &self.pool).await;
                        if let Some(payload) = dropped {
                            report.panicked(payload);
                        }
                        let _in_job = self.pool.enter_job();
                        let end = || jobs.end(key, kept, attempt, ran, &mut report);
                        let retry = catch_unwind(AssertUnwindSafe(end)).unwrap_or_else(|payload| {
                            report.panicked(payload);
                            None
                        });
                        (retry, waited)
                    }
                    Err(payload) => {
                        report.panicked(payload);
                        (None, false)
                    }
                };
                let ran = match retry {
                    None => Ok(report.outcome),
                    Some(retry) => Err(retry),
                };
                if let Err(end) = self.job_ran(batch, &mut state, ran, attempt) {
                    break end;
                }
                // A job that waited has let the runtime run others; one that never did
                // spends the budget, and yields once it is spent.
                if !waited {
                    tokio::task::coop::consume_budget().await;
                }
            };
            let done = state.done();
            attempts = 0;
            if !self.next_batch(mailbox, batch, due, stamps, done, stop, None) {
                return self.end_turn(mailbox, batch, due, stamps, done, stop, 0);
            }
        }
    }
}

/// Awaits a job's future, catching a panic in any poll, and in its drop, which runs here right
/// after it completes: returns the output or the poll's panic, the drop's panic, and whether
/// the future ever waited (returned `Pending`). Each poll runs inside the job, as a worker
/// thread's call does: the job's own waits on its dispatcher are refused rather than deadlock.
async fn run_contained<F: Future>(
    future: F,
    pool: &PoolShared,
) -> (Ran<F::Output>, Option<Panic>, bool) {
    let mut slot = pin!(Some(future));
    let mut waited = false;
    let output = poll_fn(|cx| {
        let _in_job = pool.enter_job();
        let polled = catch_unwind(AssertUnwindSafe(|| {
            let future = slot.as_mut().as_pin_mut().expect("not polled once done");
            future.poll(cx)
        }));
        match polled {
            Ok(Poll::Pending) => {
                waited = true;
                Poll::Pending
            }
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    let _in_job = pool.enter_job();
    let dropped = catch_unwind(AssertUnwindSafe(|| slot.set(None))).err();
    (output, dropped, waited)
}

/// A panic's payload.
type Panic = Box<dyn Any + Send>;

/// How an attempt's future ended: its output, or its panic.
type Ran<T> = Result<T, Panic>;
