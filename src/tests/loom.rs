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
//! 0. [`mailbox_push_racing_the_end_of_a_turn_schedules_the_key_once`]: the mailbox alone, as a
//!    state machine: a push racing the end of a turn schedules the key exactly once. Twin:
//!    [`Fault::IdleWithJobsLeft`].
//! 1. [`key_going_idle_runs_a_job_pushed_meanwhile`]: a key's turn ends with its queue empty
//!    while a producer pushes a job to it; the job runs, after the first. Twin: end of turn
//!    makes the key Idle without looking at its queue again ([`Fault::IdleWithJobsLeft`]), so
//!    a job pushed during the turn is stranded in an Idle mailbox.
//! 2. [`close_racing_one_dispatch`] and [`close_racing_two_dispatches`]: each dispatch is either
//!    accepted and has run by the time `close` returns, or is refused with its own key and job.
//!    Twin: close reads the gate's count before it sets the closed flag
//!    ([`Fault::CountBeforeClose`]), so a dispatch that enters in between is accepted but not
//!    waited for.
//! 3. [`eviction_racing_dispatch_keeps_order`]: a key is swept as Idle while the next job of
//!    the key is dispatched, with two workers; nothing is lost and the first job finishes before
//!    the second starts. Twin: the sweep marks the key Evicted before it takes the map's lock
//!    ([`Fault::EvictBeforeMapLock`]), so a producer can push into a mailbox that is leaving the
//!    map.
//! 4. [`blocked_producer_is_let_in_when_the_turn_ends`]: with `key_capacity(0)`, a producer
//!    blocked on the full key gets in when the running job's turn ends. Twin: end of turn does
//!    not wake the producers waiting for room ([`Fault::NoRoomWake`]).
//!    [`close_wakes_a_producer_blocked_on_a_full_key`]: the running job waits for that blocked
//!    producer, so only `close` can wake it, and does, handing its job back as `Closed`. Twin:
//!    close does not wake the key's waiters ([`Fault::CloseLeavesKeyWaiters`]).
//! 5. [`concurrent_closes_both_wait_for_the_drain`]: two closes at once both return, each after
//!    every accepted job ran exactly once and every key was evicted. Twin: a close that finds
//!    the flag already set returns without waiting ([`Fault::LateCloseSkipsDrain`]).
//! 6. [`key_scheduled_while_the_token_is_released_runs`]: a producer schedules a second key
//!    while the only token holder, out of ready keys, gives its token back; the key runs.
//!    Twin: the holder releases without looking at the ready queue again
//!    ([`Fault::ReleaseWithoutRecheck`]), so the producer, which saw the token still out, adds
//!    none, and the key waits in the ready queue with no thread to run it.
//! 7. [`dispatch_racing_close_leaves_nothing_alive`]: with two workers, a dispatch races
//!    `close`; once every handle is dropped, so is the handler. Twin: the pool queues a token
//!    that comes after it has shut down ([`Fault::TokenAfterShutdown`]): a producer adds one
//!    while a holder already out runs its key and the close completes, and the token, queued
//!    where no thread will take it, keeps the dispatcher alive.
//! 8. [`concurrent_pool_closes_both_wait_for_the_drain`]: two threads close a shared pool whose
//!    dispatcher holds a job; both return after it ran. Twin: the second close returns without
//!    waiting for the first ([`Fault::SecondPoolCloseSkipsWait`]).
//! 9. [`retry_timer_requeues_the_waiting_key_while_close_runs`]: a retried job's key waits
//!    out a zero backoff while a producer pushes to it and `close` runs; the backoff timer
//!    requeues it, the retry runs before the later job, and close waits for both. Twin: the
//!    failed turn leaves the key Idle instead of Waiting ([`Fault::BackoffEndsIdle`]).
//! 10. [`cancel_waits_for_the_running_job_and_takes_the_rest`]: `cancel_key` races a key's
//!     running turn; what ran and what was taken are the key's jobs in order, each once. Twin:
//!     the turn's end does not wake the key's waiters ([`Fault::NoRoomWake`]), so the cancel
//!     waiting for it hangs.
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

