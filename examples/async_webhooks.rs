//! Per-tenant webhook delivery with async handlers: thousands of tenants in flight at once on a
//! two-thread Tokio runtime, every tenant's webhooks delivered in the order they were
//! dispatched, however often a delivery fails and is retried.
//!
//! 5,000 tenants get 10 webhooks each, dispatched with `dispatch_async` by four producer tasks.
//! Each delivery is a future (`build_async_retrying`) that awaits simulated network I/O, so a
//! tenant waiting on its endpoint holds no thread: up to `max_in_flight` deliveries are in
//! flight at once over the runtime's two threads. A tenant's queue holds 4 webhooks
//! (`key_capacity`), fewer than its 10, so a producer that gets ahead of a tenant waits for
//! room, parked as a task, not a thread.
//!
//! The endpoints are simulated, with seeded latencies (0 to 3 ms) and failures, so that every
//! run is the same:
//!
//! - odd tenants' endpoints are flaky: they fail one attempt in five (a 503), which the retry
//!   policy's backoff, 1 ms doubling up to 16 ms, gets through within six attempts, but for
//!   the odd webhook that fails all six: it is dead-lettered;
//! - tenants `6, 16, 26, ...` are rate limited: every fourth webhook first gets a 429 asking to
//!   retry after 5 ms, which the handler passes on with `Failure::retry_after`;
//! - tenants `7, 257, 507, ...` have endpoints gone for good (a 410): each of their webhooks is
//!   dead-lettered at once with `Failure::permanent`, and parked;
//! - the other endpoints always answer.
//!
//! A failed webhook waits out its backoff on the runtime's timer, holding no task, while its
//! tenant's later webhooks wait behind it and the other tenants go on. Once the dispatcher is
//! idle, every tenant has been evicted. At the end the example replays the seeded endpoints
//! and checks, per tenant, that every webhook was delivered or dead-lettered exactly once,
//! after the attempts it should have taken, and in dispatch order; that no tenant ever had
//! two deliveries in flight; and that many tenants were in flight at once. It prints a short
//! summary, and exits non-zero if any check fails.
//!
//! ```text
//! cargo run --release --features tokio --example async_webhooks
//! ```

use keyed_dispatch::{Dispatcher, Failure, RetryPolicy};
use std::{
    error::Error,
    fmt,
    future::{poll_fn, Future},
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const TENANTS: u32 = 5_000;
const HOOKS_PER_TENANT: u32 = 10;
const PRODUCERS: u32 = 4;
/// Below `HOOKS_PER_TENANT`, so that a producer running ahead of a tenant waits for room.
const KEY_CAPACITY: usize = 4;
/// Enough for every tenant to have a delivery in flight: the cap is on futures, not threads.
const MAX_IN_FLIGHT: usize = 5_000;
const MAX_ATTEMPTS: u32 = 6;
const RETRY_AFTER: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
struct Webhook {
    seq: u32,
    /// Shared, since each attempt gets a clone of the webhook.
    body: Arc<str>,
}

/// What an endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendError {
    Unavailable,
    TooManyRequests,
    Gone,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Unavailable => "503 Service Unavailable",
            SendError::TooManyRequests => "429 Too Many Requests",
            SendError::Gone => "410 Gone",
        })
    }
}

/// How a tenant's endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Steady,
    Flaky,
    RateLimited,
    Gone,
}

impl Endpoint {
    const ALL: [Endpoint; 4] = [
        Endpoint::Steady,
        Endpoint::Flaky,
        Endpoint::RateLimited,
        Endpoint::Gone,
    ];

    fn of(tenant: u32) -> Self {
        if tenant % 250 == 7 {
            Endpoint::Gone
        } else if tenant % 10 == 6 {
            Endpoint::RateLimited
        } else if tenant % 2 == 1 {
            Endpoint::Flaky
        } else {
            Endpoint::Steady
        }
    }
}

/// A tiny xorshift generator, seeded per attempt so that runs repeat.
struct XorShift(u64);

