//! `WorkerPool::close` from two threads at once: each returns only once every job the pool's
//! dispatchers accepted has finished, as one close alone does.

use crate::common::{wait_for, Latch};
use crate::watchdog;
use keyed_dispatch::{Dispatcher, WorkerPool};
use std::sync::{
    atomic::{AtomicBool, Ordering::SeqCst},
    mpsc, Arc,
};

/// The calling thread's id, as `/proc/self/task` names it.
fn current_tid() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link.file_name().expect("a task id");
    tid.to_string_lossy().into_owned()
}

/// Whether thread `tid` of this process is blocked (sleeping) rather than running.
fn blocked(tid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return false; // gone: it returned
    };
    // "tid (name) S ...": the state follows the name's closing parenthesis.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('S' | 'D'))
}

#[test]
#[cfg_attr(miri, ignore = "reads thread states from /proc")]
fn two_concurrent_pool_closes_both_return_after_the_running_job_has_finished() {
    let _watchdog = watchdog("two pool closes");
    let pool = WorkerPool::builder()
        .workers(2)
        .name("hostile-2close")
        .build()
        .unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = mpsc::channel();
    let release = Latch::new();
    let d = {
        let (finished, release) = (Arc::clone(&finished), Arc::clone(&release));
        Dispatcher::builder()
            .pool(&pool)
            .build(move |_: &u64, _: u32| {
                let _ = started_tx.send(());
                release.wait();
                finished.store(true, SeqCst);
            })
            .unwrap()
    };
    d.dispatch(1, 0).unwrap();
    started.recv().unwrap();
    let (first, second) = std::thread::scope(|s| {
        let close = || {
            pool.close();
            finished.load(SeqCst)
        };
        let first = s.spawn(close);
        // The first close has closed the dispatcher, and waits for its job.
        wait_for(|| d.is_closed());
        let (tid_tx, tid) = mpsc::channel();
        let second = s.spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            close()
        });
        let tid = tid.recv().unwrap();
        // Let the second close go as far as it goes: it returns, or it blocks.
        wait_for(|| second.is_finished() || blocked(&tid));
        release.open();
        (first.join().unwrap(), second.join().unwrap())
    });
    assert!(first, "the first close returned before the job finished");
    assert!(
        second,
        "the second, concurrent close returned while an accepted job was still running"
    );
    assert!(d.dispatch(1, 1).unwrap_err().is_closed());
    assert_eq!(d.stats().completed, 1);
}
