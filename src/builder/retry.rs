//! The settings of a retrying dispatcher: how it retries a failed job, where a job that fails
//! for good goes, and its build.

use super::Builder;
use crate::{
    dispatcher::Dispatcher,
    error::BuildError,
    hooks::{DeadLetter, DeadLetterFn, ErrorHook},
    retry::{RetryOutput, RetryPolicy, Retrying},
};
use std::{fmt::Debug, hash::Hash, marker::PhantomData};

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// How [`build_retrying`](Builder::build_retrying)'s dispatcher retries a failed job;
    /// without it, [`RetryPolicy::default`]. Not for [`build`](Builder::build), whose handler
    /// takes its job by value and so cannot run it again: `build` refuses it with
    /// [`BuildError::RetryWithoutRetryingHandler`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::exponential(Duration::from_millis(5), Duration::from_secs(2));
    /// let d = Dispatcher::builder()
    ///     .retry(policy.max_attempts(5))
    ///     .build_retrying(|_: &u64, _: &String| -> Result<(), String> { Ok(()) })?;
    /// d.close();
    /// let plain = Dispatcher::builder().retry(policy).build(|_: &u64, _: String| {});
    /// assert!(matches!(plain.unwrap_err(), BuildError::RetryWithoutRetryingHandler));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Called with the key, the job, the last error and the number of attempts made, when a
    /// retrying dispatcher's job fails for good: after its last attempt, or at once for a
    /// [`Failure::permanent`](crate::Failure::permanent). For
    /// [`build_retrying`](Builder::build_retrying), whose handler's error type must be `E`.
    ///
    /// It runs on the worker, before the key's next job starts. A panic inside it is caught,
    /// logged at `error` and counted in [`Stats::panicked`](crate::Stats::panicked); the key
    /// goes on. Without it, a dead job is logged at `error`, counted in
    /// [`Stats::dead_lettered`](crate::Stats::dead_lettered) and dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, RetryPolicy};
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let (parked, dead) = mpsc::channel();
    /// let d = Dispatcher::builder()
    ///     .retry(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO).max_attempts(2))
    ///     .on_dead_letter(move |key: &u64, job: String, err: String, attempts: u32| {
    ///         parked.send((*key, job, err, attempts)).unwrap();
    ///     })
    ///     .build_retrying(|_: &u64, _: &String| -> Result<(), String> { Err("down".into()) })?;
    /// d.dispatch(9, "hook".into())?;
    /// assert_eq!(dead.recv()?, (9, "hook".into(), "down".into(), 2));
    /// # d.close();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_dead_letter<E, F>(self, hook: F) -> Builder<K, J, DeadLetterFn<F, E>, O>
    where
        F: Fn(&K, J, E, u32) + Send + Sync + 'static,
        E: 'static,
    {
        let hook = DeadLetterFn(hook, PhantomData);
        self.map_hooks(|_, on_error| (hook, on_error, ())).0
    }

    /// Builds a dispatcher that retries failed jobs in order: a failed attempt of a key's job
    /// is retried after its backoff ([`retry`](Builder::retry)), and no later job of the key
    /// starts before it has succeeded or been dead-lettered
    /// ([`on_dead_letter`](Builder::on_dead_letter)). Other keys go on meanwhile, and no
    /// thread waits out a backoff.
    ///
    /// The handler borrows its job, `Fn(&K, &J)`, since it may run again. It returns
    /// `Result<(), E>`, retried as the policy says, or `Result<(), Failure<E>>` to name its
    /// own delay ([`Failure::retry_after`](crate::Failure::retry_after)) or give up at once
    /// ([`Failure::permanent`](crate::Failure::permanent)); `E: Display`. A panic is not
    /// retried unless [`RetryPolicy::retry_panics`] says so.
    ///
    /// A retried job counts once in its [`Group`](crate::Group), in `flush_key` and in
    /// [`Stats::completed`](crate::Stats::completed): when it finally succeeds or is
    /// dead-lettered. Until then it holds its room and keeps the dispatcher busy:
    /// [`close`](crate::Dispatcher::close) and [`wait_idle`](crate::Dispatcher::wait_idle)
    /// wait for its retries, and [`close_now`](crate::Dispatcher::close_now) hands it back
    /// first among its key's jobs.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build), and [`BuildError::ZeroAttempts`] or
    /// [`BuildError::BackoffBelowInitial`] for a policy that cannot work.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, Failure, RetryPolicy};
    /// use std::{sync::{Arc, Mutex}, time::Duration};
    ///
    /// let dead = Arc::new(Mutex::new(Vec::new()));
    /// let parked = Arc::clone(&dead);
    /// let d = Dispatcher::builder()
    ///     .retry(RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(10))
    ///         .max_attempts(3))
    ///     .on_dead_letter(move |key: &u64, job: String, err: String, attempts: u32| {
    ///         parked.lock().unwrap().push((*key, job, err, attempts));
    ///     })
    ///     .build_retrying(|_key: &u64, job: &String| -> Result<(), Failure<String>> {
    ///         match job.as_str() {
    ///             "ok" => Ok(()),
    ///             "bad" => Err(Failure::permanent("malformed".to_string())),
    ///             _ => Err("unreachable host".to_string())?, // retried, 3 attempts in all
    ///         }
    ///     })?;
    /// for job in ["ok", "bad", "down"] {
    ///     d.dispatch(7, job.to_string())?;
    /// }
    /// let stats = d.close().stats;
    /// assert_eq!((stats.completed, stats.retried, stats.dead_lettered), (3, 2, 2));
    /// assert_eq!(
    ///     *dead.lock().unwrap(),
    ///     [(7, "bad".into(), "malformed".into(), 1), (7, "down".into(), "unreachable host".into(), 3)]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_retrying<F, R>(self, handler: F) -> Result<Dispatcher<K, J>, BuildError>
    where
        F: Fn(&K, &J) -> R + Send + Sync + 'static,
        R: RetryOutput + 'static,
        D: DeadLetter<K, J, R::Error>,
        O: ErrorHook<K, R::Error>,
    {
        let (builder, retrying) = self.retrying(handler)?;
        builder.start(Box::new(retrying))
    }

    /// Checks the retry policy, and makes the retrying handler of `handler` with the hooks.
    #[allow(clippy::type_complexity)]
    pub(super) fn retrying<F, R>(
        self,
        handler: F,
    ) -> Result<(Builder<K, J>, Retrying<F, R, D, O>), BuildError> {
        let policy = self.retry.unwrap_or_default();
        if policy.max_attempts == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        if policy.max < policy.initial {
            return Err(BuildError::BackoffBelowInitial {
                initial: policy.initial,
                max: policy.max,
            });
        }
        let (builder, dead, on_error) = self.split_hooks();
        let retrying = Retrying {
            handler,
            policy,
            dead,
            on_error,
            output: PhantomData,
        };
        Ok((builder, retrying))
    }
}
