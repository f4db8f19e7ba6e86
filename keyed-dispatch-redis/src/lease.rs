//! A partition's lease as its holder sees it: the epoch it was taken with, and until when the
//! holder may trust it without hearing from the server.
//!
//! The server's lease expires `ttl` after its last renewal. The holder stops trusting it
//! earlier: `ttl` minus a margin after it *sent* the renewal that the server accepted, on its own
//! monotonic clock. So it gives a partition up before anyone else can take it, even if it was
//! paused: a paused process finds the deadline passed as soon as it runs again.
//!
//! A lease goes one way: held, then lost. Once lost, no job of its epoch starts, and the
//! holder releases it on the server if it is still there.

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

/// `trusted_until` of a lost lease.
const LOST: u64 = 0;

pub(crate) struct Lease {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    /// `member/epoch`, the lease's value on the server: what the scripts check.
    pub(crate) token: String,
    pub(crate) key: String,
    pub(crate) stream: String,
    /// The consumer's clock, shared by its leases.
    origin: Instant,
    /// Milliseconds since `origin` until which the lease is trusted; `LOST` once given up.
    trusted_until: AtomicU64,
    /// Set when the partition is to be handed over: no more reads, and the lease is released
    /// once `in_flight` is zero.
    pub(crate) draining: AtomicBool,
    /// Entries read under this lease and not yet settled: acknowledged, dead-lettered, or
    /// dropped unstarted because the lease was lost.
    pub(crate) in_flight: AtomicUsize,
}

impl Lease {
    pub(crate) fn new(
        partition: u32,
        epoch: u64,
        member: &str,
        topic: &crate::Topic,
        origin: Instant,
        trusted_until: u64,
    ) -> Lease {
        Lease {
            partition,
            epoch,
            token: format!("{member}/{epoch}"),
            key: topic.lease(partition),
            stream: topic.stream(partition),
            origin,
            trusted_until: AtomicU64::new(trusted_until.max(LOST + 1)),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Whether the lease may still be trusted; past its deadline it is lost for good.
    pub(crate) fn holds(&self) -> bool {
        let until = self.trusted_until.load(Ordering::SeqCst);
        if until == LOST {
            return false;
        }
        if now_ms(self.origin) < until {
            return true;
        }
        self.lose();
        false
    }

    /// Starts a batch of reads under the lease, unless it is being handed over or lost. The
    /// batch counts as in flight until dropped, so a handover cannot release the lease while
    /// entries read under it are on their way to the dispatcher.
    ///
    /// Against [`hand_over`](Lease::hand_over), a Dekker pair: this counts, then looks at
    /// `draining`; that sets `draining`, then looks at the count. One of the two sees the
    /// other, so either the batch is not started or the lease is not released (loom model in
    /// `model` below).
    pub(crate) fn begin_batch(self: &Arc<Self>) -> Option<Batch> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let batch = Batch(Arc::clone(self));
        if self.draining.load(Ordering::SeqCst) || !self.holds() {
            return None;
        }
        Some(batch)
    }

    /// Marks the lease for handing over: no batch starts from now on. True once nothing read
    /// under it is in flight any more; the lease is then given up here, and may be released.
    pub(crate) fn hand_over(&self) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        // ORDERING: a read-modify-write, not a load. If it comes before a batch's increment,
        // that increment reads from it, so the batch's look at `draining` (after it) sees the
        // store above: the pair holds even without relying on `SeqCst` loads, which loom
        // does not model.
        if self.in_flight.fetch_add(0, Ordering::SeqCst) != 0 {
            return false;
        }
        self.trusted_until.store(LOST, Ordering::SeqCst);
        true
    }

    /// Gives the lease up: no job of its epoch starts from now on.
    pub(crate) fn lose(&self) {
        if self.trusted_until.swap(LOST, Ordering::SeqCst) != LOST {
            log::warn!(
                "lost the lease of partition {} (epoch {})",
                self.partition,
                self.epoch
            );
        }
    }

