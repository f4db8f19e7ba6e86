//! The control loop: once a tick, it renews this member's registration and leases, works out
//! which partitions the live members' spread gives it, hands over those it should no longer
//! hold (after their entries in flight are settled), and takes those it should hold once free.

use super::Shared;
use crate::{
    conn::Conn,
    error::at_key,
    lease::{deadline, Lease},
    publisher::stored_partitions,
    scripts,
    topic::GROUP,
    Error,
};
use crossbeam_channel::Receiver;
use log::{debug, error, info};
use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

/// How often acknowledged entries are trimmed, when asked to.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long a partition whose stream cannot be used (a key of the wrong type) is left alone.
const SHUN: Duration = Duration::from_secs(30);

/// The partitions that `member` holds among `members` (sorted): partition `p` goes to the
/// `p % members.len()`-th, so each member holds within one of every other's count.
pub(crate) fn assigned(members: &[String], member: &str, partitions: u32) -> Vec<u32> {
    let Some(rank) = members.iter().position(|m| m == member) else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|p| *p as usize % members.len() == rank)
        .collect()
}

pub(crate) struct Control {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    pub(crate) wake: Receiver<()>,
}

impl Control {
    pub(crate) fn run(mut self) {
        let mut partitions = None;
        let mut owned: Vec<Arc<Lease>> = Vec::new();
        let mut shunned: HashMap<u32, Instant> = HashMap::new();
        let mut trimmed = Instant::now();
        loop {
            if self.shared.trim && trimmed.elapsed() >= TRIM_EVERY {
                self.trim(&owned);
                trimmed = Instant::now();
            }
            let leaving = self.shared.leaving.load(Ordering::SeqCst);
            if let Err(e) = self.tick(leaving, &mut partitions, &mut owned, &mut shunned) {
                error!("{}: {e}", self.shared.member);
                if leaving {
                    // The server is gone (see `Shared::gives_up`): the leases expire there.
                    return;
                }
            }
            *self.shared.owned.lock().unwrap() = owned.clone();
            self.shared.changed.notify_all();
            if leaving && owned.is_empty() {
                return;
            }
            let _ = self.wake.recv_timeout(self.shared.tick);
        }
    }

    fn tick(
        &mut self,
        leaving: bool,
        partitions: &mut Option<u32>,
        owned: &mut Vec<Arc<Lease>>,
        shunned: &mut HashMap<u32, Instant>,
    ) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let (topic, member, ttl) = (&shared.topic, shared.member.as_str(), shared.ttl);
        let ttl_ms = ttl.as_millis() as u64;
        let give_up = |down| shared.gives_up(down);

        // Renew first, whatever else fails. A lease the server no longer has, or that this
        // member stopped trusting, is gone: released if still there, its entries left for the
        // next owner. One whose renewal failed is kept while it still holds.
        let mut kept = Vec::with_capacity(owned.len());
        for lease in owned.drain(..) {
            let sent = Instant::now();
            let renewed: redis::RedisResult<i64> = self.conn.run(&give_up, |con| {
                scripts::renew()
                    .key(&lease.key)
                    .arg(&lease.token)
                    .arg(ttl_ms)
                    .invoke(con)
            });
            match renewed {
                Ok(1) if lease.renewed(sent, ttl, shared.margin) => kept.push(lease),
                Err(e) if lease.holds() => {
                    error!("{member}: cannot renew partition {}: {e}", lease.partition);
                    kept.push(lease);
                }
                _ => {
                    lease.lose();
                    self.release(&lease);
                }
            }
        }
        *owned = kept;

        let heartbeat: redis::RedisResult<Vec<String>> = self.conn.run(&give_up, |con| {
            scripts::heartbeat()
                .key(topic.members())
                .arg(member)
                .arg(ttl_ms)
                .arg(if leaving { "1" } else { "0" })
                .invoke(con)
        });
        let mut members = match heartbeat {
            Ok(members) => members,
            // Leaving needs no spread: every partition is handed over.
            Err(e) if leaving => {
                error!("{member}: cannot leave the member list: {e}");
                Vec::new()
            }
            Err(e) => return Err(at_key(e, &topic.members())),
        };
        members.sort();
        if partitions.is_none() && !leaving {
            *partitions = self
                .conn
                .run(&give_up, |con| Ok(stored_partitions(con, topic)))??;
        }

