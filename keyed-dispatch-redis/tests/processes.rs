//! Crash tests: the `ledger` example as real processes against a real redis-server. Consumers
//! are killed, stopped, shut down gracefully and cut off from a restarting server mid-stream;
//! every key must still be applied in order up to its last job, and re-executions must stay
//! within the stated bound.

mod common;

use common::{Server, PATIENCE};
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long the processes may take to reach a condition, on a slow, loaded machine.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);
/// Each consumer's worker threads, as passed in `CONSUMER_ARGS`.
const WORKERS: u64 = 4;
const CONSUMER_ARGS: [&str; 6] = ["--workers", "4", "--work-ms-max", "1", "--lease-ms", "1000"];
/// For a run that must see no lease lost: long enough that no renewal on a loaded machine
/// comes too late, since a lost lease may re-run an entry.
const STEADY_ARGS: [&str; 6] = [
    "--workers",
    "4",
    "--work-ms-max",
    "1",
    "--lease-ms",
    "10000",
];
/// Re-executions allowed per crash or lease loss of one consumer.
const REEXECUTIONS_PER_LOSS: u64 = WORKERS + 256;

/// The example, built next to this test: `<target>/<profile>/deps/processes-HASH` runs, the
/// example lies in `<target>/<profile>/examples/`.
fn ledger_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lies in <target>/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("ledger{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the example `ledger` is missing at {}: build it with `cargo build --release -p \
         keyed-dispatch-redis --example ledger` (a `cargo test` without target filters builds it)",
        path.display()
    );
    path
}

fn ledger(args: &[&str]) -> Command {
    let mut command = Command::new(ledger_path());
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs a command to its end, killing it and failing the test if it outlives `limit`.
fn run(mut command: Command, limit: Duration) -> Output {
    let shown = format!("{command:?}");
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("wait for {shown}: {e}")),
        Err(_) => {
            // Not reaped yet (the waiting thread has not returned), so the id is still its own.
            send_signal(pid, "KILL");
            let output = rx.recv().expect("the waiting thread answers");
            let stderr = output
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{shown} did not exit within {limit:?}; stderr:\n{stderr}");
        }
    }
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// How many of `jobs` round-robin jobs fall on key `k` of `keys`.
fn jobs_of(k: u64, keys: u64, jobs: u64) -> u64 {
    jobs / keys + u64::from(k < jobs % keys)
}

/// One line of `ledger status`.
struct Status {
    line: String,
}

impl Status {
    fn get(&self, field: &str) -> u64 {
        let pattern = format!("\"{field}\":");
        let at = self
            .line
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {field} in the status {}", self.line));
        let rest = self.line[at + pattern.len()..].trim_start();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{field} is not a number in the status {}", self.line))
    }

    /// Each member with the partitions whose lease it holds.
    fn members(&self) -> Vec<(String, Vec<u64>)> {
        parse_members(&self.line)
            .unwrap_or_else(|| panic!("unreadable members in the status {}", self.line))
    }

    fn partitions_of(&self, member: &str) -> Vec<u64> {
        self.members()
            .into_iter()
            .find(|(name, _)| name == member)
            .map(|(_, partitions)| partitions)
            .unwrap_or_default()
    }

    /// How many distinct partitions the given members hold together.
    fn held_by(&self, members: &[&str]) -> usize {
        let mut held: Vec<u64> = members.iter().flat_map(|m| self.partitions_of(m)).collect();
        held.sort_unstable();
        held.dedup();
        held.len()
    }

    /// Checks the end state of `jobs` jobs over `keys` keys, all acknowledged; returns the
    /// re-executions.
    fn assert_complete(&self, keys: u64, jobs: u64) -> u64 {
        let line = &self.line;
        let applied_sum: u64 = (0..keys)
            .map(|k| jobs_of(k, keys, jobs).saturating_sub(1))
            .sum();
        assert_eq!(self.get("produced"), jobs, "produced: {line}");
        assert_eq!(self.get("acked"), jobs, "acked: {line}");
        assert_eq!(self.get("pending"), 0, "pending: {line}");
        assert_eq!(self.get("unread"), 0, "unread: {line}");
        assert_eq!(self.get("violations"), 0, "violations: {line}");
        assert_eq!(self.get("stale"), 0, "stale: {line}");
        assert_eq!(self.get("dead"), 0, "dead letters: {line}");
        assert_eq!(self.get("applied_sum"), applied_sum, "applied_sum: {line}");
        let executions = self.get("executions");
        assert!(executions >= jobs, "fewer executions than jobs: {line}");
        executions - jobs
    }
}

