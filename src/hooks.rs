//! The typed failure hooks of a dispatcher: [`ErrorHook`], called with every failed attempt's
//! error, and [`DeadLetter`], handed each job that failed for good. Both are set on the builder
//! before the handler, whose error type they name, and both are stored beside the handler, so
//! that they get the error as the handler returned it rather than as `&dyn Display`.

use std::{
    fmt::{self, Debug},
    marker::PhantomData,
};

/// Called with the key, the error (by reference) and the attempt number, counted from 1, each
/// time a job's attempt fails: on a plain dispatcher the attempt is always 1; on a retrying
/// one every failed attempt is reported, the last included, before the job is retried or
/// dead-lettered. Set with [`Builder::on_error`](crate::Builder::on_error): a closure
/// `Fn(&K, &E, u32)`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{ErrorHook, NoErrorHook};
///
/// ErrorHook::<u64, String>::failed(&NoErrorHook, &7, &"down".to_string(), 1); // does nothing
/// ```
pub trait ErrorHook<K, E>: Send + Sync + 'static {
    /// Hears of one failed attempt.
    fn failed(&self, key: &K, error: &E, attempt: u32);
}

/// No error hook: a failure is logged at `warn` and counted, and that is all. The builder's
/// default; see [`ErrorHook`] for an example.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoErrorHook;

impl<K, E> ErrorHook<K, E> for NoErrorHook {
    #[inline]
    fn failed(&self, _: &K, _: &E, _: u32) {}
}

/// An error-hook closure, with the error type it takes named for the builder: what
/// [`Builder::on_error`](crate::Builder::on_error) makes of its closure, never named by hand.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// // The builder's fourth type parameter is an `ErrorHookFn` from here on.
/// let builder = Dispatcher::<u64, String>::builder()
///     .on_error(|_key: &u64, _err: &String, _attempt: u32| {});
/// let d = builder.build(|_: &u64, _: String| -> Result<(), String> { Ok(()) })?;
/// d.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ErrorHookFn<F, E>(pub(crate) F, pub(crate) PhantomData<fn(&E)>);

impl<F, E> Debug for ErrorHookFn<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ErrorHookFn(..)")
    }
}

impl<K, E, F> ErrorHook<K, E> for ErrorHookFn<F, E>
where
    F: Fn(&K, &E, u32) + Send + Sync + 'static,
    E: 'static,
{
    fn failed(&self, key: &K, error: &E, attempt: u32) {
        (self.0)(key, error, attempt);
    }
}

/// Where a retrying dispatcher hands a job that failed for good: after its last attempt, or at
/// once for a [`Failure::permanent`](crate::Failure::permanent). Set with
/// [`Builder::on_dead_letter`](crate::Builder::on_dead_letter): a closure
/// `Fn(&K, J, E, u32)`, given the key, the job, the last error and the attempts made.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{DeadLetter, NoDeadLetter};
///
/// // Without a hook, a dead job is dropped (and the dispatcher logs and counts it).
/// DeadLetter::<u64, String, String>::dead(&NoDeadLetter, &7, "job".into(), "down".into(), 3);
/// assert!(!DeadLetter::<u64, String, String>::is_hook(&NoDeadLetter));
/// ```
pub trait DeadLetter<K, J, E>: Send + Sync + 'static {
    /// Takes a dead job.
    fn dead(&self, key: &K, job: J, error: E, attempts: u32);

    /// Whether this is a hook of the user's (not [`NoDeadLetter`]): for the log line's level.
    fn is_hook(&self) -> bool {
        true
    }
}

/// No dead-letter hook: a dead job is logged at `error`, counted and dropped. The builder's
/// default; see [`DeadLetter`] for an example.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadLetter;

impl<K, J, E> DeadLetter<K, J, E> for NoDeadLetter {
    fn dead(&self, _: &K, job: J, error: E, _: u32) {
        crate::unwind::drop_contained((job, error));
    }

    fn is_hook(&self) -> bool {
        false
    }
}

/// A dead-letter closure, with the error type it takes named for the builder: what
/// [`Builder::on_dead_letter`](crate::Builder::on_dead_letter) makes of its closure, never
/// named by hand.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// // The builder's third type parameter is a `DeadLetterFn` from here on.
/// let builder = Dispatcher::<u64, String>::builder()
///     .on_dead_letter(|_key: &u64, _job: String, _err: String, _attempts: u32| {});
/// let d = builder.build_retrying(|_: &u64, _: &String| -> Result<(), String> { Ok(()) })?;
/// d.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DeadLetterFn<F, E>(pub(crate) F, pub(crate) PhantomData<fn(E)>);

impl<F, E> Debug for DeadLetterFn<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterFn(..)")
    }
}

impl<K, J, E, F> DeadLetter<K, J, E> for DeadLetterFn<F, E>
where
    F: Fn(&K, J, E, u32) + Send + Sync + 'static,
    E: 'static,
{
    fn dead(&self, key: &K, job: J, error: E, attempts: u32) {
        (self.0)(key, job, error, attempts);
    }
}