impl XorShift {
    fn seeded(tenant: u32, seq: u32, attempt: u32) -> Self {
        let seed = u64::from(tenant) << 32 | u64::from(seq) << 8 | u64::from(attempt);
        // The odd multiplier spreads neighbouring seeds apart; `| 1` keeps the state off zero,
        // where xorshift would stay.
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..4 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// What `tenant`'s endpoint does with attempt `attempt` (from 1) of webhook `seq`: how long it
/// takes, and what it answers. A pure function, so that the check can replay it.
fn answer(tenant: u32, seq: u32, attempt: u32) -> (Duration, Result<(), SendError>) {
    let mut rng = XorShift::seeded(tenant, seq, attempt);
    let latency = Duration::from_millis(rng.next() % 4);
    let result = match Endpoint::of(tenant) {
        Endpoint::Gone => Err(SendError::Gone),
        Endpoint::RateLimited if seq % 4 == 0 && attempt == 1 => Err(SendError::TooManyRequests),
        Endpoint::Flaky if rng.next() % 5 == 0 => Err(SendError::Unavailable),
        _ => Ok(()),
    };
    (latency, result)
}

/// How webhook `seq` of `tenant` must end, its attempts replayed as the dispatcher should run
/// them: the attempts it takes, and the error it is dead-lettered with, if it is.
fn expected(tenant: u32, seq: u32) -> (u32, Option<SendError>) {
    let mut attempt = 1;
    loop {
        match answer(tenant, seq, attempt).1 {
            Ok(()) => return (attempt, None),
            Err(err) if err == SendError::Gone || attempt == MAX_ATTEMPTS => {
                return (attempt, Some(err))
            }
            Err(_) => attempt += 1,
        }
    }
}

/// What happened to one tenant's webhooks.
#[derive(Default)]
struct TenantLog {
    /// Attempts so far, by sequence number: the endpoint's answer depends on it.
    attempts: [u32; HOOKS_PER_TENANT as usize],
    /// `(seq, attempts, dead-letter error)` as each webhook ended, delivered or dead-lettered.
    ends: Vec<(u32, u32, Option<SendError>)>,
}

/// The simulated endpoints, with what they saw.
struct Endpoints {
    tenants: Vec<Mutex<TenantLog>>,
    /// Whether a delivery of the tenant is in flight: two at once would break its order.
    busy: Vec<AtomicBool>,
    overlapped: AtomicBool,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl Endpoints {
    fn new() -> Self {
        Endpoints {
            tenants: (0..TENANTS).map(|_| Mutex::default()).collect(),
            busy: (0..TENANTS).map(|_| AtomicBool::new(false)).collect(),
            overlapped: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        }
    }

    fn log(&self, tenant: u32) -> std::sync::MutexGuard<'_, TenantLog> {
        self.tenants[tenant as usize].lock().unwrap()
    }

    /// Sends `hook` to `tenant`'s endpoint, awaiting its (simulated) answer.
    async fn send(&self, tenant: u32, hook: &Webhook) -> Result<(), SendError> {
        let attempt = {
            let mut log = self.log(tenant);
            log.attempts[hook.seq as usize] += 1;
            log.attempts[hook.seq as usize]
        };
        let busy = &self.busy[tenant as usize];
        if busy.swap(true, Ordering::SeqCst) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(in_flight, Ordering::SeqCst);

        // The network round trip, for the body's bytes.
        assert!(!hook.body.is_empty());
        let (latency, result) = answer(tenant, hook.seq, attempt);
        tokio::time::sleep(latency).await;

        if result.is_ok() {
            self.log(tenant).ends.push((hook.seq, attempt, None));
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        busy.store(false, Ordering::SeqCst);
        result
    }
}

/// Awaits `future`, and tells whether it had to wait (was ever pending): here, whether a
/// producer found its tenant's queue full.
async fn waited<F: Future>(future: F) -> (F::Output, bool) {
    let mut future = pin!(future);
    let mut pending = false;
    let output = poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        pending |= poll.is_pending();
        poll
    })
    .await;
    (output, pending)
}

fn main() -> Result<(), Box<dyn Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(deliver())
}

