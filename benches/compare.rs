//! Compares keyed-dispatch with three reference designs and a floor, on five workloads.
//!
//! ```text
//! cargo bench --bench compare                       # full: 5 rounds, ~7 min on 2 cores
//! cargo bench --bench compare -- --quick            # 1 small round: proves it works
//! cargo bench --bench compare -- --filter tiny      # only workloads whose id or label match
//! cargo bench --bench compare -- --rounds 3         # another number of rounds
//! cargo bench --bench compare -- --workers-sweep    # keyed vs striped at 1, 2, 4... workers
//! target/release/deps/compare-* --child keyed tiny 64 2000000 2.8   # one run (2.8 ns/spin step)
//! ```
//!
//! Every (design, workload) run happens in a child process (this program re-executed with
//! `--child <design> <workload> <keys> <jobs> <ns per spin iteration> [workers]`, workers
//! defaulting to the available parallelism), so that peak RSS,
//! allocator state and threads do not leak from one run into the next. Each run verifies what
//! its handler saw (order per key and producer, no overlap per key, every job exactly once) and
//! prints one line, `OK name=value...` or `FAILED why`. The parent interleaves the designs within
//! each round, prints one markdown table of medians over the rounds, and exits non-zero if any
//! run failed.

#[path = "compare/designs.rs"]
mod designs;
#[path = "compare/workloads.rs"]
mod workloads;

use designs::Design;
use std::{
    collections::BTreeMap,
    env,
    io::Read,
    panic,
    process::{exit, Command, Stdio},
    thread,
    time::{Duration, Instant},
};
use workloads::{Params, Workload};

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
    }
    // Anything else (cargo passes `--bench`) is ignored.
    let value = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let sweep = args.iter().any(|a| a == "--workers-sweep");
    let rounds = value("--rounds").map_or(
        match (quick, sweep) {
            (true, _) => 1,
            (false, true) => 3,
            (false, false) => 5,
        },
        |r| r.parse().expect("--rounds N"),
    );
    if sweep {
        workers_sweep(quick, rounds);
    } else {
        parent(quick, rounds, value("--filter"));
    }
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs one (design, workload) and exits; its one line of stdout is the parent's result.
fn child(args: &[String]) -> ! {
    // A panic anywhere (a worker's included) fails the run: say so where the parent looks.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        println!("FAILED panic: {}", info.to_string().replace('\n', " "));
        default_hook(info);
    }));
    let arg = |i: usize| args.get(i).map_or("", String::as_str);
    let p = Params {
        design: Design::from_id(arg(0)).expect("unknown design"),
        workload: Workload::from_id(arg(1)).expect("unknown workload"),
        keys: arg(2).parse().expect("keys"),
        jobs: arg(3).parse().expect("jobs"),
        ns_per_iter: arg(4).parse().expect("ns per iteration"),
        workers: args
            .get(5)
            .map_or_else(cores, |w| w.parse().expect("workers")),
    };
    match workloads::run(&p) {
        Ok(metrics) => println!("OK {metrics}"),
        Err(why) => {
            println!("FAILED {why}");
            exit(1);
        }
    }
    exit(0);
}

/// One row group of the table: a workload at one size, run by some designs.
struct Cell {
    workload: Workload,
    label: String,
    keys: u64,
    jobs: u64,
    designs: Vec<Design>,
    workers: usize,
}

