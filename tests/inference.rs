//! Handlers as a new user first writes them: closures without argument types, which take `K`
//! and `J` from wherever the dispatcher's type is named; and a handler type of one's own,
//! built with `build_handler`. Each test compiling is most of its assertion; each also runs a
//! job through the handler it built.

mod common;

use common::{Watchdog, HANG};
use keyed_dispatch::{Dispatcher, Handler};
use std::{
    error::Error,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
};

type Result<T = (), E = Box<dyn Error>> = std::result::Result<T, E>;

#[test]
fn closure_takes_its_types_from_the_binding() -> Result {
    let _watchdog = Watchdog::new("binding", HANG);
    let d: Dispatcher<u64, String> = Dispatcher::builder().build(|k, j| println!("{k} {j}"))?;
    d.dispatch(1, "one".to_string())?;
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.failed), (1, 0));
    Ok(())
}

#[test]
fn closure_takes_its_types_from_a_later_dispatch() -> Result {
    let _watchdog = Watchdog::new("later dispatch", HANG);
    let (seen, ran) = mpsc::channel();
    let seen = Mutex::new(seen);
    let d = Dispatcher::builder().build(move |k, j| {
        let (k, j): (&u64, u32) = (k, j);
        seen.lock().unwrap().send((*k, j)).unwrap();
    })?;
    d.dispatch(1u64, 2u32)?;
    assert_eq!(ran.recv()?, (1, 2));
    d.close();
    Ok(())
}

#[test]
fn fallible_closure_with_only_its_return_type_written() -> Result {
    let _watchdog = Watchdog::new("fallible", HANG);
    let d: Dispatcher<u64, u32> = Dispatcher::builder().build(|k, j| -> Result<(), String> {
        if j == 0 {
            return Err(format!("key {k}: job 0"));
        }
        Ok(())
    })?;
    d.dispatch(1, 0)?;
    d.dispatch(1, 1)?;
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.failed), (2, 1));
    Ok(())
}

#[test]
fn closure_calls_methods_once_the_builder_names_the_types() -> Result {
    let _watchdog = Watchdog::new("turbofish", HANG);
    let total = Arc::new(AtomicU64::new(0));
    let sum = Arc::clone(&total);
    let d = Dispatcher::<String, Vec<u64>>::builder().build(move |k, j| {
        assert!(k.starts_with("tenant-"));
        sum.fetch_add(j.iter().sum(), Ordering::Relaxed);
    })?;
    d.dispatch("tenant-1".to_string(), vec![1, 2, 3])?;
    d.close();
    assert_eq!(total.load(Ordering::Relaxed), 6);
    Ok(())
}

/// A handler with state and a named error type.
struct Ledger {
    total: AtomicU64,
}

#[derive(Debug)]
struct Empty(u64);

impl std::fmt::Display for Empty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "empty transfer to account {}", self.0)
    }
}

impl Handler<u64, u64> for Ledger {
    type Error = Empty;

    fn handle(&self, account: &u64, amount: u64) -> Result<(), Empty> {
        if amount == 0 {
            return Err(Empty(*account));
        }
        self.total.fetch_add(amount, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn handler_type_builds_with_build_handler() -> Result {
    let _watchdog = Watchdog::new("build_handler", HANG);
    let (failed, failures) = mpsc::channel();
    let failed = Mutex::new(failed);
    let d = Dispatcher::builder()
        .workers(1)
        .on_error(move |account, err: &Empty, _| {
            let line = format!("{account}: {err}");
            failed.lock().unwrap().send(line).unwrap();
        })
        .build_handler(Ledger {
            total: AtomicU64::new(0),
        })?;
    d.dispatch(7, 40)?;
    d.dispatch(7, 0)?;
    d.dispatch(8, 2)?;
    assert_eq!(failures.recv()?, "7: empty transfer to account 7");
    let report = d.close();
    assert_eq!((report.stats.completed, report.stats.failed), (3, 1));
    Ok(())
}
