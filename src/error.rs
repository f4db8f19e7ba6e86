//! Errors. A dispatch that is refused hands its key and job back inside the error.

use std::{error::Error, fmt, io, time::Duration};

/// A dispatch that was refused, with its key and job handed back.
///
/// Nothing refused is lost: [`into_inner`](DispatchError::into_inner) returns the exact key and
/// job that were passed in, so the caller can retry, persist or drop them deliberately. Each
/// method of [`Dispatcher`](crate::Dispatcher) says which variants it returns.
///
/// `Debug` and `Display` never need `K: Debug` or `J: Debug`: `Debug` prints `Full(..)` and the
/// like, `Display` a sentence such as "dispatching on a full key".
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{DispatchError, Dispatcher};
///
/// let d = Dispatcher::builder().workers(1).build(|_key: &u32, _job: String| {})?;
/// d.close();
/// let err = d.try_dispatch(7, "hello".to_string()).unwrap_err();
/// assert!(err.is_closed());
/// assert_eq!(err.to_string(), "dispatching on a closed dispatcher");
/// let (key, job) = err.into_inner();
/// assert_eq!((key, job.as_str()), (7, "hello"));
/// # Ok::<(), keyed_dispatch::BuildError>(())
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum DispatchError<K, J> {
    /// The key's queue or the dispatcher's queue was full: from
    /// [`try_dispatch`](crate::Dispatcher::try_dispatch), and from
    /// [`dispatch`](crate::Dispatcher::dispatch) called on one of the dispatcher's own worker
    /// threads, where waiting for room could deadlock.
    Full {
        /// The key that was passed in.
        key: K,
        /// The job that was passed in.
        job: J,
        /// Which capacity was reached.
        bound: Bound,
    },
    /// The queue stayed full for the whole timeout of
    /// [`dispatch_timeout`](crate::Dispatcher::dispatch_timeout).
    Timeout {
        /// The key that was passed in.
        key: K,
        /// The job that was passed in.
        job: J,
    },
    /// [`close`](crate::Dispatcher::close) or [`close_now`](crate::Dispatcher::close_now) had
    /// begun: the dispatcher accepts no more jobs.
    Closed {
        /// The key that was passed in.
        key: K,
        /// The job that was passed in.
        job: J,
    },
}

/// Which capacity a [`DispatchError::Full`] reached.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Bound, Dispatcher};
/// use std::sync::mpsc;
///
/// let (tx, started) = mpsc::sync_channel(0);
/// let d = Dispatcher::builder().workers(1).key_capacity(0).capacity(1);
/// let d = d.build(move |_: &u8, _: u32| {
///     let _ = tx.send(()); // taken by `started.recv()` once the job runs
///     let _ = tx.send(()); // holds the job until `started` is dropped
/// })?;
/// # let started = started; // dropped before `d`, should an assertion fail
/// d.dispatch(1, 0)?;
/// started.recv()?; // job 0 runs: key 1 has its one job, the one thread is busy
/// assert_eq!(d.try_dispatch(1, 1).unwrap_err().bound(), Some(Bound::Key));
/// d.try_dispatch(2, 2)?; // the one job that may wait, over all keys
/// assert_eq!(d.try_dispatch(3, 3).unwrap_err().bound(), Some(Bound::Dispatcher));
/// drop(started);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// The key's: [`key_capacity`](crate::Builder::key_capacity) jobs wait behind the one it
    /// runs.
    Key,
    /// The dispatcher's: [`capacity`](crate::Builder::capacity) jobs wait in all.
    Dispatcher,
}

impl<K, J> DispatchError<K, J> {
    /// Returns the key and the job that were refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, _: String| {})?;
    /// d.close();
    /// let err = d.dispatch(1, "retry me".to_string()).unwrap_err();
    /// let (key, job) = err.into_inner(); // nothing lost: persist it, or retry elsewhere
    /// assert_eq!((key, job.as_str()), (1, "retry me"));
    /// # Ok::<(), keyed_dispatch::BuildError>(())
    /// ```
    pub fn into_inner(self) -> (K, J) {
        match self {
            Self::Full { key, job, .. }
            | Self::Timeout { key, job }
            | Self::Closed { key, job } => (key, job),
        }
    }

    /// Returns the job that was refused, dropping the key.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::DispatchError;
    ///
    /// let err = DispatchError::Timeout { key: 1, job: vec![1, 2] };
    /// assert_eq!(err.into_job(), [1, 2]);
    /// ```
    pub fn into_job(self) -> J {
        self.into_inner().1
    }

