//! Keyed sequential dispatch: jobs with the same key run one at a time, in dispatch order;
//! jobs with different keys run in parallel on a bounded pool of threads.
//!
//! Every job carries a key: a tenant, an account, a device, an entity id. A
//! [`Dispatcher`] routes each job to its key's queue (a `DashMap` from keys to per-key
//! mailboxes) and runs the queues of ready keys on a fixed set of worker threads, so a million
//! keys cost a million small queues, not a million threads.
//!
//! # Guarantees
//!
//! - **Order per key.** If `dispatch(k, a)` returned before `dispatch(k, b)` was called, `a`
//!   finishes before `b` starts. Two jobs of one key never run at the same time.
//! - **Parallel keys.** Jobs of different keys run at the same time on different threads. A
//!   slow key holds at most its own thread: the others keep serving the other keys (no
//!   head-of-line blocking, unlike keys hashed onto fixed threads).
//! - **Fair turns.** A key runs at most [`jobs_per_turn`](Builder::jobs_per_turn) jobs before
//!   its thread moves on to the next ready key, so one hot key cannot starve the rest.
//! - **Bounded threads.** Exactly [`workers`](Builder::workers) threads, however many keys.
//! - **Bounded memory.** At most [`capacity`](Builder::capacity) jobs wait in all and
//!   [`key_capacity`](Builder::key_capacity) per key; `dispatch` blocks when full. Idle keys
//!   are evicted from the map, so memory follows the live keys, not every key ever seen.
//! - **Nothing lost.** Every accepted job runs exactly once, unless
//!   [`close_now`](Dispatcher::close_now) or [`cancel_key`](Dispatcher::cancel_key) hands it
//!   back. A refused job comes back inside the
//!   [`DispatchError`], with its key. A panicking job is caught, logged and counted; its key
//!   and its thread go on.
//! - **Clean shutdown.** [`close`](Dispatcher::close) stops accepting, runs every accepted job,
//!   evicts every key and joins every thread. Dropping the dispatcher (its last clone, if it was
//!   cloned) does the same.
//!
//! # Example
//!
//! ```
//! use keyed_dispatch::Dispatcher;
//! use std::{collections::HashMap, sync::Mutex};
//!
//! // Per-account running balances; each account's operations apply in order.
//! let balances = Mutex::new(HashMap::new());
//! let ledger = Dispatcher::builder()
//!     .workers(4)
//!     .name("ledger")
//!     .build(move |account: &u32, amount: i64| {
//!         let mut balances = balances.lock().unwrap();
//!         let balance = balances.entry(*account).or_insert(0i64);
//!         *balance += amount;
//!         assert!(*balance >= 0, "account {account} overdrawn");
//!     })?;
//!
//! for account in 0..100 {
//!     ledger.dispatch(account, 50)?; // deposit first...
//!     ledger.dispatch(account, -50)?; // ...so that this never overdraws
//! }
//! let report = ledger.close();
//! assert_eq!(report.stats.completed, 200);
//! assert_eq!(report.stats.panicked, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Groups and barriers
//!
//! - A [`Group`], from [`Dispatcher::group`], counts the jobs dispatched through it, across any
//!   keys; [`Group::wait`] blocks until all of them have finished and returns a
//!   [`GroupReport`] of how they ended. A job that fails or panics still completes its group
//!   and is counted as such; a refused dispatch is not counted. Waiting does not stop anyone
//!   from dispatching, through the group or not. Jobs outside any group pay nothing for groups.
//! - [`Dispatcher::flush_key`] blocks until every job of one key dispatched before the call
//!   has finished, without holding up other keys or new dispatches; a key with no job queued
//!   or running returns at once.
//! - [`Dispatcher::wait_idle`] waits for everything, jobs dispatched meanwhile included.
//!
//! ```
//! use keyed_dispatch::Dispatcher;
//!
//! let d = Dispatcher::builder().build(|user: &u32, n: u32| -> Result<(), String> {
//!     if n == 13 { Err(format!("user {user}: unlucky")) } else { Ok(()) }
//! })?;
//! let import = d.group();
//! for n in 0..100 {
//!     import.dispatch(n % 10, n)?;
//! }
//! let report = import.wait()?; // a barrier: all 100 have finished
//! assert_eq!((report.completed, report.failed), (100, 1));
//! d.dispatch(3, 1)?;
//! d.flush_key(&3)?; // user 3's jobs so far have finished
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Failures and retries
//!
//! A dispatcher built with [`Builder::build_retrying`] retries a failed job without breaking
//! its key's order: the handler borrows the job (`Fn(&K, &J)`), and a failed attempt puts it
//! back at the head of its key, which waits out a backoff ([`RetryPolicy`]) while other keys
//! run; no later job of the key starts before it has succeeded or failed for good, and no
//! thread waits meanwhile. A job that fails its last attempt, or returns
//! [`Failure::permanent`], goes to [`on_dead_letter`](Builder::on_dead_letter) with its last
//! error and the attempts made (without the hook: logged at `error`, counted, dropped). A
//! handler may name its own delay with [`Failure::retry_after`]; panics are retried only with
//! [`RetryPolicy::retry_panics`]. Groups, `flush_key` and [`Stats::completed`] count a retried
//! job once, when it ends; `close` waits for its retries; `close_now` hands it back first.
//! [`Stats::retried`] and [`Stats::dead_lettered`] count them. The plain
//! [`build`](Builder::build) path carries none of this.
//!
//! On any dispatcher, [`Dispatcher::pause_key`] holds one key's queued and new jobs (after its
//! running job) while other keys go on, [`Dispatcher::resume_key`] lets it continue where it
//! stopped, and [`Dispatcher::cancel_key`] takes its jobs that have not started, in order, a job
//! waiting out its backoff first. `close` resumes and drains paused keys; `wait_idle` returns
//! [`WaitError::KeysPaused`] rather than wait for a paused key's jobs.
//!
//! ```
//! use keyed_dispatch::{Dispatcher, Failure, RetryPolicy};
//! use std::time::Duration;
//!
//! let d = Dispatcher::builder()
//!     .retry(RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(8))
//!         .max_attempts(4))
//!     .on_dead_letter(|hook: &u32, body: String, err: String, attempts: u32| {
//!         eprintln!("parking webhook {hook} ({body}) after {attempts} attempts: {err}");
//!     })
//!     .build_retrying(|_hook: &u32, body: &String| -> Result<(), Failure<String>> {
//!         if body.is_empty() {
//!             return Err(Failure::permanent("empty body".to_string()));
//!         }
//!         Ok(()) // deliver; an `Err(e)?` here would be retried
//!     })?;
//! d.dispatch(1, "{}".to_string())?;
//! d.dispatch(1, String::new())?;
//! let stats = d.close().stats;
//! assert_eq!((stats.completed, stats.dead_lettered), (2, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # From async code
//!
//! With the `async` feature (on by default: it adds no dependency and needs no particular
//! runtime), producers and waits have forms that block no thread:
//! [`dispatch_async`](Dispatcher::dispatch_async), [`reserve`](Dispatcher::reserve) (a
//! [`Permit`], the cancel-safe form for `select!` loops), [`Group::wait_async`],
//! [`flush_key_async`](Dispatcher::flush_key_async),
//! [`wait_idle_async`](Dispatcher::wait_idle_async) and
//! [`close_async`](Dispatcher::close_async); a spawner's
//! [`spawn_with_result`](Dispatcher::spawn_with_result) returns a [`JobHandle`] to await.
//! Threads and tasks waiting for room in a key share one line, in arrival order.
//!
//! With the `tokio` feature, the jobs themselves may be futures:
//! `Builder::build_async` awaits each job's future on a Tokio runtime, a key's one at a time,
//! up to `max_in_flight` across keys, with everything else as above (see the README's "Async
//! handlers").
//!
//! # Shared pools
//!
//! Several dispatchers, each with its own key type, job type and handler, can share the threads
//! of one [`WorkerPool`] ([`Builder::pool`]): turns are handed out fairly between dispatchers as
//! between keys, so a busy dispatcher cannot starve the others, and
//! [`max_parallel`](Builder::max_parallel) caps how many threads one of them uses at once.
//! Closing a dispatcher leaves the pool serving the others; [`WorkerPool::close`] (or dropping
//! the pool) closes, and so drains, every dispatcher still on it, then joins the threads.
//! `examples/pipeline.rs` chains two dispatchers on one pool with a group barrier between them.
//!
//! # Shutdown
//!
//! [`Dispatcher::close`] is idempotent and takes `&self`: producers on other threads, through
//! any clone of the handle, get `Closed` errors from then on. A [`Dispatcher`] is a handle that
//! producers clone to share it; the drop of the last clone calls `close`, so a dispatcher that
//! goes out of scope drains and joins before the drop returns. [`Dispatcher::close_now`] stops after the running jobs and
//! hands back the rest, grouped by key in dispatch order; each group counts them as
//! [`handed_back`](GroupReport::handed_back), so no wait hangs on them. Called from inside a
//! handler (of any dispatcher on the same pool), where waiting could deadlock, `close` stops
//! accepting without waiting, and the waits ([`wait_idle`](Dispatcher::wait_idle),
//! [`flush_key`](Dispatcher::flush_key), [`Group::wait`], `close_now`) return
//! [`WaitError::WouldDeadlock`].
//! Closing from several threads at once is safe: all wait for the same drain.
//! [`Dispatcher::close_timeout`] bounds the shutdown by a deadline, even past a handler that
//! hangs.
//!
//! # Seeing inside
//!
//! [`Dispatcher::stats`] counts jobs by fate and refusals by cause ([`Refusals`]);
//! [`Dispatcher::hot_keys`] names the keys with the deepest backlog;
//! [`Builder::slow_job`] reports a job still running past a threshold while it runs; with
//! [`Builder::record_latency`], [`Dispatcher::metrics`] adds histograms of each job's wait and
//! run. With the cargo feature `metrics`, the same figures go to the [`metrics`](https://docs.rs/metrics)
//! crate's facade, labelled with the dispatcher's name, for whatever exporter the
//! application installed.
//!
//! # User code: where it runs, and what it may do
//!
//! A key's `Hash`, `Eq`, `Clone`, `Drop` and `Debug`, a job's `Drop`, the handler, its error
//! and the hooks are all user code. None of it runs while the dispatcher holds a lock of its
//! own, except the key's `Eq`, which the map calls under one of its shard locks.
//!
//! | user code | runs | may call back into the dispatcher | if it panics |
//! |---|---|---|---|
//! | key `Hash` | once per `dispatch` or `flush_key`, on the caller's thread, before anything is reserved; never again (the map keeps the hash) | yes | the caller sees the panic; nothing was reserved |
//! | key `Eq` | when the map looks the key up: on the caller's thread, or on a worker when an idle key is evicted; under a shard lock | no | on the caller's thread: the caller sees the panic, and the slot (and group count) the dispatch had taken is given back; on a worker: logged, and the key stays until it runs again or the shutdown |
//! | key `Clone` | only in `close_now`, for a key whose mailbox a racing dispatch still holds | yes | that key's jobs cannot be handed back: dropped, logged at `error`, counted as handed back |
//! | key `Drop` | when the key's mailbox is freed (eviction, shutdown), or in `dispatch` once the job is queued where the key already has a mailbox | yes | caught and logged: the dispatch still returns `Ok` |
//! | key `Debug` | in log lines, when their level is enabled | yes | the line shows `<Debug panicked>` |
//! | handler, job `Drop`, error `Display` and `Drop` | on a worker, for each job (each attempt, on a retrying dispatcher) | yes, as [below](#shutdown) | counted as the job's panic; the key goes on (a retrying handler's panic is retried only with `retry_panics`) |
//! | `on_panic`, a panic payload's `Drop` | on a worker, after a job panicked | yes | caught and logged |
//! | `on_error` | on a worker, after each failed attempt, before the job is retried or dead-lettered | yes, as from a handler | caught, logged at `error` and counted in `panicked`; the job is retried or dead-lettered as it would have been |
//! | `on_dead_letter` | on a worker, when a retrying dispatcher's job failed for good, before the key's next job | yes, as from a handler | caught, logged at `error` and counted in `panicked`; the key goes on |
//! | `thread_name` | in `build`, on the caller's thread, once per worker before any starts | yes | `build` panics; no thread was started |
//! | `on_thread_start`, `on_thread_stop` | on each worker, before it takes work / right before it exits | yes, as from a handler | caught and logged at `error`; the thread goes on |
//!
//! A dispatch whose key's `Hash` or `Eq` panics is not accepted: its job and key are dropped as
//! the panic unwinds. As anywhere in Rust, a `Drop` that panics while another panic unwinds
//! aborts the process.
//!
//! # Logging
//!
//! Through the [`log`] crate, every line naming its dispatcher and key (hence `K: Debug`):
//! `debug` for pools started and stopped, keys created and evicted, close begun and done;
//! `trace` for each job; `warn` for a handler's error; `error` for a panic. With `env_logger`,
//! `RUST_LOG=debug cargo run --example tenants` shows them.

