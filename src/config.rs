//! [`Config`]: a dispatcher's checked settings, and the hooks it calls. A leaf of its own: the
//! builder writes them and the dispatcher reads them, and neither needs the other for that.

use std::{any::Any, fmt::Display, time::Duration};

/// A dispatcher's checked configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Used in log lines, and as the thread name prefix of a private pool.
    pub(crate) name: String,
    /// The most jobs accepted and not yet finished at once: those that may wait
    /// (`Builder::capacity`) and one running on each thread the dispatcher may hold.
    pub(crate) admitted: usize,
    /// The most jobs of a key that may wait behind the one it runs (`Builder::key_capacity`).
    pub(crate) key_capacity: usize,
    pub(crate) jobs_per_turn: usize,
    pub(crate) max_parallel: usize,
    /// `None`: the default eviction (see `Builder::idle_timeout`).
    pub(crate) idle_timeout: Option<Duration>,
}

/// The hook called with the payload of a panicking job.
pub(crate) type PanicHook<K> = Box<dyn Fn(&K, &(dyn Any + Send)) + Send + Sync>;
/// The hook called with the error of a failed job.
pub(crate) type ErrorHook<K> = Box<dyn Fn(&K, &dyn Display) + Send + Sync>;
