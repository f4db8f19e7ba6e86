//! The routing table from keys to mailboxes: a `DashMap`, or a plain locked `HashMap` under
//! `cfg(loom)`, where the model checker must see every lock the protocol takes. Under
//! `cfg(shuttle)` the `DashMap` path runs unchanged on `shuttle_dashmap::DashMap`, which has
//! `DashMap`'s API over one shuttle `RwLock` (read-locked lookups, write-locked entries), so that
//! shuttle sees every lock it takes.
//!
//! # Hashed once, stored once
//!
//! A key is hashed once, by its producer ([`KeyMap::hash`]), and its hash is stored beside it
//! in its mailbox. The map hashes an entry by reading that stored hash, so it never calls the
//! key's `Hash` again, not even when a table grows: a `Hash` that panics (or, worse, answers
//! differently) while a table is rehashed in place would make the table drop entries of other,
//! live keys, and a later dispatch would then create a second mailbox beside a running one.
//!
//! The key itself lives once, in its mailbox: an entry is the mailbox twice (as the map's key
//! and as its value), and a lookup borrows the entry as a [`Lookup`], a hash and a key
//! reference. No key is cloned to route a job, and no key is dropped under a shard lock:
//! entries removed by [`KeyMap::remove_where`] are handed back to be dropped after it.
//!
//! The protocol needs exactly four things of the map, each a closure run under a shard lock:
//! a read-locked lookup (the dispatch fast path), a write-locked insert unless present (a key's
//! first job), a write-locked conditional remove (eviction), and a write-locked drain (the
//! shutdown). The closures run no user code; the map itself calls only the key's `Eq`, which
//! may panic: the shard's guard then unlocks as the panic unwinds, with nothing changed.

use std::{
    borrow::Borrow,
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash, Hasher},
};

#[cfg(not(any(loom, shuttle)))]
use dashmap::{mapref::entry::Entry, DashMap};
#[cfg(all(shuttle, not(loom)))]
use shuttle_dashmap::{DashMap, Entry};

/// A value the map can file under its key: it knows its key and the key's stored hash.
pub(crate) trait Keyed {
    type Key;

    /// The key's hash, from [`KeyMap::hash`].
    fn stored_hash(&self) -> u64;

    fn key(&self) -> &Self::Key;
}

impl<T: Keyed + ?Sized> Keyed for std::sync::Arc<T> {
    type Key = T::Key;

    fn stored_hash(&self) -> u64 {
        (**self).stored_hash()
    }

    fn key(&self) -> &T::Key {
        (**self).key()
    }
}

/// A key and its hash, for a lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed<'a, K> {
    pub(crate) hash: u64,
    pub(crate) key: &'a K,
}

/// What an entry is borrowed as for a lookup: a hash and a key.
trait Lookup<K> {
    fn hash(&self) -> u64;
    fn key(&self) -> &K;
}

impl<K> Lookup<K> for Hashed<'_, K> {
    fn hash(&self) -> u64 {
        self.hash
    }

    fn key(&self) -> &K {
        self.key
    }
}

impl<K: Eq> PartialEq for dyn Lookup<K> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<K: Eq> Eq for dyn Lookup<K> + '_ {}

impl<K> Hash for dyn Lookup<K> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(Lookup::hash(self));
    }
}

/// The map's key: the value itself, hashed by its stored hash and compared by its key.
#[derive(Clone)] // `shuttle_dashmap` clones keys into its guards
struct Slot<V>(V);

impl<V: Keyed> Lookup<V::Key> for Slot<V> {
    fn hash(&self) -> u64 {
        self.0.stored_hash()
    }

    fn key(&self) -> &V::Key {
        self.0.key()
    }
}

impl<'a, V: Keyed + 'a> Borrow<dyn Lookup<V::Key> + 'a> for Slot<V> {
    fn borrow(&self) -> &(dyn Lookup<V::Key> + 'a) {
        self
    }
}

impl<V: Keyed> PartialEq for Slot<V>
where
    V::Key: Eq,
{
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl<V: Keyed> Eq for Slot<V> where V::Key: Eq {}

impl<V: Keyed> Hash for Slot<V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.stored_hash());
    }
}

/// The map's hasher: passes the stored hash through.
#[cfg_attr(all(shuttle, not(loom)), allow(dead_code))] // its map has no hasher
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = Stored;

    fn build_hasher(&self) -> Stored {
        Stored(0)
    }
}

#[cfg_attr(all(shuttle, not(loom)), allow(dead_code))] // its map has no hasher
struct Stored(u64);

