//! Failure handling for dispatchers built with
//! [`Builder::build_retrying`](crate::Builder::build_retrying): the [`RetryPolicy`], the
//! [`Failure`] a handler may return to steer it, the [`DeadLetter`] hook, and the erased
//! handler that runs one attempt and says what becomes of the job.
//!
//! The retrying handler borrows its job (`Fn(&K, &J)`), so that a failed attempt leaves the
//! job with the dispatcher, which puts it back at the front of its key's queue and makes the key
//! Waiting until the backoff ends (see `mailbox`). The plain `build` path never reaches this
//! module: its handler is another [`ErasedHandler`] that never asks for a retry.

use crate::{
    handler::{ErasedHandler, Report},
    hooks::{DeadLetter, ErrorHook},
    unwind::contained,
};
use std::{
    any::Any,
    fmt::{self, Debug, Display},
    marker::PhantomData,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Duration,
};

/// How a retrying dispatcher retries a failed job: how many attempts in all, and how long the
/// key waits between two of them.
///
/// The delay after the `n`-th failed attempt is `initial * 2^(n-1)`, at most `max`, unless the
/// handler names its own with [`Failure::retry_after`]. While a key waits, no thread waits with
/// it, and none of its later jobs starts: the key resumes with the failed job.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(5), Duration::from_secs(2))
///     .max_attempts(5); // attempts in all, the first included
/// assert_eq!(policy.delay(1), Duration::from_millis(5));
/// assert_eq!(policy.delay(3), Duration::from_millis(20));
/// assert_eq!(policy.delay(30), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) retry_panics: bool,
}

impl Default for RetryPolicy {
    /// `exponential(100 ms, 30 s)`, [`DEFAULT_MAX_ATTEMPTS`] attempts, panics not retried.
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// Attempts in all, unless [`RetryPolicy::max_attempts`] says otherwise.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{RetryPolicy, DEFAULT_MAX_ATTEMPTS};
///
/// assert_eq!(DEFAULT_MAX_ATTEMPTS, 3);
/// assert_eq!(RetryPolicy::default(), RetryPolicy::default().max_attempts(3));
/// ```
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl RetryPolicy {
    /// Waits `initial` after the first failed attempt, doubling after each further one up to
    /// `max`; [`DEFAULT_MAX_ATTEMPTS`] attempts in all. `Duration::ZERO` for both retries at
    /// once (on the next turn of the key). A `max` below `initial` is
    /// [`BuildError::BackoffBelowInitial`](crate::BuildError::BackoffBelowInitial).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50));
    /// let delays: Vec<_> = (1..=4).map(|n| policy.delay(n).as_millis()).collect();
    /// assert_eq!(delays, [10, 20, 40, 50]);
    /// ```
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            initial,
            max,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_panics: false,
        }
    }

    /// Attempts in all, the first included; `1` never retries. Zero is
    /// [`BuildError::ZeroAttempts`](crate::BuildError::ZeroAttempts).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, RetryPolicy};
    ///
    /// let zero = Dispatcher::builder()
    ///     .retry(RetryPolicy::default().max_attempts(0))
    ///     .build_retrying(|_: &u8, _: &u8| -> Result<(), String> { Ok(()) });
    /// assert!(matches!(zero.unwrap_err(), BuildError::ZeroAttempts));
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Whether a panicking attempt is retried too; off by default, since a panic usually means
    /// a bug that the next attempt meets again. A panic is counted in
    /// [`Stats::panicked`](crate::Stats::panicked) and passed to `on_panic` either way; a job
    /// whose last attempt panicked is dropped, not dead-lettered (there is no error to pass).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, RetryPolicy};
    /// use std::{sync::atomic::{AtomicU32, Ordering}, time::Duration};
    ///
    /// let tries = AtomicU32::new(0);
    /// let d = Dispatcher::builder()
    ///     .retry(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO).retry_panics(true))
    ///     .build_retrying(move |_: &u8, _: &u8| -> Result<(), String> {
    ///         assert!(tries.fetch_add(1, Ordering::SeqCst) > 0, "first attempt fails");
    ///         Ok(())
    ///     })?;
    /// d.dispatch(1, 1)?;
    /// let stats = d.close().stats;
    /// assert_eq!((stats.panicked, stats.retried, stats.completed), (1, 1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry_panics(mut self, retry: bool) -> Self {
        self.retry_panics = retry;
        self
    }

    /// The backoff after the `attempt`-th failed attempt (counted from 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(5));
    /// assert_eq!(policy.delay(2), Duration::from_secs(2));
    /// assert_eq!(policy.delay(9), Duration::from_secs(5));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

