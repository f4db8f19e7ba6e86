//! A real redis-server per test: on a unix socket in a directory of its own, so that tests run
//! in parallel without racing for ports, stopped by its process id when the test ends.

#![allow(dead_code)] // each test file uses its own part

use keyed_dispatch_redis::Entry;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Condvar, Mutex,
    },
    time::{Duration, Instant},
};

/// How long a server may take to start or to answer, on a slow, loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A redis-server of a test's own; killed and its directory removed on drop.
pub struct Server {
    child: Option<Child>,
    dir: PathBuf,
    aof: bool,
}

impl Server {
    /// A server without persistence.
    pub fn start() -> Server {
        Server::launch(false)
    }

    /// A server that writes every change to its append-only file before answering
    /// (`appendfsync always`), so that a kill loses nothing it acknowledged.
    pub fn start_with_aof() -> Server {
        Server::launch(true)
    }

    fn launch(aof: bool) -> Server {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kdr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = Server {
            child: None,
            dir,
            aof,
        };
        server.spawn();
        server
    }

    /// The socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL clients connect with.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same socket and directory (and append-only file).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .args(["--logfile"])
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.ping() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server exited with {status}: {log}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(pause); // polling for the server to answer
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether the server answers PING (and has loaded its data).
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }
}

impl Server {
    /// A client connection to the server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// Polls `condition` until it holds, or panics after `PATIENCE`.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5)); // polling a condition in Redis
    }
}

/// The integer at `key`, 0 when absent.
pub fn counter(con: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<u64>>(con)
        .unwrap()
        .unwrap_or(0)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Each key's payloads (as text) in the order its handler ran them.
#[derive(Default)]
pub struct Runs {
    pub by_key: Mutex<HashMap<String, Vec<String>>>,
    changed: Condvar,
}

impl Runs {
    pub fn record(&self, entry: &Entry) {
        let payload = String::from_utf8_lossy(entry.payload()).into_owned();
        let mut runs = self.by_key.lock().unwrap();
        runs.entry(entry.key().to_string())
            .or_default()
            .push(payload);
        self.changed.notify_all();
    }

    pub fn of(&self, key: &str) -> Vec<String> {
        self.by_key
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `key` has run `payload`, or panics after `PATIENCE`.
    pub fn wait_for(&self, key: &str, payload: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut runs = self.by_key.lock().unwrap();
        while !runs
            .get(key)
            .is_some_and(|p| p.iter().any(|p| p == payload))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {key} to run {payload}"
            );
            runs = self.changed.wait_timeout(runs, left).unwrap().0;
        }
    }
}

/// Entries of topic `t`'s partition `p` delivered and not acknowledged.
pub fn pending(con: &mut redis::Connection, p: u32) -> u64 {
    let summary: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(format!("t:stream:{p}"))
        .arg(keyed_dispatch_redis::GROUP)
        .query(con)
        .unwrap();
    summary.0
}
