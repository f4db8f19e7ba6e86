//! The handle's calls on one key: wait for its jobs so far, pause it, resume it, cancel it.

use super::Dispatcher;
use crate::error::WaitError;
use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Blocks until every job of `key` dispatched before this call has finished; returns at
    /// once if none is queued or running (the key is idle or absent). Jobs of `key` dispatched
    /// after the call are not waited for, and other keys, and further dispatches on `key`, go on
    /// meanwhile. A job that [`close_now`](Dispatcher::close_now) hands back counts as
    /// finished here: the flush returns, since it will never run.
    ///
    /// It registers a barrier at the end of the key's queue, which the worker completes as soon
    /// as the job before it has finished, even if later jobs of the key follow in the same turn.
    /// The barrier takes no room from the key's capacity and is shared by flushes made at the
    /// same point. A barrier rather than per-key counters of jobs pushed and finished, which
    /// would cost every job of every key an update and a wake-up check so that a few could be
    /// flushed: here a key that is never flushed pays nothing.
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once on a worker thread of the dispatcher's pool (in a
    /// handler of any dispatcher on it): flushing the handler's own key would wait for the
    /// calling job itself, and flushing another key could wait for a thread that every
    /// handler holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let balance = Arc::new(Mutex::new(0i64));
    /// let b = Arc::clone(&balance);
    /// let d = Dispatcher::builder().build(move |_: &&str, amount: i64| {
    ///     *b.lock().unwrap() += amount;
    /// })?;
    /// d.dispatch("acct-1", 100)?;
    /// d.dispatch("acct-1", -30)?;
    /// d.flush_key(&"acct-1")?; // both have run
    /// assert_eq!(*balance.lock().unwrap(), 70);
    /// d.flush_key(&"acct-2")?; // no job: returns at once
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_key(&self, key: &K) -> Result<(), WaitError> {
        self.core.flush_key(key, None)
    }

    /// As [`flush_key`](Dispatcher::flush_key), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if jobs of `key` dispatched before the call were still queued
    /// or running after `timeout`; [`WaitError::WouldDeadlock`] as for `flush_key`.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WaitError};
    /// use std::{sync::mpsc, time::Duration};
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs
    /// let flushed = d.flush_key_timeout(&1, Duration::from_millis(10));
    /// assert_eq!(flushed, Err(WaitError::Timeout));
    /// drop(started);
    /// d.flush_key_timeout(&1, Duration::from_secs(60))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_key_timeout(&self, key: &K, timeout: Duration) -> Result<(), WaitError> {
        self.core
            .flush_key(key, Instant::now().checked_add(timeout))
    }

    /// Pauses `key`: its queued jobs and those dispatched from now on wait, in order, until
    /// [`resume_key`](Dispatcher::resume_key); other keys go on. A job of `key` running now
    /// finishes, and its turn then ends without starting another. A key with no jobs, or one
    /// the dispatcher has not seen, is paused too (its mailbox is created to hold the pause).
    /// Pausing a paused key does nothing; so does pausing once close has begun.
    ///
    /// A paused key is never evicted (`stats().keys` counts it), and its queue stays bounded by
    /// [`key_capacity`](crate::Builder::key_capacity): producers wait for room, or get
    /// [`Full`](crate::DispatchError::Full) with [`Bound::Key`](crate::Bound::Key). A job of a
    /// retrying dispatcher waiting out its backoff stays put until the key resumes.
    /// [`close`](Dispatcher::close) resumes every paused key and drains it;
    /// [`close_now`](Dispatcher::close_now) hands their jobs back; `wait_idle` returns
    /// [`WaitError::KeysPaused`] while a paused key holds jobs. Safe to call from a handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let ran = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&ran);
    /// let d = Dispatcher::builder().build(move |key: &u8, n: u32| {
    ///     log.lock().unwrap().push((*key, n));
    /// })?;
    /// d.pause_key(&7);
    /// d.dispatch(7, 1)?;
    /// d.dispatch(8, 2)?;
    /// d.flush_key(&8)?; // key 8 goes on
    /// assert_eq!(*ran.lock().unwrap(), [(8, 2)]);
    /// d.resume_key(&7);
    /// d.flush_key(&7)?;
    /// assert_eq!(*ran.lock().unwrap(), [(8, 2), (7, 1)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pause_key(&self, key: &K) {
        self.core.pause_key(key);
    }

    /// Resumes a paused `key`: it continues where it stopped, in order. Does nothing to a key
    /// that is not paused. Safe to call from a handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, WaitError};
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u32| {})?;
    /// d.pause_key(&7);
    /// d.dispatch(7, 1)?;
    /// assert_eq!(d.wait_idle(), Err(WaitError::KeysPaused)); // it would wait for ever
    /// d.resume_key(&7);
    /// d.wait_idle()?;
    /// assert_eq!(d.stats().completed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resume_key(&self, key: &K) {
        self.core.resume_key(key);
    }

    /// Takes `key`'s jobs that have not started, in dispatch order: queued ones, and a
    /// retrying dispatcher's job waiting out its backoff (first). A job of `key` running now
    /// finishes first: the call waits for it, and the rest of its turn is not started. Each
    /// taken job completes its [`Group`](crate::Group) as handed back, releases the
    /// `flush_key` barriers behind it and counts in
    /// [`Stats::handed_back`](crate::Stats::handed_back), as with `close_now`. The key stays
    /// as it was otherwise (paused or not), and later dispatches on it run as usual.
    ///
    /// Returns a `Result`, unlike a plain `Vec`, since it may wait for the running job.
    ///
    /// # Errors
    ///
    /// [`WaitError::WouldDeadlock`] at once on a worker thread of the dispatcher's pool (from
    /// a handler), where waiting for a running job could wait for the caller itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: u32| {})?;
    /// d.pause_key(&7);
    /// for n in 0..3 {
    ///     d.dispatch(7, n)?;
    /// }
    /// assert_eq!(d.cancel_key(&7)?, [0, 1, 2]);
    /// d.resume_key(&7);
    /// assert_eq!(d.close().stats.handed_back, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel_key(&self, key: &K) -> Result<Vec<J>, WaitError> {
        self.core.cancel_key(key)
    }

    /// The `n` keys with the most jobs waiting right now, deepest first, each with its count:
    /// the jobs queued behind it, and those its running turn took and has not finished (up to
    /// [`jobs_per_turn`](crate::Builder::jobs_per_turn)). Keys with no job are left out, so
    /// the list is empty once the dispatcher is idle. A snapshot, read one key at a time while
    /// jobs move; it visits every key, so it suits an operator's status page, not a per-job
    /// path.
    ///
    /// A key whose `Clone` panics is left out.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::sync::{mpsc, Mutex};
    ///
    /// let (release, held) = mpsc::channel::<()>();
    /// let held = Mutex::new(held);
    /// let d = Dispatcher::builder().workers(1).jobs_per_turn(1).build(move |_: &&str, n: u32| {
    ///     if n == 0 {
    ///         held.lock().unwrap().recv().unwrap(); // the hot tenant's first job blocks
    ///     }
    /// })?;
    /// for n in 0..5 {
    ///     d.dispatch("hot", n)?;
    /// }
    /// d.dispatch("cold", 1)?;
    /// assert_eq!(d.hot_keys(1), [("hot", 5)]); // four waiting, one running
    /// release.send(())?;
    /// d.wait_idle()?;
    /// assert!(d.hot_keys(10).is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hot_keys(&self, n: usize) -> Vec<(K, usize)> {
        self.core.hot_keys(n)
    }
}
