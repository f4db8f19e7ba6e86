//! Loom models of the key protocol, run through the real [`Dispatcher`]: its pool threads,
//! gate, key map (a locked `HashMap` under loom), mailboxes and signals all come from
//! `crate::sync`, so loom explores their interleavings. Run them with
//! `RUSTFLAGS="--cfg loom" cargo test --lib --release --target-dir target/loom tests::loom`.
//!
//! Every model records each job's start and end in a plain (not modeled) log, and checks that
//! every accepted job ran exactly once, that each refused job came back whole in its error,
//! and, where one job was dispatched before another on the same key, that the first finished
//! before the second started. A job lost in a mailbox nobody will run shows up as a deadlock:
//! `close` waits for it forever, and loom reports that no thread can make progress.
//!
//! 0. [`keys::mailbox_push_racing_the_end_of_a_turn_schedules_the_key_once`]: the mailbox alone, as a
//!    state machine: a push racing the end of a turn schedules the key exactly once. Twin:
//!    [`Fault::IdleWithJobsLeft`].
//! 1. [`keys::key_going_idle_runs_a_job_pushed_meanwhile`]: a key's turn ends with its queue empty
//!    while a producer pushes a job to it; the job runs, after the first. Twin: end of turn
//!    makes the key Idle without looking at its queue again ([`Fault::IdleWithJobsLeft`]), so
//!    a job pushed during the turn is stranded in an Idle mailbox.
//! 2. [`close::close_racing_one_dispatch`] and [`close::close_racing_two_dispatches`]: each dispatch is either
//!    accepted and has run by the time `close` returns, or is refused with its own key and job.
//!    Twin: close reads the gate's count before it sets the closed flag
//!    ([`Fault::CountBeforeClose`]), so a dispatch that enters in between is accepted but not
//!    waited for.
//! 3. [`keys::eviction_racing_dispatch_keeps_order`]: a key is swept as Idle while the next job of
//!    the key is dispatched, with two workers; nothing is lost and the first job finishes before
//!    the second starts. Twin: the sweep marks the key Evicted before it takes the map's lock
//!    ([`Fault::EvictBeforeMapLock`]), so a producer can push into a mailbox that is leaving the
//!    map.
//! 4. [`keys::blocked_producer_is_let_in_when_the_turn_ends`]: with `key_capacity(0)`, a producer
//!    blocked on the full key gets in when the running job's turn ends. Twin: end of turn does
//!    not wake the producers waiting for room ([`Fault::NoRoomWake`]).
//!    [`keys::close_wakes_a_producer_blocked_on_a_full_key`]: the running job waits for that blocked
//!    producer, so only `close` can wake it, and does, handing its job back as `Closed`. Twin:
//!    close does not wake the key's waiters ([`Fault::CloseLeavesKeyWaiters`]).
//! 5. [`close::concurrent_closes_both_wait_for_the_drain`]: two closes at once both return, each after
//!    every accepted job ran exactly once and every key was evicted. Twin: a close that finds
//!    the flag already set returns without waiting ([`Fault::LateCloseSkipsDrain`]).
//! 6. [`keys::key_scheduled_while_the_token_is_released_runs`]: a producer schedules a second key
//!    while the only token holder, out of ready keys, gives its token back; the key runs.
//!    Twin: the holder releases without looking at the ready queue again
//!    ([`Fault::ReleaseWithoutRecheck`]), so the producer, which saw the token still out, adds
//!    none, and the key waits in the ready queue with no thread to run it.
//! 7. [`close::dispatch_racing_close_leaves_nothing_alive`]: with two workers, a dispatch races
//!    `close`; once every handle is dropped, so is the handler. Twin: the pool queues a token
//!    that comes after it has shut down ([`Fault::TokenAfterShutdown`]): a producer adds one
//!    while a holder already out runs its key and the close completes, and the token, queued
//!    where no thread will take it, keeps the dispatcher alive.
//! 8. [`close::concurrent_pool_closes_both_wait_for_the_drain`]: two threads close a shared pool whose
//!    dispatcher holds a job; both return after it ran. Twin: the second close returns without
//!    waiting for the first ([`Fault::SecondPoolCloseSkipsWait`]).
//! 9. [`failures::retry_timer_requeues_the_waiting_key_while_close_runs`]: a retried job's key waits
//!    out a zero backoff while a producer pushes to it and `close` runs; the backoff timer
//!    requeues it, the retry runs before the later job, and close waits for both. Twin: the
//!    failed turn leaves the key Idle instead of Waiting ([`Fault::BackoffEndsIdle`]).
//! 10. [`failures::cancel_waits_for_the_running_job_and_takes_the_rest`]: `cancel_key` races a key's
//!     running turn; what ran and what was taken are the key's jobs in order, each once. Twin:
//!     the turn's end does not wake the key's waiters ([`Fault::NoRoomWake`]), so the cancel
//!     waiting for it hangs.
//! 11. [`stops::delayed_job_racing_close_now_runs_or_comes_back_once`]: a delayed job falls due
//!     while `close_now` runs; it runs or comes back, once. Twin: close_now does not wait for
//!     the due jobs being routed ([`Fault::CloseNowSkipsDeliveries`]).
//! 12. [`stops::close_timeout_takes_only_keys_no_turn_holds`]: `close_timeout`, its deadline
//!     passed, takes a key while its turn pops, begins or runs; a `close_now` collects the rest;
//!     each job ran or came back once, in order. Twin: it takes a running key too
//!     ([`Fault::TimeoutTakesRunningKeys`]), whose turn then strands its unstarted jobs.
//! 13. [`waits::task_queuing_while_the_slot_frees_is_let_in`]: a task's `dispatch_async` queues
//!     for room in a full key while the key's turn ends; it is woken and let in. Twin: its
//!     first poll after queuing misses a notification that came meanwhile
//!     ([`Fault::PollMissesEarlyNotify`]).
//! 14. [`waits::notified_future_dropped_passes_the_room_on`]: the first future in a key's line is
//!     granted the room and dropped unpolled; the task behind it gets the room. Twin: room
//!     given back unused is not granted on ([`Fault::AbandonedNotifyLost`]).
//! 15. [`waits::permit_used_across_its_keys_idling_and_close_is_honoured`] (and its dropped
//!     variant): a permit taken while its key goes idle and is swept, racing `close`, is
//!     honoured, or given back. Twin: the sweep evicts a key with room held
//!     ([`Fault::SweepEvictsReservedKeys`]).
//! 16. [`close::close_that_cannot_wait_is_finished_by_the_last_job`]: a close that cannot wait
//!     (an async dispatcher's, inside its runtime) and the handle's last drop race the end of
//!     the last job; the shutdown finishes and the pool's thread exits. Twin: the job's end does
//!     not finish the shutdown left pending ([`Fault::PendingCloseUnfinished`]), and the pool's
//!     thread sleeps for ever.
//!
//! Each twin is the same model with its fault armed (see [`Fault`]), marked `#[should_panic]`
//! with the failure it must produce in a release build. With debug assertions, the crate's own
//! `debug_assert!`s (an evicted key still busy, an Idle key with jobs) may catch the fault
//! first, so there any panic passes.
//!
//! Models are bounded to 2 to 4 preemptions per execution, which reaches every race above and
//! keeps each model within seconds (model 7, two workers and a producer racing `close`, takes
//! minutes); `LOOM_MAX_PREEMPTIONS` raises the bound for a longer run.
//! Two things make the real code checkable: the spin loops of the pool and of searching token
//! holders take zero steps under loom, and each side of the Dekker pairs in `signal` adds a
//! `SeqCst` fence under loom (`sync::dekker_fence`), since loom does not model the total order
//! of `SeqCst` accesses that those pairs rely on.