fn cells(quick: bool) -> Vec<Cell> {
    use workloads::{HOL_KEYS, HOL_RATE};
    let size = |full: u64, small: u64| if quick { small } else { full };
    let tiny = size(2_000_000, 200_000);
    let mut cells: Vec<Cell> = [1, 64, 10_000, 1_000_000]
        .into_iter()
        .map(|k| Cell {
            workload: Workload::Tiny,
            label: format!("tiny jobs ({}), K={}", count(tiny), count(k)),
            keys: k,
            jobs: tiny,
            designs: Design::ALL.to_vec(),
            workers: cores(),
        })
        .collect();
    // Sized so that thread per key (slow with 10k threads) keeps full mode near 10 minutes.
    let producers = size(400_000, 100_000);
    let cpu = size(400_000, 40_000); // 2 s of single-core CPU in full mode
    let hol = size(2 * HOL_RATE, HOL_RATE / 2);
    let many = size(1_000_000, 100_000);
    let more = [
        (
            Workload::Producers,
            format!("4 producers (4 × {}), K=10k", count(producers / 4)),
            10_000,
            producers,
        ),
        (
            Workload::Cpu,
            format!("CPU-bound 5 µs ({}), K=64", count(cpu)),
            64,
            cpu,
        ),
        (
            Workload::HeadOfLine,
            format!(
                "head-of-line ({} s at 50k/s), 1k keys",
                hol as f64 / HOL_RATE as f64
            ),
            HOL_KEYS,
            hol,
        ),
        (
            Workload::ManyKeys,
            format!("many keys ({}, 1 job each)", count(many)),
            many,
            many,
        ),
    ];
    let main4 = [
        Design::Keyed,
        Design::ThreadPerKey,
        Design::Striped,
        Design::TaskPerKey,
    ];
    // Larger than the threads' run: at 400k jobs a run took 70 ms, mostly the runtimes' start.
    let tasks = size(2_000_000, 100_000);
    cells.push(Cell {
        workload: Workload::AsyncProducers,
        label: format!(
            "4 async producers (tokio tasks, 4 × {}), K=10k",
            count(tasks / 4)
        ),
        keys: 10_000,
        jobs: tasks,
        designs: vec![Design::Keyed, Design::TaskPerKey],
        workers: cores(),
    });
    // One job per key at a million (a hundred thousand when quick).
    #[cfg(feature = "tokio")]
    cells.extend(
        [
            (10_000, size(200_000, 20_000)),
            (size(1_000_000, 100_000), size(1_000_000, 100_000)),
        ]
        .map(|(keys, jobs)| Cell {
            workload: Workload::AsyncIo,
            label: format!(
                "async handlers, 1 ms I/O ({}), K={}",
                count(jobs),
                count(keys)
            ),
            keys,
            jobs,
            designs: vec![Design::Keyed, Design::TaskPerKey],
            workers: cores(),
        }),
    );
    cells.extend(more.into_iter().map(|(workload, label, keys, jobs)| {
        let mut designs = main4.to_vec();
        // Pinning trades throughput for latency; no memory to measure there.
        if workload != Workload::ManyKeys {
            designs.insert(1, Design::KeyedPinned);
        }
        Cell {
            workload,
            label,
            keys,
            jobs,
            designs,
            workers: cores(),
        }
    }));
    cells
}

/// 1_000_000 as "1M", 10_000 as "10k".
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

enum Outcome {
    Ok(BTreeMap<String, f64>),
    Failed(String),
    Skipped(String),
}

impl Outcome {
    fn metric(&self, name: &str) -> Option<f64> {
        match self {
            Outcome::Ok(m) => m.get(name).copied(),
            _ => None,
        }
    }
}

fn run_child(design: Design, cell: &Cell, ns_per_iter: f64, timeout: Duration) -> Outcome {
    if design == Design::ThreadPerKey && cell.keys > 10_000 {
        return Outcome::Skipped(format!("skipped ({} threads)", count(cell.keys)));
    }
    let exe = env::current_exe().expect("current_exe");
    let args = [
        design.id().to_string(),
        cell.workload.id().into(),
        cell.keys.to_string(),
        cell.jobs.to_string(),
        format!("{ns_per_iter:?}"),
        cell.workers.to_string(),
    ];
    let mut child = match Command::new(exe)
        .arg("--child")
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("spawning the child: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Failed(format!("hung: killed after {} s", timeout.as_secs()));
            }
        }
    };
    let mut out = String::new();
    let _ = child.stdout.take().expect("piped").read_to_string(&mut out);
    let line = out
        .lines()
        .find(|l| l.starts_with("OK ") || l.starts_with("FAILED "));
    match line.map(|l| l.split_once(' ').expect("has a space")) {
        Some(("OK", metrics)) if status.success() => Outcome::Ok(
            metrics
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect(),
        ),
        Some(("FAILED", why)) => Outcome::Failed(why.to_string()),
        _ => Outcome::Failed(format!("child {status} without a result")),
    }
}

