//! Delayed dispatches: [`Dispatcher::dispatch_after`]'s jobs, held until their delay is over.
//!
//! # Protocol
//!
//! 1. *Dispatch.* The producer hashes the key, takes a slot of the gate (waiting for global
//!    room as `dispatch` does; refused once close has begun) and counts the job as dispatched.
//!    Under the `delayed` lock it checks the halt flag, then files the job in a [`DueHeap`]
//!    (see `due`), arming a pool timer of kind [`TimerKind::Delay`] if it is the earliest. The
//!    job now holds its slot: `close` and `wait_idle` wait for it, as for any accepted job.
//! 2. *Due.* When the timer fires, every job due is popped under the lock, and `delivering`
//!    counts them before the lock is released. Each is then routed to its key's mailbox as a
//!    producer's job would be (as [`DUE`]): past the key's capacity (it was accepted
//!    already), into a paused key's queue if the key is paused. Its key's order counts from
//!    then. `delivering` goes down once each has been routed.
//! 3. *close_now.* It sets the halt flag, takes the heap's jobs under the lock, then waits until
//!    `delivering` is zero, and only then drains the map. A job popped before the halt flag was
//!    set is in its mailbox by then, and is drained with it; a job popped after it is refused
//!    by its mailbox (as a producer's would be) and put in `returned`, which close_now takes
//!    after the wait. A producer that took its slot before the halt flag but files after
//!    close_now took the heap sees the flag under the lock and is refused. So each delayed job
//!    is run, or handed back, exactly once.
//!
//! A key's `Eq` that panics while its due job is routed (on a pool thread) drops that job,
//! logged at `error` and counted in `dropped`.

use super::{
    core::{Core, Item, Wait},
    due::{due_in, DueHeap},
    route::{drop_accepted, Routed, DUE},
    Dispatcher,
};
use crate::{
    error::{Bound, DispatchError},
    gate::Refused,
    pool::TimerKind,
    sync::{fault, lock, AtomicUsize, Mutex, Ordering},
    unwind::contained,
};
use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

/// The delayed jobs' state: the protocol's `delayed`, `delivering` and `returned`.
pub(crate) struct Delays<K, J> {
    /// Jobs waiting for their delay to end.
    pub(super) delayed: Mutex<DueHeap<Delayed<K, J>>>,
    /// Due jobs popped from `delayed` and not yet routed.
    pub(super) delivering: AtomicUsize,
    /// Due jobs that `close_now` refused at their mailbox, for it to hand back.
    pub(super) returned: Mutex<Vec<Delayed<K, J>>>,
}

impl<K, J> Default for Delays<K, J> {
    fn default() -> Self {
        Delays {
            delayed: Mutex::new(DueHeap::default()),
            delivering: AtomicUsize::new(0),
            returned: Mutex::new(Vec::new()),
        }
    }
}

/// A job waiting for its delay to end, with its key and the key's hash.
pub(super) struct Delayed<K, J> {
    pub(super) hash: u64,
    pub(super) key: K,
    pub(super) job: J,
}

impl<K, J> Dispatcher<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Dispatches `job` on `key` once `delay` has passed: the job then joins the end of the
    /// key's queue, and the key's order counts from then (a job dispatched on `key` meanwhile
    /// runs first). No thread waits for the delay: the job waits on the pool's timer.
    ///
    /// The job is accepted now. It takes its room in the dispatcher's
    /// [`capacity`](crate::Builder::capacity) at once (blocking for it as
    /// [`dispatch`](Dispatcher::dispatch) does), but none in the key's queue until it is due,
    /// when it joins the queue even if the key is full. It counts in
    /// [`Stats::dispatched`](crate::Stats::dispatched) now, and in `queued` while it waits.
    /// [`close`](Dispatcher::close) and [`wait_idle`](Dispatcher::wait_idle) wait for it to run;
    /// [`close_now`](Dispatcher::close_now) and
    /// [`close_timeout`](Dispatcher::close_timeout) hand it back with its key, after the key's
    /// queued jobs. It is not in its key's queue before it is due, so
    /// [`flush_key`](Dispatcher::flush_key) does not wait for it and
    /// [`cancel_key`](Dispatcher::cancel_key) does not take it.
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Dispatcher::dispatch): [`DispatchError::Closed`] once close has begun,
    /// [`DispatchError::Full`] from a handler while the dispatcher is full. The error holds
    /// the key and job.
    ///
    /// # Examples
    ///
    /// ```
    /// use keyed_dispatch::Dispatcher;
    /// use std::{sync::mpsc, time::{Duration, Instant}};
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let d = Dispatcher::builder().build(move |_: &u8, job: &'static str| tx.send(job).unwrap())?;
    /// let start = Instant::now();
    /// d.dispatch_after(1, "reminder", Duration::from_millis(50))?;
    /// d.dispatch(1, "now")?;
    /// assert_eq!(rx.recv()?, "now");
    /// assert_eq!(rx.recv()?, "reminder");
    /// assert!(start.elapsed() >= Duration::from_millis(50));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dispatch_after(
        &self,
        key: K,
        job: J,
        delay: Duration,
    ) -> Result<(), DispatchError<K, J>> {
        self.core.send_after(key, job, delay, self.core.blocking())
    }
}

