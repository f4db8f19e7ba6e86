//! A connection that comes back after the server goes away: each of the consumer's threads
//! owns one, and a command that failed for want of a server is sent again once reconnected.

use crate::Error;
use log::warn;
use redis::{Client, Connection, RedisError, RedisResult};
use std::time::{Duration, Instant};

/// How long a command may wait for its reply before the connection counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest pause between two attempts to reconnect.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

pub(crate) struct Conn {
    client: Client,
    url: String,
    con: Option<Connection>,
    /// Since when the server has been out of reach: set by the first command that found it
    /// so, cleared by the next that reached it.
    down_since: Option<Instant>,
}

impl Conn {
    /// Connects to `url`; an error here is the caller's to report (a wrong URL, no server).
    pub(crate) fn open(url: &str) -> Result<Conn, Error> {
        let connect = |source| Error::Connect {
            url: url.to_string(),
            source,
        };
        let client = Client::open(url).map_err(connect)?;
        let con = connection(&client).map_err(connect)?;
        Ok(Conn {
            client,
            url: url.to_string(),
            con: Some(con),
            down_since: None,
        })
    }

    /// The connection itself, for a caller that reports errors rather than reconnecting.
    pub(crate) fn into_connection(self) -> Connection {
        self.con.expect("a connection just opened")
    }

    /// Runs `command`, reconnecting and running it again while the server cannot be reached,
    /// with a pause that doubles up to a second. For commands that may run twice: the server
    /// may have run one whose reply was lost. Gives up (returning the error) when another kind
    /// of error comes back, or when `give_up`, told how long the server has been out of reach,
    /// says so (counting across commands: once it gave up, the next command that fails
    /// gives up at once).
    pub(crate) fn run<T>(
        &mut self,
        give_up: &dyn Fn(Duration) -> bool,
        mut command: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.run_once(&mut command) {
                Err(e) if lost(&e) => {
                    let down = self.down_since.map_or(Duration::ZERO, |t| t.elapsed());
                    if give_up(down) {
                        return Err(e);
                    }
                    warn!("{}: {e}; reconnect in {pause:?}", self.url);
                    std::thread::sleep(pause); // the backoff between two reconnections
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// Runs `command` once, connecting first if the last command lost the connection; for a
    /// command that must not run twice. An error for which [`lost`] holds leaves the
    /// connection to be made again by the next command.
    pub(crate) fn run_once<T>(
        &mut self,
        command: &mut impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let con = match self.con.as_mut() {
            Some(con) => Ok(con),
            None => connection(&self.client).map(|con| self.con.insert(con)),
        };
        let reply = con.and_then(command);
        match &reply {
            Err(e) if lost(e) => {
                self.con = None;
                self.down_since.get_or_insert_with(Instant::now);
            }
            _ => self.down_since = None,
        }
        reply
    }
}

fn connection(client: &Client) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(REPLY_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(con)
}

/// Whether `e` says the server could not be reached or is not ready, rather than that the
/// command was wrong: such a command is sent again once the server is back.
pub(crate) fn lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        // Refused without running: loading its data, busy with a script, writes suspended.
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MISCONF" | "TRYAGAIN" | "MASTERDOWN")
        )
}
