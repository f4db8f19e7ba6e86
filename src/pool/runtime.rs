//! The pool of an async dispatcher (see `Builder::build_async`): no threads of its own. A token
//! is a task on the user's Tokio runtime that runs the dispatcher's ready keys, awaiting each
//! job (see `dispatcher::tasks`), and a timer is a task that sleeps until it is due. Everything
//! else about the pool (attaching, shutting down) is as for threads.
//!
//! Without the `tokio` feature there is no runtime: [`Runtime`] has no values, and the pool's
//! branches for it compile away.

use super::client::{Client, TimerKind};
use crate::sync::{Arc, Weak};
use std::time::Instant;

/// The runtime that an async dispatcher's tokens and timers run on.
#[cfg(feature = "tokio")]
pub(crate) struct Runtime(pub(crate) tokio::runtime::Handle);

/// No runtime without the `tokio` feature.
#[cfg(not(feature = "tokio"))]
pub(crate) enum Runtime {}

#[cfg(feature = "tokio")]
impl Runtime {
    /// Runs a token of `client` as a task.
    pub(super) fn spawn_token(&self, client: Arc<dyn Client>) {
        // The task is dropped unrun if the runtime has shut down: documented on `build_async`.
        drop(self.0.spawn(client.run_task()));
    }

    /// Calls `client.on_timer` with `kind` on the runtime once `due` has passed, and again
    /// whenever it asks.
    pub(super) fn spawn_timer(&self, due: Instant, client: Weak<dyn Client>, kind: TimerKind) {
        drop(self.0.spawn(async move {
            let mut due = due;
            loop {
                tokio::time::sleep_until(due.into()).await;
                let Some(client) = client.upgrade() else {
                    return;
                };
                match client.on_timer(Instant::now(), kind) {
                    Some(next) => due = next,
                    None => return,
                }
            }
        }));
    }

    /// Whether the caller runs on a runtime, where it must not block: a task's thread, or a
    /// thread inside the runtime's context.
    pub(super) fn in_context(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    /// The runtime's worker threads, reported as the pool's.
    pub(super) fn workers(&self) -> usize {
        self.0.metrics().num_workers()
    }
}

#[cfg(not(feature = "tokio"))]
impl Runtime {
    pub(super) fn spawn_token(&self, _: Arc<dyn Client>) {
        match *self {}
    }

    pub(super) fn spawn_timer(&self, _: Instant, _: Weak<dyn Client>, _: TimerKind) {
        match *self {}
    }

    pub(super) fn in_context(&self) -> bool {
        match *self {}
    }
}
