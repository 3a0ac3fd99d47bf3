//! End-to-end tests of `profile test` on the shipped BLE profiles: the real binary decodes
//! a captured (or constructed) GATT payload and prints Observations that the independent
//! validator accepts.

mod common;

use std::path::Path;

use common::{run, run_fails, run_ok, texts, validate_fhir};
use serde_json::Value;

/// Runs `profile test PROFILE --payload HEX` in Europe/Berlin, checks success and FHIR
/// validity, and returns the Observations.
fn observations(profile: &str, payload: &str) -> Vec<Value> {
    decoded(profile, payload, &["--time-zone", "Europe/Berlin"])
}

/// Runs `profile test PROFILE --payload HEX` with `more` arguments, checks success and
/// FHIR validity, and returns the Observations.
fn decoded(profile: &str, payload: &str, more: &[&str]) -> Vec<Value> {
    let mut args = vec!["profile", "test", profile, "--payload", payload];
    args.extend(more);
    let stdout = run_ok(&args);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("obs.json");
    std::fs::write(&file, &stdout).unwrap();
    let (ok, report) = validate_fhir(&[Path::new("--observations-array"), &file]);
    assert!(ok, "{profile}: {report}");
    serde_json::from_str(&stdout).unwrap()
}

/// Runs the binary with `args`, asserts that it exits 1 and prints nothing on stdout, and
/// returns its stderr.
fn exits_1_printing_nothing(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    stderr
}

fn by_code<'a>(obs: &'a [Value], loinc: &str) -> &'a Value {
    obs.iter()
        .find(|o| o["code"]["coding"][0]["code"] == loinc)
        .unwrap_or_else(|| panic!("no Observation {loinc} in {obs:#?}"))
}

/// The JSON text of a value, so `70.000` is not read as a float.
fn number(v: &Value) -> String {
    v.to_string()
}

#[test]
fn the_a_and_d_cuff_profile_turns_a_measurement_into_a_bp_panel_and_a_pulse() {
    let obs = observations(
        "and-ua-651ble",
        "1E 80 00 52 00 61 00 DD 07 08 1A 09 0A 14 48 00 01 00 00",
    );
    assert_eq!(obs.len(), 2);
    let panel = by_code(&obs, "85354-9");
    let values: Vec<(String, String)> = panel["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"]["coding"][0]["code"].as_str().unwrap().to_string(),
                number(&c["valueQuantity"]["value"]),
            )
        })
        .collect();
    assert_eq!(
        values,
        [
            ("8480-6".to_string(), "128".to_string()),
            ("8462-4".into(), "82".into()),
            ("8478-0".into(), "97".into())
        ]
    );
    // 2013-08-26 09:10:20 wall-clock in Berlin (CEST, UTC+2).
    assert_eq!(panel["effectiveDateTime"], "2013-08-26T07:10:20Z");
    assert_eq!(
        number(&by_code(&obs, "8867-4")["valueQuantity"]["value"]),
        "72"
    );
}

#[test]
fn the_omron_cuff_profile_converts_a_kilopascal_measurement_to_mm_hg() {
    // The same cuff layout with the kPa flag: 18.9 / 11 / 15.9 kPa, pulse 60.
    let obs = observations("omron-x4-smart", "15 BD F0 0B 00 9F F0 3C 00 12 00");
    let panel = by_code(&obs, "85354-9");
    let sys = &panel["component"][0]["valueQuantity"];
    assert_eq!(number(&sys["value"]), "141.8");
    assert_eq!(sys["code"], "mm[Hg]");
    let obs = observations(
        "omron-x4-smart",
        "1E 79 00 4F 00 5D 00 E8 07 05 02 07 2D 0A 42 00 02 04 00",
    );
    assert_eq!(
        by_code(&obs, "85354-9")["effectiveDateTime"],
        "2024-05-02T05:45:10Z"
    );
}

#[test]
fn the_nonin_profile_reads_a_plx_spot_check_and_a_nan_spo2() {
    let obs = observations(
        "nonin-3230",
        "0B 61 00 48 00 E8 07 03 0F 08 1E 00 80 00 F0 E0",
    );
    let spo2 = by_code(&obs, "2708-6");
    assert_eq!(number(&spo2["valueQuantity"]["value"]), "97");
    assert_eq!(spo2["code"]["coding"][1]["code"], "59408-5");
    let pr = by_code(&obs, "8867-4");
    assert_eq!(pr["code"]["coding"][1]["code"], "149530");
    assert_eq!(spo2["effectiveDateTime"], "2024-03-15T07:30:00Z");

    let obs = observations("nonin-3230", "00 FF 07 48 00");
    let spo2 = by_code(&obs, "2708-6");
    assert!(spo2.get("valueQuantity").is_none(), "{spo2:#}");
    assert_eq!(
        spo2["dataAbsentReason"]["coding"][0]["code"],
        "not-a-number"
    );
}

