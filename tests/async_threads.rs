//! Waiting for room without a thread: ten thousand tasks waiting in `dispatch_async` on one
//! full key add no thread to the process. A binary of its own, so that no other test's threads
//! come and go during the count.

mod common;

#[cfg(target_os = "linux")]
#[test]
fn ten_thousand_waiting_dispatches_hold_no_thread() {
    use common::{thread_count, wait_for, Job, Latch, Recorder, Watchdog, HANG};
    use keyed_dispatch::Dispatcher;
    use std::sync::Arc;

    const KEY: u64 = 1;
    const TASKS: usize = 10_000;
    const QUEUED: u64 = 4; // the key's capacity, filled before the tasks come
    let _watchdog = Watchdog::new("async threads", HANG);
    let latch = Latch::new();
    let recorder = Recorder::new();
    let (held, r) = (Arc::clone(&latch), Arc::clone(&recorder));
    let d = Dispatcher::builder()
        .workers(2)
        .key_capacity(QUEUED as usize)
        .build(move |key: &u64, job: Job| {
            held.wait();
            r.record(key, job);
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Job 0 runs, held; the next fill the key.
    let filler = |seq| Job {
        producer: TASKS,
        key: KEY,
        seq,
    };
    d.dispatch(KEY, filler(0)).unwrap();
    wait_for(|| d.stats().running == 1);
    for seq in 1..=QUEUED {
        d.dispatch(KEY, filler(seq)).unwrap();
    }
    assert!(d.try_dispatch(KEY, filler(99)).unwrap_err().is_full());
    let threads = thread_count();
    let accepted = rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|producer| {
                let d = d.clone();
                tokio::spawn(async move {
                    let job = Job {
                        producer,
                        key: KEY,
                        seq: 0,
                    };
                    d.dispatch_async(KEY, job).await.map(|()| job)
                })
            })
            .collect();
        while d.stats().blocked < TASKS {
            tokio::task::yield_now().await;
        }
        assert_eq!(d.stats().blocked, TASKS);
        assert_eq!(
            thread_count(),
            threads,
            "waiting dispatches started threads"
        );
        latch.open();
        let mut accepted = Vec::with_capacity(TASKS);
        for task in tasks {
            accepted.push(task.await.unwrap().unwrap());
        }
        accepted
    });
    let report = d.close();
    assert_eq!(report.stats.completed, (TASKS as u64) + QUEUED + 1);
    let mut all = accepted;
    all.extend((0..=QUEUED).map(filler));
    recorder.check(&all);
}
