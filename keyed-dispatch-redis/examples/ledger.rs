//! A ledger fed through Redis Streams: `produce` appends numbered entries per key, `consume`
//! applies them in order (as many members as you like, crashing and joining at will), and
//! `status` tells where things stand.
//!
//! ```text
//! redis-server --port 6379 --appendonly yes --appendfsync always &
//! cargo run --release -p keyed-dispatch-redis --example ledger -- produce --redis redis://127.0.0.1/ --topic t1 --keys 100 --jobs 10000
//! cargo run --release -p keyed-dispatch-redis --example ledger -- consume --redis redis://127.0.0.1/ --topic t1 --member m1
//! cargo run --release -p keyed-dispatch-redis --example ledger -- status --redis redis://127.0.0.1/ --topic t1
//! ```
//!
//! The handler shows the two habits that make at-least-once delivery effectively-once:
//! - **idempotence**: an entry at or below the key's last applied sequence number is a
//!   re-execution and changes nothing (it is only logged);
//! - **fencing**: the write happens only while this member holds the partition's lease, in the
//!   same script, so a member that lost its partition applies nothing after the move.
//!
//! `status` prints one JSON line:
//! - `produced`: entries in the partition streams (their length: nothing is trimmed here);
//! - `acked`: entries acknowledged, dead letters included; `pending`: read and not
//!   acknowledged; `unread`: the rest;
//! - `applied_sum`: the sum over keys of `T:applied:<key>`, each key's last applied sequence
//!   number (from 0), and `applied_keys` the number of keys with one: with `M` entries over `N`
//!   keys all applied, `M - N` and `N`;
//! - `executions`: every run of the script (the lengths of the `T:log:<key>` lists),
//!   `violations`: first executions that skipped ahead, `stale`: runs applied under an older
//!   epoch than one already seen for the partition (the fence keeps it at 0), `dead`: dead
//!   letters;
//! - `members`: each live member and the partitions whose lease it holds.

use keyed_dispatch_redis::{Consumer, Entry, Failure, Publisher, RetryPolicy, DEFAULT_PARTITIONS};
use log::warn;
use redis::{Commands, Connection, Script};
use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    process::exit,
    sync::OnceLock,
    time::Duration,
};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, flags)) = args.split_first() else {
        fail(USAGE);
    };
    let flags = Flags::parse(flags);
    let result = match command.as_str() {
        "produce" => produce(&flags),
        "consume" => consume(&flags),
        "status" => status(&flags),
        _ => fail(USAGE),
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

const USAGE: &str = "usage: ledger produce --redis URL --topic T --keys N --jobs M [--partitions P]
       ledger consume --redis URL --topic T --member NAME [--workers W] [--work-ms-max X] [--lease-ms L]
       ledger status --redis URL --topic T";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn produce(flags: &Flags) -> Result<()> {
    let (url, topic) = (flags.text("redis"), flags.text("topic"));
    let keys: u64 = flags.number("keys", None);
    let jobs: u64 = flags.number("jobs", None);
    let partitions = flags.number("partitions", Some(u64::from(DEFAULT_PARTITIONS)));
    if keys == 0 {
        fail("--keys must be at least 1");
    }
    let mut publisher = Publisher::create(&url, &topic, u32::try_from(partitions)?)?;
    let names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let mut job = 0;
    while job < jobs {
        let end = (job + 1000).min(jobs);
        let payloads: Vec<(usize, String)> = (job..end)
            .map(|j| ((j % keys) as usize, (j / keys).to_string()))
            .collect();
        publisher.publish_all(
            payloads
                .iter()
                .map(|(k, p)| (names[*k].as_str(), p.as_bytes())),
        )?;
        job = end;
    }
    println!("produced {jobs} jobs over {keys} keys into {partitions} partitions of {topic}");
    Ok(())
}

