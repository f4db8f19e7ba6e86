//! The workloads, as run inside a child process: each builds its handler, runs one design,
//! verifies what the handler saw and returns its metrics as `name=value` pairs.

use crate::designs::{Design, Handler, Job, Running, PRODUCER_SHIFT};
use hdrhistogram::Histogram;
use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering::*},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    Tiny,
    Producers,
    Cpu,
    HeadOfLine,
    ManyKeys,
    /// Four tokio tasks produce: `dispatch_async` into the library, or a send into each key's
    /// task's channel.
    AsyncProducers,
    /// I/O-like jobs, each awaiting a 1 ms timer: the library's async handlers
    /// (`build_async`), or a task per key. Needs the `tokio` feature.
    AsyncIo,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::Tiny,
        Workload::Producers,
        Workload::Cpu,
        Workload::HeadOfLine,
        Workload::ManyKeys,
        Workload::AsyncProducers,
        Workload::AsyncIo,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Workload::Tiny => "tiny",
            Workload::Producers => "producers",
            Workload::Cpu => "cpu",
            Workload::HeadOfLine => "head-of-line",
            Workload::ManyKeys => "many-keys",
            Workload::AsyncProducers => "async-producers",
            Workload::AsyncIo => "async-io",
        }
    }

    pub fn from_id(id: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == id)
    }
}

/// What a child is asked to run.
pub struct Params {
    pub design: Design,
    pub workload: Workload,
    pub keys: u64,
    pub jobs: u64,
    /// Calibrated by the parent, so that every child spins the same number of iterations.
    pub ns_per_iter: f64,
    pub workers: usize,
}

const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// Head-of-line: the producer's pace, and the slow key's job length.
pub const HOL_RATE: u64 = 50_000;
const HOL_SLOW: Duration = Duration::from_millis(2);
pub const HOL_KEYS: u64 = 1000;
pub const CPU_JOB: Duration = Duration::from_micros(5);

/// Runs one (design, workload) and returns its metrics, or why it failed.
pub fn run(p: &Params) -> Result<String, String> {
    let producers = if matches!(p.workload, Workload::Producers | Workload::AsyncProducers) {
        4
    } else {
        1
    };
    let check: &'static Check = Box::leak(Box::new(Check::new(p.keys, producers)));
    let throughput = |h: Handler| -> Result<String, String> {
        let d = p.design.start(p.workers, h);
        let start = Instant::now();
        thread::scope(|s| {
            for producer in 0..producers {
                let d = &*d;
                s.spawn(move || produce(d, producer, p.jobs / producers as u64, p.keys));
            }
        });
        d.finish();
        let secs = start.elapsed().as_secs_f64();
        check.verdict(p.jobs)?;
        Ok(format!("rate={}", p.jobs as f64 / secs))
    };
    match p.workload {
        Workload::Tiny | Workload::Producers => throughput(leak(move |key, job| {
            check.begin(key, job);
            check.end(key);
        })),
        Workload::Cpu => {
            let iters = iterations(CPU_JOB, p.ns_per_iter);
            throughput(leak(move |key, job| {
                check.begin(key, job);
                spin(iters, job.seq);
                check.end(key);
            }))
        }
        Workload::HeadOfLine => head_of_line(p, check),
        Workload::ManyKeys => many_keys(p, check),
        Workload::AsyncProducers => async_producers(p, producers, check),
        #[cfg(feature = "tokio")]
        Workload::AsyncIo => async_io(p, check),
        #[cfg(not(feature = "tokio"))]
        Workload::AsyncIo => Err("async handlers need `--features tokio`".into()),
    }
}

/// How long an I/O-like job waits.
#[cfg(feature = "tokio")]
const IO_WAIT: Duration = Duration::from_millis(1);

/// The library's `max_in_flight` in that workload: 10,000 futures at once. With one per key
/// at a million keys (a task each, as a task per key has), it dispatched 3.6x slower and held
/// 12x the memory (BENCHMARKS.md, "Async handlers").
#[cfg(feature = "tokio")]
const IO_IN_FLIGHT: usize = 10_000;

