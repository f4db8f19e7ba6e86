//! The [`Handler`] trait: what a dispatcher runs for each job; [`BoxedJob`], the job that runs
//! itself.

use std::fmt::{self, Display};

/// Runs jobs: one call per job, never two at once for the same key.
///
/// Closures implement it: an infallible `Fn(&K, J)`, or a fallible `Fn(&K, J) -> Result<(), E>`
/// with `E: Display`; pass them to [`Builder::build`](crate::Builder::build). A failure is
/// logged at `warn` with its key, counted in [`Stats::failed`](crate::Stats::failed) and passed
/// to the [`on_error`](crate::Builder::on_error) hook; the key's later jobs still run.
///
/// Implement it on a type of your own when the handler carries state or a named error type, and
/// pass that to [`Builder::build_handler`](crate::Builder::build_handler).
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, Handler};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Ledger {
///     total: AtomicU64,
/// }
///
/// impl Handler<String, u64> for Ledger {
///     type Error = String;
///
///     fn handle(&self, account: &String, amount: u64) -> Result<(), String> {
///         if amount == 0 {
///             return Err(format!("empty transfer to {account}"));
///         }
///         self.total.fetch_add(amount, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let ledger = Ledger { total: AtomicU64::new(0) };
/// let d = Dispatcher::builder().workers(2).build_handler(ledger)?;
/// d.dispatch("alice".to_string(), 5)?;
/// d.dispatch("bob".to_string(), 0)?; // fails: logged, counted
/// let report = d.close();
/// assert_eq!((report.stats.completed, report.stats.failed), (2, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Handler<K, J>: Send + Sync + 'static {
    /// What a failed job reports.
    type Error: Display;

    /// Runs one job of `key`.
    ///
    /// # Errors
    ///
    /// Returns the job's failure; the dispatcher logs and counts it and goes on with the key's
    /// next job.
    fn handle(&self, key: &K, job: J) -> Result<(), Self::Error>;
}

/// What a handler closure may return: `()` or `Result<(), E>` with `E: Display`.
pub trait HandlerOutput {
    /// The failure type; [`Never`] for `()`.
    type Error: Display;

    /// Turns the closure's return value into a `Result`.
    ///
    /// # Errors
    ///
    /// Returns the failure the closure reported.
    fn into_result(self) -> Result<(), Self::Error>;
}

/// The error type of a handler that cannot fail. It has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Never {}

impl Display for Never {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl HandlerOutput for () {
    type Error = Never;

    fn into_result(self) -> Result<(), Never> {
        Ok(())
    }
}

impl<E: Display> HandlerOutput for Result<(), E> {
    type Error = E;

    fn into_result(self) -> Result<(), E> {
        self
    }
}

impl<K, J, F, R> Handler<K, J> for F
where
    F: Fn(&K, J) -> R + Send + Sync + 'static,
    R: HandlerOutput,
{
    type Error = R::Error;

    fn handle(&self, key: &K, job: J) -> Result<(), R::Error> {
        self(key, job).into_result()
    }
}

/// A job that is a closure: the job type of dispatchers built with
/// [`Builder::build_spawner`](crate::Builder::build_spawner) and fed with
/// [`Dispatcher::spawn`](crate::Dispatcher::spawn).
pub type BoxedJob = Box<dyn FnOnce() + Send + 'static>;

/// A [`Handler`] with its error type erased, so that a dispatcher stores any handler behind
/// one pointer. `failed` is called with the error of a failed job, before it is dropped.
pub(crate) trait ErasedHandler<K, J>: Send + Sync {
    fn run(&self, key: &K, job: J, failed: &mut dyn FnMut(&dyn Display));
}

impl<K, J, H: Handler<K, J>> ErasedHandler<K, J> for H {
    fn run(&self, key: &K, job: J, failed: &mut dyn FnMut(&dyn Display)) {
        if let Err(err) = self.handle(key, job) {
            failed(&err);
        }
    }
}
