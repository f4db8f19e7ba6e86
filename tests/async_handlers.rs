//! Async handlers (`build_async`, feature `tokio`): a key's futures one at a time and in order
//! even when they yield mid-way, I/O concurrency up to `max_in_flight` rather than threads,
//! eviction to zero keys, the close family, panics, failures and retries, groups and flushes,
//! and current-thread runtimes.

mod common;

use common::{runtime, Rng};
use keyed_dispatch::{BuildError, DispatchError, Dispatcher, RetryPolicy, WaitError};
use quickcheck::{QuickCheck, TestResult};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::sync::{watch, Notify};

/// What the handlers saw: each key's jobs in the order they ran, and whether two futures of
/// one key were ever in flight at once.
#[derive(Default)]
struct Seen {
    runs: Mutex<HashMap<u64, Vec<u64>>>,
    running: Mutex<HashSet<u64>>,
    overlapped: AtomicBool,
}

impl Seen {
    fn enter(&self, key: u64) {
        if !self.running.lock().unwrap().insert(key) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
    }

    fn leave(&self, key: u64, job: u64) {
        self.runs.lock().unwrap().entry(key).or_default().push(job);
        self.running.lock().unwrap().remove(&key);
    }

    /// Checks that no futures of a key overlapped, and that each key ran `0..jobs` in order.
    fn check(&self, keys: u64, jobs: u64) {
        assert!(
            !self.overlapped.load(Ordering::SeqCst),
            "two jobs of a key ran at once"
        );
        let runs = self.runs.lock().unwrap();
        for key in 0..keys {
            let expected: Vec<u64> = (0..jobs).collect();
            assert_eq!(runs.get(&key), Some(&expected), "key {key}");
        }
    }
}

