//! The routing table from keys to mailboxes: a `DashMap`, or a plain locked `HashMap` under
//! `cfg(loom)`, where the model checker must see every lock the protocol takes. Under the
//! `shuttle` feature the `DashMap` path runs unchanged on `shuttle_dashmap::DashMap`, which has
//! `DashMap`'s API over one shuttle `RwLock` (read-locked lookups, write-locked entries), so that
//! shuttle sees every lock it takes.
//!
//! The protocol needs exactly four things of it, each a closure run under a shard lock:
//! a read-locked lookup (the dispatch fast path), a write-locked lookup-or-insert (a key's first
//! job), a write-locked conditional remove (eviction), and a write-locked drain (`close_now`).
//! Callers never hold a shard lock across user code or another call on the map.

use std::hash::Hash;

#[cfg(not(any(loom, feature = "shuttle")))]
use dashmap::{mapref::entry::Entry, DashMap};
#[cfg(all(feature = "shuttle", not(loom)))]
use shuttle_dashmap::{DashMap, Entry};

/// See the module docs.
pub(crate) struct KeyMap<K, V> {
    #[cfg(not(loom))]
    map: DashMap<K, V>,
    #[cfg(loom)]
    map: crate::sync::Mutex<std::collections::HashMap<K, V>>,
}

// `Clone`: `shuttle_dashmap` clones keys into its guards; every key type here is `Clone` anyway.
impl<K: Hash + Eq + Clone, V> KeyMap<K, V> {
    pub(crate) fn new() -> Self {
        KeyMap {
            map: Default::default(),
        }
    }

    /// Runs `f` with `key`'s value under the shard's read lock; hands `arg` back if the key is
    /// absent.
    #[cfg_attr(loom, allow(clippy::needless_borrow))] // loom's map hands out plain references
    pub(crate) fn get<T, R>(&self, key: &K, arg: T, f: impl FnOnce(&V, T) -> R) -> Result<R, T> {
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

    /// Runs `f` under the shard's write lock with `key`'s current value, if any. When the key is
    /// absent and `f` returns a value, it is inserted under that same lock. The key is handed
    /// back unless it was inserted.
    pub(crate) fn get_or_insert<T, R>(
        &self,
        key: K,
        arg: T,
        f: impl FnOnce(Option<&V>, &K, T) -> (R, Option<V>),
    ) -> (R, Option<K>) {
        #[cfg(not(loom))]
        match self.map.entry(key) {
            Entry::Occupied(entry) => {
                let (r, none) = f(Some(entry.get()), entry.key(), arg);
                debug_assert!(none.is_none(), "inserting over an existing key");
                (r, Some(entry.into_key()))
            }
            Entry::Vacant(entry) => match f(None, entry.key(), arg) {
                (r, Some(value)) => {
                    entry.insert(value);
                    (r, None)
                }
                (r, None) => (r, Some(entry.into_key())),
            },
        }
        #[cfg(loom)]
        {
            let mut map = crate::sync::lock(&self.map);
            if let Some(value) = map.get(&key) {
                let (r, none) = f(Some(value), &key, arg);
                debug_assert!(none.is_none(), "inserting over an existing key");
                return (r, Some(key));
            }
            match f(None, &key, arg) {
                (r, Some(value)) => {
                    map.insert(key, value);
                    (r, None)
                }
                (r, None) => (r, Some(key)),
            }
        }
    }

    /// Removes `key` if `f` approves its value, under the shard's write lock. The removed value
    /// is dropped after the lock is released.
    pub(crate) fn remove_if(&self, key: &K, f: impl FnOnce(&V) -> bool) -> bool {
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

    /// Removes every entry `f` approves of, one shard at a time under its write lock. `f` must
    /// not call back into the map.
    pub(crate) fn remove_where(&self, mut f: impl FnMut(&V) -> bool) {
        #[cfg(not(loom))]
        self.map.retain(|_, value| !f(value));
        #[cfg(loom)]
        crate::sync::lock(&self.map).retain(|_, value| !f(value));
    }

    pub(crate) fn len(&self) -> usize {
        #[cfg(not(loom))]
        return self.map.len();
        #[cfg(loom)]
        crate::sync::lock(&self.map).len()
    }
}
