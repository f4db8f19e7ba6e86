//! Async handlers (`build_async`, feature `tokio`) under hostile use: jobs that close, drop or
//! wait on their own dispatcher, or dispatch back into it; panics in every place a job's code
//! runs (the handler, a poll, a future's drop, the key's `Clone`, the error's `Drop`, the
//! job's `Clone` when retried); closes racing producers, `close_now` from a plain thread while
//! futures are mid-flight, a cancelled `close_async`; keys whose futures never wait, on one
//! runtime thread shared with another task; backoffs pending at close; and plain threads
//! feeding the dispatcher with blocking calls.
//!
//! Every wait is on a real condition. A wait that would hang on a bug is bounded by
//! [`within`], which fails the test rather than hang it: a hang guard, not a timing check.

mod common;

use common::{runtime, Job, Recorder};
use keyed_dispatch::{DispatchError, Dispatcher, Group, RetryPolicy, WaitError};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::{oneshot, watch};

/// How long a wait may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it has not completed after [`HANG`].
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// A handle that the handler reaches its own dispatcher through, set once built. Emptied at
/// the end of a test, since a handle inside the handler keeps the dispatcher alive.
type Slot<K, J> = Arc<Mutex<Option<Dispatcher<K, J>>>>;

fn handle<K, J>(slot: &Slot<K, J>) -> Dispatcher<K, J> {
    slot.lock().unwrap().clone().expect("set once built")
}

/// Each key's jobs in the order they ran.
type Runs = Arc<Mutex<HashMap<u64, Vec<u64>>>>;

fn push(runs: &Runs, key: u64, job: u64) {
    runs.lock().unwrap().entry(key).or_default().push(job);
}

fn runs_of(runs: &Runs, key: u64) -> Vec<u64> {
    runs.lock().unwrap().get(&key).cloned().unwrap_or_default()
}

#[test]
fn a_job_closing_its_own_dispatcher_returns_at_once_and_the_rest_drain() {
    let rt = runtime(2);
    rt.block_on(async {
        let slot: Slot<u64, u64> = Slot::default();
        let runs = Runs::default();
        let (all_in, all_in_rx) = watch::channel(false);
        let (inside_tx, inside_rx) = oneshot::channel();
        let inside_tx = Arc::new(Mutex::new(Some(inside_tx)));
        let (hslot, hruns) = (Arc::clone(&slot), Arc::clone(&runs));
        let d = Dispatcher::builder()
            .build_async(move |key: u64, job: u64| {
                let (slot, runs, inside_tx) = (
                    Arc::clone(&hslot),
                    Arc::clone(&hruns),
                    Arc::clone(&inside_tx),
                );
                let mut all_in = all_in_rx.clone();
                async move {
                    tokio::task::yield_now().await;
                    if (key, job) == (0, 3) {
                        all_in.wait_for(|all| *all).await.unwrap();
                        let d = handle(&slot);
                        let report = d.close_async().await;
                        let refused = d.dispatch_async(5, 99).await;
                        let sent = inside_tx.lock().unwrap().take().unwrap();
                        sent.send((report.drained, d.is_closed(), refused)).unwrap();
                    }
                    push(&runs, key, job);
                }
            })
            .unwrap();
        *slot.lock().unwrap() = Some(d.clone());
        for job in 0..20 {
            for key in 0..3 {
                d.dispatch_async(key, job).await.unwrap();
            }
        }
        all_in.send(true).unwrap();
        let (drained, closed, refused) = within("the job's close_async", inside_rx).await.unwrap();
        // The job itself was running: its close could not have drained.
        assert!(!drained);
        assert!(closed);
        assert!(matches!(
            refused,
            Err(DispatchError::Closed { key: 5, job: 99 })
        ));
        let refused = d.dispatch_async(1, 100).await.unwrap_err();
        assert!(matches!(
            refused,
            DispatchError::Closed { key: 1, job: 100 }
        ));
        let report = within("close_async", d.close_async()).await;
        assert!(report.drained);
        assert_eq!(report.stats.completed, 60);
        for key in 0..3 {
            assert_eq!(
                runs_of(&runs, key),
                (0..20).collect::<Vec<_>>(),
                "key {key}"
            );
        }
        slot.lock().unwrap().take();
    });
}

