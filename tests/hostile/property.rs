//! quickcheck: random scripts of dispatches, flushes, waits and a final `close` or `close_now`,
//! on keys whose `Hash`, `Eq`, `Clone`, `Drop` and `Debug`, and jobs whose `Drop`, panic on a
//! seeded schedule (a logger formats every log line, so that `Debug` is called wherever the
//! library logs a key). Before each step the script may arm one of the next few such calls,
//! on whichever thread makes it, to panic; at most one panics per step.
//!
//! The model: a panic on the caller's side (in a dispatch, a flush, a wait or close) may reach
//! the caller, and a job whose dispatch panicked may or may not have been accepted; but every
//! job whose dispatch returned `Ok` runs exactly once (or, after `close_now`, is handed back
//! exactly once), no refused job runs, the jobs of a key run (and come back) in dispatch
//! order, no two jobs of a key run at once, and a final `close` drains, evicts every key and
//! returns. Nothing hangs (a watchdog per case) and nothing aborts: the property runs in a
//! child process. `QUICKCHECK_TESTS` sets the number of cases (default 60).

use crate::common::{Watchdog, HANG};
use crate::hostile::{Call, Fuse, Key, Task, ANY_CALL};
use crate::{
    format_every_log_line, in_child, quiet_hostile_panics, test_path, LeakOnPanic, Ledger,
};
use keyed_dispatch::{DispatchError, Dispatcher};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::Duration,
};

/// Keys of a script: ids `0..KEYS`, colliding in pairs of hash classes.
const KEYS: u8 = 6;
/// An armed step panics in one of its next this many hostile calls.
const ARM_WITHIN: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Dispatch,
    Try,
    Timeout,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Dispatch { key: u8, how: How, grouped: bool },
    Flush(u8),
    WaitIdle,
    GroupWait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Close,
    CloseNow,
}

#[derive(Debug, Clone)]
struct Script {
    workers: usize,
    capacity: usize,
    key_capacity: usize,
    /// Evict idle keys as soon as a sweep finds them idle twice, on the workers.
    eager: bool,
    /// Each step, with the hostile call (counted from the step's start) that panics, if any.
    steps: Vec<(Op, Option<u8>)>,
    end: (End, Option<u8>),
}

fn arm(g: &mut Gen) -> Option<u8> {
    (u8::arbitrary(g) % 3 == 0).then(|| u8::arbitrary(g) % ARM_WITHIN)
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let key = u8::arbitrary(g) % KEYS;
        match u8::arbitrary(g) % 10 {
            0 => Op::Flush(key),
            1 => Op::WaitIdle,
            2 => Op::GroupWait,
            n => Op::Dispatch {
                key,
                how: *g
                    .choose(&[How::Dispatch, How::Dispatch, How::Try, How::Timeout])
                    .unwrap(),
                grouped: n % 3 == 0,
            },
        }
    }
}

impl Arbitrary for Script {
    fn arbitrary(g: &mut Gen) -> Self {
        let capacity = 1 + usize::arbitrary(g) % 8;
        let steps = usize::arbitrary(g) % (g.size() + 1);
        Script {
            workers: 1 + usize::arbitrary(g) % 3,
            capacity,
            key_capacity: 1 + usize::arbitrary(g) % capacity,
            eager: bool::arbitrary(g),
            steps: (0..steps).map(|_| (Op::arbitrary(g), arm(g))).collect(),
            end: (
                if bool::arbitrary(g) {
                    End::Close
                } else {
                    End::CloseNow
                },
                arm(g),
            ),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let base = self.clone();
        Box::new(self.steps.shrink().map(move |steps| Script {
            steps,
            ..base.clone()
        }))
    }
}

/// What became of a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted,
    Refused,
    /// The dispatch panicked: the job may have been accepted, or not.
    Unknown,
}

/// Arms the fuse for a step, or disarms it.
fn arm_for(fuse: &Fuse, arm: Option<u8>) {
    match arm {
        Some(after) => fuse.arm(ANY_CALL, u64::from(after)),
        None => fuse.disarm(),
    }
}

