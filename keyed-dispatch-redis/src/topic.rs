//! A topic's names in Redis, and the hash that places a key in a partition.
//!
//! Everything of a topic `T` lives under keys that start with `T:` (no hash tags):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `T:meta` | hash | `partitions`: the partition count, fixed when the topic is first published to |
//! | `T:stream:P` | stream | partition `P`'s entries, fields `key` and `payload` |
//! | `T:lease:P` | string | `member/epoch` of partition `P`'s owner, expiring unless renewed |
//! | `T:epoch:P` | integer | the last epoch given out for partition `P` |
//! | `T:members` | sorted set | live members, scored by when they expire (server time, ms) |
//! | `T:acked` | integer | entries acknowledged, dead letters included |
//! | `T:dead` | stream | dead letters: `key`, `payload`, `error`, `attempts`, `partition`, `id` |
//!
//! Each partition stream has one consumer group, [`GROUP`], with one consumer in it,
//! [`CONSUMER`]: whoever holds the partition's lease reads as that consumer, so a new owner
//! finds its predecessor's unacknowledged entries in the group's pending list, in stream order.

/// The consumer group of every partition stream.
pub const GROUP: &str = "keyed-dispatch";

/// The one consumer name in each partition's group, used by whoever holds its lease.
pub const CONSUMER: &str = "owner";

/// The partition count a topic gets when its first publisher does not name one.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The names of one topic's keys in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    name: String,
}

impl Topic {
    /// The topic called `name`.
    pub fn new(name: impl Into<String>) -> Topic {
        Topic { name: name.into() }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hash holding the topic's partition count.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.name)
    }

    /// Partition `partition`'s stream.
    pub fn stream(&self, partition: u32) -> String {
        format!("{}:stream:{partition}", self.name)
    }

    /// Partition `partition`'s lease.
    pub fn lease(&self, partition: u32) -> String {
        format!("{}:lease:{partition}", self.name)
    }

    /// Partition `partition`'s epoch counter.
    pub fn epoch(&self, partition: u32) -> String {
        format!("{}:epoch:{partition}", self.name)
    }

    /// The sorted set of live members.
    pub fn members(&self) -> String {
        format!("{}:members", self.name)
    }

    /// The count of acknowledged entries.
    pub fn acked(&self) -> String {
        format!("{}:acked", self.name)
    }

    /// The dead-letter stream.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.name)
    }
}

/// The partition of `key` among `partitions`: 64-bit FNV-1a of the key's bytes, modulo the
/// count. Fixed, so that publishers in any language place keys as this crate does.
///
/// # Examples
///
/// ```
/// use keyed_dispatch_redis::partition_of;
///
/// // FNV-1a 64 of "" is 0xcbf29ce484222325, of "a" 0xaf63dc4c8601ec8c.
/// assert_eq!(partition_of(b"", 16), (0xcbf29ce484222325u64 % 16) as u32);
/// assert_eq!(partition_of(b"a", 1000), (0xaf63dc4c8601ec8cu64 % 1000) as u32);
/// ```
///
/// # Panics
///
/// Panics if `partitions` is zero.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(partitions)) as u32
}
