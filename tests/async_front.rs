//! The async front: `dispatch_async` is cancel-safe and waits in the same line as threads
//! blocked in `dispatch`; a notified future that is dropped passes its room on; `close` wakes
//! threads and tasks alike; on a worker thread nothing async waits; `JobHandle` gives a spawned
//! job's value, panic or hand-back; permits hold room that `close` waits for; the async
//! barriers wait for what they cover.

mod common;

use common::{wait_for, DropToken, Drops, Job, Latch, Recorder, Watchdog, HANG};
use keyed_dispatch::{
    Bound, BoxedJob, Builder, DispatchError, Dispatcher, JobError, JobHandle, WaitError,
};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    task::{Context, Poll, Wake, Waker},
};
use tokio::runtime::{Builder as Runtime, Runtime as Rt};

/// A runtime on the calling thread.
fn current_thread() -> Rt {
    Runtime::new_current_thread().build().unwrap()
}

/// A runtime of two worker threads.
fn multi_thread() -> Rt {
    Runtime::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// A waker that records that it was woken, for futures the test polls by hand.
#[derive(Debug, Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Woken {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether it was woken since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Polls `future` once, with a waker that sets `woken`.
fn poll_once<F: Future + Unpin>(future: &mut F, woken: &Arc<Woken>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::clone(woken));
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// Waits for `future`, polled once already with `woken`, to be woken, and polls it again,
/// until it is ready. Hangs (and the watchdog fails the test) if no wake-up comes.
fn wait_ready<F: Future + Unpin>(future: &mut F, woken: &Arc<Woken>) -> F::Output {
    loop {
        wait_for(|| woken.take());
        if let Poll::Ready(output) = poll_once(future, woken) {
            return output;
        }
    }
}

/// A dispatcher on one worker whose handler passes each job to `run`, reports that it ran and
/// then holds it until the test sends a token on the returned sender (dropping the sender lets
/// every job through).
fn stepped<J: Send + 'static>(
    builder: Builder<u64, J>,
    run: impl Fn(u64, J) + Send + Sync + 'static,
) -> (Dispatcher<u64, J>, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (started, starts) = mpsc::channel();
    let (release, tokens) = mpsc::channel::<()>();
    let (started, tokens) = (Mutex::new(started), Mutex::new(tokens));
    let d = builder
        .workers(1)
        .build(move |key: &u64, job: J| {
            run(*key, job);
            let _ = started.lock().unwrap().send(());
            let _ = tokens.lock().unwrap().recv();
        })
        .unwrap();
    (d, starts, release)
}

/// A dispatcher whose handler records each job and holds the jobs `hold` picks until `latch`
/// opens.
fn recording(
    builder: Builder<u64, Job>,
    latch: &Arc<Latch>,
    hold: fn(&Job) -> bool,
) -> (Dispatcher<u64, Job>, Arc<Recorder>) {
    let recorder = Recorder::new();
    let (r, held) = (Arc::clone(&recorder), Arc::clone(latch));
    let d = builder
        .build(move |key: &u64, job: Job| {
            if hold(&job) {
                held.wait();
            }
            r.record(key, job);
        })
        .unwrap();
    (d, recorder)
}

fn job(producer: usize, key: u64, seq: u64) -> Job {
    Job { producer, key, seq }
}

// ---- Cancel safety ----------------------------------------------------------------------------

/// What became of each job of the storm, by id.
#[derive(Debug)]
struct Ledger {
    accepted: Vec<AtomicU8>,
    ran: Vec<AtomicU8>,
    dropped_unrun: Vec<AtomicU8>,
}

impl Ledger {
    fn new(jobs: usize) -> Arc<Self> {
        let zeros = || (0..jobs).map(|_| AtomicU8::new(0)).collect();
        Arc::new(Ledger {
            accepted: zeros(),
            ran: zeros(),
            dropped_unrun: zeros(),
        })
    }
}

/// A storm job: counts its run in the ledger, and its drop there if it never ran (and in a
/// `Drops` either way).
#[derive(Debug)]
struct Tracked {
    id: usize,
    ran: bool,
    ledger: Arc<Ledger>,
    _token: DropToken,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ran {
            self.ledger.dropped_unrun[self.id].fetch_add(1, Ordering::SeqCst);
        }
    }
}

const STORM_KEY: u64 = 3;

/// Dispatches the jobs `ids` one by one, each in a `select!` against a branch that wins
/// whenever the dispatch is pending: `std::future::ready`, or (with `yield_first`) a
/// `yield_now` that is pending once, so that the dispatch is polled again after its task was
/// rescheduled (and may have been notified meanwhile) before it is dropped. Returns how many
/// were accepted and how many dropped.
async fn storm(
    d: Dispatcher<u64, Tracked>,
    ledger: Arc<Ledger>,
    drops: Arc<Drops>,
    ids: std::ops::Range<usize>,
    yield_first: bool,
) -> (usize, usize) {
    let (mut accepted, mut cancelled) = (0, 0);
    for id in ids {
        let job = Tracked {
            id,
            ran: false,
            ledger: Arc::clone(&ledger),
            _token: drops.token(),
        };
        let dispatch = d.dispatch_async(STORM_KEY, job);
        let outcome = if yield_first {
            tokio::select! {
                biased;
                result = dispatch => Some(result),
                () = tokio::task::yield_now() => None,
            }
        } else {
            tokio::select! {
                biased;
                result = dispatch => Some(result),
                () = std::future::ready(()) => None,
            }
        };
        match outcome {
            Some(Ok(())) => {
                ledger.accepted[id].store(1, Ordering::SeqCst);
                accepted += 1;
            }
            Some(Err(err)) => panic!("job {id} refused: {err:?}"),
            None => cancelled += 1,
        }
    }
    (accepted, cancelled)
}

