//! Each job value is dropped exactly once, whether it ran, panicked, was refused or was handed
//! back: along a scripted path, and in seeded rounds with `close_now` racing producers.

use crate::common::{self, wait_for, Latch, Rng};
use crate::{quiet_deliberate_panics, rounds, seed, watchdog, Me};
use keyed_dispatch::{DispatchError, Dispatcher};
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Mutex, Weak,
    },
    time::Duration,
};

/// Per job id: how often its value was dropped, and whether its handler ran.
#[derive(Debug)]
struct Ledger {
    drops: Vec<AtomicU8>,
    ran: Vec<AtomicU8>,
    next: AtomicUsize,
}

/// What a tracked job does when it runs.
#[derive(Debug)]
enum Act {
    Run,
    Panic,
    Hold(Arc<Latch>),
    /// Dispatches two follow-ups into its own key (`key_capacity(1)`): one fits, one is
    /// refused `Full`.
    Reenter,
}

/// A job value that counts its drop in its ledger.
#[derive(Debug)]
struct Tracked {
    id: usize,
    act: Act,
    ledger: Arc<Ledger>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Counted, not asserted: a panic here could abort during the unwinding of a job.
        self.ledger.drops[self.id].fetch_add(1, SeqCst);
    }
}

impl Ledger {
    fn new(ids: usize) -> Arc<Self> {
        Arc::new(Ledger {
            drops: (0..ids).map(|_| AtomicU8::new(0)).collect(),
            ran: (0..ids).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    fn job(self: &Arc<Self>, act: Act) -> Tracked {
        let id = self.next.fetch_add(1, SeqCst);
        assert!(id < self.drops.len(), "ledger too small");
        Tracked {
            id,
            act,
            ledger: Arc::clone(self),
        }
    }

    fn ran(&self, id: usize) -> bool {
        self.ran[id].load(SeqCst) > 0
    }

    /// Every job made was dropped exactly once, and ran at most once.
    fn check(&self) {
        let made = self.next.load(SeqCst);
        for id in 0..made {
            let drops = self.drops[id].load(SeqCst);
            assert_eq!(drops, 1, "job {id} dropped {drops} times");
            let ran = self.ran[id].load(SeqCst);
            assert!(ran <= 1, "job {id} ran {ran} times");
        }
    }
}

/// Runs a tracked job: marks it as run, then does its act.
fn run_tracked(me: &Me<u32, Tracked>, key: u32, job: Tracked) {
    job.ledger.ran[job.id].fetch_add(1, SeqCst);
    match &job.act {
        Act::Run => {}
        Act::Panic => panic!("job {} panics", job.id),
        Act::Hold(latch) => latch.wait(),
        Act::Reenter => {
            let d = me.get().and_then(Weak::upgrade).expect("dispatcher alive");
            d.dispatch(key, job.ledger.job(Act::Run))
                .expect("the first follow-up fits");
            let second = job.ledger.job(Act::Run);
            let id = second.id;
            let err = d.dispatch(key, second).expect_err("the key is full");
            assert!(err.is_full(), "{err:?}");
            assert_eq!(err.into_job().id, id);
        }
    }
}

/// Asserts that `result` refused with the given kind and handed back job `id`; drops it.
fn refused(result: Result<(), DispatchError<u32, Tracked>>, kind: &str, id: usize) {
    let err = result.expect_err("accepted");
    let ok = match kind {
        "full" => err.is_full(),
        "timeout" => err.is_timeout(),
        _ => err.is_closed(),
    };
    assert!(ok, "expected {kind}, got {err:?}");
    assert_eq!(err.into_job().id, id);
}

#[test]
fn every_job_value_is_dropped_once_whether_run_panicked_refused_or_handed_back() {
    let _watchdog = watchdog("drops");
    quiet_deliberate_panics();
    let ledger = Ledger::new(64);
    let (started, starts) = mpsc::channel();
    let started = Mutex::new(started);
    let me: Me<u32, Tracked> = Arc::default();
    let handle = Arc::clone(&me);
    let d = Arc::new(
        Dispatcher::builder()
            .workers(1)
            .key_capacity(1)
            .capacity(3)
            .jobs_per_turn(8)
            .name("drops")
            .build(move |key: &u32, job: Tracked| {
                started.lock().unwrap().send(job.id).unwrap();
                run_tracked(&handle, *key, job);
            })
            .unwrap(),
    );
    me.set(Arc::downgrade(&d)).unwrap();

    // Ran; panicked; re-entered (one follow-up ran, the other was refused in the handler).
    // Each waits for the one before, so that the re-entering job runs in a turn of its own:
    // a turn's jobs hold their key's room until the turn ends.
    let [plain, panicky, reenter] = [Act::Run, Act::Panic, Act::Reenter].map(|act| {
        let job = ledger.job(act);
        let id = job.id;
        d.dispatch(1, job).unwrap();
        d.wait_idle().unwrap();
        id
    });
    assert_eq!(d.stats().panicked, 1);
    let follow_ups = [reenter + 1, reenter + 2];
    assert!(ledger.ran(follow_ups[0]) && !ledger.ran(follow_ups[1]));
    while starts.try_recv().is_ok() {}

    // Key 1 holds the only thread while key 2 gets two jobs; key 2's turn then takes both,
    // and holds on the first.
    let (first, second) = (Latch::new(), Latch::new());
    let gate_keeper = ledger.job(Act::Hold(Arc::clone(&first)));
    let gate_keeper_id = gate_keeper.id;
    d.dispatch(1, gate_keeper).unwrap();
    assert_eq!(starts.recv().unwrap(), gate_keeper_id);
    let holder = ledger.job(Act::Hold(Arc::clone(&second)));
    let holder_id = holder.id;
    d.dispatch(2, holder).unwrap();
    let in_turn = ledger.job(Act::Run);
    let in_turn_id = in_turn.id;
    d.dispatch(2, in_turn).unwrap();
    first.open();
    assert_eq!(starts.recv().unwrap(), holder_id);

    // Key 2 is full: Full and Timeout hand the job back.
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(d.try_dispatch(2, job), "full", id);
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(
        d.dispatch_timeout(2, job, Duration::from_millis(5)),
        "timeout",
        id,
    );
    // Two more jobs fill the dispatcher: other keys are refused too.
    let queued: Vec<usize> = (0..2)
        .map(|_| {
            let job = ledger.job(Act::Run);
            let id = job.id;
            d.dispatch(3, job).unwrap();
            id
        })
        .collect();
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(d.try_dispatch(4, job), "full", id);
    let job = ledger.job(Act::Run);
    let id = job.id;
    refused(
        d.dispatch_timeout(4, job, Duration::from_millis(5)),
        "timeout",
        id,
    );

    // close_now: refused Closed meanwhile; the job left in the held turn and the queued ones
    // come back.
    let mut left = std::thread::scope(|s| {
        let closer = s.spawn(|| d.close_now());
        wait_for(|| d.is_closed());
        let job = ledger.job(Act::Run);
        let id = job.id;
        refused(d.dispatch(5, job), "closed", id);
        second.open();
        closer.join().unwrap().unwrap()
    });
    left.sort_by_key(|(key, _)| *key);
    let ids: Vec<(u32, Vec<usize>)> = left
        .iter()
        .map(|(key, jobs)| (*key, jobs.iter().map(|job| job.id).collect()))
        .collect();
    assert_eq!(ids, [(2, vec![in_turn_id]), (3, queued.clone())]);
    drop(left);
    let stats = d.stats();
    assert_eq!((stats.handed_back, stats.refused), (3, 6));
    drop(d);

    // A dispatcher dropped without close runs its queued jobs and drops each once.
    let d = Dispatcher::builder()
        .workers(1)
        .name("dropr")
        .build(|_: &u32, job: Tracked| {
            job.ledger.ran[job.id].fetch_add(1, SeqCst);
            if matches!(job.act, Act::Panic) {
                panic!("job {} panics", job.id);
            }
        })
        .unwrap();
    let dropped_with: Vec<usize> = (0..12)
        .map(|n| {
            let job = ledger.job(if n % 4 == 0 { Act::Panic } else { Act::Run });
            let id = job.id;
            d.dispatch(n % 3, job).unwrap();
            id
        })
        .collect();
    drop(d);

    ledger.check();
    let ran: Vec<usize> = [
        plain,
        panicky,
        reenter,
        follow_ups[0],
        gate_keeper_id,
        holder_id,
    ]
    .into_iter()
    .chain(dropped_with)
    .collect();
    for id in 0..ledger.next.load(SeqCst) {
        assert_eq!(ledger.ran(id), ran.contains(&id), "job {id}");
    }
}

/// One round: producers dispatch tracked jobs (one in ten panics) by every method into small
/// queues, while `close_now` (or, one round in three, `close`) fires at a random point.
fn drop_round(seed: u64, per_producer: usize) {
    const PRODUCERS: usize = 4;
    let mut rng = Rng::new(seed);
    let ledger = Ledger::new(PRODUCERS * per_producer);
    let close_now = rng.below(3) != 0;
    let close_after = rng.below((PRODUCERS * per_producer) as u64 + 1) as usize;
    let d = Dispatcher::builder()
        .workers(1 + rng.below(3) as usize)
        .capacity(4 + rng.below(28) as usize)
        .key_capacity(1 + rng.below(4) as usize)
        .jobs_per_turn(1 + rng.below(8) as usize)
        .name("dropr")
        .build(|_: &u32, job: Tracked| {
            job.ledger.ran[job.id].fetch_add(1, SeqCst);
            if matches!(job.act, Act::Panic) {
                panic!("job {} panics", job.id);
            }
        })
        .unwrap();
    let accepted_count = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let (accepted, refused, handed_back) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let (d, ledger, count, finished) = (&d, &ledger, &accepted_count, &finished);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((producer as u64 + 1) << 40));
                    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
                    for _ in 0..per_producer {
                        let key = rng.below(16) as u32;
                        let job = ledger.job(if rng.below(10) == 0 {
                            Act::Panic
                        } else {
                            Act::Run
                        });
                        let id = job.id;
                        let result = match rng.below(4) {
                            0 => d.try_dispatch(key, job),
                            1 => d.dispatch_timeout(key, job, Duration::from_micros(20)),
                            _ => d.dispatch(key, job),
                        };
                        match result {
                            Ok(()) => {
                                accepted.push(id);
                                count.fetch_add(1, SeqCst);
                            }
                            Err(err) => {
                                let (back_key, back) = err.into_inner();
                                assert_eq!((back_key, back.id), (key, id));
                                refused.push(id);
                            }
                        }
                    }
                    finished.fetch_add(1, SeqCst);
                    (accepted, refused)
                })
            })
            .collect();
        let closer = s.spawn(|| {
            while accepted_count.load(SeqCst) < close_after && finished.load(SeqCst) < PRODUCERS {
                std::thread::yield_now();
            }
            if close_now {
                let left = d.close_now().unwrap();
                left.into_iter()
                    .flat_map(|(_, jobs)| jobs)
                    .map(|job| job.id)
                    .collect()
            } else {
                assert!(d.close().drained);
                Vec::new()
            }
        });
        let (accepted, refused): (Vec<Vec<usize>>, Vec<Vec<usize>>) =
            producers.into_iter().map(|p| p.join().unwrap()).unzip();
        let handed_back: Vec<usize> = closer.join().unwrap();
        (accepted.concat(), refused.concat(), handed_back)
    });
    ledger.check();
    // Each job took exactly one path: ran, refused, or handed back.
    let made = ledger.next.load(SeqCst);
    assert_eq!(accepted.len() + refused.len(), made);
    let handed: HashSet<usize> = handed_back.iter().copied().collect();
    assert_eq!(handed.len(), handed_back.len(), "a job handed back twice");
    for &id in &accepted {
        assert!(
            ledger.ran(id) != handed.contains(&id),
            "accepted job {id} both ran and came back, or neither"
        );
    }
    for &id in &refused {
        assert!(
            !ledger.ran(id) && !handed.contains(&id),
            "refused job {id} ran"
        );
    }
    let ran = (0..made).filter(|&id| ledger.ran(id)).count() as u64;
    let stats = d.stats();
    assert_eq!(stats.completed, ran);
    assert_eq!(stats.handed_back, handed_back.len() as u64);
    assert_eq!(stats.refused, refused.len() as u64);
    assert_eq!(stats.dispatched, accepted.len() as u64);
    assert_eq!(stats.keys, 0);
}

#[test]
fn drops_stay_exact_when_close_now_races_producers() {
    let _watchdog = watchdog("drops racing close_now");
    quiet_deliberate_panics();
    let seed = seed("drops racing close_now");
    let per_producer = common::scaled(20_000);
    for round in 0..rounds(6) {
        drop_round(seed.wrapping_add(round), per_producer);
    }
}
