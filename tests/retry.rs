//! Retrying dispatchers: a failed attempt is retried at the head of its key after its backoff,
//! no later job of the key starts before it, the backoff holds no thread, and a job that fails
//! for good goes to the dead-letter hook exactly once. Plus the hooks' containment, groups,
//! flushes, close, close_now, the counters and the builder's checks, and a quickcheck property
//! over random failures, policies and producers.

mod common;

use common::Watchdog;
use keyed_dispatch::{BuildError, Dispatcher, Failure, RetryPolicy};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

const LIMIT: Duration = Duration::from_secs(60);

/// Counts the attempts of each job (jobs are unique values), as the handler sees them.
#[derive(Default)]
struct Attempts(Mutex<HashMap<u32, u32>>);

impl Attempts {
    /// Counts an attempt of `job` and returns its number, from 1.
    fn next(&self, job: u32) -> u32 {
        let mut seen = self.0.lock().unwrap();
        let n = seen.entry(job).or_insert(0);
        *n += 1;
        *n
    }
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(2))
        .max_attempts(attempts)
}

#[test]
fn failed_attempt_is_retried_before_later_jobs_of_its_key() {
    let _watchdog = Watchdog::new("retried_before_later_jobs", LIMIT);
    let events = Arc::new(Mutex::new(Vec::new()));
    let attempts = Attempts::default();
    let log = Arc::clone(&events);
    let d = Dispatcher::builder()
        .workers(2)
        .retry(fast(5))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            let attempt = attempts.next(*job);
            log.lock().unwrap().push((*job, attempt));
            // Job 1 fails twice, job 3 once.
            match (*job, attempt) {
                (1, 1 | 2) | (3, 1) => Err(format!("job {job} attempt {attempt}")),
                _ => Ok(()),
            }
        })
        .unwrap();
    for job in 0..5 {
        d.dispatch(7, job).unwrap();
    }
    let stats = d.close().stats;
    assert_eq!(
        *events.lock().unwrap(),
        [
            (0, 1),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 1),
            (3, 1),
            (3, 2),
            (4, 1)
        ]
    );
    assert_eq!((stats.dispatched, stats.completed), (5, 5));
    assert_eq!(
        (stats.failed, stats.retried, stats.dead_lettered),
        (3, 3, 0)
    );
}