/// A dispatcher whose jobs each wait `wait` on the runtime's timer, then count themselves in
/// `done`. Built inside a runtime.
fn sleepers(done: &Arc<AtomicUsize>, wait: Duration) -> Dispatcher<u64, u64> {
    let done = Arc::clone(done);
    Dispatcher::builder()
        .build_async(move |_: u64, _: u64| {
            let done = Arc::clone(&done);
            async move {
                tokio::time::sleep(wait).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap()
}

/// Counts the jobs in flight and the most ever at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
    started: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_keys_futures_run_one_at_a_time_in_order_though_they_yield() {
    let rt = runtime(2);
    let seen = Arc::new(Seen::default());
    let (keys, jobs) = (64, 200);
    rt.block_on(async {
        let handler_seen = Arc::clone(&seen);
        let d = Dispatcher::builder()
            .key_capacity(8)
            .build_async(move |key: u64, job: u64| {
                let seen = Arc::clone(&handler_seen);
                async move {
                    seen.enter(key);
                    for _ in 0..(job + key) % 3 {
                        tokio::task::yield_now().await;
                    }
                    if (job * 7 + key) % 50 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    seen.leave(key, job);
                }
            })
            .unwrap();
        for job in 0..jobs {
            for key in 0..keys {
                d.dispatch_async(key, job).await.unwrap();
            }
        }
        let report = d.close_async().await;
        assert_eq!(report.stats.completed, keys * jobs);
        assert!(report.drained);
    });
    seen.check(keys, jobs);
}

#[test]
fn every_key_is_in_flight_at_once_on_two_threads() {
    // Each job waits for all of them to have started: it completes only if 10,000 futures
    // are in flight at once on a 2-thread runtime.
    let rt = runtime(2);
    let keys = 10_000;
    let flight = Arc::new(InFlight::default());
    let (all_in, all_in_rx) = watch::channel(false);
    let started = Instant::now();
    rt.block_on(async {
        let counted = Arc::clone(&flight);
        let d = Dispatcher::builder()
            .max_in_flight(keys)
            .build_async(move |_: usize, _: ()| {
                let (flight, mut all_in) = (Arc::clone(&counted), all_in_rx.clone());
                async move {
                    flight.enter();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    all_in.wait_for(|all| *all).await.unwrap();
                    flight.leave();
                }
            })
            .unwrap();
        for key in 0..keys {
            d.dispatch_async(key, ()).await.unwrap();
        }
        while flight.started.load(Ordering::SeqCst) < keys {
            tokio::task::yield_now().await;
        }
        all_in.send(true).unwrap();
        assert_eq!(d.close_async().await.stats.completed, keys as u64);
    });
    assert_eq!(flight.peak.load(Ordering::SeqCst), keys);
    // Reported, not asserted: tests do not time.
    println!("10,000 keys, one 50 ms job each: {:?}", started.elapsed());
}

#[test]
fn max_in_flight_caps_the_futures_running_at_once() {
    let rt = runtime(2);
    let cap = 100;
    let flight = Arc::new(InFlight::default());
    rt.block_on(async {
        let counted = Arc::clone(&flight);
        let d = Dispatcher::builder()
            .max_in_flight(cap)
            .build_async(move |_: usize, _: ()| {
                let flight = Arc::clone(&counted);
                async move {
                    flight.enter();
                    // The first `cap` jobs hold until `cap` have started: the cap is reached.
                    while flight.started.load(Ordering::SeqCst) < cap {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    flight.leave();
                }
            })
            .unwrap();
        for key in 0..2_000 {
            d.dispatch_async(key, ()).await.unwrap();
        }
        assert_eq!(d.close_async().await.stats.completed, 2_000);
    });
    assert_eq!(flight.peak.load(Ordering::SeqCst), cap);
}

#[test]
fn idle_keys_leave_the_map() {
    let rt = runtime(2);
    rt.block_on(async {
        let d = Dispatcher::builder()
            .build_async(|_: u64, _: u64| async {
                tokio::task::yield_now().await;
            })
            .unwrap();
        for job in 0..10_000 {
            d.dispatch_async(job % 1_000, job).await.unwrap();
        }
        d.wait_idle_async().await.unwrap();
        let stats = d.stats();
        assert_eq!((stats.completed, stats.keys), (10_000, 0));
        d.close_async().await;
    });
}

#[test]
fn close_async_awaits_every_accepted_job() {
    let rt = runtime(2);
    let done = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let d = sleepers(&done, Duration::from_millis(2));
        for job in 0..500 {
            d.dispatch_async(job % 7, job).await.unwrap();
        }
        let report = d.close_async().await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            500,
            "close returned before the jobs ended"
        );
        assert_eq!(report.stats.completed, 500);
        let refused = d.dispatch_async(1, 1).await.unwrap_err();
        assert!(matches!(refused, DispatchError::Closed { key: 1, job: 1 }));
    });
}

#[test]
fn close_now_hands_back_the_unstarted_jobs_per_key_in_order() {
    let rt = runtime(2);
    let release = Arc::new(Notify::new());
    let held = Arc::clone(&release);
    let started = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&started);
    let d = Dispatcher::builder()
        .runtime(rt.handle().clone())
        .build_async(move |_: u64, _: u64| {
            let (release, started) = (Arc::clone(&held), Arc::clone(&counted));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
            }
        })
        .unwrap();
    for job in 0..10 {
        for key in 0..3 {
            d.dispatch(key, job).unwrap();
        }
    }
    // The three keys' first jobs are running; their other nine wait.
    common::wait_for(|| started.load(Ordering::SeqCst) == 3);
    let closer = {
        let d = d.clone();
        std::thread::spawn(move || d.close_now())
    };
    // `close_now` closes the gate first, then waits for the running jobs.
    common::wait_for(|| d.is_closed());
    release.notify_waiters();
    let mut back = closer.join().unwrap().unwrap();
    back.sort();
    let expected: Vec<(u64, Vec<u64>)> = (0..3).map(|key| (key, (1..10).collect())).collect();
    assert_eq!(back, expected);
    assert_eq!(d.stats().completed, 3);
}

#[test]
fn dropping_the_last_handle_inside_the_runtime_does_not_block_it() {
    // A current-thread runtime: had the drop blocked its one thread to wait for the jobs, the
    // jobs could never run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let d = sleepers(&done, Duration::from_millis(1));
        for job in 0..100 {
            d.dispatch_async(job % 5, job).await.unwrap();
        }
        // Inside the runtime the drop closes without waiting; the jobs drain on the runtime.
        drop(d);
        while done.load(Ordering::SeqCst) < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

#[tokio::test]
async fn works_on_a_current_thread_runtime() {
    let seen = Arc::new(Seen::default());
    let handler_seen = Arc::clone(&seen);
    let d = Dispatcher::builder()
        .key_capacity(4)
        .capacity(16)
        .build_async(move |key: u64, job: u64| {
            let seen = Arc::clone(&handler_seen);
            async move {
                seen.enter(key);
                tokio::task::yield_now().await;
                seen.leave(key, job);
            }
        })
        .unwrap();
    for job in 0..100 {
        for key in 0..10 {
            // The queues are small: producers wait for room, on the runtime's one thread.
            d.dispatch_async(key, job).await.unwrap();
        }
    }
    // Inside the runtime, blocking calls do not block.
    assert!(matches!(d.close_now(), Err(WaitError::WouldDeadlock)));
    assert_eq!(d.close_async().await.stats.completed, 1_000);
    seen.check(10, 100);
}

#[tokio::test]
async fn a_panicking_future_is_counted_and_its_key_goes_on() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .build_async(move |_: u8, job: u32| {
            let record = Arc::clone(&record);
            async move {
                tokio::task::yield_now().await;
                if job == 1 {
                    panic!("job {job} panics after a yield");
                }
                record.lock().unwrap().push(job);
            }
        })
        .unwrap();
    for job in 0..4 {
        d.dispatch_async(1, job).await.unwrap();
    }
    let stats = d.close_async().await.stats;
    assert_eq!((stats.completed, stats.panicked), (4, 1));
    assert_eq!(*ran.lock().unwrap(), [0, 2, 3]);
}

