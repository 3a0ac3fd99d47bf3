//! A map of bounded size that forgets the least recently used entry: for what the gateway
//! keeps per device id, since device ids come from outside and are unbounded in number.
//! An evicted entry is simply computed again when its key comes back.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; inserting one more evicts the least recently used.
#[derive(Debug)]
pub struct LruCache<K, V> {
    capacity: usize,
    /// Each entry with its last use.
    entries: HashMap<K, (V, u64)>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, K>,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> LruCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// The value of `key`, marked as just used.
    pub fn get<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let now = self.tick();
        let (_, used) = self.entries.get_mut(key)?;
        if let Some(k) = self.by_use.remove(used) {
            self.by_use.insert(now, k);
        }
        *used = now;
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Whether `key` is held (without marking it used).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Inserts or replaces `key`, marked as just used, evicting the least recently used
    /// entry when the cache is full.
    pub fn insert(&mut self, key: K, value: V) {
        let now = self.tick();
        if let Some((_, used)) = self.entries.remove(&key) {
            self.by_use.remove(&used);
        } else if self.entries.len() >= self.capacity {
            if let Some((_, oldest)) = self.by_use.pop_first() {
                self.entries.remove(&oldest);
            }
        }
        self.by_use.insert(now, key.clone());
        self.entries.insert(key, (value, now));
    }

    /// The value of `key`, inserting `make()` first when it is not held.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &V {
        if !self.entries.contains_key(&key) {
            self.insert(key.clone(), make());
        }
        // Present now: insert never evicts the entry it has just inserted.
        match self.get(&key) {
            Some(v) => v,
            None => unreachable!("an entry just inserted is held"),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, used) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        Some(v)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_use.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_is_evicted_and_the_size_stays_bounded() {
        let mut c = LruCache::new(3);
        for k in ["a", "b", "c"] {
            c.insert(k, k.to_uppercase());
        }
        assert_eq!(c.get(&"a").map(String::as_str), Some("A"));
        c.insert("d", "D".into());
        assert!(!c.contains(&"b"), "b was the least recently used");
        assert!(c.contains(&"a") && c.contains(&"c") && c.contains(&"d"));
        for i in 0..10_000 {
            c.insert(if i % 2 == 0 { "x" } else { "y" }, i.to_string());
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.by_use.len(), 3);
    }

    #[test]
    fn get_or_insert_computes_once_until_evicted() {
        let mut c = LruCache::new(2);
        let mut made = 0;
        for k in [1, 1, 2, 1, 3, 2, 1] {
            c.get_or_insert_with(k, || {
                made += 1;
                k * 10
            });
        }
        // 1, 2 made; 3 evicts 2 (1 was used after it); 2 again evicts 1; 1 again.
        assert_eq!(made, 5);
        assert_eq!(c.len(), 2);
        assert_eq!(c.remove(&1), Some(10));
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }
}
