//! The reader: takes the entries of the partitions this member holds and dispatches each into
//! the dispatcher under its key. One thread, so each partition's entries are dispatched in
//! stream order: first the pending list left by the partition's previous owner (replay), then
//! new entries. A full dispatcher blocks it, which stops the reads: nothing is buffered here.

use super::{acker::Settle, Shared};
use crate::{
    conn::{self, Conn},
    entry::Entry,
    lease::Lease,
    scripts,
    topic::{CONSUMER, GROUP},
};
use crossbeam_channel::Sender;
use keyed_dispatch::Dispatcher;
use log::{error, warn};
use redis::Value;
use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

/// Where the reader is in a partition, for one lease of it.
struct Cursor {
    /// Replaying the pending list (after `dispatched`), rather than reading new entries.
    replaying: bool,
    /// The last id dispatched under this lease (`0` before the first).
    dispatched: String,
    /// The last id delivered to the group, as of the last empty read: a blocking wait for new
    /// entries starts after it. Empty until known.
    delivered: String,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            replaying: true,
            dispatched: "0".into(),
            delivered: String::new(),
        }
    }
}

pub(crate) struct Reader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    pub(crate) dispatcher: Arc<Dispatcher<String, Entry>>,
    pub(crate) settle: Sender<Settle>,
    pub(crate) batch: usize,
}

