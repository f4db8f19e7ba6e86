//! The settings of a dispatcher's queues: how many jobs may wait, per key and in all, how
//! many a key runs per turn, and how long an idle key is kept.

use super::Builder;
use std::{fmt::Debug, hash::Hash, time::Duration};

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// The most jobs that wait to run, over all keys; defaults to [`DEFAULT_CAPACITY`](crate::DEFAULT_CAPACITY). The jobs
    /// running do not count: up to one per thread the dispatcher holds
    /// ([`max_parallel`](Builder::max_parallel)) runs besides them, as a bounded channel of
    /// capacity `n` holds `n` messages besides the one being handled. So at most
    /// `capacity + max_parallel` jobs are accepted and unfinished at once, and that many jobs
    /// is the most the dispatcher holds in memory. A full dispatcher makes
    /// [`dispatch`](crate::Dispatcher::dispatch) wait, and [`try_dispatch`](crate::Dispatcher::try_dispatch)
    /// refuse with [`Full`](crate::DispatchError::Full) and [`Bound::Dispatcher`].
    ///
    /// `capacity(0)` accepts a job only when a thread is free to run it.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().workers(1).capacity(1).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs on the one thread
    /// d.try_dispatch(2, 1)?; // the one job that may wait
    /// let err = d.try_dispatch(3, 2).unwrap_err();
    /// assert_eq!(err.bound(), Some(Bound::Dispatcher));
    /// drop(started);
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`Bound::Dispatcher`]: crate::Bound::Dispatcher
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most jobs of one key that wait behind the job it runs (backpressure on a hot key);
    /// defaults to the global [`capacity`](Builder::capacity). A key holds at most
    /// `key_capacity + 1` jobs accepted and unfinished; the jobs of a running batch (see
    /// [`jobs_per_turn`](Builder::jobs_per_turn)) count until the batch ends. A full key makes
    /// [`dispatch`](crate::Dispatcher::dispatch) wait, and [`try_dispatch`](crate::Dispatcher::try_dispatch)
    /// refuse with [`Full`](crate::DispatchError::Full) and [`Bound::Key`].
    ///
    /// `key_capacity(0)` accepts a job of a key only while it has none.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, Dispatcher};
    /// use std::sync::mpsc;
    ///
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().key_capacity(0).build(move |_: &u8, _: u32| {
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch(1, 0)?;
    /// started.recv()?; // job 0 runs: key 1 has its one job
    /// let err = d.try_dispatch(1, 1).unwrap_err();
    /// assert_eq!(err.bound(), Some(Bound::Key));
    /// d.try_dispatch(2, 2)?; // other keys have room
    /// drop(started);
    /// assert_eq!(d.close().stats.completed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`Bound::Key`]: crate::Bound::Key
    pub fn key_capacity(mut self, key_capacity: usize) -> Self {
        self.key_capacity = Some(key_capacity);
        self
    }

    /// The most jobs a key runs while other keys are ready before its thread moves on to the
    /// next of them; defaults to [`DEFAULT_JOBS_PER_TURN`](crate::DEFAULT_JOBS_PER_TURN). Lower is fairer to other keys, higher
    /// is cheaper for a hot key. While no other key is ready, a key keeps its thread for as long
    /// as it has jobs.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher};
    /// use std::sync::{mpsc, Mutex};
    ///
    /// static RAN: Mutex<Vec<(char, u32)>> = Mutex::new(Vec::new());
    /// let (tx, started) = mpsc::sync_channel(0);
    /// let d = Dispatcher::builder().workers(1).jobs_per_turn(1).build(move |key: &char, n: u32| {
    ///     RAN.lock().unwrap().push((*key, n));
    ///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
    ///     let _ = tx.send(()); // holds the job until `started` is dropped
    /// })?;
    /// # let started = started; // dropped before `d`, should an assertion fail
    /// d.dispatch('a', 0)?;
    /// started.recv()?; // job 0 runs on the one thread
    /// for n in 1..3 {
    ///     d.dispatch('a', n)?;
    ///     d.dispatch('b', n)?;
    /// }
    /// drop(started);
    /// d.close();
    /// assert_eq!(*RAN.lock().unwrap(), [('a', 0), ('b', 1), ('a', 1), ('b', 2), ('a', 2)]);
    ///
    /// let err = Dispatcher::builder().jobs_per_turn(0).build(|_: &u8, _: u8| {}).unwrap_err();
    /// assert!(matches!(err, BuildError::ZeroJobsPerTurn));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn jobs_per_turn(mut self, jobs_per_turn: usize) -> Self {
        self.jobs_per_turn = jobs_per_turn;
        self
    }

    /// Keeps an idle key in the routing map for at least `timeout` (and at most about twice
    /// that) before evicting it, so that a key that comes back within it keeps its entry. Idle
    /// keys are swept every `timeout`, and a key that stayed idle from one sweep to the next
    /// is evicted; [`wait_idle`](crate::Dispatcher::wait_idle) does not evict them sooner.
    ///
    /// The default, zero, sweeps every 20 ms once the dispatcher has run out of work (so an
    /// idle key goes 20 to 40 ms later), and sooner when more than 4,096 keys are idle while
    /// it is busy; `wait_idle` evicts every idle key at once.
    ///
    /// A timeout pays off when keys come back after longer gaps than that: a key's first job
    /// after its eviction creates its entry again, under the map shard's write lock. It costs
    /// memory: every key seen within the timeout stays, however many there are.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::time::Duration;
    ///
    /// let d = Dispatcher::builder()
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .build(|_: &u32, _: u32| {})?;
    /// for key in 0..3 {
    ///     d.dispatch(key, 1)?;
    /// }
    /// d.wait_idle()?;
    /// assert_eq!(d.stats().keys, 3); // idle, and kept for a minute
    /// assert_eq!(d.close().stats.keys, 0); // close evicts every key
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
}
