//! Adversarial scenarios on real threads: producers racing `close` on small queues with
//! eager eviction, a hot key beside a million cold keys, a panic storm, producers blocked on
//! full queues while `close` runs, handlers that dispatch and close, the drop of every job
//! value on every path a job can take, and the counters of a closed dispatcher.
//!
//! Sized for a 2-core CI in release mode: each test takes a few seconds at most.
//! `STRESS_SCALE=n` multiplies the seeded rounds, the other tests' sizes and the watchdogs'
//! limits for a longer run. Each seeded test prints its seed; `STRESS_SEED=seed` replays it.

#[path = "../common/mod.rs"]
mod common;

mod blocking;
mod drops;
mod keys;
mod panics;
mod racing;
mod reentrancy;

use common::{Job, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex, Once, OnceLock, Weak,
    },
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// `STRESS_SCALE`, at least 1: multiplies the rounds of the seeded tests.
fn stress_scale() -> usize {
    std::env::var("STRESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A size for this build (`common::scaled`: smaller in debug builds and under miri), times
/// `STRESS_SCALE`: for the tests without rounds.
fn sized(release: usize) -> usize {
    common::scaled(release) * stress_scale()
}

/// How many rounds a seeded test runs: `release` times `STRESS_SCALE`, or one under miri
/// (where `-Zmiri-many-seeds` varies the schedules instead).
fn rounds(release: usize) -> u64 {
    if cfg!(miri) {
        1
    } else {
        (release * stress_scale()) as u64
    }
}

/// A watchdog whose limit grows with `STRESS_SCALE`, since the work does.
fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, HANG * stress_scale() as u32)
}

/// The seed of a test's rounds: `STRESS_SEED` to replay a run, else a fresh one. Printed, so
/// that the output of a failed test names it.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().build_hasher().finish());
    println!("{test}: seed {seed} (replay with STRESS_SEED={seed})");
    seed
}

/// Pools whose jobs panic on purpose, thousands of times: their panics are not printed.
const QUIET_POOLS: [&str; 3] = ["storm-", "drops-", "dropr-"];

/// Installs, once per process, a panic hook that stays silent on the threads of
/// [`QUIET_POOLS`] and hands every other panic to the default hook. Printing (and, with
/// `RUST_BACKTRACE` set, capturing a backtrace for) each deliberate panic would dominate the
/// run time.
fn quiet_deliberate_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if !QUIET_POOLS.iter().any(|pool| name.starts_with(pool)) {
                default(info);
            }
        }));
    });
}

/// Violations seen inside handlers, where a failed assertion would only be caught and counted
/// as that job's panic: noted there, reported by the test thread.
#[derive(Debug, Default)]
struct Faults {
    count: AtomicUsize,
    first: Mutex<Vec<String>>,
}

impl Faults {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    fn note(&self, what: impl FnOnce() -> String) {
        if self.count.fetch_add(1, SeqCst) < 8 {
            self.first.lock().unwrap().push(what());
        }
    }

    fn check(&self) {
        let count = self.count.load(SeqCst);
        assert!(
            count == 0,
            "{count} violations in handlers, the first: {:#?}",
            self.first.lock().unwrap()
        );
    }
}

/// One key's jobs in the order they ran, and a flag that catches two of them running at once.
#[derive(Debug, Default)]
struct KeyRuns {
    busy: AtomicBool,
    runs: Mutex<Vec<Job>>,
}

/// Run logs of keys `0..n`. Cheaper than `common::Recorder` at millions of jobs: a key's lock
/// is only ever taken by the one job of that key that is running.
#[derive(Debug)]
struct Runs {
    keys: Vec<KeyRuns>,
    faults: Arc<Faults>,
}

impl Runs {
    fn new(keys: usize) -> Arc<Self> {
        Arc::new(Runs {
            keys: (0..keys).map(|_| KeyRuns::default()).collect(),
            faults: Faults::new(),
        })
    }

    /// Call from the handler.
    fn record(&self, key: u64, job: Job) {
        if key != job.key {
            self.faults.note(|| format!("{job:?} ran under key {key}"));
        }
        let slot = &self.keys[key as usize];
        if slot.busy.swap(true, SeqCst) {
            self.faults
                .note(|| format!("two jobs of key {key} ran at once"));
        }
        slot.runs.lock().unwrap().push(job);
        slot.busy.store(false, SeqCst);
    }

    fn count(&self) -> usize {
        self.keys.iter().map(|k| k.runs.lock().unwrap().len()).sum()
    }

    /// Checks that exactly the accepted jobs ran, each once, and each producer's jobs of a key
    /// in the order it dispatched them: `accepted[producer][key]` lists the sequence numbers
    /// accepted, in dispatch order.
    fn check(&self, accepted: &[Vec<Vec<u64>>]) {
        self.faults.check();
        for (key, slot) in self.keys.iter().enumerate() {
            let mut ran = vec![Vec::new(); accepted.len()];
            for job in slot.runs.lock().unwrap().iter() {
                ran[job.producer].push(job.seq);
            }
            for (producer, ran) in ran.iter().enumerate() {
                let expected = &accepted[producer][key];
                if ran != expected {
                    let at = ran.iter().zip(expected).take_while(|(a, b)| a == b).count();
                    panic!(
                        "key {key}, producer {producer}: {} jobs ran, {} accepted; they differ \
                         at position {at}: ran {:?}, accepted {:?}",
                        ran.len(),
                        expected.len(),
                        ran.get(at),
                        expected.get(at),
                    );
                }
            }
        }
    }
}

/// A handle that a handler can reach its own dispatcher through, once it is built.
type Me<K, J> = Arc<OnceLock<Weak<Dispatcher<K, J>>>>;
