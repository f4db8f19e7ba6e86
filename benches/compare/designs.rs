//! The designs compared: the library, three reference designs written compactly, and a floor.
//! Each is started with the same handler and fed the same `Job` values through `Running`.

use crossbeam_channel::{bounded, unbounded, Sender};
use dashmap::DashMap;
use keyed_dispatch::{BoxedJob, Dispatcher};
use std::{
    collections::hash_map::RandomState,
    future::Future,
    hash::BuildHasher,
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker},
    thread::{self, JoinHandle},
};

/// The job every design carries: a small plain value, not a boxed closure.
///
/// `seq` is the job's sequence number per producer, which the handler checks is strictly
/// increasing per (key, producer). Its top byte holds the producer's index; in the head-of-line
/// workload `seq` is the dispatch time in ns (made strictly increasing), which carries the
/// timestamp without making the job bigger for the other workloads.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub key: u64,
    pub seq: u64,
}

pub const PRODUCER_SHIFT: u32 = 56;

impl Job {
    pub fn producer(self) -> usize {
        (self.seq >> PRODUCER_SHIFT) as usize
    }
}

/// What every design runs for each job. Leaked (`'static`) so that the boxed-closure variant can
/// capture it without an `Arc` clone per job; children exit right after one run anyway.
pub type Handler = &'static (dyn Fn(u64, Job) + Send + Sync);

/// A started design. `Sync` so that several producers can dispatch through one.
pub trait Running: Sync {
    fn dispatch(&self, key: u64, job: Job);
    /// Keys the design still holds state for, once every dispatched job has run (the caller
    /// waits for that first); `None` for a design that keeps no per-key state.
    fn keys_held(&self) -> Option<usize>;
    /// Runs every dispatched job and stops (joins) every thread.
    fn finish(self: Box<Self>);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Design {
    Keyed,
    KeyedBoxed,
    KeyedPinned,
    /// The library recording latency: for paired runs against `Keyed` (`--child
    /// keyed-latency ...`), not in the table.
    KeyedLatency,
    /// The library through `dispatch_async`, each future polled on the producer's thread.
    KeyedAsync,
    ThreadPerKey,
    Striped,
    /// Striped fed boxed closures: the counterpart of `KeyedBoxed`, each job an allocation.
    StripedBoxed,
    TaskPerKey,
    Floor,
}

impl Design {
    pub const ALL: [Design; 9] = [
        Design::Keyed,
        Design::KeyedAsync,
        Design::KeyedBoxed,
        Design::KeyedPinned,
        Design::ThreadPerKey,
        Design::Striped,
        Design::StripedBoxed,
        Design::TaskPerKey,
        Design::Floor,
    ];

    /// As printed in the table.
    pub fn name(self) -> &'static str {
        match self {
            Design::Keyed => "keyed-dispatch",
            Design::KeyedBoxed => "keyed-dispatch (boxed closure)",
            Design::KeyedPinned => "keyed-dispatch (pinned workers)",
            Design::KeyedLatency => "keyed-dispatch (latency recorded)",
            Design::KeyedAsync => "keyed-dispatch (dispatch_async)",
            Design::ThreadPerKey => "thread per key",
            Design::Striped => "striped",
            Design::StripedBoxed => "striped (boxed closure)",
            Design::TaskPerKey => "task per key (tokio)",
            Design::Floor => "handoff floor",
        }
    }

