//! The consumer against a real redis-server: order, no loss, handovers, fencing, dead
//! letters, backpressure and bad input.

mod common;

use common::{counter, eventually, pending, Server, PATIENCE};
use keyed_dispatch_redis::{
    partition_of, Consumer, Entry, Error, Failure, Publisher, RetryPolicy, Topic,
};
use redis::Connection;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

/// Each key's payloads in the order its handler ran them.
#[derive(Default)]
struct Runs {
    by_key: Mutex<HashMap<String, Vec<u64>>>,
    changed: Condvar,
}

impl Runs {
    fn record(&self, entry: &Entry) {
        let seq = std::str::from_utf8(entry.payload())
            .unwrap()
            .parse()
            .unwrap();
        let mut runs = self.by_key.lock().unwrap();
        runs.entry(entry.key().to_string()).or_default().push(seq);
        self.changed.notify_all();
    }

    fn total(&self) -> usize {
        self.by_key.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Waits until `done` holds of the runs, or panics after `PATIENCE`.
    fn wait_until(&self, what: &str, done: impl Fn(&HashMap<String, Vec<u64>>) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut runs = self.by_key.lock().unwrap();
        while !done(&runs) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            runs = self.changed.wait_timeout(runs, left).unwrap().0;
        }
    }
}

fn publish(url: &str, topic: &str, keys: usize, jobs: usize) {
    let mut publisher = Publisher::create(url, topic, 16).unwrap();
    let entries: Vec<(String, String)> = (0..jobs)
        .map(|j| (format!("key-{}", j % keys), (j / keys).to_string()))
        .collect();
    publisher
        .publish_all(entries.iter().map(|(k, p)| (k.as_str(), p.as_bytes())))
        .unwrap();
}

fn assert_in_order(runs: &HashMap<String, Vec<u64>>, keys: usize, jobs: usize) {
    assert_eq!(runs.len(), keys);
    for (key, seqs) in runs {
        let k: usize = key.strip_prefix("key-").unwrap().parse().unwrap();
        let expected: Vec<u64> = (0..jobs)
            .filter(|j| j % keys == k)
            .map(|j| (j / keys) as u64)
            .collect();
        assert_eq!(*seqs, expected, "{key} ran out of order or more than once");
    }
}

fn consumer(url: &str, topic: &str, member: &str, runs: &Arc<Runs>) -> Consumer {
    let runs = Arc::clone(runs);
    Consumer::builder(url, topic, member)
        .workers(4)
        // Long enough that no renewal comes too late on a loaded machine: the tests that
        // count runs must see no lease lost.
        .lease(Duration::from_secs(10))
        .start(move |entry: &Entry| -> Result<(), String> {
            runs.record(entry);
            Ok(())
        })
        .unwrap()
}

