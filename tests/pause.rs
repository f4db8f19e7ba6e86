//! Pausing, resuming and cancelling one key: a paused key's jobs wait in order while other keys
//! go on, a running job finishes first, the key is neither evicted nor unbounded, `wait_idle`
//! refuses to wait for it, `close` drains it and `close_now` hands its jobs back; `cancel_key`
//! takes a key's unstarted jobs in order, a job in backoff included.

mod common;

use common::Watchdog;
use keyed_dispatch::{Bound, Dispatcher, RetryPolicy, WaitError};
use std::{
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

const LIMIT: Duration = Duration::from_secs(60);

type Ran = Arc<Mutex<Vec<(u8, u32)>>>;

/// A dispatcher recording (key, job) as jobs run; jobs of key 7 numbered from 100 block until
/// released, announcing that they started.
fn recording(
    workers: usize,
) -> (
    Dispatcher<u8, u32>,
    Ran,
    mpsc::Receiver<u32>,
    mpsc::Sender<()>,
) {
    let ran: Ran = Arc::default();
    let log = Arc::clone(&ran);
    let (started, starts) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (started, held) = (Mutex::new(started), Mutex::new(held));
    let d = Dispatcher::builder()
        .workers(workers)
        .build(move |key: &u8, job: u32| {
            if job >= 100 {
                started.lock().unwrap().send(job).unwrap();
                held.lock().unwrap().recv().unwrap();
            }
            log.lock().unwrap().push((*key, job));
        })
        .unwrap();
    (d, ran, starts, release)
}

fn of(ran: &Ran, key: u8) -> Vec<u32> {
    ran.lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|&(_, job)| job)
        .collect()
}

#[test]
fn paused_key_holds_its_jobs_while_other_keys_go_on() {
    let _watchdog = Watchdog::new("paused_key_holds", LIMIT);
    let (d, ran, _, _) = recording(2);
    d.pause_key(&7); // unknown so far
    assert_eq!(d.stats().paused, 1);
    for job in 0..3 {
        d.dispatch(7, job).unwrap();
        d.dispatch(8, job).unwrap();
    }
    d.flush_key(&8).unwrap();
    assert_eq!(of(&ran, 8), [0, 1, 2]);
    assert_eq!(d.wait_idle(), Err(WaitError::KeysPaused));
    assert_eq!(of(&ran, 7), Vec::<u32>::new());
    d.resume_key(&7);
    assert_eq!(d.stats().paused, 0);
    d.flush_key(&7).unwrap();
    assert_eq!(of(&ran, 7), [0, 1, 2]);
    d.wait_idle().unwrap();
    assert_eq!(d.close().stats.completed, 6);
}

/// The turn of a paused key ends after its running job, even with the rest of its batch
/// already taken; `wait_idle` sees the key Held once it does.
#[test]
fn pausing_a_running_key_finishes_the_running_job_then_holds() {
    let _watchdog = Watchdog::new("pause_running", LIMIT);
    let (d, ran, starts, release) = recording(1);
    d.pause_key(&7);
    for job in [100, 1, 2] {
        d.dispatch(7, job).unwrap();
    }
    d.resume_key(&7); // one turn takes all three
    assert_eq!(starts.recv().unwrap(), 100);
    d.pause_key(&7);
    release.send(()).unwrap();
    assert_eq!(d.wait_idle(), Err(WaitError::KeysPaused));
    assert_eq!(of(&ran, 7), [100]);
    d.resume_key(&7);
    d.flush_key(&7).unwrap();
    assert_eq!(of(&ran, 7), [100, 1, 2]);
    d.close();
}