#[tokio::test]
async fn failures_reach_on_error_typed() {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let hooked = Arc::clone(&failures);
    let d = Dispatcher::builder()
        .on_error(move |key: &u8, err: &String, attempt| {
            hooked.lock().unwrap().push((*key, err.clone(), attempt));
        })
        .build_async(|_: u8, amount: i64| async move {
            if amount < 0 {
                return Err(format!("{amount} is not a deposit"));
            }
            Ok(())
        })
        .unwrap();
    d.dispatch_async(3, 10).await.unwrap();
    d.dispatch_async(3, -5).await.unwrap();
    let stats = d.close_async().await.stats;
    assert_eq!((stats.completed, stats.failed), (2, 1));
    assert_eq!(
        *failures.lock().unwrap(),
        [(3, "-5 is not a deposit".to_string(), 1)]
    );
}

#[tokio::test]
async fn a_retried_job_keeps_its_keys_later_jobs_behind_it() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (record, buried) = (Arc::clone(&ran), Arc::clone(&dead));
    let d = Dispatcher::builder()
        .retry(
            RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(4))
                .max_attempts(3),
        )
        .on_dead_letter(move |key: &u8, job: u32, err: String, attempts| {
            buried.lock().unwrap().push((*key, job, err, attempts));
        })
        .build_async_retrying(move |key: u8, job: u32| {
            let record = Arc::clone(&record);
            async move {
                tokio::task::yield_now().await;
                let attempt = {
                    let mut ran = record.lock().unwrap();
                    ran.push((key, job));
                    ran.iter().filter(|&&run| run == (key, job)).count()
                };
                match job {
                    // Fails twice, then succeeds.
                    1 if attempt < 3 => Err(format!("attempt {attempt}")),
                    // Fails for good.
                    3 => Err("never".to_string()),
                    _ => Ok(()),
                }
            }
        })
        .unwrap();
    for job in 0..5 {
        d.dispatch_async(9, job).await.unwrap();
    }
    let stats = d.close_async().await.stats;
    let jobs: Vec<u32> = ran.lock().unwrap().iter().map(|&(_, job)| job).collect();
    assert_eq!(
        jobs,
        [0, 1, 1, 1, 2, 3, 3, 3, 4],
        "order kept across retries"
    );
    assert_eq!(*dead.lock().unwrap(), [(9, 3, "never".to_string(), 3)]);
    assert_eq!(
        (stats.completed, stats.retried, stats.dead_lettered),
        (5, 4, 1)
    );
}

#[tokio::test]
async fn groups_and_flushes_complete_behind_their_jobs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .build_async(move |_: u64, _: u64| {
            let ran = Arc::clone(&counted);
            async move {
                tokio::time::sleep(Duration::from_micros(100)).await;
                ran.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let group = d.group();
    for job in 0..50 {
        group.dispatch_async(job % 5, job).await.unwrap();
    }
    let report = group.wait_async().await.unwrap();
    assert_eq!(report.completed, 50);
    assert!(ran.load(Ordering::SeqCst) >= 50);
    d.dispatch_async(2, 0).await.unwrap();
    d.flush_key_async(&2).await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 51);
    d.close_async().await;
}

#[test]
fn build_async_refuses_what_does_not_apply() {
    let err = Dispatcher::builder()
        .build_async(|_: u8, _: u8| async {})
        .unwrap_err();
    assert!(
        matches!(err, BuildError::NoRuntime),
        "outside a runtime: {err}"
    );
    let rt = runtime(1);
    let _inside = rt.enter();
    let err = Dispatcher::builder()
        .workers(4)
        .build_async(|_: u8, _: u8| async {})
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::ThreadsOnly { setting: "workers" }
    ));
    let err = Dispatcher::builder()
        .record_latency(true)
        .build_async(|_: u8, _: u8| async {})
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::ThreadsOnly {
            setting: "record_latency"
        }
    ));
    let err = Dispatcher::<u8, _>::builder()
        .max_in_flight(4)
        .build_spawner()
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::AsyncOnly {
            setting: "max_in_flight"
        }
    ));
}

