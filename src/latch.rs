//! [`Latch`]: a count-down of jobs, with a tally of how they ended, that waiters block on until
//! it reaches zero.
//!
//! A latch holds `pending`, the jobs counted and not yet finished; tallies of how the finished
//! ones ended; and a [`Signal`] its waiters block on. Each [`Group`](crate::Group) is one (see
//! `group` for its protocol), and so is each barrier behind
//! [`Dispatcher::flush_key`](crate::Dispatcher::flush_key), counting one "job" (see `mailbox`).
//! A leaf of its own because both groups and mailboxes hold latches: the mailbox need not know
//! about groups, nor groups about mailboxes. [`GroupReport`] is what a group's latch reports.
//!
//! No wake-up is lost: `pending` changes with `SeqCst` before [`Signal::notify`], and waiters
//! read it with `SeqCst` (see `Signal`).

use crate::{
    signal::Signal,
    sync::{AtomicU64, AtomicUsize, Ordering},
};
use std::time::Instant;

/// How one job ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Outcome {
    /// The handler returned an error.
    pub(crate) failed: bool,
    /// The handler (or the `on_error` hook it called) panicked.
    pub(crate) panicked: bool,
}

/// The counts a [`Group`](crate::Group) shares between its handles, the workers and
/// `close_now`; or a flush barrier's.
#[derive(Debug)]
pub(crate) struct Latch {
    /// Jobs counted and not yet finished or handed back, plus dispatches in flight that may
    /// still be refused (step 1 of `group`'s module docs).
    pending: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    handed_back: AtomicU64,
    /// Announced when `pending` falls to zero.
    done: Signal,
}

impl Latch {
    /// A latch counting `pending` jobs: zero for a new group, one for a flush barrier.
    pub(crate) fn new(pending: usize) -> Self {
        Latch {
            pending: AtomicUsize::new(pending),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            handed_back: AtomicU64::new(0),
            done: Signal::default(),
        }
    }

    /// Counts a job about to be routed.
    // ORDERING: SeqCst, see the module docs.
    pub(crate) fn add(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// Undoes [`Latch::add`] for a refused dispatch.
    pub(crate) fn refused(&self) {
        self.leave();
    }

    /// A worker finished one of the group's jobs (or reached a flush barrier).
    pub(crate) fn ran(&self, outcome: Outcome) {
        // ORDERING: the tallies are Relaxed; the SeqCst decrement in `leave` publishes them
        // (and the job's own effects) to a waiter that reads `pending` after it.
        self.completed.fetch_add(1, Ordering::Relaxed);
        if outcome.failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.panicked {
            self.panicked.fetch_add(1, Ordering::Relaxed);
        }
        self.leave();
    }

    /// `close_now` handed one of the group's jobs back (or released a flush barrier).
    pub(crate) fn handed_back(&self) {
        // ORDERING: Relaxed, published by `leave` as in `ran`.
        self.handed_back.fetch_add(1, Ordering::Relaxed);
        self.leave();
    }

    fn leave(&self) {
        // ORDERING: SeqCst, see the module docs.
        let prev = self.pending.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(prev > 0, "group count underflow");
        if prev == 1 {
            self.done.notify_all();
        }
    }

    pub(crate) fn pending(&self) -> usize {
        // ORDERING: SeqCst, see the module docs.
        self.pending.load(Ordering::SeqCst)
    }

    /// Blocks until `pending` is zero or `deadline` passes; false on timeout.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        self.done.wait_until(deadline, || self.pending() == 0)
    }

    /// Resolves once `pending` is zero; a task's [`Latch::wait`].
    pub(crate) async fn finished(&self) {
        self.done.until(|| self.pending() == 0).await;
    }

    pub(crate) fn report(&self) -> GroupReport {
        let pending = self.pending() as u64;
        let completed = self.completed.load(Ordering::Relaxed);
        let handed_back = self.handed_back.load(Ordering::Relaxed);
        GroupReport {
            dispatched: completed + handed_back + pending,
            completed,
            failed: self.failed.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            handed_back,
        }
    }
}

