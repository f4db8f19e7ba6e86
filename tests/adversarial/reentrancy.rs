//! Re-entrancy: handlers that dispatch chains of follow-ups into small queues, close the
//! dispatcher from inside a handler, or run on while the last handle is dropped.

use crate::common::{threads_named, wait_for, wait_threads_gone};
use crate::{sized, watchdog, Faults, Me};
use keyed_dispatch::{DispatchError, Dispatcher};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Weak,
    },
    time::Duration,
};

/// A job of a chain of follow-ups: each hop dispatches the next from its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    chain: u64,
    hop: u32,
}

const CHAIN_KEYS: u64 = 8;
const HOPS: u32 = 6;

/// What the handlers of a chain dispatcher saw.
#[derive(Debug, Default)]
struct Chains {
    ran: AtomicU64,
    /// Follow-ups accepted.
    followed: AtomicU64,
    /// Follow-ups refused with `Full`, on their own key or another one.
    full: AtomicU64,
    /// Follow-ups refused with `Timeout`.
    timed_out: AtomicU64,
    /// Follow-ups refused with `Closed`.
    closed: AtomicU64,
    faults: Faults,
}

impl Chains {
    fn refused(&self) -> u64 {
        self.full.load(SeqCst) + self.timed_out.load(SeqCst) + self.closed.load(SeqCst)
    }

    /// Checks a refused follow-up: the exact key and job back, and a reason it may have.
    fn refused_with(&self, err: DispatchError<u64, Hop>, key: u64, job: Hop, may_close: bool) {
        match &err {
            DispatchError::Full { .. } => &self.full,
            DispatchError::Timeout { .. } => &self.timed_out,
            DispatchError::Closed { .. } if may_close => &self.closed,
            DispatchError::Closed { .. } => {
                return self
                    .faults
                    .note(|| format!("{job:?} refused Closed before close"));
            }
        }
        .fetch_add(1, SeqCst);
        let back = err.into_inner();
        if back != (key, job) {
            self.faults
                .note(|| format!("dispatched {:?}, got {back:?} back", (key, job)));
        }
    }

    /// The handler of a chain dispatcher: dispatches the next hop into its own key, which its
    /// running job fills (`key_capacity(0)`), so that it must be refused at once, and into the
    /// next key, where it may be accepted. `close_at`: the job count at which a handler closes
    /// the dispatcher.
    fn handler(
        self: &Arc<Self>,
        me: &Me<u64, Hop>,
        close_at: Option<u64>,
    ) -> impl Fn(&u64, Hop) + Send + Sync + 'static {
        let (chains, me) = (Arc::clone(self), Arc::clone(me));
        move |key: &u64, job: Hop| {
            let ran = chains.ran.fetch_add(1, SeqCst) + 1;
            // The last handle may be gone (the dispatcher is being dropped).
            let Some(d) = me.get().and_then(Weak::upgrade) else {
                return;
            };
            let may_close = close_at.is_some();
            if close_at == Some(ran) {
                let report = d.close();
                if report.drained {
                    chains.faults.note(|| "close in a handler waited".into());
                }
            }
            let next = Hop {
                chain: job.chain,
                hop: job.hop + 1,
            };
            // Into the own, full key: refused at once, never a wait.
            match d.dispatch(*key, next) {
                Ok(()) => chains
                    .faults
                    .note(|| format!("{next:?} accepted into its own full key {key}")),
                Err(err) => chains.refused_with(err, *key, next, may_close),
            }
            // A bounded wait is allowed on a worker thread, and times out.
            if job.chain % 64 == 0 && job.hop == 0 {
                match d.dispatch_timeout(*key, next, Duration::from_millis(1)) {
                    Ok(()) => chains
                        .faults
                        .note(|| format!("{next:?} accepted, full key")),
                    Err(err) if err.is_timeout() || (may_close && err.is_closed()) => {
                        chains.refused_with(err, *key, next, may_close)
                    }
                    Err(err) => chains.faults.note(|| format!("dispatch_timeout: {err:?}")),
                }
            }
            if job.hop < HOPS {
                let other = (*key + 1 + job.chain % (CHAIN_KEYS - 1)) % CHAIN_KEYS;
                match d.dispatch(other, next) {
                    Ok(()) => {
                        chains.followed.fetch_add(1, SeqCst);
                    }
                    Err(err) => chains.refused_with(err, other, next, may_close),
                }
            }
        }
    }
}

/// A dispatcher of chains with one-job keys and a small global capacity.
fn chain_dispatcher(
    name: &str,
    chains: &Arc<Chains>,
    close_at: Option<u64>,
) -> Arc<Dispatcher<u64, Hop>> {
    let me: Me<u64, Hop> = Arc::default();
    let d = Arc::new(
        Dispatcher::builder()
            .workers(2)
            .key_capacity(0)
            .capacity(4)
            .name(name)
            .build(chains.handler(&me, close_at))
            .unwrap(),
    );
    me.set(Arc::downgrade(&d)).unwrap();
    d
}