    /// As passed to a child process.
    pub fn id(self) -> &'static str {
        match self {
            Design::Keyed => "keyed",
            Design::KeyedBoxed => "keyed-boxed",
            Design::KeyedPinned => "keyed-pinned",
            Design::KeyedLatency => "keyed-latency",
            Design::KeyedAsync => "keyed-async",
            Design::ThreadPerKey => "thread-per-key",
            Design::Striped => "striped",
            Design::StripedBoxed => "striped-boxed",
            Design::TaskPerKey => "task-per-key",
            Design::Floor => "floor",
        }
    }

    pub fn from_id(id: &str) -> Option<Design> {
        Design::ALL
            .into_iter()
            .chain([Design::KeyedLatency])
            .find(|d| d.id() == id)
    }

    pub fn start(self, workers: usize, h: Handler) -> Box<dyn Running> {
        match self {
            Design::Keyed => Box::new(
                Dispatcher::builder()
                    .workers(workers)
                    .build(move |key: &u64, job: Job| h(*key, job))
                    .expect("building keyed-dispatch"),
            ),
            Design::KeyedLatency => Box::new(
                Dispatcher::builder()
                    .workers(workers)
                    .record_latency(true)
                    .build(move |key: &u64, job: Job| h(*key, job))
                    .expect("building keyed-dispatch recording latency"),
            ),
            Design::KeyedAsync => Box::new(KeyedAsync(
                Dispatcher::builder()
                    .workers(workers)
                    .build(move |key: &u64, job: Job| h(*key, job))
                    .expect("building keyed-dispatch"),
            )),
            Design::KeyedPinned => Box::new(
                Dispatcher::builder()
                    .workers(workers)
                    .pin_workers(true)
                    .build(move |key: &u64, job: Job| h(*key, job))
                    .expect("building keyed-dispatch with pinned workers"),
            ),
            Design::KeyedBoxed => Box::new(KeyedBoxed {
                d: Dispatcher::builder()
                    .workers(workers)
                    .build_spawner()
                    .expect("building keyed-dispatch spawner"),
                h,
            }),
            Design::ThreadPerKey => Box::new(ThreadPerKey {
                h,
                senders: DashMap::new(),
                threads: Mutex::new(Vec::new()),
            }),
            Design::Striped => {
                Box::new(Striped(Stripes::start(workers, move |j: Job| h(j.key, j))))
            }
            Design::StripedBoxed => Box::new(StripedBoxed {
                stripes: Stripes::start(workers, |thunk: Thunk| thunk()),
                h,
            }),
            Design::TaskPerKey => Box::new(TaskPerKey::new(workers, h)),
            Design::Floor => {
                let (tx, rx) = bounded::<Job>(1024);
                let consumer = thread::spawn(move || rx.iter().for_each(|j| h(j.key, j)));
                Box::new(Floor { tx, consumer })
            }
        }
    }
}

/// The library, default settings except `workers` (and `pin_workers` for `KeyedPinned`).
impl Running for Dispatcher<u64, Job> {
    fn dispatch(&self, key: u64, job: Job) {
        Dispatcher::dispatch(self, key, job).expect("keyed-dispatch refused a job");
    }
    fn keys_held(&self) -> Option<usize> {
        self.wait_idle().expect("wait_idle");
        Some(self.stats().keys)
    }
    fn finish(self: Box<Self>) {
        assert!(self.close().drained, "keyed-dispatch: close did not drain");
    }
}

/// The library through `dispatch_async`: what the async front costs where there is room, with
/// no runtime in the way (each future is polled on the producer's thread).
struct KeyedAsync(Dispatcher<u64, Job>);

impl Running for KeyedAsync {
    fn dispatch(&self, key: u64, job: Job) {
        block_on(self.0.dispatch_async(key, job)).expect("keyed-dispatch refused a job");
    }
    fn keys_held(&self) -> Option<usize> {
        self.0.keys_held()
    }
    fn finish(self: Box<Self>) {
        Box::new(self.0).finish();
    }
}

/// Polls `future` on this thread, parking between polls. The first poll uses a waker that
/// does nothing, as a runtime's task would poll with a waker at hand: the thread-local one,
/// which parking needs, is fetched only for a future that waits.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
    }
    let mut future = pin!(future);
    // The benchmarks build with a current toolchain only, as the tests do.
    #[allow(clippy::incompatible_msrv)]
    let noop = Waker::noop();
    if let Poll::Ready(output) = future.as_mut().poll(&mut Context::from_waker(noop)) {
        return output;
    }
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            // The first time round, this poll leaves the real waker in place of the noop one.
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            thread::park();
        }
    })
}

/// The library fed boxed closures (`build_spawner` + `spawn`).
struct KeyedBoxed {
    d: Dispatcher<u64, BoxedJob>,
    h: Handler,
}

impl Running for KeyedBoxed {
    fn dispatch(&self, key: u64, job: Job) {
        let h = self.h;
        let spawned = self.d.spawn(key, move || h(key, job));
        spawned.expect("keyed-dispatch refused a job");
    }
    fn keys_held(&self) -> Option<usize> {
        self.d.wait_idle().expect("wait_idle");
        Some(self.d.stats().keys)
    }
    fn finish(self: Box<Self>) {
        assert!(
            self.d.close().drained,
            "keyed-dispatch: close did not drain"
        );
    }
}