    /// The key of the refused job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, DispatchError};
    ///
    /// let err = DispatchError::Full { key: "acme", job: 7, bound: Bound::Key };
    /// assert_eq!(*err.key(), "acme");
    /// ```
    pub fn key(&self) -> &K {
        match self {
            Self::Full { key, .. } | Self::Timeout { key, .. } | Self::Closed { key, .. } => key,
        }
    }

    /// The refused job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::DispatchError;
    ///
    /// let err = DispatchError::Closed { key: "acme", job: 7 };
    /// assert_eq!(*err.job(), 7);
    /// ```
    pub fn job(&self) -> &J {
        match self {
            Self::Full { job, .. } | Self::Timeout { job, .. } | Self::Closed { job, .. } => job,
        }
    }

    /// True for [`DispatchError::Full`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, DispatchError};
    ///
    /// assert!(DispatchError::Full { key: 1, job: (), bound: Bound::Dispatcher }.is_full());
    /// assert!(!DispatchError::Closed { key: 1, job: () }.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full { .. })
    }

    /// Which capacity a [`DispatchError::Full`] reached; `None` for the other variants.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Bound, DispatchError};
    ///
    /// let err = DispatchError::Full { key: 1, job: (), bound: Bound::Key };
    /// assert_eq!(err.bound(), Some(Bound::Key));
    /// assert_eq!(err.to_string(), "dispatching on a full key");
    /// assert_eq!(DispatchError::Timeout { key: 1, job: () }.bound(), None);
    /// ```
    pub fn bound(&self) -> Option<Bound> {
        match self {
            Self::Full { bound, .. } => Some(*bound),
            _ => None,
        }
    }

    /// True for [`DispatchError::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::DispatchError;
    ///
    /// assert!(DispatchError::Timeout { key: 1, job: () }.is_timeout());
    /// assert!(!DispatchError::Closed { key: 1, job: () }.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// True for [`DispatchError::Closed`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::DispatchError;
    ///
    /// assert!(DispatchError::Closed { key: 1, job: () }.is_closed());
    /// assert!(!DispatchError::Timeout { key: 1, job: () }.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

impl<K, J> fmt::Debug for DispatchError<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { .. } => f.write_str("Full(..)"),
            Self::Timeout { .. } => f.write_str("Timeout(..)"),
            Self::Closed { .. } => f.write_str("Closed(..)"),
        }
    }
}

impl<K, J> fmt::Display for DispatchError<K, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full {
                bound: Bound::Key, ..
            } => "dispatching on a full key",
            Self::Full {
                bound: Bound::Dispatcher,
                ..
            } => "dispatching on a full dispatcher",
            Self::Timeout { .. } => "timed out dispatching on a full queue",
            Self::Closed { .. } => "dispatching on a closed dispatcher",
        })
    }
}

impl<K, J> Error for DispatchError<K, J> {}

