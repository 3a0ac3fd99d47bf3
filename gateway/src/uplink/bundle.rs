//! Building a transaction Bundle from outbox rows.
//!
//! Resources travel as the JSON text that was stored: the Bundle is assembled around them
//! without parsing them into a tree and serializing them again.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;

use crate::fhir::{Bundle, BundleEntry, BundleRequest};

/// A Bundle and, for each of its entries, the index of the row it came from (`None` for
/// Device entries).
#[derive(Debug, Clone)]
pub struct Built {
    /// The Bundle.
    pub bundle: Bundle,
    /// Entry index → row index.
    pub rows_of_entries: Vec<Option<usize>>,
}

/// One Observation to put in a Bundle.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// Index of its row in the batch.
    pub row: usize,
    /// The Observation's id.
    pub id: &'a str,
    /// Its identifier as `system|value`, for the conditional create.
    pub identifier: Option<&'a str>,
    /// The Device resource it references.
    pub device_id: &'a str,
    /// The Observation's JSON.
    pub json: &'a RawValue,
}

/// Builds a transaction Bundle: the gateway and the referenced measuring devices as PUTs
/// to their deterministic ids, then each Observation as a conditional create on its
/// identifier (`ifNoneExist`), so a retry never duplicates.
pub fn build(
    gateway: (&str, &RawValue),
    devices: &HashMap<String, Box<RawValue>>,
    items: &[Item<'_>],
) -> Built {
    let mut entry = Vec::with_capacity(items.len() + devices.len() + 1);
    let mut rows_of_entries = Vec::with_capacity(entry.capacity());
    let mut referenced: BTreeMap<&str, &RawValue> = BTreeMap::new();
    for item in items {
        if let Some(d) = devices.get(item.device_id) {
            referenced.insert(item.device_id, d);
        }
    }
    for (id, device) in std::iter::once(gateway).chain(referenced) {
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{id}"),
            resource: device.to_owned(),
            request: BundleRequest {
                method: "PUT".into(),
                url: format!("Device/{id}"),
                if_none_exist: None,
            },
        });
        rows_of_entries.push(None);
    }
    for item in items {
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{}", item.id),
            resource: item.json.to_owned(),
            request: BundleRequest {
                method: "POST".into(),
                url: "Observation".into(),
                if_none_exist: item.identifier.map(|i| format!("identifier={i}")),
            },
        });
        rows_of_entries.push(Some(item.row));
    }
    Built {
        bundle: Bundle {
            resource_type: "Bundle".into(),
            kind: "transaction".into(),
            entry,
        },
        rows_of_entries,
    }
}
