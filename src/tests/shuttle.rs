//! Shuttle tests of the key protocol on the key map's `DashMap` code path, run through the real
//! [`Dispatcher`]: `RUSTFLAGS="--cfg shuttle" cargo test --release --lib --target-dir
//! target/shuttle tests::shuttle` (Rust 1.85 or later: `shuttle-dashmap` is edition 2024).
//!
//! # Why shuttle
//!
//! The loom models (`src/tests/loom/`) cannot run `DashMap`: its shard locks are not loom's, so
//! under loom `keymap` swaps in a plain locked `HashMap` and the `DashMap` branch (entry API,
//! `remove_if`, `retain`, read-locked lookups) is never checked. Under `cfg(shuttle)`,
//! `crate::sync` takes every lock, condition variable, atomic and thread from shuttle, and
//! `keymap` runs its `DashMap` branch unchanged on `shuttle_dashmap::DashMap`: `DashMap`'s API
//! over one shuttle `RwLock`, so lookups share a read lock and entries, removals and sweeps
//! take the write lock, as on a real shard. (It is one lock, not `DashMap`'s sharded internals:
//! a `retain` is one critical section here where `DashMap` takes the shards one at a time.)
//!
//! Loom explores small models exhaustively within a preemption bound; shuttle samples
//! schedules of larger ones. Each test runs thousands of schedules of a model too large for
//! loom: uniformly random schedules, which cover many shallow interleavings, and PCT schedules
//! (probabilistic concurrency testing), which hit any bug of depth up to 3 (one needing up to
//! three ordering constraints between threads) with a known minimum probability per schedule.
//! As under loom, the spin loops of the pool and of token holders take zero steps, and time
//! does not advance: nothing here sets a timeout or an idle timer.
//!
//! # The model
//!
//! Three producer threads each dispatch three jobs to each of three keys, keys interleaved,
//! into a dispatcher of two workers with `key_capacity(0)` and `capacity(0)` (so producers
//! block on full keys and on the full dispatcher), evicting idle keys as soon as no key is
//! ready (`idle_timeout` zero, the most eager setting). Another thread calls `close` while the
//! producers run, once a number of jobs drawn by shuttle (none to all) have been accepted, so
//! that the race spreads over the whole run. Every job records its start and end in a plain
//! log outside the model, as do the producers around each dispatch and the closer when `close`
//! returns. Afterwards:
//!
//! - every accepted job ran exactly once, before `close` returned; no refused job ran;
//! - every refused dispatch came back as `Closed` with exactly its own key and job;
//! - no two jobs of one key overlapped, and a job whose dispatch returned before another
//!   dispatch of the same key was called (by any producer) finished before that one started;
//! - `close` returned, drained, and neither its report nor the stats after it hold a key.
//!
//! A job lost in a mailbox nobody runs shows up as a deadlock: `close` waits forever, and
//! shuttle reports that no thread can make progress.
//!
//! The twin arms [`Fault::EvictBeforeMapLock`] (the sweep marks a key Evicted before it takes
//! the map's write lock), the race between eviction and dispatch that the map's locking
//! exists to close, and must fail.

use crate::{
    sync::{lock, thread, wait, Condvar, Fault, Mutex as ModelMutex},
    tests::handle::Handle,
    DispatchError, Dispatcher,
};
use shuttle::rand::{thread_rng, RngCore};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

const PRODUCERS: u32 = 3;
const KEYS: u8 = 3;
const JOBS_PER_KEY: u32 = 3;