impl Hasher for Stored {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Unused: entries write their hash with `write_u64`.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

#[cfg(not(any(loom, shuttle)))]
type Map<V> = DashMap<Slot<V>, V, PassThrough>;
// Hashed by its own hasher, from the stored hash all the same.
#[cfg(all(shuttle, not(loom)))]
type Map<V> = DashMap<Slot<V>, V>;

/// See the module docs.
pub(crate) struct KeyMap<V: Keyed> {
    hasher: RandomState,
    #[cfg(not(loom))]
    map: Map<V>,
    #[cfg(loom)]
    map: crate::sync::Mutex<std::collections::HashMap<Slot<V>, V, PassThrough>>,
}

impl<V> KeyMap<V>
where
    V: Keyed + Clone,
    V::Key: Hash + Eq,
{
    pub(crate) fn new() -> Self {
        KeyMap {
            hasher: RandomState::new(),
            map: Default::default(),
        }
    }

    /// The key's hash: the one call of its `Hash` for a dispatch.
    pub(crate) fn hash(&self, key: &V::Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Runs `f` with `key`'s value under the shard's read lock; hands `arg` back if the key is
    /// absent.
    #[cfg_attr(loom, allow(clippy::needless_borrow))] // loom's map hands out plain references
    pub(crate) fn get<T, R>(
        &self,
        key: Hashed<'_, V::Key>,
        arg: T,
        f: impl FnOnce(&V, T) -> R,
    ) -> Result<R, T> {
        let key: &dyn Lookup<V::Key> = &key;
        #[cfg(not(loom))]
        let value = self.map.get(key);
        #[cfg(loom)]
        let map = crate::sync::lock(&self.map);
        #[cfg(loom)]
        let value = map.get(key);
        match value {
            Some(value) => Ok(f(&value, arg)),
            None => Err(arg),
        }
    }

    /// Under the shard's write lock, runs `f` with the value already filed under `value`'s key,
    /// if any; when there is none and `f` says so, files `value`. Hands `value` back unless it
    /// was filed.
    pub(crate) fn insert_unless_present<R>(
        &self,
        value: V,
        f: impl FnOnce(Option<&V>) -> (R, bool),
    ) -> (R, Option<V>) {
        #[cfg(not(loom))]
        match self.map.entry(Slot(value.clone())) {
            Entry::Occupied(entry) => {
                let (r, _) = f(Some(entry.get()));
                (r, Some(value))
            }
            Entry::Vacant(entry) => match f(None) {
                (r, true) => {
                    entry.insert(value);
                    (r, None)
                }
                (r, false) => (r, Some(value)),
            },
        }
        #[cfg(loom)]
        {
            let mut map = crate::sync::lock(&self.map);
            let slot = Slot(value.clone());
            if let Some(existing) = map.get(&slot) {
                let (r, _) = f(Some(existing));
                return (r, Some(value));
            }
            match f(None) {
                (r, true) => {
                    map.insert(slot, value);
                    (r, None)
                }
                (r, false) => (r, Some(value)),
            }
        }
    }

    /// Removes `key` if `f` approves its value, under the shard's write lock. The removed entry
    /// is dropped after the lock is released.
    pub(crate) fn remove_if(&self, key: Hashed<'_, V::Key>, f: impl FnOnce(&V) -> bool) -> bool {
        let key: &dyn Lookup<V::Key> = &key;
        #[cfg(not(loom))]
        return self.map.remove_if(key, |_, value| f(value)).is_some();
        #[cfg(loom)]
        {
            let mut map = crate::sync::lock(&self.map);
            let removed = match map.get(key) {
                Some(value) if f(value) => map.remove(key),
                _ => None,
            };
            drop(map);
            removed.is_some()
        }
    }

    /// Removes every entry `f` approves of, one shard at a time under its write lock, and
    /// returns them, to be dropped outside the locks. `f` must not call back into the map.
    pub(crate) fn remove_where(&self, mut f: impl FnMut(&V) -> bool) -> Vec<V> {
        let mut removed = Vec::new();
        let mut keep = |value: &mut V| {
            if f(value) {
                removed.push(value.clone());
                false
            } else {
                true
            }
        };
        #[cfg(not(loom))]
        self.map.retain(|_, value| keep(value));
        #[cfg(loom)]
        crate::sync::lock(&self.map).retain(|_, value| keep(value));
        removed
    }

    /// Runs `f` on every value, one shard at a time under its read lock.
    #[cfg_attr(loom, allow(unused_mut))] // loom's map hands `f` to `for_each` as it is
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        #[cfg(not(loom))]
        self.map.iter().for_each(|entry| f(entry.value()));
        #[cfg(loom)]
        crate::sync::lock(&self.map).values().for_each(f);
    }

    pub(crate) fn len(&self) -> usize {
        #[cfg(not(loom))]
        return self.map.len();
        #[cfg(loom)]
        crate::sync::lock(&self.map).len()
    }
}