/// A configuration that cannot work, or worker threads that could not be started.
///
/// Returned by [`Builder::build`](crate::Builder::build) and
/// [`PoolBuilder::build`](crate::PoolBuilder::build); nothing is started when it is returned.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{BuildError, Dispatcher};
///
/// let built = Dispatcher::builder().capacity(10).key_capacity(100).build(|_: &u8, _: u8| {});
/// let err = built.unwrap_err();
/// assert!(matches!(
///     err,
///     BuildError::KeyCapacityAboveCapacity { key_capacity: 100, capacity: 10 }
/// ));
/// assert_eq!(err.to_string(), "key_capacity (100) is larger than capacity (10)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// `workers(0)`: a pool needs at least one thread.
    ZeroWorkers,
    /// More worker threads than a pool may have.
    TooManyWorkers {
        /// The threads asked for.
        workers: usize,
        /// The most a pool may have.
        max: usize,
    },
    /// A thread name holds a NUL byte, which thread names cannot: the `name` given, or a name
    /// that the `thread_name` function returned.
    NameWithNul,
    /// `key_capacity` is larger than `capacity`, so it could never be reached.
    KeyCapacityAboveCapacity {
        /// The per-key capacity asked for.
        key_capacity: usize,
        /// The global capacity asked for.
        capacity: usize,
    },
    /// `capacity` is larger than the dispatcher can count.
    CapacityTooLarge {
        /// The capacity asked for.
        capacity: usize,
        /// The largest capacity supported.
        max: usize,
    },
    /// `jobs_per_turn(0)`: a key could never run.
    ZeroJobsPerTurn,
    /// `max_parallel(0)`: the dispatcher could never run.
    ZeroMaxParallel,
    /// `max_parallel` is larger than the pool has threads, so it could never be reached.
    MaxParallelAboveWorkers {
        /// The cap asked for.
        max_parallel: usize,
        /// The pool's threads.
        workers: usize,
    },
    /// Both `workers(n)` and `pool(&pool)` were set: a dispatcher either owns its threads or
    /// shares a pool's.
    WorkersWithPool,
    /// The pool passed to `pool(&pool)` has been closed.
    PoolClosed,
    /// The operating system refused to start a worker thread.
    Spawn(io::Error),
    /// `pin_workers(true)` where threads cannot be pinned: on systems other than Linux,
    /// Android and FreeBSD, or where the system does not say which CPUs this thread may run on.
    PinUnsupported,
    /// The operating system refused to pin a worker thread to its CPU.
    PinRefused {
        /// The worker's index: its thread is named `{name}-{worker}`.
        worker: usize,
        /// The CPU it was to be pinned to.
        cpu: usize,
    },
    /// Both `pin_workers(true)` and `pool(&pool)` were set: pinning is the pool's setting
    /// ([`PoolBuilder::pin_workers`](crate::PoolBuilder::pin_workers)).
    PinWithPool,
    /// One of `thread_name`, `stack_size`, `on_thread_start` or `on_thread_stop` was set
    /// together with `pool(&pool)`: the threads are the pool's, so these are the pool's settings
    /// ([`PoolBuilder`](crate::PoolBuilder)).
    ThreadSettingsWithPool {
        /// The first of them that was set, by its builder method's name.
        setting: &'static str,
    },
    /// `RetryPolicy::max_attempts(0)`: a job could never run.
    ZeroAttempts,
    /// A retry policy whose longest backoff is shorter than its first.
    BackoffBelowInitial {
        /// The first backoff asked for.
        initial: Duration,
        /// The longest backoff asked for.
        max: Duration,
    },
    /// `retry(..)` was set for `build`, whose handler takes its job by value and so cannot
    /// run it again: use `build_retrying`.
    RetryWithoutRetryingHandler,
    /// A setting of thread-run dispatchers (`workers`, `pool`, `max_parallel`, the thread
    /// settings, `slow_job`, `record_latency`) was given to `build_async`, whose jobs run as
    /// tasks on a runtime: cap them with `max_in_flight`.
    ThreadsOnly {
        /// The setting, by its builder method's name.
        setting: &'static str,
    },
    /// `max_in_flight` was given to a dispatcher whose jobs run on threads: cap them with
    /// `max_parallel`.
    AsyncOnly {
        /// The setting, by its builder method's name.
        setting: &'static str,
    },
    /// `max_in_flight(0)`: the dispatcher could never run.
    ZeroMaxInFlight,
    /// `build_async` outside a Tokio runtime, and no runtime given with `runtime(handle)`.
    NoRuntime,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroWorkers => f.write_str("a pool needs at least one worker thread"),
            Self::ThreadsOnly { setting } => write!(
                f,
                "{setting} applies to dispatchers whose jobs run on threads, not to build_async \
                 (use max_in_flight)"
            ),
            Self::AsyncOnly { setting } => write!(
                f,
                "{setting} applies to build_async only (use max_parallel on threads)"
            ),
            Self::ZeroMaxInFlight => f.write_str("max_in_flight must be at least 1"),
            Self::NoRuntime => f.write_str(
                "build_async needs a Tokio runtime: call it inside one, or give one with runtime()",
            ),
            Self::TooManyWorkers { workers, max } => {
                write!(f, "{workers} workers are more than a pool may have ({max})")
            }
            Self::NameWithNul => f.write_str("a thread name cannot hold a NUL byte"),
            Self::KeyCapacityAboveCapacity {
                key_capacity,
                capacity,
            } => write!(
                f,
                "key_capacity ({key_capacity}) is larger than capacity ({capacity})"
            ),
            Self::CapacityTooLarge { capacity, max } => {
                write!(
                    f,
                    "capacity ({capacity}) is larger than the maximum ({max})"
                )
            }
            Self::ZeroJobsPerTurn => f.write_str("jobs_per_turn must be at least 1"),
            Self::ZeroMaxParallel => f.write_str("max_parallel must be at least 1"),
            Self::MaxParallelAboveWorkers {
                max_parallel,
                workers,
            } => write!(
                f,
                "max_parallel ({max_parallel}) is larger than the pool's {workers} workers"
            ),
            Self::WorkersWithPool => {
                f.write_str("workers(n) and pool(&pool) cannot both be set on one dispatcher")
            }
            Self::PoolClosed => f.write_str("the worker pool has been closed"),
            Self::Spawn(_) => f.write_str("failed to spawn a worker thread"),
            Self::PinUnsupported => {
                f.write_str("pin_workers: threads cannot be pinned to CPUs here")
            }
            Self::PinRefused { worker, cpu } => {
                write!(f, "pin_workers: could not pin worker {worker} to CPU {cpu}")
            }
            Self::PinWithPool => f.write_str(
                "pin_workers(true) and pool(&pool) cannot both be set: pinning is the pool's setting",
            ),
            Self::ThreadSettingsWithPool { setting } => write!(
                f,
                "{setting} and pool(&pool) cannot both be set: the threads are the pool's"
            ),
            Self::ZeroAttempts => f.write_str("max_attempts must be at least 1"),
            Self::BackoffBelowInitial { initial, max } => write!(
                f,
                "the longest backoff ({max:?}) is shorter than the first ({initial:?})"
            ),
            Self::RetryWithoutRetryingHandler => {
                f.write_str("retry(..) needs build_retrying: build's handler consumes its job")
            }
        }
    }
}

