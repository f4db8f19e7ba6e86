//! `close_timeout`: a drain that finishes in time returns nothing and joins; past the deadline,
//! it returns even though a handler never does, handing back every key that no running job
//! holds (a job in backoff and delayed jobs included), while a key whose job still runs keeps
//! its unstarted jobs for a later `close_now`, or has them dropped (counted) by a later
//! `close` once that job returns. Under producers racing it, every accepted job runs, comes
//! back or is kept, exactly once.

mod common;

use common::{threads_named, wait_for, wait_threads_gone, DropToken, Drops, Watchdog};
use keyed_dispatch::{Dispatcher, RetryPolicy, WaitError};
use std::{
    collections::HashSet,
    sync::{mpsc, Arc, Barrier, Mutex},
    thread,
    time::Duration,
};

const LIMIT: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A dispatcher whose job 0 hangs, the channel announcing its start, and its release.
type Hanging<J> = (Dispatcher<char, J>, mpsc::Receiver<()>, mpsc::Sender<()>);

/// A dispatcher on one thread whose job numbered 0 (as `number` reads it) hangs until
/// released; it announces its start.
fn hanging<J: Send + 'static>(name: &str, number: fn(&J) -> u32) -> Hanging<J> {
    let (started, starts) = mpsc::channel();
    let (release, hung) = mpsc::channel::<()>();
    let (started, hung) = (Mutex::new(started), Mutex::new(hung));
    let d = Dispatcher::builder()
        .workers(1)
        .name(name)
        .build(move |_: &char, job: J| {
            if number(&job) == 0 {
                started.lock().unwrap().send(()).unwrap();
                let _ = hung.lock().unwrap().recv();
            }
        })
        .unwrap();
    (d, starts, release)
}

/// Jobs that count their drops.
fn hanging_tokens(name: &str) -> Hanging<(u32, DropToken)> {
    hanging(name, |(number, _)| *number)
}

#[test]
fn a_drain_that_finishes_in_time_hands_back_nothing_and_joins() {
    let _watchdog = Watchdog::new("close_timeout_in_time", LIMIT);
    let d = Dispatcher::builder()
        .workers(2)
        .name("ct-in-time")
        .build(|_: &u8, _: u32| {})
        .unwrap();
    for job in 0..1000 {
        d.dispatch((job % 10) as u8, job).unwrap();
    }
    assert_eq!(d.close_timeout(HOUR).unwrap(), []);
    let stats = d.stats();
    assert_eq!((stats.completed, stats.keys), (1000, 0));
    wait_threads_gone("ct-in-time");
    assert!(d.dispatch(1, 1).unwrap_err().is_closed());
}

#[test]
fn past_the_deadline_it_returns_although_a_handler_hangs_and_a_later_close_now_gets_the_rest() {
    let _watchdog = Watchdog::new("close_timeout_hung", LIMIT);
    let (d, starts, release) = hanging("ct-hung", |n: &u32| *n);
    d.dispatch('a', 0).unwrap();
    starts.recv().unwrap();
    d.dispatch('a', 1).unwrap();
    d.dispatch('b', 2).unwrap();
    d.dispatch('b', 3).unwrap();
    d.dispatch_after('c', 4, HOUR).unwrap();
    d.dispatch_after('a', 5, HOUR).unwrap();
    // The handler is released only after close_timeout returns: it returns on its own.
    let mut left = d.close_timeout(Duration::from_millis(20)).unwrap();
    left.sort_unstable();
    // Key 'a' keeps its jobs behind its running job, its delayed job 5 included: it comes back
    // whole, later.
    assert_eq!(left, [('b', vec![2, 3]), ('c', vec![4])]);
    let stats = d.stats();
    assert_eq!((stats.running, stats.queued, stats.handed_back), (1, 2, 3));
    assert_eq!(d.wait_idle(), Err(WaitError::Halted));
    assert_eq!(threads_named("ct-hung"), 1, "the hung thread is not joined");
    release.send(()).unwrap();
    assert_eq!(d.close_now().unwrap(), [('a', vec![1, 5])]);
    let stats = d.stats();
    assert_eq!(
        (stats.completed, stats.handed_back, stats.dropped),
        (1, 5, 0)
    );
    assert_eq!((stats.running, stats.queued), (0, 0));
    wait_threads_gone("ct-hung");
}

