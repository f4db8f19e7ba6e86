//! The acker: writes the acknowledgements and dead letters of finished entries, in batches,
//! each fenced by its lease. It settles each entry in its lease's `in_flight` once written (or
//! refused), so a lease with nothing in flight has nothing left to write.

use super::Shared;
use crate::{conn::Conn, lease::Lease, scripts, topic::GROUP};
use crossbeam_channel::Receiver;
use log::error;
use std::sync::{atomic::Ordering, Arc};

/// What becomes of a finished entry.
pub(crate) enum Settle {
    Ack {
        lease: Arc<Lease>,
        id: String,
    },
    Dead {
        lease: Arc<Lease>,
        id: String,
        key: String,
        payload: Vec<u8>,
        error: String,
        attempts: u32,
    },
}

pub(crate) struct Acker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    pub(crate) batch: usize,
}

impl Acker {
    /// Runs until every sender is gone, having written all they sent (or given up on the server
    /// while stopping, see [`Shared::gives_up`]).
    pub(crate) fn run(self, settled: Receiver<Settle>) {
        let Acker {
            shared,
            mut conn,
            batch,
        } = self;
        let give_up = |down| shared.gives_up(down);
        let acked = shared.topic.acked();
        let dead = shared.topic.dead();
        let mut acks: Vec<(Arc<Lease>, Vec<String>)> = Vec::new();
        while let Ok(first) = settled.recv() {
            let mut deaths = Vec::new();
            let mut take = |settle| match settle {
                Settle::Ack { lease, id } => {
                    match acks.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &lease)) {
                        Some((_, ids)) => ids.push(id),
                        None => acks.push((lease, vec![id])),
                    }
                }
                death @ Settle::Dead { .. } => deaths.push(death),
            };
            take(first);
            for settle in settled.try_iter().take(batch.saturating_sub(1)) {
                take(settle);
            }
            for (lease, ids) in acks.drain(..) {
                let reply: Result<i64, _> = conn.run(&give_up, |con| {
                    scripts::ack()
                        .key(&lease.key)
                        .key(&lease.stream)
                        .key(&acked)
                        .arg(&lease.token)
                        .arg(GROUP)
                        .arg(&ids)
                        .invoke(con)
                });
                written(&lease, reply, ids.len());
            }
            for death in deaths {
                let Settle::Dead {
                    lease,
                    id,
                    key,
                    payload,
                    error,
                    attempts,
                } = death
                else {
                    unreachable!("only dead letters are kept apart")
                };
                let reply: Result<i64, _> = conn.run(&give_up, |con| {
                    scripts::dead()
                        .key(&lease.key)
                        .key(&lease.stream)
                        .key(&acked)
                        .key(&dead)
                        .arg(&lease.token)
                        .arg(GROUP)
                        .arg(&id)
                        .arg(&key)
                        .arg(&payload)
                        .arg(&error)
                        .arg(attempts)
                        .arg(lease.partition)
                        .invoke(con)
                });
                written(&lease, reply, 1);
            }
        }
    }
}

/// Settles `count` entries of `lease` after their write: refused means the lease is gone.
fn written(lease: &Lease, reply: redis::RedisResult<i64>, count: usize) {
    match reply {
        Ok(-1) => lease.lose(),
        Ok(_) => {}
        // Left pending: the partition's next owner runs them again, so this member gives the
        // partition up now, which keeps the re-executions within the stated bound.
        Err(e) => {
            error!(
                "partition {}: cannot acknowledge {count} entries: {e}",
                lease.partition
            );
            lease.lose();
        }
    }
    lease.in_flight.fetch_sub(count, Ordering::SeqCst);
}