/// Whether a refusal is one the call may return before close.
fn refusal_allowed(how: How, err: &DispatchError<Key, Task>) -> bool {
    match how {
        How::Dispatch => false,
        How::Try => err.is_full(),
        How::Timeout => err.is_timeout(),
    }
}

fn runs_its_accepted_jobs_once_in_order(script: Script) -> TestResult {
    // Named after the script, so that a case that hangs is printed when the watchdog fires.
    let _watchdog = Watchdog::new(&format!("hostile property case {script:?}"), HANG);
    let fuse = Fuse::new();
    let ledger = Ledger::new();
    let handler = {
        let ledger = Arc::clone(&ledger);
        move |key: &Key, task: Task| {
            let _running = ledger.start(key.id, task.seq);
            if key.id != task.key {
                ledger.note(format!(
                    "job {} of key {} ran under key {}",
                    task.seq, task.key, key.id
                ));
            }
            drop(task); // may panic: the job's panic
        }
    };
    let mut builder = Dispatcher::builder()
        .workers(script.workers)
        .capacity(script.capacity)
        .key_capacity(script.key_capacity)
        .name("hostile-prop");
    if script.eager {
        builder = builder.idle_timeout(Duration::from_micros(1));
    }
    let d = LeakOnPanic::new(builder.build(handler).unwrap());
    let group = d.group();
    // Per dispatch: key, sequence number, fate.
    let mut fates: Vec<(u64, u64, Fate)> = Vec::new();
    for (seq, &(op, armed)) in script.steps.iter().enumerate() {
        let seq = seq as u64;
        arm_for(&fuse, armed);
        match op {
            Op::Dispatch { key, how, grouped } => {
                let key = u64::from(key);
                let refused = Cell::new(None);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    let (k, task) = (Key::hostile(key, &fuse), Task::new(key, seq, &fuse));
                    let result = match (how, grouped) {
                        (How::Dispatch, false) => d.dispatch(k, task),
                        (How::Dispatch, true) => group.dispatch(k, task),
                        (How::Try, false) => d.try_dispatch(k, task),
                        (How::Try, true) => group.try_dispatch(k, task),
                        (How::Timeout, false) => {
                            d.dispatch_timeout(k, task, Duration::from_micros(100))
                        }
                        (How::Timeout, true) => {
                            group.dispatch_timeout(k, task, Duration::from_micros(100))
                        }
                    };
                    if let Err(err) = result {
                        refused.set(Some(refusal_allowed(how, &err)));
                        drop(err); // may panic: the key's or the job's drop
                    }
                }));
                let fate = match (outcome, refused.get()) {
                    (_, Some(false)) => panic!("step {seq}: {how:?} refused before close"),
                    (_, Some(true)) => Fate::Refused,
                    (Ok(()), None) => Fate::Accepted,
                    (Err(_), None) => Fate::Unknown,
                };
                fates.push((key, seq, fate));
            }
            Op::Flush(key) => {
                let flushed = catch_unwind(AssertUnwindSafe(|| {
                    d.flush_key(&Key::hostile(u64::from(key), &fuse))
                }));
                if let Ok(Err(err)) = flushed {
                    panic!("step {seq}: flush_key failed: {err}");
                }
            }
            Op::WaitIdle => {
                if let Ok(Err(err)) = catch_unwind(AssertUnwindSafe(|| d.wait_idle())) {
                    panic!("step {seq}: wait_idle failed: {err}");
                }
            }
            Op::GroupWait => match catch_unwind(AssertUnwindSafe(|| group.wait())) {
                Ok(Ok(report)) => assert_eq!(
                    report.dispatched,
                    report.completed + report.handed_back,
                    "step {seq}: the group's wait returned with jobs pending"
                ),
                Ok(Err(err)) => panic!("step {seq}: the group's wait failed: {err}"),
                Err(_) => {}
            },
        }
    }
    // The end, then (disarmed) a close that must drain and join whatever happened before.
    let (end, armed) = script.end;
    let fired_before = fuse.fired().len();
    arm_for(&fuse, armed);
    let mut handed_back: HashMap<u64, Vec<u64>> = HashMap::new();
    match end {
        End::Close => {
            let closed = catch_unwind(AssertUnwindSafe(|| d.close()));
            fuse.disarm();
            if let Ok(report) = closed {
                assert!(report.drained, "close did not drain");
            }
        }
        End::CloseNow => {
            let closed = catch_unwind(AssertUnwindSafe(|| d.close_now()));
            fuse.disarm();
            match closed {
                Ok(Ok(left)) => {
                    for (key, tasks) in &left {
                        let back = handed_back.entry(key.id).or_default();
                        assert!(back.is_empty(), "key {} handed back twice", key.id);
                        for task in tasks {
                            assert_eq!(task.key, key.id, "job handed back under another key");
                            back.push(task.seq);
                        }
                    }
                }
                Ok(Err(err)) => panic!("close_now failed: {err}"),
                Err(_) => panic!(
                    "close_now panicked (hostile calls that fired: {:?})",
                    &fuse.fired()[fired_before..]
                ),
            }
        }
    }
    // A key whose Clone panicked in close_now may have lost its queued jobs to it (counted).
    let lost_to_clone: HashSet<u64> = fuse.fired()[fired_before..]
        .iter()
        .filter(|fired| end == End::CloseNow && fired.call == Call::Clone)
        .map(|fired| fired.id)
        .collect();
    let report = d.close();
    assert!(report.drained, "the final close did not drain");
    let stats = report.stats;
    assert_eq!(
        (stats.queued, stats.running, stats.keys),
        (0, 0, 0),
        "left after close: {stats:?}"
    );
    assert_eq!(
        stats.dispatched,
        stats.completed + stats.handed_back,
        "accepted jobs neither ran nor were handed back: {stats:?}"
    );
    assert_eq!(stats.completed, ledger.count() as u64, "{stats:?}");
    let report = group.wait().expect("the group's wait after close");
    assert_eq!(report.dispatched, report.completed + report.handed_back);
    ledger.check();
    // Per key: what ran, then what came back, in dispatch order, each job at most once.
    let count = |fate| fates.iter().filter(|(_, _, f)| *f == fate).count() as u64;
    let (accepted, refused, unknown) = (
        count(Fate::Accepted),
        count(Fate::Refused),
        count(Fate::Unknown),
    );
    assert!(
        (accepted..=accepted + unknown).contains(&stats.dispatched),
        "dispatched {} with {accepted} accepted and {unknown} unknown",
        stats.dispatched
    );
    assert!(
        (refused..=refused + unknown).contains(&stats.refused),
        "refused {} with {refused} refused and {unknown} unknown",
        stats.refused
    );
    let handed: u64 = handed_back.values().map(|back| back.len() as u64).sum();
    if lost_to_clone.is_empty() {
        assert_eq!(stats.handed_back, handed, "{stats:?}");
    }
    for key in 0..u64::from(KEYS) {
        let ran = ledger.runs_of(key);
        let back = handed_back.remove(&key).unwrap_or_default();
        let seen: Vec<u64> = ran.iter().chain(&back).copied().collect();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "key {key}: ran {ran:?} then handed back {back:?}: out of order or twice"
        );
        let seen: HashSet<u64> = seen.into_iter().collect();
        for &(_, seq, fate) in fates.iter().filter(|(k, _, _)| *k == key) {
            match fate {
                Fate::Accepted => assert!(
                    seen.contains(&seq) || lost_to_clone.contains(&key),
                    "key {key}: accepted job {seq} neither ran nor came back"
                ),
                Fate::Refused => assert!(
                    !seen.contains(&seq),
                    "key {key}: refused job {seq} ran or came back"
                ),
                Fate::Unknown => {}
            }
        }
    }
    assert!(handed_back.is_empty(), "unknown keys came back");
    TestResult::passed()
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn hostile_keys_and_jobs_never_cost_an_accepted_job_its_single_in_order_run() {
    let test = test_path(
        module_path!(),
        "hostile_keys_and_jobs_never_cost_an_accepted_job_its_single_in_order_run",
    );
    in_child(&test, || {
        quiet_hostile_panics();
        format_every_log_line();
        let tests = std::env::var("QUICKCHECK_TESTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(60);
        QuickCheck::new()
            .tests(tests)
            .rng(Gen::new(30))
            .quickcheck(runs_its_accepted_jobs_once_in_order as fn(Script) -> TestResult);
    });
}
