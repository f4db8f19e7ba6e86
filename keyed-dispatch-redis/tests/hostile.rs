//! Hostile interleavings against a real redis-server: handovers undone half way, replies lost
//! after the server acted, a server gone for good, entries deleted while pending, a topic
//! created late, a member name reused after a crash.

mod common;

use common::{counter, eventually, Runs, Server, PATIENCE};
use keyed_dispatch_redis::{partition_of, Consumer, Entry, Publisher, GROUP};
use redis::Connection;
use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

/// Creates topic `t`'s partition 0 group and reads its first entry as the group's consumer
/// without acknowledging it, as an owner that crashed would have.
fn read_one_as_the_previous_owner(con: &mut Connection) {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("t:stream:0")
        .arg(GROUP)
        .arg("0")
        .query::<()>(con)
        .unwrap();
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("owner")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("t:stream:0")
        .arg(">")
        .query::<redis::Value>(con)
        .unwrap();
}

/// The first key `k0`, `k1`, ... that lands in `partition` of `partitions`.
fn key_in(partition: u32, partitions: u32) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| partition_of(k.as_bytes(), partitions) == partition)
        .unwrap()
}

/// The ids pending (delivered, not acknowledged) in topic `t`'s partition `p`.
fn pending_ids(con: &mut Connection, p: u32) -> Vec<String> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(format!("t:stream:{p}"))
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(con)
        .unwrap();
    rows.into_iter().map(|row| row.0).collect()
}

