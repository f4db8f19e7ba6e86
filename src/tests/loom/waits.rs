//! Models of the async front's waits (models 13 to 15 of the parent module's list): a task
//! queuing for room while a slot frees, a notified task's future dropped before it runs, and a
//! permit held while its key goes idle and the dispatcher closes.

use super::{explore, Log, Release};
use crate::sync::{lock, thread, wait, Condvar, Fault, Mutex as ModelMutex};
use std::{
    future::Future,
    sync::Arc,
    task::{Context, Poll, Wake, Waker},
};

/// A waker that does nothing: the model polls by hand the future it means to drop.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A task's wake-up, on the model's primitives.
#[derive(Default)]
struct Unpark {
    woken: ModelMutex<bool>,
    changed: Condvar,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        *lock(&self.woken) = true;
        self.changed.notify_one();
    }
}

/// Runs `future` to its end on the calling model thread, blocking between polls until woken.
///
/// Loom's own `block_on` cannot end a failed execution cleanly: a twin's deadlock unwinds it,
/// and its drop calls into the checker after the execution has ended, which aborts the test
/// binary. Here the future is dropped only once it resolved (as `Handle` leaks the dispatcher
/// of a failed execution), and its wake-up is left to leak.
fn block_on<F: Future>(future: F) -> F::Output {
    let unpark = Arc::new(Unpark::default());
    let waker = Waker::from(Arc::clone(&unpark));
    let mut future = std::mem::ManuallyDrop::new(Box::pin(future));
    let output = loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
            break output;
        }
        let mut woken = lock(&unpark.woken);
        while !*woken {
            woken = wait(&unpark.changed, woken);
        }
        *woken = false;
    };
    drop(std::mem::ManuallyDrop::into_inner(future));
    output
}

// -------------------------------------------------------------------------------------------
// 13. A task queuing for room while the slot frees.

/// Model 13: with `key_capacity(0)`, job 0 fills its key; a task's `dispatch_async` of job 1
/// queues for room while job 0's turn ends and frees it. The task is woken and let in. Twin:
/// the task's first poll after it queued leaves its waker without looking whether the
/// notification came meanwhile ([`Fault::PollMissesEarlyNotify`]), and sleeps forever.
fn queue_while_freed_model(fault: Option<Fault>) {
    super::keys::blocked_producer_model(fault, |d| block_on(d.dispatch_async(0, 1)));
}

#[test]
fn task_queuing_while_the_slot_frees_is_let_in() {
    queue_while_freed_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn task_missing_an_early_notification_hangs() {
    queue_while_freed_model(Some(Fault::PollMissesEarlyNotify));
}

// -------------------------------------------------------------------------------------------
// 14. A notified task's future dropped before it runs.

/// Model 14: job 0 holds its full key until released. Future A (job 1) queues first, polled
/// once by hand; a task with job 2 queues behind it. Job 0 is released, its turn's end grants
/// the room to the first in line, and A is dropped, before or after that grant: either way
/// the task with job 2 gets the room, and job 1 never runs. Twin: room given back unused is
/// not granted on ([`Fault::AbandonedNotifyLost`]), and the task behind A sleeps forever.
fn dropped_notified_model(fault: Option<Fault>) {
    explore(2, fault, || {
        let log = Log::default();
        let release = Release::default();
        let d = log.holding(0, &release);
        d.dispatch(0, 0).unwrap();
        let mut first = Box::pin(d.dispatch_async(0, 1));
        let waker = Waker::from(Arc::new(Noop));
        let polled = first.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending(), "job 0 fills the key until released");
        let second = {
            let d = d.share();
            thread::spawn(move || block_on(d.dispatch_async(0, 2)))
        };
        release.open();
        drop(first);
        second.join().unwrap().expect("no close: job 2 is let in");
        assert!(d.close().drained);
        log.assert_ran(&[0, 2]);
    });
}

#[test]
fn notified_future_dropped_passes_the_room_on() {
    dropped_notified_model(None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "deadlock"))]
#[cfg_attr(debug_assertions, should_panic)]
fn notified_future_dropped_keeping_the_room_hangs() {
    dropped_notified_model(Some(Fault::AbandonedNotifyLost));
}

// -------------------------------------------------------------------------------------------
// 15. A permit held while its key goes idle and the dispatcher closes.

/// Model 15: job 0's turn ends and the worker sweeps its key, out of work, while a producer
/// takes a permit on that key and uses it (`use_it`) or drops it, racing `close`. A permit
/// taken before close began holds room close waits for, and keeps its key from eviction: its
/// job is accepted and has run by the time close returns. Twin: the sweep evicts a key in
/// which a permit holds room ([`Fault::SweepEvictsReservedKeys`]), and the permit's job is
/// refused as if the dispatcher had closed under it.
fn permit_model(use_it: bool, fault: Option<Fault>) {
    explore(2, fault, move || {
        let log = Log::default();
        let d = log.dispatcher(1, 1);
        d.dispatch(0, 0).unwrap();
        let producer = {
            let d = d.share();
            thread::spawn(move || {
                let permit = d.try_reserve(&0)?;
                if !use_it {
                    return None;
                }
                permit
                    .dispatch(1)
                    .expect("a permit taken before close began is honoured");
                Some(1)
            })
        };
        let closer = {
            let d = d.share();
            thread::spawn(move || d.close().drained)
        };
        let accepted = producer.join().unwrap();
        assert!(closer.join().unwrap());
        let mut ran = vec![0];
        ran.extend(accepted);
        log.assert_ran(&ran);
        assert_eq!(d.stats().keys, 0, "a key outlived the close");
    });
}

#[test]
fn permit_used_across_its_keys_idling_and_close_is_honoured() {
    permit_model(true, None);
}

#[test]
fn permit_dropped_racing_close_gives_its_room_back() {
    permit_model(false, None);
}

#[test]
#[cfg_attr(not(debug_assertions), should_panic(expected = "honoured"))]
#[cfg_attr(debug_assertions, should_panic)]
fn sweep_evicting_a_reserved_key_refuses_the_permits_job() {
    permit_model(true, Some(Fault::SweepEvictsReservedKeys));
}
