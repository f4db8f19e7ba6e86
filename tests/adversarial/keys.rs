//! A hot key beside a million cold keys: the hot key keeps each producer's order while every
//! cold key runs once, and every key is evicted.

use crate::{sized, watchdog, Faults};
use keyed_dispatch::Dispatcher;
use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst},
    Arc,
};

const HOT: u64 = u64::MAX;

#[derive(Debug)]
enum Heat {
    Hot { producer: usize, seq: u64 },
    Cold,
}

#[test]
fn hot_key_beside_a_million_cold_keys_keeps_order_and_evicts_every_key() {
    let _watchdog = watchdog("hot and cold");
    const PRODUCERS: usize = 2;
    // Half the jobs go to one hot key, the other half to as many keys, each seen once.
    let cold = sized(1_000_000) as u64;
    let per_producer = cold / PRODUCERS as u64;
    let cold_ran: Arc<Vec<AtomicU8>> = Arc::new((0..cold).map(|_| AtomicU8::new(0)).collect());
    let hot_next: Arc<Vec<AtomicU64>> =
        Arc::new((0..PRODUCERS).map(|_| AtomicU64::new(0)).collect());
    let hot_busy = Arc::new(AtomicBool::new(false));
    let faults = Faults::new();
    let (c, h, busy, f) = (
        Arc::clone(&cold_ran),
        Arc::clone(&hot_next),
        Arc::clone(&hot_busy),
        Arc::clone(&faults),
    );
    let d = Dispatcher::builder()
        .workers(2)
        // The hot key's producers block on it while the cold keys stream past.
        .key_capacity(256)
        .build(move |key: &u64, job: Heat| match job {
            Heat::Hot { producer, seq } => {
                if *key != HOT || busy.swap(true, SeqCst) {
                    f.note(|| format!("hot job on key {key}, or two hot jobs at once"));
                }
                let expected = h[producer].swap(seq + 1, SeqCst);
                if expected != seq {
                    f.note(|| {
                        format!("hot key: producer {producer} ran {seq}, expected {expected}")
                    });
                }
                busy.store(false, SeqCst);
            }
            Heat::Cold => {
                if c[*key as usize].fetch_add(1, SeqCst) != 0 {
                    f.note(|| format!("cold key {key} ran twice"));
                }
            }
        })
        .unwrap();
    std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let d = &d;
            s.spawn(move || {
                let first_cold = producer as u64 * per_producer;
                for seq in 0..per_producer {
                    d.dispatch(HOT, Heat::Hot { producer, seq }).unwrap();
                    d.dispatch(first_cold + seq, Heat::Cold).unwrap();
                }
            });
        }
    });
    d.wait_idle().unwrap();
    let stats = d.stats();
    assert_eq!(stats.keys, 0, "keys held after wait_idle");
    let total = 2 * PRODUCERS as u64 * per_producer;
    assert_eq!((stats.dispatched, stats.completed), (total, total));
    assert_eq!((stats.panicked, stats.queued, stats.running), (0, 0, 0));
    faults.check();
    for (producer, next) in hot_next.iter().enumerate() {
        assert_eq!(
            next.load(SeqCst),
            per_producer,
            "hot jobs of producer {producer}"
        );
    }
    let cold_total = PRODUCERS as u64 * per_producer;
    let missing = cold_ran[..cold_total as usize]
        .iter()
        .filter(|ran| ran.load(SeqCst) != 1)
        .count();
    assert_eq!(missing, 0, "cold keys that did not run exactly once");
    assert_eq!(d.close().stats.keys, 0);
}