#[test]
fn every_entry_runs_once_in_key_order_and_is_acknowledged() {
    let server = Server::start();
    let (keys, jobs) = (50, 5_000);
    publish(&server.url(), "t", keys, jobs);
    let runs = Arc::new(Runs::default());
    let consumer = consumer(&server.url(), "t", "m1", &runs);
    let mut con = server.connection();
    eventually("every entry acknowledged", || {
        counter(&mut con, "t:acked") == jobs as u64
    });
    assert_eq!(consumer.partitions(), (0..16).collect::<Vec<_>>());
    consumer.close();
    assert_in_order(&runs.by_key.lock().unwrap(), keys, jobs);
    for p in 0..16 {
        assert_eq!(pending(&mut con, p), 0, "partition {p} has pending entries");
        let lease: Option<String> = redis::cmd("GET")
            .arg(format!("t:lease:{p}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(lease, None, "a leaving member releases its leases");
    }
}

#[test]
fn members_spread_the_partitions_and_a_leaving_one_hands_over_without_repeats() {
    let server = Server::start();
    let url = server.url();
    let (keys, jobs) = (40, 4_000);
    let runs = Arc::new(Runs::default());
    let first = consumer(&url, "t", "a", &runs);
    let second = consumer(&url, "t", "b", &runs);
    publish(&url, "t", keys, jobs / 2);
    eventually("the partitions spread evenly", || {
        first.partitions().len() == 8 && second.partitions().len() == 8
    });
    let (a, b) = (first.partitions(), second.partitions());
    assert!(
        a.iter().all(|p| !b.contains(p)),
        "a partition held twice: {a:?} {b:?}"
    );
    runs.wait_until("half the jobs", |runs| {
        runs.values().map(Vec::len).sum::<usize>() >= jobs / 4
    });
    first.close();
    eventually("the second member holds everything", || {
        second.partitions().len() == 16
    });
    // The rest of the jobs, published after the handover, keep each key's order.
    let mut publisher = Publisher::open(&url, "t").unwrap().unwrap();
    let rest: Vec<(String, String)> = (jobs / 2..jobs)
        .map(|j| (format!("key-{}", j % keys), (j / keys).to_string()))
        .collect();
    publisher
        .publish_all(rest.iter().map(|(k, p)| (k.as_str(), p.as_bytes())))
        .unwrap();
    runs.wait_until("every job", |runs| {
        runs.values().map(Vec::len).sum::<usize>() >= jobs
    });
    second.close();
    assert_eq!(runs.total(), jobs, "a graceful handover repeats nothing");
    assert_in_order(&runs.by_key.lock().unwrap(), keys, jobs);
}

#[test]
fn a_member_whose_lease_is_taken_starts_nothing_more_of_that_partition() {
    let server = Server::start();
    let url = server.url();
    let runs = Arc::new(Runs::default());
    let consumer = consumer(&url, "t", "m1", &runs);
    let victim = partition_of(b"key-0", 16);
    let in_victim = |key: &String| partition_of(key.as_bytes(), 16) == victim;
    let keys: Vec<String> = (0..64).map(|k| format!("key-{k}")).collect();
    let mut publisher = Publisher::create(&url, "t", 16).unwrap();
    publisher
        .publish_all(keys.iter().map(|k| (k.as_str(), &b"0"[..])))
        .unwrap();
    let mut con = server.connection();
    // Acknowledged, not only run: an acknowledgement refused for want of the lease would make
    // the entry run again, as it may after a real lease loss.
    eventually("the first jobs", || {
        counter(&mut con, "t:acked") == keys.len() as u64
    });

    // Someone else holds the partition now, as after this member paused past its lease.
    let lease = format!("t:lease:{victim}");
    redis::cmd("SET")
        .arg(&lease)
        .arg("intruder/1000")
        .query::<()>(&mut con)
        .unwrap();
    eventually("the member to notice", || {
        !consumer.partitions().contains(&victim)
    });
    publisher
        .publish_all(keys.iter().map(|k| (k.as_str(), &b"1"[..])))
        .unwrap();
    runs.wait_until("the other partitions' second jobs", |runs| {
        keys.iter()
            .filter(|k| !in_victim(k))
            .all(|k| runs[k].len() == 2)
    });
    let second_runs_in_victim = |runs: &HashMap<String, Vec<u64>>| {
        keys.iter()
            .filter(|k| in_victim(k))
            .filter(|k| runs[*k].len() == 2)
            .count()
    };
    assert_eq!(
        second_runs_in_victim(&runs.by_key.lock().unwrap()),
        0,
        "ran without the lease"
    );

    // The intruder leaves: the member takes the partition back in a new epoch and runs it.
    redis::cmd("DEL").arg(&lease).query::<()>(&mut con).unwrap();
    let victims = keys.iter().filter(|k| in_victim(k)).count();
    runs.wait_until("the partition's second jobs", |runs| {
        second_runs_in_victim(runs) == victims
    });
    let holder: String = redis::cmd("GET").arg(&lease).query(&mut con).unwrap();
    let epoch: u64 = holder.strip_prefix("m1/").unwrap().parse().unwrap();
    assert!(epoch >= 2, "taken again in a new epoch: {holder}");
    consumer.close();
    assert_in_order(&runs.by_key.lock().unwrap(), 64, 128);
}

#[test]
fn entries_that_cannot_run_are_dead_lettered_and_the_partition_goes_on() {
    let server = Server::start();
    let url = server.url();
    let key = "key-0";
    let stream = Topic::new("t").stream(partition_of(key.as_bytes(), 16));
    let mut publisher = Publisher::create(&url, "t", 16).unwrap();
    publisher.publish(key, b"0").unwrap();
    publisher.publish(key, b"not a number").unwrap();
    publisher.publish(key, b"panic").unwrap();
    let mut con = server.connection();
    redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("no-key")
        .arg("x")
        .query::<String>(&mut con)
        .unwrap();
    publisher.publish(key, b"1").unwrap();
    let runs = Arc::new(Runs::default());
    let recorded = Arc::clone(&runs);
    let consumer = Consumer::builder(&url, "t", "m1")
        .workers(2)
        .retry(RetryPolicy::exponential(Duration::ZERO, Duration::ZERO).max_attempts(2))
        .start(move |entry: &Entry| -> Result<(), Failure<String>> {
            match std::str::from_utf8(entry.payload()).unwrap() {
                "panic" => panic!("a bug in the handler"),
                payload if payload.parse::<u64>().is_err() => {
                    Err(Failure::permanent(format!("{payload:?} does not decode")))
                }
                _ => {
                    recorded.record(entry);
                    Ok(())
                }
            }
        })
        .unwrap();
    runs.wait_until("the entries after the bad ones", |runs| {
        runs.get(key).map_or(0, Vec::len) == 2
    });
    eventually("every entry acknowledged", || {
        counter(&mut con, "t:acked") == 5
    });
    consumer.close();
    assert_eq!(runs.by_key.lock().unwrap()[key], [0, 1]);
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("t:dead")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let errors: Vec<String> = dead
        .ids
        .iter()
        .map(|e| e.get::<String>("error").unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("does not decode")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("panicked: a bug in the handler")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("no key")), "{errors:?}");
}

#[test]
fn a_retried_entry_keeps_its_keys_later_entries_behind_it() {
    let server = Server::start();
    let url = server.url();
    publish(&url, "t", 4, 400);
    let runs = Arc::new(Runs::default());
    let recorded = Arc::clone(&runs);
    // Attempts so far, per entry (ids are per partition).
    let attempts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let attempted = Arc::clone(&attempts);
    let consumer = Consumer::builder(&url, "t", "m1")
        .workers(4)
        .retry(
            RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(5))
                .max_attempts(10),
        )
        .start(move |entry: &Entry| -> Result<(), String> {
            // Every tenth entry fails twice before it succeeds.
            let seq: u64 = std::str::from_utf8(entry.payload())
                .unwrap()
                .parse()
                .unwrap();
            let mut attempts = attempted.lock().unwrap();
            let attempt = attempts
                .entry(format!("{}/{}", entry.partition(), entry.id()))
                .or_default();
            *attempt += 1;
            if seq % 10 == 3 && *attempt <= 2 {
                return Err("try again".into());
            }
            drop(attempts);
            recorded.record(entry);
            Ok(())
        })
        .unwrap();
    runs.wait_until("every job", |runs| {
        runs.values().map(Vec::len).sum::<usize>() == 400
    });
    consumer.close();
    assert_in_order(&runs.by_key.lock().unwrap(), 4, 400);
    let attempts = attempts.lock().unwrap();
    assert_eq!(attempts.len(), 400);
    assert_eq!(
        attempts.values().sum::<u32>(),
        400 + 40 * 2,
        "each tenth failed twice"
    );
}

