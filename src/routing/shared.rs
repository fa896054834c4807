//! A hash map from names that the next snapshot shares with the last one.
//!
//! The map is split into shards, each behind an `Arc`: a copy costs one pointer per shard, and a
//! change copies only the shard it touches. With 10 000 hosts a configuration change copies a
//! few hundred entries instead of the whole table, and freeing the old snapshot frees as little.
//! A lookup hashes the name once: its top bits pick the shard.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Shards per map: a power of two.
const SHARDS: usize = 64;

type Shard<V> = HashTable<(Arc<str>, V)>;

#[derive(Clone, Debug)]
pub struct SharedMap<V> {
    /// Empty until the first insert, then `SHARDS` shards.
    shards: Vec<Arc<Shard<V>>>,
    /// One hash per key picks the shard (top bits) and the slot in it; the seed is random per
    /// map and kept by its copies.
    hasher: RandomState,
    len: usize,
}

impl<V> Default for SharedMap<V> {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            hasher: RandomState::default(),
            len: 0,
        }
    }
}

impl<V: Clone> SharedMap<V> {
    fn locate(&self, key: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one(key);
        ((hash >> (64 - SHARDS.trailing_zeros())) as usize, hash)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let (shard, hash) = self.locate(key);
        let (_, v) = self.shards.get(shard)?.find(hash, |(k, _)| &**k == key)?;
        Some(v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts `value` under `key` (none: removes it); returns what was there.
    pub fn set(&mut self, key: &str, value: Option<V>) -> Option<V> {
        if self.shards.is_empty() {
            // Nothing to remove from an empty map.
            value.as_ref()?;
            self.shards = (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect();
        }
        let (index, hash) = self.locate(key);
        let hasher = self.hasher.clone();
        let shard = Arc::make_mut(&mut self.shards[index]);
        let rehash = |(k, _): &(Arc<str>, V)| hasher.hash_one(&**k);
        match (shard.find_entry(hash, |(k, _)| &**k == key), value) {
            (Ok(entry), Some(v)) => Some(std::mem::replace(&mut entry.into_mut().1, v)),
            (Ok(entry), None) => {
                self.len -= 1;
                Some(entry.remove().0.1)
            }
            (Err(_), Some(v)) => {
                shard.insert_unique(hash, (key.into(), v), rehash);
                self.len += 1;
                None
            }
            (Err(_), None) => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(k, v)| (k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_untouched_shards_and_see_only_their_own_changes() {
        let mut a = SharedMap::default();
        for i in 0..1000 {
            assert_eq!(a.set(&format!("h{i}.test"), Some(i)), None);
        }
        assert_eq!(a.len(), 1000);
        let mut b = a.clone();
        assert_eq!(b.set("h7.test", Some(70)), Some(7));
        assert_eq!(b.set("h8.test", None), Some(8));
        assert_eq!(b.set("new.test", Some(1)), None);
        assert_eq!((a.get("h7.test"), b.get("h7.test")), (Some(&7), Some(&70)));
        assert_eq!((a.get("h8.test"), b.get("h8.test")), (Some(&8), None));
        assert_eq!((a.len(), b.len()), (1000, 1000));
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 3, "{shared} shards shared");
        assert_eq!(b.iter().count(), 1000);
        assert_eq!(SharedMap::<u8>::default().get("x"), None);
    }
}