#[test]
fn a_job_dispatching_onto_its_own_and_other_keys_gets_room_or_its_job_back() {
    const KEYS: u64 = 4;
    const DEPTH: u64 = 40;
    let rt = runtime(2);
    rt.block_on(async {
        let slot: Slot<u64, u64> = Slot::default();
        let ran = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let full = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let counters = (
            Arc::clone(&slot),
            Arc::clone(&ran),
            Arc::clone(&accepted),
            Arc::clone(&full),
            Arc::clone(&wrong),
        );
        let d = Dispatcher::builder()
            .key_capacity(2)
            .capacity(6)
            .max_in_flight(2)
            .build_async(move |key: u64, depth: u64| {
                let (slot, ran, accepted, full, wrong) = counters.clone();
                async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    if depth == DEPTH {
                        return;
                    }
                    let d = handle(&slot);
                    let next = depth + 1;
                    let tally = |target: u64, sent: Result<(), DispatchError<u64, u64>>| {
                        match sent {
                            Ok(()) => accepted.fetch_add(1, Ordering::SeqCst),
                            Err(DispatchError::Full { key, job, .. })
                                if (key, job) == (target, next) =>
                            {
                                full.fetch_add(1, Ordering::SeqCst)
                            }
                            Err(other) => {
                                wrong.lock().unwrap().push(format!("{other:?}"));
                                0
                            }
                        };
                    };
                    for target in [key, (key + 1) % KEYS] {
                        tally(target, d.dispatch_async(target, next).await);
                    }
                    tokio::task::yield_now().await;
                    // The blocking form, from the job's poll, must not block either.
                    tally(key, d.dispatch(key, next));
                }
            })
            .unwrap();
        *slot.lock().unwrap() = Some(d.clone());
        for key in 0..KEYS {
            d.dispatch_async(key, 0).await.unwrap();
        }
        within("wait_idle_async", d.wait_idle_async())
            .await
            .unwrap();
        let stats = within("close_async", d.close_async()).await.stats;
        slot.lock().unwrap().take();
        assert_eq!(*wrong.lock().unwrap(), Vec::<String>::new());
        let (accepted, full) = (accepted.load(Ordering::SeqCst), full.load(Ordering::SeqCst));
        assert!(
            full > 0,
            "the keys were never full: the test tested nothing"
        );
        assert_eq!(stats.panicked, 0);
        assert_eq!(ran.load(Ordering::SeqCst), KEYS + accepted);
        assert_eq!(stats.completed, KEYS + accepted);
        assert_eq!(stats.refused, full);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_waits_on_its_own_dispatcher_are_refused_rather_than_hang() {
    type Shared = Arc<Mutex<Option<(Dispatcher<u64, u64>, Group<u64, u64>)>>>;
    let shared: Shared = Shared::default();
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let hshared = Arc::clone(&shared);
    let d = Dispatcher::builder()
        .key_capacity(1)
        .build_async(move |key: u64, job: u64| {
            let (shared, tx) = (Arc::clone(&hshared), Arc::clone(&tx));
            async move {
                if job != 1 {
                    return;
                }
                let (d, group) = shared.lock().unwrap().clone().unwrap();
                let mut waits = vec![
                    ("flush_key_async own", d.flush_key_async(&key).await),
                    ("flush_key_async other", d.flush_key_async(&7).await),
                    ("wait_idle_async", d.wait_idle_async().await),
                    ("Group::wait_async", group.wait_async().await.map(drop)),
                    ("reserve on a full key", d.reserve(&9).await.map(drop)),
                ];
                tokio::task::yield_now().await;
                waits.extend([
                    ("flush_key", d.flush_key(&key)),
                    ("wait_idle", d.wait_idle()),
                    ("Group::wait", group.wait().map(drop)),
                    ("close_now", d.close_now().map(drop)),
                    ("cancel_key", d.cancel_key(&key).map(drop)),
                ]);
                let full = d.dispatch_async(9, 50).await;
                tx.lock()
                    .unwrap()
                    .take()
                    .unwrap()
                    .send((waits, full))
                    .unwrap();
            }
        })
        .unwrap();
    let group = d.group();
    *shared.lock().unwrap() = Some((d.clone(), group.clone()));
    // Key 9 is paused and full: it holds one job and one behind it.
    d.pause_key(&9);
    d.dispatch_async(9, 0).await.unwrap();
    d.dispatch_async(9, 2).await.unwrap();
    group.dispatch_async(3, 1).await.unwrap();
    let (waits, full) = within("the job's waits", rx).await.unwrap();
    for (what, result) in waits {
        assert_eq!(result, Err(WaitError::WouldDeadlock), "{what}");
    }
    assert!(matches!(
        full,
        Err(DispatchError::Full {
            key: 9,
            job: 50,
            ..
        })
    ));
    let report = within("Group::wait_async", group.wait_async())
        .await
        .unwrap();
    assert_eq!(report.completed, 1);
    d.resume_key(&9);
    let stats = within("close_async", d.close_async()).await.stats;
    shared.lock().unwrap().take();
    assert_eq!((stats.completed, stats.panicked), (3, 0));
}

/// A key whose `Clone` panics on the fourth, eighth, ... clone of each key: the dispatcher
/// clones the key for each job's handler call (and nowhere else on these paths), so the key's
/// jobs 3, 7, 11, ... never reach the handler.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Touchy(u64);

const TOUCHY_KEYS: usize = 3;
static TOUCHY_CLONES: [AtomicU64; TOUCHY_KEYS] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Clone for Touchy {
    fn clone(&self) -> Self {
        let n = TOUCHY_CLONES[self.0 as usize].fetch_add(1, Ordering::SeqCst);
        if n % 4 == 3 {
            panic!("clone {n} of key {} panics", self.0);
        }
        Touchy(self.0)
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_the_handler_a_poll_and_the_keys_clone_are_counted_and_keys_go_on() {
    const JOBS: u64 = 60;
    for clones in &TOUCHY_CLONES {
        clones.store(0, Ordering::SeqCst);
    }
    let runs = Runs::default();
    let hruns = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .build_async(move |key: Touchy, job: u64| -> BoxedFuture {
            let runs = Arc::clone(&hruns);
            match job % 3 {
                0 => Box::pin(async move { push(&runs, key.0, job) }),
                1 => Box::pin(async move {
                    tokio::task::yield_now().await;
                    panic!("job {job} of key {} panics after a yield", key.0);
                }),
                _ => panic!("the handler panics before making job {job}'s future"),
            }
        })
        .unwrap();
    for job in 0..JOBS {
        for key in 0..TOUCHY_KEYS as u64 {
            d.dispatch_async(Touchy(key), job).await.unwrap();
        }
    }
    let report = within("close_async", d.close_async()).await;
    // Job j of a key gets the key's clone number j: it runs unless the clone panics.
    let expected: Vec<u64> = (0..JOBS).filter(|j| j % 4 != 3 && j % 3 == 0).collect();
    for key in 0..TOUCHY_KEYS as u64 {
        assert_eq!(runs_of(&runs, key), expected, "key {key}");
    }
    let total = JOBS * TOUCHY_KEYS as u64;
    let normal = expected.len() as u64 * TOUCHY_KEYS as u64;
    assert!(report.drained);
    assert_eq!(report.stats.completed, total);
    assert_eq!(report.stats.panicked, total - normal);
}

/// A future that is ready at once and panics when dropped.
struct PanicsWhenDropped;

impl Future for PanicsWhenDropped {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("a job's future panics when dropped");
    }
}

#[tokio::test]
async fn a_future_panicking_in_its_drop_is_counted_and_its_key_goes_on() {
    let runs = Runs::default();
    let hruns = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .build_async(move |key: u64, job: u64| -> BoxedFuture {
            push(&hruns, key, job);
            if job == 2 {
                Box::pin(PanicsWhenDropped)
            } else {
                Box::pin(async {})
            }
        })
        .unwrap();
    for job in 0..5 {
        d.dispatch_async(1, job).await.unwrap();
    }
    let stats = within("close_async", d.close_async()).await.stats;
    assert_eq!(runs_of(&runs, 1), [0, 1, 2, 3, 4]);
    assert_eq!((stats.completed, stats.panicked), (5, 1));
}

/// An error whose `Drop` panics.
#[derive(Debug)]
struct LoudError;

impl fmt::Display for LoudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loud")
    }
}

impl Drop for LoudError {
    fn drop(&mut self) {
        panic!("an error panics when dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_panicking_in_its_drop_is_contained_and_its_key_goes_on() {
    let runs = Runs::default();
    let hruns = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .build_async(move |key: u64, job: u64| {
            let runs = Arc::clone(&hruns);
            async move {
                push(&runs, key, job);
                if job == 1 {
                    return Err(LoudError);
                }
                Ok(())
            }
        })
        .unwrap();
    for job in 0..4 {
        d.dispatch_async(1, job).await.unwrap();
    }
    let stats = within("close_async", d.close_async()).await.stats;
    assert_eq!(runs_of(&runs, 1), [0, 1, 2, 3]);
    assert_eq!((stats.completed, stats.failed), (4, 1));
    assert_eq!(stats.panicked, 1);
}

/// A job whose `Clone` panics for the value 1: a retrying handler's attempts get clones.
#[derive(Debug)]
struct Fragile(u64);

impl Clone for Fragile {
    fn clone(&self) -> Self {
        assert_ne!(self.0, 1, "job 1 panics when cloned");
        Fragile(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_jobs_panicking_clone_is_contained_and_its_key_goes_on() {
    let runs = Runs::default();
    let hruns = Arc::clone(&runs);
    let d = Dispatcher::builder()
        .retry(RetryPolicy::exponential(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ))
        .build_async_retrying(move |key: u64, job: Fragile| {
            let runs = Arc::clone(&hruns);
            async move {
                push(&runs, key, job.0);
                Ok::<(), String>(())
            }
        })
        .unwrap();
    for job in 0..4 {
        d.dispatch_async(1, Fragile(job)).await.unwrap();
    }
    let stats = within("close_async", d.close_async()).await.stats;
    assert_eq!(runs_of(&runs, 1), [0, 2, 3]);
    assert_eq!((stats.completed, stats.panicked), (4, 1));
}

/// Sends on drop: tells the test that the dispatcher, which owns its handler, was freed.
struct Freed(Option<oneshot::Sender<()>>);

impl Drop for Freed {
    fn drop(&mut self) {
        let _ = self.0.take().unwrap().send(());
    }
}

#[tokio::test]
async fn a_job_dropping_the_last_handle_lets_the_rest_drain_and_frees_the_dispatcher() {
    let slot: Slot<u64, u64> = Slot::default();
    let runs = Runs::default();
    let (freed_tx, freed) = oneshot::channel();
    let freed_tx = Freed(Some(freed_tx));
    let (hslot, hruns) = (Arc::clone(&slot), Arc::clone(&runs));
    let d = Dispatcher::builder()
        .build_async(move |key: u64, job: u64| {
            let _owned = &freed_tx;
            let (slot, runs) = (Arc::clone(&hslot), Arc::clone(&hruns));
            async move {
                tokio::task::yield_now().await;
                if (key, job) == (0, 5) {
                    let last = slot.lock().unwrap().take();
                    drop(last);
                }
                push(&runs, key, job);
            }
        })
        .unwrap();
    for job in 0..30 {
        for key in 0..4 {
            d.dispatch_async(key, job).await.unwrap();
        }
    }
    *slot.lock().unwrap() = Some(d);
    within("the dispatcher's release", freed).await.unwrap();
    for key in 0..4 {
        assert_eq!(
            runs_of(&runs, key),
            (0..30).collect::<Vec<_>>(),
            "key {key}"
        );
    }
}

/// How one producer's job ended.
enum Fate {
    Accepted(Job),
    Refused(Job),
}

async fn produce(d: Dispatcher<u64, Job>, producer: usize, jobs: u64, keys: u64) -> Vec<Fate> {
    let mut fates = Vec::new();
    for seq in 0..jobs {
        let key = (seq * 7 + producer as u64) % keys;
        let job = Job { producer, key, seq };
        if seq % 3 == 0 {
            // The cancel-safe form: the job stays here until there is room for it.
            match d.reserve(&key).await {
                Ok(permit) => fates.push(match permit.dispatch(job) {
                    Ok(()) => Fate::Accepted(job),
                    Err(err) => Fate::Refused(err.into_job()),
                }),
                Err(WaitError::Closed) => fates.push(Fate::Refused(job)),
                Err(err) => panic!("reserve: {err}"),
            }
            continue;
        }
        fates.push(match d.dispatch_async(key, job).await {
            Ok(()) => Fate::Accepted(job),
            Err(
                DispatchError::Closed { key: k, job: back }
                | DispatchError::Full {
                    key: k, job: back, ..
                },
            ) => {
                assert_eq!((k, back), (key, job), "handed back the wrong job");
                Fate::Refused(back)
            }
            Err(err) => panic!("dispatch_async: {err:?}"),
        });
    }
    fates
}

#[test]
fn producers_racing_close_async_lose_no_job_and_run_none_twice() {
    const PRODUCERS: usize = 4;
    const JOBS: u64 = 300;
    let rt = runtime(2);
    for iteration in 0..10u64 {
        rt.block_on(async {
            let recorder = Recorder::new();
            let started = Arc::new(AtomicU64::new(0));
            // The job that starts `threshold`th holds its key until the close has begun: the
            // queues being small, the producers cannot all be done by then.
            let threshold = 50 + iteration * 80;
            let (held, mut held_rx) = watch::channel(false);
            let (closing, closing_rx) = watch::channel(false);
            let held = Arc::new(held);
            let (hrecorder, hstarted) = (Arc::clone(&recorder), Arc::clone(&started));
            let d = Dispatcher::builder()
                .key_capacity(2)
                .capacity(6)
                .max_in_flight(3)
                .build_async(move |key: u64, job: Job| {
                    let (recorder, started) = (Arc::clone(&hrecorder), Arc::clone(&hstarted));
                    let (held, mut closing) = (Arc::clone(&held), closing_rx.clone());
                    async move {
                        if started.fetch_add(1, Ordering::SeqCst) == threshold {
                            held.send(true).unwrap();
                            closing.wait_for(|closing| *closing).await.unwrap();
                        } else if job.seq % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        recorder.record(&key, job);
                    }
                })
                .unwrap();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| tokio::spawn(produce(d.clone(), p, JOBS, 6)))
                .collect();
            let closer = {
                let d = d.clone();
                tokio::spawn(async move {
                    held_rx.wait_for(|held| *held).await.unwrap();
                    let mut close = pin!(d.close_async());
                    // The first poll closes the gate; the held job keeps the drain waiting.
                    poll_fn(|cx| {
                        assert!(close.as_mut().poll(cx).is_pending());
                        Poll::Ready(())
                    })
                    .await;
                    closing.send(true).unwrap();
                    close.await
                })
            };
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            for producer in producers {
                for fate in within("a producer", producer).await.unwrap() {
                    match fate {
                        Fate::Accepted(job) => accepted.push(job),
                        Fate::Refused(job) => refused.push(job),
                    }
                }
            }
            let report = within("close_async", closer).await.unwrap();
            // Each job once: accepted or handed back.
            let every: HashSet<Job> = accepted.iter().chain(&refused).copied().collect();
            assert_eq!(every.len(), PRODUCERS * JOBS as usize);
            assert_eq!(accepted.len() + refused.len(), every.len());
            assert!(
                !refused.is_empty(),
                "iteration {iteration}: nothing refused"
            );
            assert!(report.drained);
            // Every job accepted, even while close began, ran before close returned.
            assert_eq!(report.stats.completed, accepted.len() as u64);
            assert_eq!(started.load(Ordering::SeqCst), accepted.len() as u64);
            assert_eq!(report.stats.panicked, 0);
            recorder.check(&accepted);
        });
    }
}

#[test]
fn close_now_from_a_plain_thread_hands_back_each_keys_rest_in_order() {
    const KEYS: u64 = 6;
    let rt = runtime(2);
    let runs = Runs::default();
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let (hruns, hstarted) = (Arc::clone(&runs), Arc::clone(&started));
    // Key k's job k + 2 waits, mid-flight, for the release; the jobs before it run freely.
    let d = Dispatcher::builder()
        .runtime(rt.handle().clone())
        .build_async(move |key: u64, job: u64| {
            let (runs, started) = (Arc::clone(&hruns), Arc::clone(&hstarted));
            let mut released = released.clone();
            async move {
                if job == key + 2 {
                    started.fetch_add(1, Ordering::SeqCst);
                    released.wait_for(|go| *go).await.unwrap();
                } else if job % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                push(&runs, key, job);
            }
        })
        .unwrap();
    let mut accepted: HashMap<u64, Vec<u64>> = HashMap::new();
    for job in 0..20 {
        for key in 0..KEYS {
            d.dispatch(key, job).unwrap();
            accepted.entry(key).or_default().push(job);
        }
    }
    // A producer thread races the close with more jobs.
    let producer = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut accepted: HashMap<u64, Vec<u64>> = HashMap::new();
            for job in 20..200 {
                for key in 0..KEYS {
                    match d.dispatch(key, job) {
                        Ok(()) => accepted.entry(key).or_default().push(job),
                        Err(DispatchError::Closed { key: k, job: j }) => {
                            assert_eq!((k, j), (key, job));
                        }
                        Err(err) => panic!("{err:?}"),
                    }
                }
            }
            accepted
        })
    };
    common::wait_for(|| started.load(Ordering::SeqCst) == KEYS as usize);
    let closer = {
        let d = d.clone();
        std::thread::spawn(move || d.close_now())
    };
    common::wait_for(|| d.is_closed());
    release.send(true).unwrap();
    let back: HashMap<u64, Vec<u64>> = closer.join().unwrap().unwrap().into_iter().collect();
    for (key, jobs) in producer.join().unwrap() {
        accepted.get_mut(&key).unwrap().extend(jobs);
    }
    let stats = d.stats();
    let mut total = 0;
    for key in 0..KEYS {
        let ran = runs_of(&runs, key);
        // Every job up to the held one ran; none after it started once the close had begun.
        assert_eq!(ran, (0..key + 3).collect::<Vec<_>>(), "key {key}");
        let mut all = ran;
        all.extend(back.get(&key).cloned().unwrap_or_default());
        assert_eq!(all, accepted[&key], "key {key}: ran, then handed back");
        total += all.len() as u64;
    }
    assert_eq!(stats.completed + stats.handed_back, total);
}

#[test]
fn a_cancelled_close_async_leaves_the_dispatcher_closed_and_a_second_one_drains() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (release, released) = watch::channel(false);
        let runs = Runs::default();
        let hruns = Arc::clone(&runs);
        let d = Dispatcher::builder()
            .build_async(move |key: u64, job: u64| {
                let runs = Arc::clone(&hruns);
                let mut released = released.clone();
                async move {
                    released.wait_for(|go| *go).await.unwrap();
                    push(&runs, key, job);
                }
            })
            .unwrap();
        for job in 0..5 {
            d.dispatch_async(1, job).await.unwrap();
        }
        {
            let mut close = pin!(d.close_async());
            poll_fn(|cx| {
                assert!(close.as_mut().poll(cx).is_pending(), "closed a held key");
                Poll::Ready(())
            })
            .await;
        }
        assert!(d.is_closed());
        let refused = d.dispatch_async(1, 5).await.unwrap_err();
        assert!(matches!(refused, DispatchError::Closed { key: 1, job: 5 }));
        release.send(true).unwrap();
        let report = within("the second close_async", d.close_async()).await;
        assert!(report.drained);
        assert_eq!(report.stats.completed, 5);
        assert_eq!(runs_of(&runs, 1), [0, 1, 2, 3, 4]);
    });
}

