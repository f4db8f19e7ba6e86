//! Adversarial scenarios on real threads: producers racing `close` on small queues with
//! immediate eviction, a hot key beside a million cold keys, a panic storm, producers blocked on
//! full queues while `close` runs, handlers that dispatch and close, the drop of every job
//! value on every path a job can take, and the counters of a closed dispatcher.
//!
//! Sized for a 2-core CI in release mode: each test takes a few seconds at most.
//! `STRESS_SCALE=n` multiplies the seeded rounds, the other tests' sizes and the watchdogs'
//! limits for a longer run. Each seeded test prints its seed; `STRESS_SEED=seed` replays it.

mod common;

use common::{threads_named, wait_for, wait_threads_gone, Job, Latch, Rng, Watchdog, HANG};
use keyed_dispatch::{DispatchError, Dispatcher};
use std::{
    any::Any,
    cell::Cell,
    collections::{hash_map::RandomState, HashSet},
    hash::{BuildHasher, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Mutex, Once, OnceLock, Weak,
    },
    thread::ThreadId,
    time::Duration,
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

// ---------------------------------------------------------------------------------------------
// Producers racing close on small queues

const RACE_PRODUCERS: usize = 8;
const RACE_KEYS: u64 = 1_000;

/// One round: eight producers dispatch `per_producer` jobs each over 1,000 keys, by every
/// method, into small queues with immediate eviction, while `close` (sometimes two at once)
/// fires once a random number of jobs has been accepted.
fn racing_round(seed: u64, per_producer: u64) {
    let mut rng = Rng::new(seed);
    let workers = 1 + rng.below(3) as usize;
    let capacity = 4 + rng.below(60) as usize;
    let key_capacity = 1 + rng.below(4) as usize;
    let jobs_per_turn = 1 + rng.below(8) as usize;
    let close_after = rng.below(RACE_PRODUCERS as u64 * per_producer + 1) as usize;
    let two_closers = rng.below(2) == 0;
    let runs = Runs::new(RACE_KEYS as usize);
    let log = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .jobs_per_turn(jobs_per_turn)
        .name("race")
        .build(move |key: &u64, job: Job| log.record(*key, job))
        .unwrap();
    let accepted_count = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let (accepted, refused): (Vec<_>, Vec<_>) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..RACE_PRODUCERS)
            .map(|producer| {
                let (d, count, finished) = (&d, &accepted_count, &finished);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let mut accepted = vec![Vec::new(); RACE_KEYS as usize];
                    let mut refused = 0u64;
                    let mut closed = false;
                    for seq in 0..per_producer {
                        let key = rng.below(RACE_KEYS);
                        let job = Job { producer, key, seq };
                        let method = rng.below(8);
                        let result = match method {
                            0 => d.try_dispatch(key, job),
                            1 => d.dispatch_timeout(key, job, Duration::from_micros(rng.below(50))),
                            _ => d.dispatch(key, job),
                        };
                        let err = match result {
                            Ok(()) => {
                                assert!(!closed, "accepted after a Closed refusal");
                                accepted[key as usize].push(seq);
                                count.fetch_add(1, SeqCst);
                                continue;
                            }
                            Err(err) => err,
                        };
                        refused += 1;
                        // Each method refuses only in its own ways, and Closed is final.
                        match (method, &err) {
                            (_, DispatchError::Closed { .. }) => closed = true,
                            (0, DispatchError::Full { .. })
                            | (1, DispatchError::Timeout { .. })
                                if !closed => {}
                            _ => panic!("method {method} refused with {err:?} (closed: {closed})"),
                        }
                        assert_eq!(
                            err.into_inner(),
                            (key, job),
                            "a refusal returned another job"
                        );
                    }
                    finished.fetch_add(1, SeqCst);
                    (accepted, refused)
                })
            })
            .collect();
        let close = || {
            // Refusals can leave the threshold unreached: close anyway once producers are done.
            while accepted_count.load(SeqCst) < close_after
                && finished.load(SeqCst) < RACE_PRODUCERS
            {
                std::thread::yield_now();
            }
            d.close()
        };
        let closers: Vec<_> = (0..1 + two_closers as usize)
            .map(|_| s.spawn(close))
            .collect();
        let results = producers.into_iter().map(|p| p.join().unwrap()).unzip();
        let reports: Vec<_> = closers.into_iter().map(|c| c.join().unwrap()).collect();
        for report in &reports {
            assert!(report.drained, "close returned before draining");
            // Only the drain is compared: refusals go on while the closes return, and may show
            // for a moment in `dispatched` (checked on its own, after close, below).
            assert_eq!(
                report.stats.completed, reports[0].stats.completed,
                "closes saw different drains"
            );
        }
        results
    });
    let accepted_total: usize = accepted.iter().flatten().map(Vec::len).sum();
    let refused_total: u64 = refused.iter().sum();
    let stats = d.stats();
    assert_eq!(stats.dispatched, accepted_total as u64);
    assert_eq!(stats.completed, accepted_total as u64);
    assert_eq!(stats.refused, refused_total);
    assert_eq!((stats.panicked, stats.handed_back), (0, 0));
    assert_eq!(
        (stats.queued, stats.running, stats.blocked, stats.keys),
        (0, 0, 0, 0)
    );
    assert_eq!(runs.count(), accepted_total);
    runs.check(&accepted);
    if !cfg!(miri) {
        wait_threads_gone("race-");
    }
}

