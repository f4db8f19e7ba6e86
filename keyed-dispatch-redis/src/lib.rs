//! Per-key ordered processing across processes, on Redis Streams.
//!
//! A topic is split into partitions, each a Redis stream; a [`Publisher`] appends each
//! `(key, payload)` to partition [`partition_of`]`(key)`. Consumers are the members of the
//! topic: each holds some of its partitions at a time through leases, reads them, and runs
//! their entries in a [keyed-dispatch](keyed_dispatch) dispatcher, so that a key's entries
//! run one at a time in stream order while other keys run in parallel. An entry is
//! acknowledged (`XACK`) only after its handler succeeded, or after it was dead-lettered to
//! the stream `T:dead`. Completion is tracked by Redis's own pending lists, never by the
//! consumer.
//!
//! # Guarantees
//!
//! - **At least once.** An entry leaves its partition's pending list only when acknowledged,
//!   after it ran or was dead-lettered; a crash or a lost lease leaves it there for the next
//!   owner.
//! - **Order.** Per key, first executions happen in stream order, across crashes and
//!   handovers: a new owner replays its partition's pending list in order before it reads new
//!   entries, and a key's entries never run at once on one member.
//! - **Re-executions** happen only to entries that ran but whose acknowledgement was not
//!   written: when a member crashed, or lost a lease (it paused, or could not reach the
//!   server, for longer than four fifths of the lease; or the server refused one of its reads
//!   or acknowledgements). Each such event re-runs at most `W + max(B, 2)` entries of that
//!   member: the `W` running (its workers) and those whose acknowledgement was waiting to be
//!   written (half a batch queued, half being written; `B` is the batch size, [`DEFAULT_BATCH`]
//!   = 256 unless [`ConsumerBuilder::batch`] says otherwise). An entry waiting out a retry's
//!   backoff when its partition moves is tried again by the next owner, as a retry. A handover
//!   (a member leaving, or the spread changing) re-runs nothing.
//! - **Fencing.** A member that lost a lease starts no entry of that partition once it notices
//!   (at the latest when its own deadline for the lease passes, which is before the server's),
//!   and its reads and acknowledgements are refused by the server. A handler can fence its own
//!   writes the same way (see [`Entry::lease_token`]): then no stale member applies anything
//!   after the partition moved. The `ledger` example shows that, and the idempotent pattern
//!   that turns at-least-once into effectively-once (skip a key's entries at or below the last
//!   applied).
//! - **Backpressure.** A full dispatcher stops the reads: at most one read batch (`B` entries)
//!   waits in the reader.
//!
//! All of this holds as long as the server keeps what it acknowledged: a restart must not
//! forget a lease or roll an epoch back. Run redis-server with `appendonly yes` and
//! `appendfsync always` (the tests' servers do), and do not fail over to a replica that may be
//! behind. With less (Redis's default `everysec`, snapshots only), a crash of the *server* can
//! let two members hold one partition for up to a lease's time.
//!
//! # The protocol
//!
//! Keys in Redis are listed in [`Topic`]. Each partition has one lease, `T:lease:P`, whose
//! value is `member/epoch`; epochs come from `T:epoch:P` and grow each time the partition is
//! taken. Every step below is one Lua script, so each is atomic on the server.
//!
//! A member's control loop runs every fifth of the lease's time to live, at most every half
//! second (a *tick*):
//! 1. **Heartbeat**: renew its place in `T:members` (expiring with the lease's time to live)
//!    and drop the members whose time ran out; the live ones, sorted by name, spread the
//!    partitions: partition `p` goes to the `p % n`-th.
//! 2. **Renew** each lease it holds. A lease the server no longer has, or that the member
//!    stopped trusting (its own deadline, four fifths of the time to live after the renewal was
//!    sent, passed: it was paused), is *lost*: no entry of its epoch starts from then on.
//! 3. **Hand over** each lease the spread now gives to another member: stop reading it, wait
//!    until every entry read under it is acknowledged or dead-lettered, then release it.
//! 4. **Take** each partition the spread gives to it, once its lease is free (released, or
//!    expired after a crash): `SET NX PX` with a new epoch, in one script.
//!
//! Per held partition, the reader:
//! 1. **Replays** the pending list left by the previous owner: the group's single consumer
//!    reads from id `0`, in stream order, while the lease holds.
//! 2. **Reads** new entries (`>`), in stream order.
//!
//! Both reads check the lease in the same script, so a stale member takes no entry; the
//! acknowledgement checks it too, so a stale member's acknowledgement is refused and the entry
//! stays pending for the new owner (a re-execution, bounded above).
//!
//! # Example
//!
//! ```no_run
//! use keyed_dispatch_redis::{Consumer, Publisher};
//!
//! let url = "redis://127.0.0.1:6379/";
//! let mut publisher = Publisher::create(url, "orders", 16)?;
//! publisher.publish("customer-7", b"paid")?;
//!
//! let consumer = Consumer::builder(url, "orders", "member-1")
//!     .workers(8)
//!     .start(|entry| -> Result<(), String> {
//!         println!("{} {:?}", entry.key(), entry.payload());
//!         Ok(())
//!     })?;
//! // ... until the process is told to stop:
//! consumer.close();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod conn;
mod consumer;
mod entry;
mod error;
mod lease;
mod publisher;
mod scripts;
mod topic;

pub use consumer::{
    Consumer, ConsumerBuilder, DEFAULT_BATCH, DEFAULT_LEASE, DEFAULT_MAX_PENDING, MIN_LEASE,
};
pub use entry::Entry;
pub use error::Error;
pub use keyed_dispatch::{Failure, RetryPolicy};
pub use publisher::Publisher;
pub use topic::{partition_of, Topic, CONSUMER, DEFAULT_PARTITIONS, GROUP};
