//! Throughput, latency and failover of the Redis Streams consumer, each measurement against a
//! fresh redis-server of its own (on a unix socket).
//!
//! ```text
//! cargo bench -p keyed-dispatch-redis --bench consume              # full: ~3 min on 2 cores
//! cargo bench -p keyed-dispatch-redis --bench consume -- --quick   # small sizes: proves it works
//! ```
//!
//! 1. Tiny jobs: N entries published first, then consumers whose handler only counts; jobs/s
//!    from the consumers' start until the count reaches N, with one and with three consumers.
//! 2. parallel-consumer's published workload: 10,000 records over 1,000 keys, each sleeping a
//!    uniformly random 0..=5 ms, 16 workers; compared with the ideal, sum of delays / 16.
//! 3. Takeover after a crash: a consumer in a child process (this program re-executed with
//!    `--child-consume URL TOPIC MEMBER LEASE_MS`) is SIGKILLed while holding half of the
//!    partitions; the time until the survivor has run one new entry of every partition.
//!
//! Prints one markdown table; exits non-zero if a measurement failed (a wait that ran out).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Server;
use keyed_dispatch_redis::{partition_of, Consumer, Entry, Publisher};
use std::{
    env,
    process::{exit, Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

const PARTITIONS: u32 = 16;
const KEYS: usize = 1_000;
/// Entries per pipelined `publish_all`: large enough that round trips do not dominate.
const PUBLISH_CHUNK: usize = 1_000;
/// How long any wait may last before the measurement counts as failed (a hang).
const MAX_WAIT: Duration = Duration::from_secs(120);
/// The lease of both consumers in the takeover measurement.
const TAKEOVER_LEASE: Duration = Duration::from_millis(1_000);
/// How often Redis or a consumer is polled while waiting for a state (not while timing).
const POLL: Duration = Duration::from_millis(10);

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child-consume") {
        child_consume(&args[i + 1..]);
    }
    // Shows the library's errors (env_logger's default level) next to the table.
    let _ = env_logger::try_init();
    // Anything else (cargo passes `--bench`) is ignored.
    let quick = args.iter().any(|a| a == "--quick");
    let started = Instant::now();

    println!(
        "# keyed-dispatch-redis: consume{}",
        if quick { " (--quick)" } else { "" }
    );
    println!();
    println!("- nproc: {}", cores());
    println!("- cpu: {}", cpu_model());
    println!("- {}", redis_version());
    println!();

    let mut table = Table::default();
    let tiny = if quick { 20_000 } else { 200_000 };
    tiny_jobs(&mut table, tiny, 1);
    tiny_jobs(&mut table, tiny, 3);

    let (records, runs) = if quick { (2_000, 1) } else { (10_000, 3) };
    let mut ratios = Vec::new();
    for run in 1..=runs {
        if let Some(ratio) = sleeping_jobs(&mut table, records, run) {
            ratios.push(ratio);
        }
    }
    if runs > 1 && ratios.len() == runs {
        let (elapsed, ideal) = median_by_ratio(&ratios);
        table.row(
            "parallel-consumer workload, median",
            format!("{:.1}% of ideal", 100.0 * ideal / elapsed),
            format!("{elapsed:.2} s, ideal {ideal:.2} s; reference 76%, target >= 89%"),
        );
    }

    let runs = if quick { 1 } else { 3 };
    for run in 1..=runs {
        takeover(&mut table, run);
    }

    table.print();
    println!();
    println!("total wall time: {:.1} s", started.elapsed().as_secs_f64());
    if table.failed {
        exit(1);
    }
}

/// Starts a consumer of `topic` that only acknowledges, and blocks until killed.
fn child_consume(args: &[String]) -> ! {
    let _ = env_logger::try_init();
    let [url, topic, member, lease_ms] = args else {
        eprintln!("usage: --child-consume URL TOPIC MEMBER LEASE_MS");
        exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("LEASE_MS"));
    // Kept alive by its binding until the parent kills the process.
    let _consumer = Consumer::builder(url, topic, member)
        .lease(lease)
        .start(|_: &Entry| -> Result<(), String> { Ok(()) })
        .unwrap_or_else(|e| {
            eprintln!("child {member}: {e}");
            exit(1);
        });
    loop {
        thread::park();
    }
}