/// With one worker and a long backoff on key 1, key 2's jobs all run while key 1 waits: the
/// backoff holds no thread. Shown by the order of events, not by timing.
#[test]
fn backoff_holds_no_thread() {
    let _watchdog = Watchdog::new("backoff_holds_no_thread", LIMIT);
    let (events, seen) = mpsc::channel();
    let events = Mutex::new(events);
    let attempts = Attempts::default();
    let d = Dispatcher::builder()
        .workers(1)
        .retry(RetryPolicy::exponential(
            Duration::from_millis(500),
            Duration::from_millis(500),
        ))
        .build_retrying(move |key: &u8, job: &u32| -> Result<(), &'static str> {
            let attempt = attempts.next(*job);
            events.lock().unwrap().send((*key, *job, attempt)).unwrap();
            if *key == 1 && attempt == 1 {
                Err("first attempt fails")
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch(1, 100).unwrap();
    assert_eq!(seen.recv().unwrap(), (1, 100, 1));
    for job in 0..10 {
        d.dispatch(2, job).unwrap();
    }
    let mut order = Vec::new();
    loop {
        let event = seen.recv().unwrap();
        order.push(event);
        if event.0 == 1 {
            break;
        }
    }
    let expected: Vec<_> = (0..10)
        .map(|job| (2, job, 1))
        .chain([(1, 100, 2)])
        .collect();
    assert_eq!(
        order, expected,
        "key 2 ran to completion during key 1's backoff"
    );
    d.close();
}

#[test]
fn dead_letter_gets_job_error_and_attempts_once_and_the_key_goes_on() {
    let _watchdog = Watchdog::new("dead_letter_once", LIMIT);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let parked = Arc::clone(&dead);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&ran);
    let attempts = Attempts::default();
    let d = Dispatcher::builder()
        .retry(fast(3))
        .on_dead_letter(move |key: &u8, job: u32, err: String, attempts: u32| {
            parked.lock().unwrap().push((*key, job, err, attempts));
        })
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            let attempt = attempts.next(*job);
            log.lock().unwrap().push((*job, attempt));
            if *job == 1 {
                Err(format!("attempt {attempt}"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    for job in 0..3 {
        d.dispatch(5, job).unwrap();
    }
    let stats = d.close().stats;
    assert_eq!(*dead.lock().unwrap(), [(5, 1, "attempt 3".to_string(), 3)]);
    assert_eq!(
        *ran.lock().unwrap(),
        [(0, 1), (1, 1), (1, 2), (1, 3), (2, 1)]
    );
    assert_eq!((stats.completed, stats.failed), (3, 3));
    assert_eq!((stats.retried, stats.dead_lettered), (2, 1));
}

#[test]
fn retry_after_names_its_own_delay() {
    let _watchdog = Watchdog::new("retry_after", LIMIT);
    let times = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&times);
    // The policy's backoff is far longer than the watchdog allows: only the handler's own
    // delay lets the test finish.
    let policy = RetryPolicy::exponential(Duration::from_secs(3600), Duration::from_secs(3600));
    let d = Dispatcher::builder()
        .retry(policy)
        .build_retrying(
            move |_: &u8, _: &u32| -> Result<(), Failure<&'static str>> {
                let mut times = log.lock().unwrap();
                times.push(Instant::now());
                if times.len() == 1 {
                    Err(Failure::retry_after(Duration::from_millis(50), "busy"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap();
    d.dispatch(1, 1).unwrap();
    let stats = d.close().stats;
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= Duration::from_millis(50));
    assert_eq!((stats.completed, stats.retried), (1, 1));
}

#[test]
fn permanent_failure_is_dead_lettered_at_once() {
    let _watchdog = Watchdog::new("permanent", LIMIT);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let parked = Arc::clone(&dead);
    let d = Dispatcher::builder()
        .retry(fast(5))
        .on_dead_letter(move |_: &u8, job: u32, err: &'static str, attempts: u32| {
            parked.lock().unwrap().push((job, err, attempts));
        })
        .build_retrying(|_: &u8, job: &u32| -> Result<(), Failure<&'static str>> {
            if *job == 0 {
                Err(Failure::permanent("malformed"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    d.dispatch(1, 1).unwrap();
    let stats = d.close().stats;
    assert_eq!(*dead.lock().unwrap(), [(0, "malformed", 1)]);
    assert_eq!(
        (stats.retried, stats.dead_lettered, stats.completed),
        (0, 1, 2)
    );
}

#[test]
fn panics_are_not_retried_unless_asked() {
    let _watchdog = Watchdog::new("panics", LIMIT);
    for retry_panics in [false, true] {
        let calls = Arc::new(Mutex::new(0));
        let count = Arc::clone(&calls);
        let d = Dispatcher::builder()
            .retry(fast(3).retry_panics(retry_panics))
            .build_retrying(move |_: &u8, _: &u32| -> Result<(), String> {
                let mut calls = count.lock().unwrap();
                *calls += 1;
                if *calls == 1 {
                    drop(calls);
                    panic!("first attempt panics");
                }
                Ok(())
            })
            .unwrap();
        d.dispatch(1, 1).unwrap();
        let stats = d.close().stats;
        assert_eq!(stats.panicked, 1);
        assert_eq!(stats.completed, 1);
        assert_eq!(stats.dead_lettered, 0);
        if retry_panics {
            assert_eq!((*calls.lock().unwrap(), stats.retried), (2, 1));
        } else {
            assert_eq!((*calls.lock().unwrap(), stats.retried), (1, 0));
        }
    }
}

#[test]
fn on_error_hears_each_failed_attempt_typed_with_its_number() {
    let _watchdog = Watchdog::new("on_error_typed", LIMIT);
    #[derive(Debug, PartialEq)]
    struct Status(u16);
    impl std::fmt::Display for Status {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "status {}", self.0)
        }
    }
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let attempts = Attempts::default();
    let d = Dispatcher::builder()
        .workers(1)
        .retry(fast(3))
        .on_error(move |key: &u8, err: &Status, attempt| {
            log.lock().unwrap().push((*key, err.0, attempt));
        })
        .on_dead_letter(|_: &u8, _: u32, _: Status, _: u32| {})
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), Status> {
            match (*job, attempts.next(*job)) {
                (0, attempt) => Err(Status(500 + attempt as u16)),
                (1, 1) => Err(Status(429)),
                _ => Ok(()),
            }
        })
        .unwrap();
    d.dispatch(4, 0).unwrap();
    d.dispatch(4, 1).unwrap();
    let stats = d.close().stats;
    assert_eq!((stats.dead_lettered, stats.retried), (1, 3));
    assert_eq!(
        *heard.lock().unwrap(),
        [(4, 501, 1), (4, 502, 2), (4, 503, 3), (4, 429, 1)]
    );
}

#[test]
fn panicking_on_error_hook_changes_nothing_for_the_job() {
    let _watchdog = Watchdog::new("on_error_panics", LIMIT);
    let attempts = Attempts::default();
    let (dead_tx, dead) = mpsc::channel();
    let dead_tx = Mutex::new(dead_tx);
    let d = Dispatcher::builder()
        .workers(1)
        .retry(fast(2))
        .on_error(|_: &u8, _: &String, _| panic!("the hook panics"))
        .on_dead_letter(move |_: &u8, job: u32, _: String, attempts: u32| {
            dead_tx.lock().unwrap().send((job, attempts)).unwrap();
        })
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            // Job 0 fails for good; job 1 fails once, then succeeds.
            match (*job, attempts.next(*job)) {
                (0, _) | (1, 1) => Err("down".into()),
                _ => Ok(()),
            }
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    d.dispatch(1, 1).unwrap();
    let stats = d.close().stats;
    // Three failed attempts, each hook call panicking; job 0 still dead-lettered after its two
    // attempts, job 1 still retried.
    assert_eq!(dead.try_iter().collect::<Vec<_>>(), [(0, 2)]);
    assert_eq!(
        (stats.failed, stats.panicked, stats.retried, stats.completed),
        (3, 3, 2, 2)
    );
}

#[test]
fn panicking_dead_letter_hook_is_contained() {
    let _watchdog = Watchdog::new("dead_letter_panics", LIMIT);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(1)
        .retry(fast(2))
        .on_dead_letter(|_: &u8, _: u32, _: String, _: u32| panic!("the hook panics"))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            log.lock().unwrap().push(*job);
            if *job == 0 {
                Err("always".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    d.dispatch(1, 1).unwrap();
    d.dispatch(2, 2).unwrap();
    let report = d.close();
    assert!(report.drained);
    let ran = ran.lock().unwrap();
    let key_1: Vec<_> = ran.iter().filter(|&&job| job < 2).collect();
    assert_eq!(key_1, [&0, &0, &1]);
    assert!(ran.contains(&2));
    let stats = report.stats;
    assert_eq!(
        (stats.completed, stats.dead_lettered, stats.panicked),
        (3, 1, 1)
    );
}

#[test]
fn groups_and_flush_count_a_retried_job_once() {
    let _watchdog = Watchdog::new("groups_flush", LIMIT);
    let done = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&done);
    let attempts = Attempts::default();
    let d = Dispatcher::builder()
        .retry(fast(5))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            let attempt = attempts.next(*job);
            if attempt < 3 {
                return Err(format!("attempt {attempt}"));
            }
            log.lock().unwrap().push(*job);
            Ok(())
        })
        .unwrap();
    let group = d.group();
    group.dispatch(1, 10).unwrap();
    group.dispatch(2, 20).unwrap();
    let report = group.wait().unwrap();
    assert_eq!((report.dispatched, report.completed), (2, 2));
    assert_eq!(report.failed, 0, "each job's last attempt succeeded");
    d.dispatch(3, 30).unwrap();
    d.flush_key(&3).unwrap();
    assert!(
        done.lock().unwrap().contains(&30),
        "flush waited for the retries"
    );
    let stats = d.close().stats;
    assert_eq!((stats.completed, stats.retried, stats.failed), (3, 6, 6));
}

#[test]
fn close_waits_for_a_key_in_backoff() {
    let _watchdog = Watchdog::new("close_waits", LIMIT);
    let (events, seen) = mpsc::channel();
    let events = Mutex::new(events);
    let attempts = Attempts::default();
    let d = Dispatcher::builder()
        .retry(RetryPolicy::exponential(
            Duration::from_millis(100),
            Duration::from_millis(100),
        ))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), &'static str> {
            let attempt = attempts.next(*job);
            events.lock().unwrap().send(attempt).unwrap();
            if attempt == 1 {
                Err("once")
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch(1, 1).unwrap();
    assert_eq!(seen.recv().unwrap(), 1); // now in backoff
    let report = d.close();
    assert!(report.drained);
    assert_eq!(
        seen.try_recv(),
        Ok(2),
        "the retry ran before close returned"
    );
    assert_eq!((report.stats.completed, report.stats.keys), (1, 0));
}

#[test]
fn close_now_hands_back_a_job_in_backoff_first() {
    let _watchdog = Watchdog::new("close_now_backoff", LIMIT);
    let (events, seen) = mpsc::channel();
    let events = Mutex::new(events);
    let d = Dispatcher::builder()
        .workers(1)
        .retry(RetryPolicy::exponential(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ))
        .build_retrying(move |_: &char, job: &u32| -> Result<(), &'static str> {
            events.lock().unwrap().send(*job).unwrap();
            Err("down")
        })
        .unwrap();
    let group = d.group();
    group.dispatch('a', 0).unwrap();
    assert_eq!(seen.recv().unwrap(), 0); // job 0 is in backoff
    for job in 1..3 {
        d.dispatch('a', job).unwrap();
    }
    assert_eq!(d.stats().keys, 1);
    let left = d.close_now().unwrap();
    assert_eq!(left, [('a', vec![0, 1, 2])]);
    assert_eq!(group.wait().unwrap().handed_back, 1);
    let stats = d.stats();
    assert_eq!(
        (stats.handed_back, stats.completed, stats.retried),
        (3, 0, 0)
    );
    assert_eq!(
        seen.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "no attempt ran after"
    );
}

#[test]
fn bad_policies_are_build_errors() {
    let handler = |_: &u8, _: &u32| -> Result<(), String> { Ok(()) };
    let zero = Dispatcher::builder()
        .retry(fast(0))
        .build_retrying(handler)
        .unwrap_err();
    assert!(matches!(zero, BuildError::ZeroAttempts), "{zero}");
    let short = RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(1));
    let below = Dispatcher::builder()
        .retry(short)
        .build_retrying(handler)
        .unwrap_err();
    match below {
        BuildError::BackoffBelowInitial { initial, max } => {
            assert_eq!(
                (initial, max),
                (Duration::from_secs(2), Duration::from_secs(1))
            );
        }
        other => panic!("unexpected {other}"),
    }
    let plain = Dispatcher::builder()
        .retry(fast(3))
        .build(|_: &u8, _: u32| {})
        .unwrap_err();
    assert!(matches!(plain, BuildError::RetryWithoutRetryingHandler));
    // Zero backoffs are allowed: the retry runs on the key's next turn.
    let zero_backoff = RetryPolicy::exponential(Duration::ZERO, Duration::ZERO);
    let d = Dispatcher::builder()
        .retry(zero_backoff)
        .build_retrying(handler)
        .unwrap();
    d.close();
}

#[test]
fn policy_delays_double_up_to_the_max() {
    let policy = RetryPolicy::exponential(Duration::from_millis(5), Duration::from_secs(2));
    let delays: Vec<_> = (1..=11).map(|n| policy.delay(n).as_millis()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2000, 2000]);
    assert_eq!(policy.delay(u32::MAX), Duration::from_secs(2));
}

/// A random schedule of jobs from several producers, each job failing a random number of its
/// attempts (from a seed), under a random policy with tiny backoffs and a random worker count.
#[derive(Debug, Clone)]
struct Schedule {
    workers: usize,
    max_attempts: u32,
    backoff_us: u64,
    jobs_per_turn: usize,
    /// Per producer: the key and the failures before success (above `max_attempts`: dead) of
    /// each of its jobs, in order.
    producers: Vec<Vec<(u8, u32)>>,
}

impl Arbitrary for Schedule {
    fn arbitrary(g: &mut Gen) -> Self {
        let max_attempts = 1 + u32::arbitrary(g) % 4;
        let producers = 1 + usize::arbitrary(g) % 3;
        Schedule {
            workers: 1 + usize::arbitrary(g) % 3,
            max_attempts,
            backoff_us: u64::arbitrary(g) % 300,
            jobs_per_turn: 1 + usize::arbitrary(g) % 4,
            producers: (0..producers)
                .map(|_| {
                    let len = usize::arbitrary(g) % (g.size() + 1);
                    (0..len)
                        .map(|_| (u8::arbitrary(g) % 4, u32::arbitrary(g) % (max_attempts + 2)))
                        .collect()
                })
                .collect(),
        }
    }
}

/// Per key, the jobs that succeeded ran in dispatch order (per producer); every job either
/// succeeded exactly once, on attempt `failures + 1`, or was dead-lettered exactly once after
/// `max_attempts` attempts; `close` drained everything.
fn retries_keep_order_and_account_for_every_job(schedule: Schedule) -> TestResult {
    let _watchdog = Watchdog::new("retry property", LIMIT);
    // Job id: (producer, seq); its failures before success travel with it.
    type Id = (usize, usize);
    let succeeded = Arc::new(Mutex::new(HashMap::<u8, Vec<(Id, u32)>>::new()));
    let dead = Arc::new(Mutex::new(Vec::<(Id, u32)>::new()));
    let attempts = Arc::new(Mutex::new(HashMap::<Id, u32>::new()));
    let (log, parked, seen) = (
        Arc::clone(&succeeded),
        Arc::clone(&dead),
        Arc::clone(&attempts),
    );
    let backoff = Duration::from_micros(schedule.backoff_us);
    let d = Dispatcher::builder()
        .workers(schedule.workers)
        .jobs_per_turn(schedule.jobs_per_turn)
        .retry(RetryPolicy::exponential(backoff, backoff * 4).max_attempts(schedule.max_attempts))
        .on_dead_letter(move |_: &u8, job: (Id, u32), _: String, attempts: u32| {
            parked.lock().unwrap().push((job.0, attempts));
        })
        .build_retrying(move |key: &u8, job: &(Id, u32)| -> Result<(), String> {
            let attempt = {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(job.0).or_insert(0);
                *n += 1;
                *n
            };
            if attempt <= job.1 {
                return Err(format!("attempt {attempt}"));
            }
            log.lock()
                .unwrap()
                .entry(*key)
                .or_default()
                .push((job.0, attempt));
            Ok(())
        })
        .unwrap();
    thread::scope(|s| {
        for (producer, jobs) in schedule.producers.iter().enumerate() {
            let d = &d;
            s.spawn(move || {
                for (seq, &(key, failures)) in jobs.iter().enumerate() {
                    d.dispatch(key, ((producer, seq), failures)).unwrap();
                }
            });
        }
    });
    let report = d.close();
    let total: usize = schedule.producers.iter().map(Vec::len).sum();
    let succeeded = succeeded.lock().unwrap();
    let dead = dead.lock().unwrap();
    let mut outcome = HashMap::new();
    for (key, runs) in succeeded.iter() {
        let mut last = HashMap::new();
        for &((producer, seq), attempt) in runs {
            if let Some(prev) = last.insert(producer, seq) {
                if prev >= seq {
                    return TestResult::error(format!("key {key}: {producer}'s jobs out of order"));
                }
            }
            if outcome.insert((producer, seq), ("ok", attempt)).is_some() {
                return TestResult::error("a job succeeded twice");
            }
        }
    }
    for &(id, attempts) in dead.iter() {
        if outcome.insert(id, ("dead", attempts)).is_some() {
            return TestResult::error("a job was dead-lettered twice, or also succeeded");
        }
    }
    for (producer, jobs) in schedule.producers.iter().enumerate() {
        for (seq, &(_, failures)) in jobs.iter().enumerate() {
            let expected = if failures < schedule.max_attempts {
                ("ok", failures + 1)
            } else {
                ("dead", schedule.max_attempts)
            };
            if outcome.get(&(producer, seq)) != Some(&expected) {
                return TestResult::error(format!(
                    "job {:?}: {:?}, expected {expected:?}",
                    (producer, seq),
                    outcome.get(&(producer, seq))
                ));
            }
        }
    }
    let stats = report.stats;
    if !report.drained || stats.completed != total as u64 || stats.keys != 0 {
        return TestResult::error(format!("not drained: {stats:?}"));
    }
    if stats.dead_lettered != dead.len() as u64 {
        return TestResult::error("dead-letter count");
    }
    TestResult::passed()
}

#[test]
fn retry_property() {
    QuickCheck::new()
        .rng(Gen::new(12))
        .quickcheck(retries_keep_order_and_account_for_every_job as fn(Schedule) -> TestResult);
}

#[test]
fn without_a_hook_a_dead_job_is_counted_and_dropped() {
    let _watchdog = Watchdog::new("dead_without_hook", LIMIT);
    let drops = common::Drops::new();
    let d = Dispatcher::builder()
        .retry(fast(2))
        .build_retrying(
            |_: &u8, _: &common::DropToken| -> Result<(), &'static str> { Err("always") },
        )
        .unwrap();
    d.dispatch(1, drops.token()).unwrap();
    let stats = d.close().stats;
    assert_eq!(
        (stats.completed, stats.retried, stats.dead_lettered),
        (1, 1, 1)
    );
    assert_eq!(drops.alive(), 0, "the dead job was dropped");
}

#[test]
fn new_public_types_are_send_sync_and_debug() {
    fn assert_traits<T: Send + Sync + std::fmt::Debug>() {}
    assert_traits::<RetryPolicy>();
    assert_traits::<Failure<String>>();
    assert_traits::<keyed_dispatch::NoDeadLetter>();
    let failure = Failure::retry_after(Duration::from_secs(1), "busy");
    assert_eq!(*failure.error(), "busy");
    assert!(format!("{failure:?}").contains("busy"));
}