    /// The server renewed the lease for `ttl` from `sent`, the instant the request left:
    /// trust it until then, less `margin`. False if it was lost meanwhile (it stays lost).
    pub(crate) fn renewed(&self, sent: Instant, ttl: Duration, margin: Duration) -> bool {
        let until = deadline(self.origin, sent, ttl, margin);
        let mut current = self.trusted_until.load(Ordering::SeqCst);
        loop {
            if current == LOST {
                return false;
            }
            match self.trusted_until.compare_exchange(
                current,
                until.max(current),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

/// A batch of reads in progress under a lease: counted in its `in_flight` while alive.
pub(crate) struct Batch(Arc<Lease>);

impl Drop for Batch {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Milliseconds from `origin` to now.
pub(crate) fn now_ms(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

/// Milliseconds from `origin` to `sent + ttl - margin`.
pub(crate) fn deadline(origin: Instant, sent: Instant, ttl: Duration, margin: Duration) -> u64 {
    (sent.saturating_duration_since(origin) + ttl.saturating_sub(margin)).as_millis() as u64
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn lease(trust: Duration) -> Lease {
        // A clock started a while ago, so that a deadline right at its start is in the past.
        let origin = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        let until = deadline(origin, origin, trust, Duration::ZERO);
        Lease::new(3, 7, "m1", &crate::Topic::new("t"), origin, until)
    }

    #[test]
    fn a_lease_past_its_deadline_is_lost_for_good() {
        let lease = lease(Duration::ZERO);
        assert_eq!(lease.token, "m1/7");
        assert!(!lease.holds());
        let ttl = Duration::from_secs(60);
        assert!(!lease.renewed(Instant::now(), ttl, Duration::ZERO));
        assert!(!lease.holds());
    }

    #[test]
    fn a_renewal_extends_the_trust_and_a_loss_ends_it() {
        let lease = lease(Duration::from_secs(60));
        assert!(lease.holds());
        assert!(lease.renewed(
            Instant::now(),
            Duration::from_secs(120),
            Duration::from_secs(1)
        ));
        assert!(lease.holds());
        lease.lose();
        assert!(!lease.holds());
        assert!(!lease.renewed(Instant::now(), Duration::from_secs(120), Duration::ZERO));
    }
}

/// `RUSTFLAGS="--cfg loom" cargo test --release -p keyed-dispatch-redis --lib
/// --target-dir target/loom lease`: a handover racing a batch of reads.
#[cfg(all(test, loom))]
mod model {
    use super::*;
    use loom::sync::atomic::AtomicBool;

    fn lease() -> Arc<Lease> {
        let origin = Instant::now();
        let trusted = deadline(origin, origin, Duration::from_secs(3600), Duration::ZERO);
        Arc::new(Lease::new(
            0,
            1,
            "m",
            &crate::Topic::new("t"),
            origin,
            trusted,
        ))
    }

    /// The reader starts a batch and dispatches an entry under it; the control loop hands
    /// the lease over. Never both: an entry dispatched after the release would run here
    /// while the partition's next owner replays it.
    fn race(begin: fn(&Arc<Lease>) -> Option<Batch>) {
        loom::model(move || {
            let lease = lease();
            let released = Arc::new(AtomicBool::new(false));
            let reader = {
                let (lease, released) = (Arc::clone(&lease), Arc::clone(&released));
                loom::thread::spawn(move || {
                    if let Some(_batch) = begin(&lease) {
                        // What the dispatch of an entry read in the batch does first.
                        lease.in_flight.fetch_add(1, Ordering::SeqCst);
                        assert!(
                            !released.load(Ordering::SeqCst),
                            "dispatched after the release"
                        );
                    }
                })
            };
            if lease.hand_over() {
                released.store(true, Ordering::SeqCst);
            }
            reader.join().unwrap();
        });
    }

    #[test]
    fn a_handover_never_releases_a_lease_with_a_batch_on_its_way() {
        race(Lease::begin_batch);
    }

    /// The broken twin: looking at `draining` before counting the batch lets the handover see
    /// nothing in flight between the two.
    #[test]
    #[should_panic(expected = "dispatched after the release")]
    fn twin_counting_after_the_check_releases_under_a_batch() {
        race(|lease| {
            if lease.draining.load(Ordering::SeqCst) {
                return None;
            }
            lease.in_flight.fetch_add(1, Ordering::SeqCst);
            Some(Batch(Arc::clone(lease)))
        });
    }
}
