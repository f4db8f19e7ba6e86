//! Per-tenant webhook delivery against flaky endpoints: every tenant's webhooks are delivered
//! in the order they were dispatched, however often a delivery fails and is retried.
//!
//! The endpoints are simulated, with seeded failures so that every run is the same:
//!
//! - most tenants' endpoints fail one attempt in five (a 503); the retry policy's backoff,
//!   5 ms doubling up to 80 ms, gets each webhook through;
//! - tenant 6's endpoint is rate limited: every fourth webhook first gets a 429 asking to
//!   retry after 50 ms, which the handler passes on with `Failure::retry_after`;
//! - tenant 7's endpoint is gone for good (a 410): each of its webhooks is dead-lettered at
//!   once with `Failure::permanent`, and parked;
//! - tenant 3 is paused for maintenance at the start and resumed once the others are done:
//!   its webhooks wait, in order, and go out after the resume;
//! - every tenant gets a daily digest with `dispatch_after`, due 100 ms after the start;
//! - tenant 5's last webhook hangs (a connection that never answers), so the shutdown is
//!   bounded with `close_timeout`: it hands back what did not start and returns.
//!
//! No key's retry holds a thread: while a tenant waits out its backoff, the pool's threads
//! deliver other tenants' webhooks. At the end the example checks, per tenant, that every
//! webhook was delivered or dead-lettered exactly once and that the deliveries came in
//! dispatch order, and prints a short summary.
//!
//! ```text
//! cargo run --release --example webhooks
//! ```

use keyed_dispatch::{Dispatcher, Failure, RetryPolicy};
use std::{
    collections::BTreeMap,
    fmt,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

const TENANTS: u32 = 8;
const HOOKS_PER_TENANT: u32 = 40;
/// The digest's sequence number: after every ordinary webhook.
const DIGEST: u32 = 1000;
const PAUSED: u32 = 3;
const HUNG: u32 = 5;
const RATE_LIMITED: u32 = 6;
const GONE: u32 = 7;

#[derive(Debug, Clone)]
struct Webhook {
    seq: u32,
    body: String,
}

/// What an endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// The simulated endpoints: what each tenant's endpoint received, and how often each webhook
/// was tried.
#[derive(Default)]
struct Endpoints {
    received: Mutex<BTreeMap<u32, Vec<u32>>>,
    attempts: Mutex<BTreeMap<(u32, u32), u32>>,
}

impl Endpoints {
    /// Sends `hook` to `tenant`'s endpoint: succeeds, fails, or (tenant 5's last) hangs.
    fn send(
        &self,
        tenant: u32,
        hook: &Webhook,
        hang: &Mutex<mpsc::Receiver<()>>,
    ) -> Result<(), SendError> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry((tenant, hook.seq)).or_insert(0);
            *n += 1;
            *n
        };
        // The network round trip, for the body's bytes.
        assert!(!hook.body.is_empty());
        thread::sleep(Duration::from_micros(200));
        match tenant {
            GONE => return Err(SendError::Gone),
            RATE_LIMITED if hook.seq % 4 == 0 && attempt == 1 => {
                return Err(SendError::TooManyRequests)
            }
            HUNG if hook.seq == HOOKS_PER_TENANT - 1 => {
                // Never answers: blocks until the process exits.
                let _ = hang.lock().unwrap().recv();
            }
            _ if seeded(tenant, hook.seq, attempt) % 5 == 0 => return Err(SendError::Unavailable),
            _ => {}
        }
        self.received
            .lock()
            .unwrap()
            .entry(tenant)
            .or_default()
            .push(hook.seq);
        Ok(())
    }
}