#[test]
fn the_thermometer_profile_keeps_celsius_precision_and_fahrenheit_units() {
    let obs = observations(
        "standard-thermometer",
        "06 71 0E 00 FE E4 07 05 15 0A 1E 2D 01",
    );
    let t = by_code(&obs, "8310-5");
    assert_eq!(number(&t["valueQuantity"]["value"]), "36.97");
    assert_eq!(t["valueQuantity"]["code"], "Cel");
    assert_eq!(t["effectiveDateTime"], "2020-05-21T08:30:45Z");

    let obs = observations("standard-thermometer", "01 DA 03 00 FF");
    let t = by_code(&obs, "8310-5");
    assert_eq!(number(&t["valueQuantity"]["value"]), "98.6");
    assert_eq!(t["valueQuantity"]["code"], "[degF]");
}

#[test]
fn the_scale_profile_reads_weight_bmi_and_height_in_both_unit_systems() {
    let obs = observations("standard-weight-scale", "08 B0 36 E5 00 D6 06");
    assert_eq!(
        number(&by_code(&obs, "29463-7")["valueQuantity"]["value"]),
        "70.000"
    );
    assert_eq!(
        number(&by_code(&obs, "39156-5")["valueQuantity"]["value"]),
        "22.9"
    );
    let h = &by_code(&obs, "8302-2")["valueQuantity"];
    assert_eq!(
        (number(&h["value"]), h["code"].clone()),
        ("175.0".into(), Value::from("cm"))
    );

    let obs = observations(
        "standard-weight-scale",
        "0F 54 3D E8 07 03 0F 07 05 00 01 E1 00 BC 02",
    );
    let w = &by_code(&obs, "29463-7")["valueQuantity"];
    assert_eq!(
        (number(&w["value"]), w["code"].clone()),
        ("157.00".into(), Value::from("[lb_av]"))
    );
    let h = &by_code(&obs, "8302-2")["valueQuantity"];
    assert_eq!(
        (number(&h["value"]), h["code"].clone()),
        ("70.0".into(), Value::from("[in_i]"))
    );
}

#[test]
fn the_glucose_profile_turns_kilograms_per_litre_into_milligrams_per_decilitre() {
    let obs = observations(
        "standard-glucose-meter",
        "03 05 00 E8 07 03 0F 08 1E 00 00 00 64 B0 11",
    );
    let g = by_code(&obs, "41653-7");
    assert_eq!(number(&g["valueQuantity"]["value"]), "100");
    assert_eq!(g["valueQuantity"]["code"], "mg/dL");
    assert_eq!(g["category"][0]["coding"][0]["code"], "laboratory");
}

#[test]
fn a_glucose_control_solution_test_gives_no_observation() {
    let out = run(&[
        "profile",
        "test",
        "standard-glucose-meter",
        "--payload",
        "02 07 00 E8 07 03 0F 08 1E 00 64 B0 1A",
    ]);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("test or calibration data"), "{stderr}");
}

#[test]
fn a_truncated_packet_exits_non_zero_naming_the_characteristic_and_the_lengths() {
    let stderr = exits_1_printing_nothing(&[
        "profile",
        "test",
        "and-ua-651ble",
        "--payload",
        "03 02 03 04 05 06 07",
    ]);
    assert!(
        stderr.contains("Blood Pressure Measurement (0x2A35): truncated: 7 byte(s)")
            && stderr.contains("need 14"),
        "{stderr}"
    );
}

#[test]
fn a_payload_that_is_not_hex_is_refused_with_the_expected_form() {
    let stderr = run_fails(&["profile", "test", "nonin-3230", "--payload", "00 FF 7"]);
    assert!(
        stderr.contains("not hex bytes") && stderr.contains("write them like"),
        "{stderr}"
    );
}

#[test]
fn intermediate_cuff_pressure_decodes_but_never_becomes_an_observation() {
    let stderr = exits_1_printing_nothing(&[
        "profile",
        "test",
        "and-ua-651ble",
        "--characteristic",
        "2A36",
        "--payload",
        "00 D7 F0 00 00 00 00",
    ]);
    assert!(
        stderr.contains("Intermediate Cuff Pressure (0x2A36), cuff pressure 21.5 mm[Hg]")
            && stderr.contains("never becomes an Observation"),
        "{stderr}"
    );
}