#[test]
fn paused_key_is_not_evicted() {
    let _watchdog = Watchdog::new("paused_not_evicted", LIMIT);
    let (d, _, _, _) = recording(2);
    d.dispatch(7, 0).unwrap();
    d.dispatch(8, 0).unwrap();
    d.flush_key(&7).unwrap();
    d.pause_key(&7); // idle, with no job
    d.wait_idle().unwrap(); // evicts every idle key but the paused one
    assert_eq!(d.stats().keys, 1);
    d.resume_key(&7);
    d.wait_idle().unwrap();
    assert_eq!(d.stats().keys, 0);
    d.close();
}

#[test]
fn paused_key_stays_bounded_by_its_capacity() {
    let _watchdog = Watchdog::new("paused_bounded", LIMIT);
    let d = Dispatcher::builder()
        .key_capacity(2)
        .build(|_: &u8, _: u32| {})
        .unwrap();
    d.pause_key(&7);
    for job in 0..3 {
        d.try_dispatch(7, job).unwrap();
    }
    let err = d.try_dispatch(7, 3).unwrap_err();
    assert_eq!(err.bound(), Some(Bound::Key));
    assert_eq!(err.into_inner(), (7, 3));
    d.try_dispatch(8, 0).unwrap();
    let stats = d.close().stats;
    assert_eq!((stats.completed, stats.paused), (4, 0));
}

#[test]
fn close_resumes_and_drains_paused_keys() {
    let _watchdog = Watchdog::new("close_resumes", LIMIT);
    let (d, ran, _, _) = recording(2);
    d.pause_key(&7);
    d.pause_key(&9); // paused without a job
    for job in 0..3 {
        d.dispatch(7, job).unwrap();
    }
    let report = d.close();
    assert!(report.drained);
    assert_eq!(of(&ran, 7), [0, 1, 2]);
    assert_eq!((report.stats.paused, report.stats.keys), (0, 0));
    d.pause_key(&7); // nothing once closed
    assert_eq!(d.stats().paused, 0);
}

#[test]
fn close_now_hands_back_paused_keys_jobs() {
    let _watchdog = Watchdog::new("close_now_paused", LIMIT);
    let (d, ran, _, _) = recording(2);
    d.pause_key(&7);
    for job in 0..3 {
        d.dispatch(7, job).unwrap();
    }
    assert_eq!(d.close_now().unwrap(), [(7, vec![0, 1, 2])]);
    assert_eq!(of(&ran, 7), Vec::<u32>::new());
    let stats = d.stats();
    assert_eq!((stats.handed_back, stats.paused), (3, 0));
}

#[test]
fn cancel_takes_unstarted_jobs_in_order_and_later_dispatches_run() {
    let _watchdog = Watchdog::new("cancel_in_order", LIMIT);
    let (d, ran, _, _) = recording(2);
    d.pause_key(&7);
    let group = d.group();
    for job in 0..3 {
        group.dispatch(7, job).unwrap();
    }
    let flushed = thread::scope(|s| {
        let flush = s.spawn(|| d.flush_key(&7));
        assert_eq!(d.cancel_key(&7).unwrap(), [0, 1, 2]);
        flush.join().unwrap()
    });
    assert_eq!(
        flushed,
        Ok(()),
        "the flush behind cancelled jobs is released"
    );
    let report = group.wait().unwrap();
    assert_eq!((report.dispatched, report.handed_back), (3, 3));
    assert_eq!(d.cancel_key(&7).unwrap(), Vec::<u32>::new());
    assert_eq!(d.cancel_key(&42).unwrap(), Vec::<u32>::new()); // unknown key
    d.resume_key(&7);
    d.dispatch(7, 3).unwrap();
    d.flush_key(&7).unwrap();
    assert_eq!(of(&ran, 7), [3]);
    let stats = d.close().stats;
    assert_eq!((stats.handed_back, stats.completed), (3, 1));
}

