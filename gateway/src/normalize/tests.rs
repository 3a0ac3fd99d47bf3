use super::*;
use chrono::{TimeZone, Utc};

#[test]
fn derived_uuids_are_version_8_and_lowercase() {
    let u = derived_uuid(&["a", "b"]);
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "8");
    assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    assert_eq!(u, u.to_lowercase());
    // Length prefixes keep ("ab", "") and ("a", "b") apart.
    assert_ne!(derived_uuid(&["ab", ""]), derived_uuid(&["a", "b"]));
}

#[test]
fn instants_are_utc_with_milliseconds_only_when_present() {
    let t = Utc.with_ymd_and_hms(2024, 2, 15, 9, 41, 5).unwrap();
    assert_eq!(fhir_instant(t), "2024-02-15T09:41:05Z");
    let t = t + chrono::Duration::milliseconds(250);
    assert_eq!(fhir_instant(t), "2024-02-15T09:41:05.250Z");
}

#[test]
fn device_ids_are_uuids_made_from_the_pseudonym() {
    let id = device_resource_id("0123456789abcdef0123456789abcdef");
    assert_eq!(id, "01234567-89ab-8def-8123-456789abcdef");
}
