//! Async handlers (feature `tokio`): what an async dispatcher awaits for each job, erased to
//! one boxed future per attempt, with the handler's panics caught at every poll.
//!
//! The handler takes its key by value (`Fn(K, J) -> impl Future`): a future that borrowed the
//! key would need a closure generic over the borrow's lifetime, which closures cannot state on
//! the crate's minimum Rust. The dispatcher clones the key for each job. A retrying handler
//! gets a clone of its job for each attempt, keeping the original for the next one.

use crate::{
    handler::{HandlerOutput, Report},
    hooks::{DeadLetter, ErrorHook},
    retry::{report_failure, RetryOutput, Retrying},
    unwind::drop_contained,
};
use std::{
    any::Any,
    future::{poll_fn, Future},
    panic::{catch_unwind, AssertUnwindSafe},
    pin::{pin, Pin},
    task::Poll,
    time::Duration,
};

/// The future of one attempt: returns the job and its backoff if it is to be retried.
pub(crate) type Attempt<'a, J> = Pin<Box<dyn Future<Output = Option<(J, Duration)>> + Send + 'a>>;

/// What the dispatcher's tasks await for a job: [`ErasedHandler`](crate::handler::ErasedHandler)
/// made async.
pub(crate) trait ErasedAsync<K, J>: Send + Sync {
    /// Runs attempt `attempt` (counted from 1) of `job`, telling `report` how it went.
    fn run<'a>(
        &'a self,
        key: &'a K,
        job: J,
        attempt: u32,
        report: &'a mut (dyn Report + Send),
    ) -> Attempt<'a, J>;
}

/// Awaits the future that `start` makes, catching a panic in `start`, in any poll, or in the
/// future's drop (which runs here, contained, right after it completes).
async fn contained<F: Future>(start: impl FnOnce() -> F) -> Result<F::Output, Box<dyn Any + Send>> {
    let future = catch_unwind(AssertUnwindSafe(start))?;
    let mut slot = pin!(Some(future));
    let output = poll_fn(|cx| {
        let polled = catch_unwind(AssertUnwindSafe(|| {
            let future = slot.as_mut().as_pin_mut().expect("not polled once done");
            future.poll(cx)
        }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| slot.set(None))) {
        log::error!("keyed-dispatch: a job's future panicked while dropped");
        drop_contained(payload);
    }
    output
}

/// A plain async handler and its error hook: each job once.
pub(crate) struct AsyncPlain<F, E> {
    pub(crate) handler: F,
    pub(crate) on_error: E,
}

impl<K, J, F, Fut, E> ErasedAsync<K, J> for AsyncPlain<F, E>
where
    K: Clone + Send + Sync,
    J: Send + 'static,
    F: Fn(K, J) -> Fut + Send + Sync,
    Fut: Future + Send,
    Fut::Output: HandlerOutput,
    E: ErrorHook<K, <Fut::Output as HandlerOutput>::Error>,
{
    fn run<'a>(
        &'a self,
        key: &'a K,
        job: J,
        _: u32,
        report: &'a mut (dyn Report + Send),
    ) -> Attempt<'a, J> {
        Box::pin(async move {
            match contained(|| (self.handler)(key.clone(), job)).await {
                Ok(output) => {
                    if let Err(err) = output.into_result() {
                        report_failure(&self.on_error, key, &err, 1, report);
                    }
                }
                Err(payload) => report.panicked(payload),
            }
            None
        })
    }
}

impl<K, J, F, Fut, D, E> ErasedAsync<K, J> for Retrying<F, Fut::Output, D, E>
where
    K: Clone + Send + Sync,
    J: Clone + Send + 'static,
    F: Fn(K, J) -> Fut + Send + Sync,
    Fut: Future + Send,
    Fut::Output: RetryOutput,
    D: DeadLetter<K, J, <Fut::Output as RetryOutput>::Error>,
    E: ErrorHook<K, <Fut::Output as RetryOutput>::Error>,
{
    fn run<'a>(
        &'a self,
        key: &'a K,
        job: J,
        attempt: u32,
        report: &'a mut (dyn Report + Send),
    ) -> Attempt<'a, J> {
        Box::pin(async move {
            let copy = job.clone();
            let ran = contained(move || (self.handler)(key.clone(), copy)).await;
            self.settle(key, job, attempt, ran, report)
        })
    }
}