        // Hand over what the spread gives to others, once its entries are settled; a
        // partition wanted back before its handover ended is simply read again.
        let wanted = match *partitions {
            Some(partitions) if !leaving => assigned(&members, member, partitions),
            _ => Vec::new(),
        };
        let mut kept = Vec::with_capacity(owned.len());
        for lease in owned.drain(..) {
            if wanted.contains(&lease.partition) {
                lease.draining.store(false, Ordering::SeqCst);
                kept.push(lease);
                continue;
            }
            if lease.hand_over() {
                self.release(&lease);
                info!("{member}: handed over partition {}", lease.partition);
            } else {
                kept.push(lease);
            }
        }
        *owned = kept;

        // Take what the spread gives to this member, as soon as it is free.
        if leaving || shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        shunned.retain(|_, until| *until > Instant::now());
        for partition in wanted {
            if owned.iter().any(|l| l.partition == partition) || shunned.contains_key(&partition) {
                continue;
            }
            let sent = Instant::now();
            let epoch: u64 = self.conn.run(&give_up, |con| {
                scripts::take()
                    .key(topic.lease(partition))
                    .key(topic.epoch(partition))
                    .arg(member)
                    .arg(ttl_ms)
                    .invoke(con)
            })?;
            if epoch == 0 {
                continue;
            }
            let trusted = deadline(shared.origin, sent, ttl, shared.margin);
            let lease = Lease::new(partition, epoch, member, topic, shared.origin, trusted);
            match self.create_group(&lease.stream) {
                Ok(()) => {
                    info!("{member}: took partition {partition} (epoch {epoch})");
                    owned.push(Arc::new(lease));
                }
                Err(e) => {
                    error!("{member}: cannot read partition {partition}: {e}");
                    self.release(&lease);
                    shunned.insert(partition, Instant::now() + SHUN);
                }
            }
        }
        Ok(())
    }

    /// The partition's group, reading from the stream's start, if it does not exist yet.
    fn create_group(&mut self, stream: &str) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let created = self.conn.run(&|down| shared.gives_up(down), |con| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query::<()>(con)
        });
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(|e| at_key(e, stream)),
        }
    }

    /// Trims the acknowledged entries of the partitions held and not being handed over.
    fn trim(&mut self, owned: &[Arc<Lease>]) {
        let shared = Arc::clone(&self.shared);
        for lease in owned {
            if lease.draining.load(Ordering::SeqCst) || !lease.holds() {
                continue;
            }
            let trimmed: redis::RedisResult<i64> =
                self.conn.run(&|down| shared.gives_up(down), |con| {
                    scripts::trim().key(&lease.stream).arg(GROUP).invoke(con)
                });
            match trimmed {
                Ok(n) => debug!("partition {}: trimmed {n} entries", lease.partition),
                Err(e) => error!("partition {}: cannot trim: {e}", lease.partition),
            }
        }
    }

    /// Releases `lease` on the server if it is still there; if that fails, it expires there
    /// on its own.
    fn release(&mut self, lease: &Lease) {
        let shared = Arc::clone(&self.shared);
        let released: redis::RedisResult<i64> =
            self.conn.run(&|down| shared.gives_up(down), |con| {
                scripts::release()
                    .key(&lease.key)
                    .arg(&lease.token)
                    .invoke(con)
            });
        match released {
            Ok(released) => debug!(
                "partition {} epoch {}: {}",
                lease.partition,
                lease.epoch,
                if released == 1 {
                    "released"
                } else {
                    "already gone"
                }
            ),
            Err(e) => error!(
                "partition {}: cannot release its lease ({e}); it expires on its own",
                lease.partition
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assigned;

    #[test]
    fn the_spread_gives_each_partition_to_one_member_evenly() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let spread: Vec<Vec<u32>> = members.iter().map(|m| assigned(&members, m, 16)).collect();
        assert_eq!(spread[0], [0, 3, 6, 9, 12, 15]);
        assert_eq!(spread[1], [1, 4, 7, 10, 13]);
        assert_eq!(spread[2], [2, 5, 8, 11, 14]);
        assert!(assigned(&members, "d", 16).is_empty());
    }
}
