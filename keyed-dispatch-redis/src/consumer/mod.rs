//! The consumer: a member of a topic's consumers, holding some of its partitions at a time and
//! running their entries in a keyed-dispatch [`Dispatcher`], each key's in stream order.
//!
//! Three threads beside the dispatcher's workers, each with its own connection:
//! - `control` ([`control`]): registration, leases, the spread of partitions, handovers;
//! - `reader` ([`reader`]): reads the held partitions and dispatches their entries;
//! - `acker` ([`acker`]): writes acknowledgements and dead letters.
//!
//! A job's path: read (fenced) → dispatched under its key → the handler runs once the key's
//! earlier entries are done, if the lease still holds → acknowledged (fenced) on success, or
//! dead-lettered and acknowledged once its retries are spent.

mod acker;
mod control;
mod reader;

use crate::{conn::Conn, entry::Entry, lease::Lease, Error, Topic};
use acker::Settle;
use crossbeam_channel::{bounded, Sender};
use keyed_dispatch::{Dispatcher, Failure, RetryOutput, RetryPolicy, Stats};
use std::{
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The lease's time to live unless [`ConsumerBuilder::lease`] says otherwise: a crashed
/// member's partitions move this long (and at most a tick more) after its last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// The shortest lease [`ConsumerBuilder::start`] accepts: renewals come every fifth of it,
/// and each must reach the server and come back well within it.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// Entries read at once from a partition, and acknowledgements written at once.
pub const DEFAULT_BATCH: usize = 256;

/// Entries dispatched and not yet finished, at most, unless
/// [`ConsumerBuilder::max_pending`] says otherwise.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// What the consumer's threads share.
pub(crate) struct Shared {
    pub(crate) topic: Topic,
    pub(crate) member: String,
    pub(crate) ttl: Duration,
    /// How often leases are renewed and the spread is looked at again.
    pub(crate) tick: Duration,
    /// How much sooner than the server a holder stops trusting its lease.
    pub(crate) margin: Duration,
    /// The clock the leases' deadlines count from.
    pub(crate) origin: Instant,
    /// The leases held, as `control` last published them.
    pub(crate) owned: Mutex<Vec<Arc<Lease>>>,
    /// Notified when `owned` changes.
    pub(crate) changed: Condvar,
    /// No more reads, and no more partitions taken.
    pub(crate) stopping: AtomicBool,
    /// Hand every partition over and leave.
    pub(crate) leaving: AtomicBool,
    /// Trim acknowledged entries ([`ConsumerBuilder::trim`]).
    pub(crate) trim: bool,
}

impl Shared {
    /// Whether a thread retrying a command should stop: while the consumer stops, once the
    /// server has been out of reach for longer than a lease lives. Its leases have expired by
    /// then, and what it could not write stays pending for the next owner.
    pub(crate) fn gives_up(&self, down: Duration) -> bool {
        self.stopping.load(Ordering::SeqCst) && down > self.ttl
    }
}

/// Sets up a [`Consumer`]; from [`Consumer::builder`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    url: String,
    topic: String,
    member: String,
    workers: Option<usize>,
    lease: Duration,
    retry: RetryPolicy,
    batch: usize,
    max_pending: usize,
    trim: bool,
}

impl ConsumerBuilder {
    /// Threads running handlers; the machine's available parallelism by default.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// The leases' time to live ([`DEFAULT_LEASE`]). The lease is renewed every fifth of it
    /// (at most every half second), and trusted for four fifths of it after a renewal was
    /// sent. A crashed member's partitions move this long after its last renewal, and at most
    /// a renewal's interval more.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// How failed entries are retried before they are dead-lettered to `T:dead`
    /// (the dispatcher's default policy otherwise).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Entries read at once from a partition ([`DEFAULT_BATCH`]); also the most
    /// acknowledgements waiting to be written, so the most a crash can lose.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Entries dispatched and not finished, at most ([`DEFAULT_MAX_PENDING`]); reads stop
    /// while that many are.
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Trims acknowledged entries from the streams of the partitions this member holds, about
    /// once a second: everything before the oldest entry still pending (or, with none, before
    /// the last one read). Off by default: the streams are then the topic's full record.
    pub fn trim(mut self, trim: bool) -> Self {
        self.trim = trim;
        self
    }

