//! Device resources opened for earlier batches, so that a batch does not decrypt,
//! decompress and check again the Devices it shares with the batch before.
//!
//! A batch carries the sealed Device resource of every device its rows reference. Under
//! load from many devices that is one decryption and one JSON check per device per batch,
//! for resources that hardly ever change. Here each opened resource is kept with the key
//! id and nonce it was sealed with: the same id sealed with the same key and nonce is the
//! same ciphertext (the nonce is random and never reused, and the id is in the associated
//! data), so it opens to the same text. A Device written again (another sealing, a new
//! key) has another nonce and is opened again. At most [`OPENED_DEVICES`] are kept, the
//! least recently used forgotten.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::value::RawValue;

use super::payload::{device_aad, unpack};
use super::seal::{Keyring, Sealed, Sealing};
use crate::cache::LruCache;

/// The most opened Device resources kept (a Device's JSON is a few hundred bytes).
pub const OPENED_DEVICES: usize = 1024;

/// A Device resource's JSON text, shared by the batches that reference it.
pub type DeviceJson = Arc<RawValue>;

/// One opened resource, with the sealing it came from.
#[derive(Debug)]
struct Opened {
    sealing: Sealing,
    json: DeviceJson,
}

/// The opened Device resources, shared by the clones of an outbox handle.
#[derive(Debug)]
pub(super) struct OpenedDevices {
    cache: Mutex<LruCache<String, Opened>>,
}

impl OpenedDevices {
    /// None opened yet.
    pub(super) fn new() -> Self {
        Self {
            cache: Mutex::new(LruCache::new(OPENED_DEVICES)),
        }
    }

    /// Device `id`'s resource from `sealed`: the one opened before when it is the same
    /// sealing, else opened now. `None` when it cannot be opened (a wrong key, damage,
    /// not JSON); the rows of that device then go without their Device.
    pub(super) fn open(&self, keyring: &Keyring, id: &str, sealed: &Sealed) -> Option<DeviceJson> {
        let sealing = Sealing::of(sealed);
        if let Some(json) = self.get(id, &sealing) {
            return Some(json);
        }
        let plain = keyring.open(sealed, &device_aad(id)).ok()?;
        let text = String::from_utf8(unpack(&plain).ok()?).ok()?;
        let json: DeviceJson = Arc::from(RawValue::from_string(text).ok()?);
        self.lock().insert(
            id.to_string(),
            Opened {
                sealing,
                json: json.clone(),
            },
        );
        Some(json)
    }

