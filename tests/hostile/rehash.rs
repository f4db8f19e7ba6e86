//! A stored key's `Hash` panicking while the routing map makes room for a new key must not
//! cost any other key its entry: a key whose entry is lost while it runs gets a second mailbox
//! at its next dispatch, and two of its jobs run at once.
//!
//! How the map loses entries: a hash table that is full of deleted slots (tombstones) but holds
//! few live entries makes room for an insert by rehashing in place, hashing every stored key
//! again. If one of those hashes panics, the table drops every entry it had not yet moved, live
//! keys included, since it no longer knows where they belong (hashbrown documents this).
//!
//! The scenario builds exactly that table. Every key hashes alike (ids are multiples of
//! [`HASH_CLASSES`], a legal if poor hash), so all sit in one shard and fill its probe sequence
//! in the order they are inserted. [`TABLE`] keys fill the shard's table to the brim (its
//! capacity after growing from empty is 3, 7, 14, 28, then 56): first [`BEFORE`] transient keys,
//! which take the table through its last growth, then five live keys in consecutive slots
//! (candidate, innocent, candidate, innocent, candidate), then transients again. Every thread
//! is held meanwhile, so that no key goes idle and leaves early. Then the transients run and
//! are evicted, leaving tombstones that an insert cannot reuse without that rehash, while the
//! live keys run and hold their threads. With the candidates' `Hash` panicking, a new key's
//! dispatch rehashes: whichever live key the table meets first in slot order, a candidate comes
//! before at least one of the innocents, so that one is dropped. Each innocent's next job then
//! shows whether it found its running mailbox or was given a second one.

use crate::common::{wait_for, Latch};
use crate::hostile::{Call, Fuse, Key, HASH_CLASSES};
use crate::{in_child, test_path, watchdog, LeakOnPanic, Ledger};
use keyed_dispatch::Dispatcher;
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{mpsc, Arc},
};

/// Threads: one per live key, and one to run the transients and the sweeps.
const WORKERS: usize = 6;
/// Keys that fill the shard's table: its capacity after its fifth growth.
const TABLE: u64 = 56;
/// Transients inserted before the live keys: enough for the table's last growth (at its 29th
/// key) to come before them, and to put them at the start of a probe group of 16 slots.
const BEFORE: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Hashes panic while armed; held running.
    Candidate,
    /// Never panics; held running, then dispatched to again.
    Innocent,
}

/// The live keys, in the order they take consecutive slots.
const LIVE: [(u64, Role); 5] = [
    (4, Role::Candidate),
    (8, Role::Innocent),
    (12, Role::Candidate),
    (16, Role::Innocent),
    (20, Role::Candidate),
];
/// The new key whose insert makes the table rehash.
const TRIGGER: u64 = 4000;
/// The key dispatched last: once its job has run, so has every job dispatched before it on
/// the one free thread.
const SENTINEL: u64 = 4004;

fn transient(n: u64) -> Key {
    Key::plain(400 + HASH_CLASSES * n)
}

#[derive(Debug, Clone, Copy)]
enum Job {
    /// Holds its thread until the table is full.
    Fill,
    /// Holds its thread until the end of the test.
    Hold(u64),
    Quick(u64),
    /// Reports that it ran.
    Signal,
}