#[test]
fn a_later_close_does_not_wait_and_the_kept_jobs_are_dropped_once_the_running_one_returns() {
    let _watchdog = Watchdog::new("close_timeout_then_close", LIMIT);
    let drops = Drops::new();
    let (d, starts, release) = hanging_tokens("ct-close");
    d.dispatch('a', (0, drops.token())).unwrap();
    starts.recv().unwrap();
    d.dispatch('a', (1, drops.token())).unwrap();
    d.dispatch_after('a', (2, drops.token()), HOUR).unwrap();
    d.dispatch('b', (3, drops.token())).unwrap();
    let left = d.close_timeout(Duration::from_millis(20)).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, 'b');
    drop(left);
    // Returns at once, the job still hung.
    let report = d.close();
    assert!(!report.drained);
    assert_eq!(drops.alive(), 3, "job 0 runs; jobs 1 and 2 are kept");
    release.send(()).unwrap();
    wait_for(|| drops.alive() == 0);
    let stats = d.stats();
    assert_eq!(
        (stats.completed, stats.handed_back, stats.dropped),
        (1, 1, 2)
    );
    assert_eq!((stats.running, stats.queued, stats.keys), (0, 0, 0));
    wait_threads_gone("ct-close");
}

#[test]
fn dropping_the_last_handle_after_a_timed_out_close_timeout_does_not_wait() {
    let _watchdog = Watchdog::new("close_timeout_then_drop", LIMIT);
    let drops = Drops::new();
    let (d, starts, release) = hanging_tokens("ct-drop");
    d.dispatch('a', (0, drops.token())).unwrap();
    starts.recv().unwrap();
    d.dispatch('a', (1, drops.token())).unwrap();
    assert_eq!(d.close_timeout(Duration::ZERO).unwrap().len(), 0);
    drop(d); // would hang, were it to wait for job 0
    assert_eq!(drops.alive(), 2);
    release.send(()).unwrap();
    wait_for(|| drops.alive() == 0);
    wait_threads_gone("ct-drop");
}

#[test]
fn a_job_in_backoff_comes_back_first_among_its_keys_jobs() {
    let _watchdog = Watchdog::new("close_timeout_backoff", LIMIT);
    let (failed, failures) = mpsc::channel();
    let failed = Mutex::new(failed);
    let d = Dispatcher::builder()
        .workers(1)
        .retry(RetryPolicy::exponential(HOUR, HOUR))
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            if *job == 0 {
                failed.lock().unwrap().send(()).unwrap();
                return Err("down".into());
            }
            Ok(())
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    failures.recv().unwrap();
    d.dispatch(1, 1).unwrap();
    d.dispatch(1, 2).unwrap();
    assert_eq!(
        d.close_timeout(Duration::from_millis(20)).unwrap(),
        [(1, vec![0, 1, 2])]
    );
    let stats = d.stats();
    assert_eq!(
        (stats.handed_back, stats.completed, stats.queued),
        (3, 0, 0)
    );
}

#[test]
fn producers_racing_close_timeout_lose_nothing() {
    let _watchdog = Watchdog::new("close_timeout_race", LIMIT);
    for round in 0..20u64 {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&ran);
        let d = Dispatcher::builder()
            .workers(2)
            .key_capacity(16)
            .build(move |key: &u8, job: u32| {
                log.lock().unwrap().push((*key, job));
                // Long enough that some turns are mid-job at the deadline.
                for _ in 0..(job % 7) * 100 {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        let producers = 4;
        let start = Arc::new(Barrier::new(producers + 1));
        let accepted: Vec<_> = (0..producers)
            .map(|p| {
                let (d, start) = (d.clone(), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    let mut accepted = Vec::new();
                    for n in 0..500u32 {
                        let job = p as u32 * 1000 + n;
                        let key = (job % 5) as u8;
                        let sent = if n % 10 == 0 {
                            d.dispatch_after(key, job, Duration::from_micros(u64::from(n)))
                        } else {
                            d.dispatch(key, job)
                        };
                        if sent.is_ok() {
                            accepted.push((key, job));
                        }
                    }
                    accepted
                })
            })
            .collect();
        start.wait();
        for _ in 0..round * 100 {
            thread::yield_now();
        }
        let mut left = d.close_timeout(Duration::from_micros(round * 50)).unwrap();
        // Whatever a running job kept comes back once it returns.
        left.extend(d.close_now().unwrap());
        let accepted: HashSet<(u8, u32)> = accepted
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        let mut seen = HashSet::new();
        for &(key, job) in ran.lock().unwrap().iter() {
            assert!(seen.insert((key, job)), "job {job} ran twice");
        }
        let mut keys = HashSet::new();
        for (key, jobs) in left {
            assert!(keys.insert(key), "key {key} came back twice");
            for job in jobs {
                assert!(seen.insert((key, job)), "job {job} ran and came back");
            }
        }
        assert_eq!(seen, accepted, "round {round}: a job was lost or invented");
        assert_eq!(d.stats().dropped, 0);
    }
}
