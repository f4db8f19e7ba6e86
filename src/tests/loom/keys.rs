//! Models of one key's states: the mailbox alone, a key going idle or evicted while a
//! producer pushes, a producer blocked on a full key, a key scheduled while the only token is
//! released (models 0, 1, 3, 4 and 6 of the parent module's list).

use super::{explore, Log, Release};
use crate::{
    gate::Gate,
    mailbox::{EndTurn, Mailbox, Marks, Push},
    sync::{thread, Fault},
    DispatchError, Dispatcher,
};
use std::{collections::VecDeque, sync::Arc};

/// How a model's producer dispatches job 1 on key 0.
pub(super) type Produce = fn(&Dispatcher<u8, u32>) -> Result<(), DispatchError<u8, u32>>;

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
    blocked_producer_model(fault, |d| d.dispatch(0, 1));
}

/// Model 4a with job 1 dispatched by `produce` (a thread's `dispatch`, or a task's
/// `dispatch_async`: model 13).
pub(super) fn blocked_producer_model(fault: Option<Fault>, produce: Produce) {
    explore(2, fault, move || {
        let log = Log::default();
        let d = log.dispatcher(1, 0);
        d.dispatch(0, 0).unwrap();
        let producer = {
            let d = d.share();
            thread::spawn(move || produce(&d))
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
        let returned = Release::default();
        let d = Log::default().holding(0, &returned);
        d.dispatch(0, 0).unwrap();
        let producer = {
            let (d, returned) = (d.share(), returned.clone());
            thread::spawn(move || {
                let result = d.dispatch(0, 1);
                returned.open();
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