#[test]
#[cfg_attr(miri, ignore = "spawns a child process")]
fn key_hash_panicking_while_the_map_rehashes_never_runs_two_jobs_of_another_key_at_once() {
    let test = test_path(
        module_path!(),
        "key_hash_panicking_while_the_map_rehashes_never_runs_two_jobs_of_another_key_at_once",
    );
    in_child(&test, || {
        let _watchdog = watchdog(&test);
        assert!(LIVE.iter().all(|(id, _)| id % HASH_CLASSES == 0));
        let fuse = Fuse::new();
        let ledger = Ledger::new();
        let (started_tx, started) = mpsc::channel();
        let (signal_tx, signalled) = mpsc::channel();
        let (filled, end) = (Latch::new(), Latch::new());
        let handler = {
            let (ledger, filled, end) =
                (Arc::clone(&ledger), Arc::clone(&filled), Arc::clone(&end));
            move |key: &Key, job: Job| {
                let seq = match job {
                    Job::Hold(seq) | Job::Quick(seq) => seq,
                    Job::Fill | Job::Signal => 0,
                };
                let _running = ledger.start(key.id, seq);
                match job {
                    Job::Fill => {
                        let _ = started_tx.send(key.id);
                        filled.wait();
                    }
                    Job::Hold(_) => {
                        let _ = started_tx.send(key.id);
                        end.wait();
                    }
                    Job::Quick(_) => {}
                    Job::Signal => {
                        let _ = signal_tx.send(());
                    }
                }
            }
        };
        let d = LeakOnPanic::new(
            Dispatcher::builder()
                .workers(WORKERS)
                .name("hostile-rehash")
                .build(handler)
                .unwrap(),
        );
        // 1. Fill the table. The first transients hold every thread, so that every later key
        //    stays queued, and in the map, until the table is full.
        for n in 0..WORKERS as u64 {
            d.dispatch(transient(n), Job::Fill).unwrap();
        }
        for _ in 0..WORKERS {
            started.recv().unwrap();
        }
        for n in WORKERS as u64..BEFORE {
            d.dispatch(transient(n), Job::Quick(0)).unwrap();
        }
        for (id, role) in LIVE {
            let key = match role {
                Role::Candidate => Key::hostile(id, &fuse),
                Role::Innocent => Key::plain(id),
            };
            d.dispatch(key, Job::Hold(0)).unwrap();
        }
        let transients = TABLE - LIVE.len() as u64;
        for n in BEFORE..transients {
            d.dispatch(transient(n), Job::Quick(0)).unwrap();
        }
        assert_eq!(d.stats().keys, TABLE as usize);
        // 2. The transients run and are evicted; the live keys start, and hold their threads.
        filled.open();
        for _ in 0..LIVE.len() {
            started.recv().unwrap();
        }
        wait_for(|| d.stats().keys == LIVE.len());
        // 3. A new key's insert rehashes the table while the candidates' hashes panic.
        fuse.always(Call::Hash.bit());
        let trigger = catch_unwind(AssertUnwindSafe(|| {
            d.dispatch(Key::plain(TRIGGER), Job::Quick(0))
        }));
        fuse.disarm();
        let keys_after_trigger = d.stats().keys;
        let trigger_accepted = match trigger {
            Ok(Ok(())) => true,
            Ok(Err(err)) => panic!("the new key was refused: {err}"),
            Err(_) => false,
        };
        // 4. The innocents' next jobs, then the sentinel. With the live keys holding their
        //    threads, one thread is free, and it takes the ready keys in order: an innocent's
        //    next job has run by the time the sentinel's has if, and only if, it was queued in
        //    a second mailbox instead of behind its running job.
        for (id, role) in LIVE {
            if role == Role::Innocent {
                d.dispatch(Key::plain(id), Job::Quick(1)).unwrap();
            }
        }
        d.dispatch(Key::plain(SENTINEL), Job::Signal).unwrap();
        signalled.recv().unwrap();
        ledger.check();
        assert!(
            keys_after_trigger >= LIVE.len(),
            "the map lost live keys: {keys_after_trigger} left of {}",
            LIVE.len()
        );
        end.open();
        d.wait_idle().unwrap();
        ledger.check();
        for (id, role) in LIVE {
            let expected: &[u64] = match role {
                Role::Candidate => &[0],
                Role::Innocent => &[0, 1],
            };
            assert_eq!(ledger.runs_of(id), expected, "live key {id}");
        }
        for n in 0..transients {
            assert_eq!(ledger.runs_of(transient(n).id), [0], "transient {n}");
        }
        let trigger_runs: &[u64] = if trigger_accepted { &[0] } else { &[] };
        assert_eq!(ledger.runs_of(TRIGGER), trigger_runs);
        let total = TABLE + 2 + 1 + u64::from(trigger_accepted);
        let report = d.close();
        assert!(report.drained);
        assert_eq!(
            (report.stats.dispatched, report.stats.completed),
            (total, total),
            "{:?}",
            report.stats
        );
        assert_eq!(report.stats.keys, 0);
    });
}