/// Cancelling a running key lets the running job finish and takes the rest; whichever way it
/// races the turn, what ran and what was taken are the key's jobs in order, each once.
#[test]
fn cancel_of_a_running_key_takes_the_rest_in_order() {
    let _watchdog = Watchdog::new("cancel_running", LIMIT);
    let (d, ran, starts, release) = recording(1);
    d.dispatch(7, 100).unwrap();
    assert_eq!(starts.recv().unwrap(), 100);
    for job in 1..5 {
        d.dispatch(7, job).unwrap();
    }
    let taken = thread::scope(|s| {
        let cancel = s.spawn(|| d.cancel_key(&7).unwrap());
        release.send(()).unwrap();
        cancel.join().unwrap()
    });
    d.flush_key(&7).unwrap();
    let mut all = of(&ran, 7);
    assert_eq!(all[0], 100, "the running job finished");
    all.extend(taken);
    assert_eq!(all, [100, 1, 2, 3, 4]);
    d.close();
}

#[test]
fn cancel_from_a_handler_would_deadlock() {
    let _watchdog = Watchdog::new("cancel_in_handler", LIMIT);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let d = Arc::new(Mutex::new(None::<Dispatcher<u8, u32>>));
    let inner = Arc::clone(&d);
    let built = Dispatcher::builder()
        .build(move |_: &u8, _: u32| {
            let d = inner.lock().unwrap().clone().unwrap();
            tx.lock().unwrap().send(d.cancel_key(&7)).unwrap();
        })
        .unwrap();
    *d.lock().unwrap() = Some(built.clone());
    built.dispatch(1, 0).unwrap();
    assert_eq!(rx.recv().unwrap(), Err(WaitError::WouldDeadlock));
    d.lock().unwrap().take();
    built.close();
}

