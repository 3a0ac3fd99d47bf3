//! Golden files of whole BLE paths: GATT bytes → `iomt_drivers::ble` decoder → the shipped
//! device profile → normalizer → Observations, compared with `tests/golden/ble-*.json`.
//!
//! After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p iomt-gateway --test golden_ble` and review the diff.

mod golden_support;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use golden_support::{ctx, value_and_unit};
use iomt_drivers::ble::{self, GattValue};
use iomt_drivers::{DeviceIdentity, Transport};
use iomt_gateway::fhir::Observation;
use iomt_gateway::normalize::{self, OutOfRange, Zone};
use iomt_gateway::profile::{self, Profile};

fn shipped(id: &str) -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../device-profiles")
        .join(format!("{id}.toml"));
    profile::load_file(&path).expect("the shipped profile is valid")
}

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 15, 9, 0, 0).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Decodes `payload` as characteristic `uuid` and normalizes it with `profile`.
fn observations(profile: &Profile, uuid: u16, payload: &str) -> Vec<Observation> {
    let value = ble::decode(uuid, &hex(payload)).unwrap();
    let device = Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: profile.id.clone(),
        transport: Transport::Ble,
        address: "AA:BB:CC:DD:EE:FF".into(),
        serial_number: Some("SN-SECRET-BLE".into()),
        manufacturer: None,
        model: None,
    });
    let reading = value.as_final().unwrap().to_reading(device, received());
    let berlin = Zone::Named(chrono_tz::Europe::Berlin);
    normalize::normalize(&reading, profile, &ctx(berlin, OutOfRange::Flag)).observations
}

/// Asserts that neither the device's serial number nor its address is in the
/// Observations, then compares them with their golden file.
fn check(case: &str, observations: &[Observation]) {
    let actual = serde_json::to_string_pretty(observations).unwrap();
    assert!(!actual.contains("SN-SECRET-BLE") && !actual.contains("AA:BB:CC"));
    golden_support::check(case, observations);
}

fn value(o: &Observation) -> String {
    o.value_quantity.as_ref().unwrap().value.to_string()
}

/// Fails unless `o` has no value and says why: the device sent NaN.
fn assert_not_a_number(o: &Observation) {
    assert!(o.value_quantity.is_none());
    assert_eq!(
        o.data_absent_reason.as_ref().unwrap().coding[0].code,
        "not-a-number"
    );
}

#[test]
fn a_kilopascal_blood_pressure_measurement_becomes_a_mm_hg_panel() {
    let obs = observations(
        &shipped("omron-x4-smart"),
        0x2A35,
        "15 BD F0 0B 00 9F F0 3C 00 12 00",
    );
    let panel = &obs[1];
    let got: Vec<(String, String)> = panel
        .component
        .iter()
        .map(|c| value_and_unit(&c.value_quantity))
        .collect();
    assert_eq!(
        got,
        [
            ("141.8".to_string(), "mm[Hg]".to_string()),
            ("83".into(), "mm[Hg]".into()), // 11 kPa has no decimals: 82.506 rounds to 83
            ("119.3".into(), "mm[Hg]".into())
        ]
    );
    assert_eq!(value(&obs[0]), "60");
    check("ble-bp-kpa", &obs);
}

#[test]
fn a_temperature_with_time_stamp_and_type_keeps_its_two_decimals() {
    let obs = observations(
        &shipped("standard-thermometer"),
        0x2A1C,
        "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04",
    );
    assert_eq!(value(&obs[0]), "37.60");
    // 2012-12-05 11:50:27 in Berlin (CET, UTC+1).
    assert_eq!(obs[0].effective_date_time, "2012-12-05T10:50:27Z");
    check("ble-temperature-type", &obs);
}

#[test]
fn an_imperial_weight_with_bmi_and_height_stays_in_pounds_and_inches() {
    let obs = observations(
        &shipped("standard-weight-scale"),
        0x2A9D,
        "0F 54 3D E8 07 03 0F 07 05 00 01 E1 00 BC 02",
    );
    let got: Vec<(String, String)> = obs
        .iter()
        .map(|o| value_and_unit(&o.value_quantity))
        .collect();
    assert_eq!(
        got,
        [
            ("157.00".to_string(), "[lb_av]".to_string()),
            ("22.5".into(), "kg/m2".into()),
            ("70.0".into(), "[in_i]".into())
        ]
    );
    check("ble-weight-imperial", &obs);
}

#[test]
fn a_plx_spot_check_with_nan_spo2_has_a_data_absent_reason_and_a_pulse() {
    let obs = observations(
        &shipped("nonin-3230"),
        0x2A5E,
        "01 FF 07 48 00 E8 07 03 0F 08 1E 00",
    );
    assert_not_a_number(&obs[0]);
    assert_eq!(value(&obs[1]), "72");
    check("ble-plx-spot-nan", &obs);
}