/// Measurement 1: N tiny entries published, then consumed by `consumers` consumers here.
fn tiny_jobs(table: &mut Table, n: usize, consumers: usize) {
    let server = Server::start();
    let url = server.url();
    let topic = "tiny";
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut publisher = Publisher::create(&url, topic, PARTITIONS).expect("create the topic");
    let begin = Instant::now();
    for chunk in (0..n).step_by(PUBLISH_CHUNK) {
        let end = (chunk + PUBLISH_CHUNK).min(n);
        publisher
            .publish_all((chunk..end).map(|i| (keys[i % KEYS].as_str(), &b"x"[..])))
            .expect("publish");
    }
    let published = begin.elapsed().as_secs_f64();
    table.row(
        &format!(
            "publish {} entries, {} keys, {PARTITIONS} partitions (before {consumers} consumer{})",
            thousands(n as u64),
            thousands(KEYS as u64),
            if consumers == 1 { "" } else { "s" }
        ),
        format!("{} entries/s", thousands((n as f64 / published) as u64)),
        format!(
            "{published:.2} s, pipelines of {}",
            thousands(PUBLISH_CHUNK as u64)
        ),
    );

    let counter = Counter::new(n as u64);
    // Jobs run by each consumer, counted by the handler: how the partitions were spread.
    let runs: Vec<Arc<AtomicU64>> = (0..consumers).map(|_| Arc::default()).collect();
    let workers = cores();
    let begin = Instant::now();
    let started: Vec<Consumer> = runs
        .iter()
        .enumerate()
        .map(|(m, ran)| {
            let (counter, ran) = (Arc::clone(&counter), Arc::clone(ran));
            Consumer::builder(&url, topic, &format!("member-{m}"))
                .workers(workers)
                .start(move |_: &Entry| -> Result<(), String> {
                    ran.fetch_add(1, Ordering::Relaxed);
                    counter.add(1);
                    Ok(())
                })
                .expect("start a consumer")
        })
        .collect();
    let done = counter.wait(MAX_WAIT);
    let elapsed = begin.elapsed().as_secs_f64();
    for consumer in started {
        consumer.close();
    }
    let split: Vec<String> = runs
        .iter()
        .map(|ran| thousands(ran.load(Ordering::Relaxed)))
        .collect();
    let label = format!(
        "tiny jobs, {consumers} consumer{} x {workers} workers",
        if consumers == 1 { "" } else { "s" }
    );
    if !done {
        table.fail(&label, &counter, MAX_WAIT);
        return;
    }
    let mut detail = format!("{elapsed:.2} s");
    if consumers > 1 {
        detail.push_str(&format!("; run per consumer: {}", split.join(" / ")));
    }
    let reruns = counter.count().saturating_sub(n as u64);
    if reruns > 0 {
        detail.push_str(&format!("; {reruns} re-executed"));
    }
    table.row(
        &label,
        format!("{} jobs/s", thousands((n as f64 / elapsed) as u64)),
        detail,
    );
}

/// Measurement 2: parallel-consumer's workload; returns (elapsed, ideal) in seconds.
fn sleeping_jobs(table: &mut Table, records: usize, run: usize) -> Option<(f64, f64)> {
    const WORKERS: usize = 16;
    let server = Server::start();
    let url = server.url();
    let topic = "sleepy";
    // The delays are fixed up front (and travel in the payload), so the ideal is exact.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ run as u64);
    let delays: Vec<u8> = (0..records).map(|_| (rng.next() % 6) as u8).collect();
    let total_ms: u64 = delays.iter().map(|&d| u64::from(d)).sum();
    let ideal = total_ms as f64 / 1_000.0 / WORKERS as f64;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut publisher = Publisher::create(&url, topic, PARTITIONS).expect("create the topic");
    for chunk in (0..records).step_by(PUBLISH_CHUNK) {
        let end = (chunk + PUBLISH_CHUNK).min(records);
        publisher
            .publish_all((chunk..end).map(|i| (keys[i % KEYS].as_str(), &delays[i..=i])))
            .expect("publish");
    }

    let counter = Counter::new(records as u64);
    let handled = Arc::clone(&counter);
    let begin = Instant::now();
    let consumer = Consumer::builder(&url, topic, "member-0")
        .workers(WORKERS)
        .start(move |entry: &Entry| -> Result<(), String> {
            let ms = entry.payload().first().copied().unwrap_or(0);
            if ms > 0 {
                // The job's work: parallel-consumer's benchmark sleeps too.
                thread::sleep(Duration::from_millis(u64::from(ms)));
            }
            handled.add(1);
            Ok(())
        })
        .expect("start the consumer");
    let done = counter.wait(MAX_WAIT);
    let elapsed = begin.elapsed().as_secs_f64();
    consumer.close();
    let label = format!(
        "parallel-consumer workload ({} records, {WORKERS} workers), run {run}",
        thousands(records as u64)
    );
    if !done {
        table.fail(&label, &counter, MAX_WAIT);
        return None;
    }
    table.row(
        &label,
        format!("{:.1}% of ideal", 100.0 * ideal / elapsed),
        format!("{elapsed:.2} s, ideal {ideal:.2} s ({total_ms} ms of sleep / {WORKERS})"),
    );
    Some((elapsed, ideal))
}

