//! Models of failure handling: a retried job's backoff timer racing close and a producer, and
//! cancelling a key whose turn is running (models 9 and 10 of the parent module's list).

use super::{explore, settle, Event, Log};
use crate::{
    sync::{thread, Fault},
    tests::handle::Handle,
    Dispatcher,
};
use std::sync::{Arc, Mutex};

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
