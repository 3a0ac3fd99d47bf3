//! Golden-file tests of the normalizer: every catalog vital sign, the blood-pressure panel,
//! special values, unit conversion, the out-of-range rule and the time rules.
//!
//! Each case normalizes a fixed reading and compares the Observations (as pretty JSON)
//! with `tests/golden/<case>.json`. After an intended change of the mapping, regenerate
//! with `UPDATE_GOLDEN=1 cargo test -p iomt-gateway --test golden` and review the diff.

mod golden_support;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use golden_support::{check, ctx, value_and_unit};
use iomt_drivers::{
    AbsentReason, DeviceIdentity, DeviceTime, Quantity, Reading, ReadingFlag, Transport,
};
use iomt_gateway::catalog::{self, KINDS};
use iomt_gateway::fhir::Observation;
use iomt_gateway::normalize::{self, Context, OutOfRange, Zone};
use iomt_gateway::profile::{self, Profile};
use rust_decimal::Decimal;

/// An MQTT profile mapping one field per catalog kind (field name = kind key), so any
/// kind can be tried with any unit.
fn catalog_profile() -> Profile {
    let mut text = String::from(
        "id = \"golden\"\nname = \"Golden test device\"\nmanufacturer = \"Test\"\nmodel = \"G-1\"\n[mqtt]\ntopic = \"golden/#\"\n[mqtt.json]\n",
    );
    for k in KINDS {
        text.push_str(&format!(
            "[[field]]\nname = \"{0}\"\nvital = \"{0}\"\npointer = \"/{0}\"\n",
            k.key
        ));
    }
    profile::parse(Path::new("golden.toml"), &text).expect("the golden profile is valid")
}

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 2, 15, 9, 41, 5).unwrap()
}

fn reading(quantities: Vec<Quantity>, device_time: Option<DeviceTime>) -> Reading {
    Reading {
        clock: None,
        device: Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "golden".into(),
            transport: Transport::Mqtt,
            address: "golden-device".into(),
            serial_number: Some("SN-SECRET-1".into()),
            manufacturer: None,
            model: None,
        }),
        device_time,
        received_at: received(),
        sequence: Some(17),
        quantities,
        flags: Vec::new(),
    }
}

fn zoned() -> Option<DeviceTime> {
    Some(DeviceTime::Zoned(
        FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2024, 2, 15, 10, 40, 0)
            .unwrap(),
    ))
}

fn q(name: &str, value: &str, unit: &str) -> Quantity {
    Quantity::new(name, Decimal::from_str(value).unwrap(), unit)
}

fn normalize_one(r: &Reading, c: &Context) -> Vec<Observation> {
    normalize::normalize(r, &catalog_profile(), c).observations
}

#[test]
fn every_catalog_vital_sign_matches_its_golden_file() {
    // Each kind's typical value comes from the catalog, next to its codes and unit.
    for kind in KINDS.iter().filter(|k| k.panel.is_none()) {
        let r = reading(vec![q(kind.key, kind.typical, kind.unit)], zoned());
        let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
        assert_eq!(obs.len(), 1, "{}", kind.key);
        check(&format!("kind-{}", kind.key), &obs);
    }
}

#[test]
fn blood_pressure_becomes_one_panel_with_components_and_a_separate_pulse() {
    let r = reading(
        vec![
            q("systolic", "128", "mm[Hg]"),
            q("diastolic", "82", "mm[Hg]"),
            q("mean_arterial", "97", "mm[Hg]"),
            q("pulse_rate", "64", "/min"),
        ],
        zoned(),
    );
    let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
    assert_eq!(obs.len(), 2);
    let panel = obs
        .iter()
        .find(|o| o.code.coding[0].code == catalog::BP_PANEL.code)
        .unwrap();
    assert!(panel.value_quantity.is_none());
    assert_eq!(panel.component.len(), 3);
    check("bp-panel", &obs);
}

#[test]
fn blood_pressure_in_kilopascal_is_converted_to_mm_hg() {
    let r = reading(
        vec![q("systolic", "18.9", "kPa"), q("diastolic", "10.6", "kPa")],
        zoned(),
    );
    let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
    let values: Vec<String> = obs[0]
        .component
        .iter()
        .map(|c| c.value_quantity.as_ref().unwrap().value.to_string())
        .collect();
    assert_eq!(values, ["141.8", "79.5"]);
    check("bp-kpa", &obs);
}

