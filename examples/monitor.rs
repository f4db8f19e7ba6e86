//! Watching a running dispatcher: a status line every 200 ms, the hottest key, latency
//! histograms and slow-job reports.
//!
//! The workload is skewed, as real tenants are: tenant 0 is hot (half of all jobs), tenant 1
//! slows down midway (its jobs go from under 100 µs to 60 ms, as if its database went bad),
//! and 500 cold tenants share the rest. The dispatcher records latency (`record_latency`) and
//! reports jobs running past 50 ms (`slow_job`). While it runs, a line every 200 ms shows
//! jobs/s, jobs queued, the p99 wait so far and the hottest key: tenant 0, until tenant 1's
//! backlog overtakes it. Tenant 1's queue fills, and its further jobs are refused (`Full`,
//! counted by cause). The shutdown is bounded (`close_timeout`): what tenant 1 still holds
//! comes back. At the end: text histograms of wait and run times, and the slow-job reports.
//!
//! ```text
//! cargo run --release --example monitor
//! ```

use keyed_dispatch::{Dispatcher, Histogram};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

const HOT: u32 = 0;
const SLOWING: u32 = 1;
const COLD_TENANTS: u32 = 500;
const RUN_FOR: Duration = Duration::from_secs(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slowed = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let d = {
        let (slowed, reports) = (Arc::clone(&slowed), Arc::clone(&reports));
        Dispatcher::builder()
            .name("monitor")
            .workers(4)
            .key_capacity(200)
            .record_latency(true)
            .slow_job(
                Duration::from_millis(50),
                move |tenant: &u32, running_for| {
                    reports.lock().unwrap().push((*tenant, running_for));
                },
            )
            .build(move |tenant: &u32, work_us: u64| {
                let work = if *tenant == SLOWING && slowed.load(Ordering::Relaxed) {
                    Duration::from_millis(60)
                } else {
                    Duration::from_micros(work_us)
                };
                thread::sleep(work);
            })?
    };

    let start = Instant::now();
    let producer = {
        let (d, slowed) = (d.clone(), Arc::clone(&slowed));
        thread::spawn(move || {
            let mut n: u64 = 0;
            while start.elapsed() < RUN_FOR {
                if start.elapsed() > RUN_FOR / 2 {
                    slowed.store(true, Ordering::Relaxed);
                }
                let tenant = match n % 4 {
                    0 | 1 => HOT,
                    2 if n % 40 == 2 => SLOWING,
                    _ => 2 + (n as u32 / 4) % COLD_TENANTS,
                };
                // A small, varied amount of work: 20 to 80 µs. A full key refuses at once.
                let _ = d.try_dispatch(tenant, 20 + n % 61);
                n += 1;
                // About 5,000 jobs a second in all.
                if n % 8 == 0 {
                    thread::sleep(Duration::from_micros(1600));
                }
            }
        })
    };

    println!("   time    jobs/s   queued   p99 wait   hottest key (queued)");
    let mut last = (Instant::now(), 0);
    while !producer.is_finished() {
        thread::sleep(Duration::from_millis(200));
        let m = d.metrics();
        let now = Instant::now();
        let rate = (m.stats.completed - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, m.stats.completed);
        let hottest = match d.hot_keys(1).first() {
            Some((tenant, queued)) => format!("tenant {tenant} ({queued})"),
            None => "-".to_string(),
        };
        println!(
            "{:>6.1}s {:>9.0} {:>8} {:>10} {hottest}",
            start.elapsed().as_secs_f64(),
            rate,
            m.stats.queued,
            format!("{:.1?}", m.wait.p99()),
        );
    }
    producer.join().expect("the producer does not panic");
    let left = d.close_timeout(Duration::from_millis(500))?;
    let m = d.metrics();
    let back: Vec<String> = left
        .iter()
        .map(|(tenant, jobs)| format!("tenant {tenant}: {}", jobs.len()))
        .collect();
    println!(
        "\n{} jobs in {:.1?}; {} refused, the key full; handed back at the shutdown: {}",
        m.stats.completed,
        start.elapsed(),
        m.stats.refusals.full_key,
        if back.is_empty() {
            "none".to_string()
        } else {
            back.join(", ")
        }
    );
    draw("wait (dispatch to start)", &m.wait);
    draw("run (start to end)", &m.run);
    let reports = reports.lock().unwrap();
    println!("\nslow jobs reported while running: {}", reports.len());
    for (tenant, running_for) in reports.iter().take(5) {
        println!("  tenant {tenant}: running for {running_for:.1?}");
    }
    let others = reports
        .iter()
        .filter(|(tenant, _)| *tenant != SLOWING)
        .count();
    println!("  from other tenants: {others}");
    // A run is counted as it ends; `completed`, when its batch does: the slowed tenant's turn
    // may still be running.
    assert!(m.run.count() >= m.stats.completed);
    Ok(())
}

/// A text histogram, one line per power of two of durations.
fn draw(title: &str, h: &Histogram) {
    println!(
        "\n{title}: {} jobs, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        h.count(),
        h.p50(),
        h.p99(),
        h.max()
    );
    // Merge the log-linear buckets into powers of two for a short picture.
    let mut rows: Vec<(Duration, u64)> = Vec::new();
    for (range, count) in h.buckets() {
        let floor = Duration::from_nanos(
            1 << (63 - (range.start.as_nanos() as u64).max(1).leading_zeros()),
        );
        match rows.last_mut() {
            Some((last, n)) if *last == floor => *n += count,
            _ => rows.push((floor, count)),
        }
    }
    let widest = rows.iter().map(|(_, n)| *n).max().unwrap_or(1);
    for (floor, count) in rows {
        let bar = "#".repeat(((count * 40).div_ceil(widest)) as usize);
        println!("  >= {:>9} {bar} {count}", format!("{floor:.1?}"));
    }
}
