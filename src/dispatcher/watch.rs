//! Slow jobs: a job still running past the `slow_job` threshold is reported while it runs.
//!
//! Each pool thread has a slot in the dispatcher's [`Watch`]: the mailbox of the turn it runs
//! (set when the turn begins, cleared when it ends) and a count of job starts and ends, odd
//! while a job runs, written only by that thread. A watchdog thread of the dispatcher's own
//! samples the counts every quarter of the threshold: a count seen odd and unchanged since a
//! sample at least `threshold` ago belongs to a job that has run at least that long. It is
//! reported once: a `warn` line with its key and how long, and the hook. A job is first seen
//! up to a period after it began, so one that ends before `threshold` plus a period may go
//! unreported; none shorter than `threshold` is ever reported.
//!
//! The watchdog runs beside the pool rather than on its timer, so that a pool whose threads
//! all hang still has its jobs reported. A worker pays two plain stores per job and a lock per
//! turn, and only on a dispatcher built with `slow_job`. The watchdog reads the key from the
//! slot's mailbox and checks the count again afterwards: unchanged, the job (and so its turn
//! and key) is still the one it saw.

use super::core::Core;
use crate::{
    error::BuildError,
    mailbox::Mailbox,
    unwind::{contained, ShowKey},
};
use crossbeam_utils::CachePadded;
use std::{
    fmt::Debug,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The hook called with the key of a job running past the threshold, and how long it has run.
pub(crate) type SlowHook<K> = Box<dyn Fn(&K, Duration) + Send + Sync>;

/// See the module docs.
pub(crate) struct Watch<K, J> {
    name: String,
    threshold: Duration,
    hook: SlowHook<K>,
    slots: Box<[CachePadded<Slot<K, J>>]>,
    /// Set, and notified, when the dispatcher finishes: the watchdog then exits.
    stopped: (Mutex<bool>, Condvar),
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// One pool thread's view, as the watchdog sees it.
struct Slot<K, J> {
    /// Job starts and ends on this thread: odd while a job runs.
    jobs: AtomicU64,
    turn: Mutex<Option<Arc<Mailbox<K, J>>>>,
}

/// What the watchdog last saw of a slot: the count, when it first saw it, and whether that job
/// was reported.
#[derive(Clone, Copy)]
struct Seen {
    jobs: u64,
    since: Instant,
    reported: bool,
}

impl<K, J> Watch<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    pub(crate) fn new(name: &str, threshold: Duration, hook: SlowHook<K>, workers: usize) -> Self {
        let slots = (0..workers)
            .map(|_| {
                CachePadded::new(Slot {
                    jobs: AtomicU64::new(0),
                    turn: Mutex::new(None),
                })
            })
            .collect();
        Watch {
            name: name.to_owned(),
            threshold,
            hook,
            slots,
            stopped: (Mutex::new(false), Condvar::new()),
            thread: Mutex::new(None),
        }
    }

    /// Starts the watchdog thread.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), BuildError> {
        let watch = Arc::clone(self);
        let handle = thread::Builder::new()
            .name(format!("{}-watch", self.name))
            .spawn(move || watch.run())
            .map_err(BuildError::Spawn)?;
        *lock(&self.thread) = Some(handle);
        Ok(())
    }

    /// Stops the watchdog, and joins it if `join` (not on a pool thread, where a hook that
    /// waits for that thread's job would never return) and this is not the watchdog itself (a
    /// hook that closed the dispatcher). Otherwise it exits on its own within a period.
    pub(crate) fn stop(&self, join: bool) {
        *lock(&self.stopped.0) = true;
        self.stopped.1.notify_all();
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if join && handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    pub(super) fn turn_began(&self, index: usize, mailbox: &Arc<Mailbox<K, J>>) {
        *lock(&self.slots[index].turn) = Some(Arc::clone(mailbox));
    }

    pub(super) fn turn_ended(&self, index: usize) {
        let ended = lock(&self.slots[index].turn).take();
        drop(ended);
    }

    /// A job begins or ends on thread `index`: only that thread writes its count.
    #[inline]
    pub(super) fn job_edge(&self, index: usize) {
        let jobs = &self.slots[index].jobs;
        // ORDERING: Release, paired with the watchdog's Acquire: a count it reads comes with
        // the turn's mailbox set before it.
        jobs.store(jobs.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// The watchdog's loop: a scan every quarter of the threshold until stopped.
    fn run(&self) {
        let period = (self.threshold / 4).max(Duration::from_millis(1));
        let now = Instant::now();
        let mut seen = vec![
            Seen {
                jobs: 0,
                since: now,
                reported: false,
            };
            self.slots.len()
        ];
        let mut stopped = lock(&self.stopped.0);
        while !*stopped {
            drop(stopped);
            self.scan(&mut seen, Instant::now());
            stopped = lock(&self.stopped.0);
            if !*stopped {
                stopped = self
                    .stopped
                    .1
                    .wait_timeout(stopped, period)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    fn scan(&self, seen: &mut [Seen], now: Instant) {
        for (slot, seen) in self.slots.iter().zip(seen) {
            // ORDERING: Acquire, see `job_edge`.
            let jobs = slot.jobs.load(Ordering::Acquire);
            if jobs != seen.jobs {
                *seen = Seen {
                    jobs,
                    since: now,
                    reported: false,
                };
                continue;
            }
            let running_for = now.saturating_duration_since(seen.since);
            if jobs % 2 == 0 || seen.reported || running_for < self.threshold {
                continue;
            }
            let mailbox = lock(&slot.turn).clone();
            // Still the same job: its turn's mailbox is the one just read.
            let (Some(mailbox), true) = (mailbox, slot.jobs.load(Ordering::Acquire) == jobs) else {
                continue;
            };
            seen.reported = true;
            let key = mailbox.key();
            log::warn!(
                "{}: job of key {} running for {running_for:?} (slow_job threshold {:?})",
                self.name,
                ShowKey(key),
                self.threshold
            );
            if contained(|| (self.hook)(key, running_for)).is_none() {
                log::error!("{}: the slow_job hook panicked", self.name);
            }
        }
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Starts the slow-job watchdog, if the dispatcher has one.
    pub(crate) fn start_watch(&self) -> Result<(), BuildError> {
        match &self.watch {
            Some(watch) => watch.start(),
            None => Ok(()),
        }
    }
}

/// `std`'s lock, ignoring poison: the watchdog is outside the key protocol that loom and
/// shuttle check, and holds no lock while user code runs.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
