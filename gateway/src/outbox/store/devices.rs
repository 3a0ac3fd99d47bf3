//! Device resources: which ones are stored, as far as this process knows (a bounded
//! cache), and the removal of those no row and no dead letter references any more.
//!
//! Every append carries its Device resource; the store seals and writes it only when the
//! cache does not hold its id with the same text (a fingerprint of it: a device that
//! reports a new firmware revision gets a new resource under the same id), with
//! `INSERT OR REPLACE`, so writing it again is harmless. The cache holds at most
//! [`KNOWN_DEVICES`] ids, the least recently used forgotten, each with the key id and
//! nonce of the sealing stored, as this process wrote or read it. This process is the
//! only writer of the `devices` table once the outbox is open (re-sealing runs before),
//! so the cache is right until a rollback or a removal, which clear it; a fetch uses it
//! to hand over the delivery side's opened resource for that same sealing without
//! reading the row.
//!
//! A Device row is needed while a row or a dead letter references it (ingest dead
//! letters reference none). Once more than [`KEPT_DEVICES`] Device rows are stored, a
//! transaction that deleted rows removes those no longer needed when it leaves `rows`
//! empty, and otherwise at most once per [`PRUNE_INTERVAL`] (the statement reads `rows`
//! once), then forgets the cache, so the next append of each device stores its resource
//! again. Hence the `devices` table holds the Devices of queued rows and dead letters,
//! plus at most [`KEPT_DEVICES`] others, or those of at most [`PRUNE_INTERVAL`] of
//! traffic. A home kit's few devices stay stored: a reading a minute does not write and
//! delete its Device each time (that cost two page writes per reading on the SD card).

use std::time::{Duration, Instant};

use super::{sql, OutboxError, Store};
use crate::cache::LruCache;
use crate::outbox::seal::Sealing;

/// The most Device ids the store remembers having written (about 100 bytes each).
pub const KNOWN_DEVICES: usize = 4096;

/// The longest time between two removals of unneeded Device rows while rows are queued.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// How many Device rows may stay stored without a row or dead letter needing them: a
/// home kit's devices, but not a flood of ever-new MQTT device ids.
pub const KEPT_DEVICES: usize = 64;

/// What is known of a stored Device: its sealing, and the fingerprint of its text when
/// this process wrote it.
#[derive(Debug, Clone, Copy)]
struct Known {
    sealing: Sealing,
    fingerprint: Option<u64>,
}

/// Device ids stored (written or read by this process), with their sealing, and when
/// unneeded ones were last removed.
#[derive(Debug)]
pub(super) struct KnownDevices {
    ids: LruCache<String, Known>,
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

    /// The sealing stored for `id`, if known.
    pub(super) fn sealing(&mut self, id: &str) -> Option<Sealing> {
        self.ids.get(id).map(|k| k.sealing)
    }

    /// Whether `id` is known to be stored with the text of `fingerprint` (a Device read
    /// back, not written, is not known by its text).
    pub(super) fn holds_text(&mut self, id: &str, fingerprint: u64) -> bool {
        self.ids
            .get(id)
            .is_some_and(|k| k.fingerprint == Some(fingerprint))
    }

    /// Remembers that `id` was read back with `sealing`: what is known of its text stays
    /// when that is the sealing this process wrote (else writing the Device again on the
    /// next append would give it a new sealing, to be read back again, and so on).
    pub(super) fn read_back(&mut self, id: &str, sealing: Sealing) {
        if self.sealing(id) != Some(sealing) {
            self.insert(id.to_string(), sealing, None);
        }
    }

    /// Remembers that `id` is stored with `sealing` (and the text of `fingerprint`).
    pub(super) fn insert(&mut self, id: String, sealing: Sealing, fingerprint: Option<u64>) {
        self.ids.insert(
            id,
            Known {
                sealing,
                fingerprint,
            },
        );
    }

    /// Forgets every id (after a rollback or a removal).
    pub(super) fn clear(&mut self) {
        self.ids.clear();
    }
}

impl Store {
    /// Inside a transaction that deleted rows: removes the Device rows no row and no dead
    /// letter references, when more than [`KEPT_DEVICES`] are stored and `rows` is empty
    /// or [`PRUNE_INTERVAL`] has passed since the last removal. Returns how many were
    /// removed.
    pub fn prune_devices(&mut self) -> Result<usize, OutboxError> {
        self.prune_devices_beyond(KEPT_DEVICES)
    }