impl Error for BuildError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Spawn(err) => Some(err),
            _ => None,
        }
    }
}

/// A wait that could not be carried out.
///
/// Returned by [`Dispatcher::wait_idle`](crate::Dispatcher::wait_idle) and the other waits.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::{Dispatcher, WaitError};
/// use std::sync::mpsc;
///
/// let d = Dispatcher::builder().build_spawner()?;
/// let (tx, rx) = mpsc::channel();
/// let handle = d.clone();
/// d.spawn(1, move || tx.send(handle.close_now().err()).unwrap())?;
/// let err = rx.recv()?.unwrap(); // a job cannot wait for itself
/// assert_eq!(err, WaitError::WouldDeadlock);
/// assert_eq!(err.to_string(), "waiting on a worker thread of the same pool could deadlock");
/// assert!(!d.is_closed()); // close_now changed nothing
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// Called on one of the pool's own worker threads (from inside a handler). Waiting there
    /// could deadlock, since the jobs waited for may need that very thread, so the call
    /// returns at once instead.
    WouldDeadlock,
    /// The timeout passed before the condition was met.
    Timeout,
    /// `wait_idle` found a paused key holding jobs, which would never run: resume it (or
    /// cancel its jobs) first.
    KeysPaused,
    /// [`close_timeout`](crate::Dispatcher::close_timeout) returned with jobs still running,
    /// and the jobs kept behind them will never run: wait with
    /// [`close_now`](crate::Dispatcher::close_now), which hands them back.
    Halted,
    /// The dispatcher is closed: there is no room to wait for
    /// ([`reserve`](crate::Dispatcher::reserve)).
    Closed,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WouldDeadlock => "waiting on a worker thread of the same pool could deadlock",
            Self::Timeout => "timed out waiting",
            Self::KeysPaused => "a paused key holds jobs that would never run",
            Self::Halted => "the dispatcher was halted with jobs left that will never run",
            Self::Closed => "the dispatcher is closed",
        })
    }
}

impl Error for WaitError {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dispatch_error_hands_back_key_and_job() {
        let err = DispatchError::Full {
            key: 3,
            job: vec![1, 2],
            bound: Bound::Key,
        };
        assert!(err.is_full() && !err.is_closed() && !err.is_timeout());
        assert_eq!(err.bound(), Some(Bound::Key));
        assert_eq!(*err.key(), 3);
        assert_eq!(err.job(), &vec![1, 2]);
        assert_eq!(format!("{err:?}"), "Full(..)");
        assert_eq!(err.to_string(), "dispatching on a full key");
        assert_eq!(err.into_inner(), (3, vec![1, 2]));
    }

    #[test]
    fn build_error_names_the_values() {
        let err = BuildError::KeyCapacityAboveCapacity {
            key_capacity: 10,
            capacity: 5,
        };
        assert_eq!(
            err.to_string(),
            "key_capacity (10) is larger than capacity (5)"
        );
        let spawn = BuildError::Spawn(io::Error::other("no threads"));
        assert!(spawn.source().is_some());
    }
}
