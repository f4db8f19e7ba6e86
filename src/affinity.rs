//! Pinning a pool's threads to CPUs, for [`Builder::pin_workers`](crate::Builder::pin_workers)
//! and [`PoolBuilder::pin_workers`](crate::PoolBuilder::pin_workers).
//!
//! Why a pool would pin: where its threads fill every core, the kernel tends to wake a sleeping
//! worker on the core it last ran on. If another worker is running a long job there, the woken
//! one waits for that job's time slice (milliseconds), and so do the keys it was woken for,
//! though they have nothing to do with the long job. With one worker per CPU and each pinned to
//! its own, a woken worker never queues behind another worker. The price is that a pinned
//! worker cannot move off a core that something else (a producer, another process) is using.
//!
//! Only where a thread's affinity is a hard mask of the CPUs it may run on (Linux, Android,
//! FreeBSD). Elsewhere pinning is a hint (macOS), refused (Apple silicon), or limited to the
//! process's first 64 CPUs (Windows), so `build` says `PinUnsupported` rather than pretend.

use crate::error::BuildError;

/// A CPU, numbered as the operating system numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cpu(pub(crate) usize);

/// The CPU for each of `workers` threads: the CPUs the calling thread may run on, in turn.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) fn plan(workers: usize) -> Result<Vec<Cpu>, BuildError> {
    let cpus = core_affinity::get_core_ids()
        .filter(|cpus| !cpus.is_empty())
        .ok_or(BuildError::PinUnsupported)?;
    Ok((0..workers).map(|i| Cpu(cpus[i % cpus.len()].id)).collect())
}

/// Pins the calling thread to `cpu`; false where the operating system refused.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) fn pin_current(cpu: Cpu) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu.0 })
}

/// No hard affinity here: see the module's docs.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn plan(_workers: usize) -> Result<Vec<Cpu>, BuildError> {
    Err(BuildError::PinUnsupported)
}

/// Never reached: `plan` refuses first.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn pin_current(_cpu: Cpu) -> bool {
    false
}
