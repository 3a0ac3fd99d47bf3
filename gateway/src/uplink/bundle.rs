//! Building a transaction Bundle from outbox rows.
//!
//! Resources travel as the JSON text that was stored: the Bundle is assembled around them
//! without parsing them into a tree and serializing them again.
//!
//! One entry per Observation: the same Observation can be stored twice (a crash between
//! the commit and the source's acknowledgement makes the source send it again), and FHIR
//! requires each `fullUrl` to be unique in a Bundle, so a server may refuse the whole
//! transaction. Rows holding an Observation already in the Bundle (the same identifier,
//! or the same id when it has none) get no entry of their own: [`Built::duplicates`]
//! names the row whose entry stands for them, so they share its fate.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;

use crate::fhir::{Bundle, BundleEntry, BundleRequest};
use crate::outbox::DeviceJson;

/// A Bundle and, for each of its entries, the index of the row it came from (`None` for
/// Device entries).
#[derive(Debug, Clone)]
pub struct Built<'a> {
    /// The Bundle, borrowing its resources.
    pub bundle: Bundle<'a>,
    /// Entry index → row index.
    pub rows_of_entries: Vec<Option<usize>>,
    /// (row left out, row whose entry stands for it): rows holding an Observation that
    /// another row of the Bundle already holds.
    pub duplicates: Vec<(usize, usize)>,
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

/// Before each entry's id in its `fullUrl`.
const FULL_URL: &str = "urn:uuid:";
/// Before a Device's id in its PUT's `url`.
const DEVICE_URL: &str = "Device/";
/// The `url` of an Observation's POST.
const OBSERVATION_URL: &str = "Observation";
/// Before an Observation's identifier in its `ifNoneExist`.
const IF_NONE_EXIST: &str = "identifier=";

/// Bytes of a Bundle's JSON around its entries, rounded up:
/// `{"resourceType":"Bundle","type":"transaction","entry":[`, `]}` and no more (58).
const ENVELOPE_LEN: usize = 64;

/// Bytes of an entry's JSON besides its resource and the strings of its `fullUrl`,
/// `url` and `ifNoneExist`, rounded up: the keys, quotes, punctuation and method of
/// `{"fullUrl":"","resource":,"request":{"method":"POST","url":"","ifNoneExist":""}},`
/// (81). The strings are ids and identifiers the gateway made: nothing in them is escaped.
const ENTRY_KEYS_LEN: usize = 96;

/// At least the length of `entry` in a Bundle's JSON.
fn entry_len(entry: &BundleEntry<'_>) -> usize {
    ENTRY_KEYS_LEN
        .saturating_add(entry.resource.get().len())
        .saturating_add(entry.full_url.len())
        .saturating_add(entry.request.url.len())
        .saturating_add(entry.request.if_none_exist.as_ref().map_or(0, String::len))
}

/// At least the length of `bundle` as JSON (a buffer of this size takes it whole).
pub fn encoded_len(bundle: &Bundle<'_>) -> usize {
    bundle
        .entry
        .iter()
        .fold(ENVELOPE_LEN, |n, e| n.saturating_add(entry_len(e)))
}

/// At least the length of the entry [`build`] makes for Device `id` (the same measure as
/// [`encoded_len`], before the entry exists).
pub fn device_entry_len(id: &str, json: &RawValue) -> usize {
    ENTRY_KEYS_LEN + FULL_URL.len() + DEVICE_URL.len() + 2 * id.len() + json.get().len()
}

/// At least the length of the entry [`build`] makes for an Observation.
pub fn observation_entry_len(id: &str, identifier: Option<&str>, json: &RawValue) -> usize {
    ENTRY_KEYS_LEN
        + FULL_URL.len()
        + id.len()
        + OBSERVATION_URL.len()
        + identifier.map_or(0, |i| IF_NONE_EXIST.len() + i.len())
        + json.get().len()
}

/// At least the length of a Bundle of the gateway's Device `(id, json)` alone: where
/// every Bundle starts.
pub fn base_len(gateway: (&str, &RawValue)) -> usize {
    ENVELOPE_LEN + device_entry_len(gateway.0, gateway.1)
}

