//! The [`Handler`] trait: what a dispatcher runs for each job; [`BoxedJob`], the job that runs
//! itself.

use crate::hooks::ErrorHook;
use std::{
    any::Any,
    fmt::{self, Display},
    sync::{Mutex, PoisonError},
    time::Duration,
};

/// Runs jobs: one call per job, never two at once for the same key.
///
/// Closures implement it: an infallible `Fn(&K, J)`, or a fallible `Fn(&K, J) -> Result<(), E>`
/// with `E: Display`; pass them to [`Builder::build`](crate::Builder::build). A failure is
/// logged at `warn` with its key, counted in [`Stats::failed`](crate::Stats::failed) and passed
/// to the [`on_error`](crate::Builder::on_error) hook, typed; the key's later jobs still run.
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
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Handler;
    ///
    /// let deposit = |_: &u32, amount: i64| {
    ///     if amount > 0 { Ok(()) } else { Err(format!("{amount} is not a deposit")) }
    /// };
    /// assert!(deposit.handle(&7, 100).is_ok());
    /// assert_eq!(deposit.handle(&7, -5).unwrap_err(), "-5 is not a deposit");
    /// ```
    fn handle(&self, key: &K, job: J) -> Result<(), Self::Error>;
}

/// What a handler closure may return: `()` or `Result<(), E>` with `E: Display`.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::HandlerOutput;
///
/// fn succeeded(output: impl HandlerOutput) -> bool {
///     output.into_result().is_ok()
/// }
/// assert!(succeeded(()));
/// assert!(succeeded(Ok::<(), String>(())));
/// assert!(!succeeded(Err::<(), _>("overdrawn")));
/// ```
pub trait HandlerOutput {
    /// The failure type; [`Never`] for `()`.
    type Error: Display;

    /// Turns the closure's return value into a `Result`.
    ///
    /// # Errors
    ///
    /// Returns the failure the closure reported.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{HandlerOutput, Never};
    ///
    /// assert_eq!(().into_result(), Ok::<(), Never>(()));
    /// assert_eq!(Err::<(), _>("overdrawn").into_result(), Err("overdrawn"));
    /// ```
    fn into_result(self) -> Result<(), Self::Error>;
}

/// The error type of a handler that cannot fail. It has no values.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Handler, Never};
///
/// fn infallible<H: Handler<u8, u32, Error = Never>>(_: &H) {}
/// infallible(&|_: &u8, _: u32| {}); // a closure returning `()` cannot fail
///
/// let handled: Result<(), Never> = Ok(());
/// assert_eq!(handled, Ok(()));
/// let () = handled.unwrap_or_else(|never| match never {}); // no error to handle
/// ```
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
/// [`Dispatcher::spawn`](crate::Dispatcher::spawn), which boxes the closure for you.
///
/// It is `Send + Sync` although the closure need only be `Send`, so that a refused job's
/// [`DispatchError<K, BoxedJob>`](crate::DispatchError) is `Send + Sync` too: `?` turns it into
/// a `Box<dyn Error + Send + Sync>` or an `anyhow::Error`. Nothing can reach the closure
/// through a shared reference (`Debug` prints `BoxedJob(..)`); it runs only by value, through
/// [`run`](BoxedJob::run).
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{BoxedJob, Dispatcher};
/// use std::error::Error;
///
/// fn schedule(d: &Dispatcher<u32, BoxedJob>) -> Result<(), Box<dyn Error + Send + Sync>> {
///     d.spawn(1, || println!("spawned"))?;
///     d.dispatch(1, BoxedJob::new(|| println!("boxed by hand")))?;
///     Ok(())
/// }
///
/// let d = Dispatcher::builder().build_spawner()?;
/// schedule(&d)?;
/// d.close();
/// let refused = d.spawn(2, || unreachable!()).unwrap_err();
/// assert_eq!(format!("{refused:?} {:?}", refused.job()), "Closed(..) BoxedJob(..)");
/// # Ok::<(), Box<dyn Error + Send + Sync>>(())
/// ```
// `Box<dyn FnOnce() + Send>` is not `Sync`, and the closure need not be. Here the closure sits
// in a `Mutex`, which is `Sync` for any `Send` value, without `unsafe`, and which is never
// locked: `RunOnce::run` takes the box by value and moves the closure out with `into_inner`,
// which takes no lock. As with a boxed `FnOnce`, a job is one allocation (the closure and the
// mutex's 8-byte header) and two words in its queue. A `Mutex<Box<dyn FnOnce()>>`, three
// words, ran about 6% fewer jobs a second in the benchmark's tiny jobs on one key; this ran
// as many as the bare box. `std`'s `Mutex`, not `crate::sync`'s: it takes no part in the key
// protocol that loom and shuttle check.
pub struct BoxedJob(Box<dyn RunOnce>);