/// What a retrying handler returns to steer the retry of a failed attempt: retry after a delay
/// of its choosing, or give up at once. A plain error converts into it with `?` (or `.into()`),
/// and is retried as the [`RetryPolicy`] says.
///
/// It does not implement `Display`, so that a handler may return either `Result<(), E>` or
/// `Result<(), Failure<E>>`; the dead-letter hook receives the plain `E`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Failure;
/// use std::time::Duration;
///
/// fn send(status: u16) -> Result<(), Failure<String>> {
///     match status {
///         200 => Ok(()),
///         429 => Err(Failure::retry_after(Duration::from_secs(1), "rate limited".into())),
///         400 => Err(Failure::permanent("bad request".into())),
///         _ => Err(format!("status {status}"))?, // retried as the policy says
///     }
/// }
/// assert!(send(200).is_ok());
/// assert_eq!(send(400).unwrap_err().into_error(), "bad request");
/// ```
pub struct Failure<E> {
    error: E,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policy,
    After(Duration),
    Permanent,
}

impl<E> Failure<E> {
    /// Retry after `delay` (if attempts remain), instead of the policy's backoff: a 429 with
    /// `Retry-After`, say.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Failure;
    /// use std::time::Duration;
    ///
    /// let busy = Failure::retry_after(Duration::from_secs(30), "429 Too Many Requests");
    /// assert_eq!(*busy.error(), "429 Too Many Requests");
    /// ```
    pub fn retry_after(delay: Duration, error: E) -> Self {
        Failure {
            error,
            kind: Kind::After(delay),
        }
    }

    /// Do not retry: dead-letter the job at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Failure;
    ///
    /// let bad = Failure::permanent("400 Bad Request".to_string());
    /// assert_eq!(bad.into_error(), "400 Bad Request");
    /// ```
    pub fn permanent(error: E) -> Self {
        Failure {
            error,
            kind: Kind::Permanent,
        }
    }

    /// The error.
    ///
    /// # Examples
    ///
    /// ```
    /// let failure: keyed_dispatch::Failure<u16> = 503.into();
    /// assert_eq!(*failure.error(), 503);
    /// ```
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The error, by value.
    ///
    /// # Examples
    ///
    /// ```
    /// let failure = keyed_dispatch::Failure::from("timed out");
    /// assert_eq!(failure.into_error(), "timed out");
    /// ```
    pub fn into_error(self) -> E {
        self.error
    }

    /// The same failure (retried as before, after the same delay, or permanent) with its error
    /// mapped: for a layer that wraps a handler and reports its errors as its own type.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Failure;
    /// use std::time::Duration;
    ///
    /// let busy = Failure::retry_after(Duration::from_secs(1), 429).map(|code| format!("HTTP {code}"));
    /// assert_eq!(busy.error(), "HTTP 429");
    /// ```
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Failure<F> {
        Failure {
            error: f(self.error),
            kind: self.kind,
        }
    }
}

impl<E> From<E> for Failure<E> {
    /// Retried as the policy says.
    fn from(error: E) -> Self {
        Failure {
            error,
            kind: Kind::Policy,
        }
    }
}

impl<E: Debug> Debug for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("error", &self.error)
            .field("kind", &self.kind)
            .finish()
    }
}

