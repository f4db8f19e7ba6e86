//! A two-stage pipeline: two dispatchers on one shared [`WorkerPool`], with a group barrier
//! between the stages.
//!
//! 1. **parse**, keyed by customer: parses and validates each raw record of that customer, in
//!    the order they came, and hands each valid transfer to stage 2. Malformed records fail,
//!    and the stage's group counts them.
//! 2. **apply**, keyed by account: applies the transfers to the account's balance in order,
//!    rejecting a withdrawal that would overdraw it (so applying out of order would change the
//!    result). Every account belongs to one customer, so stage 1's per-customer order carries
//!    over to stage 2's per-account order.
//!
//! Waiting on stage 1's group is the barrier: once it returns, every valid record has been
//! handed to stage 2, so the end-of-day job queued then on each account runs after all its
//! transfers. The example checks every balance against a sequential replay and prints a
//! summary.
//!
//! ```text
//! cargo run --example pipeline
//! RUST_LOG=debug cargo run --example pipeline   # pool, keys and shutdown in the log
//! ```

use keyed_dispatch::{Dispatcher, WorkerPool};
use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

const CUSTOMERS: u32 = 40;
const ACCOUNTS_PER_CUSTOMER: u32 = 3;
const RECORDS: u64 = 20_000;

/// What stage 2 does to an account.
#[derive(Debug)]
enum Entry {
    Transfer { seq: u64, cents: i64 },
    EndOfDay,
}