#![forbid(unsafe_code)]
// Without the `async` feature, the parts of the waiting protocol that only the futures use
// (a task's waker in a line, its cancellation) are built but unused.
#![cfg_attr(not(feature = "async"), allow(dead_code))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// Under loom or shuttle the spin counts are zero, so their loop bounds compare against zero
// and their spin ranges are empty.
#![cfg_attr(
    any(loom, shuttle),
    allow(clippy::absurd_extreme_comparisons, clippy::reversed_empty_ranges)
)]

mod affinity;
#[cfg(feature = "tokio")]
mod async_handler;
mod builder;
mod config;
mod dispatcher;
mod error;
mod gate;
mod group;
mod handler;
mod histogram;
mod hooks;
mod job_handle;
mod keymap;
mod latch;
mod mailbox;
mod pool;
mod ready;
mod retry;
mod signal;
mod stats;
mod sync;
#[cfg(all(test, any(loom, shuttle)))]
mod tests;
mod unwind;
mod waiters;

/// The README's examples are compiled and run as doc tests.
/// They need the `tokio` feature, which the README's test command turns on.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "tokio")]
pub use builder::DEFAULT_MAX_IN_FLIGHT;
pub use builder::{Builder, PoolBuilder, DEFAULT_CAPACITY, DEFAULT_JOBS_PER_TURN};
pub use dispatcher::{CloseReport, Dispatcher, Permit};
#[cfg(feature = "async")]
pub use dispatcher::{DispatchAsync, Reserve};
pub use error::{Bound, BuildError, DispatchError, WaitError};
pub use group::Group;
pub use handler::{BoxedJob, Handler, HandlerOutput, Never};
pub use histogram::Histogram;
pub use hooks::{DeadLetter, DeadLetterFn, ErrorHook, ErrorHookFn, NoDeadLetter, NoErrorHook};
pub use job_handle::{JobError, JobHandle};
pub use latch::GroupReport;
pub use pool::WorkerPool;
pub use retry::{Failure, RetryOutput, RetryPolicy, DEFAULT_MAX_ATTEMPTS};
pub use stats::{Metrics, Refusals, Stats};