    /// Device `id`'s resource opened from `sealing`, if kept.
    pub(super) fn get(&self, id: &str, sealing: &Sealing) -> Option<DeviceJson> {
        let mut cache = self.lock();
        let o = cache.get(id)?;
        (o.sealing == *sealing).then(|| o.json.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Opened>> {
        // The cache holds no invariant a panic could break halfway.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::payload::{pack, row_aad};
    use crate::outbox::store::{FetchedDevice, Store, StoredDevice, StoredRow};

    fn sealed(ring: &Keyring, id: &str, json: &str) -> Sealed {
        ring.seal(&pack(json.as_bytes()), &device_aad(id)).unwrap()
    }

    #[test]
    fn the_same_sealing_is_opened_once_and_a_new_one_again() {
        let ring = Keyring::new(&[3; 32]);
        let other_key = Keyring::new(&[4; 32]);
        let opened = OpenedDevices::new();
        let first = sealed(&ring, "dev-a", r#"{"resourceType":"Device","id":"dev-a"}"#);
        let json = opened.open(&ring, "dev-a", &first).unwrap();
        assert_eq!(json.get(), r#"{"resourceType":"Device","id":"dev-a"}"#);
        // Not decrypted again: a keyring without the key still gets it.
        let again = opened.open(&other_key, "dev-a", &first).unwrap();
        assert!(Arc::ptr_eq(&json, &again));
        // The Device written again (another nonce): opened, with its new text.
        let rewritten = sealed(
            &ring,
            "dev-a",
            r#"{"resourceType":"Device","id":"dev-a","x":1}"#,
        );
        assert_eq!(
            opened.open(&ring, "dev-a", &rewritten).unwrap().get(),
            r#"{"resourceType":"Device","id":"dev-a","x":1}"#
        );
        assert!(opened.open(&other_key, "dev-a", &first).is_none());
        // dev-a's sealing presented as dev-b's does not open: the id is in the associated
        // data.
        assert!(opened.open(&ring, "dev-b", &rewritten).is_none());
    }

    #[test]
    fn what_cannot_be_opened_is_not_kept() {
        let ring = Keyring::new(&[3; 32]);
        let opened = OpenedDevices::new();
        let not_json = sealed(&ring, "dev-a", "{not json");
        assert!(opened.open(&ring, "dev-a", &not_json).is_none());
        assert!(opened.lock().is_empty());
    }

    #[test]
    fn at_most_opened_devices_are_kept() {
        let ring = Keyring::new(&[3; 32]);
        let opened = OpenedDevices::new();
        for i in 0..OPENED_DEVICES + 10 {
            let id = format!("dev-{i}");
            let s = sealed(&ring, &id, "{}");
            assert!(opened.open(&ring, &id, &s).is_some());
        }
        assert_eq!(opened.lock().len(), OPENED_DEVICES);
    }

    /// What a fetch of `store` hands over for dev-1: `Ok` opened, `Err` sealed.
    fn fetched_device(store: &mut Store) -> Result<DeviceJson, Sealed> {
        let (_, _, devices) = store.fetch("u", 0, 10, None).unwrap();
        match devices.into_iter().next().unwrap() {
            FetchedDevice::Opened(id, json) => {
                assert_eq!(id, "dev-1");
                Ok(json)
            }
            FetchedDevice::Sealed(d) => Err(d.sealed),
        }
    }

    #[test]
    fn a_fetch_hands_over_the_opened_device_of_the_sealing_stored_now() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&[3; 32]);
        let opened = Arc::new(OpenedDevices::new());
        let mut store = Store::open(&dir.path().join("o.db"), &ring, &["u".into()]).unwrap();
        store.share_opened(opened.clone());
        let put = |store: &mut Store, json: &str| {
            let sealed = sealed(&ring, "dev-1", json);
            store
                .put_device(
                    &StoredDevice {
                        id: "dev-1".into(),
                        sealed,
                    },
                    None,
                )
                .unwrap();
        };
        store.begin().unwrap();
        put(&mut store, r#"{"v":1}"#);
        let seq = store.next_seq();
        let row = ring.seal(b"x", &row_aad(seq, "dev-1")).unwrap();
        store
            .insert(&StoredRow {
                seq,
                created_ms: 0,
                device_id: "dev-1".into(),
                sealed: row,
            })
            .unwrap();
        store.commit().unwrap();
        // Not opened yet: read from the database.
        let first = fetched_device(&mut store).unwrap_err();
        let v1 = opened.open(&ring, "dev-1", &first).unwrap();
        // Opened: handed over without a read.
        assert!(Arc::ptr_eq(&fetched_device(&mut store).unwrap(), &v1));
        // Written again: its new sealing is read and opened.
        store.begin().unwrap();
        put(&mut store, r#"{"v":2}"#);
        store.commit().unwrap();
        let second = fetched_device(&mut store).unwrap_err();
        assert_ne!(second.nonce, first.nonce);
        assert_eq!(
            opened.open(&ring, "dev-1", &second).unwrap().get(),
            r#"{"v":2}"#
        );
        assert_eq!(fetched_device(&mut store).unwrap().get(), r#"{"v":2}"#);
        // A write rolled back: the store forgets what it knew and reads the row again.
        store.begin().unwrap();
        put(&mut store, r#"{"v":3}"#);
        store.rollback();
        let after = fetched_device(&mut store).unwrap_err();
        assert_eq!(after.nonce, second.nonce);
        assert_eq!(fetched_device(&mut store).unwrap().get(), r#"{"v":2}"#);
    }

    #[tokio::test]
    async fn a_device_whose_resource_changed_is_stored_and_fetched_anew() {
        // A device that reports a new firmware revision gets a new Device resource under
        // the same id: the next append stores it, and the next batch carries it.
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::outbox::tests::settings_in(dir.path());
        let ring = Arc::new(Keyring::new(&[3; 32]));
        let (outbox, writer) = crate::outbox::Outbox::open(settings, ring, vec!["u".into()])
            .await
            .unwrap();
        let append = |json: &str, obs: &str| crate::outbox::Append {
            device_id: "dev-1".into(),
            device_json: json.as_bytes().to_vec().into(),
            observations: vec![(obs.into(), br#"{"resourceType":"Observation"}"#.to_vec())],
            ack: None,
            source_waits: false,
        };
        let device_fetched = |outbox: &crate::outbox::Outbox| {
            let outbox = outbox.clone();
            async move {
                let fetched = outbox.fetch("u", 10).await.unwrap();
                fetched.devices["dev-1"].get().to_string()
            }
        };
        outbox.append(append(r#"{"v":1}"#, "a")).await.unwrap();
        outbox.flush().await.unwrap();
        let first = outbox.fetch("u", 10).await.unwrap().devices["dev-1"].clone();
        assert_eq!(first.get(), r#"{"v":1}"#);
        // The same text again after a fetch read the Device back: not stored again (the
        // next fetch hands over the resource opened before, of the same sealing).
        outbox.append(append(r#"{"v":1}"#, "a2")).await.unwrap();
        outbox.flush().await.unwrap();
        let again = outbox.fetch("u", 10).await.unwrap().devices["dev-1"].clone();
        assert!(Arc::ptr_eq(&first, &again), "the Device was stored again");
        outbox.append(append(r#"{"v":1}"#, "b")).await.unwrap();
        outbox.append(append(r#"{"v":2}"#, "c")).await.unwrap();
        outbox.flush().await.unwrap();
        assert_eq!(device_fetched(&outbox).await, r#"{"v":2}"#);
        drop(outbox);
        writer.await.unwrap();
    }
}
