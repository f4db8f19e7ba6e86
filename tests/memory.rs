//! Memory follows the live keys, not every key ever seen: rounds of a million fresh keys each
//! leave the live heap where the first round left it, and closing gives it all back.
//!
//! The heap is measured by a counting global allocator, which sees every allocation of the
//! process: this file holds one test, so that no other test allocates beside it.

mod common;

use common::{wait_for, Latch, Watchdog};
use keyed_dispatch::Dispatcher;
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

/// The system allocator, counting the bytes live and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(by: usize) {
        // ORDERING: Relaxed; the counters order nothing. The test reads them after joins and
        // waits that synchronize with the threads that allocated.
        let live = LIVE.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(live, Relaxed);
    }

    fn shrank(by: usize) {
        // ORDERING: Relaxed, as in `grew`.
        LIVE.fetch_sub(by, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the arguments it was given, so `System`'s
// guarantees hold unchanged; the counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (a non-zero size), passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (that is, `System`) returned, with
        // the layout it was allocated with.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc` for `ptr` and `layout`; the caller checks `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size > layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Starts a new peak at the bytes live now.
fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

fn peak() -> usize {
    PEAK.load(Relaxed)
}

const MIB: usize = 1 << 20;

/// Jobs (each on a fresh key) that may wait at once. It bounds the keys alive at once, and so
/// the memory a round can need: at most `CAPACITY` keys with a job, plus the idle keys listed
/// for eviction (about 4,096), each a mailbox of a few hundred bytes and an entry in the
/// map. Each round starts with a burst that fills it (see the test), so every round reaches
/// that bound whatever the threads' speeds.
const CAPACITY: usize = 16 * 1024;

/// How far round 3's peak, or the heap left after a round, may exceed round 1's. Every round
/// peaks at its opening burst of [`CAPACITY`] keys, so the peaks differ only by the idle keys
/// awaiting eviction, the slack in the map's and queues' capacities (they double as they grow
/// and never shrink), and the spare mailboxes the dispatcher keeps for new keys (at most 1,024,
/// filled by the end of the first round, so rounds 2 and 3 start with them): about half a MiB
/// when measured, out of about 5 MiB, and none of it grows after round 2. A leak instead grows
/// with the keys seen: over the two rounds between the first and the last, even one byte per
/// key is 2 MiB at a million keys a round (and 5 bytes per key reach the margin at the debug
/// build's 100,000).
const PLATEAU_MARGIN: usize = MIB;

/// How far the heap may stay above where it was before the dispatcher was built, once it is
/// closed and dropped: everything the dispatcher allocated is freed by then, its threads
/// joined. What may remain is a few one-off allocations made on first use by the standard
/// library (thread names, per-thread state), far below one key's worth per thousand keys.
const BASELINE_MARGIN: usize = 64 * 1024;

#[test]
#[cfg_attr(
    miri,
    ignore = "a million keys a round is far too slow under miri, and scaled down to a few \
              thousand the margins would measure nothing"
)]
fn rounds_of_a_million_fresh_keys_plateau_and_close_gives_the_heap_back() {
    // `STRESS_SCALE` multiplies the keys of a round.
    let scale = std::env::var("STRESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u32)
        .max(1);
    let _watchdog = Watchdog::new("memory plateau", common::HANG * scale);
    let keys = common::scaled(1_000_000) as u64 * u64::from(scale);
    const ROUNDS: usize = 3;
    const WORKERS: u64 = 2;
    // The first jobs of each round hold both threads until the dispatcher is full.
    let bursts: [Arc<Latch>; ROUNDS] = std::array::from_fn(|_| Latch::new());
    let mut peaks = Vec::with_capacity(ROUNDS);
    let mut after = Vec::with_capacity(ROUNDS);
    // Everything the test itself keeps is allocated by now.
    let before = live();
    let held = bursts.clone();
    let d = Dispatcher::builder()
        .workers(WORKERS as usize)
        .capacity(CAPACITY)
        .build(move |&key: &u64, _: ()| {
            if key % keys < WORKERS {
                held[(key / keys) as usize].wait();
            }
        })
        .unwrap();
    // The rounds are measured from the dispatcher as built, threads started.
    let baseline = live();
    for (round, burst) in bursts.iter().enumerate() {
        let round = round as u64;
        reset_peak();
        std::thread::scope(|s| {
            s.spawn(|| {
                wait_for(|| d.stats().blocked == 1);
                burst.open();
            });
            for key in round * keys..(round + 1) * keys {
                d.dispatch(key, ()).unwrap();
            }
        });
        d.wait_idle().unwrap();
        peaks.push(peak() - baseline);
        after.push(live() - baseline);
        let stats = d.stats();
        assert_eq!(stats.keys, 0, "round {round}: keys held after wait_idle");
        assert_eq!(stats.completed, (round + 1) * keys);
    }
    let report = d.close();
    assert!(report.drained);
    drop(d);
    let left = live().saturating_sub(before);
    // Printed after measuring: the harness captures output in a buffer on the heap.
    println!(
        "before build {before} B, built {baseline} B; per round, peak {peaks:?} B and left \
         {after:?} B above built; after close and drop, {left} B above before"
    );
    assert!(
        peaks[ROUNDS - 1] <= peaks[0] + PLATEAU_MARGIN,
        "the heap's peak grew from {} to {} bytes over {ROUNDS} rounds of {keys} keys",
        peaks[0],
        peaks[ROUNDS - 1]
    );
    assert!(
        after[ROUNDS - 1] <= after[0] + PLATEAU_MARGIN,
        "the heap left after a round grew from {} to {} bytes over {ROUNDS} rounds",
        after[0],
        after[ROUNDS - 1]
    );
    assert!(
        left <= BASELINE_MARGIN,
        "{left} bytes still allocated after close and drop ({before} before the build)"
    );
}