/// Runs every cell's designs, interleaved within each round: results[cell][design][round].
fn run_rounds(
    cells: &[Cell],
    rounds: usize,
    ns_per_iter: f64,
    quick: bool,
) -> Vec<Vec<Vec<Outcome>>> {
    let timeout = Duration::from_secs(if quick { 120 } else { 300 });
    let mut results: Vec<Vec<Vec<Outcome>>> = cells
        .iter()
        .map(|c| c.designs.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=rounds {
        for (c, cell) in cells.iter().enumerate() {
            for (d, &design) in cell.designs.iter().enumerate() {
                let outcome = run_child(design, cell, ns_per_iter, timeout);
                let shown = match &outcome {
                    Outcome::Ok(m) => m.iter().map(|(k, v)| format!("{k}={v:.3} ")).collect(),
                    Outcome::Failed(why) => format!("FAILED({why})"),
                    Outcome::Skipped(why) => why.clone(),
                };
                eprintln!(
                    "[round {round}/{rounds}] {} | {}: {shown}",
                    cell.label,
                    design.name()
                );
                results[c][d].push(outcome);
            }
        }
    }
    results
}

fn parent(quick: bool, rounds: usize, filter: Option<String>) {
    let cells: Vec<Cell> = cells(quick)
        .into_iter()
        .filter(|c| {
            filter.as_ref().map_or(true, |f| {
                c.workload.id().contains(f.as_str()) || c.label.contains(f.as_str())
            })
        })
        .collect();
    let ns_per_iter = workloads::calibrate();
    let job = workloads::job_time(workloads::iterations(workloads::CPU_JOB, ns_per_iter));
    eprintln!(
        "calibrated: {ns_per_iter:.3} ns per spin iteration, CPU job {job:?}; load average {}",
        load_average()
    );
    let results = run_rounds(&cells, rounds, ns_per_iter, quick);
    print_header(quick, rounds, job);
    let mut failed = false;
    for (cell, per_design) in cells.iter().zip(&results) {
        let of = |design: Design| {
            let i = cell.designs.iter().position(|&d| d == design)?;
            Some(&per_design[i])
        };
        let (keyed, boxed) = (of(Design::Keyed), of(Design::KeyedBoxed));
        for (&design, outcomes) in cell.designs.iter().zip(per_design) {
            failed |= outcomes.iter().any(|o| matches!(o, Outcome::Failed(_)));
            let (median, ratio, notes) = row(cell, design, outcomes, keyed, boxed, job);
            println!(
                "| {} | {} | {median} | {ratio} | {notes} |",
                cell.label,
                design.name()
            );
        }
    }
    if failed {
        eprintln!("some runs FAILED: see the table");
        exit(1);
    }
}

/// Keyed-dispatch and striped on tiny jobs at 1, 2, 4... workers and the core count: how each
/// scales with its workers, which the main table (workers = cores) cannot show.
fn workers_sweep(quick: bool, rounds: usize) {
    let jobs = if quick { 200_000 } else { 2_000_000 };
    let mut workers: Vec<usize> = (0..).map(|i| 1 << i).take_while(|&w| w < cores()).collect();
    workers.push(cores());
    let cells: Vec<Cell> = workers
        .iter()
        .flat_map(|&workers| {
            [64, 10_000].map(|keys| Cell {
                workload: Workload::Tiny,
                label: format!(
                    "tiny jobs ({}), K={}, {workers} workers",
                    count(jobs),
                    count(keys)
                ),
                keys,
                jobs,
                designs: vec![Design::Keyed, Design::Striped],
                workers,
            })
        })
        .collect();
    // Tiny jobs do not spin, but the child takes the figure.
    let ns_per_iter = workloads::calibrate();
    eprintln!("load average {}", load_average());
    let results = run_rounds(&cells, rounds, ns_per_iter, quick);
    print_machine("workers as in the table");
    println!(
        "- mode {}, {rounds} round(s), tiny jobs ({}); jobs/s: median over rounds; keyed ÷ striped: median of the ratios within each round; speed-up: keyed-dispatch's median ÷ its median at 1 worker, same K",
        if quick { "quick" } else { "full" },
        count(jobs)
    );
    println!();
    println!("| workers | K | keyed-dispatch | striped | keyed ÷ striped | keyed-dispatch speed-up over 1 worker |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let rate =
        |outcomes: &[Outcome]| median(outcomes.iter().filter_map(|o| o.metric("rate")).collect());
    let times = |r: f64| {
        if r.is_nan() {
            "n/a".to_string()
        } else {
            format!("{r:.2}×")
        }
    };
    let mut failed = false;
    for (cell, per_design) in cells.iter().zip(&results) {
        let [keyed, striped] = &per_design[..] else {
            unreachable!("two designs")
        };
        failed |= keyed
            .iter()
            .chain(striped)
            .any(|o| matches!(o, Outcome::Failed(_)));
        let ratio = keyed
            .iter()
            .zip(striped)
            .filter_map(|(k, s)| Some(k.metric("rate")? / s.metric("rate")?));
        let one = cells
            .iter()
            .zip(&results)
            .find(|(c, _)| c.workers == 1 && c.keys == cell.keys)
            .map_or(f64::NAN, |(_, r)| rate(&r[0]));
        let shown = |d: usize| {
            row(
                cell,
                cell.designs[d],
                &per_design[d],
                None,
                None,
                Duration::ZERO,
            )
            .0
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            cell.workers,
            count(cell.keys),
            shown(0),
            shown(1),
            times(median(ratio.collect())),
            times(rate(keyed) / one)
        );
    }
    if failed {
        eprintln!("some runs FAILED: see the table");
        exit(1);
    }
}

/// The machine, toolchain and commit lines above a table.
fn print_machine(workers: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("model name"))?;
        Some(line.split_once(':')?.1.trim().to_string())
    });
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let unknown = || "unknown".to_string();
    println!(
        "- machine: {} cores (available_parallelism), {}; {workers}",
        cores(),
        cpu.unwrap_or_else(unknown)
    );
    println!(
        "- {}, commit {}",
        run("rustc", &["--version"]).unwrap_or_else(unknown),
        run("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(unknown)
    );
}