/// Builds a transaction Bundle: the gateway and the referenced measuring devices as PUTs
/// to their deterministic ids, then each Observation as a conditional create on its
/// identifier (`ifNoneExist`), so a retry never duplicates.
///
/// The resources are borrowed, except the Devices in `replaced` (a Device with its
/// current state in place of the stored one), which the Bundle takes.
pub fn build<'a>(
    gateway: (&'a str, &'a RawValue),
    devices: &'a HashMap<String, DeviceJson>,
    mut replaced: HashMap<String, Box<RawValue>>,
    items: &[Item<'a>],
) -> Built<'a> {
    let mut entry = Vec::with_capacity(items.len() + devices.len() + 1);
    let mut rows_of_entries = Vec::with_capacity(entry.capacity());
    let mut referenced: BTreeMap<&str, &RawValue> = BTreeMap::new();
    for item in items {
        if let Some(d) = devices.get(item.device_id) {
            referenced.insert(item.device_id, d);
        }
    }
    for (id, device) in std::iter::once(gateway).chain(referenced) {
        let resource = match replaced.remove(id) {
            Some(current) => Cow::Owned(current),
            None => Cow::Borrowed(device),
        };
        entry.push(BundleEntry {
            full_url: format!("{FULL_URL}{id}"),
            resource,
            request: BundleRequest {
                method: "PUT".into(),
                url: format!("{DEVICE_URL}{id}"),
                if_none_exist: None,
            },
        });
        rows_of_entries.push(None);
    }
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut duplicates = Vec::new();
    for item in items {
        let key = item.identifier.unwrap_or(item.id);
        if let Some(&row) = first.get(key) {
            duplicates.push((item.row, row));
            continue;
        }
        first.insert(key, item.row);
        entry.push(BundleEntry {
            full_url: format!("{FULL_URL}{}", item.id),
            resource: Cow::Borrowed(item.json),
            request: BundleRequest {
                method: "POST".into(),
                url: OBSERVATION_URL.into(),
                if_none_exist: item.identifier.map(|i| format!("{IF_NONE_EXIST}{i}")),
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
        duplicates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap_or_else(|_| unreachable!())
    }

    fn item<'a>(
        row: usize,
        id: &'a str,
        identifier: Option<&'a str>,
        json: &'a RawValue,
    ) -> Item<'a> {
        Item {
            row,
            id,
            identifier,
            device_id: "dev-1",
            json,
        }
    }

    fn full_urls<'a>(built: &'a Built<'_>) -> Vec<&'a str> {
        built
            .bundle
            .entry
            .iter()
            .map(|e| e.full_url.as_str())
            .collect()
    }

    #[test]
    fn the_same_observation_in_two_rows_becomes_one_entry_standing_for_both() {
        let gateway = raw(r#"{"resourceType":"Device","id":"gw"}"#);
        let devices = HashMap::from([(
            "dev-1".to_string(),
            DeviceJson::from(raw(r#"{"resourceType":"Device","id":"dev-1"}"#)),
        )]);
        let (a, b) = (raw(r#"{"id":"a"}"#), raw(r#"{"id":"b"}"#));
        let items = [
            item(0, "a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a),
            item(1, "b", Some("urn:ietf:rfc:3986|urn:uuid:b"), &b),
            item(2, "a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a),
            item(3, "a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a),
        ];
        let built = build(("gw", &gateway), &devices, HashMap::new(), &items);
        assert_eq!(
            full_urls(&built),
            ["urn:uuid:gw", "urn:uuid:dev-1", "urn:uuid:a", "urn:uuid:b"]
        );
        assert_eq!(built.rows_of_entries, [None, None, Some(0), Some(1)]);
        assert_eq!(built.duplicates, [(2, 0), (3, 0)]);
    }

    #[test]
    fn the_measured_lengths_are_at_least_the_json_written() {
        let gateway = raw(r#"{"resourceType":"Device","id":"0123-gw"}"#);
        let device = raw(r#"{"resourceType":"Device","id":"dev-1","note":"a \"quoted\" word"}"#);
        let devices = HashMap::from([("dev-1".to_string(), DeviceJson::from(device))]);
        let (a, b) = (raw(r#"{"id":"a"}"#), raw(r#"{"id":"bb"}"#));
        let items = [
            item(0, "a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a),
            item(1, "bb", None, &b),
        ];
        let none = HashMap::new();
        let alone = build(("0123-gw", &gateway), &none, HashMap::new(), &[]);
        let built = build(("0123-gw", &gateway), &devices, HashMap::new(), &items);
        let len = |b: &Bundle<'_>| serde_json::to_vec(b).unwrap().len();
        assert!(len(&alone.bundle) <= base_len(("0123-gw", &gateway)));
        assert!(len(&built.bundle) <= encoded_len(&built.bundle));
        let entry = |i: usize| serde_json::to_vec(&built.bundle.entry[i]).unwrap().len() + 1;
        assert!(entry(1) <= device_entry_len("dev-1", &devices["dev-1"]));
        assert!(entry(2) <= observation_entry_len("a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a));
        assert!(entry(3) <= observation_entry_len("bb", None, &b));
        // The measures before the entries exist are the one made of them.
        for (i, measured) in [
            device_entry_len("dev-1", &devices["dev-1"]),
            observation_entry_len("a", Some("urn:ietf:rfc:3986|urn:uuid:a"), &a),
            observation_entry_len("bb", None, &b),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(measured, entry_len(&built.bundle.entry[i + 1]));
        }
    }

    #[test]
    fn observations_without_identifier_are_told_apart_by_their_id() {
        let gateway = raw(r#"{"resourceType":"Device","id":"gw"}"#);
        let o = raw(r#"{"id":"x"}"#);
        let items = [
            item(0, "x", None, &o),
            item(1, "y", None, &o),
            item(2, "x", None, &o),
        ];
        let none = HashMap::new();
        let built = build(("gw", &gateway), &none, HashMap::new(), &items);
        assert_eq!(
            full_urls(&built),
            ["urn:uuid:gw", "urn:uuid:x", "urn:uuid:y"]
        );
        assert_eq!(built.duplicates, [(2, 0)]);
        let unique: std::collections::HashSet<&str> = full_urls(&built).into_iter().collect();
        assert_eq!(
            unique.len(),
            built.bundle.entry.len(),
            "fullUrl unique in the Bundle"
        );
    }
}
