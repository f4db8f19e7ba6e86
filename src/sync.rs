//! The synchronization primitives the protocol runs on: `std`'s, or `loom`'s under `cfg(loom)`.
//!
//! Every lock, condition variable, atomic and thread that takes part in the key protocol comes
//! from here, so that `RUSTFLAGS="--cfg loom"` puts the whole protocol under the model checker.
//! `Arc` stays `std`'s in both builds: loom's `Arc` cannot be coerced to `Arc<dyn Trait>`, and
//! reference counts are not part of the protocol being checked.

pub(crate) use std::sync::{Arc, Weak};

#[cfg(not(loom))]
pub(crate) use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

#[cfg(loom)]
pub(crate) use loom::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

/// Locks `mutex`, ignoring poison.
///
/// No user code runs while one of this crate's locks is held, so a poisoned lock can only come
/// from a bug in this crate, and those abort the process (see `pool::AbortOnPanic`) before a
/// lock could be observed poisoned.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Blocks on `condvar` until notified, ignoring poison (see [`lock`]).
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poison| poison.into_inner())
}

/// Blocks on `condvar` until notified or `timeout` passes, ignoring poison (see [`lock`]).
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poison) => poison.into_inner().0,
    }
}

/// Spins or yields once while waiting for another thread; a plain yield under loom, which
/// cannot explore unbounded spinning.
pub(crate) fn spin_once(step: u32) {
    if cfg!(loom) || step > 6 {
        thread::yield_now();
    } else {
        for _ in 0..(1u32 << step) {
            std::hint::spin_loop();
        }
    }
}