use crate::{
    gate::Gate,
    mailbox::{EndTurn, Mailbox, Marks, Push},
    sync::{lock, thread, wait, Condvar, Fault, Mutex as ModelMutex},
    tests::handle::Handle,
    DispatchError, Dispatcher,
};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

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

// -------------------------------------------------------------------------------------------
// 0. The mailbox alone.

/// Model 0: a producer pushes job 1 while the worker ends the turn of job 0, on the mailbox
/// alone. Whichever comes second must schedule the key: the push (it found the key Idle) or
/// the end of turn (it found job 1 queued), never both and never neither.
fn mailbox_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let mailbox = Arc::new(Mailbox::new(0u8, 0, 0u32, None));
        let gate = Arc::new(Gate::new());
        let (mut batch, mut due) = (VecDeque::new(), Marks::new());
        assert_eq!(mailbox.begin_turn(8, &mut batch, &mut due), 1);
        let producer = {
            let (mailbox, gate) = (Arc::clone(&mailbox), Arc::clone(&gate));
            thread::spawn(move || mailbox.push(1, &mut None, 8, &gate, || {}))
        };
        batch.clear(); // job 0 ran
        let end = mailbox.end_turn(&mut batch, &mut due, false);
        match (producer.join().unwrap(), end) {
            (Push::Schedule, EndTurn::Idle { .. }) | (Push::Added, EndTurn::Requeue) => {}
            (Push::Added, EndTurn::Idle { .. }) => panic!("job 1 stranded in an idle key"),
            other => panic!("the key was scheduled twice: {other:?}"),
        }
    });
}

#[test]
fn mailbox_push_racing_the_end_of_a_turn_schedules_the_key_once() {
    mailbox_model(None);
}

#[test]
#[should_panic(expected = "stranded")]
fn mailbox_ending_a_turn_without_recheck_strands_the_job() {
    mailbox_model(Some(Fault::IdleWithJobsLeft));
}

// -------------------------------------------------------------------------------------------
// 1. A key going idle while a producer pushes to it.

/// Two jobs on one key, the second dispatched while the first one's turn ends, on `workers`
/// threads. Models 1 and 3 are this one race, seen from each side.
fn second_job_model(workers: usize, preemptions: usize, fault: Option<Fault>) {
    explore(preemptions, fault, move || {
        let log = Log::default();
        let d = log.dispatcher(workers, 8);
        d.dispatch(0, 0).unwrap();
        d.dispatch(0, 1).unwrap();
        assert!(d.close().drained);
        log.assert_ran(&[0, 1]);
        log.assert_before(0, 1);
    });
}

/// Model 1: job 1 is pushed behind the running turn (which must requeue the key), or into
/// the Idle key (which the push schedules), or into a new mailbox after the sweep evicted the
/// key.
fn idle_push_model(fault: Option<Fault>) {
    second_job_model(1, 4, fault);
}

#[test]
fn key_going_idle_runs_a_job_pushed_meanwhile() {
    idle_push_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn key_going_idle_without_recheck_strands_the_job() {
    idle_push_model(Some(Fault::IdleWithJobsLeft));
}

// -------------------------------------------------------------------------------------------
// 2. Close racing dispatch.

fn close_one_model(fault: Option<Fault>) {
    explore(4, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        let producer = {
            let d = d.share();
            thread::spawn(move || d.dispatch(0, 1))
        };
        assert!(d.close().drained);
        let ran = log.started();
        let accepted: Vec<u32> = settle(producer.join().unwrap(), 0, 1, &ran)
            .into_iter()
            .collect();
        log.assert_ran(&accepted);
    });
}

#[test]
fn close_racing_one_dispatch() {
    close_one_model(None);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    should_panic(expected = "had not run when close returned")
)]
#[cfg_attr(debug_assertions, should_panic)]
fn close_reading_count_before_flag_loses_a_dispatch() {
    close_one_model(Some(Fault::CountBeforeClose));
}

