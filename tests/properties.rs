//! quickcheck: arbitrary schedules of (producer, key, payload) from several producer threads,
//! with random worker counts, capacities, turn sizes and eviction settings, and `close` or
//! `close_now` racing the producers. The reference model is plain: every accepted job runs
//! exactly once (or, after `close_now`, is handed back instead), nothing refused runs, and each
//! producer's jobs of a key run in dispatch order. `QUICKCHECK_TESTS` scales the run.

mod common;

use common::{Job, Watchdog};
use keyed_dispatch::{DispatchError, Dispatcher};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// How a producer dispatches one job.
#[derive(Debug, Clone, Copy)]
enum Call {
    Dispatch,
    Try,
    Timeout,
}

/// How the schedule ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Producers finish, then `close`.
    Close,
    /// `close` races the producers, after the given number of yields.
    RacingClose(u8),
    /// `close_now` races the producers, after the given number of yields.
    RacingCloseNow(u8),
}

#[derive(Debug, Clone)]
struct Schedule {
    workers: usize,
    capacity: usize,
    key_capacity: usize,
    jobs_per_turn: usize,
    idle_timeout: bool,
    end: End,
    /// Per producer: the (key, call) of each of its jobs, in order.
    producers: Vec<Vec<(u8, Call)>>,
}

impl Arbitrary for Call {
    fn arbitrary(g: &mut Gen) -> Self {
        *g.choose(&[Call::Dispatch, Call::Dispatch, Call::Try, Call::Timeout])
            .unwrap()
    }
}