#[test]
fn a_full_dispatcher_stops_the_reads() {
    let server = Server::start();
    let url = server.url();
    let (max_pending, batch) = (100, 10);
    publish(&url, "t", 1_000, 2_000);
    let (open, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let started = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&started);
    let consumer = Consumer::builder(&url, "t", "m1")
        .workers(2)
        .batch(batch)
        .max_pending(max_pending)
        .start(move |_: &Entry| -> Result<(), String> {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = gate.lock().unwrap().recv(); // held until the test opens the gate
            Ok(())
        })
        .unwrap();
    eventually("the dispatcher to fill", || {
        consumer.stats().queued >= max_pending - 2 // two running on the workers
    });
    let mut con = server.connection();
    let held: u64 = (0..16).map(|p| pending(&mut con, p)).sum();
    assert!(
        held <= (max_pending + batch) as u64,
        "read {held} entries while at most {max_pending} may wait (and one batch in hand)"
    );
    for _ in 0..2_000 {
        open.send(()).unwrap();
    }
    eventually("every entry acknowledged", || {
        counter(&mut con, "t:acked") == 2_000
    });
    consumer.close();
    assert_eq!(started.load(Ordering::SeqCst), 2_000);
}

#[test]
fn bad_input_gives_clear_errors() {
    let unreachable = "redis://127.0.0.1:1/";
    let error = Consumer::builder(unreachable, "t", "m1")
        .start(|_: &Entry| -> Result<(), String> { Ok(()) })
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(error.to_string().contains(unreachable), "{error}");
    assert!(matches!(
        Publisher::create(unreachable, "t", 16),
        Err(Error::Connect { .. })
    ));

    let server = Server::start();
    let url = server.url();
    assert!(matches!(
        Publisher::create(&url, "t", 0),
        Err(Error::BadPartitions { .. })
    ));
    Publisher::create(&url, "t", 16).unwrap();
    assert!(matches!(
        Publisher::create(&url, "t", 8),
        Err(Error::PartitionsMismatch {
            stored: 16,
            asked: 8,
            ..
        })
    ));
    assert!(Publisher::open(&url, "absent").unwrap().is_none());
}