/// `"members":{"m1":[0,3],"m2":[]}` out of a status line.
fn parse_members(line: &str) -> Option<Vec<(String, Vec<u64>)>> {
    let at = line.find("\"members\":")? + "\"members\":".len();
    let body = line[at..].trim_start().strip_prefix('{')?;
    let body = &body[..body.find('}')?];
    let mut members = Vec::new();
    for entry in body.split(']') {
        let entry = entry.trim().trim_start_matches(',').trim();
        if entry.is_empty() {
            continue;
        }
        let (name, list) = entry.split_once(':')?;
        let partitions = list
            .trim()
            .strip_prefix('[')?
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        members.push((name.trim().trim_matches('"').to_owned(), partitions));
    }
    Some(members)
}

/// Reads every key from Redis itself: applied up to its last sequence number, and its log
/// holding each sequence number with first executions in order. Returns the total executions.
fn check_keys(url: &str, topic: &str, keys: u64, jobs: u64) -> u64 {
    let mut con = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let mut executions = 0;
    for k in 0..keys {
        let count = jobs_of(k, keys, jobs) as i64;
        let applied: Option<i64> = redis::cmd("GET")
            .arg(format!("{topic}:applied:key-{k}"))
            .query(&mut con)
            .expect("GET applied");
        assert_eq!(applied, Some(count - 1), "key-{k}: last applied");
        let log: Vec<i64> = redis::cmd("LRANGE")
            .arg(format!("{topic}:log:key-{k}"))
            .arg(0)
            .arg(-1)
            .query(&mut con)
            .expect("LRANGE log");
        let mut next = 0;
        for &seq in &log {
            if seq == next {
                next += 1;
            } else {
                assert!(
                    seq < next,
                    "key-{k}: {seq} ran before {next} ever had; log {log:?}"
                );
            }
        }
        assert_eq!(next, count, "key-{k}: not every job ran; log {log:?}");
        executions += log.len() as u64;
    }
    executions
}