#[test]
fn cancel_takes_a_job_in_backoff_first() {
    let _watchdog = Watchdog::new("cancel_backoff", LIMIT);
    let (events, seen) = mpsc::channel();
    let events = Mutex::new(events);
    let d = Dispatcher::builder()
        .workers(1)
        .retry(RetryPolicy::exponential(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), &'static str> {
            events.lock().unwrap().send(*job).unwrap();
            if *job == 0 {
                Err("down")
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch(7, 0).unwrap();
    assert_eq!(seen.recv().unwrap(), 0); // job 0 waits out its backoff
    d.dispatch(7, 1).unwrap();
    assert_eq!(d.cancel_key(&7).unwrap(), [0, 1]);
    d.dispatch(7, 2).unwrap();
    d.flush_key(&7).unwrap();
    assert_eq!(seen.recv().unwrap(), 2);
    let stats = d.close().stats;
    assert_eq!(
        (stats.handed_back, stats.completed, stats.retried),
        (2, 1, 0)
    );
}

#[test]
fn a_paused_key_in_backoff_waits_for_resume() {
    let _watchdog = Watchdog::new("paused_backoff", LIMIT);
    let (events, seen) = mpsc::channel();
    let events = Mutex::new(events);
    let attempts = Mutex::new(0);
    let d = Dispatcher::builder()
        .retry(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO).max_attempts(3))
        .build_retrying(move |_: &u8, _: &u32| -> Result<(), &'static str> {
            let mut attempts = attempts.lock().unwrap();
            *attempts += 1;
            events.lock().unwrap().send(*attempts).unwrap();
            if *attempts == 1 {
                Err("once")
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.pause_key(&7);
    d.dispatch(7, 0).unwrap();
    d.resume_key(&7);
    assert_eq!(seen.recv().unwrap(), 1);
    // Paused while in backoff (or already retrying: then it finishes first).
    d.pause_key(&7);
    match d.wait_idle() {
        Err(WaitError::KeysPaused) => assert_eq!(seen.try_recv(), Err(mpsc::TryRecvError::Empty)),
        Ok(()) => assert_eq!(seen.try_recv(), Ok(2)),
        Err(other) => panic!("unexpected {other}"),
    }
    d.resume_key(&7);
    d.wait_idle().unwrap();
    let stats = d.close().stats;
    assert_eq!((stats.completed, stats.retried), (1, 1));
}

/// What a producer does next.
#[derive(Debug, Clone, Copy)]
enum Op {
    Dispatch(u8),
    Pause(u8),
    Resume(u8),
    Cancel(u8),
}

impl quickcheck::Arbitrary for Op {
    fn arbitrary(g: &mut quickcheck::Gen) -> Self {
        let key = u8::arbitrary(g) % 3;
        match u8::arbitrary(g) % 8 {
            0 => Op::Pause(key),
            1 => Op::Resume(key),
            2 => Op::Cancel(key),
            _ => Op::Dispatch(key),
        }
    }
}

/// Producers dispatch, pause, resume and cancel keys at random, then `close` drains: every
/// accepted job ran exactly once or was handed back by exactly one `cancel_key`, and each
/// producer's jobs of a key ran in dispatch order, as did each cancel's jobs.
fn pause_property(workers: u8, producers: Vec<Vec<Op>>) -> quickcheck::TestResult {
    let _watchdog = Watchdog::new("pause property", LIMIT);
    let producers: Vec<Vec<Op>> = producers.into_iter().take(3).collect();
    type Id = (usize, u32);
    let ran = Arc::new(Mutex::new(Vec::<(u8, Id)>::new()));
    let log = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(1 + usize::from(workers % 3))
        .jobs_per_turn(2)
        .build(move |key: &u8, job: Id| log.lock().unwrap().push((*key, job)))
        .unwrap();
    let cancelled: Vec<Vec<(u8, Vec<Id>)>> = thread::scope(|s| {
        let handles: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(producer, ops)| {
                let d = &d;
                s.spawn(move || {
                    let mut taken = Vec::new();
                    for (seq, op) in ops.iter().enumerate() {
                        match *op {
                            Op::Dispatch(key) => d.dispatch(key, (producer, seq as u32)).unwrap(),
                            Op::Pause(key) => d.pause_key(&key),
                            Op::Resume(key) => d.resume_key(&key),
                            Op::Cancel(key) => taken.push((key, d.cancel_key(&key).unwrap())),
                        }
                    }
                    taken
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let report = d.close();
    let ran = ran.lock().unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut last = std::collections::HashMap::new();
    for &(key, (producer, seq)) in ran.iter() {
        if seen.insert((producer, seq), "ran").is_some() {
            return quickcheck::TestResult::error("a job ran twice");
        }
        if let Some(prev) = last.insert((key, producer), seq) {
            if prev > seq {
                return quickcheck::TestResult::error(format!("key {key} out of order"));
            }
        }
    }
    let mut handed = 0;
    for (key, jobs) in cancelled.iter().flatten() {
        let mut last = std::collections::HashMap::new();
        for &(producer, seq) in jobs {
            handed += 1;
            if seen.insert((producer, seq), "cancelled").is_some() {
                return quickcheck::TestResult::error("a cancelled job also ran, or twice");
            }
            if let Some(prev) = last.insert(producer, seq) {
                if prev > seq {
                    return quickcheck::TestResult::error(format!("cancel of {key} out of order"));
                }
            }
        }
    }
    let dispatched: usize = producers
        .iter()
        .flatten()
        .filter(|op| matches!(op, Op::Dispatch(_)))
        .count();
    if seen.len() != dispatched {
        return quickcheck::TestResult::error(format!("{} of {dispatched} jobs", seen.len()));
    }
    let stats = report.stats;
    if !report.drained || stats.handed_back != handed || stats.paused != 0 || stats.keys != 0 {
        return quickcheck::TestResult::error(format!("{stats:?}"));
    }
    quickcheck::TestResult::passed()
}

#[test]
fn pause_resume_cancel_property() {
    quickcheck::QuickCheck::new()
        .rng(quickcheck::Gen::new(16))
        .quickcheck(pause_property as fn(u8, Vec<Vec<Op>>) -> quickcheck::TestResult);
}