#[test]
fn producers_racing_close_on_small_queues_lose_nothing() {
    let _watchdog = watchdog("racing close");
    let seed = seed("racing close");
    let per_producer = common::scaled(100_000) as u64;
    for round in 0..rounds(3) {
        racing_round(seed.wrapping_add(round), per_producer);
    }
}

// ---------------------------------------------------------------------------------------------
// A hot key beside a cold tail

const HOT: u64 = u64::MAX;

#[derive(Debug)]
enum Heat {
    Hot { producer: usize, seq: u64 },
    Cold,
}

#[test]
fn hot_key_beside_a_million_cold_keys_keeps_order_and_evicts_every_key() {
    let _watchdog = watchdog("hot and cold");
    const PRODUCERS: usize = 2;
    // Half the jobs go to one hot key, the other half to as many keys, each seen once.
    let cold = sized(1_000_000) as u64;
    let per_producer = cold / PRODUCERS as u64;
    let cold_ran: Arc<Vec<AtomicU8>> = Arc::new((0..cold).map(|_| AtomicU8::new(0)).collect());
    let hot_next: Arc<Vec<AtomicU64>> =
        Arc::new((0..PRODUCERS).map(|_| AtomicU64::new(0)).collect());
    let hot_busy = Arc::new(AtomicBool::new(false));
    let faults = Faults::new();
    let (c, h, busy, f) = (
        Arc::clone(&cold_ran),
        Arc::clone(&hot_next),
        Arc::clone(&hot_busy),
        Arc::clone(&faults),
    );
    let d = Dispatcher::builder()
        .workers(2)
        // The hot key's producers block on it while the cold keys stream past.
        .key_capacity(256)
        .build(move |key: &u64, job: Heat| match job {
            Heat::Hot { producer, seq } => {
                if *key != HOT || busy.swap(true, SeqCst) {
                    f.note(|| format!("hot job on key {key}, or two hot jobs at once"));
                }
                let expected = h[producer].swap(seq + 1, SeqCst);
                if expected != seq {
                    f.note(|| {
                        format!("hot key: producer {producer} ran {seq}, expected {expected}")
                    });
                }
                busy.store(false, SeqCst);
            }
            Heat::Cold => {
                if c[*key as usize].fetch_add(1, SeqCst) != 0 {
                    f.note(|| format!("cold key {key} ran twice"));
                }
            }
        })
        .unwrap();
    std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let d = &d;
            s.spawn(move || {
                let first_cold = producer as u64 * per_producer;
                for seq in 0..per_producer {
                    d.dispatch(HOT, Heat::Hot { producer, seq }).unwrap();
                    d.dispatch(first_cold + seq, Heat::Cold).unwrap();
                }
            });
        }
    });
    d.wait_idle().unwrap();
    let stats = d.stats();
    assert_eq!(stats.keys, 0, "keys held after wait_idle");
    let total = 2 * PRODUCERS as u64 * per_producer;
    assert_eq!((stats.dispatched, stats.completed), (total, total));
    assert_eq!((stats.panicked, stats.queued, stats.running), (0, 0, 0));
    faults.check();
    for (producer, next) in hot_next.iter().enumerate() {
        assert_eq!(
            next.load(SeqCst),
            per_producer,
            "hot jobs of producer {producer}"
        );
    }
    let cold_total = PRODUCERS as u64 * per_producer;
    let missing = cold_ran[..cold_total as usize]
        .iter()
        .filter(|ran| ran.load(SeqCst) != 1)
        .count();
    assert_eq!(missing, 0, "cold keys that did not run exactly once");
    assert_eq!(d.close().stats.keys, 0);
}

// ---------------------------------------------------------------------------------------------
// Panic storm

/// A panic payload that is neither `&str` nor `String`.
#[derive(Debug)]
struct Boom(u64);

/// Which payload job `n` panics with, if it panics: one job in ten does, cycling through
/// `&'static str` (0), `String` (1) and [`Boom`] (2).
fn storm_payload(n: u64) -> Option<u8> {
    (n % 10 == 3).then_some(((n / 10) % 3) as u8)
}

const STORM_KEYS: u64 = 97;

