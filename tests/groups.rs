//! Groups and flushes: a group counts its jobs across keys and its waits return once they have
//! all finished, however they ended; `flush_key` waits for one key's earlier jobs; and neither
//! can be waited for from inside a handler.

mod common;

use common::{wait_for, Latch, Watchdog, HANG};
use keyed_dispatch::{Dispatcher, Group, WaitError, WorkerPool};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    time::Duration,
};

/// A dispatcher whose job `n` waits on `latch` when `n` is in `hold`, and reports every job
/// it finishes on the returned channel.
fn held_dispatcher(
    workers: usize,
    latch: &Arc<Latch>,
    hold: &'static [u64],
) -> (Dispatcher<u64, u64>, mpsc::Receiver<(u64, u64)>) {
    let (done, finished) = mpsc::channel();
    let done = Mutex::new(done);
    let latch = Arc::clone(latch);
    let d = Dispatcher::builder()
        .workers(workers)
        .build(move |key: &u64, n: u64| {
            if hold.contains(&n) {
                latch.wait();
            }
            done.lock().unwrap().send((*key, n)).unwrap();
        })
        .unwrap();
    (d, finished)
}

#[test]
fn group_wait_covers_its_jobs_across_keys() {
    let _watchdog = Watchdog::new("group across keys", HANG);
    let ran = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ran);
    let outside = Latch::new();
    let held = Arc::clone(&outside);
    let d = Dispatcher::builder()
        .workers(4)
        .build(move |key: &u64, _: u64| {
            if *key == u64::MAX {
                held.wait();
            } else {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    // A job outside the group, held for the whole test, does not hold the group's wait.
    d.dispatch(u64::MAX, 0).unwrap();
    let group = d.group();
    let jobs = common::scaled(10_000) as u64;
    for n in 0..jobs {
        group.dispatch(n % 97, n).unwrap();
    }
    let report = group.wait().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), jobs, "wait returned early");
    assert_eq!((report.dispatched, report.completed), (jobs, jobs));
    assert!(report.all_succeeded());
    assert!(group.is_done());
    // The group counts each job inside its turn, before the turn ends: the last group job's
    // turn may still be counted as running, and the outside job's turn may not have begun.
    wait_for(|| d.stats().running == 1);
    assert_eq!(d.stats().running, 1, "the outside job is still held");
    outside.open();
    d.close();
}

#[test]
fn is_done_is_false_until_the_last_job_finishes() {
    let _watchdog = Watchdog::new("is_done", HANG);
    let latch = Latch::new();
    let (d, finished) = held_dispatcher(2, &latch, &[1]);
    let group = d.group();
    assert!(group.is_done(), "a group with no job is done");
    group.dispatch(10, 0).unwrap();
    group.dispatch(20, 1).unwrap();
    let mut first = finished.recv().unwrap();
    if first.1 == 1 {
        first = finished.recv().unwrap();
    }
    assert_eq!(first, (10, 0));
    // Job 0 reported from inside its handler; the group counts it once the handler returns.
    wait_for(|| group.pending() == 1);
    assert!(!group.is_done(), "job 1 is held");
    latch.open();
    group.wait().unwrap();
    assert!(group.is_done());
    assert_eq!(group.pending(), 0);
    d.close();
}

#[test]
fn wait_timeout_times_out_while_a_job_is_held() {
    let _watchdog = Watchdog::new("group wait_timeout", HANG);
    let latch = Latch::new();
    let (d, _finished) = held_dispatcher(2, &latch, &[0]);
    let group = d.group();
    group.dispatch(1, 0).unwrap();
    group.dispatch(2, 1).unwrap();
    assert_eq!(
        group.wait_timeout(Duration::from_millis(20)),
        Err(WaitError::Timeout)
    );
    assert_eq!(group.wait_timeout(Duration::ZERO), Err(WaitError::Timeout));
    latch.open();
    let report = group.wait_timeout(HANG).unwrap();
    assert_eq!(report.completed, 2);
    d.close();
}

