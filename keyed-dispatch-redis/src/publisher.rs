//! Appending entries to a topic's partitions.

use crate::{conn::Conn, error::at_key, partition_of, Error, Topic};
use redis::Connection;

/// Appends `(key, payload)` entries to a topic: each to partition
/// [`partition_of`]`(key, partitions)`, as a stream entry with the fields `key` and `payload`.
///
/// The first publisher of a topic fixes its partition count (stored in `T:meta`); later ones
/// must ask for the same count or take the stored one with [`Publisher::open`].
///
/// A publisher does not reconnect: an error is returned, and the entries it was given may or
/// may not have been appended (publish again; consumers see both copies).
pub struct Publisher {
    con: Connection,
    topic: Topic,
    partitions: u32,
    streams: Vec<String>,
}

impl Publisher {
    /// Connects to the topic, creating it with `partitions` partitions if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached, [`Error::PartitionsMismatch`] if the
    /// topic has another count, [`Error::BadPartitions`] for zero.
    pub fn create(url: &str, topic: &str, partitions: u32) -> Result<Publisher, Error> {
        if partitions == 0 {
            return Err(Error::BadPartitions {
                topic: topic.to_string(),
                value: "0".to_string(),
            });
        }
        let topic = Topic::new(topic);
        let mut con = connect(url)?;
        let meta = topic.meta();
        redis::cmd("HSETNX")
            .arg(&meta)
            .arg("partitions")
            .arg(partitions)
            .query::<i64>(&mut con)
            .map_err(|e| at_key(e, &meta))?;
        let stored = stored_partitions(&mut con, &topic)?.expect("just stored");
        if stored != partitions {
            return Err(Error::PartitionsMismatch {
                topic: topic.name().to_string(),
                stored,
                asked: partitions,
            });
        }
        Ok(Publisher::with(con, topic, partitions))
    }

    /// Connects to an existing topic, with the partition count stored with it; `None` if the
    /// topic has not been created.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached, [`Error::BadPartitions`] if the
    /// stored count is not a positive number.
    pub fn open(url: &str, topic: &str) -> Result<Option<Publisher>, Error> {
        let topic = Topic::new(topic);
        let mut con = connect(url)?;
        Ok(stored_partitions(&mut con, &topic)?
            .map(|partitions| Publisher::with(con, topic, partitions)))
    }

    fn with(con: Connection, topic: Topic, partitions: u32) -> Publisher {
        let streams = (0..partitions).map(|p| topic.stream(p)).collect();
        Publisher {
            con,
            topic,
            partitions,
            streams,
        }
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Appends one entry; returns its stream id.
    ///
    /// # Errors
    ///
    /// [`Error::WrongType`] if the partition's key holds something other than a stream,
    /// [`Error::Redis`] for any other failure.
    pub fn publish(&mut self, key: &str, payload: &[u8]) -> Result<String, Error> {
        let stream = stream_of(&self.streams, key);
        xadd(stream, key, payload)
            .query(&mut self.con)
            .map_err(|e| at_key(e, stream))
    }

    /// Appends entries in one round trip, each key's in the order given.
    ///
    /// # Errors
    ///
    /// As [`publish`](Publisher::publish); the entries before the failing one were appended.
    pub fn publish_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for (key, payload) in entries {
            pipe.add_command(xadd(stream_of(&self.streams, key), key, payload))
                .ignore();
        }
        let topic = self.topic.name();
        pipe.query::<()>(&mut self.con)
            .map_err(|e| at_key(e, &format!("a partition stream of {topic}")))
    }
}

/// The stream of `key`'s partition, among a topic's `streams`.
fn stream_of<'a>(streams: &'a [String], key: &str) -> &'a str {
    &streams[partition_of(key.as_bytes(), streams.len() as u32) as usize]
}

/// The `XADD` that appends the entry `(key, payload)` to `stream`.
fn xadd(stream: &str, key: &str, payload: &[u8]) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command
        .arg(stream)
        .arg("*")
        .arg("key")
        .arg(key)
        .arg("payload")
        .arg(payload);
    command
}

fn connect(url: &str) -> Result<Connection, Error> {
    let conn = Conn::open(url)?;
    Ok(conn.into_connection())
}

/// The partition count stored with `topic`, if the topic exists.
pub(crate) fn stored_partitions(con: &mut Connection, topic: &Topic) -> Result<Option<u32>, Error> {
    let meta = topic.meta();
    let stored: Option<String> = redis::cmd("HGET")
        .arg(&meta)
        .arg("partitions")
        .query(con)
        .map_err(|e| at_key(e, &meta))?;
    match stored {
        None => Ok(None),
        Some(value) => match value.parse::<u32>() {
            Ok(partitions) if partitions > 0 => Ok(Some(partitions)),
            _ => Err(Error::BadPartitions {
                topic: topic.name().to_string(),
                value,
            }),
        },
    }
}