#[test]
#[cfg_attr(miri, ignore = "counts the pool's threads through /proc")]
fn panic_storm_keeps_threads_keys_and_exact_counts() {
    let _watchdog = watchdog("panic storm");
    quiet_deliberate_panics();
    const WORKERS: usize = 3;
    const PRODUCERS: u64 = 4;
    let per_producer = sized(25_000) as u64;
    let total = PRODUCERS * per_producer;
    let ran: Arc<Vec<Mutex<Vec<u64>>>> =
        Arc::new((0..STORM_KEYS).map(|_| Mutex::default()).collect());
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let threads = Arc::new(Mutex::new(HashSet::<ThreadId>::new()));
    let (r, hook, t) = (Arc::clone(&ran), Arc::clone(&hooked), Arc::clone(&threads));
    thread_local! {
        static SEEN: Cell<bool> = const { Cell::new(false) };
    }
    let d = Dispatcher::builder()
        .workers(WORKERS)
        .name("storm")
        .on_panic(move |key: &u64, payload: &(dyn Any + Send)| {
            let seen = if let Some(s) = payload.downcast_ref::<&str>() {
                (0, (*s == "storm").then_some(u64::MAX))
            } else if let Some(s) = payload.downcast_ref::<String>() {
                (1, s.strip_prefix("storm ").and_then(|n| n.parse().ok()))
            } else if let Some(Boom(n)) = payload.downcast_ref::<Boom>() {
                (2, Some(*n))
            } else {
                (u8::MAX, None)
            };
            hook.lock().unwrap().push((*key, seen));
        })
        .build(move |key: &u64, n: u64| {
            // Each thread that runs a job enters itself once: a replaced thread would show up
            // as one more.
            if !SEEN.with(|seen| seen.replace(true)) {
                t.lock().unwrap().insert(std::thread::current().id());
            }
            match storm_payload(n) {
                Some(0) => panic!("storm"),
                Some(1) => panic!("storm {n}"),
                Some(_) => std::panic::panic_any(Boom(n)),
                None => r[*key as usize].lock().unwrap().push(n),
            }
        })
        .unwrap();
    // Threads name themselves once started.
    wait_for(|| threads_named("storm-") == WORKERS);
    let finished = AtomicUsize::new(0);
    let samples = std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let (d, finished) = (&d, &finished);
            s.spawn(move || {
                for n in producer * per_producer..(producer + 1) * per_producer {
                    d.dispatch(n % STORM_KEYS, n).unwrap();
                }
                finished.fetch_add(1, SeqCst);
            });
        }
        // Throughout the storm, the pool has exactly its threads.
        let mut samples = 0;
        while finished.load(SeqCst) < PRODUCERS as usize {
            assert_eq!(
                threads_named("storm-"),
                WORKERS,
                "a panic cost or added a thread"
            );
            samples += 1;
        }
        samples
    });
    d.wait_idle().unwrap();
    assert!(samples > 0);
    assert_eq!(
        threads_named("storm-"),
        WORKERS,
        "a panic cost or added a thread"
    );
    let ran_on = threads.lock().unwrap().len();
    assert!(
        ran_on <= WORKERS,
        "jobs ran on {ran_on} threads, the pool has {WORKERS}"
    );
    let panics = (0..total).filter(|&n| storm_payload(n).is_some()).count() as u64;
    let stats = d.stats();
    assert_eq!((stats.completed, stats.failed), (total, 0));
    assert_eq!(stats.panicked, panics);
    assert_eq!((stats.keys, stats.workers), (0, WORKERS));
    // Later jobs of every key ran, in order per producer, panicking neighbours or not.
    for (key, ran) in ran.iter().enumerate() {
        let ran = ran.lock().unwrap();
        for producer in 0..PRODUCERS {
            let range = producer * per_producer..(producer + 1) * per_producer;
            let mine: Vec<u64> = ran.iter().copied().filter(|n| range.contains(n)).collect();
            let expected: Vec<u64> = range
                .filter(|n| n % STORM_KEYS == key as u64 && storm_payload(*n).is_none())
                .collect();
            assert_eq!(mine, expected, "key {key}, producer {producer}");
        }
    }
    // The hook saw each panic once, with its key and payload.
    let mut hooked = std::mem::take(&mut *hooked.lock().unwrap());
    hooked.sort_unstable();
    let mut expected: Vec<(u64, (u8, Option<u64>))> = (0..total)
        .filter_map(|n| {
            let kind = storm_payload(n)?;
            Some((
                n % STORM_KEYS,
                (kind, Some(if kind == 0 { u64::MAX } else { n })),
            ))
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(hooked.len(), expected.len());
    assert!(
        hooked == expected,
        "the hook saw other panics than the jobs raised"
    );
    // Nothing is poisoned: a panicking key takes more jobs.
    d.dispatch(3, 1).unwrap();
    assert_eq!(d.close().stats.completed, total + 1);
    wait_threads_gone("storm-");
}

// ---------------------------------------------------------------------------------------------
// Backpressure: producers blocked while close runs

/// A dispatcher whose handler reports each start and then waits for `latch`.
fn held_dispatcher(
    latch: &Arc<Latch>,
    name: &str,
    workers: usize,
    capacity: usize,
    key_capacity: usize,
) -> (Dispatcher<u64, u64>, mpsc::Receiver<u64>) {
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let latch = Arc::clone(latch);
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .name(name)
        .build(move |key: &u64, _: u64| {
            started.lock().unwrap().send(*key).unwrap();
            latch.wait();
        })
        .unwrap();
    (d, starts)
}

#[test]
fn close_returns_sixteen_producers_blocked_on_full_keys_and_a_full_dispatcher() {
    let _watchdog = watchdog("blocked on close");
    let latch = Latch::new();
    let (d, starts) = held_dispatcher(&latch, "bpclose", 2, 8, 1);
    // Keys 0 and 1 hold both threads; keys 2 to 5 wait behind them, one job each.
    for key in 0..6 {
        d.dispatch(key, 0).unwrap();
    }
    let mut started = [starts.recv().unwrap(), starts.recv().unwrap()];
    started.sort_unstable();
    assert_eq!(started, [0, 1]);
    let d = &d;
    std::thread::scope(|s| {
        // Eight producers blocked on full keys...
        let on_keys: Vec<_> = (0..8u64)
            .map(|i| s.spawn(move || (i % 6, 100 + i, d.dispatch(i % 6, 100 + i))))
            .collect();
        wait_for(|| d.stats().blocked == 8);
        // ...then the dispatcher fills up, and eight more block on it.
        d.dispatch(6, 0).unwrap();
        d.dispatch(7, 0).unwrap();
        let on_dispatcher: Vec<_> = (0..8u64)
            .map(|i| s.spawn(move || (10 + i, 200 + i, d.dispatch(10 + i, 200 + i))))
            .collect();
        wait_for(|| d.stats().blocked == 16);
        let closer = s.spawn(|| d.close());
        // Those waiting for room in the dispatcher get their jobs back at once, while every
        // accepted job is still held.
        for producer in on_dispatcher {
            let (key, job, result) = producer.join().unwrap();
            let err = result.expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (key, job));
        }
        assert!(
            !closer.is_finished(),
            "close returned before the held jobs ran"
        );
        // Those waiting on a full key get theirs back when the key's job finishes.
        latch.open();
        for producer in on_keys {
            let (key, job, result) = producer.join().unwrap();
            let err = result.expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (key, job));
        }
        let report = closer.join().unwrap();
        assert!(report.drained);
        assert_eq!((report.stats.completed, report.stats.keys), (8, 0));
    });
    // Read once every producer has returned: close's own report may predate the last
    // refusals, since a producer woken by the drain is refused after it.
    let stats = d.stats();
    assert_eq!((stats.completed, stats.refused, stats.blocked), (8, 16, 0));
    if !cfg!(miri) {
        wait_threads_gone("bpclose-");
    }
}