#[test]
fn failed_and_panicked_jobs_still_complete_the_group() {
    let _watchdog = Watchdog::new("group failures", HANG);
    let d = Dispatcher::builder()
        .workers(2)
        .build(|_: &u8, n: u32| -> Result<(), String> {
            match n % 3 {
                0 => Ok(()),
                1 => Err(format!("job {n} failed")),
                _ => panic!("job {n} panicked"),
            }
        })
        .unwrap();
    let group = d.group();
    for n in 0..30 {
        group.dispatch((n % 4) as u8, n).unwrap();
    }
    let report = group.wait().unwrap();
    assert_eq!(report.dispatched, 30);
    assert_eq!(report.completed, 30);
    assert_eq!((report.failed, report.panicked), (10, 10));
    assert_eq!(report.handed_back, 0);
    assert!(!report.all_succeeded());
    assert_eq!(group.report(), report, "nothing moved since");
    // The keys go on after their failures.
    let after = d.group();
    after.dispatch(1, 3).unwrap();
    assert!(after.wait().unwrap().all_succeeded());
    d.close();
}

#[test]
fn waiting_on_a_group_does_not_block_dispatching() {
    let _watchdog = Watchdog::new("group wait concurrent", HANG);
    let latch = Latch::new();
    let (d, finished) = held_dispatcher(2, &latch, &[0]);
    let group = d.group();
    group.dispatch(1, 0).unwrap(); // held
    std::thread::scope(|s| {
        let waiter = s.spawn(|| group.wait().unwrap());
        // Another thread dispatches through the same group while it is waited on, and the
        // dispatcher keeps running other jobs, grouped or not.
        let clone = group.clone();
        s.spawn(move || clone.dispatch(2, 1).unwrap())
            .join()
            .unwrap();
        d.dispatch(3, 2).unwrap();
        let mut seen: Vec<_> = (0..2).map(|_| finished.recv().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, [(2, 1), (3, 2)]);
        // Job 1 reported from inside its handler; the group counts it once the handler returns.
        wait_for(|| group.pending() == 1);
        assert!(!waiter.is_finished(), "the held job is still pending");
        assert_eq!(group.pending(), 1);
        latch.open();
        let report = waiter.join().unwrap();
        assert_eq!((report.dispatched, report.completed), (2, 2));
    });
    d.close();
}

#[test]
fn refused_group_dispatch_is_not_counted_and_hands_the_job_back() {
    let _watchdog = Watchdog::new("group refused", HANG);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let d = Dispatcher::builder()
        .workers(1)
        .key_capacity(0)
        .build(move |_: &u8, n: u32| {
            started.lock().unwrap().send(n).unwrap();
            held.wait();
        })
        .unwrap();
    let group = d.group();
    group.dispatch(1, 10).unwrap();
    assert_eq!(starts.recv().unwrap(), 10);
    let full = group.try_dispatch(1, 11).unwrap_err();
    assert!(full.is_full());
    assert_eq!(full.into_inner(), (1, 11));
    let timeout = group
        .dispatch_timeout(1, 12, Duration::from_millis(10))
        .unwrap_err();
    assert!(timeout.is_timeout());
    assert_eq!(timeout.into_inner(), (1, 12));
    assert_eq!(group.pending(), 1, "refused jobs are not counted");
    latch.open();
    let report = group.wait().unwrap();
    assert_eq!((report.dispatched, report.completed), (1, 1));
    d.close();
    let closed = group.dispatch(2, 13).unwrap_err();
    assert!(closed.is_closed());
    assert_eq!(closed.into_inner(), (2, 13));
    assert!(group.is_done());
    assert_eq!(group.report().dispatched, 1);
}

#[test]
fn close_now_completes_the_group_with_its_handed_back_jobs() {
    let _watchdog = Watchdog::new("group close_now", HANG);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let d = Dispatcher::builder()
        .workers(1)
        .build(move |_: &u8, n: u32| {
            if n == 0 {
                started.lock().unwrap().send(()).unwrap();
                held.wait();
            }
        })
        .unwrap();
    let group = d.group();
    group.dispatch(1, 0).unwrap();
    starts.recv().unwrap();
    for n in 1..4 {
        group.dispatch(1, n).unwrap();
    }
    d.dispatch(2, 100).unwrap(); // handed back too, outside the group
    std::thread::scope(|s| {
        let waiter = s.spawn(|| group.wait().unwrap());
        s.spawn(|| {
            wait_for(|| d.is_closed());
            latch.open();
        });
        let mut left = d.close_now().unwrap();
        left.sort_unstable();
        assert_eq!(left, [(1, vec![1, 2, 3]), (2, vec![100])]);
        let report = waiter.join().unwrap();
        assert_eq!(report.dispatched, 4);
        assert_eq!((report.completed, report.handed_back), (1, 3));
        assert!(!report.all_succeeded());
    });
}

