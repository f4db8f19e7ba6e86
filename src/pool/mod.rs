//! The worker threads: a fixed number of them, shared by every dispatcher on the pool.
//!
//! Threads do not know about keys. They take *tokens* from the pool's FIFO queue; a token is a
//! dispatcher's permission to use one thread (a dispatcher holds at most `max_parallel`), and a
//! thread holding one runs that dispatcher's ready keys, a bounded turn each. When other tokens
//! wait in the queue, the thread puts its token back at the end after each turn, so threads are
//! shared fairly between dispatchers as turns are between keys.
//!
//! The pool is split in two: `threads`, the threads themselves and the queue of tokens they take
//! work from (how they sleep, wake and shut down); `client`, what a dispatcher and the pool see
//! of each other. The [`WorkerPool`] handle is here.

mod client;
mod runtime;
mod threads;

#[cfg(feature = "tokio")]
pub(crate) use self::runtime::Runtime;
#[cfg(all(test, loom))]
pub(crate) use self::threads::InJob;
pub(crate) use self::{
    client::{Client, TimerKind, Worker},
    threads::{PoolShared, MAX_WORKERS},
};
use crate::sync::Arc;
use std::fmt;

/// A pool of worker threads that several dispatchers can share.
///
/// Each dispatcher built with [`Builder::pool`](crate::Builder::pool) runs its keys on these
/// threads, with its own key type, job type and handler; [`max_parallel`] caps how many threads
/// one dispatcher may use at once, and turns are handed out fairly between dispatchers as between
/// keys. A dispatcher built without a pool owns a private one.
///
/// # Shutdown
///
/// [`close`](WorkerPool::close) (or dropping the handle) closes every dispatcher still on the
/// pool, which drains each one, then stops and joins the threads. A dispatcher closed earlier
/// simply leaves the pool; the others keep running.
///
/// Closing the pool while dispatchers are open is safe: each is closed exactly as by its own
/// [`Dispatcher::close`](crate::Dispatcher::close), so every job it accepted runs (and every
/// [`Group`](crate::Group) waiting on them completes), and from then on its dispatches return
/// `Closed`; its handle stays usable for `stats`, `close` (which returns at once with the same
/// counts) and the like. No dispatcher can be built on a closed pool
/// ([`BuildError::PoolClosed`](crate::BuildError::PoolClosed)).
///
/// [`max_parallel`]: crate::Builder::max_parallel
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, WorkerPool};
///
/// let pool = WorkerPool::new(4)?;
/// let emails = Dispatcher::builder()
///     .pool(&pool)
///     .max_parallel(2)
///     .build(|to: &String, body: String| assert!(!body.is_empty() && !to.is_empty()))?;
/// let ledger = Dispatcher::builder().pool(&pool).build(|_account: &u64, _amount: i64| {})?;
/// emails.dispatch("ann@example.com".into(), "hello".into())?;
/// ledger.dispatch(7, -30)?;
/// emails.close(); // drains emails only; ledger keeps running
/// ledger.dispatch(7, 30)?;
/// pool.close(); // closes ledger, drains it, joins the threads
/// assert!(ledger.dispatch(7, 1).unwrap_err().is_closed());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkerPool {
    shared: Arc<PoolShared>,
}

impl WorkerPool {
    /// The number of worker threads.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = keyed_dispatch::WorkerPool::new(3)?;
    /// assert_eq!(pool.workers(), 3);
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Closes every dispatcher still on the pool, one after the other, each draining its
    /// accepted jobs as [`Dispatcher::close`](crate::Dispatcher::close) does; then stops and
    /// joins the threads. Idempotent. Dispatches on those dispatchers return `Closed` from then
    /// on.
    ///
    /// Called from one of the pool's own threads (inside a handler), it closes the dispatchers
    /// without waiting for them and does not join: the threads drain the work and exit by
    /// themselves.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher, WorkerPool};
    ///
    /// let pool = WorkerPool::new(2)?;
    /// let d = Dispatcher::builder().pool(&pool).build(|_: &u8, _: u8| {})?;
    /// d.dispatch(1, 1)?;
    /// pool.close(); // closes and drains `d`, then joins the threads
    /// assert!(d.is_closed());
    /// assert_eq!(d.stats().completed, 1);
    /// let err = Dispatcher::builder().pool(&pool).build(|_: &u8, _: u8| {}).unwrap_err();
    /// assert!(matches!(err, BuildError::PoolClosed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        self.shared.close_handle();
    }

    pub(crate) fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<PoolShared>) -> WorkerPool {
        WorkerPool { shared }
    }
}

impl Drop for WorkerPool {
    /// Same as [`close`](WorkerPool::close).
    fn drop(&mut self) {
        self.shared.close_handle();
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.shared.name)
            .field("workers", &self.shared.workers)
            .finish()
    }
}

/// Thread name prefix when none is given.
pub(crate) const DEFAULT_NAME: &str = "keyed-dispatch";

/// The default number of workers: the machine's available parallelism.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