/// One round: sixteen producers dispatch (blocking) until every one of them is blocked on a
/// full key or a full dispatcher, behind handlers held by a latch; then `close` and the latch's
/// release race in a random order.
fn blocked_round(seed: u64) {
    const PRODUCERS: usize = 16;
    let mut rng = Rng::new(seed);
    let workers = 1 + rng.below(3) as usize;
    let key_capacity = 1 + rng.below(2) as usize;
    let capacity = key_capacity + rng.below(8) as usize;
    let keys = 1 + rng.below(6);
    let order = rng.below(3);
    let latch = Latch::new();
    let runs = Runs::new(keys as usize);
    let (held, log) = (Arc::clone(&latch), Arc::clone(&runs));
    let d = Dispatcher::builder()
        .workers(workers)
        .capacity(capacity)
        .key_capacity(key_capacity)
        .name("bprace")
        .build(move |key: &u64, job: Job| {
            held.wait();
            log.record(*key, job);
        })
        .unwrap();
    let d = &d;
    let accepted: Vec<_> = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let mut accepted = vec![Vec::new(); keys as usize];
                    for seq in 0.. {
                        let key = rng.below(keys);
                        let job = Job { producer, key, seq };
                        let result = if rng.below(4) == 0 {
                            d.dispatch_timeout(key, job, Duration::from_secs(3600))
                        } else {
                            d.dispatch(key, job)
                        };
                        match result {
                            Ok(()) => accepted[key as usize].push(seq),
                            Err(err) => {
                                assert!(err.is_closed(), "a blocking dispatch gave {err:?}");
                                assert_eq!(err.into_inner(), (key, job));
                                break;
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        // Nothing finishes while the latch holds, so every producer ends up blocked.
        wait_for(|| d.stats().blocked == PRODUCERS);
        let closer = match order {
            0 => {
                let closer = s.spawn(|| d.close());
                wait_for(|| d.is_closed());
                latch.open();
                closer
            }
            1 => {
                latch.open();
                s.spawn(|| d.close())
            }
            _ => {
                let closer = s.spawn(|| d.close());
                s.spawn(|| latch.open());
                closer
            }
        };
        let accepted = producers.into_iter().map(|p| p.join().unwrap()).collect();
        let report = closer.join().unwrap();
        assert!(report.drained);
        accepted
    });
    let accepted_total: usize = accepted.iter().flatten().map(Vec::len).sum();
    let stats = d.stats();
    assert_eq!(
        (stats.completed, stats.dispatched),
        (accepted_total as u64, accepted_total as u64)
    );
    assert_eq!(
        stats.refused, PRODUCERS as u64,
        "one Closed refusal per producer"
    );
    assert_eq!((stats.blocked, stats.keys), (0, 0));
    runs.check(&accepted);
}

#[test]
fn sixteen_blocked_producers_race_close_and_the_release_of_their_keys() {
    let _watchdog = watchdog("blocked producers race close");
    let seed = seed("blocked producers race close");
    for round in 0..rounds(30) {
        blocked_round(seed.wrapping_add(round));
    }
    if !cfg!(miri) {
        wait_threads_gone("bprace-");
    }
}

// ---------------------------------------------------------------------------------------------
// Re-entrancy

/// A job of a chain of follow-ups: each hop dispatches the next from its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    chain: u64,
    hop: u32,
}

const CHAIN_KEYS: u64 = 8;
const HOPS: u32 = 6;

/// What the handlers of a chain dispatcher saw.
#[derive(Debug, Default)]
struct Chains {
    ran: AtomicU64,
    /// Follow-ups accepted.
    followed: AtomicU64,
    /// Follow-ups refused with `Full`, on their own key or another one.
    full: AtomicU64,
    /// Follow-ups refused with `Timeout`.
    timed_out: AtomicU64,
    /// Follow-ups refused with `Closed`.
    closed: AtomicU64,
    faults: Faults,
}

impl Chains {
    fn refused(&self) -> u64 {
        self.full.load(SeqCst) + self.timed_out.load(SeqCst) + self.closed.load(SeqCst)
    }

