//! A panic storm: one job in ten panics, with three kinds of payload, while the pool keeps its
//! threads, every key keeps taking jobs and the counts stay exact.

use crate::common::{threads_named, wait_for, wait_threads_gone};
use crate::{quiet_deliberate_panics, sized, watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    any::Any,
    cell::Cell,
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    thread::ThreadId,
};

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
