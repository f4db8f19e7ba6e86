//! Models of closing: close racing dispatches, two closes at once, a token added as the
//! dispatcher closes, two closes of a shared pool, a close that cannot wait (models 2, 5, 7, 8
//! and 16 of the parent module's list).

use super::{explore, settle, Event, Log};
use crate::{
    sync::{thread, Fault},
    tests::handle::Handle,
    Dispatcher,
};
use std::sync::Arc;

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
// 16. A close that cannot wait.

/// Model 16: a close that cannot wait (an async dispatcher's inside its runtime, or a close or
/// the last drop from a job) races the end of the last job: whichever comes second finishes
/// the shutdown, which detaches the pool and lets its thread exit. The model's thread acts as
/// inside a job throughout, so that neither its close nor its drop of the handle waits; a
/// shutdown left unfinished leaves the pool's thread asleep for ever, which loom reports.
fn close_without_waiting_model(fault: Option<Fault>) {
    explore(3, fault, || {
        let log = Log::default();
        let d = log.dispatcher(1, 8);
        let inside = d.enter_job();
        d.dispatch(0, 0).unwrap();
        let closed = d.close();
        if closed.drained {
            assert_eq!(log.started(), [0], "drained before the job ran");
        }
        drop(d);
        drop(inside);
    });
}

#[test]
fn close_that_cannot_wait_is_finished_by_the_last_job() {
    close_without_waiting_model(None);
}

#[test]
#[should_panic(expected = "deadlock")]
fn close_left_pending_and_never_finished_strands_the_pool() {
    close_without_waiting_model(Some(Fault::PendingCloseUnfinished));
}
