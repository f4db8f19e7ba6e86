//! Jobs of one key run one at a time in dispatch order; different keys run in parallel, and a
//! slow key does not hold up the others.

mod common;

use common::{wait_for, Job, Latch, Recorder, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::sync::{mpsc, Arc, Barrier, Mutex};

#[test]
fn jobs_of_a_key_run_in_dispatch_order_across_producers() {
    let _watchdog = Watchdog::new("order", HANG);
    let recorder = Recorder::new();
    let rec = Arc::clone(&recorder);
    let d = Dispatcher::builder()
        .workers(4)
        .jobs_per_turn(3)
        .build(move |key: &u64, job: Job| rec.record(key, job))
        .unwrap();
    let per_producer = common::scaled(20_000) as u64;
    let accepted: Vec<Job> = std::thread::scope(|s| {
        let producers: Vec<_> = (0..4)
            .map(|producer| {
                let d = &d;
                s.spawn(move || {
                    let mut sent = Vec::new();
                    for seq in 0..per_producer {
                        let job = Job {
                            producer,
                            key: seq % 17,
                            seq,
                        };
                        d.dispatch(job.key, job).unwrap();
                        sent.push(job);
                    }
                    sent
                })
            })
            .collect();
        producers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect()
    });
    let report = d.close();
    assert_eq!(report.stats.completed, 4 * per_producer);
    assert_eq!(
        report.stats.panicked, 0,
        "a job saw another of its key running"
    );
    recorder.check(&accepted);
}

#[test]
fn a_job_dispatched_after_another_returned_starts_after_it_finished() {
    let _watchdog = Watchdog::new("happens-after", HANG);
    // One producer, one key, strictly sequential: each job sees the previous one's effect.
    let last = Arc::new(Mutex::new(None::<u64>));
    let seen = Arc::clone(&last);
    let d = Dispatcher::builder()
        .workers(4)
        .jobs_per_turn(1)
        .build(move |_: &u8, n: u64| {
            let mut last = seen.lock().unwrap();
            assert_eq!(*last, n.checked_sub(1), "job {n} overtook");
            *last = Some(n);
        })
        .unwrap();
    for n in 0..common::scaled(50_000) as u64 {
        d.dispatch(0, n).unwrap();
    }
    assert_eq!(d.close().stats.panicked, 0);
}

#[test]
fn different_keys_run_in_parallel() {
    let _watchdog = Watchdog::new("parallel", HANG);
    // Each job waits at the barrier until the other key's job has started too: this only
    // completes if the two keys run at the same time.
    let barrier = Arc::new(Barrier::new(2));
    let b = Arc::clone(&barrier);
    let d = Dispatcher::builder()
        .workers(2)
        .build(move |_: &u8, _: ()| {
            b.wait();
        })
        .unwrap();
    d.dispatch(1, ()).unwrap();
    d.dispatch(2, ()).unwrap();
    let report = d.close();
    assert_eq!(report.stats.completed, 2);
}

#[test]
fn a_slow_key_does_not_hold_up_other_keys() {
    let _watchdog = Watchdog::new("no head-of-line", HANG);
    let latch = Latch::new();
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    let held = Arc::clone(&latch);
    let d = Dispatcher::builder()
        .workers(2)
        .build(move |key: &u64, n: u64| {
            if *key == 0 {
                held.wait();
            } else {
                done_tx.lock().unwrap().send(n).unwrap();
            }
        })
        .unwrap();
    d.dispatch(0, 0).unwrap();
    d.dispatch(0, 1).unwrap();
    // Key 0 holds one thread until the latch opens; all other keys' jobs finish meanwhile, on
    // the other thread, whichever key the hashing would have put them with.
    let others = 1_000;
    for n in 0..others {
        d.dispatch(1 + n % 100, n).unwrap();
    }
    let mut finished: Vec<u64> = (0..others).map(|_| done_rx.recv().unwrap()).collect();
    finished.sort_unstable();
    assert_eq!(finished, (0..others).collect::<Vec<_>>());
    // Each job reported from inside its handler; `completed` counts a turn's jobs once the
    // turn ends.
    wait_for(|| d.stats().completed >= others);
    assert_eq!(d.stats().completed, others);
    latch.open();
    assert_eq!(d.close().stats.completed, others + 2);
}
