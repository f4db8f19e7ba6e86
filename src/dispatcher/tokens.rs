//! The ready queue and the tokens that staff it: which thread runs a Queued key, and how a
//! thread is brought in for it. Kept apart from the turns because its correctness argument is
//! its own: a protocol between producers and token holders that must not lose a wake-up.
//!
//! A dispatcher keeps a FIFO *ready queue* of Queued keys (see `ready`) and holds up to
//! `max_parallel` *tokens* of its pool (see `pool`): each token is one thread's permission to
//! run this dispatcher's keys. A token is *out* from the moment it is counted in
//! `Sched::tokens` until its holder gives it back: queued in the pool, or held by a thread.
//! The ready queue takes no lock; tokens and searchers are counted under the scheduler's lock
//! and mirrored in `staffed` (all tokens out, or one holder searching), which a producer reads
//! after its push to decide whether it needs that lock at all.
//!
//! # The token protocol
//!
//! 1. **Push.** A producer that makes a key Queued pushes it on the ready queue
//!    ([`schedule`](Core::schedule)), then issues a `SeqCst` fence and reads `staffed`
//!    ([`add_token_if_needed`](Core::add_token_if_needed)).
//! 2. **Staffed: nothing to do.** If `staffed` is set, every token is out or a holder is
//!    searching, and one of them will pop the key (steps 4 to 6); the producer takes no lock.
//! 3. **Add a token.** Otherwise it takes the scheduler's lock and, if keys are still ready, no
//!    holder is searching and fewer than `max_parallel` tokens are out, counts a new token
//!    (updating `staffed`) and, after the lock, queues it in the pool, which wakes a thread
//!    for it unless one is spinning there (see `pool`).
//! 4. **Pop.** A holder pops ready keys one at a time and runs a turn of each (see `worker`).
//!    A pop that leaves keys on the queue goes through steps 2 and 3 itself, so that another
//!    thread comes in while keys wait. A key whose turn ends with jobs left goes back on the
//!    queue through its own holder ([`file`](Core::file)), which pops again: it needs no token.
//! 5. **Search.** Finding the queue empty, a holder spins briefly for a key, counted in
//!    `searching` (only where the pool spins at all, no other client waits for the thread and
//!    `close_now` has not begun: see `PoolShared::spins`); meanwhile producers stop at step 2.
//!    It pops once more when it stops.
//! 6. **Release, then look again.** Still finding nothing, the holder gives its token back
//!    under the lock (updating `staffed`), then issues a `SeqCst` fence and looks at the ready
//!    queue once more. If a key is there and fewer than `max_parallel` tokens are out, it takes
//!    its token back and returns to step 4 (if every token is out again, their holders will pop
//!    the key). Failing that, it arms the sweep timer if idle keys are listed (see `evict`) and
//!    leaves the thread to the pool.
//! 7. **Hand on.** After a turn, while other tokens wait in the pool's queue, a holder whose
//!    dispatcher has keys ready puts its token back at the end of that queue
//!    ([`hand_on`](Core::hand_on)) instead of releasing it. The token stays out, so the keys
//!    keep a holder that will see them, and threads are shared fairly between dispatchers.
//!
//! **Invariant:** no ready key is left without a token holder that will see it. While a key is
//! on the ready queue, a token is out whose holder will look at the queue before it gives the
//! token back (step 4, or step 6's second look), or the producer that pushed the key has not
//! yet passed step 3.
//!
//! **Why no wake-up is lost.** Holders that stay out pop the key by steps 4 to 6, and the pool
//! loses no token it queues (see `pool`). What remains is a producer that reads `staffed`
//! while the last holder that could see its key gives its token back. The holder stores
//! `staffed` (step 6) before its fence and its last look at the queue; the producer pushes
//! before its fence and its read of `staffed` (step 1). With a `SeqCst` fence on each side (the
//! Dekker pattern), at least one sees the other's write: either the holder finds the key and
//! takes its token back, or the producer finds `staffed` cleared and adds a token by step 3,
//! which checks again under the lock. If both happen, one token finds nothing and goes back by
//! step 6: a wasted wake-up, never a lost one.

use super::core::{Core, Sched};
use crate::{
    mailbox::{EndTurn, Mailbox},
    pool::Worker,
    sync::{fault, fence, lock, spin_once, Arc, Ordering},
};
use std::{fmt::Debug, hash::Hash};

