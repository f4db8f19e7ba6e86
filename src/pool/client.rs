//! What a dispatcher and the pool see of each other: the [`Client`] trait through which the pool
//! runs a dispatcher's keys and timers, and the [`Worker`] that a running dispatcher may ask
//! about the thread it runs on, with the [`TurnBuffers`] it leaves there. Kept apart from the
//! threads, so that a reader of the dispatcher needs only this file of the pool.

use super::threads::PoolShared;
use crate::sync::{Arc, Ordering};
use std::{any::Any, cell::Cell, time::Instant};

/// Something that gives a pool work: a dispatcher.
pub(crate) trait Client: Send + Sync + 'static {
    /// Runs ready keys while holding one of the client's tokens; returns once the token has
    /// been released or handed back to the pool's queue.
    fn run(self: Arc<Self>, worker: &Worker<'_>);

    /// A timer of `kind` set with [`PoolShared::set_timer`] is due; returns when the next one
    /// of that kind is.
    fn on_timer(&self, now: Instant, kind: TimerKind) -> Option<Instant>;

    /// Closes the client, draining its jobs: the pool is closing, or its handle was dropped.
    fn close_client(&self);

    /// As [`Client::run`], for a pool whose tokens are tasks on a runtime (see `runtime`).
    #[cfg(feature = "tokio")]
    fn run_task(self: Arc<Self>)
        -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// What a client's timer is for: a dispatcher has two, armed and run apart, so that one
/// firing does not run the other's work early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The sweep of idle keys (see `dispatcher::evict`).
    Sweep,
    /// The end of the earliest backoff of a retried job (see `dispatcher::backoff`).
    Backoff,
    /// The end of the earliest delay of a delayed dispatch (see `dispatcher::delay`).
    Delay,
    /// Publishing to the `metrics` facade (see `dispatcher::publish`).
    #[cfg(feature = "metrics")]
    Publish,
}

/// Passed to a running client: what it may ask of the worker thread it runs on.
pub(crate) struct Worker<'a> {
    pub(super) pool: &'a PoolShared,
    /// This thread's index in its pool, from 0: a dispatcher's per-thread slots use it.
    pub(crate) index: usize,
    /// What a client left on this thread for the next of its type (see [`TurnBuffers`]).
    pub(crate) turn_buffers: TurnBuffers,
}

impl Worker<'_> {
    /// Whether tokens wait in the pool's queue: a client holding a thread should hand it on
    /// after its current turn.
    ///
    /// A dispatcher's own second token counts too, although handing the thread on to it gains
    /// no fairness: the round trip through the pool lets jobs gather behind the keys, which
    /// then run in larger batches with less contention with the producers on their locks.
    /// Counting only other clients' tokens was slower (DESIGN.md, "Notes moved from the code").
    pub(crate) fn others_waiting(&self) -> bool {
        // ORDERING: Relaxed; a stale answer costs one turn of unfairness, never correctness.
        self.pool.queued.load(Ordering::Relaxed) > 0
    }
}

/// A value that a client leaves on a worker thread for the next one of its type to take
/// there: a dispatcher's turn buffers, so that a thread that gives its token back whenever the
/// ready keys run out (as often as every few dozen jobs) does not free them and allocate them
/// again at its next token.
#[derive(Default)]
pub(crate) struct TurnBuffers(Cell<Option<Box<dyn Any>>>);

impl TurnBuffers {
    /// Takes the value left by [`TurnBuffers::put`] if it is a `T`, or else a default one.
    pub(crate) fn take<T: Default + 'static>(&self) -> T {
        let mut kept = self.0.take();
        let value = kept
            .as_mut()
            .and_then(|kept| kept.downcast_mut::<T>())
            .map(std::mem::take)
            .unwrap_or_default();
        self.0.set(kept);
        value
    }

    /// Leaves `value` in place of what was kept before. It allocates only for the first value
    /// of its type in a row: where clients with different types take turns on the thread,
    /// each replaces (and frees) the other's.
    pub(crate) fn put<T: 'static>(&self, value: T) {
        let mut kept = self.0.take();
        match kept.as_mut().and_then(|kept| kept.downcast_mut::<T>()) {
            Some(slot) => *slot = value,
            None => kept = Some(Box::new(value)),
        }
        self.0.set(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::TurnBuffers;

    #[test]
    fn kept_value_comes_back_once_and_only_as_its_own_type() {
        let kept = TurnBuffers::default();
        assert_eq!(kept.take::<Vec<u8>>(), Vec::<u8>::new());
        kept.put(Vec::<u8>::with_capacity(64));
        let buffer: Vec<u8> = kept.take();
        assert!(buffer.capacity() >= 64, "the kept allocation came back");
        assert_eq!(kept.take::<Vec<u8>>().capacity(), 0, "taken once");
        kept.put(buffer);
        assert_eq!(
            kept.take::<Vec<u16>>(),
            Vec::<u16>::new(),
            "another type gets a default"
        );
        kept.put(String::from("x"));
        assert_eq!(
            kept.take::<String>(),
            "x",
            "a value of another type replaces it"
        );
        assert_eq!(
            kept.take::<Vec<u8>>().capacity(),
            0,
            "replaced, not kept beside it"
        );
    }
}