    /// Checks a refused follow-up: the exact key and job back, and a reason it may have.
    fn refused_with(&self, err: DispatchError<u64, Hop>, key: u64, job: Hop, may_close: bool) {
        match &err {
            DispatchError::Full { .. } => &self.full,
            DispatchError::Timeout { .. } => &self.timed_out,
            DispatchError::Closed { .. } if may_close => &self.closed,
            DispatchError::Closed { .. } => {
                return self
                    .faults
                    .note(|| format!("{job:?} refused Closed before close"));
            }
        }
        .fetch_add(1, SeqCst);
        let back = err.into_inner();
        if back != (key, job) {
            self.faults
                .note(|| format!("dispatched {:?}, got {back:?} back", (key, job)));
        }
    }

    /// The handler of a chain dispatcher: dispatches the next hop into its own key, which its
    /// running job fills (`key_capacity(1)`), so that it must be refused at once, and into the
    /// next key, where it may be accepted. `close_at`: the job count at which a handler closes
    /// the dispatcher.
    fn handler(
        self: &Arc<Self>,
        me: &Me<u64, Hop>,
        close_at: Option<u64>,
    ) -> impl Fn(&u64, Hop) + Send + Sync + 'static {
        let (chains, me) = (Arc::clone(self), Arc::clone(me));
        move |key: &u64, job: Hop| {
            let ran = chains.ran.fetch_add(1, SeqCst) + 1;
            // The last handle may be gone (the dispatcher is being dropped).
            let Some(d) = me.get().and_then(Weak::upgrade) else {
                return;
            };
            let may_close = close_at.is_some();
            if close_at == Some(ran) {
                let report = d.close();
                if report.drained {
                    chains.faults.note(|| "close in a handler waited".into());
                }
            }
            let next = Hop {
                chain: job.chain,
                hop: job.hop + 1,
            };
            // Into the own, full key: refused at once, never a wait.
            match d.dispatch(*key, next) {
                Ok(()) => chains
                    .faults
                    .note(|| format!("{next:?} accepted into its own full key {key}")),
                Err(err) => chains.refused_with(err, *key, next, may_close),
            }
            // A bounded wait is allowed on a worker thread, and times out.
            if job.chain % 64 == 0 && job.hop == 0 {
                match d.dispatch_timeout(*key, next, Duration::from_millis(1)) {
                    Ok(()) => chains
                        .faults
                        .note(|| format!("{next:?} accepted, full key")),
                    Err(err) if err.is_timeout() || (may_close && err.is_closed()) => {
                        chains.refused_with(err, *key, next, may_close)
                    }
                    Err(err) => chains.faults.note(|| format!("dispatch_timeout: {err:?}")),
                }
            }
            if job.hop < HOPS {
                let other = (*key + 1 + job.chain % (CHAIN_KEYS - 1)) % CHAIN_KEYS;
                match d.dispatch(other, next) {
                    Ok(()) => {
                        chains.followed.fetch_add(1, SeqCst);
                    }
                    Err(err) => chains.refused_with(err, other, next, may_close),
                }
            }
        }
    }
}

/// A dispatcher of chains with one-job keys and a small global capacity.
fn chain_dispatcher(
    name: &str,
    chains: &Arc<Chains>,
    close_at: Option<u64>,
) -> Arc<Dispatcher<u64, Hop>> {
    let me: Me<u64, Hop> = Arc::default();
    let d = Arc::new(
        Dispatcher::builder()
            .workers(2)
            .key_capacity(1)
            .capacity(6)
            .name(name)
            .build(chains.handler(&me, close_at))
            .unwrap(),
    );
    me.set(Arc::downgrade(&d)).unwrap();
    d
}

/// Producers start `per_producer` chains each, with blocking dispatches, until one is refused
/// `Closed`; returns the chains started and the dispatches refused.
fn start_chains(d: &Dispatcher<u64, Hop>, producers: u64, per_producer: u64) -> (u64, u64) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|producer| {
                s.spawn(move || {
                    for (started, chain) in (producer * per_producer..)
                        .take(per_producer as usize)
                        .enumerate()
                    {
                        let job = Hop { chain, hop: 0 };
                        if let Err(err) = d.dispatch(chain % CHAIN_KEYS, job) {
                            assert!(err.is_closed(), "{err:?}");
                            assert_eq!(err.into_inner(), (chain % CHAIN_KEYS, job));
                            return (started as u64, 1);
                        }
                    }
                    (per_producer, 0)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    })
}

