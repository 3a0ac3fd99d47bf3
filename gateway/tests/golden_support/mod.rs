//! Shared by the golden-file tests (`golden.rs`, `golden_ble.rs`): the normalizer's
//! context and the comparison with `tests/golden/<case>.json`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use iomt_gateway::fhir::{self, Observation, Quantity, Reference};
use iomt_gateway::normalize::{self, Context, OutOfRange, Zone};

/// The patient of every golden case (a fixed pseudonym).
pub static SUBJECT: std::sync::LazyLock<Reference> = std::sync::LazyLock::new(|| Reference {
    reference: None,
    identifier: Some(fhir::Identifier {
        system: normalize::PATIENT_PSEUDONYM_SYSTEM.into(),
        value: "4f1c2a0d9e8b7a6c5d4e3f2a1b0c9d8e".into(),
    }),
});
/// The device's pseudonym in every golden case.
const DEVICE: &str = "0123456789abcdef0123456789abcdef";
/// The Device references of the golden cases: the device's, then the gateway's.
static REFERENCES: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
    (
        normalize::device_reference(DEVICE),
        normalize::device_reference("fedcba9876543210fedcba9876543210"),
    )
});

/// The context of every golden case: fixed pseudonyms for the patient, the device and
/// the gateway; device times without a zone read in `zone`; implausible values handled
/// by `out_of_range`.
pub fn ctx(zone: Zone, out_of_range: OutOfRange) -> Context<'static> {
    Context {
        subject: &SUBJECT,
        device_pseudonym: DEVICE,
        device_reference: &REFERENCES.0,
        gateway_reference: &REFERENCES.1,
        zone,
        out_of_range,
    }
}

/// The directory of the golden files.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `observations`, as pretty JSON, with `tests/golden/<case>.json`; with
/// `UPDATE_GOLDEN` set, writes that file instead.
pub fn check(case: &str, observations: &[Observation]) {
    check_json(case, observations)
}

/// [`check`] for any resource (`case` may name a subfolder: `devices/<name>`).
pub fn check_json<T: serde::Serialize + ?Sized>(case: &str, value: &T) {
    let actual = serde_json::to_string_pretty(value).unwrap() + "\n";
    let path = golden_dir().join(format!("{case}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "golden file {} differs", path.display());
}

/// Compares any resource, as pretty JSON, with `tests/golden/<path>.json` (a Device
/// resource lives in `tests/golden/devices/`, apart from the Observation arrays); with
/// `UPDATE_GOLDEN` set, writes that file instead.
pub fn check_resource<T: serde::Serialize>(path: &str, resource: &T) {
    let actual = serde_json::to_string_pretty(resource).unwrap() + "\n";
    let path = golden_dir().join(format!("{path}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "golden file {} differs", path.display());
}

/// The (value, UCUM code) of a quantity that must be there.
pub fn value_and_unit(quantity: &Option<Quantity>) -> (String, String) {
    let q = quantity.as_ref().unwrap();
    (q.value.to_string(), q.code.clone())
}