#[test]
fn group_jobs_keep_their_key_order_with_plain_jobs() {
    let _watchdog = Watchdog::new("group order", HANG);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let d = Dispatcher::builder()
        .workers(4)
        .jobs_per_turn(3)
        .build(move |key: &u8, n: u32| log.lock().unwrap().push((*key, n)))
        .unwrap();
    let group = d.group();
    for n in 0..1_000 {
        let key = (n % 5) as u8;
        if n % 2 == 0 {
            group.dispatch(key, n).unwrap();
        } else {
            d.dispatch(key, n).unwrap();
        }
    }
    assert_eq!(group.wait().unwrap().completed, 500);
    d.wait_idle().unwrap();
    let seen = seen.lock().unwrap();
    for key in 0..5u8 {
        let order: Vec<u32> = seen
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|e| e.1)
            .collect();
        assert_eq!(order.len(), 200);
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order"
        );
    }
}

#[test]
fn spawned_closures_count_in_their_group() {
    let _watchdog = Watchdog::new("group spawn", HANG);
    let d = Dispatcher::builder().workers(2).build_spawner().unwrap();
    let group = d.group();
    let sum = Arc::new(AtomicU64::new(0));
    for n in 1..=10u64 {
        let sum = Arc::clone(&sum);
        group
            .spawn(n % 3, move || {
                sum.fetch_add(n, Ordering::SeqCst);
            })
            .unwrap();
    }
    assert_eq!(group.wait().unwrap().completed, 10);
    assert_eq!(sum.load(Ordering::SeqCst), 55);
}

#[test]
fn flush_key_waits_for_the_keys_earlier_jobs_while_other_keys_run() {
    let _watchdog = Watchdog::new("flush_key", HANG);
    let latch = Latch::new();
    let (d, finished) = held_dispatcher(2, &latch, &[0]);
    d.dispatch(1, 0).unwrap(); // held
    std::thread::scope(|s| {
        let flusher = s.spawn(|| d.flush_key(&1));
        // Other keys, and the flushed key's dispatches, go on while the flush waits.
        for n in 1..=10 {
            d.dispatch(2 + n % 2, n).unwrap();
        }
        let mut seen: Vec<_> = (0..10).map(|_| finished.recv().unwrap().1).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        d.dispatch(1, 11).unwrap();
        assert!(!flusher.is_finished(), "job 0 of key 1 is still held");
        latch.open();
        assert_eq!(flusher.join().unwrap(), Ok(()));
    });
    // Job 0 finished before the flush returned.
    let mut rest: Vec<_> = (0..2).map(|_| finished.recv().unwrap()).collect();
    rest.sort_unstable();
    assert_eq!(rest, [(1, 0), (1, 11)]);
    d.close();
}

#[test]
fn flush_key_returns_once_its_jobs_finished_even_if_later_ones_are_held() {
    let _watchdog = Watchdog::new("flush_key later", HANG);
    let latch = Latch::new();
    let (d, finished) = held_dispatcher(2, &latch, &[2]);
    d.dispatch(1, 0).unwrap();
    d.dispatch(1, 1).unwrap();
    d.flush_key(&1).unwrap();
    // Both earlier jobs finished; a later job, held, does not hold a flush made before it.
    let mut seen: Vec<_> = (0..2).map(|_| finished.recv().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(1, 0), (1, 1)]);
    d.dispatch(1, 2).unwrap();
    assert_eq!(
        d.flush_key_timeout(&1, Duration::from_millis(10)),
        Err(WaitError::Timeout),
        "a flush made after job 2 waits for it"
    );
    latch.open();
    d.flush_key_timeout(&1, HANG).unwrap();
    assert_eq!(finished.recv().unwrap(), (1, 2));
    d.close();
}

