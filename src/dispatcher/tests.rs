//! Unit tests of the handle that reach into the core.

use super::*;
use std::{
    sync::{mpsc, Mutex},
    time::Instant,
};

/// A flush waits for the jobs before it, not for a later job of the same key, even when
/// both are taken in one turn: the barrier completes between them.
#[test]
fn flush_barrier_completes_between_jobs_of_one_turn() {
    let (started, starts) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let (started, held) = (Mutex::new(started), Mutex::new(held));
    let d = Dispatcher::builder()
        .workers(1)
        .build(move |_: &u8, n: u32| {
            started.lock().unwrap().send(n).unwrap();
            if n != 1 {
                held.lock().unwrap().recv().unwrap();
            }
        })
        .unwrap();
    d.dispatch(7, 0).unwrap();
    assert_eq!(starts.recv().unwrap(), 0);
    d.dispatch(7, 1).unwrap();
    // Registered behind jobs 0 and 1; job 2 comes after it.
    let barrier = d.core.flush_barrier(&7).expect("jobs are pending");
    d.dispatch(7, 2).unwrap();
    assert_eq!(barrier.pending(), 1);
    release.send(()).unwrap(); // job 0 finishes; jobs 1 and 2 run in the next turn
    assert_eq!(starts.recv().unwrap(), 1);
    assert_eq!(starts.recv().unwrap(), 2);
    // Job 2 is running and held, yet the barrier behind job 1 is complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(
        barrier.wait(Some(deadline)),
        "the flush waited for a later job"
    );
    assert_eq!(
        d.flush_key_timeout(&7, Duration::ZERO),
        Err(WaitError::Timeout)
    );
    release.send(()).unwrap();
    d.flush_key(&7).unwrap();
    assert!(d.core.flush_barrier(&7).is_none());
    assert_eq!(d.close().stats.completed, 3);
}