    /// Connects, registers and starts consuming with `handler`.
    ///
    /// The handler gets each [`Entry`]; it runs for one key at a time, in stream order. It
    /// returns `Result<(), E>`, or `Result<(), Failure<E>>` to name its retry delay or give up
    /// at once (`E: Display`). An entry is acknowledged when its handler succeeded, or
    /// dead-lettered and acknowledged once its attempts are spent or its handler panicked.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached, [`Error::LeaseTooShort`] for a
    /// lease under [`MIN_LEASE`], [`Error::Build`] for settings the dispatcher refuses.
    pub fn start<F, R>(self, handler: F) -> Result<Consumer, Error>
    where
        F: Fn(&Entry) -> R + Send + Sync + 'static,
        R: RetryOutput + 'static,
    {
        if self.lease < MIN_LEASE {
            return Err(Error::LeaseTooShort {
                lease: self.lease,
                min: MIN_LEASE,
            });
        }
        let control_conn = Conn::open(&self.url)?;
        let reader_conn = Conn::open(&self.url)?;
        let acker_conn = Conn::open(&self.url)?;
        // Takeover after a crash: the lease's time to live, then at most a tick.
        let tick = (self.lease / 5).clamp(Duration::from_millis(10), Duration::from_millis(500));
        let shared = Arc::new(Shared {
            topic: Topic::new(self.topic),
            member: self.member,
            ttl: self.lease,
            tick,
            margin: self.lease / 5,
            origin: Instant::now(),
            owned: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            trim: self.trim,
        });
        // Acknowledgements not yet written: half a batch queued, half in the acker's hands,
        // so that a crash loses at most a batch of them.
        let half = (self.batch / 2).max(1);
        let (settle, settled) = bounded::<Settle>(half);
        let dead = settle.clone();
        let done = settle.clone();
        let mut builder = Dispatcher::builder()
            .name(format!("{}-{}", shared.topic.name(), shared.member))
            .capacity(self.max_pending)
            .retry(self.retry);
        if let Some(workers) = self.workers {
            builder = builder.workers(workers);
        }
        let dispatcher = builder
            .on_dead_letter(
                move |_key: &String, entry: Entry, error: Fault<R::Error>, attempts| {
                    // Before `settle`: a panicking `Display` must leave the entry to its drop.
                    let error = catch_unwind(AssertUnwindSafe(|| error.to_string()))
                        .unwrap_or_else(|_| "the error's Display panicked".into());
                    entry.settle();
                    let _ = dead.send(Settle::Dead {
                        lease: Arc::clone(&entry.lease),
                        id: entry.id.clone(),
                        key: entry.key.clone(),
                        payload: entry.payload.clone(),
                        error,
                        attempts,
                    });
                },
            )
            .build_retrying(move |_key: &String, entry: &Entry| run(&handler, entry, &done))
            .map_err(Error::Build)?;
        let dispatcher = Arc::new(dispatcher);
        let (wake, woken) = bounded(1);
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{}-{name}", shared.member))
                .spawn(body)
                .expect("spawn a consumer thread")
        };
        let control = control::Control {
            shared: Arc::clone(&shared),
            conn: control_conn,
            wake: woken,
        };
        let reader = reader::Reader {
            shared: Arc::clone(&shared),
            conn: reader_conn,
            dispatcher: Arc::clone(&dispatcher),
            settle,
            batch: self.batch,
        };
        let acker = acker::Acker {
            shared: Arc::clone(&shared),
            conn: acker_conn,
            batch: half,
        };
        let threads = vec![
            spawn("acker", Box::new(move || acker.run(settled))),
            spawn("control", Box::new(move || control.run())),
            spawn("reader", Box::new(move || reader.run())),
        ];
        Ok(Consumer {
            shared,
            dispatcher: Some(dispatcher),
            threads,
            wake,
        })
    }
}