/// Go's godispatch: one OS thread and one unbounded channel per key, never evicted.
struct ThreadPerKey {
    h: Handler,
    senders: DashMap<u64, Sender<Job>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Running for ThreadPerKey {
    fn dispatch(&self, key: u64, job: Job) {
        if let Some(tx) = self.senders.get(&key) {
            return tx.send(job).expect("key thread gone");
        }
        // First job of the key: the entry's lock makes sure its thread is spawned once.
        let tx = self.senders.entry(key).or_insert_with(|| {
            let (tx, rx) = unbounded::<Job>();
            let h = self.h;
            let t = thread::spawn(move || rx.iter().for_each(|j| h(key, j)));
            self.threads.lock().unwrap().push(t);
            tx
        });
        tx.send(job).expect("key thread gone");
    }
    fn keys_held(&self) -> Option<usize> {
        Some(self.senders.len())
    }
    fn finish(self: Box<Self>) {
        self.senders.clear(); // closes every channel: each thread ends after its last job
        for t in self.threads.into_inner().unwrap() {
            t.join().expect("key thread panicked");
        }
    }
}

/// Keys hashed onto `workers` threads, each running what its unbounded channel brings.
struct Stripes<T> {
    hasher: RandomState,
    queues: Vec<Sender<T>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Stripes<T> {
    fn start(workers: usize, run: impl Fn(T) + Copy + Send + 'static) -> Self {
        let (queues, threads) = (0..workers)
            .map(|_| {
                let (tx, rx) = unbounded::<T>();
                (tx, thread::spawn(move || rx.iter().for_each(run)))
            })
            .unzip();
        Stripes {
            hasher: RandomState::new(),
            queues,
            threads,
        }
    }

    fn send(&self, key: u64, item: T) {
        let i = self.hasher.hash_one(key) % self.queues.len() as u64;
        self.queues[i as usize].send(item).expect("stripe gone");
    }

    /// Closes every channel and joins the threads once they have run what was sent.
    fn finish(self) {
        drop(self.queues);
        for t in self.threads {
            t.join().expect("stripe thread panicked");
        }
    }
}

/// BookKeeper's OrderedExecutor: keys hashed onto `workers` single-threaded queues.
struct Striped(Stripes<Job>);

impl Running for Striped {
    fn dispatch(&self, key: u64, job: Job) {
        self.0.send(key, job);
    }
    fn keys_held(&self) -> Option<usize> {
        None
    }
    fn finish(self: Box<Self>) {
        self.0.finish();
    }
}

/// A boxed closure, as `KeyedBoxed` sends them.
type Thunk = Box<dyn FnOnce() + Send>;

/// Striped, each job a boxed closure as `KeyedBoxed` sends them.
struct StripedBoxed {
    stripes: Stripes<Thunk>,
    h: Handler,
}

impl Running for StripedBoxed {
    fn dispatch(&self, key: u64, job: Job) {
        let h = self.h;
        self.stripes.send(key, Box::new(move || h(key, job)));
    }
    fn keys_held(&self) -> Option<usize> {
        None
    }
    fn finish(self: Box<Self>) {
        self.stripes.finish();
    }
}

/// One tokio task and one unbounded mpsc channel per key, never evicted.
pub struct TaskPerKey {
    pub rt: tokio::runtime::Runtime,
    h: Handler,
    senders: DashMap<u64, tokio::sync::mpsc::UnboundedSender<Job>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl TaskPerKey {
    pub fn new(workers: usize, h: Handler) -> TaskPerKey {
        TaskPerKey {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .expect("building the tokio runtime"),
            h,
            senders: DashMap::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }
}

impl Running for TaskPerKey {
    fn dispatch(&self, key: u64, job: Job) {
        if let Some(tx) = self.senders.get(&key) {
            return tx.send(job).expect("key task gone");
        }
        let tx = self.senders.entry(key).or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let h = self.h;
            let task = self.rt.spawn(async move {
                while let Some(j) = rx.recv().await {
                    h(key, j);
                }
            });
            self.tasks.lock().unwrap().push(task);
            tx
        });
        tx.send(job).expect("key task gone");
    }
    fn keys_held(&self) -> Option<usize> {
        Some(self.senders.len())
    }
    fn finish(self: Box<Self>) {
        self.senders.clear();
        let tasks = self.tasks.into_inner().unwrap();
        self.rt.block_on(async {
            for t in tasks {
                t.await.expect("key task panicked");
            }
        });
    }
}

/// No keys: one producer hands jobs to one consumer, the near-physical cost of the move.
struct Floor {
    tx: Sender<Job>,
    consumer: JoinHandle<()>,
}

impl Running for Floor {
    fn dispatch(&self, _key: u64, job: Job) {
        self.tx.send(job).expect("consumer gone");
    }
    fn keys_held(&self) -> Option<usize> {
        None
    }
    fn finish(self: Box<Self>) {
        drop(self.tx);
        self.consumer.join().expect("consumer panicked");
    }
}