fn close_two_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        let producers: Vec<_> = [1, 2]
            .into_iter()
            .map(|job| {
                let d = d.share();
                (job, thread::spawn(move || d.dispatch(0, job)))
            })
            .collect();
        assert!(d.close().drained);
        let ran = log.started();
        let accepted: Vec<u32> = producers
            .into_iter()
            .filter_map(|(job, producer)| settle(producer.join().unwrap(), 0, job, &ran))
            .collect();
        log.assert_ran(&accepted);
    });
}

#[test]
fn close_racing_two_dispatches() {
    close_two_model(None);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    should_panic(expected = "had not run when close returned")
)]
#[cfg_attr(debug_assertions, should_panic)]
fn close_reading_count_before_flag_loses_one_of_two_dispatches() {
    close_two_model(Some(Fault::CountBeforeClose));
}

// -------------------------------------------------------------------------------------------
// 3. Eviction racing dispatch on the same key.

/// Model 3: job 1 races the sweep that follows job 0's turn: pushed before the key is evicted
/// (the sweep must then leave it), or into a new mailbox after, which the second worker may
/// run at once.
fn evict_model(fault: Option<Fault>) {
    second_job_model(2, 3, fault);
}

#[test]
fn eviction_racing_dispatch_keeps_order() {
    evict_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn eviction_outside_the_map_lock_loses_a_job() {
    evict_model(Some(Fault::EvictBeforeMapLock));
}

// -------------------------------------------------------------------------------------------
// 4. A producer blocked on a full key.

/// Model 4a: job 0 fills its key, so the producer of job 1 blocks unless job 0's turn has
/// ended; it must be let in when that turn ends, without any close to wake it.
fn blocked_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 0);
        d.dispatch(0, 0).unwrap();
        let producer = {
            let d = d.share();
            thread::spawn(move || d.dispatch(0, 1))
        };
        producer.join().unwrap().expect("no close: job 1 is let in");
        assert!(d.close().drained);
        log.assert_ran(&[0, 1]);
        log.assert_before(0, 1);
    });
}

#[test]
fn blocked_producer_is_let_in_when_the_turn_ends() {
    blocked_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn blocked_producer_never_woken_hangs() {
    blocked_model(Some(Fault::NoRoomWake));
}

/// Model 4b: job 0's handler waits until the producer blocked behind it on the full key has
/// returned, so only `close` can wake that producer: it must, with its job handed back.
fn close_wakes_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let returned = Arc::new((ModelMutex::new(false), Condvar::new()));
        let handler_sees = Arc::clone(&returned);
        let d = Handle::new(
            Dispatcher::builder()
                .workers(1)
                .key_capacity(0)
                .build(move |_: &u8, job: u32| {
                    let (flag, changed) = &*handler_sees;
                    let mut flag = lock(flag);
                    while job == 0 && !*flag {
                        flag = wait(changed, flag);
                    }
                })
                .expect("valid configuration"),
        );
        d.dispatch(0, 0).unwrap();
        let producer = {
            let (d, returned) = (d.share(), Arc::clone(&returned));
            thread::spawn(move || {
                let result = d.dispatch(0, 1);
                *lock(&returned.0) = true;
                returned.1.notify_all();
                result
            })
        };
        // The producer either finds the key still full (job 0 cannot end before it returns),
        // or comes after close began: refused either way.
        assert!(d.close().drained);
        let err = producer.join().unwrap().expect_err("the key was full");
        assert!(err.is_closed());
        assert_eq!(err.into_inner(), (0, 1));
    });
}