/// How many spin steps a token holder waits for a ready key before it gives the token back,
/// where the pool spins at all (see `PoolShared::spins`).
const SEARCH_STEPS: u32 = 8;

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Puts a key that became Queued on the ready queue, adding a token if one is needed.
    pub(super) fn schedule(&self, mailbox: Arc<Mailbox<K, J>>) {
        self.ready.push(mailbox);
        self.add_token_if_needed();
    }

    /// Adds a token if keys are ready and no holder out will see them: fewer than
    /// `max_parallel` tokens are out and none is searching. Called after a push on the ready
    /// queue, or a pop that left keys there.
    fn add_token_if_needed(&self) {
        // ORDERING: SeqCst, one side of the Dekker pair with a holder releasing its token (see
        // the module docs): the key was pushed before `staffed` is read here.
        fence(Ordering::SeqCst);
        if self.staffed.load(Ordering::SeqCst) {
            return;
        }
        let mut sched = lock(&self.sched);
        let needed = !self.ready.is_empty()
            && sched.searching == 0
            && sched.tokens < self.config.max_parallel;
        if needed {
            sched.tokens += 1;
            self.set_staffed(&sched);
        }
        drop(sched);
        if needed {
            self.submit_token();
        }
    }

    /// Mirrors the tokens and searchers just counted in `staffed`; called under `sched`'s lock.
    fn set_staffed(&self, sched: &Sched<K, J>) {
        let staffed = sched.searching > 0 || sched.tokens >= self.config.max_parallel;
        // ORDERING: SeqCst, the other side of `add_token_if_needed`'s pair.
        self.staffed.store(staffed, Ordering::SeqCst);
    }

    /// Queues a token of this dispatcher in the pool (already counted in `Sched::tokens`).
    fn submit_token(&self) {
        if let Some(me) = self.me.upgrade() {
            self.pool.submit(me);
        }
    }

    /// Files the key whose turn just ended, and pops the next ready key. With none ready, it
    /// searches briefly (a thread, not a task: `worker` is `None` for a task), arms the sweep
    /// timer if keys are listed, and releases the token (returning `None`) unless a key
    /// arrived meanwhile.
    pub(super) fn next_key(
        &self,
        ended: Option<(Arc<Mailbox<K, J>>, EndTurn)>,
        worker: Option<&Worker<'_>>,
    ) -> Option<Arc<Mailbox<K, J>>> {
        if let Some((mailbox, end)) = ended {
            if let Some(oldest) = self.file(mailbox, end) {
                self.sweep(oldest, true);
            }
        }
        loop {
            if let Some(mailbox) = self.pop() {
                return Some(mailbox);
            }
            let spins = worker.filter(|worker| self.pool.spins() && !worker.others_waiting());
            if let Some(worker) = spins.filter(|_| !self.gate.is_halted()) {
                self.search(worker);
                if let Some(mailbox) = self.pop() {
                    return Some(mailbox);
                }
            }
            let mut sched = lock(&self.sched);
            // At once in the models, where the timer's sweeps would do the same after two
            // periods without work; after the shutdown too, which evicted every key but may
            // have missed one filed since.
            if (self.sweep_period().is_none() || sched.cleared) && !sched.idle.is_empty() {
                let idle = std::mem::take(&mut sched.idle);
                drop(sched);
                self.sweep(idle, false);
                if let Some(mailbox) = self.pop() {
                    return Some(mailbox);
                }
                sched = lock(&self.sched);
            }
            let listed = !sched.idle.is_empty();
            sched.tokens -= 1;
            self.set_staffed(&sched);
            drop(sched);
            // ORDERING: SeqCst, the releasing side of the Dekker pair (see the module docs): a
            // key pushed before `staffed` was stored is seen here, and its producer, having
            // read `staffed` before, did not add a token for it.
            fence(Ordering::SeqCst);
            if !self.ready.is_empty() && !fault!(ReleaseWithoutRecheck) {
                let mut sched = lock(&self.sched);
                if sched.tokens < self.config.max_parallel {
                    sched.tokens += 1;
                    self.set_staffed(&sched);
                    continue;
                }
                // Every token is out again: their holders will pop the key.
            }
            if listed {
                self.set_timer();
            }
            return None;
        }
    }

    /// Spins for a while, counted as searching, until a key is ready.
    fn search(&self, worker: &Worker<'_>) {
        let mut sched = lock(&self.sched);
        sched.searching += 1;
        self.set_staffed(&sched);
        drop(sched);
        let mut step = 0;
        while step < SEARCH_STEPS && self.ready.is_empty() && !worker.others_waiting() {
            spin_once(step);
            step += 1;
        }
        let mut sched = lock(&self.sched);
        sched.searching -= 1;
        self.set_staffed(&sched);
    }

    /// Pops a ready key; if keys remain, brings in another thread unless one is searching or
    /// every token is out.
    fn pop(&self) -> Option<Arc<Mailbox<K, J>>> {
        let mailbox = self.ready.pop()?;
        if !self.ready.is_empty() {
            self.add_token_if_needed();
        }
        Some(mailbox)
    }

    /// Hands this thread on to another client after a turn, if keys of this dispatcher are
    /// ready: files the key and puts the token back at the end of the pool's queue. Returns
    /// false, leaving `ended` to the caller, if no key is ready.
    pub(super) fn hand_on(&self, ended: &mut Option<(Arc<Mailbox<K, J>>, EndTurn)>) -> bool {
        let requeue = matches!(ended, Some((_, EndTurn::Requeue)));
        if self.ready.is_empty() && !requeue {
            return false;
        }
        let overflow = ended
            .take()
            .and_then(|(mailbox, end)| self.file(mailbox, end));
        // The ready keys first: the sweep can wait.
        self.submit_token();
        if let Some(oldest) = overflow {
            self.sweep(oldest, true);
        }
        true
    }
}
