//! An async service in front of a ledger: tokio tasks ingest account postings into a
//! dispatcher with the async API, and nothing blocks a runtime thread while they wait.
//!
//! 64 tasks on a 2-thread runtime post events to 4,096 accounts (each task to its own share),
//! in bursts of 16 per account. Each account's queue holds 4 jobs (`key_capacity`), so the
//! producers really wait for room: the task is parked, not the thread, and the runtime's two
//! threads serve the other tasks. Meanwhile:
//!
//! - 56 tasks play request handlers and post with `dispatch_async`; 8 consume an upstream feed
//!   in a `select!` loop against the shutdown signal, the zero-loss way: wait for room with
//!   `reserve`, and take the posting from the feed only once the `Permit` holds room for it
//!   (the comment in `selecting_producer` says why);
//! - each task now and then reads back an account it just posted to, read-your-writes:
//!   `flush_key_async` waits until the account's postings so far have run, then a statement
//!   comes back from a second dispatcher, a spawner, through `spawn_with_result(..).await`;
//! - the main task opens 64 house accounts with one batch through a `Group`
//!   (`dispatch_async`) and awaits it with `wait_async`, then checks each account's statement.
//!
//! The shutdown signal (a `watch` channel, as a service would wire to SIGTERM) is simulated:
//! the task whose posting is the 250,000th accepted fires it. The main task then closes the
//! ledger with `close_async`, which drains every accepted posting. The 56 `dispatch_async`
//! tasks do not watch the signal, as in-flight requests would not: each gets its next posting
//! back inside `DispatchError::Closed`, counted as refused (a real service would nack it for
//! redelivery). At the end the example checks every account: the sequence numbers its handler
//! saw are exactly the ones accepted, strictly increasing, none missing; and the postings
//! handed back are the ones that follow. It exits non-zero if anything is off.
//!
//! ```text
//! cargo run --release --example async_service
//! RUST_LOG=debug cargo run --release --example async_service   # pools, keys, shutdown
//! ```

use keyed_dispatch::{Dispatcher, WaitError};
use std::{
    error::Error,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};
use tokio::sync::watch;

/// The accounts the producers post to; producer `p` owns those with `account % PRODUCERS == p`,
/// so each account's postings are numbered by one producer, in the order it dispatches them.
const ACCOUNTS: u64 = 4096;
/// House accounts, `ACCOUNTS..ACCOUNTS + HOUSE`, opened by the main task's batch.
const HOUSE: u64 = 64;
/// Postings per house account in the opening batch.
const OPENING: u32 = 16;
const PRODUCERS: u64 = 64;
/// Producers `0..SELECTING` use `reserve` in a `select!` loop; the others `dispatch_async`.
const SELECTING: u64 = 8;
/// Postings per account in a row: four times its queue, so producers wait for room.
const BURST: u32 = 16;
const KEY_CAPACITY: usize = 4;
/// The accepted posting that fires the shutdown signal.
const SHUTDOWN_AT: u64 = 250_000;
/// A producer audits the account it just posted to after every `AUDIT_EVERY`-th burst.
const AUDIT_EVERY: u64 = 64;

/// One posting; `seq` numbers the account's postings from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posting {
    seq: u32,
    cents: i64,
}

impl Posting {
    /// The `seq`-th posting of `account`: a fixed amount, so that balances can be checked.
    fn new(account: u64, seq: u32) -> Self {
        let cents = (account * 7919 + u64::from(seq) * 104_729) % 2001;
        Posting {
            seq,
            cents: cents as i64 - 1000,
        }
    }
}

/// The balance of `account` after its postings `0..count`.
fn expected_balance(account: u64, count: u32) -> i64 {
    (0..count).map(|seq| Posting::new(account, seq).cents).sum()
}

#[derive(Debug, Default)]
struct Account {
    balance: i64,
    /// Every sequence number the handler saw, in the order it saw them.
    seen: Vec<u32>,
}

