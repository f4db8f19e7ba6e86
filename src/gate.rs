//! Admission: the dispatcher's closed flags and its count of unfinished jobs, in one word.
//!
//! A dispatch first *enters* the gate: one `fetch_add` that both reserves a slot of the global
//! capacity and reads the closed flags. A job *leaves* the gate when it has finished running
//! (or has been handed back by `close_now`). Because entering and closing are read-modify-writes
//! of the same word, they are totally ordered: every dispatch that entered before `close` set
//! [`CLOSED`] is counted, and `close` waits until the count falls to zero, so it drains exactly
//! the jobs that were accepted.

use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;

/// Set once `close` or `close_now` has begun: no dispatch enters any more.
const CLOSED: usize = 1 << (usize::BITS - 1);
/// Set once `close_now` has begun: jobs that have not started are handed back, not run.
const HALTED: usize = 1 << (usize::BITS - 2);
const FLAGS: usize = CLOSED | HALTED;

/// The largest global capacity the gate can count, with room above it for the transient
/// reservations of concurrent producers that find the gate full or closed.
pub(crate) const MAX_CAPACITY: usize = usize::MAX >> 3;

/// The flags' copies: each only ever set, by a plain store, so no update can be lost.
#[derive(Debug, Default)]
struct Copies {
    closed: AtomicBool,
    halted: AtomicBool,
}

/// Why a dispatch could not enter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Closed,
    Full,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Gate {
    /// `CLOSED | HALTED | count`, where `count` is the number of jobs accepted and not yet
    /// finished, plus reservations of producers that are between entering and pushing their job.
    word: CachePadded<AtomicUsize>,
    /// Copies of the flags on a line of their own, for the checks made per job: every dispatch
    /// and every finished batch write `word`, so reading it where no write is needed would bounce
    /// its line between the producers and the workers once more per job. The halt's copy is
    /// set before `word`, so that whoever saw `close_now` begin in `word` (and then released a
    /// job, say) has its turns see the halt too; the closed copy is set after `word`, so that a
    /// dispatch refused on the copy sees the dispatcher closed.
    copies: CachePadded<Copies>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Gate {
            word: CachePadded::new(AtomicUsize::new(0)),
            copies: CachePadded::new(Copies::default()),
        }
    }

    /// Reserves one slot of `capacity`. On `Err` nothing stays reserved: the transient
    /// reservation was undone here, and the bool says whether undoing it emptied the gate (the
    /// caller then wakes whoever waits for that, as after [`Gate::leave`]).
    // ORDERING: SeqCst, so that the count is in the single total order with the waiter counts
    // read by `Core::left` (the Dekker pair that makes `wait_idle` lose no wake-up).
    pub(crate) fn enter(&self, capacity: usize) -> Result<(), (Refused, bool)> {
        // A dispatch after close is refused without touching the count, so that a storm of
        // them neither contends with the workers nor shows up in the count. A stale copy only
        // lets a dispatch on to the `fetch_add`, which decides.
        // ORDERING: Acquire, paired with `close`: a dispatch refused here sees `word` closed.
        if self.copies.closed.load(Ordering::Acquire) {
            return Err((Refused::Closed, false));
        }
        let prev = self.word.fetch_add(1, Ordering::SeqCst);
        let refused = if prev & CLOSED != 0 {
            Refused::Closed
        } else if prev & !FLAGS >= capacity {
            Refused::Full
        } else {
            return Ok(());
        };
        let emptied = self.leave(1);
        Err((refused, emptied))
    }

    /// Releases `n` slots: jobs that finished, were handed back, or reservations undone.
    /// Returns true when this emptied the gate (the count fell to zero).
    // ORDERING: SeqCst, see `enter`.
    pub(crate) fn leave(&self, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        let prev = self.word.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(prev & !FLAGS >= n, "gate count underflow");
        prev & !FLAGS == n
    }

    /// Sets [`CLOSED`]; returns true for the call that set it.
    pub(crate) fn close(&self) -> bool {
        let first = self.word.fetch_or(CLOSED, Ordering::SeqCst) & CLOSED == 0;
        // ORDERING: Release, paired with `enter`'s Acquire.
        self.copies.closed.store(true, Ordering::Release);
        first
    }

    /// Sets [`CLOSED`] and [`HALTED`]; returns true for the call that set `CLOSED`.
    pub(crate) fn halt(&self) -> bool {
        // ORDERING: Relaxed, published by the SeqCst write of `word`; see `halt_seen`.
        self.copies.halted.store(true, Ordering::Relaxed);
        let first = self.word.fetch_or(CLOSED | HALTED, Ordering::SeqCst) & CLOSED == 0;
        // ORDERING: Release, paired with `enter`'s Acquire.
        self.copies.closed.store(true, Ordering::Release);
        first
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::SeqCst) & CLOSED != 0
    }

    // ORDERING: SeqCst, paired with the SeqCst turn count (see `Core::run_turn`); a plain
    // load on x86, made once per turn.
    pub(crate) fn is_halted(&self) -> bool {
        self.word.load(Ordering::SeqCst) & HALTED != 0
    }

    /// Whether `close_now` has begun, read from the copy. It may come late, which is enough
    /// where a lock orders it after the halt: `close_now` sets the flag before it takes the
    /// map's shard locks and the mailboxes' locks, so whoever holds one of those after it sees
    /// the flag, and whoever held it before has its job taken by `close_now`. Elsewhere it is a
    /// hint: a turn stops early when it sees it, and one that does not is simply waited for
    /// (see `Core::run_turn`).
    // ORDERING: Relaxed; the locks above order it where it matters.
    pub(crate) fn halt_seen(&self) -> bool {
        self.copies.halted.load(Ordering::Relaxed)
    }

    /// Jobs accepted and not yet finished (plus in-flight reservations).
    pub(crate) fn count(&self) -> usize {
        self.word.load(Ordering::SeqCst) & !FLAGS
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn enter_counts_until_capacity() {
        let gate = Gate::new();
        assert_eq!(gate.enter(2), Ok(()));
        assert_eq!(gate.enter(2), Ok(()));
        assert_eq!(gate.enter(2), Err((Refused::Full, false)));
        assert_eq!(gate.count(), 2);
        assert!(!gate.leave(1));
        assert!(gate.leave(1));
        assert_eq!(gate.count(), 0);
    }

    #[test]
    fn closed_gate_refuses_and_keeps_count() {
        let gate = Gate::new();
        gate.enter(10).unwrap();
        assert!(gate.close());
        assert!(!gate.close(), "only the first close sets the flag");
        assert_eq!(gate.enter(10), Err((Refused::Closed, false)));
        assert_eq!(gate.count(), 1);
        assert!(gate.is_closed() && !gate.is_halted());
        assert!(gate.leave(1));
    }

    #[test]
    fn entry_into_a_closed_gate_leaves_the_count_alone() {
        let gate = Gate::new();
        gate.close();
        assert_eq!(gate.enter(10), Err((Refused::Closed, false)));
        assert_eq!(gate.count(), 0);
    }

    #[test]
    fn halt_closes_too() {
        let gate = Gate::new();
        assert!(gate.halt());
        assert!(gate.is_closed() && gate.is_halted() && gate.halt_seen());
        assert!(!gate.close());
    }
}