#[test]
fn handlers_dispatching_follow_ups_into_small_queues_never_block() {
    let _watchdog = watchdog("follow-ups");
    let chains = Arc::new(Chains::default());
    let d = chain_dispatcher("chains", &chains, None);
    let (started, refused) = start_chains(&d, 4, sized(5_000) as u64);
    assert_eq!(refused, 0);
    d.wait_idle().unwrap();
    chains.faults.check();
    let ran = chains.ran.load(SeqCst);
    assert_eq!(
        ran,
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
    // Every job's dispatch into its own key came back Full.
    assert!(chains.full.load(SeqCst) >= ran);
    assert!(chains.timed_out.load(SeqCst) > 0);
    assert_eq!(chains.closed.load(SeqCst), 0);
    let stats = d.stats();
    assert_eq!((stats.completed, stats.panicked), (ran, 0));
    assert_eq!(stats.refused, chains.refused());
    assert_eq!(d.close().stats.keys, 0);
}

#[test]
fn close_inside_a_handler_races_follow_ups_and_producers_then_every_dispatch_comes_back() {
    let _watchdog = watchdog("close in a handler");
    let chains = Arc::new(Chains::default());
    let per_producer = sized(5_000) as u64;
    let d = chain_dispatcher("inclose", &chains, Some(2 * per_producer));
    let (started, refused) = start_chains(&d, 4, per_producer);
    let report = d.close();
    assert!(report.drained);
    chains.faults.check();
    let ran = chains.ran.load(SeqCst);
    assert_eq!(
        ran,
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
    // The handler closed after 2 * per_producer jobs, long before the producers were done.
    assert!(refused > 0, "producers never saw the close");
    assert!(
        chains.closed.load(SeqCst) > 0,
        "no follow-up was refused Closed"
    );
    let refused_before = report.stats.refused;
    assert_eq!(refused_before, refused + chains.refused());
    assert_eq!(report.stats.completed, ran);
    // Then a million dispatches from four threads, by every method: each comes back Closed,
    // with its own key and job, and none runs.
    let attempts = sized(250_000) as u64;
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let d = &d;
            s.spawn(move || {
                for n in thread * attempts..(thread + 1) * attempts {
                    let job = Hop { chain: n, hop: 0 };
                    let err = match n % 3 {
                        0 => d.dispatch(n, job),
                        1 => d.try_dispatch(n, job),
                        _ => d.dispatch_timeout(n, job, Duration::from_secs(3600)),
                    }
                    .expect_err("accepted after close");
                    assert!(err.is_closed(), "{err:?}");
                    assert_eq!(err.into_inner(), (n, job));
                }
            });
        }
    });
    let stats = d.stats();
    assert_eq!(stats.refused, refused_before + 4 * attempts);
    assert_eq!((stats.completed, stats.dispatched), (ran, ran));
    assert_eq!(chains.ran.load(SeqCst), ran);
    if !cfg!(miri) {
        wait_threads_gone("inclose-");
    }
}

#[test]
#[cfg_attr(miri, ignore = "waits for the pool's threads to leave /proc")]
fn dropping_the_handle_while_handlers_dispatch_follow_ups_runs_every_accepted_job() {
    let _watchdog = watchdog("drop during follow-ups");
    let chains = Arc::new(Chains::default());
    let d = chain_dispatcher("chdrop", &chains, None);
    wait_for(|| threads_named("chdrop-") == 2);
    let (started, _) = start_chains(&d, 4, sized(5_000) as u64);
    // Follow-ups are still bouncing between keys. A handler may hold the last handle when
    // this one goes, and then finishes the shutdown itself: wait for the threads to exit.
    drop(d);
    wait_threads_gone("chdrop-");
    chains.faults.check();
    assert_eq!(
        chains.ran.load(SeqCst),
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
}

// ---------------------------------------------------------------------------------------------
// Each job value is dropped exactly once

/// Per job id: how often its value was dropped, and whether its handler ran.
#[derive(Debug)]
struct Ledger {
    drops: Vec<AtomicU8>,
    ran: Vec<AtomicU8>,
    next: AtomicUsize,
}

/// What a tracked job does when it runs.
#[derive(Debug)]
enum Act {
    Run,
    Panic,
    Hold(Arc<Latch>),
    /// Dispatches two follow-ups into its own key (`key_capacity(2)`): one fits, one is
    /// refused `Full`.
    Reenter,
}

/// A job value that counts its drop in its ledger.
#[derive(Debug)]
struct Tracked {
    id: usize,
    act: Act,
    ledger: Arc<Ledger>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Counted, not asserted: a panic here could abort during the unwinding of a job.
        self.ledger.drops[self.id].fetch_add(1, SeqCst);
    }
}