/// A consumer process, its output going to a file of its own.
struct Member {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

/// The processes of one test against one server and topic. Dropping it kills whichever
/// consumers still run, so that a failing test leaves none behind.
struct Fleet {
    url: String,
    topic: String,
    dir: PathBuf,
    members: Vec<Member>,
}

impl Fleet {
    fn new(url: &str, topic: &str) -> Fleet {
        ledger_path(); // a missing example fails here, before anything is created
        let dir = std::env::temp_dir().join(format!("kdr-ledger-{}-{topic}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the logs' directory");
        Fleet {
            url: url.to_owned(),
            topic: topic.to_owned(),
            dir,
            members: Vec::new(),
        }
    }

    fn produce(&self, keys: u64, jobs: u64, partitions: Option<u64>) {
        let (keys, jobs) = (keys.to_string(), jobs.to_string());
        let mut args = vec![
            "produce",
            "--redis",
            &self.url,
            "--topic",
            &self.topic,
            "--keys",
            &keys,
            "--jobs",
            &jobs,
        ];
        let partitions = partitions.map(|p| p.to_string());
        if let Some(p) = &partitions {
            args.extend(["--partitions", p.as_str()]);
        }
        let output = run(ledger(&args), MAX_WAIT);
        assert!(
            output.status.success(),
            "produce failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn status(&self) -> Result<Status, String> {
        let args = ["status", "--redis", &self.url, "--topic", &self.topic];
        let output = run(ledger(&args), PATIENCE);
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.lines().find(|l| l.trim_start().starts_with('{')) {
            Some(line) if output.status.success() => Ok(Status {
                line: line.trim().to_owned(),
            }),
            _ => Err(format!(
                "status exited with {}: {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    /// Polls the status until `done` holds, failing early if a consumer exits by itself.
    fn wait_for(&mut self, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            self.assert_running();
            let last = match self.status() {
                Ok(status) if done(&status) => {
                    // Shown with a failure: where each step found things.
                    eprintln!("{what}: {}", status.line);
                    return status;
                }
                Ok(status) => status.line,
                Err(error) => error,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {MAX_WAIT:?} waiting for {what}; last status: {last}"
            );
            std::thread::sleep(POLL); // polling the status
        }
    }

    fn consume(&mut self, name: &str, extra: &[&str]) {
        let log = self.dir.join(format!("{name}.log"));
        let file = File::create(&log).expect("create a consumer's log");
        let stdout = file.try_clone().expect("share the log");
        let mut command = ledger(&[
            "consume",
            "--redis",
            &self.url,
            "--topic",
            &self.topic,
            "--member",
            name,
        ]);
        let child = command
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start consumer {name}: {e}"));
        self.members.push(Member {
            name: name.to_owned(),
            child,
            log,
            exit: None,
        });
    }

    fn member(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no consumer {name}"))
    }

    /// Fails, with its log, if a consumer the test has not stopped has exited.
    fn assert_running(&mut self) {
        for member in &mut self.members {
            if member.exit.is_some() {
                continue;
            }
            if let Some(status) = member.child.try_wait().expect("poll a consumer") {
                member.exit = Some(status);
                panic!(
                    "consumer {} exited by itself with {status}; its log ends:\n{}",
                    member.name,
                    tail(&member.log)
                );
            }
        }
    }

    fn signal(&mut self, name: &str, signal: &str) {
        let member = self.member(name);
        assert!(member.exit.is_none(), "consumer {name} already exited");
        send_signal(member.child.id(), signal);
    }

    fn kill(&mut self, name: &str) {
        let member = self.member(name);
        member.child.kill().expect("SIGKILL a consumer");
        member.exit = Some(member.child.wait().expect("reap a consumer"));
    }

    /// Sends SIGTERM and waits for the consumer to drain and exit.
    fn terminate(&mut self, name: &str) -> ExitStatus {
        self.signal(name, "TERM");
        let member = self.member(name);
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            if let Some(status) = member.child.try_wait().expect("poll a consumer") {
                member.exit = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "consumer {name} did not exit within {MAX_WAIT:?} of SIGTERM; its log ends:\n{}",
                tail(&member.log)
            );
            std::thread::sleep(POLL); // polling for the exit
        }
    }

    fn assert_terminates(&mut self, name: &str) {
        let status = self.terminate(name);
        let log = tail(&self.member(name).log);
        assert!(
            status.success(),
            "consumer {name} exited with {status} on SIGTERM; its log ends:\n{log}"
        );
    }

    fn running(&mut self, name: &str) -> bool {
        let member = self.member(name);
        member.exit.is_none() && member.child.try_wait().expect("poll a consumer").is_none()
    }

    fn log(&mut self, name: &str) -> String {
        std::fs::read_to_string(&self.member(name).log).expect("read a consumer's log")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for member in &mut self.members {
            if member.exit.is_none() {
                let _ = member.child.kill();
                let _ = member.child.wait();
            }
        }
        if std::thread::panicking() {
            for member in &self.members {
                eprintln!(
                    "--- consumer {} log ends:\n{}",
                    member.name,
                    tail(&member.log)
                );
            }
            eprintln!("--- logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A crash (SIGKILL), a member joining late and a member frozen (SIGSTOP) until its leases have
/// moved, then thawed with stale leases: order holds, nothing applies under a stale lease, and
/// re-executions stay within the bound for two losses.
#[test]
fn crash_and_rejoin() {
    const KEYS: u64 = 500;
    const JOBS: u64 = 20_000;
    const PARTITIONS: u64 = 16;
    let server = Server::start();
    let mut fleet = Fleet::new(&server.url(), "crash");
    fleet.produce(KEYS, JOBS, Some(PARTITIONS));
    for name in ["c1", "c2", "c3"] {
        fleet.consume(name, &CONSUMER_ARGS);
    }

    fleet.wait_for("30% acked", |s| s.get("acked") >= JOBS * 3 / 10);
    fleet.kill("c1");
    fleet.wait_for("50% acked", |s| s.get("acked") >= JOBS / 2);
    fleet.consume("c4", &CONSUMER_ARGS);
    fleet.wait_for("70% acked", |s| s.get("acked") >= JOBS * 7 / 10);

    fleet.signal("c2", "STOP");
    fleet.wait_for("c2's leases taken by c3 and c4", |s| {
        s.partitions_of("c2").is_empty() && s.held_by(&["c3", "c4"]) == PARTITIONS as usize
    });
    fleet.signal("c2", "CONT");
    fleet.wait_for("all acked", |s| s.get("acked") >= JOBS);

    for name in ["c2", "c3", "c4"] {
        fleet.assert_terminates(name);
    }
    let status = fleet.status().expect("status");
    let reexecutions = status.assert_complete(KEYS, JOBS);
    assert!(
        reexecutions <= 2 * REEXECUTIONS_PER_LOSS,
        "{reexecutions} re-executions after one crash and one lease loss: {}",
        status.line
    );
    let executions = check_keys(&server.url(), "crash", KEYS, JOBS);
    assert_eq!(executions, status.get("executions"), "{}", status.line);
}

/// A member shut down with SIGTERM finishes what it took and hands its partitions over: no job
/// runs twice.
#[test]
fn graceful_handover_repeats_nothing() {
    const KEYS: u64 = 100;
    const JOBS: u64 = 5_000;
    let server = Server::start();
    let mut fleet = Fleet::new(&server.url(), "handover");
    fleet.produce(KEYS, JOBS, None);
    fleet.consume("c1", &STEADY_ARGS);
    fleet.consume("c2", &STEADY_ARGS);

    fleet.wait_for("30% acked", |s| s.get("acked") >= JOBS * 3 / 10);
    fleet.assert_terminates("c1");
    fleet.wait_for("all acked", |s| s.get("acked") >= JOBS);
    fleet.assert_terminates("c2");

    let status = fleet.status().expect("status");
    let reexecutions = status.assert_complete(KEYS, JOBS);
    assert_eq!(reexecutions, 0, "jobs ran twice: {}", status.line);
    assert_eq!(check_keys(&server.url(), "handover", KEYS, JOBS), JOBS);
}

/// The server killed and restarted from its append-only file mid-stream: the consumers
/// reconnect instead of exiting, and nothing acknowledged before the kill is lost.
#[test]
fn server_restart_loses_no_acked_state() {
    const KEYS: u64 = 100;
    const JOBS: u64 = 5_000;
    let mut server = Server::start_with_aof();
    let mut fleet = Fleet::new(&server.url(), "restart");
    fleet.produce(KEYS, JOBS, None);
    fleet.consume("c1", &CONSUMER_ARGS);
    fleet.consume("c2", &CONSUMER_ARGS);

    let before = fleet
        .wait_for("30% acked", |s| s.get("acked") >= JOBS * 3 / 10)
        .get("acked");
    server.kill();
    server.restart();
    let after = fleet.wait_for("the restarted server's status", |_| true);
    assert!(
        after.get("acked") >= before,
        "{before} acked before the restart, fewer after: {}",
        after.line
    );
    assert_eq!(after.get("produced"), JOBS, "{}", after.line);

    fleet.wait_for("all acked", |s| s.get("acked") >= JOBS);
    for name in ["c1", "c2"] {
        assert!(fleet.running(name), "consumer {name} exited");
    }
    for name in ["c1", "c2"] {
        fleet.assert_terminates(name);
    }
    assert!(
        ["c1", "c2"]
            .iter()
            .any(|name| fleet.log(name).contains("reconnect")),
        "no consumer logged a reconnect:\n{}\n{}",
        fleet.log("c1"),
        fleet.log("c2")
    );

    let status = fleet.status().expect("status");
    status.assert_complete(KEYS, JOBS);
    let executions = check_keys(&server.url(), "restart", KEYS, JOBS);
    assert_eq!(executions, status.get("executions"), "{}", status.line);
}

/// Nothing listens on port 1: each command fails fast and says why.
#[test]
fn unreachable_url_is_a_clear_error() {
    const URL: &str = "redis://127.0.0.1:1/";
    let commands: [&[&str]; 3] = [
        &[
            "produce", "--redis", URL, "--topic", "t", "--keys", "1", "--jobs", "1",
        ],
        &["consume", "--redis", URL, "--topic", "t", "--member", "m"],
        &["status", "--redis", URL, "--topic", "t"],
    ];
    for args in commands {
        let mut command = ledger(args);
        command.env("RUST_LOG", "info");
        let output = run(command, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "`ledger {}` succeeded against {URL}",
            args[0]
        );
        assert!(
            stderr.contains("127.0.0.1:1") || stderr.to_lowercase().contains("connect"),
            "`ledger {}` gave no clear error: {stderr:?}",
            args[0]
        );
    }
}