impl Reader {
    pub(crate) fn run(mut self) {
        // Keyed by partition; a new epoch of a partition starts again with its replay.
        let mut cursors: HashMap<u32, (u64, Cursor)> = HashMap::new();
        while !self.stopping() {
            let leases: Vec<Arc<Lease>> = self.shared.owned.lock().unwrap().clone();
            cursors.retain(|p, (epoch, _)| {
                leases
                    .iter()
                    .any(|l| l.partition == *p && l.epoch == *epoch)
            });
            let mut read_any = false;
            for lease in &leases {
                let Some(_batch) = lease.begin_batch() else {
                    continue;
                };
                let (_, cursor) = cursors
                    .entry(lease.partition)
                    .or_insert_with(|| (lease.epoch, Cursor::new()));
                match self.read(lease, cursor) {
                    Read::Entries => read_any = true,
                    Read::Nothing => {}
                    Read::Stop => return,
                }
            }
            if !read_any {
                self.wait(&leases, &cursors);
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Reads one batch of `lease`'s partition and dispatches it.
    fn read(&mut self, lease: &Arc<Lease>, cursor: &mut Cursor) -> Read {
        let after = if cursor.replaying {
            cursor.dispatched.clone()
        } else {
            ">".to_string()
        };
        // Once only: a read of new entries moves them to the pending list, so if its reply is
        // lost, sending it again would skip them. The partition's pending list is replayed
        // instead, from the last entry dispatched.
        let reply: redis::RedisResult<Value> = self.conn.run_once(&mut |con| {
            scripts::read()
                .key(&lease.key)
                .key(&lease.stream)
                .arg(&lease.token)
                .arg(GROUP)
                .arg(CONSUMER)
                .arg(self.batch)
                .arg(&after)
                .invoke(con)
        });
        let (last, entries) = match reply {
            Ok(Value::Nil) => {
                lease.lose();
                return Read::Nothing;
            }
            Ok(Value::Array(mut reply)) if reply.len() == 2 => {
                let entries = reply.pop().unwrap();
                (string(&reply[0]), entries)
            }
            Ok(other) => {
                error!("partition {}: unexpected reply {other:?}", lease.partition);
                lease.lose();
                return Read::Nothing;
            }
            Err(_) if self.stopping() => return Read::Stop,
            Err(e) if conn::lost(&e) => {
                warn!("partition {}: {e}; reconnect and replay", lease.partition);
                cursor.replaying = true;
                self.pause();
                return Read::Nothing;
            }
            Err(e) => {
                error!(
                    "partition {}: cannot read {}: {e}",
                    lease.partition, lease.stream
                );
                lease.lose();
                return Read::Nothing;
            }
        };
        let Value::Array(entries) = entries else {
            return Read::Nothing;
        };
        if entries.is_empty() {
            cursor.replaying = false;
            cursor.delivered = last.unwrap_or_default();
            return Read::Nothing;
        }
        for entry in entries {
            let (id, fields) = match entry {
                Value::Array(mut parts) if parts.len() == 2 => {
                    let fields = parts.pop().unwrap();
                    (string(&parts[0]).unwrap_or_default(), fields)
                }
                other => {
                    error!("partition {}: unexpected entry {other:?}", lease.partition);
                    continue;
                }
            };
            cursor.dispatched.clone_from(&id);
            let (key, payload) = fields_of(fields);
            let Some(key) = key else {
                // No key (or an entry deleted while pending): it can never run, so it is
                // dead-lettered rather than left to block the partition's replays.
                let entry = Entry::new(Arc::clone(lease), id, String::new(), payload);
                entry.settle();
                let _ = self.settle.send(Settle::Dead {
                    lease: Arc::clone(lease),
                    id: entry.id.clone(),
                    key: String::new(),
                    payload: entry.payload.clone(),
                    error: "the entry has no key field".into(),
                    attempts: 0,
                });
                continue;
            };
            if !self.dispatch(Entry::new(Arc::clone(lease), id, key, payload)) {
                return Read::Stop;
            }
        }
        Read::Entries
    }

    /// Dispatches `entry`, waiting while the dispatcher is full; false if stopping first.
    fn dispatch(&self, entry: Entry) -> bool {
        let mut job = (entry.key.clone(), entry);
        loop {
            match self
                .dispatcher
                .dispatch_timeout(job.0, job.1, self.shared.tick)
            {
                Ok(()) => return true,
                Err(e) if e.is_timeout() && !self.stopping() => job = e.into_inner(),
                // Left unacknowledged in the pending list, with every later entry of its
                // partition: the next reader of the partition starts from it.
                Err(_) => return false,
            }
        }
    }

    /// Waits for new entries in the partitions read to the end (at most 100 ms), or, with
    /// none, for the set of leases to change (at most a tick).
    fn wait(&mut self, leases: &[Arc<Lease>], cursors: &HashMap<u32, (u64, Cursor)>) {
        let mut xread = redis::cmd("XREAD");
        // Short enough that a partition just taken is read soon after.
        let block = self.shared.tick.min(Duration::from_millis(100));
        // One entry is enough to wake up: the reads that follow take the entries.
        xread
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS");
        let mut ids = Vec::new();
        for lease in leases {
            // Not a partition being handed over or lost: its last delivered id is stale, and
            // the wait would return at once, every time.
            if lease.draining.load(Ordering::SeqCst) || !lease.holds() {
                continue;
            }
            if let Some((epoch, cursor)) = cursors.get(&lease.partition) {
                if *epoch == lease.epoch && !cursor.replaying && !cursor.delivered.is_empty() {
                    xread.arg(&lease.stream);
                    ids.push(cursor.delivered.clone());
                }
            }
        }
        if ids.is_empty() {
            let owned = self.shared.owned.lock().unwrap();
            let _ = self.shared.changed.wait_timeout(owned, self.shared.tick);
            return;
        }
        xread.arg(&ids);
        let shared = Arc::clone(&self.shared);
        let _ = self
            .conn
            .run(&|_| shared.stopping.load(Ordering::SeqCst), |con| {
                xread.query::<Value>(con)
            });
    }
}

impl Reader {
    /// A pause after losing the connection, so that a server that is down is not polled in
    /// a tight loop (`run_once` reconnects on the next read).
    fn pause(&self) {
        let owned = self.shared.owned.lock().unwrap();
        let pause = self.shared.tick.min(Duration::from_millis(100));
        let _ = self.shared.changed.wait_timeout(owned, pause);
    }
}

enum Read {
    Entries,
    Nothing,
    Stop,
}

fn string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// An entry's `key` (when present and UTF-8) and `payload` (empty when absent).
fn fields_of(fields: Value) -> (Option<String>, Vec<u8>) {
    let (mut key, mut payload) = (None, Vec::new());
    if let Value::Array(fields) = fields {
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            match (string(&name).as_deref(), value) {
                (Some("key"), value) => key = string(&value),
                (Some("payload"), Value::BulkString(bytes)) => payload = bytes,
                _ => {}
            }
        }
    }
    (key, payload)
}