impl Ledger {
    fn new(ids: usize) -> Arc<Self> {
        Arc::new(Ledger {
            drops: (0..ids).map(|_| AtomicU8::new(0)).collect(),
            ran: (0..ids).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    fn job(self: &Arc<Self>, act: Act) -> Tracked {
        let id = self.next.fetch_add(1, SeqCst);
        assert!(id < self.drops.len(), "ledger too small");
        Tracked {
            id,
            act,
            ledger: Arc::clone(self),
        }
    }

    fn ran(&self, id: usize) -> bool {
        self.ran[id].load(SeqCst) > 0
    }

    /// Every job made was dropped exactly once, and ran at most once.
    fn check(&self) {
        let made = self.next.load(SeqCst);
        for id in 0..made {
            let drops = self.drops[id].load(SeqCst);
            assert_eq!(drops, 1, "job {id} dropped {drops} times");
            let ran = self.ran[id].load(SeqCst);
            assert!(ran <= 1, "job {id} ran {ran} times");
        }
    }
}

/// Runs a tracked job: marks it as run, then does its act.
fn run_tracked(me: &Me<u32, Tracked>, key: u32, job: Tracked) {
    job.ledger.ran[job.id].fetch_add(1, SeqCst);
    match &job.act {
        Act::Run => {}
        Act::Panic => panic!("job {} panics", job.id),
        Act::Hold(latch) => latch.wait(),
        Act::Reenter => {
            let d = me.get().and_then(Weak::upgrade).expect("dispatcher alive");
            d.dispatch(key, job.ledger.job(Act::Run))
                .expect("the first follow-up fits");
            let second = job.ledger.job(Act::Run);
            let id = second.id;
            let err = d.dispatch(key, second).expect_err("the key is full");
            assert!(err.is_full(), "{err:?}");
            assert_eq!(err.into_job().id, id);
        }
    }
}

/// Asserts that `result` refused with the given kind and handed back job `id`; drops it.
fn refused(result: Result<(), DispatchError<u32, Tracked>>, kind: &str, id: usize) {
    let err = result.expect_err("accepted");
    let ok = match kind {
        "full" => err.is_full(),
        "timeout" => err.is_timeout(),
        _ => err.is_closed(),
    };
    assert!(ok, "expected {kind}, got {err:?}");
    assert_eq!(err.into_job().id, id);
}

#[test]
fn every_job_value_is_dropped_once_whether_run_panicked_refused_or_handed_back() {
    let _watchdog = watchdog("drops");
    quiet_deliberate_panics();
    let ledger = Ledger::new(64);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let me: Me<u32, Tracked> = Arc::default();
    let handle = Arc::clone(&me);
    let d = Arc::new(
        Dispatcher::builder()
            .workers(1)
            .key_capacity(2)
            .capacity(4)
            .jobs_per_turn(8)
            .name("drops")
            .build(move |key: &u32, job: Tracked| {
                started.lock().unwrap().send(job.id).unwrap();
                run_tracked(&handle, *key, job);
            })
            .unwrap(),
    );
    me.set(Arc::downgrade(&d)).unwrap();

    // Ran; panicked; re-entered (one follow-up ran, the other was refused in the handler).
    // Each waits for the one before, so that the re-entering job runs in a turn of its own:
    // a turn's jobs hold their key's room until the turn ends.
    let [plain, panicky, reenter] = [Act::Run, Act::Panic, Act::Reenter].map(|act| {
        let job = ledger.job(act);
        let id = job.id;
        d.dispatch(1, job).unwrap();
        d.wait_idle().unwrap();
        id
    });
    assert_eq!(d.stats().panicked, 1);
    let follow_ups = [reenter + 1, reenter + 2];
    assert!(ledger.ran(follow_ups[0]) && !ledger.ran(follow_ups[1]));
    while starts.try_recv().is_ok() {}

    // Key 1 holds the only thread while key 2 gets two jobs; key 2's turn then takes both,
    // and holds on the first.
    let (first, second) = (Latch::new(), Latch::new());
    let gate_keeper = ledger.job(Act::Hold(Arc::clone(&first)));
    let gate_keeper_id = gate_keeper.id;
    d.dispatch(1, gate_keeper).unwrap();
    assert_eq!(starts.recv().unwrap(), gate_keeper_id);
    let holder = ledger.job(Act::Hold(Arc::clone(&second)));
    let holder_id = holder.id;
    d.dispatch(2, holder).unwrap();
    let in_turn = ledger.job(Act::Run);
    let in_turn_id = in_turn.id;
    d.dispatch(2, in_turn).unwrap();
    first.open();
    assert_eq!(starts.recv().unwrap(), holder_id);

    // Key 2 is full: Full and Timeout hand the job back.
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(d.try_dispatch(2, job), "full", id);
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(
        d.dispatch_timeout(2, job, Duration::from_millis(5)),
        "timeout",
        id,
    );
    // Two more jobs fill the dispatcher: other keys are refused too.
    let queued: Vec<usize> = (0..2)
        .map(|_| {
            let job = ledger.job(Act::Run);
            let id = job.id;
            d.dispatch(3, job).unwrap();
            id
        })
        .collect();
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(d.try_dispatch(4, job), "full", id);
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(
        d.dispatch_timeout(4, job, Duration::from_millis(5)),
        "timeout",
        id,
    );

    // close_now: refused Closed meanwhile; the job left in the held turn and the queued ones
    // come back.
    let mut left = std::thread::scope(|s| {
        let closer = s.spawn(|| d.close_now());
        wait_for(|| d.is_closed());
        let job = ledger.job(Act::Run);
        let id = job.id;
        refused(d.dispatch(5, job), "closed", id);
        second.open();
        closer.join().unwrap().unwrap()
    });
    left.sort_by_key(|(key, _)| *key);
    let ids: Vec<(u32, Vec<usize>)> = left
        .iter()
        .map(|(key, jobs)| (*key, jobs.iter().map(|job| job.id).collect()))
        .collect();
    assert_eq!(ids, [(2, vec![in_turn_id]), (3, queued.clone())]);
    drop(left);
    let stats = d.stats();
    assert_eq!((stats.handed_back, stats.refused), (3, 6));
    drop(d);

    // A dispatcher dropped without close runs its queued jobs and drops each once.
    let d = Dispatcher::builder()
        .workers(1)
        .name("dropr")
        .build(|_: &u32, job: Tracked| {
            job.ledger.ran[job.id].fetch_add(1, SeqCst);
            if matches!(job.act, Act::Panic) {
                panic!("job {} panics", job.id);
            }
        })
        .unwrap();
    let dropped_with: Vec<usize> = (0..12)
        .map(|n| {
            let job = ledger.job(if n % 4 == 0 { Act::Panic } else { Act::Run });
            let id = job.id;
            d.dispatch(n % 3, job).unwrap();
            id
        })
        .collect();
    drop(d);

    ledger.check();
    let ran: Vec<usize> = [
        plain,
        panicky,
        reenter,
        follow_ups[0],
        gate_keeper_id,
        holder_id,
    ]
    .into_iter()
    .chain(dropped_with)
    .collect();
    for id in 0..ledger.next.load(SeqCst) {
        assert_eq!(ledger.ran(id), ran.contains(&id), "job {id}");
    }
}

/// One round: producers dispatch tracked jobs (one in ten panics) by every method into small
/// queues, while `close_now` (or, one round in three, `close`) fires at a random point.
fn drop_round(seed: u64, per_producer: usize) {
    const PRODUCERS: usize = 4;
    let mut rng = Rng::new(seed);
    let ledger = Ledger::new(PRODUCERS * per_producer);
    let close_now = rng.below(3) != 0;
    let close_after = rng.below((PRODUCERS * per_producer) as u64 + 1) as usize;
    let d = Dispatcher::builder()
        .workers(1 + rng.below(3) as usize)
        .capacity(4 + rng.below(28) as usize)
        .key_capacity(1 + rng.below(4) as usize)
        .jobs_per_turn(1 + rng.below(8) as usize)
        .name("dropr")
        .build(|_: &u32, job: Tracked| {
            job.ledger.ran[job.id].fetch_add(1, SeqCst);
            if matches!(job.act, Act::Panic) {
                panic!("job {} panics", job.id);
            }
        })
        .unwrap();
    let accepted_count = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let (accepted, refused, handed_back) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let (d, ledger, count, finished) = (&d, &ledger, &accepted_count, &finished);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
                    for _ in 0..per_producer {
                        let key = rng.below(16) as u32;
                        let job = ledger.job(if rng.below(10) == 0 {
                            Act::Panic
                        } else {
                            Act::Run
                        });
                        let id = job.id;
                        let result = match rng.below(4) {
                            0 => d.try_dispatch(key, job),
                            1 => d.dispatch_timeout(key, job, Duration::from_micros(20)),
                            _ => d.dispatch(key, job),
                        };
                        match result {
                            Ok(()) => {
                                accepted.push(id);
                                count.fetch_add(1, SeqCst);
                            }
                            Err(err) => {
                                let (back_key, back) = err.into_inner();
                                assert_eq!((back_key, back.id), (key, id));
                                refused.push(id);
                            }
                        }
                    }
                    finished.fetch_add(1, SeqCst);
                    (accepted, refused)
                })
            })
            .collect();
        let closer = s.spawn(|| {
            while accepted_count.load(SeqCst) < close_after && finished.load(SeqCst) < PRODUCERS {
                std::thread::yield_now();
            }
            if close_now {
                let left = d.close_now().unwrap();
                left.into_iter()
                    .flat_map(|(_, jobs)| jobs)
                    .map(|job| job.id)
                    .collect()
            } else {
                assert!(d.close().drained);
                Vec::new()
            }
        });
        let (accepted, refused): (Vec<Vec<usize>>, Vec<Vec<usize>>) =
            producers.into_iter().map(|p| p.join().unwrap()).unzip();
        let handed_back: Vec<usize> = closer.join().unwrap();
        (accepted.concat(), refused.concat(), handed_back)
    });
    ledger.check();
    // Each job took exactly one path: ran, refused, or handed back.
    let made = ledger.next.load(SeqCst);
    assert_eq!(accepted.len() + refused.len(), made);
    let handed: HashSet<usize> = handed_back.iter().copied().collect();
    assert_eq!(handed.len(), handed_back.len(), "a job handed back twice");
    for &id in &accepted {
        assert!(
            ledger.ran(id) != handed.contains(&id),
            "accepted job {id} both ran and came back, or neither"
        );
    }
    for &id in &refused {
        assert!(
            !ledger.ran(id) && !handed.contains(&id),
            "refused job {id} ran"
        );
    }
    let ran = (0..made).filter(|&id| ledger.ran(id)).count() as u64;
    let stats = d.stats();
    assert_eq!(stats.completed, ran);
    assert_eq!(stats.handed_back, handed_back.len() as u64);
    assert_eq!(stats.refused, refused.len() as u64);
    assert_eq!(stats.dispatched, accepted.len() as u64);
    assert_eq!(stats.keys, 0);
}