fn net_output_bytes(con: &mut Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A consumer with a two-second lease whose handler records every entry, after holding the
/// one with payload `held` until `gate`'s sender is dropped (and saying when it starts).
fn gated(
    url: &str,
    member: &str,
    runs: &Arc<Runs>,
    held: Option<(&'static str, mpsc::Receiver<()>, mpsc::Sender<()>)>,
) -> Consumer {
    let runs = Arc::clone(runs);
    let held = held.map(|(payload, gate, started)| (payload, Mutex::new((gate, started))));
    Consumer::builder(url, "t", member)
        .workers(2)
        .lease(Duration::from_secs(2))
        .start(move |entry: &Entry| -> Result<(), String> {
            if let Some((payload, gate)) = &held {
                if entry.payload() == payload.as_bytes() {
                    let gate = gate.lock().unwrap();
                    let _ = gate.1.send(());
                    let _ = gate.0.recv(); // held until the test drops the sender
                }
            }
            runs.record(entry);
            Ok(())
        })
        .unwrap()
}

/// `m2` holds all four partitions and is running the `held` entry of partition 0 when `m1`
/// joins: the spread gives 0 and 2 to `m1`. Returns once `m1` holds 2, which `m2` released
/// in the same pass that started handing 0 over (its leases are kept in partition order).
fn handover_stuck_behind_a_running_entry(
    url: &str,
    runs: &Arc<Runs>,
) -> (Consumer, Consumer, mpsc::Sender<()>) {
    let mut publisher = Publisher::create(url, "t", 4).unwrap();
    let (open, gate) = mpsc::channel();
    let (started_tx, started) = mpsc::channel();
    let m2 = gated(url, "m2", runs, Some(("held", gate, started_tx)));
    eventually("m2 to hold every partition", || m2.partitions().len() == 4);
    publisher.publish(&key_in(0, 4), b"held").unwrap();
    started.recv_timeout(PATIENCE).expect("the held entry runs");
    let m1 = gated(url, "m1", runs, None);
    eventually("m1 to take partition 2", || m1.partitions().contains(&2));
    (m1, m2, open)
}

/// The spread gives partition 0 away and back before its handover could finish: the member
/// keeps the lease, marked as draining for good, and never reads the partition again.
#[test]
fn a_partition_wanted_back_during_its_handover_is_read_again() {
    let server = Server::start();
    let url = server.url();
    let runs = Arc::new(Runs::default());
    let (m1, m2, open) = handover_stuck_behind_a_running_entry(&url, &runs);
    m1.close();
    eventually("m2 to take partition 2 back", || m2.partitions().len() == 4);
    drop(open);
    let k0 = key_in(0, 4);
    runs.wait_for(&k0, "held");
    let mut publisher = Publisher::open(&url, "t").unwrap().unwrap();
    publisher.publish(&k0, b"after").unwrap();
    runs.wait_for(&k0, "after");
    m2.close();
}

/// While partition 0 drains, its last-read id goes stale; a reader that blocks on new entries
/// after that id gets the whole backlog back at once, every time it looks.
#[test]
fn a_draining_partitions_backlog_is_not_fetched_again_and_again() {
    let server = Server::start();
    let url = server.url();
    let runs = Arc::new(Runs::default());
    let (m1, m2, open) = handover_stuck_behind_a_running_entry(&url, &runs);
    let mut publisher = Publisher::open(&url, "t").unwrap().unwrap();
    let k0 = key_in(0, 4);
    let payload = vec![b'x'; 10_000];
    let entries = 200;
    publisher
        .publish_all((0..entries).map(|_| (k0.as_str(), &payload[..])))
        .unwrap();
    let backlog = (entries * payload.len()) as u64;
    let mut con = server.connection();
    let before = net_output_bytes(&mut con);
    // A window of two of m2's control ticks, seen as its registration being renewed.
    let mut watcher = server.connection();
    let mut score = || -> f64 {
        redis::cmd("ZSCORE")
            .arg("t:members")
            .arg("m2")
            .query(&mut watcher)
            .unwrap()
    };
    for _ in 0..2 {
        let last = score();
        eventually("a heartbeat of m2", || score() != last);
    }
    let sent = net_output_bytes(&mut con) - before;
    drop(open);
    m2.close();
    m1.close();
    assert!(
        sent < 2 * backlog,
        "{sent} bytes sent in two ticks for a backlog of {backlog} the member may not read"
    );
}

/// The server runs a read of new entries (`>`), and the reply never arrives (here the server
/// drops a client whose reply is too large, as it would after a restart). Sending `>` again
/// skips those entries: they sit in the pending list while later ones of their key run.
#[test]
fn entries_whose_read_reply_was_lost_run_before_later_ones_of_their_key() {
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let runs = Arc::new(Runs::default());
    let recorded = Arc::clone(&runs);
    let (open, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel();
    let held = Mutex::new((gate, started_tx));
    // One worker and no waiting room: the reader holds the second entry it read until the
    // first is done, so the next read is one of new entries, not a blocking wait.
    let consumer = Consumer::builder(&url, "t", "m1")
        .workers(1)
        .max_pending(0)
        .batch(1)
        // Long: a lease lost on a loaded machine could run an entry twice.
        .lease(Duration::from_secs(10))
        .start(move |entry: &Entry| -> Result<(), String> {
            if entry.payload() == b"a1" {
                let held = held.lock().unwrap();
                let _ = held.1.send(());
                let _ = held.0.recv(); // held until the test drops the sender
            }
            recorded.record(entry);
            Ok(())
        })
        .unwrap();
    publisher.publish("slow", b"a1").unwrap();
    publisher.publish("slow", b"a2").unwrap();
    started.recv_timeout(PATIENCE).expect("a1 runs");
    let mut con = server.connection();
    eventually("the reader to hold a2", || {
        pending_ids(&mut con, 0).len() == 2
    });

    let limit = |con: &mut Connection, value: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("client-output-buffer-limit")
            .arg(value)
            .query::<()>(con)
            .unwrap()
    };
    limit(&mut con, "normal 65536 0 0");
    let big = vec![b'e'; 256 * 1024];
    let e1 = publisher.publish("k", &big).unwrap();
    drop(open);
    eventually("e1 to be delivered", || {
        pending_ids(&mut con, 0).contains(&e1) || !runs.of("k").is_empty()
    });
    limit(&mut con, "normal 0 0 0");
    publisher.publish("k", b"e2").unwrap();
    runs.wait_for("k", "e2");
    let ran: Vec<String> = runs
        .of("k")
        .into_iter()
        .map(|p| if p.len() > 16 { "e1".into() } else { p })
        .collect();
    assert_eq!(ran, ["e1", "e2"], "k's entries ran out of stream order");
    consumer.close();
}

/// Leaving needs the server (acknowledgements, releases, the member list); with it gone for
/// good, the leases expire on their own and the entries stay pending, so waiting for ever
/// gains nothing.
#[test]
fn close_returns_while_the_server_is_down() {
    let mut server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 4).unwrap();
    let runs = Arc::new(Runs::default());
    let consumer = gated(&url, "m1", &runs, None);
    publisher.publish("k", b"0").unwrap();
    let mut con = server.connection();
    eventually("the entry acknowledged", || {
        counter(&mut con, "t:acked") == 1
    });
    server.kill();
    let (done, closed) = mpsc::channel();
    std::thread::spawn(move || {
        consumer.close();
        let _ = done.send(());
    });
    assert!(
        closed.recv_timeout(PATIENCE).is_ok(),
        "close() did not return with the server down"
    );
}

/// A pending entry deleted from its stream comes back from a replay without fields: it is
/// dead-lettered, and its partition goes on.
#[test]
fn a_pending_entry_deleted_from_the_stream_is_dead_lettered_and_its_partition_goes_on() {
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let gone = publisher.publish("k", b"gone").unwrap();
    publisher.publish("k", b"kept").unwrap();
    let mut con = server.connection();
    // A previous owner read the first entry and crashed; then the entry was deleted.
    read_one_as_the_previous_owner(&mut con);
    redis::cmd("XDEL")
        .arg("t:stream:0")
        .arg(&gone)
        .query::<()>(&mut con)
        .unwrap();
    let runs = Arc::new(Runs::default());
    let consumer = gated(&url, "m1", &runs, None);
    runs.wait_for("k", "kept");
    eventually("both acknowledged", || counter(&mut con, "t:acked") == 2);
    consumer.close();
    assert_eq!(runs.of("k"), ["kept"]);
    assert!(pending_ids(&mut con, 0).is_empty());
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("t:dead")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    assert_eq!(dead.ids[0].get::<String>("id").unwrap(), gone);
}

/// A member started before the topic exists holds nothing, and consumes it once created.
#[test]
fn a_consumer_started_before_its_topic_exists_consumes_it_once_created() {
    let server = Server::start();
    let url = server.url();
    let runs = Arc::new(Runs::default());
    let consumer = gated(&url, "m1", &runs, None);
    let mut con = server.connection();
    eventually("the member registered", || {
        redis::cmd("ZCARD")
            .arg("t:members")
            .query::<u64>(&mut con)
            .unwrap()
            == 1
    });
    assert!(consumer.partitions().is_empty());
    let mut publisher = Publisher::create(&url, "t", 4).unwrap();
    publisher.publish("k", b"0").unwrap();
    runs.wait_for("k", "0");
    consumer.close();
}

/// A member that reuses a crashed member's name does not adopt its lease: it waits for the
/// lease to expire, takes a new epoch, and replays the pending entry before the next one.
#[test]
fn a_reused_member_name_waits_out_the_old_lease_and_replays_in_order() {
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    publisher.publish("k", b"e1").unwrap();
    publisher.publish("k", b"e2").unwrap();
    let mut con = server.connection();
    // The crashed incarnation: lease m1/5, with e1 read and not acknowledged.
    read_one_as_the_previous_owner(&mut con);
    redis::cmd("SET")
        .arg("t:epoch:0")
        .arg(5)
        .query::<()>(&mut con)
        .unwrap();
    redis::cmd("SET")
        .arg("t:lease:0")
        .arg("m1/5")
        .arg("PX")
        .arg(1500)
        .query::<()>(&mut con)
        .unwrap();
    let runs = Arc::new(Runs::default());
    let recorded = Arc::clone(&runs);
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&tokens);
    let consumer = Consumer::builder(&url, "t", "m1")
        .lease(Duration::from_secs(2))
        .start(move |entry: &Entry| -> Result<(), String> {
            seen.lock().unwrap().push(entry.lease_token().to_string());
            recorded.record(entry);
            Ok(())
        })
        .unwrap();
    runs.wait_for("k", "e2");
    eventually("both acknowledged", || counter(&mut con, "t:acked") == 2);
    consumer.close();
    assert_eq!(runs.of("k"), ["e1", "e2"]);
    assert_eq!(*tokens.lock().unwrap(), ["m1/6", "m1/6"]);
}

/// A restart of a server with its data (append-only file) while the member is idle: it
/// reconnects, keeps its partitions, and runs what comes next once, in order.
#[test]
fn a_member_goes_on_after_the_server_restarts_with_its_data() {
    let mut server = Server::start_with_aof();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 4).unwrap();
    let runs = Arc::new(Runs::default());
    let consumer = gated(&url, "m1", &runs, None);
    let keys: Vec<String> = (0..20).map(|k| format!("k{k}")).collect();
    let publish = |publisher: &mut Publisher, seq: &str| {
        publisher
            .publish_all(keys.iter().map(|k| (k.as_str(), seq.as_bytes())))
            .unwrap()
    };
    publish(&mut publisher, "0");
    let mut con = server.connection();
    eventually("the first entries acknowledged", || {
        counter(&mut con, "t:acked") == 20
    });
    server.restart();
    let mut publisher = Publisher::open(&url, "t").unwrap().unwrap();
    publish(&mut publisher, "1");
    let mut con = server.connection();
    eventually("the second entries acknowledged", || {
        counter(&mut con, "t:acked") == 40
    });
    consumer.close();
    for key in &keys {
        assert_eq!(runs.of(key), ["0", "1"], "{key}");
    }
}