/// Runs one attempt of `entry`, unless its lease is gone; queues its acknowledgement on
/// success. A panic is a permanent failure: the entry is dead-lettered, not retried forever.
fn run<F, R>(
    handler: &F,
    entry: &Entry,
    done: &Sender<Settle>,
) -> Result<(), Failure<Fault<R::Error>>>
where
    F: Fn(&Entry) -> R,
    R: RetryOutput,
{
    if !entry.lease.holds() {
        // Left unacknowledged for the partition's next owner, as is every later entry of
        // this lease: none passes this check again.
        return Ok(());
    }
    match catch_unwind(AssertUnwindSafe(|| handler(entry).into_failure())) {
        Ok(Ok(())) => {
            entry.settle();
            let _ = done.send(Settle::Ack {
                lease: Arc::clone(&entry.lease),
                id: entry.id.clone(),
            });
            Ok(())
        }
        Ok(Err(failure)) => Err(failure.map(Fault::Failed)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Failure::permanent(Fault::Panicked(message)))
        }
    }
}

/// Why an entry was dead-lettered: its handler's last error, or a panic.
pub(crate) enum Fault<E> {
    Failed(E),
    Panicked(String),
}

impl<E: fmt::Display> fmt::Display for Fault<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Failed(e) => e.fmt(f),
            Fault::Panicked(message) => write!(f, "the handler panicked: {message}"),
        }
    }
}

/// A member of a topic's consumers. See the [crate docs](crate) for what it guarantees.
///
/// [`close`](Consumer::close) (or dropping it) leaves gracefully: no more reads, every entry
/// already read runs and is acknowledged (but for those of a lease lost meanwhile, left to the
/// next owner), then its partitions are released for the other members, and it leaves the
/// member list. It waits for the retries of entries still failing: with a policy that retries
/// for ever, a handler that always fails keeps `close` waiting. If the server is out of reach
/// for longer than a lease while closing, it stops waiting for it: its leases have expired.
pub struct Consumer {
    shared: Arc<Shared>,
    dispatcher: Option<Arc<Dispatcher<String, Entry>>>,
    threads: Vec<JoinHandle<()>>,
    wake: Sender<()>,
}

impl Consumer {
    /// A consumer of `topic` at `url`, as member `member`; names must be unique among a
    /// topic's live members.
    pub fn builder(url: &str, topic: &str, member: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            url: url.to_string(),
            topic: topic.to_string(),
            member: member.to_string(),
            workers: None,
            lease: DEFAULT_LEASE,
            retry: RetryPolicy::default(),
            batch: DEFAULT_BATCH,
            max_pending: DEFAULT_MAX_PENDING,
            trim: false,
        }
    }

    /// The partitions this member holds now.
    pub fn partitions(&self) -> Vec<u32> {
        let owned = self.shared.owned.lock().unwrap();
        let mut partitions: Vec<u32> = owned
            .iter()
            .filter(|l| l.holds())
            .map(|l| l.partition)
            .collect();
        partitions.sort_unstable();
        partitions
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> Stats {
        self.dispatcher
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    /// Leaves gracefully (see [`Consumer`]) and waits until done.
    pub fn close(mut self) {
        self.leave();
    }

    fn leave(&mut self) {
        let Some(dispatcher) = self.dispatcher.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let mut threads = std::mem::take(&mut self.threads);
        let reader = threads.pop().expect("the reader thread");
        let _ = reader.join();
        dispatcher.close();
        // The last handle: dropping it drops the handler and its senders, so the acker ends
        // once everything sent is written.
        drop(dispatcher);
        self.shared.leaving.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.leave();
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.shared.topic.name())
            .field("member", &self.shared.member)
            .field("partitions", &self.partitions())
            .finish()
    }
}