mod close;
mod failures;
mod keys;
mod stops;
mod waits;

use crate::{
    sync::{thread, Fault},
    tests::handle::Handle,
    DispatchError, Dispatcher,
};
use std::sync::{Arc, Mutex};

/// A job starting or ending, as the handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(u32),
    End(u32),
}

/// Every job's start and end, in the order they happened. A std lock, outside the model: loom
/// runs its threads one at a time and no loom operation happens while it is held, so the log is
/// exact without adding interleavings.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    /// A dispatcher on `workers` private loom threads whose handler records into this log,
    /// yielding between start and end so that another worker may run meanwhile.
    fn dispatcher(&self, workers: usize, key_capacity: usize) -> Handle {
        let log = self.clone();
        let dispatcher = Dispatcher::builder()
            .workers(workers)
            .key_capacity(key_capacity)
            .build(move |_: &u8, job: u32| {
                log.push(Event::Start(job));
                if workers > 1 {
                    thread::yield_now();
                }
                log.push(Event::End(job));
            })
            .expect("valid configuration");
        Handle::new(dispatcher)
    }

    fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }

    /// The jobs that have started, in order.
    fn started(&self) -> Vec<u32> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|event| match event {
                Event::Start(job) => Some(*job),
                Event::End(_) => None,
            })
            .collect()
    }

    /// Asserts that exactly the `accepted` jobs have run, each once and to its end.
    fn assert_ran(&self, accepted: &[u32]) {
        let events = self.0.lock().unwrap().clone();
        for &job in accepted {
            let starts = events.iter().filter(|e| **e == Event::Start(job)).count();
            let ends = events.iter().filter(|e| **e == Event::End(job)).count();
            assert_eq!(
                (starts, ends),
                (1, 1),
                "job {job} ran {starts} times: {events:?}"
            );
        }
        let mut started = self.started();
        started.sort_unstable();
        let mut expected = accepted.to_vec();
        expected.sort_unstable();
        assert_eq!(
            started, expected,
            "jobs run, other than accepted: {events:?}"
        );
    }

    /// Asserts that `first` finished before `second` started.
    fn assert_before(&self, first: u32, second: u32) {
        let events = self.0.lock().unwrap().clone();
        let end = events.iter().position(|e| *e == Event::End(first));
        let start = events.iter().position(|e| *e == Event::Start(second));
        assert!(
            matches!((end, start), (Some(end), Some(start)) if end < start),
            "job {first} did not finish before job {second} started: {events:?}"
        );
    }
}

