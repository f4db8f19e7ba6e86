//! Pinning a pool's threads to CPUs, for [`Builder::pin_workers`](crate::Builder::pin_workers)
//! and [`PoolBuilder::pin_workers`](crate::PoolBuilder::pin_workers).
//!
//! Why a pool would pin: where its threads fill every core, the kernel tends to wake a sleeping
//! worker on the core it last ran on. If another worker is running a long job there, the woken
//! one waits for that job's time slice (milliseconds), and so do the keys it was woken for,
//! though they have nothing to do with the long job. With one worker per CPU and each pinned to
//! its own, a woken worker never queues behind another worker. The price is that a pinned
//! worker cannot move off a core that something else (a producer, another process) is using.

use crate::error::BuildError;
use core_affinity::CoreId;

/// The CPU for each of `workers` threads: the CPUs the calling thread may run on, in turn.
pub(crate) fn plan(workers: usize) -> Result<Vec<CoreId>, BuildError> {
    let cpus = core_affinity::get_core_ids()
        .filter(|cpus| !cpus.is_empty())
        .ok_or(BuildError::PinUnsupported)?;
    Ok((0..workers).map(|i| cpus[i % cpus.len()]).collect())
}

/// Pins the calling thread to `cpu`; false where the operating system refused.
pub(crate) fn pin_current(cpu: CoreId) -> bool {
    core_affinity::set_for_current(cpu)
}
