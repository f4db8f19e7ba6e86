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
//!   [`close_now`](Dispatcher::close_now) hands it back. A refused job comes back inside the
//!   [`DispatchError`], with its key. A panicking job is caught, logged and counted; its key
//!   and its thread go on.
//! - **Clean shutdown.** [`close`](Dispatcher::close) stops accepting, runs every accepted job,
//!   evicts every key and joins every thread. Dropping the dispatcher does the same.
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
//! # Shutdown
//!
//! [`Dispatcher::close`] is idempotent and takes `&self`: producers on other threads get
//! `Closed` errors from then on. `Drop` calls it, so a dispatcher that goes out of scope drains
//! and joins before the drop returns. [`Dispatcher::close_now`] stops after the running jobs and
//! hands back the rest, grouped by key in dispatch order. Called from inside a handler, where
//! waiting could deadlock, `close` stops accepting without waiting, and the waits
//! ([`wait_idle`](Dispatcher::wait_idle), `close_now`) return [`WaitError::WouldDeadlock`].
//! Closing from several threads at once is safe: all wait for the same drain.
//!
//! # Logging
//!
//! Through the [`log`] crate, every line naming its dispatcher and key (hence `K: Debug`):
//! `debug` for pools started and stopped, keys created and evicted, close begun and done;
//! `trace` for each job; `warn` for a handler's error; `error` for a panic. With `env_logger`,
//! `RUST_LOG=debug cargo run --example tenants` shows them.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod builder;
mod dispatcher;
mod error;
mod gate;
mod handler;
mod keymap;
mod mailbox;
mod pool;
mod shared;
mod signal;
mod stats;
mod sync;

pub use builder::{Builder, DEFAULT_CAPACITY, DEFAULT_JOBS_PER_TURN};
pub use dispatcher::{BoxedJob, CloseReport, Dispatcher};
pub use error::{BuildError, DispatchError, WaitError};
pub use handler::{Handler, HandlerOutput, Never};
pub use pool::{PoolBuilder, WorkerPool};
pub use stats::Stats;