/// Measurement 3: a child consumer holding half of the partitions is killed; how long until
/// the other consumer has run an entry published to each partition right after the kill.
fn takeover(table: &mut Table, run: usize) {
    let label = format!("takeover after SIGKILL, run {run}");
    let limit = TAKEOVER_LEASE + Duration::from_secs(1);
    let server = Server::start();
    let url = server.url();
    let topic = "takeover";
    let mut publisher = Publisher::create(&url, topic, PARTITIONS).expect("create the topic");
    let mut redis = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to the server");

    let mut child = Killed(
        Command::new(env::current_exe().expect("this program's path"))
            .arg("--child-consume")
            .args([&url, topic, "crasher"])
            .arg(TAKEOVER_LEASE.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the child consumer"),
    );
    let holds_all = wait_until(MAX_WAIT, || {
        (0..PARTITIONS).all(|p| {
            redis::cmd("GET")
                .arg(format!("{topic}:lease:{p}"))
                .query::<Option<String>>(&mut redis)
                .expect("GET a lease")
                .is_some_and(|v| v.starts_with("crasher/"))
        }) || child.0.try_wait().ok().flatten().is_some()
    });
    if !holds_all || child.0.try_wait().ok().flatten().is_some() {
        table.failure(&label, "the child did not take all 16 partitions".into());
        return;
    }

    let counter = Counter::new(u64::from(PARTITIONS));
    let handled = Arc::clone(&counter);
    let survivor = Consumer::builder(&url, topic, "survivor")
        .lease(TAKEOVER_LEASE)
        .start(move |_: &Entry| -> Result<(), String> {
            handled.add(1);
            Ok(())
        })
        .expect("start the surviving consumer");
    let half = PARTITIONS as usize / 2;
    if !wait_until(MAX_WAIT, || survivor.partitions().len() == half) {
        let held = survivor.partitions().len();
        survivor.close();
        table.failure(
            &label,
            format!("the spread did not settle: survivor holds {held}"),
        );
        return;
    }

    // One key per partition, found before the kill so that the clock times the takeover only.
    let mut keys: Vec<Option<String>> = vec![None; PARTITIONS as usize];
    for i in 0.. {
        if keys.iter().all(Option::is_some) {
            break;
        }
        let key = format!("probe-{i}");
        keys[partition_of(key.as_bytes(), PARTITIONS) as usize].get_or_insert(key);
    }
    child.0.kill().expect("SIGKILL the child");
    let t0 = Instant::now();
    let _ = child.0.wait();
    for key in keys.iter().flatten() {
        publisher.publish(key, b"after the crash").expect("publish");
    }
    let done = counter.wait(MAX_WAIT);
    let elapsed = t0.elapsed();
    survivor.close();
    if !done {
        table.fail(&label, &counter, MAX_WAIT);
        return;
    }
    table.row(
        &label,
        format!("{:.2} s", elapsed.as_secs_f64()),
        format!(
            "limit {:.2} s (lease {:.1} s + 1 s): {}",
            limit.as_secs_f64(),
            TAKEOVER_LEASE.as_secs_f64(),
            if elapsed <= limit { "within" } else { "OVER" }
        ),
    );
}

/// Counts handled entries and wakes the waiter when `target` is reached.
struct Counter {
    count: AtomicU64,
    target: u64,
    reached: Mutex<bool>,
    signal: Condvar,
}

impl Counter {
    fn new(target: u64) -> Arc<Counter> {
        Arc::new(Counter {
            count: AtomicU64::new(0),
            target,
            reached: Mutex::new(false),
            signal: Condvar::new(),
        })
    }

    fn add(&self, n: u64) {
        // Exactly one caller crosses the target, even with re-executions past it.
        let before = self.count.fetch_add(n, Ordering::SeqCst);
        if before < self.target && before + n >= self.target {
            *self.reached.lock().unwrap() = true;
            self.signal.notify_all();
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the target was reached within `limit`.
    fn wait(&self, limit: Duration) -> bool {
        let reached = self.reached.lock().unwrap();
        let (reached, _) = self
            .signal
            .wait_timeout_while(reached, limit, |reached| !*reached)
            .unwrap();
        *reached
    }
}

/// Polls `condition` until it holds (true) or `limit` passes (false).
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// A child process, killed and reaped when dropped (a failed measurement included).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift64: the same delays on every run of the program.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<[String; 3]>,
    failed: bool,
}

impl Table {
    fn row(&mut self, label: &str, result: String, detail: String) {
        eprintln!("{label}: {result} ({detail})");
        self.rows.push([label.to_string(), result, detail]);
    }

    fn failure(&mut self, label: &str, why: String) {
        self.failed = true;
        self.row(label, "FAILED".into(), why);
    }

    fn fail(&mut self, label: &str, counter: &Counter, limit: Duration) {
        let why = format!(
            "{} of {} handled after {:.0} s",
            counter.count(),
            counter.target,
            limit.as_secs_f64()
        );
        self.failure(label, why);
    }

    fn print(&self) {
        println!("| measurement | result | detail |");
        println!("|---|---:|---|");
        for [label, result, detail] in &self.rows {
            println!("| {label} | {result} | {detail} |");
        }
    }
}

/// The middle run by ratio to the ideal, of an odd number of runs.
fn median_by_ratio(runs: &[(f64, f64)]) -> (f64, f64) {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
    sorted[sorted.len() / 2]
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn redis_version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "redis-server: unknown version".into())
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
