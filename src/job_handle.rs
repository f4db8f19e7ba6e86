//! [`JobHandle`]: a spawned job's result, to join from a thread or await from a task.
//!
//! The job and its handle share a slot. The job fills it once: with its value, or with its
//! panic's payload (the job then panics on, with a message in place of the payload, so that the
//! dispatcher counts the panic and calls its hooks as for any job). A job dropped without
//! running (handed back by `close_now` and dropped, say) fills it with
//! [`JobError::HandedBack`] as it goes. `done` is set after the slot is filled, with `SeqCst`,
//! before the signal is notified: its waiters lose no wake-up (see `signal`).

use crate::{
    pool::PoolShared,
    signal::Signal,
    sync::{lock, Arc, AtomicBool, Mutex, Ordering},
    waiters::Waiter,
};
use std::{
    any::Any,
    error::Error,
    fmt,
    panic::{self, AssertUnwindSafe},
};

/// Why a [`JobHandle`] has no value.
#[non_exhaustive]
pub enum JobError {
    /// The job panicked; here is its payload, as [`std::thread::JoinHandle::join`] gives it.
    Panicked(Box<dyn Any + Send + 'static>),
    /// The job was dropped without running: handed back by
    /// [`close_now`](crate::Dispatcher::close_now) and dropped, or dropped by a shutdown that
    /// gave up on it.
    HandedBack,
    /// [`join`](JobHandle::join) was called on a worker thread of the dispatcher's pool before
    /// the job finished: waiting there could deadlock. The handle is dropped; the job still
    /// runs.
    WouldDeadlock,
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panicked(_) => f.write_str("Panicked(..)"),
            Self::HandedBack => f.write_str("HandedBack"),
            Self::WouldDeadlock => f.write_str("WouldDeadlock"),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Panicked(_) => "the job panicked",
            Self::HandedBack => "the job was dropped without running",
            Self::WouldDeadlock => "joining on a worker thread of the same pool could deadlock",
        })
    }
}

impl Error for JobError {}

/// What the job and its handle share.
struct Shared<T> {
    slot: Mutex<Option<Result<T, JobError>>>,
    done: AtomicBool,
    ready: Signal,
}

/// The result of a job from [`Dispatcher::spawn_with_result`](crate::Dispatcher::spawn_with_result):
/// [`join`](JobHandle::join) it from a thread, or `.await` it (with the `async` feature).
///
/// Dropping the handle does not cancel the job: it runs, and its value is dropped.
pub struct JobHandle<T> {
    shared: Arc<Shared<T>>,
    pool: Arc<PoolShared>,
    /// A task's place in the signal's line, while it awaits.
    waiter: Option<Arc<Waiter>>,
}

/// The job's side: fills the slot once, or with `HandedBack` if dropped unrun.
pub(crate) struct Completer<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// A new job's handle and the side the job keeps.
pub(crate) fn pair<T>(pool: Arc<PoolShared>) -> (Completer<T>, JobHandle<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(None),
        done: AtomicBool::new(false),
        ready: Signal::default(),
    });
    let handle = JobHandle {
        shared: Arc::clone(&shared),
        pool,
        waiter: None,
    };
    (
        Completer {
            shared: Some(shared),
        },
        handle,
    )
}

impl<T> Completer<T> {
    /// Runs `f`, filling the slot with its value or its panic; panics on after a panic.
    pub(crate) fn run(mut self, f: impl FnOnce() -> T) {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => self.fill(Ok(value)),
            Err(payload) => {
                self.fill(Err(JobError::Panicked(payload)));
                panic::resume_unwind(Box::new("the job panicked; its JobHandle has the payload"));
            }
        }
    }

    fn fill(&mut self, result: Result<T, JobError>) {
        if let Some(shared) = self.shared.take() {
            *lock(&shared.slot) = Some(result);
            // ORDERING: SeqCst, see the module docs.
            shared.done.store(true, Ordering::SeqCst);
            shared.ready.notify_all();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.fill(Err(JobError::HandedBack));
    }
}

impl<T> JobHandle<T> {
    /// Whether the job has finished (or was dropped unrun): [`join`](JobHandle::join) would
    /// not block.
    pub fn is_finished(&self) -> bool {
        self.shared.done.load(Ordering::SeqCst)
    }

    /// Blocks until the job has finished, and returns its value.
    ///
    /// # Errors
    ///
    /// [`JobError::Panicked`] with the payload if the job panicked; [`JobError::HandedBack`]
    /// if it was dropped without running; [`JobError::WouldDeadlock`] at once if called on a
    /// worker thread of the dispatcher's pool before the job finished.
    pub fn join(self) -> Result<T, JobError> {
        if !self.is_finished() && self.pool.must_not_block() {
            return Err(JobError::WouldDeadlock);
        }
        self.shared.ready.wait_until(None, || self.is_finished());
        self.take()
    }

    fn take(&self) -> Result<T, JobError> {
        lock(&self.shared.slot)
            .take()
            .expect("a finished job's handle is taken once")
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> Drop for JobHandle<T> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.shared.ready.abandon(&waiter);
        }
    }
}

// Nothing in it is pinned: the value is moved out.
impl<T> Unpin for JobHandle<T> {}

/// Awaits the job's value, with [`join`](JobHandle::join)'s errors (but never
/// `WouldDeadlock`: awaiting blocks no thread). Poll it no more after it resolved.
#[cfg(feature = "async")]
impl<T> std::future::Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        let shared = &this.shared;
        let done = || shared.done.load(Ordering::SeqCst);
        let finished = shared.ready.poll_until(&mut this.waiter, cx, done);
        finished.map(|()| this.take())
    }
}