#[test]
fn close_wakes_a_producer_blocked_on_a_full_key() {
    close_wakes_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn close_leaving_key_waiters_asleep_hangs() {
    close_wakes_model(Some(Fault::CloseLeavesKeyWaiters));
}

// -------------------------------------------------------------------------------------------
// 5. Two concurrent closes.

fn two_closes_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        d.dispatch(0, 0).unwrap();
        d.dispatch(1, 1).unwrap();
        let check = |log: &Log, report: crate::CloseReport| {
            assert!(report.drained);
            assert_eq!(report.stats.completed, 2, "close returned before the drain");
            assert_eq!(report.stats.keys, 0, "close returned before the eviction");
            log.assert_ran(&[0, 1]);
        };
        let closer = {
            let (d, log) = (d.share(), log.clone());
            thread::spawn(move || check(&log, d.close()))
        };
        check(&log, d.close());
        closer.join().unwrap();
    });
}

#[test]
fn concurrent_closes_both_wait_for_the_drain() {
    two_closes_model(None);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    should_panic(expected = "close returned before")
)]
#[cfg_attr(debug_assertions, should_panic)]
fn late_close_returning_early_misses_the_drain() {
    two_closes_model(Some(Fault::LateCloseSkipsDrain));
}

// -------------------------------------------------------------------------------------------
// 6. A key scheduled while the only token is released.

fn release_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        d.dispatch(0, 0).unwrap();
        d.dispatch(1, 1).unwrap();
        assert!(d.close().drained);
        log.assert_ran(&[0, 1]);
    });
}

#[test]
fn key_scheduled_while_the_token_is_released_runs() {
    release_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn token_released_without_recheck_strands_a_key() {
    release_model(Some(Fault::ReleaseWithoutRecheck));
}

// -------------------------------------------------------------------------------------------
// 7. A token added as the dispatcher closes.

fn late_token_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(2, 8);
        d.dispatch(0, 0).unwrap();
        let producer = {
            let d = d.share();
            thread::spawn(move || d.dispatch(1, 1))
        };
        assert!(d.close().drained);
        let ran = log.started();
        let accepted: Vec<u32> = settle(producer.join().unwrap(), 1, 1, &ran)
            .into_iter()
            .chain([0])
            .collect();
        log.assert_ran(&accepted);
        drop(d);
        assert_eq!(
            Arc::strong_count(&log.0),
            1,
            "the dispatcher outlived its last handle"
        );
    });
}

#[test]
fn dispatch_racing_close_leaves_nothing_alive() {
    late_token_model(None);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    should_panic(expected = "the dispatcher outlived its last handle")
)]
#[cfg_attr(debug_assertions, should_panic)]
fn token_queued_after_shutdown_keeps_the_dispatcher_alive() {
    late_token_model(Some(Fault::TokenAfterShutdown));
}

// -------------------------------------------------------------------------------------------
// 8. Two closes of a shared pool at once.

/// Model 8: two threads close a shared pool while its dispatcher has a job; each close must
/// return only once the job has run (the first closes the dispatcher, the second waits for it).
fn two_pool_closes_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let log = Log::default();
        let pool = Arc::new(crate::WorkerPool::new(1).expect("one worker"));
        let recorder = log.clone();
        let d = Handle::new(
            Dispatcher::builder()
                .pool(&pool)
                .build(move |_: &u8, job: u32| {
                    recorder.push(Event::Start(job));
                    recorder.push(Event::End(job));
                })
                .expect("valid configuration"),
        );
        d.dispatch(0, 0).unwrap();
        let check = |log: &Log| {
            assert_eq!(log.started(), [0], "pool close returned before the drain");
        };
        let closer = {
            let (pool, log) = (Arc::clone(&pool), log.clone());
            thread::spawn(move || {
                pool.close();
                check(&log);
            })
        };
        pool.close();
        check(&log);
        closer.join().unwrap();
        log.assert_ran(&[0]);
    });
}

#[test]
fn concurrent_pool_closes_both_wait_for_the_drain() {
    two_pool_closes_model(None);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    should_panic(expected = "pool close returned before the drain")
)]
#[cfg_attr(debug_assertions, should_panic)]
fn second_pool_close_returning_early_misses_the_drain() {
    two_pool_closes_model(Some(Fault::SecondPoolCloseSkipsWait));
}