/// What a retrying handler closure may return: `Result<(), E>` or `Result<(), Failure<E>>`,
/// with `E: Display`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Failure, RetryOutput};
///
/// let plain: Result<(), String> = Err("down".into());
/// assert_eq!(plain.into_failure().unwrap_err().into_error(), "down");
/// let steered: Result<(), Failure<String>> = Err(Failure::permanent("gone".into()));
/// assert_eq!(steered.into_failure().unwrap_err().into_error(), "gone");
/// ```
pub trait RetryOutput {
    /// The error type.
    type Error: Display + Send + 'static;

    /// Turns the closure's return value into a `Result` with a [`Failure`].
    ///
    /// # Errors
    ///
    /// Returns the failure the closure reported.
    fn into_failure(self) -> Result<(), Failure<Self::Error>>;
}

impl<E: Display + Send + 'static> RetryOutput for Result<(), E> {
    type Error = E;

    fn into_failure(self) -> Result<(), Failure<E>> {
        self.map_err(Failure::from)
    }
}

impl<E: Display + Send + 'static> RetryOutput for Result<(), Failure<E>> {
    type Error = E;

    fn into_failure(self) -> Result<(), Failure<E>> {
        self
    }
}

/// A retrying handler with its policy and hooks, behind [`ErasedHandler`].
pub(crate) struct Retrying<F, R, D, E> {
    pub(crate) handler: F,
    pub(crate) policy: RetryPolicy,
    pub(crate) dead: D,
    pub(crate) on_error: E,
    pub(crate) output: PhantomData<fn() -> R>,
}

impl<K, J, F, R, D, E> ErasedHandler<K, J> for Retrying<F, R, D, E>
where
    F: Fn(&K, &J) -> R + Send + Sync + 'static,
    R: RetryOutput,
    D: DeadLetter<K, J, R::Error>,
    E: ErrorHook<K, R::Error>,
{
    fn run(&self, key: &K, job: J, attempt: u32, report: &mut dyn Report) -> Option<(J, Duration)> {
        let ran = catch_unwind(AssertUnwindSafe(|| (self.handler)(key, &job)));
        self.settle(key, job, attempt, ran, report)
    }
}

impl<F, R, D, E> Retrying<F, R, D, E> {
    /// What becomes of `job` after attempt `attempt` ended as `ran` (its result, or its
    /// panic): nothing if it succeeded or went to the dead letters; else it is retried, after
    /// the returned backoff. Shared by the thread-run and the async handlers.
    pub(crate) fn settle<K, J>(
        &self,
        key: &K,
        job: J,
        attempt: u32,
        ran: Result<R, Box<dyn Any + Send>>,
        report: &mut dyn Report,
    ) -> Option<(J, Duration)>
    where
        R: RetryOutput,
        D: DeadLetter<K, J, R::Error>,
        E: ErrorHook<K, R::Error>,
    {
        let last = attempt >= self.policy.max_attempts;
        let failure = match ran {
            Ok(result) => match result.into_failure() {
                Ok(()) => return None,
                Err(failure) => failure,
            },
            Err(payload) => {
                report.panicked(payload);
                if self.policy.retry_panics && !last {
                    return Some((job, self.policy.delay(attempt)));
                }
                crate::unwind::drop_contained(job);
                return None;
            }
        };
        report_failure(&self.on_error, key, &failure.error, attempt, report);
        let delay = match failure.kind {
            Kind::Permanent => None,
            _ if last => None,
            Kind::Policy => Some(self.policy.delay(attempt)),
            Kind::After(delay) => Some(delay),
        };
        if let Some(delay) = delay {
            return Some((job, delay));
        }
        report.dead_lettered(attempt, self.dead.is_hook());
        let dead = &self.dead;
        let error = failure.error;
        if contained(|| dead.dead(key, job, error, attempt)).is_none() {
            report.hook_panicked("on_dead_letter");
        }
        None
    }
}

pub(crate) fn report_failure<K, E: Display>(
    hook: &impl ErrorHook<K, E>,
    key: &K,
    error: &E,
    attempt: u32,
    report: &mut dyn Report,
) {
    report.failed(error);
    if contained(|| hook.failed(key, error, attempt)).is_none() {
        report.hook_panicked("on_error");
    }
}