/// How a [`Group`](crate::Group)'s jobs ended: from [`Group::wait`](crate::Group::wait),
/// [`Group::wait_timeout`](crate::Group::wait_timeout) and [`Group::report`](crate::Group::report).
///
/// The counts cover every job of the group since it was made, not only those of the last wait.
/// Read by `wait`, which returns once no job of the group is pending, they are exact:
/// `dispatched == completed + handed_back`. A snapshot taken while jobs move is approximate.
///
/// # Examples
///
/// ```
/// use keyed_dispatch::Dispatcher;
///
/// let d = Dispatcher::builder().build(|_: &u8, n: u8| if n == 0 { Err("zero") } else { Ok(()) })?;
/// let batch = d.group();
/// for n in 0..3 {
///     batch.dispatch(n, n)?;
/// }
/// let report = batch.wait()?;
/// assert_eq!((report.dispatched, report.completed, report.failed), (3, 3, 1));
/// assert_eq!((report.panicked, report.handed_back), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupReport {
    /// Jobs the group's dispatches got accepted (refused dispatches are not counted).
    pub dispatched: u64,
    /// Jobs that finished running, whatever their outcome (`failed` and `panicked` included).
    pub completed: u64,
    /// Jobs whose handler returned an error.
    pub failed: u64,
    /// Jobs whose handler panicked.
    pub panicked: u64,
    /// Jobs that never ran because [`close_now`](crate::Dispatcher::close_now) handed them back.
    pub handed_back: u64,
}

impl GroupReport {
    /// True when every job of the group ran and none failed or panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    ///
    /// let d = Dispatcher::builder().build(|_: &u8, n: u8| if n > 0 { Ok(()) } else { Err(n) })?;
    /// let batch = d.group();
    /// batch.dispatch(1, 1)?;
    /// assert!(batch.wait()?.all_succeeded());
    /// batch.dispatch(1, 0)?; // fails
    /// assert!(!batch.wait()?.all_succeeded()); // the counts cover every job of the group
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn all_succeeded(&self) -> bool {
        self.failed == 0 && self.panicked == 0 && self.handed_back == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn state_counts_outcomes_and_reports_done() {
        let state = Latch::new(0);
        for _ in 0..4 {
            state.add();
        }
        state.refused();
        state.ran(Outcome::default());
        state.ran(Outcome {
            failed: true,
            panicked: false,
        });
        assert_eq!(state.pending(), 1);
        assert!(!state.wait(Some(Instant::now())), "one job still pending");
        state.handed_back();
        assert!(state.wait(None));
        let report = state.report();
        assert_eq!(
            (report.dispatched, report.completed, report.failed),
            (3, 2, 1)
        );
        assert_eq!((report.panicked, report.handed_back), (0, 1));
        assert!(!report.all_succeeded());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{thread, Arc};

    /// A waiter never misses the last job of its group, whether it ran or was handed back, and
    /// sees the tallies of both.
    #[test]
    fn loom_group_wait_sees_the_last_job() {
        loom::model(|| {
            let state = Arc::new(Latch::new(0));
            state.add();
            state.add();
            let ran = Arc::clone(&state);
            let runner = thread::spawn(move || ran.ran(Outcome::default()));
            let closer = Arc::clone(&state);
            let handing_back = thread::spawn(move || closer.handed_back());
            assert!(state.wait(None));
            let report = state.report();
            assert_eq!((report.completed, report.handed_back), (1, 1));
            runner.join().unwrap();
            handing_back.join().unwrap();
        });
    }

    /// A refused dispatch racing a waiter: the waiter returns once the count is undone.
    #[test]
    fn loom_refused_dispatch_wakes_the_waiter() {
        loom::model(|| {
            let state = Arc::new(Latch::new(0));
            state.add();
            let refused = Arc::clone(&state);
            let producer = thread::spawn(move || refused.refused());
            assert!(state.wait(None));
            assert_eq!(state.report().dispatched, 0);
            producer.join().unwrap();
        });
    }
}
