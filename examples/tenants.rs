//! Per-tenant ordered processing: every tenant's account ledger applies its operations in the
//! order they were dispatched, while different tenants are processed in parallel on a small,
//! fixed pool of threads.
//!
//! Each tenant receives a stream of deposits and withdrawals. A withdrawal is only valid after
//! the deposits dispatched before it, so applying a tenant's operations out of order would
//! overdraw the account (and the handler rejects it). At the end the example checks every
//! final balance against the balance computed sequentially, and prints a short summary.
//!
//! ```text
//! cargo run --release --example tenants
//! RUST_LOG=debug cargo run --release --example tenants   # pool, key and shutdown tracing
//! ```

use keyed_dispatch::Dispatcher;
use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

const TENANTS: u64 = 10_000;
const OPS_PER_TENANT: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TenantId(u64);

/// One ledger operation; the sequence number lets the handler check order.
#[derive(Debug)]
enum Op {
    Deposit { seq: u64, cents: u64 },
    Withdraw { seq: u64, cents: u64 },
}

#[derive(Debug)]
struct Overdrawn {
    tenant: TenantId,
    balance: u64,
    wanted: u64,
}

impl fmt::Display for Overdrawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {} overdrawn: balance {} < {}",
            self.tenant.0, self.balance, self.wanted
        )
    }
}

#[derive(Debug, Default)]
struct Account {
    balance: u64,
    next_seq: u64,
}

/// The operations of one tenant: deposit, then withdraw part of it, alternately; every
/// withdrawal is covered only by the deposits before it.
fn operations(tenant: u64) -> impl Iterator<Item = Op> {
    (0..OPS_PER_TENANT).map(move |seq| {
        let cents = 100 + (tenant * 7 + seq * 13) % 900;
        if seq % 2 == 0 {
            Op::Deposit { seq, cents }
        } else {
            // Spend at most the deposit just before this operation.
            let deposited = 100 + (tenant * 7 + (seq - 1) * 13) % 900;
            Op::Withdraw {
                seq,
                cents: cents.min(deposited),
            }
        }
    })
}

fn expected_balance(tenant: u64) -> u64 {
    operations(tenant).fold(0, |balance, op| match op {
        Op::Deposit { cents, .. } => balance + cents,
        Op::Withdraw { cents, .. } => balance - cents,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();

    // The handler owns the accounts; a shard of mutexes keeps it simple. Per-key order means
    // no two operations of a tenant ever race on its account.
    let accounts: Arc<Vec<Mutex<HashMap<TenantId, Account>>>> =
        Arc::new((0..64).map(|_| Mutex::default()).collect());
    let rejected = Arc::new(AtomicU64::new(0));

    let ledger = {
        let accounts = Arc::clone(&accounts);
        let rejected = Arc::clone(&rejected);
        Dispatcher::builder()
            .name("ledger")
            .key_capacity(1024)
            .capacity(100_000)
            .on_error(move |_, _: &Overdrawn, _| {
                rejected.fetch_add(1, Ordering::Relaxed);
            })
            .build(move |tenant: &TenantId, op: Op| -> Result<(), Overdrawn> {
                let mut shard = accounts[(tenant.0 % 64) as usize].lock().unwrap();
                let account = shard.entry(*tenant).or_default();
                let seq = match op {
                    Op::Deposit { seq, .. } | Op::Withdraw { seq, .. } => seq,
                };
                assert_eq!(seq, account.next_seq, "tenant {tenant:?} out of order");
                account.next_seq += 1;
                match op {
                    Op::Deposit { cents, .. } => account.balance += cents,
                    Op::Withdraw { cents, .. } if cents > account.balance => {
                        return Err(Overdrawn {
                            tenant: *tenant,
                            balance: account.balance,
                            wanted: cents,
                        })
                    }
                    Op::Withdraw { cents, .. } => account.balance -= cents,
                }
                Ok(())
            })?
    };

    let started = Instant::now();
    // Interleave the tenants the way a real feed would: round robin over operation numbers.
    let mut streams: Vec<_> = (0..TENANTS).map(operations).collect();
    for _ in 0..OPS_PER_TENANT {
        for (tenant, ops) in streams.iter_mut().enumerate() {
            let op = ops
                .next()
                .expect("every tenant has OPS_PER_TENANT operations");
            ledger.dispatch(TenantId(tenant as u64), op)?;
        }
    }
    let report = ledger.close();
    let elapsed = started.elapsed();

    let mut wrong = 0;
    for tenant in 0..TENANTS {
        let shard = accounts[(tenant % 64) as usize].lock().unwrap();
        let account = &shard[&TenantId(tenant)];
        if account.balance != expected_balance(tenant) || account.next_seq != OPS_PER_TENANT {
            wrong += 1;
        }
    }

    let s = report.stats;
    println!(
        "{} tenants x {} operations on {} worker threads",
        TENANTS, OPS_PER_TENANT, s.workers
    );
    println!(
        "completed {} jobs in {:.2?} ({:.1} M jobs/s); failed {}, panicked {}, keys held after close {}",
        s.completed,
        elapsed,
        s.completed as f64 / elapsed.as_secs_f64() / 1e6,
        s.failed,
        s.panicked,
        s.keys
    );
    println!(
        "balances checked: {} right, {} wrong",
        TENANTS - wrong,
        wrong
    );

    let ok = report.drained
        && wrong == 0
        && s.completed == TENANTS * OPS_PER_TENANT
        && s.failed == 0
        && s.panicked == 0
        && rejected.load(Ordering::Relaxed) == 0
        && s.keys == 0;
    if !ok {
        eprintln!("FAILED: per-tenant order or a balance was wrong");
        std::process::exit(1);
    }
    println!("ok: every tenant's operations applied in order");
    Ok(())
}
