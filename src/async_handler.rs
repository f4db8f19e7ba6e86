//! Async handlers (feature `tokio`): what an async dispatcher's tasks await for each job. A
//! handler is driven in two steps around the await, [`AsyncJobs::start`] and
//! [`AsyncJobs::end`], so that the tasks' loop can be generic over it and keep each job's
//! future inline in the task, rather than box one per job.
//!
//! The handler takes its key by value (`Fn(K, J) -> impl Future`): a future that borrowed the
//! key would need a closure generic over the borrow's lifetime, which closures cannot state on
//! stable Rust. The dispatcher clones the key for each job. A retrying handler gets a clone of
//! its job for each attempt, the dispatcher keeping the original for the next one.

use crate::{
    handler::{HandlerOutput, Report},
    hooks::{DeadLetter, ErrorHook},
    retry::{report_failure, RetryOutput, Retrying},
};
use std::{any::Any, future::Future, time::Duration};

/// An async handler and its hooks, as the dispatcher's tasks drive them.
pub(crate) trait AsyncJobs<K, J>: Send + Sync + 'static {
    /// An attempt's future.
    type Future: Future<Output = Self::Output> + Send + 'static;
    /// What the attempt returns.
    type Output;
    /// What the dispatcher keeps of the job while an attempt runs: nothing, or the job itself
    /// for a retrying handler's next attempt.
    type Kept: Send;

    /// Starts an attempt of `job`. It may panic (the handler, or a clone): the job is lost then,
    /// and the panic counted.
    fn start(&self, key: K, job: J) -> (Self::Future, Self::Kept);

    /// What becomes of the job once attempt `attempt` (counted from 1) ended as `ran` (its
    /// output, or its panic): the job and its backoff if it is to be retried. Tells `report`
    /// how it went.
    fn end(
        &self,
        key: &K,
        kept: Self::Kept,
        attempt: u32,
        ran: Result<Self::Output, Box<dyn Any + Send>>,
        report: &mut dyn Report,
    ) -> Option<(J, Duration)>;
}

/// A plain async handler and its error hook: each job once.
pub(crate) struct AsyncPlain<F, E> {
    pub(crate) handler: F,
    pub(crate) on_error: E,
}

impl<K, J, F, Fut, E> AsyncJobs<K, J> for AsyncPlain<F, E>
where
    K: 'static,
    J: 'static,
    F: Fn(K, J) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
    E: ErrorHook<K, <Fut::Output as HandlerOutput>::Error> + 'static,
{
    type Future = Fut;
    type Output = Fut::Output;
    type Kept = ();

    fn start(&self, key: K, job: J) -> (Fut, ()) {
        ((self.handler)(key, job), ())
    }

    fn end(
        &self,
        key: &K,
        (): (),
        _: u32,
        ran: Result<Fut::Output, Box<dyn Any + Send>>,
        report: &mut dyn Report,
    ) -> Option<(J, Duration)> {
        match ran {
            Ok(output) => {
                if let Err(err) = output.into_result() {
                    report_failure(&self.on_error, key, &err, 1, report);
                }
            }
            Err(payload) => report.panicked(payload),
        }
        None
    }
}

impl<K, J, F, Fut, D, E> AsyncJobs<K, J> for Retrying<F, Fut::Output, D, E>
where
    K: 'static,
    J: Clone + Send + 'static,
    F: Fn(K, J) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: RetryOutput,
    D: DeadLetter<K, J, <Fut::Output as RetryOutput>::Error> + 'static,
    E: ErrorHook<K, <Fut::Output as RetryOutput>::Error> + 'static,
{
    type Future = Fut;
    type Output = Fut::Output;
    type Kept = J;

    fn start(&self, key: K, job: J) -> (Fut, J) {
        ((self.handler)(key, job.clone()), job)
    }

    fn end(
        &self,
        key: &K,
        job: J,
        attempt: u32,
        ran: Result<Fut::Output, Box<dyn Any + Send>>,
        report: &mut dyn Report,
    ) -> Option<(J, Duration)> {
        self.settle(key, job, attempt, ran, report)
    }
}