/// The ledger's state, written by the ledger's handler and read by the statements dispatcher.
struct Ledger {
    accounts: Vec<Mutex<Account>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Statement {
    balance: i64,
    postings: usize,
    last_seq: Option<u32>,
}

impl Ledger {
    fn post(&self, account: u64, posting: Posting) {
        let mut account = self.accounts[account as usize].lock().unwrap();
        account.balance += posting.cents;
        account.seen.push(posting.seq);
    }

    fn statement(&self, account: u64) -> Statement {
        let account = self.accounts[account as usize].lock().unwrap();
        Statement {
            balance: account.balance,
            postings: account.seen.len(),
            last_seq: account.seen.last().copied(),
        }
    }

    /// The statement `account` must have after its postings `0..count`.
    fn expected(account: u64, count: u32) -> Statement {
        Statement {
            balance: expected_balance(account, count),
            postings: count as usize,
            last_seq: count.checked_sub(1),
        }
    }
}

type Postings = Dispatcher<u64, Posting>;
type Statements = Dispatcher<u64, keyed_dispatch::BoxedJob>;

/// What the producers share: the accepted count, the signal it fires, and a sample of how
/// many producers were waiting for room.
struct Ingest {
    ledger: Postings,
    statements: Statements,
    state: Arc<Ledger>,
    accepted: AtomicU64,
    shutdown: watch::Sender<bool>,
    most_blocked: AtomicUsize,
    audits: AtomicU64,
}

impl Ingest {
    /// Counts an accepted posting; the `SHUTDOWN_AT`-th fires the signal (once: one producer's
    /// count lands on it).
    fn accepted_one(&self) {
        if self.accepted.fetch_add(1, Ordering::Relaxed) + 1 == SHUTDOWN_AT {
            self.shutdown.send_replace(true);
        }
    }

