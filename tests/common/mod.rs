//! Shared test helpers: an event recorder that checks order and exactly-once delivery, a drop
//! counter, gates to hold a handler, a hang watchdog and thread counting.
#![allow(dead_code)] // each test crate uses a part of it

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    time::Duration,
};

/// A test job: which producer dispatched it, on which key, with which per-producer sequence
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Job {
    pub producer: usize,
    pub key: u64,
    pub seq: u64,
}

/// Records the jobs as they run, per key, and checks them against what was accepted.
#[derive(Debug, Default)]
pub struct Recorder {
    runs: Mutex<HashMap<u64, Vec<Job>>>,
    /// Handlers of one key running at once; must never exceed 1.
    running: Mutex<HashSet<u64>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    /// Call from the handler. Panics (failing the job, which the tests count) if another job
    /// of the same key is running.
    pub fn record(&self, key: &u64, job: Job) {
        assert_eq!(*key, job.key, "job ran under the wrong key");
        assert!(
            self.running.lock().unwrap().insert(job.key),
            "two jobs of key {} ran at once",
            job.key
        );
        self.runs
            .lock()
            .unwrap()
            .entry(job.key)
            .or_default()
            .push(job);
        self.running.lock().unwrap().remove(&job.key);
    }

    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().values().map(Vec::len).sum()
    }

    /// The jobs of `key` in the order they ran.
    pub fn runs_of(&self, key: u64) -> Vec<Job> {
        self.runs
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Checks that exactly the `accepted` jobs ran, each once, and that each producer's jobs
    /// of a key ran in the order of their sequence numbers (producers number their jobs in
    /// dispatch order).
    pub fn check(&self, accepted: &[Job]) {
        let runs = self.runs.lock().unwrap();
        let mut seen = HashSet::new();
        for (key, jobs) in runs.iter() {
            let mut last: HashMap<usize, u64> = HashMap::new();
            for job in jobs {
                assert!(seen.insert(*job), "job {job:?} ran twice");
                if let Some(prev) = last.insert(job.producer, job.seq) {
                    assert!(
                        prev < job.seq,
                        "key {key}: producer {} ran seq {} after {prev}",
                        job.producer,
                        job.seq
                    );
                }
            }
        }
        let accepted: HashSet<Job> = accepted.iter().copied().collect();
        let missing = accepted.difference(&seen).count();
        let extra = seen.difference(&accepted).count();
        assert_eq!((missing, extra), (0, 0), "jobs lost or never accepted ran");
    }
}

/// Counts the values alive, so that a test can check each job value is dropped exactly once.
#[derive(Debug, Default)]
pub struct Drops {
    created: AtomicUsize,
    dropped: AtomicUsize,
}

impl Drops {
    pub fn new() -> Arc<Self> {
        Arc::new(Drops::default())
    }

    pub fn token(self: &Arc<Self>) -> DropToken {
        self.created.fetch_add(1, Ordering::SeqCst);
        DropToken(Arc::clone(self))
    }

    pub fn alive(&self) -> usize {
        self.created.load(Ordering::SeqCst) - self.dropped.load(Ordering::SeqCst)
    }

    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }
}

/// A value that counts its drop.
#[derive(Debug)]
pub struct DropToken(Arc<Drops>);

impl Drop for DropToken {
    fn drop(&mut self) {
        let dropped = self.0.dropped.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(
            dropped <= self.0.created.load(Ordering::SeqCst),
            "dropped twice"
        );
    }
}

/// A latch: handlers wait on it until the test opens it.
#[derive(Debug, Default)]
pub struct Latch {
    open: Mutex<bool>,
    condvar: Condvar,
}

impl Latch {
    pub fn new() -> Arc<Self> {
        Arc::new(Latch::default())
    }

    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.condvar.wait(open).unwrap();
        }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.condvar.notify_all();
    }
}

/// Aborts the whole test process with a message if it is still alive after `limit`, so that a
/// deadlock fails in seconds instead of hanging CI. Disarmed on drop.
///
/// Under miri the limit is a hundred times longer: with isolation on, miri's clock advances by
/// a fixed step per basic block interpreted, so a minute passes after some seconds of work.
#[derive(Debug)]
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Watchdog {
    pub fn new(name: &str, limit: Duration) -> Self {
        let limit = if cfg!(miri) { limit * 100 } else { limit };
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watched = Arc::clone(&done);
        let name = name.to_owned();
        std::thread::spawn(move || {
            let (lock, condvar) = &*watched;
            let (done, timeout) = condvar
                .wait_timeout_while(lock.lock().unwrap(), limit, |done| !*done)
                .unwrap();
            if timeout.timed_out() && !*done {
                eprintln!("watchdog: {name} still running after {limit:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.done;
        *lock.lock().unwrap() = true;
        condvar.notify_all();
    }
}

/// The default limit for a test that should take well under a second.
pub const HANG: Duration = Duration::from_secs(60);

/// Threads of this process, from /proc.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// Threads of this process whose name starts with `prefix` (at most 15 characters, as the
/// kernel keeps them): a pool's threads, counted apart from other tests running in parallel.
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Waits until no thread named `prefix...` is left. A joined thread's `/proc` entry can outlive
/// its join by a moment while the kernel reaps it, so a count taken right after `close` may
/// still see it; the watchdog bounds the wait if the thread really lives on.
pub fn wait_threads_gone(prefix: &str) {
    wait_for(|| threads_named(prefix) == 0);
}

/// Spins (yielding) until `condition` holds: for conditions that another thread will make true
/// without telling us, such as a producer becoming blocked. A watchdog bounds it.
pub fn wait_for(mut condition: impl FnMut() -> bool) {
    while !condition() {
        std::thread::yield_now();
    }
}

/// A tiny deterministic PRNG (xorshift64*), for reproducible schedules without dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Scales a test size down under miri and in debug builds.
pub fn scaled(release: usize) -> usize {
    if cfg!(miri) {
        (release / 1000).max(10)
    } else if cfg!(debug_assertions) {
        (release / 10).max(10)
    } else {
        release
    }
}

/// A multi-thread Tokio runtime of `threads` workers, with its timer.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}