impl Arbitrary for Schedule {
    fn arbitrary(g: &mut Gen) -> Self {
        let capacity = 1 + usize::arbitrary(g) % 16;
        let producers = 1 + usize::arbitrary(g) % 4;
        let keys = 1 + u8::arbitrary(g) % 8;
        Schedule {
            workers: 1 + usize::arbitrary(g) % 4,
            capacity,
            key_capacity: 1 + usize::arbitrary(g) % capacity,
            jobs_per_turn: 1 + usize::arbitrary(g) % 5,
            idle_timeout: bool::arbitrary(g),
            end: match u8::arbitrary(g) % 3 {
                0 => End::Close,
                1 => End::RacingClose(u8::arbitrary(g)),
                _ => End::RacingCloseNow(u8::arbitrary(g)),
            },
            producers: (0..producers)
                .map(|_| {
                    let len = usize::arbitrary(g) % (g.size() + 1);
                    (0..len)
                        .map(|_| (u8::arbitrary(g) % keys, Call::arbitrary(g)))
                        .collect()
                })
                .collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let base = self.clone();
        Box::new(self.producers.shrink().map(move |producers| Schedule {
            producers,
            ..base.clone()
        }))
    }
}

/// What happened to the jobs of one run.
#[derive(Default)]
struct Outcome {
    accepted: Vec<Job>,
    refused: Vec<Job>,
    ran: Vec<Job>,
    handed_back: Vec<Job>,
}

fn run(schedule: &Schedule) -> Outcome {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    let mut builder = Dispatcher::builder()
        .workers(schedule.workers)
        .capacity(schedule.capacity)
        .key_capacity(schedule.key_capacity)
        .jobs_per_turn(schedule.jobs_per_turn);
    if schedule.idle_timeout {
        builder = builder.idle_timeout(Duration::from_millis(1));
    }
    let d = builder
        .build(move |key: &u64, job: Job| {
            assert_eq!(*key, job.key);
            r.lock().unwrap().push(job);
        })
        .unwrap();
    let mut outcome = Outcome::default();
    std::thread::scope(|s| {
        let producers: Vec<_> = schedule
            .producers
            .iter()
            .enumerate()
            .map(|(producer, calls)| {
                let d = &d;
                s.spawn(move || {
                    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
                    for (seq, &(key, call)) in calls.iter().enumerate() {
                        let job = Job {
                            producer,
                            key: u64::from(key),
                            seq: seq as u64,
                        };
                        let result = match call {
                            Call::Dispatch => d.dispatch(job.key, job),
                            Call::Try => d.try_dispatch(job.key, job),
                            Call::Timeout => {
                                d.dispatch_timeout(job.key, job, Duration::from_micros(200))
                            }
                        };
                        match result {
                            Ok(()) => accepted.push(job),
                            Err(err) => {
                                check_refusal(call, &err);
                                assert_eq!(err.into_inner(), (job.key, job), "wrong job back");
                                refused.push(job);
                            }
                        }
                    }
                    (accepted, refused)
                })
            })
            .collect();
        let closer = match schedule.end {
            End::Close => None,
            End::RacingClose(yields) | End::RacingCloseNow(yields) => {
                let d = &d;
                let end = schedule.end;
                Some(s.spawn(move || {
                    for _ in 0..yields {
                        std::thread::yield_now();
                    }
                    match end {
                        End::RacingCloseNow(_) => d.close_now().unwrap(),
                        _ => {
                            assert!(d.close().drained);
                            Vec::new()
                        }
                    }
                }))
            }
        };
        for producer in producers {
            let (accepted, refused) = producer.join().unwrap();
            outcome.accepted.extend(accepted);
            outcome.refused.extend(refused);
        }
        if let Some(closer) = closer {
            for (key, jobs) in closer.join().unwrap() {
                assert!(jobs.iter().all(|job| job.key == key));
                outcome.handed_back.extend(jobs);
            }
        }
    });
    let report = d.close();
    assert!(report.drained);
    let stats = report.stats;
    assert_eq!(stats.dispatched, outcome.accepted.len() as u64);
    assert_eq!(stats.handed_back, outcome.handed_back.len() as u64);
    assert_eq!(stats.refused, outcome.refused.len() as u64);
    assert_eq!((stats.queued, stats.running, stats.keys), (0, 0, 0));
    outcome.ran = std::mem::take(&mut ran.lock().unwrap());
    assert_eq!(stats.completed, outcome.ran.len() as u64);
    outcome
}

/// A refusal must be one the call may return.
fn check_refusal(call: Call, err: &DispatchError<u64, Job>) {
    match call {
        Call::Dispatch => assert!(err.is_closed(), "dispatch refused with {err:?}"),
        Call::Try => assert!(err.is_full() || err.is_closed()),
        Call::Timeout => assert!(err.is_timeout() || err.is_closed()),
    }
}

fn every_accepted_job_runs_once_in_order(schedule: Schedule) -> TestResult {
    let _watchdog = Watchdog::new("property", Duration::from_secs(60));
    let outcome = run(&schedule);
    let accepted: HashSet<Job> = outcome.accepted.iter().copied().collect();
    let mut ran = HashSet::new();
    for job in &outcome.ran {
        assert!(ran.insert(*job), "{job:?} ran twice");
        assert!(accepted.contains(job), "{job:?} ran but was refused");
    }
    for job in &outcome.handed_back {
        assert!(!ran.contains(job), "{job:?} ran and was handed back");
        assert!(
            accepted.contains(job),
            "{job:?} handed back but was refused"
        );
    }
    assert_eq!(
        ran.len() + outcome.handed_back.len(),
        accepted.len(),
        "accepted jobs lost"
    );
    // Per key: the jobs that ran, then the ones handed back, each producer's in its order.
    let mut per_key: HashMap<u64, Vec<Job>> = HashMap::new();
    for job in outcome.ran.iter().chain(&outcome.handed_back) {
        per_key.entry(job.key).or_default().push(*job);
    }
    for (key, jobs) in per_key {
        let mut last: HashMap<usize, u64> = HashMap::new();
        for job in jobs {
            if let Some(prev) = last.insert(job.producer, job.seq) {
                assert!(
                    prev < job.seq,
                    "key {key}: producer {} out of order",
                    job.producer
                );
            }
        }
    }
    TestResult::passed()
}

#[test]
fn every_accepted_job_runs_exactly_once_in_order_per_producer_and_key() {
    QuickCheck::new()
        .rng(Gen::new(40))
        .quickcheck(every_accepted_job_runs_once_in_order as fn(Schedule) -> TestResult);
}