// -------------------------------------------------------------------------------------------
// 9. A retried job's backoff timer firing while `close` runs and a producer pushes.

/// Model 9: a retrying dispatcher on one worker, with a zero backoff so that the pool timer is
/// due as soon as it is set (time does not advance under loom, but the timer's due instant is
/// in the past by the time a pool thread looks). Job 0 fails its first attempt and is put back
/// at its key's head, the key Waiting; a producer dispatches job 1 on the same key while
/// `close` runs. The timer must make the key Queued again; job 0's second attempt succeeds,
/// before job 1 starts; close waits for both. Twin: the end of the failed turn makes the key
/// Idle instead of Waiting ([`Fault::BackoffEndsIdle`]): the timer finds it not Waiting and
/// leaves it, and the retried job (and the job pushed behind it onto what looks like a live
/// key) is stranded, so `close` waits forever.
fn retry_timer_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let attempts = Arc::new(Mutex::new(0u32));
        let recorder = log.clone();
        let d = Handle::new(
            Dispatcher::builder()
                .workers(1)
                .retry(
                    crate::RetryPolicy::exponential(
                        std::time::Duration::ZERO,
                        std::time::Duration::ZERO,
                    )
                    .max_attempts(2),
                )
                .build_retrying(move |_: &u8, job: &u32| -> Result<(), &'static str> {
                    if *job == 0 {
                        let mut attempts = attempts.lock().unwrap();
                        *attempts += 1;
                        if *attempts == 1 {
                            return Err("first attempt fails");
                        }
                    }
                    recorder.push(Event::Start(*job));
                    recorder.push(Event::End(*job));
                    Ok(())
                })
                .expect("valid configuration"),
        );
        d.dispatch(0, 0).unwrap();
        let producer = {
            let d = d.share();
            thread::spawn(move || d.dispatch(0, 1))
        };
        let report = d.close();
        assert!(report.drained);
        let ran = log.started();
        let mut accepted = vec![0];
        accepted.extend(settle(producer.join().unwrap(), 0, 1, &ran));
        log.assert_ran(&accepted);
        if accepted.len() == 2 {
            log.assert_before(0, 1);
        }
        assert_eq!(report.stats.retried, 1);
    });
}

#[test]
fn retry_timer_requeues_the_waiting_key_while_close_runs() {
    retry_timer_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn backoff_ending_idle_strands_the_retried_job() {
    retry_timer_model(Some(Fault::BackoffEndsIdle));
}

// -------------------------------------------------------------------------------------------
// 10. Cancelling a key whose turn is running.

/// Model 10: two jobs on one key and one worker; `cancel_key` races the key's turn from
/// another thread, then `close` drains what is left. Whatever the interleaving, the jobs that ran and the
/// jobs taken are the key's two jobs, each once, the taken ones after the ones that ran; if
/// the cancel found the key Running, it waited for the running job and took the rest (the
/// turn stops at the key's stop hint and wakes the key's waiters as it ends). Twin: the end of
/// a turn does not wake the key's waiters ([`Fault::NoRoomWake`]), so a cancel waiting for it
/// waits forever.
fn cancel_running_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        d.dispatch(0, 0).unwrap();
        d.dispatch(0, 1).unwrap();
        let canceller = {
            let d = d.share();
            thread::spawn(move || d.cancel_key(&0).expect("not on a worker thread"))
        };
        let taken = canceller.join().unwrap();
        assert!(d.close().drained);
        let ran = log.started();
        log.assert_ran(&ran);
        let mut all = ran.clone();
        all.extend(&taken);
        assert_eq!(all, [0, 1], "ran {ran:?}, cancelled {taken:?}");
        assert_eq!(d.stats().handed_back, taken.len() as u64);
    });
}

#[test]
fn cancel_waits_for_the_running_job_and_takes_the_rest() {
    cancel_running_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn cancel_not_woken_by_the_turn_end_waits_forever() {
    cancel_running_model(Some(Fault::NoRoomWake));
}
