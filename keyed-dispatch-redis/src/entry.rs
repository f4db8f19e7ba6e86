//! One stream entry, as the handler gets it.

use crate::lease::Lease;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// A partition's entry, handed to the consumer's handler: its key and payload, and the lease
/// under which it was read, for handlers that fence their own writes with it.
///
/// A handler that writes to Redis can make the write conditional on the lease (the partition
/// still belongs to this member, in this epoch) in the same script: `GET lease_key() ==
/// lease_token()`. Then no member that lost the partition can apply anything after the new
/// owner took it. See the `ledger` example.
pub struct Entry {
    pub(crate) lease: Arc<Lease>,
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) payload: Vec<u8>,
    /// Set once the entry's acknowledgement (or dead letter) has been handed to the acker,
    /// which then settles it in the lease's `in_flight`; else dropping it does.
    pub(crate) settled: AtomicBool,
}

impl Entry {
    pub(crate) fn new(lease: Arc<Lease>, id: String, key: String, payload: Vec<u8>) -> Entry {
        lease.in_flight.fetch_add(1, Ordering::SeqCst);
        Entry {
            lease,
            id,
            key,
            payload,
            settled: AtomicBool::new(false),
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The entry's payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The entry's stream id (`1700000000000-0`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partition it was read from.
    pub fn partition(&self) -> u32 {
        self.lease.partition
    }

    /// The epoch of the lease it was read under: grows each time the partition changes hands.
    pub fn epoch(&self) -> u64 {
        self.lease.epoch
    }

    /// The Redis key of the partition's lease.
    pub fn lease_key(&self) -> &str {
        &self.lease.key
    }

    /// The lease's value while this member holds it in this epoch.
    pub fn lease_token(&self) -> &str {
        &self.lease.token
    }

    /// Tells the consumer that the lease is gone (a write fenced by it was refused): no later
    /// entry of this partition starts here, and the entry is left for the partition's new owner.
    pub fn lease_lost(&self) {
        self.lease.lose();
    }

    /// Whether the lease may still be trusted.
    pub fn lease_holds(&self) -> bool {
        self.lease.holds()
    }

    /// Marks the entry as handed to the acker.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            self.lease.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("partition", &self.lease.partition)
            .field("epoch", &self.lease.epoch)
            .field("id", &self.id)
            .field("key", &self.key)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .finish()
    }
}