/// The ordering property of the thread-run dispatcher, against the async one: random keys,
/// random yields and timer waits inside the handler; every job runs once, in dispatch order
/// per key, never two of a key at once.
#[test]
fn quickcheck_order_and_no_loss_with_yields_and_timers() {
    fn property(seed: u64, keys: u8, jobs: u16) -> TestResult {
        let (keys, jobs) = (u64::from(keys % 16) + 1, u64::from(jobs % 400));
        let rt = runtime(2);
        let seen = Arc::new(Seen::default());
        let handler_seen = Arc::clone(&seen);
        rt.block_on(async {
            let d = Dispatcher::builder()
                .key_capacity(4)
                .max_in_flight(3)
                .build_async(move |key: u64, job: u64| {
                    let seen = Arc::clone(&handler_seen);
                    let mut rng = Rng::new(seed ^ (key << 32) ^ job);
                    async move {
                        seen.enter(key);
                        match rng.below(4) {
                            0 => tokio::task::yield_now().await,
                            1 => tokio::time::sleep(Duration::from_micros(rng.below(300))).await,
                            _ => {}
                        }
                        seen.leave(key, job);
                    }
                })
                .unwrap();
            let mut rng = Rng::new(seed);
            let mut next = vec![0u64; keys as usize];
            for _ in 0..jobs {
                let key = rng.below(keys);
                d.dispatch_async(key, next[key as usize]).await.unwrap();
                next[key as usize] += 1;
            }
            d.close_async().await;
            assert!(!seen.overlapped.load(Ordering::SeqCst));
            let runs = seen.runs.lock().unwrap();
            for (key, &count) in next.iter().enumerate() {
                let expected: Vec<u64> = (0..count).collect();
                let ran = runs.get(&(key as u64)).cloned().unwrap_or_default();
                assert_eq!(ran, expected, "key {key}");
            }
        });
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(40)
        .quickcheck(property as fn(u64, u8, u16) -> TestResult);
}

#[tokio::test]
async fn a_paused_key_waits_and_delayed_jobs_fall_due_on_the_runtimes_timer() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .build_async(move |key: u8, job: u32| {
            let record = Arc::clone(&record);
            async move {
                tokio::task::yield_now().await;
                record.lock().unwrap().push((key, job));
            }
        })
        .unwrap();
    d.pause_key(&1);
    for job in 0..3 {
        d.dispatch_async(1, job).await.unwrap();
    }
    d.dispatch_async(2, 0).await.unwrap();
    d.dispatch_after(2, 100, Duration::from_millis(5)).unwrap();
    // The delayed job falls due on the runtime's timer, behind key 2's first.
    while ran.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(*ran.lock().unwrap(), [(2, 0), (2, 100)], "key 1 is paused");
    d.resume_key(&1);
    d.flush_key_async(&1).await.unwrap();
    assert_eq!(ran.lock().unwrap()[2..], [(1, 0), (1, 1), (1, 2)]);
    d.close_async().await;
}

#[tokio::test]
async fn timers_past_the_runtimes_horizon_are_armed_without_harm() {
    // The sweep timer of `idle_timeout(Duration::MAX)`, and a backoff as long, land far beyond
    // what the runtime's timer counts; the dispatcher must still run and close.
    let d = Dispatcher::builder()
        .idle_timeout(Duration::MAX)
        .retry(RetryPolicy::exponential(Duration::MAX, Duration::MAX).max_attempts(2))
        .build_async_retrying(|_: u8, job: u32| async move {
            if job == 0 {
                return Err("retried after Duration::MAX");
            }
            Ok(())
        })
        .unwrap();
    d.dispatch_async(1, 1).await.unwrap();
    d.flush_key_async(&1).await.unwrap();
    assert_eq!(d.stats().completed, 1);
    d.dispatch_async(2, 0).await.unwrap();
    // Key 2 waits out a backoff that never ends: close_now hands its job back.
    let rt_free = std::thread::spawn(move || d.close_now());
    let back = rt_free.join().unwrap().unwrap();
    assert_eq!(back, [(2, vec![0])]);
}