#[test]
fn dispatch_futures_dropped_in_a_select_storm_lose_and_duplicate_no_job() {
    let _watchdog = Watchdog::new("select storm", HANG);
    let jobs = common::scaled(1_000_000);
    let ledger = Ledger::new(jobs);
    let drops = Drops::new();
    let d = Dispatcher::builder()
        .workers(1)
        .key_capacity(1)
        .build(|_: &u64, mut job: Tracked| {
            job.ran = true;
            job.ledger.ran[job.id].fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let rt = multi_thread();
    let half = jobs / 2;
    let (first, second) = rt.block_on(async {
        let first = tokio::spawn(storm(
            d.clone(),
            Arc::clone(&ledger),
            Arc::clone(&drops),
            0..half,
            false,
        ));
        let second = tokio::spawn(storm(
            d.clone(),
            Arc::clone(&ledger),
            Arc::clone(&drops),
            half..jobs,
            true,
        ));
        (first.await.unwrap(), second.await.unwrap())
    });
    drop(rt);
    assert_eq!(
        d.stats().blocked,
        0,
        "a dropped future still counts as blocked"
    );
    let report = d.close();
    let accepted = first.0 + second.0;
    let cancelled = first.1 + second.1;
    assert_eq!(accepted + cancelled, jobs);
    assert!(
        accepted > 0 && cancelled > 0,
        "the storm must see both outcomes: {accepted} accepted, {cancelled} dropped"
    );
    let count =
        |of: &[AtomicU8]| -> u64 { of.iter().map(|n| u64::from(n.load(Ordering::SeqCst))).sum() };
    let ran = count(&ledger.ran);
    assert_eq!(ran, report.stats.completed);
    assert_eq!(ran, report.stats.dispatched);
    assert_eq!(
        ran, accepted as u64,
        "accepted jobs lost, or dropped ones run"
    );
    assert_eq!(count(&ledger.dropped_unrun), cancelled as u64);
    let wrong = (0..jobs).find(|&id| {
        let accepted = ledger.accepted[id].load(Ordering::SeqCst);
        let ran = ledger.ran[id].load(Ordering::SeqCst);
        let dropped = ledger.dropped_unrun[id].load(Ordering::SeqCst);
        (ran, dropped) != (accepted, 1 - accepted)
    });
    if let Some(id) = wrong {
        panic!(
            "job {id}: accepted {}, ran {} times, dropped unrun {} times",
            ledger.accepted[id].load(Ordering::SeqCst),
            ledger.ran[id].load(Ordering::SeqCst),
            ledger.dropped_unrun[id].load(Ordering::SeqCst)
        );
    }
    assert_eq!(drops.created(), jobs);
    assert_eq!(drops.alive(), 0, "job values leaked");
}

// ---- One line for threads and tasks -----------------------------------------------------------

#[test]
fn sync_and_async_producers_share_one_line_for_a_full_key() {
    let _watchdog = Watchdog::new("one line", HANG);
    const KEY: u64 = 1;
    const N: u64 = 200;
    let recorder = Recorder::new();
    let r = Arc::clone(&recorder);
    // One job per batch: each job that ends frees its slot at once (a batch's jobs keep
    // theirs until the batch ends), so each release below frees exactly one.
    let builder = Dispatcher::builder().key_capacity(1).jobs_per_turn(1);
    let (d, started, release) = stepped(builder, move |key, job| r.record(&key, job));
    let accepted = [AtomicU64::new(0), AtomicU64::new(0)];
    // Producers that have jobs left to dispatch.
    let producing = || {
        accepted
            .iter()
            .filter(|n| n.load(Ordering::SeqCst) < N)
            .count()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for seq in 0..N {
                d.dispatch(KEY, job(0, KEY, seq)).unwrap();
                accepted[0].fetch_add(1, Ordering::SeqCst);
            }
        });
        s.spawn(|| {
            current_thread().block_on(async {
                for seq in 0..N {
                    d.dispatch_async(KEY, job(1, KEY, seq)).await.unwrap();
                    accepted[1].fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        // One job at a time: each is let go only once the slot its predecessor freed has been
        // taken (the running job and one queued are all accepted so far) and every producer
        // with jobs left waits for room.
        for ran in 1..=2 * N {
            started.recv().unwrap();
            wait_for(|| {
                let taken: u64 = accepted.iter().map(|n| n.load(Ordering::SeqCst)).sum();
                taken == (ran + 1).min(2 * N) && d.stats().blocked == producing()
            });
            release.send(()).unwrap();
        }
    });
    assert_eq!(d.close().stats.completed, 2 * N);
    let all: Vec<_> = (0..2)
        .flat_map(|p| (0..N).map(move |seq| job(p, KEY, seq)))
        .collect();
    recorder.check(&all);
    // The key's jobs run in the order they were accepted. Served first come, first served,
    // the two producers take turns; a free-for-all could hand most slots to the thread.
    let runs = recorder.runs_of(KEY);
    let first_half = &runs[..N as usize];
    for producer in 0..2 {
        let served = first_half
            .iter()
            .filter(|job| job.producer == producer)
            .count() as u64;
        assert!(
            served >= N / 4,
            "producer {producer} had {served} of the first {N} slots: {:?}",
            first_half
                .iter()
                .map(|job| job.producer)
                .collect::<Vec<_>>()
        );
    }
}

// ---- A dropped, notified future passes its room on --------------------------------------------

#[test]
fn a_notified_future_dropped_before_its_next_poll_passes_the_room_on() {
    let _watchdog = Watchdog::new("notified then dropped", HANG);
    const KEY: u64 = 4;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    // One job per batch, so that job 0's end frees the slot job 1 held.
    let (d, started, release) = stepped(
        Dispatcher::builder().key_capacity(1).jobs_per_turn(1),
        move |_, (id, _token): (u32, DropToken)| r.lock().unwrap().push(id),
    );
    let drops = Drops::new();
    let drops_of_a = Drops::new();
    d.dispatch(KEY, (0, drops.token())).unwrap();
    started.recv().unwrap(); // job 0 runs, held
    d.dispatch(KEY, (1, drops.token())).unwrap(); // job 1 fills the key
    let (woken_a, woken_b) = (Woken::new(), Woken::new());
    let mut a = d.dispatch_async(KEY, (100, drops_of_a.token()));
    assert!(poll_once(&mut a, &woken_a).is_pending());
    let mut b = d.dispatch_async(KEY, (200, drops.token()));
    assert!(poll_once(&mut b, &woken_b).is_pending());
    assert_eq!(d.stats().blocked, 2);

    release.send(()).unwrap(); // job 0 ends; job 1 starts and frees the slot
    started.recv().unwrap();
    wait_for(|| woken_a.is_set());
    assert!(!woken_b.is_set(), "the slot went to the later waiter");
    drop(a);
    assert_eq!(
        (drops_of_a.created(), drops_of_a.alive()),
        (1, 0),
        "A's job must be dropped once with A"
    );
    current_thread().block_on(b).unwrap();
    assert_eq!(d.stats().blocked, 0);

    drop(release); // lets every job through
    let report = d.close();
    assert_eq!(report.stats.completed, 3);
    assert_eq!(*ran.lock().unwrap(), [0, 1, 200], "A's job ran");
    assert_eq!(drops.alive(), 0);
}

// ---- close wakes every waiter -----------------------------------------------------------------

#[test]
fn close_wakes_every_waiting_thread_and_task_with_its_job() {
    let _watchdog = Watchdog::new("close wakes all", HANG);
    const KEY: u64 = 2;
    const THREADS: u64 = 3;
    const TASKS: u64 = 3;
    let latch = Latch::new();
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let held = Arc::clone(&latch);
    let d = Dispatcher::builder()
        .workers(1)
        .key_capacity(0)
        .build(move |_: &u64, _: u64| {
            started.lock().unwrap().send(()).unwrap();
            held.wait();
        })
        .unwrap();
    d.dispatch(KEY, 0).unwrap();
    starts.recv().unwrap(); // the key is full
    let rt = multi_thread();
    let d = &d;
    std::thread::scope(|s| {
        let threads: Vec<_> = (1..=THREADS)
            .map(|id| (id, s.spawn(move || d.dispatch(KEY, id))))
            .collect();
        let tasks: Vec<_> = (THREADS + 1..=THREADS + TASKS)
            .map(|id| {
                let d = d.clone();
                (id, rt.spawn(async move { d.dispatch_async(KEY, id).await }))
            })
            .collect();
        wait_for(|| d.stats().blocked == (THREADS + TASKS) as usize);
        // The held job keeps `close` draining: only a close that wakes the waiters at once
        // lets them return before the latch opens.
        let closer = s.spawn(|| d.close());
        for (id, thread) in threads {
            let err = thread
                .join()
                .unwrap()
                .expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (KEY, id));
        }
        for (id, task) in tasks {
            let err = rt
                .block_on(task)
                .unwrap()
                .expect_err("accepted after close began");
            assert!(err.is_closed(), "{err:?}");
            assert_eq!(err.into_inner(), (KEY, id));
        }
        latch.open();
        let report = closer.join().unwrap();
        assert!(report.drained);
        assert_eq!((report.stats.completed, report.stats.blocked), (1, 0));
    });
}

// ---- On a worker thread -----------------------------------------------------------------------

/// What the async calls gave inside a handler.
#[derive(Debug)]
struct InHandler {
    dispatch: Result<(), DispatchError<u64, u64>>,
    wait_idle: Result<(), WaitError>,
    flush: Result<(), WaitError>,
    group: Result<(), WaitError>,
    reserve: Result<(), WaitError>,
}

#[test]
fn async_calls_on_a_worker_thread_refuse_instead_of_waiting() {
    let _watchdog = Watchdog::new("async in handler", HANG);
    const CHECKER: u64 = 1;
    const FULL: u64 = 2;
    const ROOMY: u64 = 3;
    let me: Arc<Mutex<Weak<Dispatcher<u64, u64>>>> = Arc::default();
    let (outcomes, outcome) = mpsc::channel();
    let outcomes = Mutex::new(outcomes);
    let latch = Latch::new();
    let (handle, held) = (Arc::clone(&me), Arc::clone(&latch));
    let d = Arc::new(
        Dispatcher::builder()
            .workers(1)
            .key_capacity(1)
            .build(move |key: &u64, _: u64| {
                if *key != CHECKER {
                    return;
                }
                held.wait();
                let d = handle.lock().unwrap().upgrade().unwrap();
                let rt = current_thread();
                let group = d.group();
                group.try_dispatch(ROOMY, 0).unwrap();
                let seen = InHandler {
                    dispatch: rt.block_on(d.dispatch_async(FULL, 99)),
                    wait_idle: rt.block_on(d.wait_idle_async()),
                    flush: rt.block_on(d.flush_key_async(&FULL)),
                    group: rt.block_on(group.wait_async()).map(drop),
                    reserve: rt.block_on(d.reserve(&FULL)).map(drop),
                };
                outcomes.lock().unwrap().send(seen).unwrap();
            })
            .unwrap(),
    );
    *me.lock().unwrap() = Arc::downgrade(&d);
    // The one worker runs the checker, so FULL's jobs wait: two fill it.
    d.dispatch(CHECKER, 0).unwrap();
    d.dispatch(FULL, 1).unwrap();
    d.dispatch(FULL, 2).unwrap();
    assert!(matches!(
        d.try_dispatch(FULL, 3),
        Err(DispatchError::Full {
            bound: Bound::Key,
            ..
        })
    ));
    latch.open();
    let seen = outcome.recv().unwrap();
    match seen.dispatch {
        Err(DispatchError::Full {
            key: FULL,
            job: 99,
            bound: Bound::Key,
        }) => {}
        other => panic!("dispatch_async in a handler: expected Full(2, 99), got {other:?}"),
    }
    assert_eq!(seen.wait_idle, Err(WaitError::WouldDeadlock));
    assert_eq!(seen.flush, Err(WaitError::WouldDeadlock));
    assert_eq!(seen.group, Err(WaitError::WouldDeadlock));
    assert_eq!(seen.reserve, Err(WaitError::WouldDeadlock));
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.refused), (4, 2));
}

// ---- JobHandle --------------------------------------------------------------------------------

fn spawner(workers: usize) -> Dispatcher<u64, BoxedJob> {
    Dispatcher::builder()
        .workers(workers)
        .build_spawner()
        .unwrap()
}

#[test]
fn job_handle_gives_the_value_awaited_or_joined() {
    let _watchdog = Watchdog::new("handle value", HANG);
    let d = spawner(2);
    let awaited = d.spawn_with_result(1, || 6 * 7).unwrap();
    assert_eq!(current_thread().block_on(awaited).unwrap(), 42);
    let joined = d.spawn_with_result(2, || String::from("joined")).unwrap();
    assert_eq!(joined.join().unwrap(), "joined");

    // A held job's handle is not finished, and an awaiting task is woken when it is.
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let mut pending = d
        .spawn_with_result(3, move || {
            held.wait();
            "late"
        })
        .unwrap();
    let woken = Woken::new();
    assert!(poll_once(&mut pending, &woken).is_pending());
    assert!(!pending.is_finished());
    latch.open();
    assert_eq!(wait_ready(&mut pending, &woken).unwrap(), "late");

    // Many handles awaited by tasks of a multi-thread runtime: each its own value.
    let handles: Vec<JobHandle<u64>> = (0..100)
        .map(|n| d.spawn_with_result(n % 7, move || n * 2).unwrap())
        .collect();
    let values = multi_thread().block_on(async {
        let tasks: Vec<_> = handles.into_iter().map(tokio::spawn).collect();
        let mut values = Vec::new();
        for task in tasks {
            values.push(task.await.unwrap().unwrap());
        }
        values
    });
    assert_eq!(values, (0..100).map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(d.close().stats.completed, 103);
}

#[test]
fn job_handle_gives_the_panic_payload_and_the_panic_is_counted() {
    let _watchdog = Watchdog::new("handle panic", HANG);
    let d = spawner(2);
    let rt = current_thread();
    let awaited = d
        .spawn_with_result(5, || -> u32 { panic!("boom") })
        .unwrap();
    match rt.block_on(awaited) {
        Err(JobError::Panicked(payload)) => {
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let n = 2; // not a literal: the payload is a formatted `String`
    let joined = d
        .spawn_with_result(5, move || -> u32 { panic!("boom {n}") })
        .unwrap();
    match joined.join() {
        Err(JobError::Panicked(payload)) => {
            assert_eq!(
                payload.downcast_ref::<String>().map(String::as_str),
                Some("boom 2")
            );
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The key goes on.
    let after = d.spawn_with_result(5, || 7).unwrap();
    assert_eq!(rt.block_on(after).unwrap(), 7);
    rt.block_on(d.flush_key_async(&5)).unwrap();
    let stats = d.stats();
    assert_eq!((stats.panicked, stats.completed), (2, 3));
    d.close();
}

#[test]
fn dropping_a_job_handle_does_not_cancel_the_job() {
    let _watchdog = Watchdog::new("handle dropped", HANG);
    let d = spawner(1);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    d.spawn(1, move || held.wait()).unwrap();
    let (effects, effect) = mpsc::channel();
    let unawaited = {
        let effects = effects.clone();
        d.spawn_with_result(1, move || effects.send("unawaited").unwrap())
            .unwrap()
    };
    let mut awaited = d
        .spawn_with_result(1, move || effects.send("awaited once").unwrap())
        .unwrap();
    assert!(poll_once(&mut awaited, &Woken::new()).is_pending());
    drop(unawaited);
    drop(awaited); // leaves the handle's line
    latch.open();
    assert_eq!(effect.recv().unwrap(), "unawaited");
    assert_eq!(effect.recv().unwrap(), "awaited once");
    assert_eq!(d.close().stats.completed, 3);
}

#[test]
fn a_job_handed_back_by_close_now_resolves_its_handle_handed_back() {
    let _watchdog = Watchdog::new("handle handed back", HANG);
    let d = spawner(1);
    let latch = Latch::new();
    let held = Arc::clone(&latch);
    let (started, start) = mpsc::channel();
    d.spawn(4, move || {
        started.send(()).unwrap();
        held.wait();
    })
    .unwrap();
    start.recv().unwrap();
    let mut awaited = d.spawn_with_result(4, || 1).unwrap();
    let joined = d.spawn_with_result(4, || 2).unwrap();
    let woken = Woken::new();
    assert!(poll_once(&mut awaited, &woken).is_pending());
    let left = std::thread::scope(|s| {
        // The running job ends once close_now has begun.
        s.spawn(|| {
            wait_for(|| d.is_closed());
            latch.open();
        });
        d.close_now().unwrap()
    });
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].0, left[0].1.len()), (4, 2));
    assert_eq!(d.stats().handed_back, 2);
    assert!(!awaited.is_finished() && !joined.is_finished());
    drop(left);
    assert!(awaited.is_finished() && joined.is_finished());
    assert!(matches!(
        wait_ready(&mut awaited, &woken),
        Err(JobError::HandedBack)
    ));
    assert!(matches!(joined.join(), Err(JobError::HandedBack)));
}

// ---- Permits ----------------------------------------------------------------------------------

#[test]
fn a_permits_job_runs_in_order_with_the_keys_other_jobs() {
    let _watchdog = Watchdog::new("permit order", HANG);
    const KEY: u64 = 6;
    let latch = Latch::new();
    let (d, recorder) = recording(Dispatcher::builder().workers(2), &latch, |job| job.seq == 0);
    current_thread().block_on(async {
        d.dispatch_async(KEY, job(0, KEY, 0)).await.unwrap();
        let permit = d.reserve(&KEY).await.unwrap();
        assert_eq!(*permit.key(), KEY);
        // The permit's job goes behind the jobs dispatched before it, not before it was held.
        d.dispatch_async(KEY, job(0, KEY, 1)).await.unwrap();
        permit.dispatch(job(0, KEY, 2)).unwrap();
        d.try_reserve(&KEY)
            .expect("room for a job")
            .dispatch(job(0, KEY, 3))
            .unwrap();
        d.dispatch_async(KEY, job(0, KEY, 4)).await.unwrap();
        latch.open();
        d.flush_key_async(&KEY).await.unwrap();
    });
    let seqs: Vec<_> = recorder.runs_of(KEY).iter().map(|job| job.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert_eq!(d.close().stats.completed, 5);
}

#[test]
fn a_held_permit_keeps_a_full_key_full_until_dropped() {
    let _watchdog = Watchdog::new("permit room", HANG);
    const KEY: u64 = 7;
    let latch = Latch::new();
    let (d, recorder) = recording(
        Dispatcher::builder().workers(1).key_capacity(1),
        &latch,
        |job| job.seq == 0,
    );
    d.dispatch(KEY, job(0, KEY, 0)).unwrap();
    wait_for(|| d.stats().running == 1); // job 0 runs, held
    let permit = d.try_reserve(&KEY).expect("room for one job");
    assert!(d.try_reserve(&KEY).is_none());
    assert!(matches!(
        d.try_dispatch(KEY, job(0, KEY, 1)),
        Err(DispatchError::Full {
            bound: Bound::Key,
            ..
        })
    ));
    std::thread::scope(|s| {
        let (returned, returns) = mpsc::channel();
        let d = &d;
        s.spawn(move || {
            let result = d.dispatch(KEY, job(1, KEY, 0));
            returned.send(result.is_ok()).unwrap();
        });
        wait_for(|| d.stats().blocked == 1);
        assert!(returns.try_recv().is_err(), "dispatched past a held permit");
        drop(permit);
        assert!(
            returns.recv().unwrap(),
            "the dropped permit's room went unused"
        );
    });
    latch.open();
    assert_eq!(d.close().stats.completed, 2);
    recorder.check(&[job(0, KEY, 0), job(1, KEY, 0)]);
}

#[test]
fn close_waits_for_an_outstanding_permit() {
    let _watchdog = Watchdog::new("close waits permit", HANG);
    const KEY: u64 = 8;
    let (d, recorder) = recording(Dispatcher::builder().workers(1), &Latch::new(), |_| false);
    let permit = d.try_reserve(&KEY).expect("room");
    std::thread::scope(|s| {
        let (reports, report) = mpsc::channel();
        let d = &d;
        s.spawn(move || reports.send(d.close()).unwrap());
        wait_for(|| d.is_closed());
        assert!(
            report.try_recv().is_err(),
            "close returned while a permit was held"
        );
        assert!(d.try_dispatch(KEY, job(0, KEY, 1)).unwrap_err().is_closed());
        assert!(d.try_reserve(&KEY).is_none());
        permit.dispatch(job(0, KEY, 0)).unwrap();
        let report = report.recv().unwrap();
        assert!(report.drained);
        assert_eq!(report.stats.completed, 1);
    });
    recorder.check(&[job(0, KEY, 0)]);
}

#[test]
fn a_permit_used_after_close_now_began_hands_the_job_back() {
    let _watchdog = Watchdog::new("permit after close_now", HANG);
    const KEY: u64 = 9;
    let (d, recorder) = recording(Dispatcher::builder().workers(1), &Latch::new(), |_| false);
    let permit = d.try_reserve(&KEY).expect("room");
    let left = std::thread::scope(|s| {
        let closer = s.spawn(|| d.close_now());
        wait_for(|| d.is_closed());
        match permit.dispatch(job(0, KEY, 0)) {
            Err(DispatchError::Closed { key, job: back }) => {
                assert_eq!((key, back), (KEY, job(0, KEY, 0)));
            }
            other => panic!("expected Closed with the job, got {other:?}"),
        }
        closer.join().unwrap().unwrap()
    });
    assert!(left.iter().all(|(_, jobs)| jobs.is_empty()), "{left:?}");
    assert_eq!(d.stats().completed, 0);
    recorder.check(&[]);
}

// ---- Barriers ---------------------------------------------------------------------------------

const TASKS: usize = 8;

/// Spawns `TASKS` tasks, task `p` dispatching `jobs` jobs on key `p` with `dispatch_async`,
/// in order; each stops at the first refusal, which must be `Closed` with its job. Returns the
/// join handles, giving each task's accepted jobs.
fn dispatching_tasks(
    rt: &Rt,
    d: &Dispatcher<u64, Job>,
    jobs: u64,
) -> Vec<tokio::task::JoinHandle<Vec<Job>>> {
    (0..TASKS)
        .map(|p| {
            let d = d.clone();
            rt.spawn(async move {
                let mut accepted = Vec::new();
                for seq in 0..jobs {
                    let job = job(p, p as u64, seq);
                    match d.dispatch_async(job.key, job).await {
                        Ok(()) => accepted.push(job),
                        Err(DispatchError::Closed { job: back, .. }) => {
                            assert_eq!(back, job);
                            break;
                        }
                        Err(err) => panic!("refused: {err:?}"),
                    }
                }
                accepted
            })
        })
        .collect()
}

fn join_all(rt: &Rt, tasks: Vec<tokio::task::JoinHandle<Vec<Job>>>) -> Vec<Job> {
    rt.block_on(async {
        let mut accepted = Vec::new();
        for task in tasks {
            accepted.extend(task.await.unwrap());
        }
        accepted
    })
}

/// The key whose first job `recording` holds in the barrier tests, apart from the tasks' keys.
const HELD: u64 = 100;

fn held_job(job: &Job) -> bool {
    job.key == HELD
}

#[test]
fn group_wait_async_returns_once_every_job_of_many_tasks_ran() {
    let _watchdog = Watchdog::new("group wait_async", HANG);
    let latch = Latch::new();
    let (d, recorder) = recording(Dispatcher::builder().workers(2), &latch, held_job);
    let group = d.group();
    let jobs = common::scaled(2_000) as u64;
    let rt = multi_thread();
    group.try_dispatch(HELD, job(TASKS, HELD, 0)).unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|p| {
            let group = group.clone();
            rt.spawn(async move {
                for seq in 0..jobs {
                    group.try_dispatch(p as u64, job(p, p as u64, seq)).unwrap();
                    if seq % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    rt.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = TASKS as u64 * jobs + 1;
    // Waiters polled by hand while the held job keeps the group pending, and one task.
    let woken: Vec<_> = (0..3).map(|_| Woken::new()).collect();
    let mut waits: Vec<_> = woken
        .iter()
        .map(|woken| {
            let mut wait = Box::pin(group.wait_async());
            assert!(poll_once(&mut wait, woken).is_pending());
            wait
        })
        .collect();
    let waiting_task = {
        let (group, recorder) = (group.clone(), Arc::clone(&recorder));
        rt.spawn(async move {
            let report = group.wait_async().await.unwrap();
            (report, recorder.count())
        })
    };
    latch.open();
    for (wait, woken) in waits.iter_mut().zip(&woken) {
        let report = wait_ready(wait, woken).unwrap();
        assert_eq!((report.dispatched, report.completed), (total, total));
    }
    let (report, ran) = rt.block_on(waiting_task).unwrap();
    assert_eq!((report.completed, ran as u64), (total, total));
    let mut accepted: Vec<_> = (0..TASKS)
        .flat_map(|p| (0..jobs).map(move |seq| job(p, p as u64, seq)))
        .collect();
    accepted.push(job(TASKS, HELD, 0));
    recorder.check(&accepted);
    d.close();
}

#[test]
fn flush_key_async_waits_for_the_keys_jobs_dispatched_before_it() {
    let _watchdog = Watchdog::new("flush_key_async", HANG);
    const KEY: u64 = 0; // task 0's key
    let latch = Latch::new();
    // Key 0's first job is held: task 0 fills the key and waits for room, while the other
    // tasks' keys flow.
    let (d, recorder) = recording(
        Dispatcher::builder().workers(2).key_capacity(4),
        &latch,
        |job| job.key == KEY && job.seq == 0,
    );
    let jobs = common::scaled(2_000) as u64;
    let rt = multi_thread();
    let mut tasks = dispatching_tasks(&rt, &d, jobs);
    let first = tasks.remove(0);
    let mut accepted = join_all(&rt, tasks);
    wait_for(|| d.stats().blocked == 1);
    // Task 0 waits for room in its held key, so the jobs it had dispatched are known.
    let dispatched = d.stats().dispatched - (TASKS as u64 - 1) * jobs;
    let before: Vec<_> = (0..dispatched).map(|seq| job(0, KEY, seq)).collect();
    let woken = Woken::new();
    let mut flush = Box::pin(d.flush_key_async(&KEY));
    assert!(poll_once(&mut flush, &woken).is_pending());
    // Another key's flush does not wait for the held one.
    rt.block_on(d.flush_key_async(&1)).unwrap();
    assert_eq!(recorder.runs_of(1).len() as u64, jobs);
    latch.open();
    wait_ready(&mut flush, &woken).unwrap();
    let ran = recorder.runs_of(KEY);
    assert!(
        ran.len() >= before.len() && ran[..before.len()] == before[..],
        "flush returned before the key's jobs ran: {ran:?}"
    );
    accepted.extend(join_all(&rt, vec![first]));
    assert_eq!(accepted.len() as u64, TASKS as u64 * jobs);
    assert_eq!(d.close().stats.completed, accepted.len() as u64);
    recorder.check(&accepted);
}

#[test]
fn wait_idle_async_returns_with_no_job_and_no_key_left() {
    let _watchdog = Watchdog::new("wait_idle_async", HANG);
    let latch = Latch::new();
    let (d, recorder) = recording(
        Dispatcher::builder().workers(2).key_capacity(4),
        &latch,
        held_job,
    );
    let jobs = common::scaled(2_000) as u64;
    let rt = multi_thread();
    d.dispatch(HELD, job(TASKS, HELD, 0)).unwrap();
    let tasks = dispatching_tasks(&rt, &d, jobs);
    let mut accepted = join_all(&rt, tasks);
    accepted.push(job(TASKS, HELD, 0));
    let woken = Woken::new();
    let mut idle = Box::pin(d.wait_idle_async());
    assert!(poll_once(&mut idle, &woken).is_pending());
    latch.open();
    wait_ready(&mut idle, &woken).unwrap();
    let stats = d.stats();
    assert_eq!((stats.queued, stats.running, stats.keys), (0, 0, 0));
    assert_eq!(stats.completed, accepted.len() as u64);
    // The same from a task, with nothing left to wait for.
    rt.block_on(d.wait_idle_async()).unwrap();
    recorder.check(&accepted);
    d.close();
}

#[test]
fn close_async_drains_every_job_accepted_from_racing_tasks() {
    let _watchdog = Watchdog::new("close_async", HANG);
    let latch = Latch::new();
    // Two held jobs, and a third worker for the other keys.
    let (d, recorder) = recording(
        Dispatcher::builder().workers(3).key_capacity(4),
        &latch,
        |job| job.key == HELD || (job.key == 0 && job.seq == 0),
    );
    let jobs = common::scaled(2_000) as u64;
    let rt = multi_thread();
    d.dispatch(HELD, job(TASKS, HELD, 0)).unwrap();
    let tasks = dispatching_tasks(&rt, &d, jobs);
    // Task 0's key is held: it waits for room when close begins, and must be refused.
    wait_for(|| d.stats().blocked >= 1);
    let woken = Woken::new();
    let mut close = Box::pin(d.close_async());
    assert!(poll_once(&mut close, &woken).is_pending());
    assert!(d.is_closed());
    let mut accepted = join_all(&rt, tasks);
    assert!(
        (accepted.iter().filter(|job| job.key == 0).count() as u64) < jobs,
        "task 0 dispatched every job past a held key"
    );
    accepted.push(job(TASKS, HELD, 0));
    assert!(poll_once(&mut close, &woken).is_pending());
    latch.open();
    let report = wait_ready(&mut close, &woken);
    assert!(report.drained);
    assert_eq!(report.stats.completed, accepted.len() as u64);
    assert_eq!((report.stats.keys, report.stats.blocked), (0, 0));
    recorder.check(&accepted);
    let refused = rt.block_on(d.dispatch_async(1, job(0, 1, jobs)));
    assert!(refused.unwrap_err().is_closed());
}

// ---- Found in review: grants and permits across the shutdown, wakers that misbehave ---------

/// A future granted room but not yet polled again holds no slot of the gate, so `close` may
/// drain and finish while the key keeps that room for it: the key is evicted all the same, and
/// the future, polled later, gets `Closed` with its job.
#[test]
fn a_granted_future_not_yet_polled_when_close_drains_gets_its_job_back() {
    let _watchdog = Watchdog::new("granted at close", HANG);
    let (d, started, release) = stepped(Dispatcher::builder().key_capacity(1), |_, _: u32| {});
    d.dispatch(7, 0).unwrap();
    d.dispatch(7, 1).unwrap();
    started.recv().unwrap(); // job 0 runs; job 1 fills the key
    let woken = Arc::new(Woken::default());
    let mut future = d.dispatch_async(7, 2);
    assert!(poll_once(&mut future, &woken).is_pending());
    drop(release); // every job through: the turn's end grants job 2 its room
    wait_for(|| woken.take());
    wait_for(|| d.stats().completed == 2);
    let report = d.close();
    assert!(report.drained);
    assert_eq!(
        report.stats.keys, 0,
        "the key holding the grant was evicted"
    );
    match poll_once(&mut future, &woken) {
        Poll::Ready(Err(err)) => assert_eq!(err.into_inner(), (7, 2)),
        other => panic!("expected Closed with the job, got {other:?}"),
    }
}

/// `close_timeout` and `close_now` do not wait for a permit (which may be held for as long as
/// its holder likes): they return, and the permit's job comes back as `Closed`.
#[test]
fn close_timeout_does_not_wait_for_an_outstanding_permit() {
    let _watchdog = Watchdog::new("close_timeout past a permit", HANG);
    let d = Dispatcher::builder().build(|_: &u32, _: u32| {}).unwrap();
    let permit = d.try_reserve(&1).unwrap();
    std::thread::scope(|s| {
        let closing = s.spawn(|| d.close_timeout(std::time::Duration::from_millis(20)));
        let left = closing.join().unwrap().expect("not on a worker thread");
        assert!(left.is_empty());
    });
    let err = permit
        .dispatch(9)
        .expect_err("closed while the permit was held");
    assert!(err.is_closed());
    assert_eq!(err.into_inner(), (1, 9));
    assert_eq!(d.stats().queued, 0, "the permit's slot was given back");
}

/// A waker that panics is contained: the other waiters of the same wake-up are woken, and the
/// call that woke them finishes its work.
#[test]
fn a_panicking_waker_stops_neither_the_other_wake_ups_nor_cancel_key() {
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a waker that panics");
        }
    }
    let _watchdog = Watchdog::new("panicking waker", HANG);
    let d = Dispatcher::builder()
        .key_capacity(1)
        .build(|_: &u32, _: u32| {})
        .unwrap();
    d.pause_key(&5);
    d.dispatch(5, 0).unwrap();
    d.dispatch(5, 1).unwrap();
    let bad = Waker::from(Arc::new(Panics));
    let mut first = d.dispatch_async(5, 2);
    assert!(Pin::new(&mut first)
        .poll(&mut Context::from_waker(&bad))
        .is_pending());
    let woken = Arc::new(Woken::default());
    let mut second = d.dispatch_async(5, 3);
    assert!(poll_once(&mut second, &woken).is_pending());
    assert_eq!(d.cancel_key(&5).unwrap(), [0, 1]);
    assert!(
        woken.take(),
        "the waiter behind the panicking waker was woken"
    );
    drop((first, second));
    d.resume_key(&5);
    assert!(d.close().drained, "the cancelled jobs left the gate");
}

/// Wakers run outside the map's locks: one that reads the dispatcher's stats (which takes a
/// shard's lock) as `close_now` wakes it does not deadlock.
#[test]
fn wakers_run_outside_the_maps_locks() {
    struct ReadsStats(Dispatcher<u32, u32>, AtomicBool);
    impl Wake for ReadsStats {
        fn wake(self: Arc<Self>) {
            let _ = self.0.stats();
            self.1.store(true, Ordering::SeqCst);
        }
    }
    let _watchdog = Watchdog::new("waker under the map's lock", HANG);
    let d = Dispatcher::builder()
        .key_capacity(1)
        .build(|_: &u32, _: u32| {})
        .unwrap();
    d.pause_key(&5);
    d.dispatch(5, 0).unwrap();
    d.dispatch(5, 1).unwrap();
    let reads = Arc::new(ReadsStats(d.clone(), AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&reads));
    let mut future = d.dispatch_async(5, 2);
    assert!(Pin::new(&mut future)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let left = d.close_now().expect("not on a worker thread");
    assert_eq!(left, [(5, vec![0, 1])]);
    assert!(reads.1.load(Ordering::SeqCst), "the waiting task was woken");
    match Pin::new(&mut future).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(Err(err)) => assert!(err.is_closed()),
        other => panic!("expected Closed, got {other:?}"),
    }
}