fn consume(flags: &Flags) -> Result<()> {
    let (url, topic, member) = (
        flags.text("redis"),
        flags.text("topic"),
        flags.text("member"),
    );
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let workers = flags.number("workers", Some(parallelism)) as usize;
    let work_ms_max = flags.number("work-ms-max", Some(0));
    let lease = Duration::from_millis(flags.number("lease-ms", Some(5000)));
    let names = Names::new(&topic);
    let handler_url = url.clone();
    let consumer = Consumer::builder(&url, &topic, &member)
        .workers(workers)
        .lease(lease)
        // A Redis error (the server restarting) is retried until the server is back; a
        // payload that does not decode fails for good at once.
        .retry(
            RetryPolicy::exponential(Duration::from_millis(10), Duration::from_secs(1))
                .max_attempts(u32::MAX),
        )
        .start(move |entry: &Entry| apply(&handler_url, &names, entry, work_ms_max))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    signals.forever().next();
    log::info!("{member}: leaving");
    consumer.close();
    log::info!("{member}: left");
    Ok(())
}

/// Applies one entry: sleeps up to `work_ms_max`, then records and applies it in one script.
fn apply(
    url: &str,
    names: &Names,
    entry: &Entry,
    work_ms_max: u64,
) -> std::result::Result<(), Failure<String>> {
    let seq: u64 = std::str::from_utf8(entry.payload())
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            Failure::permanent(format!(
                "payload {:?} is not a sequence number",
                entry.payload()
            ))
        })?;
    if work_ms_max > 0 {
        std::thread::sleep(Duration::from_millis(random(work_ms_max + 1))); // the job's work
    }
    let key = entry.key();
    let reply: redis::RedisResult<i64> = with_connection(url, |con| {
        apply_script()
            .key(format!("{}:log:{key}", names.topic))
            .key(format!("{}:applied:{key}", names.topic))
            .key(&names.violations)
            .key(entry.lease_key())
            .key(&names.executions)
            .key(&names.stale)
            .key(format!(
                "{}:epoch-applied:{}",
                names.topic,
                entry.partition()
            ))
            .arg(seq)
            .arg(entry.lease_token())
            .arg(entry.epoch())
            .invoke(con)
    });
    match reply {
        Ok(-1) => {
            entry.lease_lost();
            Err(Failure::from("the partition's lease moved".to_string()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::from(format!("redis: {e}"))),
    }
}

fn apply_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        // KEYS: log, applied, violations, lease, executions, stale, epoch applied.
        // ARGV: seq, lease token, epoch.
        Script::new(
            r"
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
local epoch = tonumber(ARGV[3])
if epoch < tonumber(redis.call('GET', KEYS[7]) or '0') then
    redis.call('INCR', KEYS[6])
else
    redis.call('SET', KEYS[7], epoch)
end
local seq = tonumber(ARGV[1])
redis.call('RPUSH', KEYS[1], seq)
redis.call('INCR', KEYS[5])
local applied = redis.call('GET', KEYS[2])
local next = applied and tonumber(applied) + 1 or 0
if seq < next then return 0 end
if seq > next then redis.call('INCR', KEYS[3]) end
redis.call('SET', KEYS[2], seq)
return 1
",
        )
    })
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    static SEED: Cell<u64> = const { Cell::new(0) };
}

/// Runs `command` on this worker thread's connection, opening it first if need be; a failed
/// connection is dropped, so that the retry reconnects.
fn with_connection<T>(
    url: &str,
    command: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    CONNECTION.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            let con =
                redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(10))?;
            con.set_read_timeout(Some(Duration::from_secs(10)))?;
            *slot = Some(con);
        }
        let reply = command(slot.as_mut().unwrap());
        if let Err(e) = &reply {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_connection_refusal()
            {
                warn!("handler: {e}; reconnect on the next attempt");
                *slot = None;
            }
        }
        reply
    })
}

/// A number in `0..bound` (xorshift per thread: the example needs spread, not quality).
fn random(bound: u64) -> u64 {
    SEED.with(|seed| {
        let mut x = seed.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.set(x);
        x % bound
    })
}

struct Names {
    topic: String,
    violations: String,
    executions: String,
    stale: String,
}