fn print_header(quick: bool, rounds: usize, job: Duration) {
    print_machine(&format!("workers = {} for every design", cores()));
    println!(
        "- mode {}, {rounds} round(s), median over rounds; CPU job calibrated at {:.2} µs",
        if quick { "quick" } else { "full" },
        job.as_secs_f64() * 1e6
    );
    println!("- ratio = design ÷ keyed-dispatch in the same round, median over rounds. Jobs/s rows: above 1 is faster than keyed-dispatch. Head-of-line rows (fast keys' p99 latency) and many-keys rows (bytes per key): above 1 is worse.");
    println!();
    println!("| workload | design | median | ratio to keyed-dispatch | notes |");
    println!("|---|---|---:|---:|---|");
}

/// The median, ratio and notes cells of one table row.
fn row(
    cell: &Cell,
    design: Design,
    outcomes: &[Outcome],
    keyed: Option<&Vec<Outcome>>,
    boxed: Option<&Vec<Outcome>>,
    job: Duration,
) -> (String, String, String) {
    if let Some(why) = outcomes.iter().find_map(|o| match o {
        Outcome::Failed(why) => Some(why),
        _ => None,
    }) {
        let n = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Failed(_)))
            .count();
        return (
            format!("FAILED({why})"),
            String::new(),
            format!("failed in {n} of {} rounds", outcomes.len()),
        );
    }
    if let Some(Outcome::Skipped(why)) = outcomes.first() {
        return (why.clone(), String::new(), String::new());
    }
    let med = |name: &str| median(outcomes.iter().filter_map(|o| o.metric(name)).collect());
    let primary = match cell.workload {
        Workload::HeadOfLine => "p99",
        Workload::ManyKeys => "bytes_per_key",
        _ => "rate",
    };
    // Per round, then the median: the rounds' conditions differ more than the designs' do.
    let ratio_to = |to: Option<&Vec<Outcome>>| {
        let ratios = outcomes
            .iter()
            .zip(to.into_iter().flatten())
            .filter_map(|(o, k)| Some(o.metric(primary)? / k.metric(primary)?));
        median(ratios.filter(|r| r.is_finite()).collect())
    };
    let ratio = match ratio_to(keyed) {
        r if r.is_nan() => "n/a".to_string(),
        r if r < 0.1 => format!("{r:.3}×"),
        r => format!("{r:.2}×"),
    };
    let (median, notes) = match cell.workload {
        Workload::HeadOfLine => {
            let late = med("producer_late_ms");
            let notes = if late > 1.0 {
                format!("producer fell {late:.0} ms behind its pace")
            } else {
                String::new()
            };
            (
                format!(
                    "p50 {:.0} / p99 {:.0} / max {:.0} µs",
                    med("p50"),
                    med("p99"),
                    med("max")
                ),
                notes,
            )
        }
        Workload::ManyKeys => {
            let held = med("keys_held");
            let held = if held < 0.0 {
                "no per-key state".to_string()
            } else {
                format!("{held:.0} keys held once idle")
            };
            (
                format!("{:.0} B/key", med("bytes_per_key")),
                format!("{held}; {:.0} threads", med("threads")),
            )
        }
        _ => {
            let rate = med("rate");
            let notes = match (cell.workload, design) {
                (Workload::Cpu, _) => format!(
                    "efficiency {:.0}%",
                    100.0 * rate * job.as_secs_f64() / cores() as f64
                ),
                (_, Design::ThreadPerKey) => format!("threads: {}", count(cell.keys)),
                (_, Design::TaskPerKey) => format!("tasks: {}", count(cell.keys)),
                (_, Design::Floor) => "no keys: 1 producer → 1 consumer, bounded(1024)".into(),
                // The like-for-like comparison: both sides allocate a closure per job.
                (_, Design::StripedBoxed) => {
                    format!("{:.2}× keyed-dispatch (boxed closure)", ratio_to(boxed))
                }
                _ => String::new(),
            };
            let notes = if cell.workload == Workload::AsyncIo {
                format!(
                    "{:.0} B/key at the peak; {:.0} keys held once idle; {:.0} threads",
                    med("bytes_per_key"),
                    med("keys_held"),
                    med("threads")
                )
            } else {
                notes
            };
            (format!("{:.2} M jobs/s", rate / 1e6), notes)
        }
    };
    (median, ratio, notes)
}

/// NaN when empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The 1-minute load average before the runs: other processes on the machine skew every number
/// (the runs themselves raise it: thread per key makes 10k threads runnable).
fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg
        .split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_string()
}
