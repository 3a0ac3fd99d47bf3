//! A map of bounded size that forgets the least recently used entry: for what the gateway
//! keeps per device id, since device ids come from outside and are unbounded in number.
//! An evicted entry is simply computed again when its key comes back.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; inserting one more evicts the least recently used.
///
/// A use only stamps its entry (one hash lookup); the queue of keys by use is brought up
/// to date when an entry is to be evicted: the oldest queued entry that was used since it
/// was queued goes back in at its last use, until one was not (it is then the least
/// recently used of all, since every entry was last used at or after it was queued).
#[derive(Debug)]
pub struct LruCache<K, V> {
    capacity: usize,
    /// Each entry.
    entries: HashMap<K, Entry<V>>,
    /// When each key was queued → key, oldest first: one per entry.
    by_use: BTreeMap<u64, K>,
    clock: u64,
}

/// A value with its last use and the stamp it is queued under.
#[derive(Debug)]
struct Entry<V> {
    value: V,
    used: u64,
    queued: u64,
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
        let entry = self.entries.get_mut(key)?;
        entry.used = now;
        Some(&entry.value)
    }

    /// Whether `key` is held (without marking it used).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Inserts or replaces `key`, marked as just used, evicting the least recently used
    /// entry when the cache is full.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(old) = self.entries.remove(&key) {
            self.by_use.remove(&old.queued);
        } else if self.entries.len() >= self.capacity {
            self.evict();
        }
        let now = self.tick();
        self.by_use.insert(now, key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                used: now,
                queued: now,
            },
        );
    }

    /// Removes the least recently used entry.
    fn evict(&mut self) {
        while let Some((queued, key)) = self.by_use.pop_first() {
            match self.entries.get_mut(&key) {
                Some(entry) if entry.used != queued => {
                    // Used since it was queued: back in the queue at its last use.
                    entry.queued = entry.used;
                    self.by_use.insert(entry.used, key);
                }
                Some(_) => {
                    self.entries.remove(&key);
                    return;
                }
                // Cannot happen (one queued stamp per entry); the next one is evicted.
                None => {}
            }
        }
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
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.queued);
        Some(entry.value)
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

    proptest::proptest! {
        /// Any mix of uses, inserts and removals keeps exactly the entries a plain LRU
        /// list keeps, with one queued stamp per entry.
        #[test]
        fn it_keeps_what_a_plain_lru_list_keeps(
            capacity in 1usize..5,
            ops in proptest::collection::vec((0u8..3, 0u8..8), 0..200),
        ) {
            let mut cache = LruCache::new(capacity);
            // Keys, least recently used first.
            let mut model: Vec<(u8, u32)> = Vec::new();
            for (i, (op, key)) in ops.into_iter().enumerate() {
                let value = i as u32;
                match op {
                    0 => {
                        let got = cache.get(&key).copied();
                        let at = model.iter().position(|(k, _)| *k == key);
                        proptest::prop_assert_eq!(got, at.map(|at| model[at].1));
                        if let Some(at) = at {
                            let e = model.remove(at);
                            model.push(e);
                        }
                    }
                    1 => {
                        cache.insert(key, value);
                        if let Some(at) = model.iter().position(|(k, _)| *k == key) {
                            model.remove(at);
                        } else if model.len() >= capacity {
                            model.remove(0);
                        }
                        model.push((key, value));
                    }
                    _ => {
                        let removed = cache.remove(&key);
                        let at = model.iter().position(|(k, _)| *k == key);
                        proptest::prop_assert_eq!(removed, at.map(|at| model.remove(at).1));
                    }
                }
                let mut held: Vec<(u8, u32)> =
                    cache.entries.iter().map(|(k, e)| (*k, e.value)).collect();
                held.sort_unstable();
                let mut expected = model.clone();
                expected.sort_unstable();
                proptest::prop_assert_eq!(held, expected);
                proptest::prop_assert_eq!(cache.by_use.len(), cache.entries.len());
            }
        }
    }
}