impl<K, J> Core<K, J>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    J: Send + 'static,
{
    /// Step 1 of the protocol.
    fn send_after(
        &self,
        key: K,
        job: J,
        delay: Duration,
        wait: Wait,
    ) -> Result<(), DispatchError<K, J>> {
        let hash = self.keys.hash(&key);
        if let Err(refused) = self.admit(wait) {
            let err = match refused {
                Refused::Closed => DispatchError::Closed { key, job },
                Refused::Full => DispatchError::Full {
                    key,
                    job,
                    bound: Bound::Dispatcher,
                },
            };
            return Err(self.refuse(err));
        }
        let at = due_in(delay);
        let arm = {
            let mut delayed = lock(&self.delays.delayed);
            // Under the lock that close_now takes the heap under, after setting the flag.
            if self.gate.halt_seen() {
                drop(delayed);
                self.left(1);
                return Err(self.refuse(DispatchError::Closed { key, job }));
            }
            self.counters.accepted();
            delayed.push(at, Delayed { hash, key, job })
        };
        if arm {
            self.pool.set_timer(at, self.as_client(), TimerKind::Delay);
        }
        Ok(())
    }

    /// Step 2 of the protocol: the delay timer. Returns when the pool should fire it next, if
    /// no pending timer already will.
    pub(super) fn on_delay_timer(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let mut delayed = lock(&self.delays.delayed);
            let next = delayed.pop_due(now, &mut due);
            // ORDERING: SeqCst, paired with close_now's wait (see `halt_delays`).
            self.delays
                .delivering
                .fetch_add(due.len(), Ordering::SeqCst);
            next
        };
        let popped = due.len();
        for Delayed { hash, key, job } in due {
            let item = Item { job, group: None };
            let stamp = self.latency.is_some().then(Instant::now);
            match contained(|| self.route::<DUE>(hash, key, item, stamp)) {
                Some(Routed::Added(key)) => drop_accepted(key),
                Some(Routed::Schedule(mailbox, key)) => {
                    self.schedule(mailbox);
                    drop_accepted(key);
                }
                Some(Routed::Halted(key, item)) => {
                    let job = item.job;
                    lock(&self.delays.returned).push(Delayed { hash, key, job });
                }
                Some(Routed::Full(..)) => unreachable!("a due job ignores the key's capacity"),
                None => {
                    log::error!(
                        "{}: a key's Eq panicked while its delayed job was routed; the job is \
                         dropped",
                        self.config.name
                    );
                    self.counters.dropped(1);
                    self.left(1);
                }
            }
        }
        if popped > 0 {
            self.delays.delivering.fetch_sub(popped, Ordering::SeqCst);
            self.idle.notify_all();
        }
        next
    }

    /// Step 3 of the protocol, for `close_now` once the halt flag is set: every delayed job
    /// that is not in its mailbox, earliest due first.
    pub(super) fn halt_delays(&self) -> Vec<Delayed<K, J>> {
        let waiting = lock(&self.delays.delayed).clear();
        self.idle.wait_until(None, || {
            fault!(CloseNowSkipsDeliveries) || self.delays.delivering.load(Ordering::SeqCst) == 0
        });
        // Those refused at their mailbox were due before any still waiting.
        let mut left = std::mem::take(&mut *lock(&self.delays.returned));
        left.extend(waiting);
        left
    }
}