/// A fixed pseudo-random number per attempt (splitmix64), so that runs repeat.
fn seeded(tenant: u32, seq: u32, attempt: u32) -> u64 {
    let mut z = (u64::from(tenant) << 40 | u64::from(seq) << 8 | u64::from(attempt))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let endpoints = Arc::new(Endpoints::default());
    let dead = Arc::new(Mutex::new(
        BTreeMap::<u32, Vec<(u32, SendError, u32)>>::new(),
    ));
    let errors = Arc::new(Mutex::new(BTreeMap::<(u32, SendError), u32>::new()));
    // Never sent to: tenant 5's last webhook waits on it for ever.
    let (_never, hang) = mpsc::channel::<()>();
    let hang = Mutex::new(hang);

    let webhooks = {
        let (endpoints, dead, errors) = (
            Arc::clone(&endpoints),
            Arc::clone(&dead),
            Arc::clone(&errors),
        );
        Dispatcher::builder()
            .name("webhooks")
            .workers(4)
            .key_capacity(HOOKS_PER_TENANT as usize)
            .retry(
                RetryPolicy::exponential(Duration::from_millis(5), Duration::from_millis(80))
                    .max_attempts(6),
            )
            .on_error(move |tenant: &u32, err: &SendError, _attempt: u32| {
                *errors.lock().unwrap().entry((*tenant, *err)).or_default() += 1;
            })
            .on_dead_letter(
                move |tenant: &u32, hook: Webhook, err: SendError, attempts: u32| {
                    // A real service would park it in a table or a queue for a person to look at.
                    dead.lock()
                        .unwrap()
                        .entry(*tenant)
                        .or_default()
                        .push((hook.seq, err, attempts));
                },
            )
            .build_retrying(
                move |tenant: &u32, hook: &Webhook| -> Result<(), Failure<SendError>> {
                    match endpoints.send(*tenant, hook, &hang) {
                        Ok(()) => Ok(()),
                        Err(SendError::TooManyRequests) => Err(Failure::retry_after(
                            Duration::from_millis(50),
                            SendError::TooManyRequests,
                        )),
                        Err(SendError::Gone) => Err(Failure::permanent(SendError::Gone)),
                        Err(err) => Err(err.into()), // retried with the policy's backoff
                    }
                },
            )?
    };

    webhooks.pause_key(&PAUSED);
    for tenant in 0..TENANTS {
        webhooks.dispatch_after(
            tenant,
            Webhook {
                seq: DIGEST,
                body: format!("digest for tenant {tenant}"),
            },
            Duration::from_millis(100),
        )?;
    }
    for seq in 0..HOOKS_PER_TENANT {
        for tenant in 0..TENANTS {
            let body = format!("event {seq} of tenant {tenant}");
            webhooks.dispatch(tenant, Webhook { seq, body })?;
        }
    }
    // The others go out meanwhile; the paused tenant's webhooks wait in its queue.
    for tenant in (0..TENANTS).filter(|&t| t != PAUSED && t != HUNG) {
        webhooks.flush_key(&tenant)?;
    }
    println!(
        "the other tenants' webhooks went out in {:?}; tenant {PAUSED}'s waited, paused",
        start.elapsed()
    );
    webhooks.resume_key(&PAUSED);
    webhooks.flush_key(&PAUSED)?;

    // Tenant 5's last webhook never returns: the shutdown is bounded.
    let left = webhooks.close_timeout(Duration::from_millis(300))?;
    let stats = webhooks.stats();
    println!(
        "shut down in {:?}: {} handed back; {} call still running (tenant {HUNG}'s, hung), \
         its tenant's later webhooks kept behind it",
        start.elapsed(),
        left.len(),
        stats.running,
    );
    assert!(
        left.is_empty(),
        "every other tenant drained in time: {left:?}"
    );
    assert_eq!(stats.running, 1);

    // Check and summarize, per tenant.
    let received = endpoints.received.lock().unwrap();
    let dead = dead.lock().unwrap();
    let errors = errors.lock().unwrap();
    println!("\ntenant  delivered  retried  dead-lettered  errors");
    for tenant in 0..TENANTS {
        let delivered = received.get(&tenant).cloned().unwrap_or_default();
        let parked: Vec<u32> = dead
            .get(&tenant)
            .map_or_else(Vec::new, |d| d.iter().map(|(seq, ..)| *seq).collect());
        // In dispatch order: the ordinary webhooks by sequence number, then the digest, which
        // fell due while they were still going out (behind the tenant's queue).
        let mut expected: Vec<u32> = (0..HOOKS_PER_TENANT).collect();
        if tenant == HUNG {
            expected.pop(); // still running
        }
        let mut got = delivered.clone();
        got.extend(&parked);
        got.sort_unstable();
        let digest_seen = got.last() == Some(&DIGEST);
        if digest_seen {
            got.pop();
        }
        assert_eq!(got, expected, "tenant {tenant}: each webhook once");
        let ordinary: Vec<u32> = delivered.iter().copied().filter(|&s| s != DIGEST).collect();
        assert!(
            ordinary.windows(2).all(|w| w[0] < w[1]),
            "tenant {tenant} out of order: {delivered:?}"
        );
        let retried: u32 = endpoints
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|(_, n)| n - 1)
            .sum();
        let errs: Vec<String> = errors
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|((_, err), n)| format!("{n} x {err}"))
            .collect();
        println!(
            "{tenant:>6}  {:>9}  {retried:>7}  {:>13}  {}",
            delivered.len(),
            parked.len(),
            errs.join(", ")
        );
    }
    println!(
        "\nall in order; {} retries, {} dead letters, in {:?}",
        stats.retried,
        stats.dead_lettered,
        start.elapsed()
    );
    // Does not wait for the hung call: its tenant's kept webhooks are dropped when it returns.
    webhooks.close();
    Ok(())
}
