//! Device resources: which ones this process has stored (a bounded cache), and the
//! removal of those no row and no dead letter references any more.
//!
//! Every append carries its sealed Device resource; the store writes it only when the
//! cache does not hold its id (`INSERT OR REPLACE`, so writing it again is harmless). The
//! cache holds at most [`KNOWN_DEVICES`] ids, the least recently used forgotten.
//!
//! A Device row is needed while a row or a dead letter references it (ingest dead
//! letters reference none). A transaction that deleted rows removes the Device rows no
//! longer needed when it leaves `rows` empty, and otherwise at most once per
//! [`PRUNE_INTERVAL`] (the statement reads `rows` once), then forgets the cache, so the
//! next append of each device stores its resource again. Hence the `devices` table holds
//! the Devices of queued rows and dead letters, plus those of at most
//! [`PRUNE_INTERVAL`] of traffic, and none beyond that once the queue is empty.

use std::time::{Duration, Instant};

use super::{sql, OutboxError, Store};
use crate::cache::LruCache;

/// The most Device ids the store remembers having written (about 100 bytes each).
pub const KNOWN_DEVICES: usize = 4096;

/// The longest time between two removals of unneeded Device rows while rows are queued.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Device ids written by this process, and when unneeded ones were last removed.
#[derive(Debug)]
pub(super) struct KnownDevices {
    ids: LruCache<String, ()>,
    pruned_at: Option<Instant>,
}

impl KnownDevices {
    /// Nothing known yet.
    pub(super) fn new() -> Self {
        Self {
            ids: LruCache::new(KNOWN_DEVICES),
            pruned_at: None,
        }
    }

    /// Whether `id` was written by this process (and is not forgotten).
    pub(super) fn contains(&mut self, id: &str) -> bool {
        self.ids.get(id).is_some()
    }

    /// Remembers that `id` is stored.
    pub(super) fn insert(&mut self, id: String) {
        self.ids.insert(id, ());
    }

    /// Forgets every id (after a rollback or a removal).
    pub(super) fn clear(&mut self) {
        self.ids.clear();
    }
}

impl Store {
    /// Inside a transaction that deleted rows: removes the Device rows no row and no dead
    /// letter references, when `rows` is empty or [`PRUNE_INTERVAL`] has passed since the
    /// last removal. Returns how many were removed.
    pub fn prune_devices(&mut self) -> Result<usize, OutboxError> {
        let p = self.path.clone();
        let due = self
            .known_devices
            .pruned_at
            .is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL);
        if !due {
            let queued: bool = self
                .conn
                .query_row("SELECT EXISTS (SELECT 1 FROM rows)", [], |r| r.get(0))
                .map_err(sql(&p))?;
            if queued {
                return Ok(0);
            }
        }
        let removed = self
            .conn
            .prepare_cached(
                "DELETE FROM devices WHERE id NOT IN (SELECT device_id FROM rows) \
                 AND id NOT IN (SELECT device_id FROM dead_letters)",
            )
            .and_then(|mut s| s.execute([]))
            .map_err(sql(&p))?;
        self.known_devices.pruned_at = Some(Instant::now());
        if removed > 0 {
            self.known_devices.clear();
        }
        Ok(removed)
    }
}