/// Why stage 1 rejected a record.
#[derive(Debug)]
struct Invalid(String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Account {
    balance: i64,
    last_seq: Option<u64>,
    applied: u64,
    rejected: u64,
    closed: bool,
}

impl Account {
    /// Applies a transfer; an overdraft is rejected. Both stage 2 and the replay use this.
    fn apply(&mut self, seq: u64, cents: i64) -> Result<(), String> {
        if self.last_seq.is_some_and(|last| last >= seq) {
            return Err(format!(
                "transfer {seq} after {:?}: out of order",
                self.last_seq
            ));
        }
        self.last_seq = Some(seq);
        if self.balance + cents < 0 {
            self.rejected += 1;
            return Err(format!("transfer {seq} would overdraw {}", self.balance));
        }
        self.balance += cents;
        self.applied += 1;
        Ok(())
    }
}

/// Parses `seq;customer;account;cents` and checks that the account is the customer's.
fn parse(customer: u32, line: &str) -> Result<(u32, u64, i64), Invalid> {
    let fields: Vec<&str> = line.split(';').collect();
    let [seq, owner, account, cents] = fields[..] else {
        return Err(Invalid(format!("malformed record {line:?}")));
    };
    let number = |field: &str| {
        field
            .parse::<i64>()
            .map_err(|_| Invalid(format!("bad number {field:?} in {line:?}")))
    };
    let (seq, owner, account, cents) = (
        number(seq)?,
        number(owner)?,
        number(account)?,
        number(cents)?,
    );
    if owner != i64::from(customer) || account / i64::from(ACCOUNTS_PER_CUSTOMER) != owner {
        return Err(Invalid(format!(
            "account {account} is not customer {customer}'s"
        )));
    }
    if cents == 0 {
        return Err(Invalid(format!("empty transfer in {line:?}")));
    }
    Ok((account as u32, seq as u64, cents))
}

/// Deterministic raw records, some of them invalid.
fn records() -> Vec<(u32, String)> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (0..RECORDS)
        .map(|seq| {
            let customer = next(u64::from(CUSTOMERS)) as u32;
            let account = customer * ACCOUNTS_PER_CUSTOMER + next(3) as u32;
            let cents = next(2_000) as i64 - 900;
            let line = match next(50) {
                0 => format!("{seq};{customer};{account};twelve"),
                1 => format!("{seq};{customer};{}", account + ACCOUNTS_PER_CUSTOMER),
                2 => format!(
                    "{seq};{customer};{};{cents}",
                    account + ACCOUNTS_PER_CUSTOMER
                ),
                _ => format!("{seq};{customer};{account};{cents}"),
            };
            (customer, line)
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let pool = WorkerPool::builder().workers(4).name("pipeline").build()?;
    let ledger: Arc<Mutex<BTreeMap<u32, Account>>> = Arc::default();

    // Stage 2: apply, per account. At most 3 of the pool's 4 threads, so that stage 1 always
    // has one.
    let accounts = Arc::clone(&ledger);
    let apply = Dispatcher::builder()
        .pool(&pool)
        .max_parallel(3)
        .name("apply")
        .build(move |account: &u32, entry: Entry| -> Result<(), String> {
            let mut accounts = accounts.lock().unwrap();
            let state = accounts.entry(*account).or_default();
            match entry {
                Entry::Transfer { seq, cents } => state.apply(seq, cents),
                Entry::EndOfDay => {
                    state.closed = true;
                    Ok(())
                }
            }
        })?;
    let applied = apply.group();

    // Stage 1: parse, per customer; valid records go on to stage 2 through its group.
    let to_apply = applied.clone();
    let parse_stage = Dispatcher::builder().pool(&pool).name("parse").build(
        move |customer: &u32, line: String| -> Result<(), Invalid> {
            let (account, seq, cents) = parse(*customer, &line)?;
            to_apply
                .dispatch(account, Entry::Transfer { seq, cents })
                .map_err(|err| Invalid(format!("stage 2 refused record {seq}: {err}")))
        },
    )?;
    let parsed = parse_stage.group();

    let input = records();
    for (customer, line) in &input {
        parsed.dispatch(*customer, line.clone())?;
    }
    // The barrier: every record parsed, every valid one handed to stage 2.
    let parse_report = parsed.wait()?;
    for account in 0..CUSTOMERS * ACCOUNTS_PER_CUSTOMER {
        applied.dispatch(account, Entry::EndOfDay)?;
    }
    // One account, flushed on its own: its end of day has run, whatever the others do.
    apply.flush_key(&0)?;
    assert!(
        ledger.lock().unwrap()[&0].closed,
        "flush_key returned early"
    );
    let apply_report = applied.wait()?;
    pool.close();

    // Check against a sequential replay of the same records.
    let mut expected: BTreeMap<u32, Account> = BTreeMap::new();
    let mut invalid = 0;
    for (customer, line) in &input {
        match parse(*customer, line) {
            Ok((account, seq, cents)) => {
                let _ = expected.entry(account).or_default().apply(seq, cents);
            }
            Err(_) => invalid += 1,
        }
    }
    for account in 0..CUSTOMERS * ACCOUNTS_PER_CUSTOMER {
        expected.entry(account).or_default().closed = true;
    }
    let ledger = ledger.lock().unwrap();
    assert_eq!(
        *ledger, expected,
        "the pipeline's ledger differs from the replay"
    );
    assert_eq!(parse_report.completed, RECORDS);
    assert_eq!(parse_report.failed, invalid);
    assert_eq!(parse_report.panicked, 0);
    let valid = RECORDS - invalid;
    let accounts = u64::from(CUSTOMERS * ACCOUNTS_PER_CUSTOMER);
    let rejected: u64 = ledger.values().map(|a| a.rejected).sum();
    assert_eq!(apply_report.completed, valid + accounts);
    assert_eq!(apply_report.failed, rejected);

    let total: i64 = ledger.values().map(|a| a.balance).sum();
    println!("stage 1 (parse): {RECORDS} records from {CUSTOMERS} customers, {invalid} invalid");
    println!(
        "stage 2 (apply): {valid} transfers on {accounts} accounts, {rejected} overdrafts rejected"
    );
    println!("ledger: total balance {total} cents; matches the sequential replay");
    Ok(())
}
