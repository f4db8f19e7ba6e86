//! A panicking or failing job is caught, logged, counted and passed to its hook; its thread, its
//! key and the dispatcher go on.

mod common;

use common::{threads_named, wait_for, Watchdog, HANG};
use keyed_dispatch::Dispatcher;
use std::{
    any::Any,
    sync::{Arc, Mutex},
};

#[derive(Debug)]
struct CustomPayload(u32);

#[test]
fn panics_are_caught_counted_and_later_jobs_of_the_key_still_run() {
    let _watchdog = Watchdog::new("panics", HANG);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let (r, h) = (Arc::clone(&ran), Arc::clone(&hooked));
    let d = Dispatcher::builder()
        .workers(2)
        .name("panicky")
        .on_panic(move |key: &u32, payload: &(dyn Any + Send)| {
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else if let Some(custom) = payload.downcast_ref::<CustomPayload>() {
                format!("custom {}", custom.0)
            } else {
                "?".to_string()
            };
            h.lock().unwrap().push((*key, message));
        })
        .build(move |key: &u32, n: u32| {
            match n % 4 {
                1 => panic!("static {n}"),
                2 => panic!("{}", format!("formatted {n}")),
                3 => std::panic::panic_any(CustomPayload(n)),
                _ => {}
            }
            r.lock().unwrap().push((*key, n));
        })
        .unwrap();
    // Threads name themselves once started.
    wait_for(|| threads_named("panicky-") == 2);
    for n in 0..40 {
        d.dispatch(n % 3, n).unwrap();
    }
    d.wait_idle().unwrap();
    assert_eq!(threads_named("panicky-"), 2, "a panic cost a thread");
    let stats = d.stats();
    assert_eq!((stats.completed, stats.panicked, stats.failed), (40, 30, 0));
    // Jobs after panicking ones ran, in order, on every key.
    let ran = ran.lock().unwrap();
    for key in 0..3 {
        let mine: Vec<u32> = ran
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|&(_, n)| n)
            .collect();
        let expected: Vec<u32> = (0..40).filter(|n| n % 3 == key && n % 4 == 0).collect();
        assert!(!expected.is_empty());
        assert_eq!(mine, expected);
    }
    drop(ran);
    let mut hooked = hooked.lock().unwrap().clone();
    hooked.sort();
    assert_eq!(hooked.len(), 30);
    assert!(hooked.contains(&(1, "static 1".to_string())));
    assert!(hooked.contains(&(2, "formatted 2".to_string())));
    assert!(hooked.contains(&(0, "custom 3".to_string())));
    // The dispatcher is not poisoned.
    d.dispatch(9, 0).unwrap();
    assert_eq!(d.close().stats.completed, 41);
}

#[test]
fn failures_are_counted_and_passed_to_on_error() {
    let _watchdog = Watchdog::new("failures", HANG);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&errors);
    let d = Dispatcher::builder()
        .workers(1)
        .on_error(move |key: &String, err: &String, attempt| {
            e.lock().unwrap().push(format!("{key}: {err} ({attempt})"));
        })
        .build(|_: &String, amount: i64| -> Result<(), String> {
            if amount < 0 {
                Err(format!("negative amount {amount}"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.dispatch("acct".to_string(), 5).unwrap();
    d.dispatch("acct".to_string(), -1).unwrap();
    d.dispatch("acct".to_string(), 7).unwrap();
    let stats = d.close().stats;
    assert_eq!((stats.completed, stats.failed, stats.panicked), (3, 1, 0));
    assert_eq!(*errors.lock().unwrap(), ["acct: negative amount -1 (1)"]);
}

#[test]
fn a_panicking_hook_does_not_kill_the_worker() {
    let _watchdog = Watchdog::new("hook panics", HANG);
    let d = Dispatcher::builder()
        .workers(1)
        .on_panic(|_: &u8, _: &(dyn Any + Send)| panic!("hook"))
        .on_error(|_: &u8, _: &&str, _| panic!("hook"))
        .build(|_: &u8, n: u8| -> Result<(), &'static str> {
            match n {
                0 => panic!("job"),
                1 => Err("failed"),
                _ => Ok(()),
            }
        })
        .unwrap();
    for n in 0..3 {
        d.dispatch(0, n).unwrap();
    }
    let stats = d.close().stats;
    // Both hooks panicked, each counted; the jobs' fates are unchanged.
    assert_eq!((stats.completed, stats.failed, stats.panicked), (3, 1, 2));
}