#[test]
fn a_key_whose_futures_never_wait_lets_another_task_on_the_thread_run() {
    const JOBS: u64 = 5_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ran = Arc::new(AtomicU64::new(0));
        let order_kept = Arc::new(AtomicU64::new(1));
        let (hran, hkept) = (Arc::clone(&ran), Arc::clone(&order_kept));
        let d = Dispatcher::builder()
            .key_capacity(JOBS as usize)
            .build_async(move |_: u64, job: u64| {
                // Always ready: the future never returns Pending.
                let seen = hran.fetch_add(1, Ordering::SeqCst);
                if seen != job {
                    hkept.store(0, Ordering::SeqCst);
                }
                async {}
            })
            .unwrap();
        for job in 0..JOBS {
            d.try_dispatch(1, job).unwrap();
        }
        // Nothing has run yet: the dispatcher's task waits for this one to yield the thread.
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let other = {
            let ran = Arc::clone(&ran);
            tokio::spawn(async move {
                // Had the dispatcher's task not given the thread back, this would first run
                // once every job had.
                while ran.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
                ran.load(Ordering::SeqCst)
            })
        };
        let seen = other.await.unwrap();
        assert!(seen < JOBS, "the other task ran only after all {JOBS} jobs");
        let report = d.close_async().await;
        assert_eq!(report.stats.completed, JOBS);
        assert_eq!(
            order_kept.load(Ordering::SeqCst),
            1,
            "jobs ran out of order"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_out_its_backoff_still_runs_when_close_async_drains() {
    const KEYS: u64 = 4;
    let runs = Runs::default();
    let attempts: Arc<Mutex<HashMap<(u64, u64), u32>>> = Arc::default();
    let (failed, mut failures) = watch::channel(0u64);
    let failed = Arc::new(failed);
    let (hruns, hattempts, hfailed) = (
        Arc::clone(&runs),
        Arc::clone(&attempts),
        Arc::clone(&failed),
    );
    let d = Dispatcher::builder()
        .retry(
            RetryPolicy::exponential(Duration::from_millis(5), Duration::from_millis(20))
                .max_attempts(4),
        )
        .build_async_retrying(move |key: u64, job: u64| {
            let (runs, attempts, failed) = (
                Arc::clone(&hruns),
                Arc::clone(&hattempts),
                Arc::clone(&hfailed),
            );
            async move {
                tokio::task::yield_now().await;
                push(&runs, key, job);
                let attempt = {
                    let mut attempts = attempts.lock().unwrap();
                    let attempt = attempts.entry((key, job)).or_default();
                    *attempt += 1;
                    *attempt
                };
                // Each key's first job fails twice, then succeeds.
                if job == 0 && attempt < 3 {
                    failed.send_modify(|n| *n += 1);
                    return Err(format!("attempt {attempt}"));
                }
                Ok(())
            }
        })
        .unwrap();
    for job in 0..5 {
        for key in 0..KEYS {
            d.dispatch_async(key, job).await.unwrap();
        }
    }
    // Every key's first job has failed once: its retry waits on the timer as close begins.
    within("the first failures", failures.wait_for(|n| *n >= KEYS))
        .await
        .unwrap();
    let report = within("close_async", d.close_async()).await;
    assert!(report.drained);
    assert_eq!(report.stats.completed, KEYS * 5);
    assert_eq!(report.stats.retried, KEYS * 2);
    assert_eq!(report.stats.dead_lettered, 0);
    for key in 0..KEYS {
        assert_eq!(runs_of(&runs, key), [0, 0, 0, 1, 2, 3, 4], "key {key}");
    }
}

#[test]
fn plain_threads_feeding_with_blocking_dispatch_keep_order_and_lose_nothing() {
    const PRODUCERS: usize = 4;
    const JOBS: u64 = 500;
    let rt = runtime(2);
    let recorder = Recorder::new();
    let hrecorder = Arc::clone(&recorder);
    let d = Dispatcher::builder()
        .runtime(rt.handle().clone())
        .key_capacity(2)
        .capacity(8)
        .max_in_flight(3)
        .build_async(move |key: u64, job: Job| {
            let recorder = Arc::clone(&hrecorder);
            async move {
                if job.seq % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                recorder.record(&key, job);
            }
        })
        .unwrap();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for seq in 0..JOBS {
                    let job = Job {
                        producer,
                        key: seq % 5,
                        seq,
                    };
                    // Outside the runtime the queue's bounds block the thread until there is room.
                    d.dispatch(job.key, job).unwrap();
                    sent.push(job);
                }
                sent
            })
        })
        .collect();
    let accepted: Vec<Job> = producers
        .into_iter()
        .flat_map(|producer| producer.join().unwrap())
        .collect();
    // Outside the runtime, close blocks until the jobs have drained.
    let report = d.close();
    assert!(report.drained);
    assert_eq!(report.stats.completed, accepted.len() as u64);
    assert_eq!(report.stats.panicked, 0);
    recorder.check(&accepted);
}