/// A closure that only its owner reaches, by value, so that it is `Sync` whatever it captures.
struct Once<F>(Mutex<F>);

/// `FnOnce()` for a boxed [`Once`], as a trait that can require `Sync`.
trait RunOnce: Send + Sync {
    fn run(self: Box<Self>);
}

impl<F: FnOnce() + Send> RunOnce for Once<F> {
    fn run(self: Box<Self>) {
        // Never locked, so never poisoned; `into_inner` hands the value back either way.
        let job = self.0.into_inner().unwrap_or_else(PoisonError::into_inner);
        job();
    }
}

impl BoxedJob {
    /// Boxes `job`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BoxedJob, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let d = Dispatcher::builder().build_spawner()?;
    /// let (tx, rx) = mpsc::channel();
    /// d.dispatch(1, BoxedJob::new(move || tx.send("ran").unwrap()))?;
    /// assert_eq!(rx.recv()?, "ran");
    /// d.close();
    /// let refused = d.dispatch(1, BoxedJob::new(|| unreachable!())).unwrap_err();
    /// assert!(refused.is_closed()); // the job comes back, never run
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn new(job: impl FnOnce() + Send + 'static) -> BoxedJob {
        BoxedJob(Box::new(Once(Mutex::new(job))))
    }

    /// Runs the closure, on the calling thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::BoxedJob;
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let job = BoxedJob::new(move || tx.send(std::thread::current().id()).unwrap());
    /// job.run();
    /// assert_eq!(rx.recv()?, std::thread::current().id());
    /// # Ok::<(), mpsc::RecvError>(())
    /// ```
    pub fn run(self) {
        self.0.run();
    }
}

impl fmt::Debug for BoxedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxedJob(..)")
    }
}

/// A [`Handler`] with its error type erased, so that a dispatcher stores any handler behind
/// one pointer: a plain one, or a retrying one (see `retry`).
pub(crate) trait ErasedHandler<K, J>: Send + Sync {
    /// Runs attempt `attempt` (counted from 1) of `job`, telling `report` how it went. Returns
    /// the job and its backoff if it is to be retried; a plain handler never does, so the plain
    /// path pays one check of a `None` per job.
    fn run(&self, key: &K, job: J, attempt: u32, report: &mut dyn Report) -> Option<(J, Duration)>;
}

/// What the worker hears of an attempt, to count, log and pass to the hooks.
pub(crate) trait Report {
    /// The attempt returned an error (logged, counted, passed to `on_error`).
    fn failed(&mut self, err: &dyn Display);
    /// A retrying handler's attempt panicked (caught there, to keep the job).
    fn panicked(&mut self, payload: Box<dyn Any + Send>);
    /// The job failed for good after `attempts` attempts, and goes to the dead-letter hook
    /// if `hooked` (else it is dropped).
    fn dead_lettered(&mut self, attempts: u32, hooked: bool);
    /// The `on_error` or the dead-letter hook panicked (caught).
    fn hook_panicked(&mut self, hook: &'static str);
}

/// A plain [`Handler`] and its error hook, as the dispatcher runs them: each job once, never
/// retried.
pub(crate) struct Plain<H, E> {
    pub(crate) handler: H,
    pub(crate) on_error: E,
}

impl<K, J, H, E> ErasedHandler<K, J> for Plain<H, E>
where
    H: Handler<K, J>,
    E: ErrorHook<K, H::Error>,
{
    #[inline]
    fn run(&self, key: &K, job: J, _: u32, report: &mut dyn Report) -> Option<(J, Duration)> {
        if let Err(err) = self.handler.handle(key, job) {
            crate::retry::report_failure(&self.on_error, key, &err, 1, report);
        }
        None
    }
}
