//! The crate's error.

use std::fmt;

/// What can go wrong talking to Redis or setting up a consumer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The first connection to `url` failed: a wrong URL, or no server there.
    Connect {
        /// The URL given.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// A command failed.
    Redis(redis::RedisError),
    /// `key` holds a value of another type than the one the topic needs there.
    WrongType {
        /// The key.
        key: String,
    },
    /// The topic exists with another partition count than the one asked for.
    PartitionsMismatch {
        /// The topic.
        topic: String,
        /// The count stored with the topic.
        stored: u32,
        /// The count asked for.
        asked: u32,
    },
    /// A partition count of zero, or a stored one that is not a positive number.
    BadPartitions {
        /// The topic.
        topic: String,
        /// The count as given or found.
        value: String,
    },
    /// A lease shorter than [`MIN_LEASE`](crate::MIN_LEASE).
    LeaseTooShort {
        /// The lease asked for.
        lease: std::time::Duration,
        /// The shortest accepted.
        min: std::time::Duration,
    },
    /// The consumer's dispatcher could not be built.
    Build(keyed_dispatch::BuildError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { url, source } => write!(f, "cannot connect to {url}: {source}"),
            Error::Redis(e) => write!(f, "redis: {e}"),
            Error::WrongType { key } => write!(f, "{key} holds a value of the wrong type"),
            Error::PartitionsMismatch {
                topic,
                stored,
                asked,
            } => write!(
                f,
                "topic {topic} has {stored} partitions, not the {asked} asked for"
            ),
            Error::BadPartitions { topic, value } => {
                write!(f, "topic {topic}: {value:?} is not a partition count")
            }
            Error::LeaseTooShort { lease, min } => {
                write!(
                    f,
                    "a lease of {lease:?} is shorter than the {min:?} a consumer needs"
                )
            }
            Error::Build(e) => write!(f, "cannot build the dispatcher: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Redis(source) => Some(source),
            Error::Build(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e)
    }
}

/// `e` as [`Error::WrongType`] for `key` where the server said WRONGTYPE, else as it is.
pub(crate) fn at_key(e: redis::RedisError, key: &str) -> Error {
    if e.code() == Some("WRONGTYPE") {
        Error::WrongType {
            key: key.to_string(),
        }
    } else {
        Error::Redis(e)
    }
}
