//! Delayed dispatches: a job joins its key's queue when its delay ends, its key's order counting
//! from then; no thread waits for it; `close` runs it when due; `close_now` hands it back with
//! its key, after the key's queued jobs; and under producers racing `close_now`, every
//! accepted delayed job either runs or comes back, exactly once.

mod common;

use common::{Rng, Watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    collections::HashSet,
    sync::{mpsc, Arc, Barrier, Mutex},
    thread,
    time::{Duration, Instant},
};

const LIMIT: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

type Ran = Arc<Mutex<Vec<(u8, u32)>>>;

fn recording(workers: usize) -> (Dispatcher<u8, u32>, Ran, mpsc::Receiver<u32>) {
    let ran: Ran = Arc::default();
    let log = Arc::clone(&ran);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let d = Dispatcher::builder()
        .workers(workers)
        .build(move |key: &u8, job: u32| {
            log.lock().unwrap().push((*key, job));
            let _ = tx.lock().unwrap().send(job);
        })
        .unwrap();
    (d, ran, rx)
}

#[test]
fn a_delayed_job_joins_its_key_when_due_behind_jobs_dispatched_meanwhile() {
    let _watchdog = Watchdog::new("delayed_order", LIMIT);
    let (d, ran, rx) = recording(2);
    let delay = Duration::from_millis(30);
    let start = Instant::now();
    d.dispatch_after(1, 10, delay).unwrap();
    d.dispatch(1, 1).unwrap();
    d.dispatch(1, 2).unwrap();
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.recv().unwrap(), 2);
    assert_eq!(rx.recv().unwrap(), 10);
    assert!(start.elapsed() >= delay, "ran before its delay ended");
    // Dispatched after it became due: behind it.
    d.dispatch(1, 3).unwrap();
    let stats = d.close().stats;
    assert_eq!((stats.dispatched, stats.completed), (4, 4));
    assert_eq!(*ran.lock().unwrap(), [(1, 1), (1, 2), (1, 10), (1, 3)]);
}

#[test]
fn a_delay_holds_no_thread() {
    let _watchdog = Watchdog::new("delay_no_thread", LIMIT);
    let (d, _, rx) = recording(1);
    for job in 0..1000 {
        d.dispatch_after(job as u8, 1000 + job, HOUR).unwrap();
    }
    assert_eq!(d.stats().queued, 1000);
    // The one worker is free: another key's job runs at once.
    d.dispatch(7, 7).unwrap();
    assert_eq!(rx.recv().unwrap(), 7);
    let left = d.close_now().unwrap();
    let back: usize = left.iter().map(|(_, jobs)| jobs.len()).sum();
    assert_eq!(back, 1000);
    assert_eq!(d.stats().handed_back, 1000);
}

#[test]
fn close_waits_for_delayed_jobs_and_runs_them_when_due() {
    let _watchdog = Watchdog::new("close_runs_delayed", LIMIT);
    let (d, ran, _) = recording(2);
    let start = Instant::now();
    d.dispatch_after(3, 30, Duration::from_millis(40)).unwrap();
    d.dispatch_after(4, 40, Duration::from_millis(20)).unwrap();
    let report = d.close();
    assert!(report.drained);
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert_eq!(report.stats.completed, 2);
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, [(3, 30), (4, 40)]);
    let refused = d.dispatch_after(3, 31, Duration::ZERO).unwrap_err();
    assert!(refused.is_closed());
    assert_eq!(refused.into_inner(), (3, 31));
}

#[test]
fn close_now_hands_delayed_jobs_back_after_their_keys_queued_jobs() {
    let _watchdog = Watchdog::new("close_now_delayed", LIMIT);
    let (started, starts) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (started, held) = (Mutex::new(started), Mutex::new(held));
    let d = Dispatcher::builder()
        .workers(1)
        .build(move |_: &u8, job: u32| {
            if job == 0 {
                started.lock().unwrap().send(()).unwrap();
                held.lock().unwrap().recv().unwrap();
            }
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    starts.recv().unwrap();
    d.dispatch_after(1, 3, HOUR).unwrap();
    d.dispatch_after(2, 20, HOUR).unwrap();
    d.dispatch(1, 1).unwrap();
    d.dispatch_after(1, 4, 2 * HOUR).unwrap();
    d.dispatch(1, 2).unwrap();
    let left = thread::scope(|s| {
        s.spawn(|| {
            while !d.is_closed() {
                thread::yield_now();
            }
            release.send(()).unwrap();
        });
        d.close_now().unwrap()
    });
    assert_eq!(left, [(1, vec![1, 2, 3, 4]), (2, vec![20])]);
    let stats = d.stats();
    assert_eq!(
        (stats.handed_back, stats.completed, stats.queued),
        (5, 1, 0)
    );
}

#[test]
fn delayed_jobs_racing_close_now_run_or_come_back_exactly_once() {
    let _watchdog = Watchdog::new("delayed_race", LIMIT);
    for round in 0..20u64 {
        let (d, ran, _) = recording(2);
        let producers = 4;
        let start = Arc::new(Barrier::new(producers + 1));
        let accepted: Vec<_> = (0..producers)
            .map(|p| {
                let (d, start) = (d.clone(), Arc::clone(&start));
                thread::spawn(move || {
                    let mut rng = Rng::new(round * 31 + p as u64);
                    start.wait();
                    let mut accepted = Vec::new();
                    for n in 0..200u32 {
                        let job = p as u32 * 1000 + n;
                        let key = rng.below(8) as u8;
                        let delay = Duration::from_micros(rng.below(2000));
                        if d.dispatch_after(key, job, delay).is_ok() {
                            accepted.push((key, job));
                        }
                    }
                    accepted
                })
            })
            .collect();
        start.wait();
        // A different moment for close_now each round, jobs falling due all the while.
        for _ in 0..round * 200 {
            thread::yield_now();
        }
        let left = d.close_now().unwrap();
        let accepted: Vec<(u8, u32)> = accepted
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        let mut seen = HashSet::new();
        for &(key, job) in ran.lock().unwrap().iter() {
            assert!(seen.insert((key, job)), "job {job} ran twice");
        }
        for (key, jobs) in left {
            for job in jobs {
                assert!(
                    seen.insert((key, job)),
                    "job {job} ran and came back, or came back twice"
                );
            }
        }
        let accepted: HashSet<_> = accepted.into_iter().collect();
        assert_eq!(seen, accepted, "round {round}: a job was lost or invented");
    }
}