    /// Read-your-writes: waits until every posting of `account` dispatched so far has run,
    /// then fetches its statement from the statements dispatcher and checks it against the
    /// `count` postings accepted.
    async fn audit(&self, account: u64, count: u32) {
        self.most_blocked
            .fetch_max(self.ledger.stats().blocked, Ordering::Relaxed);
        self.ledger
            .flush_key_async(&account)
            .await
            .expect("a task is not a worker thread");
        let state = Arc::clone(&self.state);
        let statement = self
            .statements
            .spawn_with_result(account, move || state.statement(account))
            .expect("statements stay open until the producers are done")
            .await
            .expect("a statement neither panics nor is handed back");
        // Exact: this producer alone posts to `account`, and posted nothing since the flush.
        assert_eq!(
            statement,
            Ledger::expected(account, count),
            "account {account}"
        );
        self.audits.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a producer hands back: how many postings of each of its accounts were accepted, and
/// the postings refused by the shutdown.
struct Produced {
    accepted: Vec<(u64, u32)>,
    refused: Vec<(u64, Posting)>,
}

/// The accounts of producer `p`.
fn accounts_of(p: u64) -> Vec<u64> {
    (p..ACCOUNTS).step_by(PRODUCERS as usize).collect()
}

/// A request handler: posts until the ledger refuses, waiting for room with `dispatch_async`.
/// It does not watch the shutdown signal; the ledger's close tells it, with its posting back.
async fn streaming_producer(p: u64, ingest: Arc<Ingest>) -> Produced {
    let accounts = accounts_of(p);
    let mut next = vec![0u32; accounts.len()];
    let mut refused = Vec::new();
    'ingest: for burst in 0u64.. {
        let i = (burst % accounts.len() as u64) as usize;
        let account = accounts[i];
        for _ in 0..BURST {
            let posting = Posting::new(account, next[i]);
            match ingest.ledger.dispatch_async(account, posting).await {
                Ok(()) => {
                    next[i] += 1;
                    ingest.accepted_one();
                }
                Err(err) => {
                    // Polled on a runtime thread, not a worker: the one error is `Closed`.
                    assert!(err.is_closed(), "{err}");
                    refused.push(err.into_inner());
                    break 'ingest;
                }
            }
        }
        if burst % AUDIT_EVERY == AUDIT_EVERY - 1 {
            ingest.audit(account, next[i]).await;
        }
    }
    Produced {
        accepted: accounts.into_iter().zip(next).collect(),
        refused,
    }
}

/// A consumer of an upstream feed that stops on the shutdown signal, in a `select!` loop.
async fn selecting_producer(p: u64, ingest: Arc<Ingest>) -> Produced {
    let mut shutdown = ingest.shutdown.subscribe();
    let accounts = accounts_of(p);
    // The feed: the next posting of each account is `next[i]`, taken only once it is sent.
    let mut next = vec![0u32; accounts.len()];
    let mut refused = Vec::new();
    'ingest: for burst in 0u64.. {
        let i = (burst % accounts.len() as u64) as usize;
        let account = accounts[i];
        for _ in 0..BURST {
            // Zero loss: `select!` drops the branch that loses. Had it been
            // `ledger.dispatch_async(account, posting)`, that future would own the posting, and
            // a shutdown winning the race while it waited for room would drop the posting with
            // it: taken from the feed, never accepted, never handed back. `reserve` holds no
            // posting, only a place in line for room; dropping it loses nothing. Once the
            // permit holds room, the posting is taken from the feed and queued without waiting,
            // refused neither for room nor by `close` (which waits for held permits).
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|&down| down) => break 'ingest,
                permit = ingest.ledger.reserve(&account) => match permit {
                    Ok(permit) => {
                        let posting = Posting::new(account, next[i]);
                        match permit.dispatch(posting) {
                            Ok(()) => {
                                next[i] += 1;
                                ingest.accepted_one();
                            }
                            // Only `close_now`, which this service never calls.
                            Err(err) => {
                                refused.push(err.into_inner());
                                break 'ingest;
                            }
                        }
                    }
                    // The ledger closed before this task saw the signal: nothing was taken.
                    Err(WaitError::Closed) => break 'ingest,
                    Err(err) => panic!("reserve on a runtime thread: {err}"),
                },
            }
        }
        if burst % AUDIT_EVERY == AUDIT_EVERY - 1 {
            ingest.audit(account, next[i]).await;
        }
    }
    Produced {
        accepted: accounts.into_iter().zip(next).collect(),
        refused,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    env_logger::init();
    // Two runtime threads for 64 tasks: waiting for room must not hold a thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("service")
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn Error>> {
    let state = Arc::new(Ledger {
        accounts: (0..ACCOUNTS + HOUSE).map(|_| Mutex::default()).collect(),
    });
    let ledger: Postings = {
        let state = Arc::clone(&state);
        Dispatcher::builder()
            .name("ledger")
            .workers(2)
            .key_capacity(KEY_CAPACITY)
            .build(move |account: &u64, posting: Posting| state.post(*account, posting))?
    };
    // Statements are computed off the runtime's threads, in order per account.
    let statements: Statements = Dispatcher::builder()
        .name("statements")
        .workers(1)
        .build_spawner()?;
    let ingest = Arc::new(Ingest {
        ledger: ledger.clone(),
        statements: statements.clone(),
        state: Arc::clone(&state),
        accepted: AtomicU64::new(0),
        shutdown: watch::channel(false).0,
        most_blocked: AtomicUsize::new(0),
        audits: AtomicU64::new(0),
    });
    let mut shutdown = ingest.shutdown.subscribe();

    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ingest = Arc::clone(&ingest);
            if p < SELECTING {
                tokio::spawn(selecting_producer(p, ingest))
            } else {
                tokio::spawn(streaming_producer(p, ingest))
            }
        })
        .collect();

    // The opening batch, while the producers run: its postings wait for room as theirs do.
    let batch = ledger.group();
    for seq in 0..OPENING {
        for house in ACCOUNTS..ACCOUNTS + HOUSE {
            batch
                .dispatch_async(house, Posting::new(house, seq))
                .await?;
        }
    }
    let opened = batch.wait_async().await?;
    assert!(opened.all_succeeded());
    assert_eq!(opened.completed, HOUSE * u64::from(OPENING));
    // The statements, all asked for at once, then awaited.
    let asked = (ACCOUNTS..ACCOUNTS + HOUSE)
        .map(|house| {
            let state = Arc::clone(&state);
            let handle = statements.spawn_with_result(house, move || state.statement(house))?;
            Ok((house, handle))
        })
        .collect::<Result<Vec<_>, keyed_dispatch::DispatchError<_, _>>>()?;
    for (house, handle) in asked {
        assert_eq!(
            handle.await?,
            Ledger::expected(house, OPENING),
            "house account {house}"
        );
    }

    // The signal, then the shutdown: stop accepting, drain every accepted posting.
    shutdown.wait_for(|&down| down).await?;
    let signalled = started.elapsed();
    let closed = ledger.close_async().await;
    let elapsed = started.elapsed();

    let mut accepted = vec![0u32; (ACCOUNTS + HOUSE) as usize];
    for house in ACCOUNTS..ACCOUNTS + HOUSE {
        accepted[house as usize] = OPENING;
    }
    let (mut refused, mut permitted) = (Vec::new(), 0u64);
    for (p, producer) in (0..).zip(producers) {
        let produced = producer.await?;
        for (account, count) in produced.accepted {
            accepted[account as usize] = count;
            if p < SELECTING {
                permitted += u64::from(count);
            }
        }
        refused.extend(produced.refused);
    }
    statements.close_async().await;

    // Per account: the handler saw exactly the postings accepted, in order, none missing.
    let mut out_of_order = Vec::new();
    for (account, &count) in accepted.iter().enumerate() {
        let seen = &state.accounts[account].lock().unwrap().seen;
        let increasing = seen.windows(2).all(|w| w[0] < w[1]);
        if !increasing || !seen.iter().copied().eq(0..count) {
            out_of_order.push(account);
        }
    }
    // A refused posting is the one after its account's last accepted one, handed back whole.
    for &(account, posting) in &refused {
        assert_eq!(
            posting,
            Posting::new(account, accepted[account as usize]),
            "account {account}: the posting handed back"
        );
    }
    let total: u64 = accepted.iter().map(|&n| u64::from(n)).sum();
    let stats = ledger.stats();

    println!(
        "{PRODUCERS} tasks ({} dispatch_async, {SELECTING} reserve + select!) on 2 runtime \
         threads, {} accounts, key capacity {KEY_CAPACITY}; up to {} tasks seen waiting for room",
        PRODUCERS - SELECTING,
        ACCOUNTS + HOUSE,
        ingest.most_blocked.load(Ordering::Relaxed),
    );
    println!(
        "events: {total} accepted ({permitted} through permits, {} from the opening batch), {} \
         refused by the shutdown and handed back",
        opened.completed,
        refused.len()
    );
    println!(
        "barriers: the batch's group awaited, {} read-your-writes audits (flush_key_async, \
         then a statement awaited), all exact",
        ingest.audits.load(Ordering::Relaxed)
    );
    println!(
        "signal after {signalled:.2?}; closed, drained, in {elapsed:.2?} ({:.1} M events/s)",
        total as f64 / elapsed.as_secs_f64() / 1e6
    );

    let ok = closed.drained
        && out_of_order.is_empty()
        && total >= SHUTDOWN_AT
        && stats.completed == total
        && stats.failed == 0
        && stats.panicked == 0
        // Each `dispatch_async` task stops at its first refusal; the others see the signal.
        && refused.len() as u64 == PRODUCERS - SELECTING
        && stats.refusals.closed == refused.len() as u64;
    if !ok {
        eprintln!(
            "FAILED: drained {}, completed {} of {total}, refused {} (counted {}), \
             out of order: {out_of_order:?}",
            closed.drained,
            stats.completed,
            refused.len(),
            stats.refusals.closed
        );
        std::process::exit(1);
    }
    println!("per-key order OK: every account saw its accepted events, strictly increasing, none missing");
    Ok(())
}
