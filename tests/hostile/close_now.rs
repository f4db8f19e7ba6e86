//! A key whose `Clone` panics while `close_now` gathers the jobs it hands back: `close_now`
//! still returns, every other key's jobs come back in order, and every accepted job is
//! accounted for once, by having run or by having been handed back.

use crate::common::{wait_for, Latch};
use crate::hostile::{Call, Fuse, Key};
use crate::{in_child, step_handler, test_path, watchdog, LeakOnPanic, Ledger, Step};
use keyed_dispatch::Dispatcher;
use std::{
    collections::HashMap,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::mpsc,
};

/// The key whose `Clone` panics.
const VICTIM: u64 = 5;
/// Keys queued behind the held one, the victim among them.
const QUEUED: [u64; 4] = [1, 2, VICTIM, 3];
const JOBS: u64 = 3;

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn close_now_hands_back_every_other_keys_jobs_when_a_key_clone_panics() {
    let test = test_path(
        module_path!(),
        "close_now_hands_back_every_other_keys_jobs_when_a_key_clone_panics",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        let fuse = Fuse::new();
        let ledger = Ledger::new();
        let (started_tx, started) = mpsc::channel();
        let release = Latch::new();
        let d = LeakOnPanic::new(
            Dispatcher::builder()
                .workers(1)
                .name("hostile-close-now")
                .build(step_handler(&ledger, started_tx, &release))
                .unwrap(),
        );
        // The only thread is held by key 0, so that every other job is queued when close_now
        // runs.
        d.dispatch(Key::plain(0), Step::held(0)).unwrap();
        assert_eq!(started.recv().unwrap(), 0);
        let key = |id| {
            if id == VICTIM {
                Key::hostile(id, &fuse)
            } else {
                Key::plain(id)
            }
        };
        for seq in 0..JOBS {
            for id in QUEUED {
                d.dispatch(key(id), Step::quick(seq)).unwrap();
            }
        }
        d.dispatch(Key::plain(0), Step::quick(1)).unwrap();
        fuse.arm(Call::Clone.bit(), 0);
        let outcome = std::thread::scope(|s| {
            // The held job ends once close_now has begun.
            s.spawn(|| {
                wait_for(|| d.is_closed());
                release.open();
            });
            catch_unwind(AssertUnwindSafe(|| d.close_now()))
        });
        fuse.disarm();
        let left = match outcome {
            Ok(Ok(left)) => left,
            Ok(Err(err)) => panic!("close_now refused: {err}"),
            Err(_) => panic!(
                "close_now panicked with the victim's Clone (fired: {:?}) instead of returning \
                 the jobs it took",
                fuse.fired()
            ),
        };
        let mut back: HashMap<u64, Vec<u64>> = HashMap::new();
        for (key, jobs) in &left {
            let seqs = jobs.iter().map(|step| step.seq).collect();
            assert!(
                back.insert(key.id, seqs).is_none(),
                "key {} handed back twice",
                key.id
            );
        }
        drop(left);
        ledger.check();
        // Every other key: what ran, then what came back, is exactly what was dispatched.
        for (id, jobs) in [(0, 2)].into_iter().chain(
            QUEUED
                .iter()
                .filter(|&&id| id != VICTIM)
                .map(|&id| (id, JOBS)),
        ) {
            let mut seen = ledger.runs_of(id);
            seen.extend(back.get(&id).into_iter().flatten());
            assert_eq!(
                seen,
                (0..jobs).collect::<Vec<_>>(),
                "key {id}: ran {:?}, handed back {:?}",
                ledger.runs_of(id),
                back.get(&id)
            );
        }
        // The victim's jobs: at most once each, in order; any not returned are counted.
        let mut victim = ledger.runs_of(VICTIM);
        victim.extend(back.get(&VICTIM).into_iter().flatten());
        assert!(
            victim.windows(2).all(|w| w[0] < w[1]) && victim.iter().all(|&seq| seq < JOBS),
            "the victim's jobs, ran then handed back: {victim:?}"
        );
        let stats = d.stats();
        assert_eq!(
            (stats.queued, stats.running),
            (0, 0),
            "jobs still pending: {stats:?}"
        );
        assert_eq!(
            stats.completed + stats.handed_back,
            stats.dispatched,
            "accepted jobs neither ran nor were handed back: {stats:?}"
        );
        assert_eq!(stats.dispatched, 2 + QUEUED.len() as u64 * JOBS);
        assert_eq!(stats.completed, ledger.count() as u64);
        let report = d.close();
        assert!(report.drained);
        assert_eq!(report.stats.keys, 0);
        assert_eq!(
            report.stats.completed + report.stats.handed_back,
            report.stats.dispatched
        );
    });
}
