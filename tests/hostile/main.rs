//! User code that misbehaves inside the library: keys whose `Hash`, `Eq`, `Clone`, `Drop` or
//! `Debug` panic, jobs whose `Drop` panics, hooks whose payloads panic when dropped, keys whose
//! `Drop` calls back into the dispatcher, configurations at the edge of their types; and two
//! races of the library's own: two threads closing one pool, and counters read while
//! dispatches are being refused.
//!
//! Each test asserts the contained behaviour: a panic of user code called on the caller's
//! thread reaches the caller as a panic and leaves nothing pending; one on a worker thread is
//! caught there; either way every accepted job still runs exactly once, in order per key, and
//! `close` returns. A test whose failure could abort the process or hang it runs its scenario
//! in a child process (see [`in_child`]), so that it fails alone, with the child's output.
//!
//! The keys and jobs that panic on a schedule are in [`hostile`]; the quickcheck property over
//! random scripts of them is in `property`.

#[path = "../common/mod.rs"]
mod common;

mod close_now;
mod config;
mod counters;
mod dispatch;
mod hostile;
mod pool_close;
mod pool_threads;
mod property;
mod reentrant_drop;
mod rehash;

use common::{Latch, Watchdog, HANG};
use hostile::Key;
use std::{
    collections::HashMap,
    ops::Deref,
    process::{Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex, PoisonError},
};

/// The variable that tells a child process which scenario it runs.
const CHILD: &str = "HOSTILE_CHILD";

/// Printed by a child before its scenario, so that the parent knows it ran one (a misspelt
/// test name would otherwise run no test and succeed).
const RAN: &str = "hostile child ran: ";

/// A test's full name inside this binary, as `--exact` wants it: `module::test`.
fn test_path(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{test}"),
        None => test.to_owned(),
    }
}

/// Runs `scenario` in a child process: the test binary runs itself, filtered to the test
/// `test` (its full name, see [`test_path`]), with [`CHILD`] naming it; there `in_child` runs
/// the scenario. The parent asserts that the child ran it and exited successfully, so that an
/// abort (a panic escaping a worker thread, or a watchdog) fails this test only, with the
/// child's output in the message.
fn in_child(test: &str, scenario: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some_and(|child| child == test) {
        println!("{RAN}{test}");
        scenario();
        return;
    }
    // The child's own watchdogs fire first; this one only covers a child that cannot start.
    let _watchdog = Watchdog::new(&format!("{test} (parent of the child)"), HANG * 3);
    let output = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .stdin(Stdio::null())
        .output()
        .expect("the child process starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ran = stdout.contains(&format!("{RAN}{test}"));
    assert!(
        ran && output.status.success(),
        "{test}: the child process {}\n----- its output (last lines) -----\n{}\n{}",
        describe(output.status, ran),
        tail(&stdout, 40),
        tail(&stderr, 60),
    );
}

/// How a child process ended, in words.
fn describe(status: ExitStatus, ran: bool) -> String {
    if !ran {
        return format!("did not run the scenario (is the test name right?): {status}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let what = match signal {
                6 => " (SIGABRT: the process aborted)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("was killed by signal {signal}{what}");
        }
    }
    format!("failed: {status}")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A watchdog for one test (see `common::Watchdog`).
fn watchdog(test: &str) -> Watchdog {
    Watchdog::new(test, HANG)
}

/// Holds a value that must not be dropped while its test fails. A dispatcher that today's
/// failure left with a job it can never finish would hang in its `Drop` (which closes it),
/// turning a failed assertion into a watchdog abort with no message; unwinding leaks it
/// instead. Dropped normally otherwise.
struct LeakOnPanic<T>(Option<T>);

impl<T> LeakOnPanic<T> {
    fn new(value: T) -> Self {
        LeakOnPanic(Some(value))
    }
}

impl<T> Deref for LeakOnPanic<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T> Drop for LeakOnPanic<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// The jobs that ran, per key id, and a check that no two jobs of one key ran at once. Faults
/// seen inside handlers (where a failed assertion would only count as the job's panic) are
/// noted and reported by the test thread.
#[derive(Debug, Default)]
struct Ledger {
    /// Per key: the sequence numbers of its jobs, in the order they started.
    runs: Mutex<HashMap<u64, Vec<u64>>>,
    /// Per key: its jobs running right now.
    running: Mutex<HashMap<u64, usize>>,
    faults: Mutex<Vec<String>>,
}

/// A job of a key counted as running until dropped.
struct Running<'a> {
    ledger: &'a Ledger,
    key: u64,
}

impl Ledger {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Call first thing in a handler; hold the guard until the job ends.
    fn start(&self, key: u64, seq: u64) -> Running<'_> {
        let running = {
            let mut running = lock(&self.running);
            let count = running.entry(key).or_default();
            *count += 1;
            *count
        };
        if running > 1 {
            lock(&self.faults).push(format!(
                "two jobs of key {key} ran at once: job {seq} started while another ran"
            ));
        }
        lock(&self.runs).entry(key).or_default().push(seq);
        Running { ledger: self, key }
    }

    /// The sequence numbers of `key`'s jobs, in the order they started.
    fn runs_of(&self, key: u64) -> Vec<u64> {
        lock(&self.runs).get(&key).cloned().unwrap_or_default()
    }

    fn count(&self) -> usize {
        lock(&self.runs).values().map(Vec::len).sum()
    }

    /// Notes a fault seen in a handler.
    fn note(&self, fault: String) {
        lock(&self.faults).push(fault);
    }

    /// Panics with the faults noted in handlers, if any.
    fn check(&self) {
        let faults = lock(&self.faults);
        assert!(faults.is_empty(), "faults in handlers: {faults:#?}");
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *lock(&self.ledger.running).entry(self.key).or_default() -= 1;
    }
}