#[test]
fn flush_key_on_an_absent_or_idle_key_returns_at_once() {
    let _watchdog = Watchdog::new("flush absent", HANG);
    let latch = Latch::new();
    let (d, _finished) = held_dispatcher(1, &latch, &[0]);
    assert_eq!(d.flush_key(&42), Ok(()));
    assert_eq!(d.flush_key_timeout(&42, Duration::ZERO), Ok(()));
    d.dispatch(7, 1).unwrap();
    d.wait_idle().unwrap(); // key 7 ran and was evicted
    assert_eq!(d.stats().keys, 0);
    assert_eq!(d.flush_key_timeout(&7, Duration::ZERO), Ok(()));
    // The only thread is held by key 1; key 2 is untouched, so its flush does not wait.
    d.dispatch(1, 0).unwrap();
    assert_eq!(d.flush_key_timeout(&2, Duration::ZERO), Ok(()));
    assert_eq!(
        d.flush_key_timeout(&1, Duration::ZERO),
        Err(WaitError::Timeout)
    );
    latch.open();
    d.close();
}

#[test]
fn flush_key_after_close_now_returns() {
    let _watchdog = Watchdog::new("flush close_now", HANG);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let d = Dispatcher::builder()
        .workers(1)
        .build(move |_: &u64, n: u64| {
            started.lock().unwrap().send(n).unwrap();
            held.wait();
        })
        .unwrap();
    d.dispatch(1, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), 0);
    d.dispatch(1, 1).unwrap();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| d.flush_key(&1));
        s.spawn(|| {
            wait_for(|| d.is_closed());
            latch.open();
        });
        assert_eq!(d.close_now().unwrap(), [(1, vec![1])]);
        // Job 1 was handed back: it will never run, so the flush does not wait for it.
        assert_eq!(flusher.join().unwrap(), Ok(()));
    });
    assert!(starts.try_recv().is_err(), "job 1 never ran");
}

#[test]
fn waits_from_inside_a_handler_refuse_with_would_deadlock() {
    let _watchdog = Watchdog::new("group waits in handler", HANG);
    type Waits = [Result<(), WaitError>; 5];
    let pool = WorkerPool::builder()
        .workers(2)
        .name("inhandler")
        .build()
        .unwrap();
    let me: Arc<Mutex<Weak<Dispatcher<u8, u8>>>> = Arc::default();
    // The group lives outside the handler between calls, so that no cycle keeps it alive.
    let group: Arc<Mutex<Option<Group<u8, u8>>>> = Arc::default();
    let (results, outcomes) = mpsc::channel::<Waits>();
    let results = Mutex::new(results);
    let (handle, shared_group) = (Arc::clone(&me), Arc::clone(&group));
    let d = Arc::new(
        Dispatcher::builder()
            .pool(&pool)
            .build(move |key: &u8, _: u8| {
                if *key != 0 {
                    return; // the jobs the group counts
                }
                let d = handle.lock().unwrap().upgrade().unwrap();
                let g = shared_group.lock().unwrap().clone().unwrap();
                let waits = [
                    g.wait().map(drop),
                    g.wait_timeout(Duration::from_secs(1)).map(drop),
                    d.flush_key(&0),
                    d.flush_key(&1),
                    d.flush_key_timeout(&1, Duration::from_secs(1)),
                ];
                results.lock().unwrap().send(waits).unwrap();
            })
            .unwrap(),
    );
    *me.lock().unwrap() = Arc::downgrade(&d);
    *group.lock().unwrap() = Some(d.group());
    // A handler of another dispatcher on the same pool is refused too.
    let other_group = Arc::clone(&group);
    let (other_results, other_outcomes) = mpsc::channel();
    let other_results = Mutex::new(other_results);
    let other = Dispatcher::builder()
        .pool(&pool)
        .build(move |_: &u8, _: u8| {
            let g = other_group.lock().unwrap().clone().unwrap();
            other_results.lock().unwrap().send(g.wait()).unwrap();
        })
        .unwrap();
    let g = group.lock().unwrap().clone().unwrap();
    g.dispatch(1, 1).unwrap();
    d.dispatch(0, 0).unwrap();
    let deadlock = Err(WaitError::WouldDeadlock);
    assert_eq!(outcomes.recv().unwrap(), [deadlock; 5]);
    other.dispatch(0, 0).unwrap();
    assert_eq!(
        other_outcomes.recv().unwrap(),
        Err(WaitError::WouldDeadlock)
    );
    // Outside the pool, the same waits work.
    assert_eq!(g.wait().unwrap().completed, 1);
    assert_eq!(d.flush_key(&0), Ok(()));
    group.lock().unwrap().take();
    pool.close();
}