/// One producer task on a runtime of `workers` threads feeds `jobs` I/O-like jobs round-robin
/// over `keys` keys: the library's async handlers (at most [`IO_IN_FLIGHT`] in flight), or a
/// task per key with an unbounded channel (no cap). Jobs/s until the last job ends; the growth of
/// peak resident memory per key; the keys held once idle; the threads while running.
#[cfg(feature = "tokio")]
fn async_io(p: &Params, check: &'static Check) -> Result<String, String> {
    use dashmap::DashMap;
    use keyed_dispatch::Dispatcher;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = proc_status("VmRSS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.workers)
        .enable_time()
        .build()
        .expect("building the runtime");
    let (jobs, keys) = (p.jobs, p.keys);
    let job_of = move |i: u64| {
        let key = i % keys;
        (key, Job { key, seq: i + 1 })
    };
    let handle = move |key: u64, job: Job| async move {
        check.begin(key, job);
        tokio::time::sleep(IO_WAIT).await;
        check.end(key);
    };
    let all_ran = || async {
        while check.ran() < jobs {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mut threads = 0;
    let start = Instant::now();
    let (secs, held) = rt.block_on(async {
        match p.design {
            Design::Keyed => {
                let d = Dispatcher::builder()
                    .max_in_flight(IO_IN_FLIGHT)
                    .build_async(handle)
                    .expect("building keyed-dispatch");
                for i in 0..jobs {
                    let (key, job) = job_of(i);
                    d.dispatch_async(key, job).await.expect("refused");
                    if i == jobs / 2 {
                        threads = proc_status("Threads");
                    }
                }
                all_ran().await;
                let secs = start.elapsed().as_secs_f64();
                d.wait_idle_async().await.expect("wait_idle");
                let held = d.stats().keys;
                assert!(d.close_async().await.drained, "close did not drain");
                Ok((secs, held))
            }
            Design::TaskPerKey => {
                let senders: DashMap<u64, UnboundedSender<Job>> = DashMap::new();
                for i in 0..jobs {
                    let (key, job) = job_of(i);
                    let tx = senders.entry(key).or_insert_with(|| {
                        let (tx, mut rx) = unbounded_channel::<Job>();
                        tokio::spawn(async move {
                            while let Some(job) = rx.recv().await {
                                handle(key, job).await;
                            }
                        });
                        tx
                    });
                    tx.send(job).expect("key task gone");
                    drop(tx);
                    if i == jobs / 2 {
                        threads = proc_status("Threads");
                    }
                }
                all_ran().await;
                Ok((start.elapsed().as_secs_f64(), senders.len()))
            }
            other => Err(format!("{other:?} has no async handlers")),
        }
    })?;
    let peak = proc_status("VmHWM");
    check.verdict(jobs)?;
    Ok(format!(
        "rate={} bytes_per_key={} keys_held={held} threads={threads}",
        jobs as f64 / secs,
        (peak.saturating_sub(before) * 1024) as f64 / keys as f64,
    ))
}

/// `producers` tokio tasks on a runtime of `workers` threads feed the design: the library
/// through `dispatch_async` (its own pool runs the jobs), or a task per key on that runtime.
fn async_producers(p: &Params, producers: usize, check: &'static Check) -> Result<String, String> {
    use keyed_dispatch::Dispatcher;
    let h = leak(move |key, job| {
        check.begin(key, job);
        check.end(key);
    });
    let (jobs, keys) = (p.jobs / producers as u64, p.keys);
    let start = Instant::now();
    match p.design {
        Design::Keyed => {
            let d: &'static Dispatcher<u64, Job> = Box::leak(Box::new(
                Dispatcher::builder()
                    .workers(p.workers)
                    .build(move |key: &u64, job: Job| h(*key, job))
                    .expect("building keyed-dispatch"),
            ));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(p.workers)
                .build()
                .expect("building the producers' runtime");
            rt.block_on(async {
                let tasks: Vec<_> = (0..producers)
                    .map(|producer| {
                        tokio::spawn(async move {
                            for (key, job) in jobs_of(producer, jobs, keys) {
                                d.dispatch_async(key, job).await.expect("refused");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("producer panicked");
                }
            });
            assert!(d.close().drained, "keyed-dispatch: close did not drain");
        }
        Design::TaskPerKey => {
            let design = std::sync::Arc::new(crate::designs::TaskPerKey::new(p.workers, h));
            let tasks: Vec<_> = (0..producers)
                .map(|producer| {
                    let feeds = std::sync::Arc::clone(&design);
                    design.rt.spawn(async move {
                        for (key, job) in jobs_of(producer, jobs, keys) {
                            feeds.dispatch(key, job);
                        }
                    })
                })
                .collect();
            for task in tasks {
                design.rt.block_on(task).expect("producer panicked");
            }
            let design = std::sync::Arc::into_inner(design).expect("producers are done");
            Box::new(design).finish();
        }
        other => return Err(format!("{other:?} has no async producers")),
    }
    let secs = start.elapsed().as_secs_f64();
    check.verdict(p.jobs)?;
    Ok(format!("rate={}", p.jobs as f64 / secs))
}

fn leak(h: impl Fn(u64, Job) + Send + Sync + 'static) -> Handler {
    Box::leak(Box::new(h))
}

/// One producer's share: keys uniform over `keys`, the same sequence for every design.
fn produce(d: &dyn Running, producer: usize, jobs: u64, keys: u64) {
    for (key, job) in jobs_of(producer, jobs, keys) {
        d.dispatch(key, job);
    }
}

/// The jobs of one producer's share, in order.
fn jobs_of(producer: usize, jobs: u64, keys: u64) -> impl Iterator<Item = (u64, Job)> {
    let mut rng = Rng(SEED ^ (producer as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    (1..=jobs).map(move |i| {
        let key = rng.next() % keys;
        let seq = (producer as u64) << PRODUCER_SHIFT | i;
        (key, Job { key, seq })
    })
}

/// Key 0 gets a 2 ms busy job every 100th job, 999 other keys tiny ones, from one producer
/// paced at `HOL_RATE`; measures dispatch-to-start latency of the tiny ones.
fn head_of_line(p: &Params, check: &'static Check) -> Result<String, String> {
    let slow = iterations(HOL_SLOW, p.ns_per_iter);
    let clock = Instant::now();
    let hist: &'static Mutex<Histogram<u64>> = Box::leak(Box::new(Mutex::new(
        // Fixed bounds (1 ns to 1 min): no resizing while recording.
        Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram"),
    )));
    let d = p.design.start(
        p.workers,
        leak(move |key, job| {
            let started = clock.elapsed().as_nanos() as u64;
            check.begin(key, job);
            if key == 0 {
                spin(slow, job.seq);
            } else {
                // The lock costs tens of ns, against 20 µs between jobs.
                hist.lock()
                    .unwrap()
                    .saturating_record(started.saturating_sub(job.seq));
            }
            check.end(key);
        }),
    );
    let (mut rng, mut last, start) = (Rng(SEED), 0, Instant::now());
    let gap = Duration::from_nanos(1_000_000_000 / HOL_RATE);
    for i in 0..p.jobs {
        let due = start + gap * i as u32;
        // Sleeps while ahead of its pace and catches up in short bursts, as a producer fed by
        // the network would: one that spins for its pace takes a whole core of a small machine,
        // and then the p99 measures how the kernel shares the cores among more busy threads
        // than there are cores, not the design.
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            thread::sleep(ahead);
        }
        let key = if i % 100 == 0 {
            0
        } else {
            1 + rng.next() % (HOL_KEYS - 1)
        };
        // The dispatch time is the job's seq: made strictly increasing, by 1 ns at most.
        last = (clock.elapsed().as_nanos() as u64).max(last + 1);
        d.dispatch(key, Job { key, seq: last });
    }
    let late = start.elapsed().saturating_sub(gap * p.jobs as u32);
    d.finish();
    check.verdict(p.jobs)?;
    let h = hist.lock().unwrap();
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(format!(
        "p50={} p99={} max={} producer_late_ms={}",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.max()),
        late.as_secs_f64() * 1000.0
    ))
}

/// One tiny job on each of `keys` distinct keys: memory per key, keys held once idle, threads.
fn many_keys(p: &Params, check: &'static Check) -> Result<String, String> {
    // Reset VmHWM to the current RSS (Linux 4.0+), so that the peak is this run's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = proc_status("VmRSS");
    let d = p.design.start(
        p.workers,
        leak(move |key, job| {
            check.begin(key, job);
            check.end(key);
        }),
    );
    let mut threads = 0;
    for key in 0..p.keys {
        d.dispatch(key, Job { key, seq: 1 });
        if key == p.keys / 2 {
            threads = proc_status("Threads");
        }
    }
    threads = threads.max(proc_status("Threads"));
    while check.ran() < p.keys {
        thread::sleep(Duration::from_millis(10));
    }
    let held = d.keys_held();
    d.finish();
    let peak = proc_status("VmHWM");
    check.verdict(p.keys)?;
    let expected = p.workers as u64 + 1;
    if matches!(p.design, Design::Keyed) && threads != expected {
        return Err(format!(
            "{threads} threads while running, not workers + main = {expected}"
        ));
    }
    Ok(format!(
        "bytes_per_key={} keys_held={} threads={threads}",
        (peak.saturating_sub(before) * 1024) as f64 / p.keys as f64,
        held.map_or(-1, |k| k as i64)
    ))
}

/// A number from /proc/self/status (kB for the Vm* lines).
pub fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The checks every handler makes, at the same cost for every design: per key a busy flag (two
/// jobs of one key must never overlap), a count of jobs run, and the last seq seen per producer
/// (each must exceed the last). Per-key counters, not one shared counter, so that checking adds
/// no contention of its own.
pub struct Check {
    stride: usize,
    slots: Vec<AtomicU64>,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

const BUSY: usize = 0;
const COUNT: usize = 1;
const LAST: usize = 2;

impl Check {
    pub fn new(keys: u64, producers: usize) -> Check {
        let stride = LAST + producers;
        Check {
            stride,
            slots: (0..keys as usize * stride)
                .map(|_| AtomicU64::new(0))
                .collect(),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        }
    }

    fn slot(&self, key: u64) -> &[AtomicU64] {
        &self.slots[key as usize * self.stride..][..self.stride]
    }

    pub fn begin(&self, key: u64, job: Job) {
        let s = self.slot(key);
        if job.key != key {
            self.fail(format!("key {key} ran a job of key {}", job.key));
        }
        if s[BUSY].swap(1, Acquire) != 0 {
            self.fail(format!("two jobs of key {key} ran at once"));
        }
        let prev = s[LAST + job.producer()].swap(job.seq, Relaxed);
        if prev >= job.seq {
            self.fail(format!("key {key}: seq {:#x} ran after {prev:#x}", job.seq));
        }
        s[COUNT].fetch_add(1, Relaxed);
    }

    pub fn end(&self, key: u64) {
        self.slot(key)[BUSY].store(0, Release);
    }

    #[cold]
    fn fail(&self, why: String) {
        self.failures.fetch_add(1, Relaxed);
        self.first_failure.lock().unwrap().get_or_insert(why);
    }

    /// Jobs run so far.
    pub fn ran(&self) -> u64 {
        self.slots
            .iter()
            .skip(COUNT)
            .step_by(self.stride)
            .map(|c| c.load(Relaxed))
            .sum()
    }

    pub fn verdict(&self, dispatched: u64) -> Result<(), String> {
        let failures = self.failures.load(Relaxed);
        if failures > 0 {
            let first = self
                .first_failure
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default();
            return Err(format!("{failures} bad jobs, first: {first}"));
        }
        match self.ran() {
            ran if ran == dispatched => Ok(()),
            ran => Err(format!("{ran} jobs ran of {dispatched} dispatched")),
        }
    }
}

/// xorshift64: fast, and the same sequence for every design.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Real work (a serial chain of multiply-xorshift steps the compiler cannot shortcut) rather
/// than a sleep, so that a busy job holds its thread.
pub fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = Rng(seed | 1);
    for _ in 0..black_box(iters) {
        x.0 = x.next().wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    black_box(x.0)
}

pub fn iterations(d: Duration, ns_per_iter: f64) -> u64 {
    (d.as_nanos() as f64 / ns_per_iter).round().max(1.0) as u64
}

/// ns per `spin` iteration on this machine. The fastest of many short timed runs, after a
/// warm-up: short runs mostly escape preemption by other processes on a busy machine.
pub fn calibrate() -> f64 {
    spin(20_000_000, 1);
    (0..200)
        .map(|i| {
            let t = Instant::now();
            spin(200_000, i);
            t.elapsed().as_nanos() as f64 / 200_000.0
        })
        .fold(f64::MAX, f64::min)
}

/// The duration of one `spin(iters)` call: the fastest batch average, as above.
pub fn job_time(iters: u64) -> Duration {
    (0..50)
        .map(|_| {
            let t = Instant::now();
            for i in 0..100 {
                spin(iters, i);
            }
            t.elapsed() / 100
        })
        .min()
        .expect("50 batches")
}
