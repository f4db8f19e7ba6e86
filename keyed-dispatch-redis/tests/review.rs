//! Failures the server reports without going away (a busy server, a key of the wrong type),
//! hooks that panic, and settings the consumer cannot work with.

mod common;

use common::{eventually, pending, Runs, Server, PATIENCE};
use keyed_dispatch_redis::{Consumer, Entry, Failure, Publisher};
use log::{Level, LevelFilter, Log, Metadata, Record};
use redis::{Connection, Value};
use std::{
    fmt,
    sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// This crate's warnings and errors with the name of the thread that logged them: what a
/// consumer's threads report is otherwise invisible to its user.
struct Capture {
    records: Mutex<Vec<(String, String)>>,
    changed: Condvar,
}

static CAPTURE: Capture = Capture {
    records: Mutex::new(Vec::new()),
    changed: Condvar::new(),
};

impl Capture {
    fn records(&self) -> MutexGuard<'_, Vec<(String, String)>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn && metadata.target().starts_with("keyed_dispatch_redis")
    }

    fn log(&self, record: &Record) {
        // Other records are never formatted, so no handler error is shown behind a test's back.
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = thread::current().name().unwrap_or_default().to_string();
        let message = record.args().to_string();
        self.records().push((thread, message));
        self.changed.notify_all();
    }

    fn flush(&self) {}
}

/// Installs the capture once per test binary.
fn capture_logs() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}

/// Waits until thread `thread` logged a record containing `needle`, or panics after
/// `PATIENCE`.
fn wait_logged(thread: &str, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut records = CAPTURE.records();
    while !records
        .iter()
        .any(|(t, m)| t == thread && m.contains(needle))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {thread} to log {needle:?}"
        );
        records = CAPTURE
            .changed
            .wait_timeout(records, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// A consumer of topic `t` with one worker and a ten-second lease (long: a lease lost on a
/// loaded machine could run an entry twice) that records every entry,
/// after holding the one with payload `x` until `gate`'s sender is dropped.
fn gated(
    url: &str,
    member: &str,
    runs: &Arc<Runs>,
    gate: Option<(mpsc::Receiver<()>, mpsc::Sender<()>)>,
) -> Consumer {
    let runs = Arc::clone(runs);
    let gate = gate.map(Mutex::new);
    Consumer::builder(url, "t", member)
        .workers(1)
        .lease(Duration::from_secs(10))
        .start(move |entry: &Entry| -> Result<(), String> {
            if let Some(gate) = &gate {
                if entry.payload() == b"x" {
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

/// A script that keeps the server busy for a moment (a few hundred milliseconds past the
/// busy threshold) is not a crash, a pause or a lease running out: the acknowledgement it
/// refused must still be written, and a graceful handover must not run the entry again.
#[test]
fn an_acknowledgement_refused_by_a_busy_server_is_not_run_again_after_a_handover() {
    capture_logs();
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let runs = Arc::new(Runs::default());
    let (open, gate) = mpsc::channel();
    let (started_tx, started) = mpsc::channel();
    let m1 = gated(&url, "busy-m1", &runs, Some((gate, started_tx)));
    publisher.publish("k", b"x").unwrap();
    started.recv_timeout(PATIENCE).expect("x runs");

    let mut con = server.connection();
    let threshold = |con: &mut Connection, ms: u64| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg(ms)
            .query::<()>(con)
            .unwrap()
    };
    threshold(&mut con, 10);
    let mut busy_con = server.connection();
    let busy = thread::spawn(move || {
        // Ends with an error once killed.
        let _ = redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query::<Value>(&mut busy_con);
    });
    eventually("the server to answer BUSY", || {
        matches!(
            redis::cmd("PING").query::<String>(&mut con),
            Err(e) if e.code() == Some("BUSY")
        )
    });
    drop(open);
    // The acknowledgement was tried while the server was busy.
    wait_logged("busy-m1-acker", "BUSY");
    eventually("the busy script to be killed", || {
        redis::cmd("SCRIPT")
            .arg("KILL")
            .query::<()>(&mut con)
            .is_ok()
    });
    busy.join().unwrap();
    threshold(&mut con, 5000);

    m1.close();
    let m2 = gated(&url, "busy-m2", &runs, None);
    publisher.publish("k", b"y").unwrap();
    runs.wait_for("k", "y");
    m2.close();
    assert_eq!(
        runs.of("k"),
        ["x", "y"],
        "x ran again, with no crash and no pause past the lease"
    );
    assert_eq!(pending(&mut con, 0), 0);
}

/// The dead-letter script acknowledges the entry before it appends the dead letter; when the
/// append fails (here `T:dead` holds a string), the entry is gone from its pending list and
/// recorded nowhere.
#[test]
fn a_dead_letter_that_cannot_be_written_leaves_its_entry_pending() {
    capture_logs();
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let mut con = server.connection();
    redis::cmd("SET")
        .arg("t:dead")
        .arg("not a stream")
        .query::<()>(&mut con)
        .unwrap();
    let consumer = Consumer::builder(&url, "t", "dead-m1")
        .workers(1)
        .lease(Duration::from_secs(2))
        .start(|_: &Entry| -> Result<(), Failure<String>> {
            Err(Failure::permanent("rejected".to_string()))
        })
        .unwrap();
    publisher.publish("k", b"0").unwrap();
    wait_logged("dead-m1-acker", "WRONGTYPE");
    let pending = pending(&mut con, 0);
    consumer.close();
    assert_eq!(
        pending, 1,
        "the entry was acknowledged, yet its dead letter was never written"
    );
}

/// An error whose `Display` panics.
struct Unprintable;

impl fmt::Display for Unprintable {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("this error cannot be shown")
    }
}

/// The dead-letter hook marks the entry settled before it formats the error; a panic there
/// drops the entry without settling it, its partition's count of entries in flight never
/// reaches zero, and the handover that `close` waits for never ends.
#[test]
fn a_dead_letter_hook_that_panics_does_not_keep_close_waiting() {
    capture_logs();
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let consumer = Consumer::builder(&url, "t", "unprintable-m1")
        .workers(1)
        .lease(Duration::from_secs(2))
        .start(|_: &Entry| -> Result<(), Failure<Unprintable>> {
            Err(Failure::permanent(Unprintable))
        })
        .unwrap();
    publisher.publish("k", b"0").unwrap();
    eventually("the entry to be dead-lettered", || {
        consumer.stats().dead_lettered == 1
    });
    let (done, closed) = mpsc::channel();
    thread::spawn(move || {
        consumer.close();
        let _ = done.send(());
    });
    assert!(
        closed.recv_timeout(PATIENCE).is_ok(),
        "close() did not return after the dead-letter hook panicked"
    );
}

/// A lease shorter than a millisecond is sent as `PX 0`, which the server refuses: every take
/// fails, and the consumer runs nothing while `start` said all was well.
#[test]
fn a_lease_the_server_cannot_take_is_refused_or_works() {
    capture_logs();
    let server = Server::start();
    let url = server.url();
    let mut publisher = Publisher::create(&url, "t", 1).unwrap();
    let runs = Arc::new(Runs::default());
    let recorded = Arc::clone(&runs);
    let started = Consumer::builder(&url, "t", "zero-m1")
        .lease(Duration::ZERO)
        .start(move |entry: &Entry| -> Result<(), String> {
            recorded.record(entry);
            Ok(())
        });
    let Ok(consumer) = started else {
        return;
    };
    publisher.publish("k", b"0").unwrap();
    runs.wait_for("k", "0");
    consumer.close();
}
