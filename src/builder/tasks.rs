//! The settings and builds of async dispatchers (feature `tokio`): jobs as futures awaited on a
//! Tokio runtime, a key's one at a time (see `dispatcher::tasks`).

use super::Builder;
use crate::{
    async_handler::{AsyncJobs, AsyncPlain},
    dispatcher::{
        core::{Core, Runner},
        Dispatcher,
    },
    error::BuildError,
    gate::MAX_CAPACITY,
    handler::HandlerOutput,
    hooks::{DeadLetter, ErrorHook, NoDeadLetter},
    pool::{PoolShared, Runtime},
    retry::RetryOutput,
};
use std::{fmt::Debug, future::Future, hash::Hash, sync::Arc};

/// How many jobs an async dispatcher runs at once, across keys, unless
/// [`max_in_flight`](Builder::max_in_flight) says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// For [`build_async`](Builder::build_async): the most jobs whose futures are in flight at
    /// once, across keys (a key never has more than one). Default
    /// [`DEFAULT_MAX_IN_FLIGHT`]; values above 2<sup>61</sup> mean no cap. It also adds to
    /// the jobs the dispatcher admits, as `max_parallel` does for threads: `capacity` counts
    /// the jobs that wait, not those running.
    ///
    /// A dispatcher whose jobs run on threads refuses it with
    /// [`BuildError::AsyncOnly`]: its cap is [`max_parallel`](Builder::max_parallel).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{BuildError, Dispatcher};
    ///
    /// let err = Dispatcher::builder().max_in_flight(0).build_async(|_: u8, _: u8| async {});
    /// assert!(matches!(err.unwrap_err(), BuildError::ZeroMaxInFlight));
    /// let err = Dispatcher::builder().max_in_flight(8).build(|_: &u8, _: u8| {});
    /// assert!(matches!(err.unwrap_err(), BuildError::AsyncOnly { setting: "max_in_flight" }));
    /// ```
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = Some(max_in_flight);
        self
    }

    /// For [`build_async`](Builder::build_async): the runtime whose tasks run the jobs.
    /// Default: the runtime `build_async` is called in.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    /// let d = Dispatcher::builder()
    ///     .runtime(rt.handle().clone())
    ///     .build_async(|_: u8, n: u64| async move { assert!(n > 0) })?;
    /// rt.block_on(async {
    ///     d.dispatch_async(1, 5).await?;
    ///     assert_eq!(d.close_async().await.stats.completed, 1);
    ///     Ok::<_, Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }
}

impl<K, J> Builder<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Checks the configuration and starts the async dispatcher on `handler`.
    fn start_async(self, handler: impl AsyncJobs<K, J>) -> Result<Dispatcher<K, J>, BuildError> {
        let threads_only = [
            ("workers", self.workers.is_some()),
            ("pool", self.pool.is_some()),
            ("max_parallel", self.max_parallel.is_some()),
            ("pin_workers", self.threads.pin),
            ("slow_job", self.slow_job.is_some()),
            ("record_latency", self.record_latency),
        ];
        let setting = threads_only
            .into_iter()
            .find_map(|(setting, set)| set.then_some(setting))
            .or_else(|| self.threads.first_set());
        if let Some(setting) = setting {
            return Err(BuildError::ThreadsOnly { setting });
        }
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(BuildError::ZeroMaxInFlight);
        }
        let config = self.config(max_in_flight.min(MAX_CAPACITY))?;
        let handle = match self.runtime {
            Some(handle) => handle,
            None => tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?,
        };
        let pool = PoolShared::on_runtime(Runtime(handle), &config.name);
        let runner = Runner::Tasks(Box::new(Arc::new(handler)));
        let core = Core::new(config, pool, runner, self.on_panic, None, None);
        core.pool().attach(core.as_client())?;
        #[cfg(feature = "metrics")]
        core.start_publishing();
        log::debug!(
            "{}: async dispatcher built, at most {} jobs in flight",
            core.config().name,
            core.config().max_parallel
        );
        Ok(Dispatcher::from_core(core))
    }
}

