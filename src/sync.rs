//! The synchronization primitives the protocol runs on: `std`'s, `loom`'s under `cfg(loom)`, or
//! `shuttle`'s under `cfg(shuttle)` (when not under loom).
//!
//! Every lock, condition variable, atomic and thread that takes part in the key protocol comes
//! from here, so that `RUSTFLAGS="--cfg loom"` or `RUSTFLAGS="--cfg shuttle"` puts the whole
//! protocol under a schedule checker. `Arc` stays `std`'s in every build: loom's `Arc` cannot be coerced
//! to `Arc<dyn Trait>` (shuttle's is `std`'s), and reference counts are not part of the protocol
//! being checked.

pub(crate) use std::sync::{Arc, Weak};

/// Whether a schedule checker (loom or shuttle) runs the protocol: spin loops then take zero
/// steps, since a checker cannot explore unbounded spinning and gains nothing from bounded spins.
pub(crate) const CHECKED: bool = cfg!(any(loom, shuttle));

#[cfg(not(any(loom, shuttle)))]
pub(crate) use std::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

#[cfg(loom)]
pub(crate) use loom::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

/// Under loom, a `SeqCst` fence for one side of a Dekker pair (see `signal::Signal`); nothing
/// otherwise. Loom does not model the single total order of `SeqCst` accesses (it treats them as
/// acquire/release), which such a pair relies on, but it does model `SeqCst` fences; outside
/// loom the `SeqCst` accesses themselves give that order. Shuttle runs one thread at a time and
/// makes every atomic access sequentially consistent, so it needs no fence either.
#[inline(always)]
pub(crate) fn dekker_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

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
///
/// Under loom and shuttle, which do not model time, it never times out: it waits for a
/// notification like [`wait`].
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

/// Spins or yields once while waiting for another thread; a plain yield under a schedule
/// checker (see [`CHECKED`]), where spinning is only more steps to explore.
pub(crate) fn spin_once(step: u32) {
    if CHECKED || step > 6 {
        thread::yield_now();
    } else {
        for _ in 0..(1u32 << step) {
            std::hint::spin_loop();
        }
    }
}

/// A fault that the loom models (`src/tests/loom/`) and the shuttle tests
/// (`src/tests/shuttle.rs`) inject into the protocol, each at the one line it breaks, to show that
/// the model written against it catches it. Only a loom or shuttle build can arm one; elsewhere
/// [`Fault::on`] is a constant `false` and every check folds away. The protocol's code asks
/// through [`fault!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `Mailbox::end_turn` makes the key Idle without looking at jobs pushed during the turn.
    IdleWithJobsLeft,
    /// `Core::close` reads the gate's count before it sets the closed flag, and waits only if
    /// that count was not zero.
    CountBeforeClose,
    /// `Core::sweep` marks a key Evicted before it takes the map's lock, so that the Idle check
    /// and the removal are two critical sections.
    EvictBeforeMapLock,
    /// `Mailbox::end_turn` does not wake the key's waiters: the producers waiting for room in
    /// it, and `cancel_key` waiting for its turn to end.
    NoRoomWake,
    /// `Core::close` returns without waiting for the drain when another close set the flag.
    LateCloseSkipsDrain,
    /// A token holder that runs out of ready keys gives its token back without looking at the
    /// ready queue again.
    ReleaseWithoutRecheck,
    /// `PoolShared::submit` queues a token after the pool has shut down.
    TokenAfterShutdown,
    /// `Core::close` does not wake the producers waiting for room in a key.
    CloseLeavesKeyWaiters,
    /// A second `WorkerPool::close` returns without waiting for the first to close the
    /// dispatchers.
    SecondPoolCloseSkipsWait,
    /// `Mailbox::end_turn_as` makes a key whose head job is to be retried Idle, not Waiting.
    BackoffEndsIdle,
    /// `Core::halt_delays` takes the delayed jobs without waiting for those being routed.
    CloseNowSkipsDeliveries,
    /// `Mailbox::take_all_unless_running` takes a key whose turn is running too.
    TimeoutTakesRunningKeys,
    /// `Waiter::poll`, at a task's first poll after it queued, leaves its waker without
    /// looking whether the notification already came.
    PollMissesEarlyNotify,
    /// Room held in a key and given back unused (a dropped future's grant, a dropped permit)
    /// is not granted to the key's next waiter (`Mailbox::unreserve_locked`).
    AbandonedNotifyLost,
    /// `Mailbox::try_evict` evicts an Idle key in which a permit holds room.
    SweepEvictsReservedKeys,
    /// `Core::progressed` does not finish a shutdown that a close which could not wait (on a
    /// worker thread, in a job, or inside an async dispatcher's runtime) left pending.
    PendingCloseUnfinished,
}

/// Whether the [`Fault`] variant `$name` is armed: `fault!(NoRoomWake)`. The one way the
/// protocol's code asks, at the one line each fault breaks; a constant `false` outside loom and
/// shuttle (see [`Fault::on`]), so that every check folds away.
macro_rules! fault {
    ($name:ident) => {
        $crate::sync::Fault::$name.on()
    };
}
pub(crate) use fault;

#[cfg(any(loom, shuttle))]
std::thread_local! {
    /// The armed fault. A std thread local: loom and shuttle run a model's threads as coroutines
    /// on the thread that calls the model, so all of them see what that test armed, and no other
    /// test does.
    static ARMED: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
}

impl Fault {
    /// Whether this fault is armed.
    #[cfg(any(loom, shuttle))]
    pub(crate) fn on(self) -> bool {
        ARMED.with(|armed| armed.get() == Some(self))
    }

    /// Whether this fault is armed: never, outside loom and shuttle.
    #[cfg(not(any(loom, shuttle)))]
    #[inline(always)]
    pub(crate) const fn on(self) -> bool {
        false
    }

    /// Arms `fault` (or none) for the models run next on this thread.
    #[cfg(all(test, any(loom, shuttle)))]
    pub(crate) fn arm(fault: Option<Fault>) {
        ARMED.with(|armed| armed.set(fault));
    }
}
