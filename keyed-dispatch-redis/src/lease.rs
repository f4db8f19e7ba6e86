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

use std::{
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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

/// Milliseconds from `origin` to now.
pub(crate) fn now_ms(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

/// Milliseconds from `origin` to `sent + ttl - margin`.
pub(crate) fn deadline(origin: Instant, sent: Instant, ttl: Duration, margin: Duration) -> u64 {
    (sent.saturating_duration_since(origin) + ttl.saturating_sub(margin)).as_millis() as u64
}

#[cfg(test)]
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