#[test]
fn groups_are_send_sync_clone_and_debug_without_bounds() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    struct NotDebug;
    send_sync::<Group<String, Vec<u8>>>();
    send_sync::<Group<u64, NotDebug>>();
    send_sync::<keyed_dispatch::GroupReport>();
    let d = Dispatcher::builder()
        .workers(1)
        .build(|_: &u8, _: NotDebug| {})
        .unwrap();
    let group = d.group();
    assert!(format!("{group:?}").starts_with("Group"));
    assert_eq!(group.report(), keyed_dispatch::GroupReport::default());
}

#[test]
fn groups_and_flushes_racing_close_now_account_for_every_job() {
    let _watchdog = Watchdog::new("groups racing close_now", HANG);
    // A job is `seq * 2 + grouped`; every job whose seq is a multiple of 5 fails.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&ran);
    let d = Dispatcher::builder()
        .workers(3)
        .key_capacity(4)
        .jobs_per_turn(3)
        .build(move |_: &u64, job: u64| -> Result<(), &'static str> {
            log.lock().unwrap().push(job);
            if (job / 2) % 5 == 0 {
                Err("multiple of five")
            } else {
                Ok(())
            }
        })
        .unwrap();
    let group = d.group();
    let per_producer = common::scaled(20_000) as u64;
    let accepted_grouped = AtomicU64::new(0);
    let left = std::thread::scope(|s| {
        for producer in 0..3u64 {
            let (d, group, accepted_grouped) = (&d, &group, &accepted_grouped);
            s.spawn(move || {
                let mut rng = common::Rng::new(producer + 1);
                for seq in 0..per_producer {
                    let key = rng.below(8);
                    let job = (producer * per_producer + seq) * 2;
                    let (grouped, sent) = match rng.below(4) {
                        0 => (false, d.dispatch(key, job)),
                        1 => (true, group.try_dispatch(key, job + 1)),
                        _ => (true, group.dispatch(key, job + 1)),
                    };
                    match sent {
                        Ok(()) if grouped => {
                            accepted_grouped.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(()) => {}
                        Err(err) => assert!(err.is_closed() || err.is_full(), "{err:?}"),
                    }
                    if rng.below(16) == 0 {
                        let flushed = d.flush_key_timeout(&key, Duration::from_millis(1));
                        assert!(matches!(flushed, Ok(()) | Err(WaitError::Timeout)));
                    }
                }
            });
        }
        wait_for(|| d.stats().completed > per_producer);
        d.close_now().unwrap()
    });
    // Every grouped job was either run or handed back, and the group knows which.
    let report = group.wait().unwrap();
    let ran = ran.lock().unwrap();
    let ran_grouped: Vec<u64> = ran.iter().copied().filter(|job| job % 2 == 1).collect();
    let handed_back_grouped = left
        .iter()
        .flat_map(|(_, jobs)| jobs)
        .filter(|job| *job % 2 == 1)
        .count() as u64;
    assert_eq!(report.completed, ran_grouped.len() as u64);
    assert_eq!(report.handed_back, handed_back_grouped);
    assert_eq!(report.dispatched, report.completed + report.handed_back);
    assert_eq!(report.dispatched, accepted_grouped.load(Ordering::SeqCst));
    let failed = ran_grouped.iter().filter(|job| (*job / 2) % 5 == 0).count() as u64;
    assert_eq!((report.failed, report.panicked), (failed, 0));
    assert!(group.is_done());
}
