//! Seeing inside a running dispatcher: refusals counted by cause, the hottest keys, and slow
//! jobs reported while they run.

mod common;

use common::Watchdog;
use keyed_dispatch::{Bound, Dispatcher, WorkerPool};
use std::{
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A dispatcher on one thread whose jobs numbered from 100 block until released, announcing
/// their start.
fn blocking(
    key_capacity: usize,
    capacity: usize,
) -> (Dispatcher<u8, u32>, mpsc::Receiver<u32>, mpsc::Sender<()>) {
    let (started, starts) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (started, held) = (Mutex::new(started), Mutex::new(held));
    let d = Dispatcher::builder()
        .workers(1)
        .jobs_per_turn(1)
        .key_capacity(key_capacity)
        .capacity(capacity)
        .build(move |_: &u8, job: u32| {
            if job >= 100 {
                started.lock().unwrap().send(job).unwrap();
                let _ = held.lock().unwrap().recv();
            }
        })
        .unwrap();
    (d, starts, release)
}

#[test]
fn refusals_are_counted_by_cause() {
    let _watchdog = Watchdog::new("refusals", LIMIT);
    let (d, starts, release) = blocking(1, 2);
    d.dispatch(1, 100).unwrap();
    starts.recv().unwrap();
    d.dispatch(1, 1).unwrap();
    // Key 1 holds its one waiting job: full at the key.
    assert_eq!(d.try_dispatch(1, 2).unwrap_err().bound(), Some(Bound::Key));
    assert!(d
        .dispatch_timeout(1, 3, Duration::from_millis(1))
        .unwrap_err()
        .is_timeout());
    d.dispatch(2, 1).unwrap();
    // Two waiting in all: full at the dispatcher.
    assert_eq!(
        d.try_dispatch(3, 1).unwrap_err().bound(),
        Some(Bound::Dispatcher)
    );
    release.send(()).unwrap();
    d.close();
    assert!(d.try_dispatch(1, 4).unwrap_err().is_closed());
    let stats = d.stats();
    let r = stats.refusals;
    assert_eq!(
        (r.full_key, r.full_dispatcher, r.timed_out, r.closed),
        (1, 1, 1, 1)
    );
    assert_eq!(stats.refused, 4);
}

#[test]
fn hot_keys_names_the_backlogged_key_first_and_is_empty_once_idle() {
    let _watchdog = Watchdog::new("hot_keys", LIMIT);
    let (d, starts, release) = blocking(1000, 1000);
    d.dispatch(9, 100).unwrap();
    starts.recv().unwrap();
    for job in 0..20 {
        d.dispatch(9, job).unwrap();
    }
    // Other keys stay idle: the one thread is busy with key 9's first job.
    for key in 0..5 {
        d.dispatch(key, 1).unwrap();
    }
    d.dispatch(7, 1).unwrap();
    d.dispatch(7, 2).unwrap();
    let hot = d.hot_keys(2);
    assert_eq!(hot, [(9, 21), (7, 2)]);
    assert_eq!(d.hot_keys(0), []);
    assert_eq!(d.hot_keys(100).len(), 7);
    release.send(()).unwrap();
    d.wait_idle().unwrap();
    assert_eq!(d.hot_keys(10), []);
}

#[test]
fn a_slow_job_is_reported_once_while_it_runs_and_quick_ones_are_not() {
    let _watchdog = Watchdog::new("slow_job", LIMIT);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let (reported, report) = mpsc::channel();
    let log = Arc::clone(&reports);
    let reported = Mutex::new(reported);
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let threshold = Duration::from_millis(100);
    let d = Dispatcher::builder()
        .workers(1)
        .name("slowjob")
        .slow_job(threshold, move |key: &u8, running_for| {
            log.lock().unwrap().push((*key, running_for));
            reported.lock().unwrap().send(()).unwrap();
        })
        .build(move |_: &u8, job: u32| {
            if job == 0 {
                let _ = held.lock().unwrap().recv();
            } else {
                thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
    // Quick jobs, well under the threshold, on several keys.
    for job in 1..=30 {
        d.dispatch((job % 3) as u8, job).unwrap();
    }
    d.wait_idle().unwrap();
    // The one thread hangs in job 0: reported while it still hangs.
    d.dispatch(5, 0).unwrap();
    report.recv().unwrap();
    let first = reports.lock().unwrap().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 5);
    assert!(first[0].1 >= threshold);
    // Still hung well past the threshold again: not reported twice.
    assert!(report.recv_timeout(threshold * 3).is_err());
    release.send(()).unwrap();
    d.close();
    assert_eq!(reports.lock().unwrap().len(), 1);
    common::wait_threads_gone("slowjob");
}

#[test]
fn a_dispatcher_on_a_shared_pool_reports_its_own_slow_jobs_only() {
    let _watchdog = Watchdog::new("slow_job_shared", LIMIT);
    let pool = WorkerPool::new(2).unwrap();
    let (reported, report) = mpsc::channel();
    let reported = Mutex::new(reported);
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let (other_release, other_held) = mpsc::channel::<()>();
    let other_held = Mutex::new(other_held);
    let watched = Dispatcher::builder()
        .pool(&pool)
        .slow_job(Duration::from_millis(40), move |key: &&str, _| {
            reported.lock().unwrap().send(*key).unwrap();
        })
        .build(move |_: &&str, _: u32| {
            let _ = held.lock().unwrap().recv();
        })
        .unwrap();
    let other = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &&str, _: u32| {
            let _ = other_held.lock().unwrap().recv();
        })
        .unwrap();
    other.dispatch("other", 1).unwrap();
    watched.dispatch("mine", 1).unwrap();
    assert_eq!(report.recv().unwrap(), "mine");
    release.send(()).unwrap();
    other_release.send(()).unwrap();
    watched.close();
    other.close();
    assert!(report.try_recv().is_err());
}

#[test]
fn latency_histograms_count_every_job_and_hold_known_durations() {
    let _watchdog = Watchdog::new("latency_known", LIMIT);
    let nap = Duration::from_millis(20);
    let d = Dispatcher::builder()
        .workers(2)
        .record_latency(true)
        .build(move |_: &u8, _: u32| thread::sleep(nap))
        .unwrap();
    for job in 0..5 {
        d.dispatch(1, job).unwrap();
    }
    d.wait_idle().unwrap();
    let m = d.metrics();
    assert_eq!((m.wait.count(), m.run.count()), (5, 5));
    // Each run slept 20 ms at least: every count sits in a bucket that holds 20 ms or more.
    for (range, _) in m.run.buckets() {
        assert!(range.end > nap, "a run counted under 20 ms: {range:?}");
    }
    assert!(m.run.p50() >= nap * 15 / 16 && m.run.max() >= nap);
    // On one key, the fifth job waited for the four before it.
    assert!(m.wait.max() >= nap * 4);
    assert_eq!(m.stats.completed, 5);
}

#[test]
fn latency_counts_each_job_once_through_retries_pauses_and_hand_backs() {
    let _watchdog = Watchdog::new("latency_counts", LIMIT);
    let attempts = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let seen = Arc::clone(&attempts);
    let d = Dispatcher::builder()
        .workers(2)
        .jobs_per_turn(4)
        .record_latency(true)
        .retry(
            keyed_dispatch::RetryPolicy::exponential(Duration::ZERO, Duration::ZERO)
                .max_attempts(3),
        )
        .build_retrying(move |_: &u8, job: &u32| -> Result<(), String> {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(*job).or_insert(0);
            *n += 1;
            // Every third job fails its first attempt, every fifth fails for good.
            if (*job % 3 == 0 && *n == 1) || *job % 5 == 0 {
                return Err("down".into());
            }
            Ok(())
        })
        .unwrap();
    d.pause_key(&3);
    for job in 0..200 {
        d.dispatch((job % 7) as u8, job).unwrap();
    }
    d.flush_key(&1).unwrap();
    d.resume_key(&3);
    d.pause_key(&4);
    for job in 200..260 {
        d.dispatch((job % 7) as u8, job).unwrap();
    }
    let left = d.close_now().unwrap();
    let back: usize = left.iter().map(|(_, jobs)| jobs.len()).sum();
    let m = d.metrics();
    let attempts = attempts.lock().unwrap();
    let started = attempts.len() as u64;
    let runs: u32 = attempts.values().sum();
    assert_eq!(m.wait.count(), started, "one wait per job that started");
    assert_eq!(m.run.count(), u64::from(runs), "one run per attempt");
    assert_eq!(m.stats.completed + back as u64, 260);
}

#[test]
fn metrics_of_a_dispatcher_on_a_shared_pool_are_its_own() {
    let _watchdog = Watchdog::new("latency_shared", LIMIT);
    let pool = WorkerPool::new(2).unwrap();
    let a = Dispatcher::builder()
        .pool(&pool)
        .record_latency(true)
        .build(|_: &u8, _: u32| {})
        .unwrap();
    let b = Dispatcher::builder()
        .pool(&pool)
        .record_latency(true)
        .build(|_: &u8, _: u32| {})
        .unwrap();
    let plain = Dispatcher::builder()
        .pool(&pool)
        .build(|_: &u8, _: u32| {})
        .unwrap();
    for job in 0..300 {
        a.dispatch((job % 5) as u8, job).unwrap();
        if job < 100 {
            b.dispatch((job % 3) as u8, job).unwrap();
            plain.dispatch(0, job).unwrap();
        }
    }
    a.wait_idle().unwrap();
    b.wait_idle().unwrap();
    plain.wait_idle().unwrap();
    assert_eq!(
        (a.metrics().wait.count(), a.metrics().run.count()),
        (300, 300)
    );
    assert_eq!(
        (b.metrics().wait.count(), b.metrics().run.count()),
        (100, 100)
    );
    assert_eq!(plain.metrics().run.count(), 0, "not recorded unless asked");
    assert_eq!(plain.metrics().stats.completed, 100);
    pool.close();
}

#[test]
fn a_slow_job_hook_that_closes_while_the_owner_closes_does_not_deadlock() {
    let _watchdog = Watchdog::new("slow_job_hook_closes", LIMIT);
    let handle: Arc<Mutex<Option<Dispatcher<u8, u32>>>> = Arc::default();
    let in_hook = Arc::clone(&handle);
    let (hooked, hook_ran) = mpsc::channel();
    let hooked = Mutex::new(hooked);
    let (release, held) = mpsc::channel::<()>();
    let (release, held) = (Mutex::new(release), Mutex::new(held));
    let d = Dispatcher::builder()
        .workers(1)
        .name("hookclose")
        .slow_job(Duration::from_millis(20), move |_: &u8, _| {
            let Some(d) = in_hook.lock().unwrap().take() else {
                return;
            };
            hooked.lock().unwrap().send(()).unwrap();
            // Let the job end once the owner has begun to close; then close too.
            common::wait_for(|| d.is_closed());
            release.lock().unwrap().send(()).unwrap();
            d.close();
        })
        .build(move |_: &u8, _: u32| {
            let _ = held.lock().unwrap().recv();
        })
        .unwrap();
    *handle.lock().unwrap() = Some(d.clone());
    d.dispatch(1, 1).unwrap();
    hook_ran.recv().unwrap();
    let report = d.close();
    assert!(report.drained);
    assert_eq!(report.stats.completed, 1);
    common::wait_threads_gone("hookclose");
}