#[test]
fn special_values_become_data_absent_reasons_without_a_value() {
    let r = reading(
        vec![
            Quantity::absent("spo2", AbsentReason::NotANumber, "%"),
            Quantity::absent("heart_rate", AbsentReason::NotAtThisResolution, "/min"),
            Quantity::absent("body_temperature", AbsentReason::PositiveInfinity, "Cel"),
            Quantity::absent("body_weight", AbsentReason::NegativeInfinity, "kg"),
            Quantity::absent("respiratory_rate", AbsentReason::Unsupported, "/min"),
            Quantity::absent("systolic", AbsentReason::NotANumber, "mm[Hg]"),
            q("diastolic", "80", "mm[Hg]"),
        ],
        zoned(),
    );
    let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
    assert_eq!(obs.len(), 6);
    for o in obs.iter().filter(|o| o.component.is_empty()) {
        assert!(o.value_quantity.is_none() && o.data_absent_reason.is_some());
    }
    check("special-values", &obs);
}

#[test]
fn a_reading_without_device_time_uses_the_receive_time() {
    let r = reading(vec![q("body_weight", "78.4", "kg")], None);
    let out = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(out.time_source, normalize::TimeSource::Received);
    assert_eq!(
        out.observations[0].effective_date_time,
        "2024-02-15T09:41:05Z"
    );
    check("no-device-time", &out.observations);
}

#[test]
fn a_device_time_without_zone_is_read_in_the_configured_zone() {
    let naive = NaiveDate::from_ymd_opt(2024, 2, 15)
        .unwrap()
        .and_hms_opt(10, 40, 0)
        .unwrap();
    let r = reading(
        vec![q("body_temperature", "37.2", "Cel")],
        Some(DeviceTime::Local(naive)),
    );
    let berlin = Zone::Named(chrono_tz::Europe::Berlin);
    let out = normalize::normalize(&r, &catalog_profile(), &ctx(berlin, OutOfRange::Flag));
    assert_eq!(out.time_source, normalize::TimeSource::DeviceLocal);
    // 10:40 in Berlin in February (UTC+1) is 09:40 UTC.
    assert_eq!(
        out.observations[0].effective_date_time,
        "2024-02-15T09:40:00Z"
    );
    check("local-device-time", &out.observations);

    let ny = Zone::Named(chrono_tz::America::New_York);
    let out = normalize::normalize(&r, &catalog_profile(), &ctx(ny, OutOfRange::Flag));
    // The same wall-clock time in New York (UTC-5) is 15:40 UTC.
    assert_eq!(
        out.observations[0].effective_date_time,
        "2024-02-15T15:40:00Z"
    );
}

#[test]
fn ambiguous_and_skipped_local_times_resolve_by_the_documented_rule() {
    let berlin = Zone::Named(chrono_tz::Europe::Berlin);
    // 2024-10-27 02:30 happens twice in Berlin: the earlier (CEST, UTC+2) is taken.
    let ambiguous = NaiveDate::from_ymd_opt(2024, 10, 27)
        .unwrap()
        .and_hms_opt(2, 30, 0)
        .unwrap();
    assert_eq!(
        normalize::resolve_local(ambiguous, berlin)
            .unwrap()
            .to_rfc3339(),
        "2024-10-27T00:30:00+00:00"
    );
    // 2024-03-31 02:30 does not exist in Berlin: read with the offset before the gap (UTC+1).
    let skipped = NaiveDate::from_ymd_opt(2024, 3, 31)
        .unwrap()
        .and_hms_opt(2, 30, 0)
        .unwrap();
    assert_eq!(
        normalize::resolve_local(skipped, berlin)
            .unwrap()
            .to_rfc3339(),
        "2024-03-31T01:30:00+00:00"
    );
}

#[test]
fn a_device_clock_far_in_the_future_or_not_set_is_not_trusted() {
    let future = Some(DeviceTime::Zoned(
        Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0)
            .unwrap()
            .fixed_offset(),
    ));
    let r = reading(vec![q("spo2", "97", "%")], future);
    let out = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(out.time_source, normalize::TimeSource::ReceivedDistrusted);
    assert_eq!(
        out.observations[0].effective_date_time,
        "2024-02-15T09:41:05Z"
    );

    let mut r = reading(vec![q("spo2", "97", "%")], zoned());
    r.flags.push(ReadingFlag::ClockNotSet);
    let out = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(out.time_source, normalize::TimeSource::ReceivedDistrusted);
}

