//! [`Config`]: a dispatcher's checked settings, and the hooks it calls; [`ThreadSettings`]: how a
//! pool starts its threads. A leaf of its own: the builders write them and the dispatcher and the
//! pool read them, and neither needs the other for that.

use crate::error::BuildError;
use std::{
    any::Any,
    fmt::{self, Debug},
    sync::Arc,
    time::Duration,
};

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

/// The function that names worker thread `i`.
pub(crate) type ThreadName = Arc<dyn Fn(usize) -> String + Send + Sync>;
/// A hook run on each worker thread as it starts, or right before it exits.
pub(crate) type ThreadHook = Arc<dyn Fn() + Send + Sync>;

/// How a pool starts its worker threads, as `Builder` (for a private pool) and `PoolBuilder`
/// set it: one value for `PoolShared::start` rather than an argument each.
#[derive(Clone, Default)]
pub(crate) struct ThreadSettings {
    /// Names thread `i`; `None`: `{name}-{i}`, after the pool's name.
    pub(crate) name: Option<ThreadName>,
    /// `None`: the standard library's default (`RUST_MIN_STACK`, else 2 MiB).
    pub(crate) stack_size: Option<usize>,
    /// Whether each thread is pinned to a CPU of its own (see `affinity`).
    pub(crate) pin: bool,
    pub(crate) on_start: Option<ThreadHook>,
    pub(crate) on_stop: Option<ThreadHook>,
}

impl ThreadSettings {
    /// The first setting made other than `pin`, by its builder method's name: those a
    /// dispatcher on a shared pool cannot have, as its threads are the pool's.
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        [
            ("thread_name", self.name.is_some()),
            ("stack_size", self.stack_size.is_some()),
            ("on_thread_start", self.on_start.is_some()),
            ("on_thread_stop", self.on_stop.is_some()),
        ]
        .into_iter()
        .find_map(|(setting, set)| set.then_some(setting))
    }

    /// The names of `workers` threads of the pool `pool`, each checked: all of them before any
    /// thread starts, so that a bad one (or a name function that panics) leaves none running.
    pub(crate) fn names(&self, pool: &str, workers: usize) -> Result<Vec<String>, BuildError> {
        (0..workers)
            .map(|index| {
                let name = match &self.name {
                    Some(name) => name(index),
                    None => format!("{pool}-{index}"),
                };
                if name.contains('\0') {
                    Err(BuildError::NameWithNul)
                } else {
                    Ok(name)
                }
            })
            .collect()
    }
}

impl Debug for ThreadSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadSettings")
            .field("name", &self.name.as_ref().map(|_| ".."))
            .field("stack_size", &self.stack_size)
            .field("pin", &self.pin)
            .field("on_start", &self.on_start.as_ref().map(|_| ".."))
            .field("on_stop", &self.on_stop.as_ref().map(|_| ".."))
            .finish()
    }
}
