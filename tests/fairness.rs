//! Fair turns: a key with a deep queue yields its thread after `jobs_per_turn` jobs, so a cold
//! key's job runs while the hot key still has thousands queued.

mod common;

use common::{Latch, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, Arc, Mutex,
};

#[test]
fn a_cold_key_runs_while_a_hot_key_still_has_thousands_queued() {
    let _watchdog = Watchdog::new("fairness", HANG);
    let latch = Latch::new();
    let hot_done = Arc::new(AtomicU64::new(0));
    let (cold_ran, cold) = mpsc::channel();
    let cold_ran = Mutex::new(cold_ran);
    let (held, done) = (Arc::clone(&latch), Arc::clone(&hot_done));
    let d = Dispatcher::builder()
        .workers(1)
        .jobs_per_turn(64)
        .build(move |key: &&str, n: u64| {
            if *key == "hot" {
                if n == 0 {
                    held.wait();
                }
                done.fetch_add(1, Ordering::SeqCst);
            } else {
                cold_ran
                    .lock()
                    .unwrap()
                    .send(done.load(Ordering::SeqCst))
                    .unwrap();
            }
        })
        .unwrap();
    let hot_jobs = 10_000;
    for n in 0..hot_jobs {
        d.dispatch("hot", n).unwrap();
    }
    d.dispatch("cold", 0).unwrap();
    latch.open();
    let hot_before_cold = cold.recv().unwrap();
    // The hot key finished at most the turn it was in (its first job began it) and one more.
    assert!(
        hot_before_cold <= 2 * 64,
        "cold key waited for {hot_before_cold} hot jobs"
    );
    assert!(hot_jobs - hot_before_cold > 9_000);
    assert_eq!(d.close().stats.completed, hot_jobs + 1);
}