#[test]
fn drops_stay_exact_when_close_now_races_producers() {
    let _watchdog = watchdog("drops racing close_now");
    quiet_deliberate_panics();
    let seed = seed("drops racing close_now");
    let per_producer = common::scaled(20_000);
    for round in 0..rounds(6) {
        drop_round(seed.wrapping_add(round), per_producer);
    }
}

// ---------------------------------------------------------------------------------------------
// Counters after close

#[test]
fn stats_after_close_stay_exact_while_refused_dispatches_race() {
    let _watchdog = watchdog("stats after close");
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &u64, _: u64| {})
        .unwrap();
    for n in 0..1_000 {
        d.dispatch(n % 10, n).unwrap();
    }
    let report = d.close();
    assert!(report.drained);
    assert_eq!(
        (report.stats.dispatched, report.stats.completed),
        (1_000, 1_000)
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for thread in 0..2u64 {
            let (d, stop) = (&d, &stop);
            s.spawn(move || {
                while !stop.load(SeqCst) {
                    assert!(d.try_dispatch(thread, 0).unwrap_err().is_closed());
                }
            });
        }
        // The dispatcher is closed and drained: a refused dispatch must not show, even for a
        // moment, as a job dispatched and queued.
        let snapshots = common::scaled(100_000);
        let inexact = (0..snapshots)
            .map(|_| d.stats())
            .find(|stats| stats.dispatched != 1_000 || stats.queued != 0);
        stop.store(true, SeqCst);
        assert_eq!(
            inexact, None,
            "a snapshot after close counted a refused dispatch"
        );
    });
}
