//! The counters of `stats()` only ever grow: a thread polling them while producers are refused
//! by full queues never sees one go back, however approximate each snapshot is.

use crate::common::{scaled, wait_for, Latch};
use crate::watchdog;
use keyed_dispatch::{Dispatcher, Stats};
use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        mpsc, Arc, Mutex,
    },
};

const PRODUCERS: u64 = 3;
/// Keys of the producers' jobs: one job each fills them (`key_capacity(0)`).
const KEYS: u64 = 5;

/// Where a slow comparison reports that it began, and what it waits for.
struct Slow {
    entered: Mutex<mpsc::Sender<()>>,
    release: Arc<Latch>,
}

/// A key whose `Eq`, when it has a [`Slow`], reports and then waits for its release: a
/// dispatch of it takes as long as the test wants.
#[derive(Clone)]
struct SlowKey {
    id: u64,
    slow: Option<Arc<Slow>>,
}

impl SlowKey {
    fn plain(id: u64) -> Self {
        SlowKey { id, slow: None }
    }
}

impl PartialEq for SlowKey {
    fn eq(&self, other: &Self) -> bool {
        if let Some(slow) = &self.slow {
            let _ = slow.entered.lock().unwrap().send(());
            slow.release.wait();
        }
        self.id == other.id
    }
}

impl Eq for SlowKey {}

impl Hash for SlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Debug for SlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlowKey({})", self.id)
    }
}

/// The first counter that went back between two snapshots, if any.
fn went_back(before: &Stats, after: &Stats) -> Option<String> {
    let counters = [
        ("dispatched", before.dispatched, after.dispatched),
        ("completed", before.completed, after.completed),
        ("refused", before.refused, after.refused),
        ("handed_back", before.handed_back, after.handed_back),
    ];
    counters
        .iter()
        .find(|(_, was, is)| is < was)
        .map(|(name, was, is)| format!("{name} went from {was} to {is}"))
}

#[test]
fn stats_counters_never_go_back_while_full_queues_refuse_dispatches() {
    let _watchdog = watchdog("counters never go back");
    let per_producer = scaled(20_000) as u64;
    let release = Latch::new();
    let held = Arc::clone(&release);
    // The first job of each key fills it, and its handler (or its queue) holds it until the
    // end, so that every later dispatch is refused by its full key.
    let d = Dispatcher::builder()
        .workers(2)
        .capacity(64)
        .key_capacity(0)
        .name("hostile-stats")
        .build(move |_: &SlowKey, _: u64| held.wait())
        .unwrap();
    for key in 0..KEYS {
        d.dispatch(SlowKey::plain(key), 0).unwrap();
    }
    let stop = AtomicBool::new(false);
    let snapshots = AtomicU64::new(0);
    let (entered_tx, entered) = mpsc::channel();
    let slow = Arc::new(Slow {
        entered: Mutex::new(entered_tx),
        release: Latch::new(),
    });
    let went = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut before = d.stats();
            while !stop.load(SeqCst) {
                let after = d.stats();
                snapshots.fetch_add(1, SeqCst);
                if let Some(back) = went_back(&before, &after) {
                    return Some(format!("{back}: {before:?} then {after:?}"));
                }
                before = after;
            }
            None
        });
        let polled = |more: u64| {
            let from = snapshots.load(SeqCst);
            wait_for(|| snapshots.load(SeqCst) >= from + more || poller.is_finished());
        };
        // Producers refused by full keys, out of step with each other.
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let d = &d;
                s.spawn(move || {
                    for n in 0..per_producer {
                        assert!(d
                            .try_dispatch(SlowKey::plain((producer + n) % KEYS), n)
                            .is_err());
                        for _ in 0..(n * 7 + producer * 13) % 64 {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().unwrap();
        }
        // One more refused dispatch, slow: the poller sees it on its way, then refused.
        let slow_key = SlowKey {
            id: 0,
            slow: Some(Arc::clone(&slow)),
        };
        let dispatching = s.spawn(|| d.try_dispatch(slow_key, 0).is_err());
        entered.recv().unwrap();
        polled(2);
        slow.release.open();
        assert!(
            dispatching.join().unwrap(),
            "the slow dispatch was accepted"
        );
        polled(2);
        stop.store(true, SeqCst);
        poller.join().unwrap()
    });
    release.open();
    assert!(went.is_none(), "{}", went.unwrap_or_default());
    let stats = d.close().stats;
    assert_eq!(
        (stats.dispatched, stats.completed),
        (KEYS, KEYS),
        "{stats:?}"
    );
    assert_eq!(stats.refused, PRODUCERS * per_producer + 1, "{stats:?}");
}