#[test]
fn a_characteristic_the_profile_does_not_decode_is_a_usage_error() {
    let stderr = run_fails(&[
        "profile",
        "test",
        "nonin-3230",
        "--characteristic",
        "2A35",
        "--payload",
        "00 61 00 48 00",
    ]);
    assert!(
        stderr.contains("decodes characteristic 2A5E, not 2A35"),
        "{stderr}"
    );
    // Its own characteristic, in any spelling, is accepted.
    run_ok(&[
        "profile",
        "test",
        "nonin-3230",
        "--characteristic",
        "00002a5e-0000-1000-8000-00805f9b34fb",
        "--payload",
        "00 61 00 48 00",
    ]);
    // And so is its second one: the Nonin 3230 profile also maps PLX Continuous.
    run_ok(&[
        "profile",
        "test",
        "nonin-3230",
        "--characteristic",
        "2A5F",
        "--payload",
        "00 60 00 46 00",
    ]);
}

#[test]
fn intermediate_temperature_decodes_but_never_becomes_an_observation() {
    let stderr = exits_1_printing_nothing(&[
        "profile",
        "test",
        "standard-thermometer",
        "--characteristic",
        "2A1E",
        "--payload",
        "00 C4 09 00 FE",
    ]);
    assert!(
        stderr.contains("Intermediate Temperature (0x2A1E), temperature 25.00 Cel")
            && stderr.contains("never becomes an Observation"),
        "{stderr}"
    );
}

#[test]
fn the_battery_level_becomes_a_device_observation_coded_with_mdc_only() {
    for profile in [
        "and-ua-651ble",
        "omron-x4-smart",
        "nonin-3230",
        "standard-glucose-meter",
        "standard-thermometer",
        "standard-weight-scale",
        "standard-heart-rate",
        "polar-h10",
        "standard-body-composition",
    ] {
        let obs = decoded(profile, "55", &["--characteristic", "2A19"]);
        assert_eq!(obs.len(), 1, "{profile}");
        let o = &obs[0];
        assert_eq!(o["code"]["coding"].as_array().unwrap().len(), 1);
        assert_eq!(
            o["code"]["coding"][0]["system"],
            "urn:iso:std:iso:11073:10101"
        );
        assert_eq!(o["code"]["coding"][0]["code"], "67996");
        assert_eq!(number(&o["valueQuantity"]["value"]), "85");
        assert_eq!(o["valueQuantity"]["code"], "%");
        // Not a vital sign: only the PHD category, no vital-signs profile.
        let categories: Vec<&str> = o["category"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(categories, ["phd"], "{profile}");
        assert!(o["meta"]["profile"].is_null(), "{o}");
    }
}

#[test]
fn a_reserved_battery_level_is_refused_naming_the_characteristic() {
    // 101..=255 % are reserved.
    let stderr = exits_1_printing_nothing(&[
        "profile",
        "test",
        "standard-thermometer",
        "--characteristic",
        "2A19",
        "--payload",
        "65",
    ]);
    assert!(
        stderr.contains("Battery Level (0x2A19)") && stderr.contains("reserved"),
        "{stderr}"
    );
}

#[test]
fn the_heart_rate_profiles_turn_a_strap_notification_into_one_heart_rate() {
    // The profiles' example: 72 /min, sensor contact, one RR interval.
    for profile in ["polar-h10", "standard-heart-rate"] {
        let obs = observations(profile, "16 48 00 04");
        assert_eq!(obs.len(), 1, "{profile}: RR intervals are not sent");
        assert_eq!(obs[0]["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(number(&obs[0]["valueQuantity"]["value"]), "72");
        assert_eq!(obs[0]["valueQuantity"]["code"], "/min");
    }
}

#[test]
fn the_body_composition_profile_example_gives_one_observation_per_mapped_kind() {
    // The profile's example: every field of the SIG layout, SI units.
    let obs = decoded(
        "standard-body-composition",
        "FE 0F D6 00 E7 07 0C 19 0E 1E 2D 02 80 1C B6 01 20 1A 40 2B 30 27 70 1F 88 13 B0 36 D6 06",
        &[],
    );
    let got: Vec<(String, String)> = obs
        .iter()
        .map(|o| {
            (
                o["code"]["coding"][0]["code"].as_str().unwrap().to_string(),
                number(&o["valueQuantity"]["value"]),
            )
        })
        .collect();
    let want = [
        ("41982-0", "21.4"),
        ("73965-6", "43.8"),
        ("73964-9", "33.440"),
        ("101683-1", "40.240"),
        ("29463-7", "70.000"),
        ("8302-2", "175.0"),
    ];
    assert_eq!(
        got,
        want.map(|(c, v)| (c.to_string(), v.to_string())),
        "basal metabolism, fat free and soft lean mass and impedance are not sent"
    );
}