/// A flag that job 0 of [`Log::holding`]'s dispatcher waits for: set once, on the model's
/// primitives, so that the model sees the wait.
#[derive(Clone, Default)]
struct Release(Arc<(crate::sync::Mutex<bool>, crate::sync::Condvar)>);

impl Release {
    fn open(&self) {
        *crate::sync::lock(&self.0 .0) = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = crate::sync::lock(open);
        while !*open {
            open = crate::sync::wait(changed, open);
        }
    }
}

impl Log {
    /// A dispatcher on one worker whose job 0 runs until `release` opens; it records into this
    /// log as [`Log::dispatcher`]'s does.
    fn holding(&self, key_capacity: usize, release: &Release) -> Handle {
        let (log, release) = (self.clone(), release.clone());
        let dispatcher = Dispatcher::builder()
            .workers(1)
            .key_capacity(key_capacity)
            .build(move |_: &u8, job: u32| {
                log.push(Event::Start(job));
                if job == 0 {
                    release.wait();
                }
                log.push(Event::End(job));
            })
            .expect("valid configuration");
        Handle::new(dispatcher)
    }
}

/// Explores `model` with at most `preemptions` preemptions per execution (unless
/// `LOOM_MAX_PREEMPTIONS` sets another bound), with `fault` armed.
fn explore(preemptions: usize, fault: Option<Fault>, model: impl Fn() + Sync + Send + 'static) {
    /// Disarms the fault however the model ends.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            Fault::arm(None);
        }
    }
    Fault::arm(fault);
    let _disarm = Disarm;
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = builder.preemption_bound.or(Some(preemptions));
    builder.check(model);
}

/// What a dispatch that raced `close` returned, checked against the jobs that ran before close
/// returned: accepted and run, or refused as `Closed` with exactly its key and job. Returns the
/// job if it was accepted.
fn settle(
    result: Result<(), DispatchError<u8, u32>>,
    key: u8,
    job: u32,
    ran: &[u32],
) -> Option<u32> {
    match result {
        Ok(()) => {
            assert!(
                ran.contains(&job),
                "accepted job {job} had not run when close returned"
            );
            Some(job)
        }
        Err(err) => {
            assert!(err.is_closed(), "only Closed can refuse here");
            assert_eq!(
                err.into_inner(),
                (key, job),
                "the refused job came back changed"
            );
            assert!(!ran.contains(&job), "refused job {job} ran");
            None
        }
    }
}