#[test]
fn implausible_values_are_flagged_by_default_and_dropped_when_rejecting() {
    let r = reading(
        vec![q("spo2", "130", "%"), q("heart_rate", "72", "/min")],
        zoned(),
    );
    let flagged = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(flagged.flagged, 1);
    assert_eq!(flagged.observations.len(), 2);
    check("out-of-range-flagged", &flagged.observations);

    let rejected = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Reject),
    );
    assert_eq!(rejected.observations.len(), 1);
    assert_eq!(
        rejected.rejections,
        vec![normalize::Rejection::Implausible {
            field: "spo2".into()
        }]
    );
}

#[test]
fn units_allowed_by_the_vital_signs_profile_are_kept_others_converted() {
    let r = reading(
        vec![
            q("body_temperature", "98.6", "[degF]"),
            q("body_weight", "172.8", "[lb_av]"),
            q("body_height", "1.765", "m"),
            q("glucose", "0.00104", "kg/L"),
        ],
        zoned(),
    );
    let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
    let got: Vec<(String, String)> = obs
        .iter()
        .map(|o| value_and_unit(&o.value_quantity))
        .collect();
    assert_eq!(
        got,
        [
            ("98.6".to_string(), "[degF]".to_string()),
            ("172.8".into(), "[lb_av]".into()),
            ("176.5".into(), "cm".into()),
            ("104".into(), "mg/dL".into())
        ]
    );
    check("unit-conversion", &obs);
}

#[test]
fn identifiers_are_deterministic_and_distinct_per_measurement() {
    let c = ctx(Zone::GatewayLocal, OutOfRange::Flag);
    let r = reading(
        vec![q("spo2", "97", "%"), q("heart_rate", "72", "/min")],
        zoned(),
    );
    let a = normalize_one(&r, &c);
    let b = normalize_one(&r, &c);
    assert_eq!(a[0].identifier, b[0].identifier);
    assert_ne!(a[0].identifier, a[1].identifier);
    let mut later = r.clone();
    later.sequence = Some(18);
    assert_ne!(normalize_one(&later, &c)[0].identifier, a[0].identifier);
}

#[test]
fn test_data_is_never_a_patient_observation_and_demo_data_is_labelled() {
    let mut r = reading(vec![q("glucose", "104", "mg/dL")], zoned());
    r.flags.push(ReadingFlag::TestData);
    let out = normalize::normalize(
        &r,
        &catalog_profile(),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert!(out.observations.is_empty());
    assert_eq!(out.rejections, vec![normalize::Rejection::TestData]);

    let mut r = reading(vec![q("glucose", "104", "mg/dL")], zoned());
    r.flags.push(ReadingFlag::DemoData);
    let obs = normalize_one(&r, &ctx(Zone::GatewayLocal, OutOfRange::Flag));
    assert_eq!(obs[0].meta.security[0].code, "HTEST");
}

#[test]
fn nothing_identifying_appears_in_the_observations() {
    let r = reading(vec![q("spo2", "97", "%")], zoned());
    let text = serde_json::to_string(&normalize_one(
        &r,
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    ))
    .unwrap();
    assert!(!text.contains("SN-SECRET-1"));
    assert!(!text.contains("golden-device"));
}

#[test]
fn a_temperature_site_adds_its_codes_after_the_vital_signs_code_and_a_body_site() {
    let mut temp = q("body_temperature", "37.1", "Cel");
    temp.site = Some(iomt_drivers::BodySite::Mouth);
    let obs = normalize_one(
        &reading(vec![temp], zoned()),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    let codes: Vec<&str> = obs[0].code.coding.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(codes, ["8310-5", "8331-1", "150364", "188424"]);
    assert_eq!(
        obs[0].body_site.as_ref().and_then(|b| b.text.as_deref()),
        Some("Mouth")
    );
    // "Body" in general adds nothing.
    let mut temp = q("body_temperature", "37.1", "Cel");
    temp.site = Some(iomt_drivers::BodySite::Body);
    let obs = normalize_one(
        &reading(vec![temp], zoned()),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(obs[0].code.coding.len(), 2);
    assert!(obs[0].body_site.is_none());
}

#[test]
fn a_glucose_meter_that_switches_to_mmol_per_litre_gets_the_molar_loinc() {
    // The profile maps `glucose` (mass, 41653-7); this reading arrives in mol/L.
    let obs = normalize_one(
        &reading(vec![q("glucose", "0.0058", "mol/L")], zoned()),
        &ctx(Zone::GatewayLocal, OutOfRange::Flag),
    );
    assert_eq!(obs[0].code.coding[0].code, "14743-9");
    let v = obs[0].value_quantity.as_ref().unwrap();
    assert_eq!(
        (v.value.to_string().as_str(), v.code.as_str()),
        ("5.8", "mmol/L")
    );
}