/// Producers start `per_producer` chains each, with blocking dispatches, until one is refused
/// `Closed`; returns the chains started and the dispatches refused.
fn start_chains(d: &Dispatcher<u64, Hop>, producers: u64, per_producer: u64) -> (u64, u64) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|producer| {
                s.spawn(move || {
                    for (started, chain) in (producer * per_producer..)
                        .take(per_producer as usize)
                        .enumerate()
                    {
                        let job = Hop { chain, hop: 0 };
                        if let Err(err) = d.dispatch(chain % CHAIN_KEYS, job) {
                            assert!(err.is_closed(), "{err:?}");
                            assert_eq!(err.into_inner(), (chain % CHAIN_KEYS, job));
                            return (started as u64, 1);
                        }
                    }
                    (per_producer, 0)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    })
}

#[test]
fn handlers_dispatching_follow_ups_into_small_queues_never_block() {
    let _watchdog = watchdog("follow-ups");
    let chains = Arc::new(Chains::default());
    let d = chain_dispatcher("chains", &chains, None);
    let (started, refused) = start_chains(&d, 4, sized(5_000) as u64);
    assert_eq!(refused, 0);
    d.wait_idle().unwrap();
    chains.faults.check();
    let ran = chains.ran.load(SeqCst);
    assert_eq!(
        ran,
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
    // Every job's dispatch into its own key came back Full.
    assert!(chains.full.load(SeqCst) >= ran);
    assert!(chains.timed_out.load(SeqCst) > 0);
    assert_eq!(chains.closed.load(SeqCst), 0);
    let stats = d.stats();
    assert_eq!((stats.completed, stats.panicked), (ran, 0));
    assert_eq!(stats.refused, chains.refused());
    assert_eq!(d.close().stats.keys, 0);
}

#[test]
fn close_inside_a_handler_races_follow_ups_and_producers_then_every_dispatch_comes_back() {
    let _watchdog = watchdog("close in a handler");
    let chains = Arc::new(Chains::default());
    let per_producer = sized(5_000) as u64;
    let d = chain_dispatcher("inclose", &chains, Some(2 * per_producer));
    let (started, refused) = start_chains(&d, 4, per_producer);
    let report = d.close();
    assert!(report.drained);
    chains.faults.check();
    let ran = chains.ran.load(SeqCst);
    assert_eq!(
        ran,
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
    // The handler closed after 2 * per_producer jobs, long before the producers were done.
    assert!(refused > 0, "producers never saw the close");
    assert!(
        chains.closed.load(SeqCst) > 0,
        "no follow-up was refused Closed"
    );
    let refused_before = report.stats.refused;
    assert_eq!(refused_before, refused + chains.refused());
    assert_eq!(report.stats.completed, ran);
    // Then a million dispatches from four threads, by every method: each comes back Closed,
    // with its own key and job, and none runs.
    let attempts = sized(250_000) as u64;
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let d = &d;
            s.spawn(move || {
                for n in thread * attempts..(thread + 1) * attempts {
                    let job = Hop { chain: n, hop: 0 };
                    let err = match n % 3 {
                        0 => d.dispatch(n, job),
                        1 => d.try_dispatch(n, job),
                        _ => d.dispatch_timeout(n, job, Duration::from_secs(3600)),
                    }
                    .expect_err("accepted after close");
                    assert!(err.is_closed(), "{err:?}");
                    assert_eq!(err.into_inner(), (n, job));
                }
            });
        }
    });
    let stats = d.stats();
    assert_eq!(stats.refused, refused_before + 4 * attempts);
    assert_eq!((stats.completed, stats.dispatched), (ran, ran));
    assert_eq!(chains.ran.load(SeqCst), ran);
    if !cfg!(miri) {
        wait_threads_gone("inclose-");
    }
}

#[test]
#[cfg_attr(miri, ignore = "waits for the pool's threads to leave /proc")]
fn dropping_the_handle_while_handlers_dispatch_follow_ups_runs_every_accepted_job() {
    let _watchdog = watchdog("drop during follow-ups");
    let chains = Arc::new(Chains::default());
    let d = chain_dispatcher("chdrop", &chains, None);
    wait_for(|| threads_named("chdrop-") == 2);
    let (started, _) = start_chains(&d, 4, sized(5_000) as u64);
    // Follow-ups are still bouncing between keys. A handler may hold the last handle when
    // this one goes, and then finishes the shutdown itself: wait for the threads to exit.
    drop(d);
    wait_threads_gone("chdrop-");
    chains.faults.check();
    assert_eq!(
        chains.ran.load(SeqCst),
        started + chains.followed.load(SeqCst),
        "accepted follow-ups lost"
    );
}