#[test]
fn a_glucose_in_moles_per_litre_becomes_millimoles_per_litre() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../device-profiles/standard-glucose-meter.toml"),
    )
    .unwrap()
    .replace(
        "id = \"standard-glucose-meter\"",
        "id = \"standard-glucose-meter-mmol\"",
    )
    .replace("vital = \"glucose\"", "vital = \"glucose_molar\"");
    let molar = profile::parse(Path::new("standard-glucose-meter-mmol.toml"), &text).unwrap();
    let obs = observations(&molar, 0x2A18, "06 06 00 E8 07 03 0F 08 1E 00 37 C0 11");
    let q = obs[0].value_quantity.as_ref().unwrap();
    assert_eq!(
        (q.value.to_string(), q.code.as_str()),
        ("5.5".to_string(), "mmol/L")
    );
    assert_eq!(obs[0].code.coding[0].code, "14743-9");
    check("ble-glucose-mol", &obs);
}

#[test]
fn a_final_measurement_and_its_intermediate_share_nothing() {
    // The cuff's in-progress value has no path to a reading at all.
    let v = ble::decode(0x2A36, &hex("00 D7 F0 00 00 00 00")).unwrap();
    assert!(matches!(v, GattValue::IntermediateCuffPressure(_)));
    assert!(v.as_final().is_none());
}

/// The cuff's clock was 3 h 10 min ahead when the gateway read it (a Current Time read at
/// the connection): its measurement is placed on the gateway's timeline, and references
/// the Coincident Time Stamp Observation that holds both clocks (last in the file).
#[test]
fn a_cuff_whose_clock_is_3_h_10_min_ahead_is_corrected_and_references_its_coincident_time_stamp() {
    let profile = shipped("and-ua-651ble");
    // 122/80 mmHg, MAP 95, pulse 70, stamped 2024-03-15 13:05:00 by the cuff (Berlin wall
    // clock, 3 h 10 min ahead): really 09:55 in Berlin, 08:55 UTC.
    let value = ble::decode(
        0x2A35,
        &hex("1E 7A 00 50 00 5F 00 E8 07 03 0F 0D 05 00 46 00 01 00 00"),
    )
    .unwrap();
    let device = Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: profile.id.clone(),
        transport: Transport::Ble,
        address: "AA:BB:CC:DD:EE:FF".into(),
        serial_number: Some("SN-SECRET-BLE".into()),
        manufacturer: None,
        model: None,
    });
    let mut reading = value.as_final().unwrap().to_reading(device, received());
    // Read at 09:00:00.4 UTC, the cuff showed 13:10:00 (Berlin), i.e. 12:10:00 UTC.
    reading.clock = Some(iomt_drivers::ClockComparison {
        device_now: iomt_drivers::DeviceTime::Local(
            chrono::NaiveDate::from_ymd_opt(2024, 3, 15)
                .unwrap()
                .and_hms_opt(13, 10, 0)
                .unwrap(),
        ),
        gateway_now: received() + chrono::Duration::milliseconds(400),
    });
    let berlin = Zone::Named(chrono_tz::Europe::Berlin);
    let out = normalize::normalize(&reading, &profile, &ctx(berlin, OutOfRange::Flag));
    assert_eq!(out.time_source, normalize::TimeSource::DeviceCorrected);
    let cts = out.coincident.clone().unwrap();
    assert_eq!(cts.effective_date_time, "2024-03-15T09:00:00.400Z");
    assert_eq!(
        cts.value_date_time.as_deref(),
        Some("2024-03-15T13:10:00+01:00")
    );
    for o in &out.observations {
        assert_eq!(o.effective_date_time, "2024-03-15T08:55:00Z");
        let ext = o.extension.last().unwrap();
        assert_eq!(ext.url, iomt_gateway::fhir::COINCIDENT_TIME_STAMP_REFERENCE);
        assert_eq!(
            ext.value_reference.identifier,
            cts.identifier.first().cloned()
        );
    }
    let mut all = out.observations.clone();
    all.push(cts);
    check("ble-bp-coincident-time-stamp", &all);
}

/// A cuff's Device resource (PhdDevice): manufacturer, model and revisions as its Device
/// Information reported them, only the keyed pseudonym as identifier (no serial number,
/// no address).
#[test]
fn a_cuffs_device_resource_carries_its_device_information_and_only_its_pseudonym() {
    let profile = shipped("and-ua-651ble");
    let identity = DeviceIdentity {
        revisions: iomt_drivers::Revisions {
            firmware: Some("1.4.2".into()),
            software: Some("2.0".into()),
            hardware: Some("B".into()),
        },
        profile: profile.id.clone(),
        transport: Transport::Ble,
        address: "AA:BB:CC:DD:EE:FF".into(),
        serial_number: Some("SN-SECRET-BLE".into()),
        manufacturer: Some("A&D Company".into()),
        model: Some("UA-651BLE-PLUS".into()),
    };
    let device =
        normalize::device_resource(&profile, &identity, "0123456789abcdef0123456789abcdef");
    let text = serde_json::to_string(&device).unwrap();
    assert!(!text.contains("SN-SECRET-BLE") && !text.contains("AA:BB:CC"));
    assert_eq!(device.manufacturer.as_deref(), Some("A&D Company"));
    golden_support::check_resource("devices/phd-device-ble", &device);
}

