//! quickcheck: whatever the entries, the number of members and the sizes, every entry runs
//! exactly once (no crash here, so no repeats) and each key's entries run in stream order.

mod common;

use common::{Server, PATIENCE};
use keyed_dispatch_redis::{Consumer, Entry, Publisher};
use quickcheck::{Arbitrary, Gen, QuickCheck};
use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

#[derive(Debug, Clone)]
struct Case {
    /// Each entry's key, by index; payloads number each key's entries from 0.
    keys: Vec<u8>,
    members: usize,
    partitions: u32,
    batch: usize,
    max_pending: usize,
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Case {
        let len = usize::arbitrary(g) % 300;
        let spread = u8::arbitrary(g) % 20 + 1;
        Case {
            keys: (0..len).map(|_| u8::arbitrary(g) % spread).collect(),
            members: usize::arbitrary(g) % 3 + 1,
            partitions: u32::arbitrary(g) % 8 + 1,
            batch: usize::arbitrary(g) % 20 + 1,
            max_pending: usize::arbitrary(g) % 30 + 1,
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
        let case = self.clone();
        Box::new(self.keys.shrink().map(move |keys| Case {
            keys,
            ..case.clone()
        }))
    }
}

/// The URL of the test's server, one for every case; each case has a topic of its own.
static URL: OnceLock<String> = OnceLock::new();

fn runs_in_order_exactly_once(case: Case) -> bool {
    static TOPIC: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let topic = format!(
        "q{}",
        TOPIC.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let url = URL.get().expect("the test's server");
    let mut next: HashMap<u8, u64> = HashMap::new();
    let entries: Vec<(String, String)> = case
        .keys
        .iter()
        .map(|k| {
            let seq = next.entry(*k).or_default();
            *seq += 1;
            (format!("k{k}"), (*seq - 1).to_string())
        })
        .collect();
    let mut publisher = Publisher::create(url, &topic, case.partitions).unwrap();
    let runs = Arc::new((
        Mutex::new(HashMap::<String, Vec<u64>>::new()),
        Condvar::new(),
    ));
    let consumers: Vec<Consumer> = (0..case.members)
        .map(|m| {
            let runs = Arc::clone(&runs);
            Consumer::builder(url, &topic, &format!("m{m}"))
                .workers(2)
                // Long enough that no renewal comes too late on a loaded machine (a lost
                // lease may re-run an entry); its tick, half a second, paces the spread.
                .lease(Duration::from_secs(3))
                .batch(case.batch)
                .max_pending(case.max_pending)
                .start(move |entry: &Entry| -> Result<(), String> {
                    let seq = std::str::from_utf8(entry.payload())
                        .unwrap()
                        .parse()
                        .unwrap();
                    runs.0
                        .lock()
                        .unwrap()
                        .entry(entry.key().to_string())
                        .or_default()
                        .push(seq);
                    runs.1.notify_all();
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    // Half before the members settle, half after: both readings of a partition are covered.
    let (early, late) = entries.split_at(entries.len() / 2);
    publisher
        .publish_all(early.iter().map(|(k, p)| (k.as_str(), p.as_bytes())))
        .unwrap();
    publisher
        .publish_all(late.iter().map(|(k, p)| (k.as_str(), p.as_bytes())))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut ran = runs.0.lock().unwrap();
    while ran.values().map(Vec::len).sum::<usize>() < entries.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out: {case:?}");
        ran = runs
            .1
            .wait_timeout(ran, left.min(Duration::from_secs(1)))
            .unwrap()
            .0;
    }
    drop(ran);
    drop(consumers);
    let ran = runs.0.lock().unwrap();
    next.iter()
        .all(|(k, count)| ran[&format!("k{k}")] == (0..*count).collect::<Vec<_>>())
        && ran.values().map(Vec::len).sum::<usize>() == entries.len()
}

#[test]
fn quickcheck_every_entry_runs_once_in_key_order() {
    let server = Server::start();
    URL.set(server.url()).unwrap();
    QuickCheck::new()
        .tests(30)
        .quickcheck(runs_in_order_exactly_once as fn(Case) -> bool);
}