    /// [`Store::prune_devices`] with `kept` in place of [`KEPT_DEVICES`].
    fn prune_devices_beyond(&mut self, kept: usize) -> Result<usize, OutboxError> {
        let p = self.path.clone();
        let stored: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .map_err(sql(&p))?;
        if usize::try_from(stored).unwrap_or(usize::MAX) <= kept {
            return Ok(0);
        }
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

#[cfg(test)]
mod tests {
    use super::super::{StoredDevice, StoredRow};
    use super::*;
    use crate::outbox::seal::Keyring;
    use crate::outbox::{device_aad, row_aad};

    fn device_rows(store: &Store) -> Vec<String> {
        let mut s = store
            .conn
            .prepare("SELECT id FROM devices ORDER BY id")
            .unwrap();
        let ids = s.query_map([], |r| r.get(0)).unwrap();
        ids.map(Result::unwrap).collect()
    }

    /// Appends one row of device `dev` (with its Device, when the store does not know it).
    fn append(store: &mut Store, ring: &Keyring, dev: &str) -> (i64, usize) {
        if !store.has_device(dev, 0) {
            let sealed = ring.seal(b"{}", &device_aad(dev)).unwrap();
            store
                .put_device(
                    &StoredDevice {
                        id: dev.into(),
                        sealed,
                    },
                    Some(0),
                )
                .unwrap();
        }
        let seq = store.next_seq();
        let sealed = ring.seal(b"obs", &row_aad(seq, dev)).unwrap();
        let len = sealed.ciphertext.len();
        store
            .insert(&StoredRow {
                seq,
                created_ms: 0,
                device_id: dev.into(),
                sealed,
            })
            .unwrap();
        (seq, len)
    }

    #[test]
    fn a_home_kits_few_devices_stay_stored_between_readings() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&[3; 32]);
        let mut store = Store::open(&dir.path().join("o.db"), &ring, &["u".into()]).unwrap();
        store.begin().unwrap();
        let a = append(&mut store, &ring, "dev-a");
        store.commit().unwrap();
        store.begin().unwrap();
        store.delivered("u", &[a]).unwrap();
        assert_eq!(store.prune_devices().unwrap(), 0);
        store.commit().unwrap();
        assert_eq!(device_rows(&store), ["dev-a"]);
    }

    #[test]
    fn devices_no_row_or_dead_letter_needs_are_removed_and_stored_again_when_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&[3; 32]);
        let mut store = Store::open(&dir.path().join("o.db"), &ring, &["u".into()]).unwrap();
        store.begin().unwrap();
        let a = append(&mut store, &ring, "dev-a");
        let b = append(&mut store, &ring, "dev-b");
        let c = append(&mut store, &ring, "dev-c");
        store.commit().unwrap();

        // dev-a delivered, dev-b dead-lettered, dev-c still queued: the first removal is
        // due at once, and takes only dev-a.
        store.begin().unwrap();
        store.delivered("u", &[a]).unwrap();
        let reason = ring
            .seal(b"rejected", &crate::outbox::reason_aad("u", b.0))
            .unwrap();
        store.dead_letter(&ring, "u", b.0, b.1, &reason).unwrap();
        assert_eq!(store.prune_devices_beyond(0).unwrap(), 1);
        store.commit().unwrap();
        assert_eq!(device_rows(&store), ["dev-b", "dev-c"]);

        // dev-a comes back: its Device is stored again (the cache was forgotten).
        store.begin().unwrap();
        let a2 = append(&mut store, &ring, "dev-a");
        store.commit().unwrap();
        assert_eq!(device_rows(&store), ["dev-a", "dev-b", "dev-c"]);

        // Delivered again while dev-c is queued, within the interval: kept for now.
        store.begin().unwrap();
        store.delivered("u", &[a2]).unwrap();
        assert_eq!(store.prune_devices_beyond(0).unwrap(), 0);
        store.commit().unwrap();

        // The queue empties: every Device but the dead letter's goes at once.
        store.begin().unwrap();
        store.delivered("u", &[c]).unwrap();
        assert_eq!(store.prune_devices_beyond(0).unwrap(), 2);
        store.commit().unwrap();
        assert_eq!(device_rows(&store), ["dev-b"]);
    }

    #[test]
    fn the_known_device_ids_stay_bounded() {
        let mut known = KnownDevices::new();
        for i in 0..3 * KNOWN_DEVICES {
            let sealing = Sealing {
                key_id: 1,
                nonce: [0; 12],
            };
            known.insert(format!("device-{i}"), sealing, None);
        }
        assert_eq!(known.ids.len(), KNOWN_DEVICES);
        assert!(known
            .sealing(&format!("device-{}", 3 * KNOWN_DEVICES - 1))
            .is_some());
        assert!(known.sealing("device-0").is_none());
    }
}