/// A job that names its place in its key's order, and whether it holds its thread.
#[derive(Debug, Clone, Copy)]
struct Step {
    seq: u64,
    /// Once started, report the key and wait for the release latch.
    hold: bool,
}

impl Step {
    fn quick(seq: u64) -> Self {
        Step { seq, hold: false }
    }

    fn held(seq: u64) -> Self {
        Step { seq, hold: true }
    }
}

/// A handler of [`Step`]s: records each in `ledger`; a held one sends its key's id on
/// `started`, then waits for `release`.
fn step_handler(
    ledger: &Arc<Ledger>,
    started: mpsc::Sender<u64>,
    release: &Arc<Latch>,
) -> impl Fn(&Key, Step) + Send + Sync + 'static {
    let (ledger, release) = (Arc::clone(ledger), Arc::clone(release));
    move |key: &Key, step: Step| {
        let _running = ledger.start(key.id, step.seq);
        if step.hold {
            let _ = started.send(key.id);
            release.wait();
        }
    }
}

/// Locks, ignoring poison: a test's bookkeeping stays readable after a deliberate panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A logger that formats every record, at every level, as a real one would: the library's log
/// lines name their keys, so this calls the keys' `Debug` wherever a line is logged.
struct FormatEverything;

impl log::Log for FormatEverything {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        std::hint::black_box(record.args().to_string());
    }

    fn flush(&self) {}
}

/// Installs [`FormatEverything`] for the whole process (a child's, since a logger cannot be
/// removed again).
fn format_every_log_line() {
    static LOGGER: FormatEverything = FormatEverything;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Installs, for the whole process, a panic hook that stays silent on the deliberate panics of
/// hostile keys and tasks (thousands of them in the property, each printed with a backtrace
/// under `RUST_BACKTRACE`) and hands every other panic to the default hook.
fn quiet_hostile_panics() {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if !message.is_some_and(|m| m.starts_with(hostile::PANIC_PREFIX)) {
                default(info);
            }
        }));
    });
}