/// Schedules per scheduler (random, then PCT); `SHUTTLE_SCHEDULES` sets another count for a
/// longer run. One schedule of the model takes about a quarter of a millisecond in a release
/// build.
fn schedules() -> usize {
    std::env::var("SHUTTLE_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// The job a producer dispatches as its `seq`th job for `key`: the three as decimal digits, so
/// that the key can be read back.
fn job(producer: u32, key: u8, seq: u32) -> u32 {
    producer * 100 + u32::from(key) * 10 + seq
}

fn key_of(job: u32) -> u8 {
    ((job / 10) % 10) as u8
}

/// Something that happened, as a plain log outside the model saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A producer is about to dispatch the job.
    Called(u32),
    /// The job's dispatch returned `Ok`.
    Accepted(u32),
    Start(u32),
    End(u32),
    /// `close` returned.
    Closed,
}

/// Every event in the order it happened. A std lock, outside the model: shuttle runs its
/// threads one at a time and no shuttle operation happens while it is held, so the log is exact
/// without adding interleavings.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// How many dispatches have been accepted so far, for the closer to wait on: a shuttle lock
/// and condition variable, inside the model.
#[derive(Default)]
struct Accepted {
    count: ModelMutex<u32>,
    changed: Condvar,
}

impl Accepted {
    fn one_more(&self) {
        *lock(&self.count) += 1;
        self.changed.notify_all();
    }

    fn wait_for(&self, count: u32) {
        let mut accepted = lock(&self.count);
        while *accepted < count {
            accepted = wait(&self.changed, accepted);
        }
    }
}

/// One execution of the model (see the module docs).
fn model() {
    let log = Log::default();
    let d = {
        let log = log.clone();
        let dispatcher = Dispatcher::builder()
            .workers(2)
            .capacity(0)
            .key_capacity(0)
            .idle_timeout(Duration::ZERO)
            .build(move |_: &u8, job: u32| {
                log.push(Event::Start(job));
                // Lets the other worker run meanwhile.
                thread::yield_now();
                log.push(Event::End(job));
            })
            .expect("valid configuration");
        Handle::new(dispatcher)
    };

    let accepted = Arc::new(Accepted::default());

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let (d, log, accepted) = (d.share(), log.clone(), Arc::clone(&accepted));
            thread::spawn(move || {
                let mut refused = Vec::new();
                for seq in 0..JOBS_PER_KEY {
                    for key in 0..KEYS {
                        let job = job(producer, key, seq);
                        log.push(Event::Called(job));
                        match d.dispatch(key, job) {
                            Ok(()) => {
                                log.push(Event::Accepted(job));
                                accepted.one_more();
                            }
                            Err(err) => refused.push((key, job, err)),
                        }
                    }
                }
                refused
            })
        })
        .collect();
    // Without a head start for the producers, most schedules would close before the first
    // dispatch. The closer waits for a number of accepted jobs drawn by shuttle (so that a
    // failing schedule replays), anywhere from none to all of them.
    let closer = {
        let (d, log) = (d.share(), log.clone());
        thread::spawn(move || {
            let all = PRODUCERS * u32::from(KEYS) * JOBS_PER_KEY;
            accepted.wait_for(thread_rng().next_u32() % (all + 1));
            let report = d.close();
            log.push(Event::Closed);
            report
        })
    };

    let refused: Vec<(u8, u32, DispatchError<u8, u32>)> = producers
        .into_iter()
        .flat_map(|producer| producer.join().expect("producer panicked"))
        .collect();
    let report = closer.join().expect("closer panicked");
    let events = log.events();

    for (key, job, err) in refused {
        assert!(err.is_closed(), "only Closed can refuse here: {err:?}");
        assert_eq!(
            err.into_inner(),
            (key, job),
            "a refused job came back changed"
        );
        assert!(
            !events.contains(&Event::Accepted(job)),
            "job {job} was both accepted and refused"
        );
    }
    check_runs(&events);

    assert!(report.drained, "close did not drain");
    let accepted = events
        .iter()
        .filter(|e| matches!(e, Event::Accepted(_)))
        .count();
    assert_eq!(
        report.stats.completed, accepted as u64,
        "close reported other than the accepted jobs"
    );
    assert_eq!(report.stats.keys, 0, "close returned with keys in the map");
    assert_eq!(d.stats().keys, 0, "keys in the map after close");
}

/// Checks the log: the runs of accepted and refused jobs, the drain, and the order per key.
fn check_runs(events: &[Event]) {
    let position = |event: Event| events.iter().position(|e| *e == event);
    let count = |event: Event| events.iter().filter(|e| **e == event).count();
    let closed = position(Event::Closed).expect("close returned");

    let mut accepted = Vec::new();
    for producer in 0..PRODUCERS {
        for key in 0..KEYS {
            for seq in 0..JOBS_PER_KEY {
                let job = job(producer, key, seq);
                let runs = (count(Event::Start(job)), count(Event::End(job)));
                if position(Event::Accepted(job)).is_some() {
                    assert_eq!(runs, (1, 1), "accepted job {job} ran {runs:?} times");
                    assert!(
                        position(Event::End(job)) < Some(closed),
                        "accepted job {job} had not run when close returned: {events:?}"
                    );
                    accepted.push(job);
                } else {
                    assert_eq!(runs, (0, 0), "refused job {job} ran");
                }
            }
        }
    }

    // One job of a key at a time.
    let mut running = [None; KEYS as usize];
    for event in events {
        match *event {
            Event::Start(job) => {
                let slot = &mut running[usize::from(key_of(job))];
                assert_eq!(
                    *slot, None,
                    "job {job} started while {slot:?} ran: {events:?}"
                );
                *slot = Some(job);
            }
            Event::End(job) => running[usize::from(key_of(job))] = None,
            _ => {}
        }
    }

    // Dispatch order per key, across producers: `first` was accepted before `second` was
    // dispatched, so it must have finished before `second` started.
    for &first in &accepted {
        for &second in &accepted {
            if key_of(first) == key_of(second)
                && position(Event::Accepted(first)) < position(Event::Called(second))
            {
                assert!(
                    position(Event::End(first)) < position(Event::Start(second)),
                    "job {first} did not finish before job {second} started: {events:?}"
                );
            }
        }
    }
}

/// Runs the model under random and then PCT schedules, with `fault` armed.
fn check(fault: Option<Fault>) {
    /// Disarms the fault however the test ends.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            Fault::arm(None);
        }
    }
    Fault::arm(fault);
    let _disarm = Disarm;
    shuttle::check_random(model, schedules());
    shuttle::check_pct(model, schedules(), 3);
}

#[test]
fn producers_racing_close_and_eviction() {
    check(None);
}

/// With debug assertions, the crate's own `debug_assert!`s may catch the fault first, so there
/// any panic passes.
#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn eviction_outside_the_map_lock_fails() {
    check(Some(Fault::EvictBeforeMapLock));
}