#[test]
fn a_stream_key_of_the_wrong_type_is_an_error_and_blocks_no_other_partition() {
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 16).unwrap();
    let bad = partition_of(b"key-0", 16);
    let mut con = server.connection();
    redis::cmd("SET")
        .arg(format!("t:stream:{bad}"))
        .arg("not a stream")
        .query::<()>(&mut con)
        .unwrap();
    let error = publisher.publish("key-0", b"0").unwrap_err();
    assert!(
        matches!(&error, Error::WrongType { key } if key == &format!("t:stream:{bad}")),
        "{error}"
    );
    let keys: Vec<String> = (1..200)
        .map(|k| format!("key-{k}"))
        .filter(|k| partition_of(k.as_bytes(), 16) != bad)
        .collect();
    publisher
        .publish_all(keys.iter().map(|k| (k.as_str(), &b"0"[..])))
        .unwrap();
    let runs = Arc::new(Runs::default());
    let consumer = consumer(&url, "t", "m1", &runs);
    runs.wait_until("every other partition's entries", |runs| {
        runs.len() == keys.len()
    });
    assert!(!consumer.partitions().contains(&bad));
    consumer.close();
}

#[test]
fn trimming_removes_acknowledged_entries_only_when_asked() {
    let server = Server::start();
    let url = server.url();
    let mut con = server.connection();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let payloads: Vec<String> = (0..1_000).map(|n| n.to_string()).collect();
    let publish = |publisher: &mut Publisher| {
        publisher
            .publish_all(payloads.iter().map(|p| ("k", p.as_bytes())))
            .unwrap()
    };
    publish(&mut publisher);
    let xlen =
        |con: &mut Connection| -> u64 { redis::cmd("XLEN").arg("t:stream:0").query(con).unwrap() };
    // Without trimming, the stream stays the full record.
    let runs = Arc::new(Runs::default());
    let first = consumer(&url, "t", "m1", &runs);
    eventually("the first thousand acknowledged", || {
        counter(&mut con, "t:acked") == 1_000
    });
    first.close();
    assert_eq!(xlen(&mut con), 1_000);
    // With it, the acknowledged entries go, and what comes next is still read.
    let recorded = Arc::clone(&runs);
    let trimming = Consumer::builder(&url, "t", "m2")
        .trim(true)
        .start(move |entry: &Entry| -> Result<(), String> {
            recorded.record(entry);
            Ok(())
        })
        .unwrap();
    publish(&mut publisher);
    eventually("the second thousand acknowledged", || {
        counter(&mut con, "t:acked") == 2_000
    });
    eventually("the acknowledged entries trimmed", || xlen(&mut con) < 200);
    publisher.publish("k", b"2000").unwrap();
    runs.wait_until("the entry after the trim", |runs| runs["k"].len() == 2_001);
    trimming.close();
}
