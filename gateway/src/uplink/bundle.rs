//! Building a transaction Bundle from outbox rows.

use std::collections::{BTreeMap, HashMap};

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

/// Builds a transaction Bundle: the gateway and the referenced measuring devices as PUTs
/// to their deterministic ids, then each Observation as a conditional create on its
/// identifier (`ifNoneExist`), so a retry never duplicates.
pub fn build(
    gateway: &serde_json::Value,
    devices: &HashMap<String, serde_json::Value>,
    observations: &[(usize, &str, &serde_json::Value)],
) -> Built {
    let mut entry = Vec::with_capacity(observations.len() + devices.len() + 1);
    let mut rows_of_entries = Vec::with_capacity(entry.capacity());
    let mut referenced: BTreeMap<&str, &serde_json::Value> = BTreeMap::new();
    for (_, device_id, _) in observations {
        if let Some(d) = devices.get(*device_id) {
            referenced.insert(device_id, d);
        }
    }
    for device in std::iter::once(gateway).chain(referenced.into_values()) {
        let id = device["id"].as_str().unwrap_or_default();
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{id}"),
            resource: device.clone(),
            request: BundleRequest {
                method: "PUT".into(),
                url: format!("Device/{id}"),
                if_none_exist: None,
            },
        });
        rows_of_entries.push(None);
    }
    for (row, _, obs) in observations {
        let id = obs["id"].as_str().unwrap_or_default();
        let ident = &obs["identifier"][0];
        let if_none_exist = match (ident["system"].as_str(), ident["value"].as_str()) {
            (Some(system), Some(value)) => Some(format!("identifier={system}|{value}")),
            _ => None,
        };
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{id}"),
            resource: (*obs).clone(),
            request: BundleRequest {
                method: "POST".into(),
                url: "Observation".into(),
                if_none_exist,
            },
        });
        rows_of_entries.push(Some(*row));
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