#[test]
fn a_chest_strap_heart_rate_becomes_one_heart_rate_observation_without_rr_intervals() {
    // 72 /min (uint8), sensor contact detected, energy expended 100 kJ, two RR intervals.
    let obs = observations(&shipped("polar-h10"), 0x2A37, "1E 48 64 00 00 04 20 04");
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0].code.coding[0].code, "8867-4");
    assert_eq!(
        value_and_unit(&obs[0].value_quantity),
        ("72".to_string(), "/min".to_string())
    );
    // No device time: the time it was received.
    assert_eq!(obs[0].effective_date_time, "2024-03-15T09:00:00Z");
    check("ble-heart-rate", &obs);
}

#[test]
fn a_cgm_record_is_interstitial_glucose_at_its_session_start_plus_its_time_offset() {
    // Session start 2024-03-15 08:00:00, UTC+1 (zone 4 quarter hours), standard time.
    let start = ble::SessionStartTime::decode(&hex("E8 07 03 0F 08 00 00 04 00")).unwrap();
    // 120 mg/dL, 30 minutes into the session, trend +0.2 (mg/dL)/min, with its E2E-CRC.
    let mut bytes = hex("0A 01 78 00 1E 00 02 F0");
    let crc = ble::cgm::e2e_crc(&bytes);
    bytes.extend(crc.to_le_bytes());
    let record = ble::CgmMeasurement::decode_checked(&bytes, true)
        .unwrap()
        .in_session(&start);
    let profile = shipped("standard-cgm");
    let device = Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: profile.id.clone(),
        transport: Transport::Ble,
        address: "AA:BB:CC:DD:EE:FF".into(),
        serial_number: Some("SN-SECRET-BLE".into()),
        manufacturer: None,
        model: None,
    });
    use ble::FinalMeasurement;
    let reading = record.to_reading(device, received());
    let berlin = Zone::Named(chrono_tz::Europe::Berlin);
    let obs = normalize::normalize(&reading, &profile, &ctx(berlin, OutOfRange::Flag)).observations;
    // The trend is decoded but not mapped: one Observation.
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0].code.coding[0].code, "99504-3");
    assert_eq!(
        value_and_unit(&obs[0].value_quantity),
        ("120".to_string(), "mg/dL".to_string())
    );
    // 08:00 +01:00 + 30 min, whatever the device's configured zone (the session start
    // gives its own).
    assert_eq!(obs[0].effective_date_time, "2024-03-15T07:30:00Z");
    check("ble-cgm", &obs);
}

#[test]
fn a_body_composition_measurement_becomes_one_observation_per_mapped_kind() {
    // Every field of the SIG layout: body fat 21.4 %, 2023-12-25 14:30:45, user 2, basal
    // metabolism, muscle 43.8 %, muscle mass 33.440 kg, fat free mass, soft lean mass,
    // body water 40.240 kg, impedance, weight 70.000 kg, height 1.750 m.
    let obs = observations(
        &shipped("standard-body-composition"),
        0x2A9C,
        "FE 0F D6 00 E7 07 0C 19 0E 1E 2D 02 80 1C B6 01 20 1A 40 2B 30 27 70 1F 88 13 B0 36 D6 06",
    );
    let got: Vec<(String, String, String)> = obs
        .iter()
        .map(|o| {
            let (v, u) = value_and_unit(&o.value_quantity);
            (o.code.coding[0].code.clone(), v, u)
        })
        .collect();
    let want = [
        ("41982-0", "21.4", "%"),
        ("73965-6", "43.8", "%"),
        ("73964-9", "33.440", "kg"),
        ("101683-1", "40.240", "kg"),
        ("29463-7", "70.000", "kg"),
        ("8302-2", "175.0", "cm"),
    ];
    assert_eq!(
        got,
        want.map(|(c, v, u)| (c.to_string(), v.to_string(), u.to_string()))
    );
    // 14:30:45 in Berlin (CET, UTC+1).
    assert!(obs
        .iter()
        .all(|o| o.effective_date_time == "2023-12-25T13:30:45Z"));
    check("ble-body-composition", &obs);
}

#[test]
fn an_imperial_body_composition_with_an_unavailable_body_fat_keeps_pounds_and_says_why() {
    // Imperial; body fat FF FF (unavailable); muscle mass 75.00 lb, weight 157.00 lb.
    let obs = observations(
        &shipped("standard-body-composition"),
        0x2A9C,
        "21 04 FF FF 4C 1D 54 3D",
    );
    assert_not_a_number(&obs[0]);
    assert_eq!(obs.len(), 3);
    assert_eq!(value_and_unit(&obs[2].value_quantity).1, "[lb_av]");
    check("ble-body-composition-imperial", &obs);
}
