//! Models of the stops that hand jobs back: a delayed job falling due while `close_now` runs,
//! and `close_timeout` taking keys while a turn runs (models 11 and 12 of the parent module's
//! list).

use super::{explore, Log};
use crate::sync::Fault;
use std::time::Duration;

// -------------------------------------------------------------------------------------------
// 11. A delayed job falling due while `close_now` runs.

/// Model 11: one worker; a job dispatched with a zero delay, so that the pool timer is due as
/// soon as it is set, while `close_now` runs. Whatever the interleaving, the job either ran or
/// came back, once. Twin: `close_now` takes the delayed jobs without waiting for the ones
/// being routed ([`Fault::CloseNowSkipsDeliveries`]): a job popped before the halt and routed
/// after it is refused at its mailbox and put aside after close_now looked, so neither runs
/// nor comes back, and close_now waits forever for it to leave the gate.
fn delayed_job_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 4);
        d.dispatch_after(0, 1, Duration::ZERO).unwrap();
        let left = d.close_now().expect("not on a worker thread");
        let ran = log.started();
        log.assert_ran(&ran);
        let back: Vec<u32> = left.into_iter().flat_map(|(_, jobs)| jobs).collect();
        let mut all = ran.clone();
        all.extend(&back);
        assert_eq!(all, [1], "ran {ran:?}, handed back {back:?}");
        let stats = d.stats();
        assert_eq!((stats.handed_back, stats.queued), (back.len() as u64, 0));
    });
}

#[test]
fn delayed_job_racing_close_now_runs_or_comes_back_once() {
    delayed_job_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn close_now_not_waiting_for_deliveries_strands_the_delayed_job() {
    delayed_job_model(Some(Fault::CloseNowSkipsDeliveries));
}

// -------------------------------------------------------------------------------------------
// 12. `close_timeout` taking keys while a turn runs.

/// Model 12: one worker, two jobs on one key, and a `close_timeout` whose deadline has passed
/// at once (time does not advance under loom, so its grace ends at once too): it halts and
/// takes the key unless a turn holds it, while the worker pops, begins or runs the key's turn.
/// A `close_now` then collects what a running turn kept. Whatever the interleaving, each job
/// ran or came back, once, in order, and the key came back at most once. Twin: `close_timeout` takes a key
/// whose turn is running too ([`Fault::TimeoutTakesRunningKeys`]): the turn then puts its
/// unstarted jobs back into a mailbox that has left the map, and they are lost.
fn close_timeout_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 4);
        d.dispatch(0, 1).unwrap();
        d.dispatch(0, 2).unwrap();
        let mut left = d
            .close_timeout(Duration::ZERO)
            .expect("not on a worker thread");
        left.extend(d.close_now().expect("not on a worker thread"));
        let ran = log.started();
        log.assert_ran(&ran);
        let mut keys: Vec<u8> = left.iter().map(|(key, _)| *key).collect();
        keys.dedup();
        assert_eq!(keys.len(), left.len(), "a key came back twice: {left:?}");
        let mut all = ran.clone();
        all.extend(left.into_iter().flat_map(|(_, jobs)| jobs));
        all.sort_unstable();
        assert_eq!(all, [1, 2], "ran {ran:?}");
        if ran.contains(&2) {
            log.assert_before(1, 2);
        }
    });
}

#[test]
fn close_timeout_takes_only_keys_no_turn_holds() {
    close_timeout_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn close_timeout_taking_a_running_key_loses_its_jobs() {
    close_timeout_model(Some(Fault::TimeoutTakesRunningKeys));
}