async fn deliver() -> Result<(), Box<dyn Error>> {
    let start = Instant::now();
    let endpoints = Arc::new(Endpoints::new());
    let errors: Arc<[AtomicU64; 3]> = Arc::default();

    let webhooks = {
        let (sender, parker, errors) = (
            Arc::clone(&endpoints),
            Arc::clone(&endpoints),
            Arc::clone(&errors),
        );
        Dispatcher::builder()
            .name("async-webhooks")
            .max_in_flight(MAX_IN_FLIGHT)
            .key_capacity(KEY_CAPACITY)
            .retry(
                RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(16))
                    .max_attempts(MAX_ATTEMPTS),
            )
            .on_error(move |_tenant: &u32, err: &SendError, _attempt: u32| {
                errors[*err as usize].fetch_add(1, Ordering::Relaxed);
            })
            .on_dead_letter(
                move |tenant: &u32, hook: Webhook, err: SendError, attempts: u32| {
                    // A real service would park it in a table or a queue for a person to look at.
                    parker
                        .log(*tenant)
                        .ends
                        .push((hook.seq, attempts, Some(err)));
                },
            )
            .build_async_retrying(move |tenant: u32, hook: Webhook| {
                let endpoints = Arc::clone(&sender);
                async move {
                    endpoints
                        .send(tenant, &hook)
                        .await
                        .map_err(|err| match err {
                            SendError::TooManyRequests => Failure::retry_after(RETRY_AFTER, err),
                            SendError::Gone => Failure::permanent(err),
                            SendError::Unavailable => Failure::from(err), // the policy's backoff
                        })
                }
            })?
    };

    // Each producer owns a share of the tenants, so that each tenant's webhooks are numbered
    // in the order they are dispatched; it sends them a round at a time, every tenant's next.
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let webhooks = webhooks.clone();
            tokio::spawn(async move {
                let mut waits = 0u64;
                for seq in 0..HOOKS_PER_TENANT {
                    for tenant in (producer..TENANTS).step_by(PRODUCERS as usize) {
                        let body = format!("event {seq} of tenant {tenant}").into();
                        let (sent, waited) =
                            waited(webhooks.dispatch_async(tenant, Webhook { seq, body })).await;
                        sent?;
                        waits += u64::from(waited);
                    }
                }
                Ok::<_, keyed_dispatch::DispatchError<u32, Webhook>>(waits)
            })
        })
        .collect();
    let mut waits = 0;
    for producer in producers {
        waits += producer.await??;
    }
    let dispatched = start.elapsed();

    webhooks.wait_idle_async().await?;
    let idle = webhooks.stats();
    assert_eq!(idle.keys, 0, "idle tenants are evicted: {idle:?}");
    let stats = webhooks.close_async().await.stats;
    let elapsed = start.elapsed();

    // Check every tenant against the replayed endpoints, and summarize by endpoint kind.
    assert!(
        !endpoints.overlapped.load(Ordering::SeqCst),
        "a tenant had two deliveries in flight at once"
    );
    // `[webhooks, delivered, retried, dead-lettered]` per endpoint kind.
    let mut rows = [[0u64; 4]; Endpoint::ALL.len()];
    let mut expected_errors = [0u64; 3];
    for tenant in 0..TENANTS {
        let log = endpoints.log(tenant);
        let seqs: Vec<u32> = log.ends.iter().map(|(seq, ..)| *seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "tenant {tenant} out of order: {seqs:?}"
        );
        let want: Vec<_> = (0..HOOKS_PER_TENANT)
            .map(|seq| {
                let (attempts, dead) = expected(tenant, seq);
                (seq, attempts, dead)
            })
            .collect();
        assert_eq!(
            log.ends, want,
            "tenant {tenant}: each webhook once, after its attempts"
        );
        let row = &mut rows[Endpoint::of(tenant) as usize];
        for &(seq, attempts, dead) in &log.ends {
            assert_eq!(
                log.attempts[seq as usize], attempts,
                "tenant {tenant}, {seq}"
            );
            row[0] += 1;
            row[1] += u64::from(dead.is_none());
            row[2] += u64::from(attempts - 1);
            row[3] += u64::from(dead.is_some());
            for attempt in 1..=attempts {
                if let Err(err) = answer(tenant, seq, attempt).1 {
                    expected_errors[err as usize] += 1;
                }
            }
        }
    }
    let errors = [0, 1, 2].map(|kind| errors[kind].load(Ordering::Relaxed));
    assert_eq!(
        errors, expected_errors,
        "errors seen by `on_error`, by kind"
    );
    let total = |column: usize| rows.iter().map(|row| row[column]).sum::<u64>();
    let webhook_count = u64::from(TENANTS * HOOKS_PER_TENANT);
    assert_eq!(total(0), webhook_count);
    assert_eq!(
        (stats.dispatched, stats.completed, stats.panicked),
        (webhook_count, webhook_count, 0)
    );
    assert_eq!(
        (stats.retried, stats.dead_lettered),
        (total(2), total(3)),
        "the dispatcher's counts"
    );
    let peak = endpoints.peak_in_flight.load(Ordering::SeqCst);
    assert!(
        peak > 100,
        "only {peak} deliveries were ever in flight at once"
    );

    println!("endpoint      tenants  webhooks  delivered  retried  dead-lettered");
    for (kind, row) in Endpoint::ALL.iter().zip(&rows) {
        let tenants = (0..TENANTS).filter(|&t| Endpoint::of(t) == *kind).count();
        println!(
            "{:<12}  {tenants:>7}  {:>8}  {:>9}  {:>7}  {:>13}",
            format!("{kind:?}"),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    println!(
        "\nall in order: {} webhooks to {TENANTS} tenants, {} delivered, {} retried, {} \
         dead-lettered",
        total(0),
        total(1),
        total(2),
        total(3)
    );
    println!(
        "errors: {} x 503, {} x 429, {} x 410",
        errors[SendError::Unavailable as usize],
        errors[SendError::TooManyRequests as usize],
        errors[SendError::Gone as usize]
    );
    println!(
        "peak {peak} deliveries in flight on 2 threads; producers waited for room {waits} \
         times, done dispatching in {dispatched:?}; all done in {elapsed:?}"
    );
    Ok(())
}