impl<K, J, O> Builder<K, J, NoDeadLetter, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Builds an async dispatcher (feature `tokio`): each job is the future that `handler`
    /// returns for it, awaited on a Tokio runtime; a key's next job starts once its last
    /// future has completed. The handler returns `()` or `Result<(), E>` with `E: Display`,
    /// as [`build`](Builder::build)'s.
    ///
    /// Everything else is as for a dispatcher whose jobs run on threads, with the same
    /// methods: order per key, fairness between keys, bounded queues whose refusals hand the
    /// job back, eviction of idle keys, groups, `flush_key`, `pause_key`, the `close` family,
    /// panics caught and counted (a panicking future ends its job; the key goes on). Up to
    /// [`max_in_flight`](Builder::max_in_flight) futures run at once, across keys: I/O
    /// concurrency is not capped by threads. Feed it with
    /// [`dispatch_async`](Dispatcher::dispatch_async) from async code.
    ///
    /// # The key by value
    ///
    /// The handler takes the key by value, cloned for each job, so that its future may keep
    /// it: a future borrowing `&K` cannot be returned by a closure on stable Rust. Where a
    /// key is costly to clone, make it an `Arc<str>` or similar.
    ///
    /// # The runtime
    ///
    /// Jobs run as tasks on the runtime given with [`runtime`](Builder::runtime), or else on
    /// the one `build_async` is called in ([`BuildError::NoRuntime`] outside any). It needs its
    /// timer enabled (`enable_time` or `enable_all`) for retries' backoffs, delayed dispatch
    /// and eviction. No task is held while nothing is to be done: a task runs keys while any
    /// is ready, then ends; an idle dispatcher holds no task and no thread.
    ///
    /// Inside the runtime, the blocking methods do not block, as on a worker thread of a
    /// thread-run dispatcher: `dispatch` refuses with `Full` rather than wait for room,
    /// `close` (and the last handle's drop) closes without waiting, and the jobs drain on
    /// the runtime; `close_now` returns `WouldDeadlock`. Await their async twins there
    /// ([`close_async`](Dispatcher::close_async) and the like). Close the dispatcher before
    /// the runtime shuts down: jobs left then are dropped with the runtime's tasks.
    ///
    /// The settings of thread-run dispatchers (`workers`, `pool`, `max_parallel`, the thread
    /// settings, `slow_job`, `record_latency`) are refused with [`BuildError::ThreadsOnly`].
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build), and [`BuildError::NoRuntime`],
    /// [`BuildError::ThreadsOnly`] or [`BuildError::ZeroMaxInFlight`].
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let d = Dispatcher::builder()
    ///     .max_in_flight(10_000)
    ///     .key_capacity(64)
    ///     .build_async(|tenant: u64, hook: String| async move {
    ///         tokio::time::sleep(Duration::from_millis(1)).await; // the delivery
    ///         if hook.is_empty() {
    ///             return Err(format!("empty hook for tenant {tenant}"));
    ///         }
    ///         Ok(())
    ///     })?;
    /// d.dispatch_async(7, "created".to_string()).await?;
    /// d.dispatch_async(7, String::new()).await?; // fails: logged, counted
    /// let report = d.close_async().await;
    /// assert_eq!((report.stats.completed, report.stats.failed), (2, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_async<F, Fut>(self, handler: F) -> Result<Dispatcher<K, J>, BuildError>
    where
        F: Fn(K, J) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
        O: ErrorHook<K, <Fut::Output as HandlerOutput>::Error>,
    {
        if self.retry.is_some() {
            return Err(BuildError::RetryWithoutRetryingHandler);
        }
        let (builder, NoDeadLetter, on_error) = self.split_hooks();
        builder.start_async(AsyncPlain { handler, on_error })
    }
}

impl<K, J, D, O> Builder<K, J, D, O>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Clone + Send + 'static,
{
    /// [`build_async`](Builder::build_async) with retries: as
    /// [`build_retrying`](Builder::build_retrying), with a future for each attempt. A failed
    /// job waits out its backoff on the runtime's timer, holding no task, and its key's later
    /// jobs wait behind it.
    ///
    /// Each attempt gets a clone of the job, the dispatcher keeping the original for the next
    /// attempt or the dead-letter hook: make a costly job an `Arc`.
    ///
    /// # Errors
    ///
    /// As [`build_async`](Builder::build_async) and [`build_retrying`](Builder::build_retrying).
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::{Dispatcher, RetryPolicy};
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tries = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&tries);
    /// let d = Dispatcher::builder()
    ///     .retry(RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(10)))
    ///     .build_async_retrying(move |_: u8, _: &'static str| {
    ///         let tries = Arc::clone(&counted);
    ///         async move {
    ///             match tries.fetch_add(1, Ordering::SeqCst) {
    ///                 0 => Err("busy"), // retried after 1 ms
    ///                 _ => Ok(()),
    ///             }
    ///         }
    ///     })?;
    /// d.dispatch_async(1, "charge").await?;
    /// let stats = d.close_async().await.stats;
    /// assert_eq!((stats.completed, stats.retried, tries.load(Ordering::SeqCst)), (1, 1, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_async_retrying<F, Fut>(self, handler: F) -> Result<Dispatcher<K, J>, BuildError>
    where
        F: Fn(K, J) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: RetryOutput + 'static,
        D: DeadLetter<K, J, <Fut::Output as RetryOutput>::Error>,
        O: ErrorHook<K, <Fut::Output as RetryOutput>::Error>,
    {
        let (builder, retrying) = self.retrying(handler)?;
        builder.start_async(retrying)
    }
}
