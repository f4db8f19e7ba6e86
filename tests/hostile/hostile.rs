//! Keys and jobs whose trait methods panic on a schedule.
//!
//! A [`Fuse`] numbers the calls of the methods it watches, across every value that shares it
//! and every thread; armed, it panics in one chosen call (or in every call, for the tests of a
//! key that always panics). It never panics in a thread that is already unwinding: a second
//! panic there would abort the process whatever the library does, so a schedule triggers at
//! most one panic at a time.
//!
//! A [`Key`]'s hash depends only on its id modulo [`HASH_CLASSES`], so keys collide on purpose
//! (and a map must compare them with `Eq`), while the hash stays consistent with `Eq` whenever
//! it does not panic.

use crate::lock;
use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::SeqCst},
        Arc, Mutex,
    },
};

/// How the message of every deliberate panic of a fuse begins.
pub const PANIC_PREFIX: &str = "hostile ";

/// Keys whose ids are equal modulo this hash alike.
pub const HASH_CLASSES: u64 = 4;

/// A method of user code that the library calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Hash,
    Eq,
    Clone,
    Drop,
    Debug,
    /// A [`Task`]'s `Drop`.
    TaskDrop,
}

impl Call {
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Every call a fuse can watch.
pub const ANY_CALL: u8 = (1 << 6) - 1;

/// The trigger of a disarmed fuse.
const NEVER: u64 = u64::MAX;
/// The trigger of a fuse that panics in every call it watches.
const ALWAYS: u64 = u64::MAX - 1;

/// A call that panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub call: Call,
    /// The key's id (a task's key id for [`Call::TaskDrop`]).
    pub id: u64,
    pub thread: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct Fuse {
    /// Calls watched while armed, numbered from the fuse's creation.
    calls: AtomicU64,
    /// The number of the call that panics, or [`NEVER`] or [`ALWAYS`].
    trigger: AtomicU64,
    /// Which calls are watched: bits of [`Call::bit`].
    mask: AtomicU8,
    fired: Mutex<Vec<Fired>>,
}

impl Fuse {
    /// A disarmed fuse.
    pub fn new() -> Arc<Self> {
        Arc::new(Fuse {
            calls: AtomicU64::new(0),
            trigger: AtomicU64::new(NEVER),
            mask: AtomicU8::new(0),
            fired: Mutex::new(Vec::new()),
        })
    }

    /// Arms the fuse: among the calls in `mask` from now on, call number `after` (0: the next
    /// one) panics, once.
    pub fn arm(&self, mask: u8, after: u64) {
        self.trigger.store(NEVER, SeqCst);
        self.mask.store(mask, SeqCst);
        self.trigger
            .store(self.calls.load(SeqCst).saturating_add(after), SeqCst);
    }

    /// Every call in `mask` panics, until disarmed.
    pub fn always(&self, mask: u8) {
        self.mask.store(mask, SeqCst);
        self.trigger.store(ALWAYS, SeqCst);
    }

    pub fn disarm(&self) {
        self.trigger.store(NEVER, SeqCst);
    }

    /// The calls that panicked so far.
    pub fn fired(&self) -> Vec<Fired> {
        lock(&self.fired).clone()
    }

    /// Called first thing in each watched method: panics if this is the armed call.
    pub fn call(&self, call: Call, id: u64) {
        if self.mask.load(SeqCst) & call.bit() == 0 || std::thread::panicking() {
            return;
        }
        let trigger = self.trigger.load(SeqCst);
        if trigger == NEVER {
            return;
        }
        let n = self.calls.fetch_add(1, SeqCst);
        let fire = trigger == ALWAYS
            || (n == trigger
                && self
                    .trigger
                    .compare_exchange(n, NEVER, SeqCst, SeqCst)
                    .is_ok());
        if fire {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            lock(&self.fired).push(Fired { call, id, thread });
            panic!("{PANIC_PREFIX}{call:?} (key {id})");
        }
    }
}

/// A key whose `Hash`, `Eq`, `Clone`, `Drop` and `Debug` call its fuse first, if it has one.
pub struct Key {
    pub id: u64,
    fuse: Option<Arc<Fuse>>,
}

impl Key {
    /// A key that never panics.
    pub fn plain(id: u64) -> Self {
        Key { id, fuse: None }
    }

    /// A key whose methods panic when `fuse` says so.
    pub fn hostile(id: u64, fuse: &Arc<Fuse>) -> Self {
        Key {
            id,
            fuse: Some(Arc::clone(fuse)),
        }
    }

    fn call(&self, call: Call) {
        if let Some(fuse) = &self.fuse {
            fuse.call(call, self.id);
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.call(Call::Hash);
        (self.id % HASH_CLASSES).hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        // One call per comparison, on whichever side has a fuse.
        match (&self.fuse, &other.fuse) {
            (Some(fuse), _) => fuse.call(Call::Eq, self.id),
            (None, Some(fuse)) => fuse.call(Call::Eq, other.id),
            (None, None) => {}
        }
        self.id == other.id
    }
}

impl Eq for Key {}

impl Clone for Key {
    fn clone(&self) -> Self {
        self.call(Call::Clone);
        Key {
            id: self.id,
            fuse: self.fuse.clone(),
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.call(Call::Drop);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.call(Call::Debug);
        write!(f, "Key({})", self.id)
    }
}

/// A job whose `Drop` calls its fuse ([`Call::TaskDrop`]).
pub struct Task {
    /// The id of the key it was dispatched on.
    pub key: u64,
    /// Its position among the jobs of the script that made it.
    pub seq: u64,
    fuse: Arc<Fuse>,
}

impl Task {
    pub fn new(key: u64, seq: u64, fuse: &Arc<Fuse>) -> Self {
        Task {
            key,
            seq,
            fuse: Arc::clone(fuse),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.fuse.call(Call::TaskDrop, self.key);
    }
}