impl Names {
    fn new(topic: &str) -> Names {
        Names {
            topic: topic.to_string(),
            violations: format!("{topic}:violations"),
            executions: format!("{topic}:executions"),
            stale: format!("{topic}:stale"),
        }
    }
}

fn status(flags: &Flags) -> Result<()> {
    let (url, topic) = (flags.text("redis"), flags.text("topic"));
    let client = redis::Client::open(url.as_str())?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let names = Names::new(&topic);
    let t = keyed_dispatch_redis::Topic::new(topic.as_str());
    let partitions: u32 = redis::cmd("HGET")
        .arg(t.meta())
        .arg("partitions")
        .query::<Option<u32>>(&mut con)?
        .unwrap_or(0);
    let (mut produced, mut pending) = (0u64, 0u64);
    let mut members: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let live: Vec<String> = redis::cmd("ZRANGE")
        .arg(t.members())
        .arg(0)
        .arg(-1)
        .query(&mut con)?;
    for member in live {
        members.entry(member).or_default();
    }
    for p in 0..partitions {
        // A key of the wrong type counts as empty here; the consumers report it.
        produced += redis::cmd("XLEN")
            .arg(t.stream(p))
            .query::<u64>(&mut con)
            .unwrap_or(0);
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(t.stream(p))
            .arg(keyed_dispatch_redis::GROUP)
            .query(&mut con)
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(parts) = summary {
            if let Some(redis::Value::Int(count)) = parts.first() {
                pending += *count as u64;
            }
        }
        if let Ok(Some(lease)) = redis::cmd("GET")
            .arg(t.lease(p))
            .query::<Option<String>>(&mut con)
        {
            let owner = lease.rsplit_once('/').map_or(lease.as_str(), |(m, _)| m);
            members.entry(owner.to_string()).or_default().push(p);
        }
    }
    let counter = |con: &mut Connection, key: &str| -> Result<u64> {
        Ok(redis::cmd("GET")
            .arg(key)
            .query::<Option<u64>>(con)?
            .unwrap_or(0))
    };
    let acked = counter(&mut con, &t.acked())?;
    let applied: Vec<String> = con
        .scan_match::<_, String>(format!("{topic}:applied:*"))?
        .collect();
    let mut applied_sum = 0;
    for key in &applied {
        applied_sum += counter(&mut con, key)?;
    }
    let members = members
        .iter()
        .map(|(m, ps)| {
            format!(
                "\"{m}\":[{}]",
                ps.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"produced\":{produced},\"acked\":{acked},\"pending\":{pending},\"unread\":{},\"applied_sum\":{applied_sum},\"applied_keys\":{},\"violations\":{},\"executions\":{},\"stale\":{},\"dead\":{},\"members\":{{{members}}}}}",
        produced.saturating_sub(acked + pending),
        applied.len(),
        counter(&mut con, &names.violations)?,
        counter(&mut con, &names.executions)?,
        counter(&mut con, &names.stale)?,
        redis::cmd("XLEN")
            .arg(t.dead())
            .query::<u64>(&mut con)
            .unwrap_or(0),
    );
    Ok(())
}

/// `--name value` pairs.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut flags = HashMap::new();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let Some(name) = flag.strip_prefix("--") else {
                fail(&format!("unexpected argument {flag:?}\n{USAGE}"));
            };
            let Some(value) = args.next() else {
                fail(&format!("--{name} needs a value"));
            };
            flags.insert(name.to_string(), value.clone());
        }
        Flags(flags)
    }

    fn text(&self, name: &str) -> String {
        match self.0.get(name) {
            Some(value) => value.clone(),
            None => fail(&format!("--{name} is required\n{USAGE}")),
        }
    }

    fn number(&self, name: &str, default: Option<u64>) -> u64 {
        match (self.0.get(name), default) {
            (Some(value), _) => value
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: {value:?} is not a number"))),
            (None, Some(default)) => default,
            (None, None) => fail(&format!("--{name} is required\n{USAGE}")),
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("ledger: {message}");
    exit(2)
}
