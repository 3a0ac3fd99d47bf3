//! The root configuration's tests: defaults, unknown keys, every problem at once,
//! ranges, the environment.

use super::testing::{assert_problems, MINIMAL};
use super::*;
use crate::outbox::WhenFull;

#[test]
fn the_example_configuration_is_valid() {
    let text = include_str!("../../../gateway.example.toml");
    let c = Config::from_toml_str(text, "gateway.example.toml").unwrap();
    assert_eq!(c.uplinks.len(), 1);
    assert_eq!(c.uplinks[0].batch_size, 100);
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let c = Config::from_toml_str(MINIMAL, "test").unwrap();
    assert_eq!(c.uplinks[0].name, "file");
    assert_eq!(c.outbox.max_bytes, 512 * 1024 * 1024);
    assert_eq!(c.outbox.when_full, WhenFull::EvictOldest);
    assert_eq!(c.out_of_range, OutOfRange::Flag);
    assert!(c.sim.is_none());
    assert_eq!(c.zone, Zone::GatewayLocal);
}

#[test]
fn unknown_keys_are_refused_naming_the_key() {
    let text = format!("{MINIMAL}\n[sim]\nenabeld = true\n");
    let err = Config::from_toml_str(&text, "test").unwrap_err();
    assert!(err.to_string().contains("enabeld"), "{err}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = MINIMAL.replace("kit-1", "").replace("MRN-1", "")
        + "[sim]\ninterval_secs = 0\nnan_probability = 2\n[devices.cuff]\ntime_zone = \"Mars/Olympus\"\n";
    assert_problems(
        &text,
        &[
            "gateway.id",
            "patient.id",
            "sim.interval_secs",
            "sim.nan_probability",
            "devices.cuff.time_zone",
        ],
    );
}

/// Each number too large for the gateway is refused naming its key and its range
/// (before, they aborted on an overflow, never committed, or ran with a limit that
/// could not be kept); the largest allowed value is accepted.
#[test]
fn every_number_out_of_its_range_is_refused_naming_key_and_range() {
    const BIG: &str = "9223372036854775807";
    let fhir = "[[uplinks]]\nkind = \"fhir\"\nbase_url = \"https://fhir.example.org\"\n";
    let mqtt_up =
        "[[uplinks]]\nkind = \"mqtt\"\nurl = \"mqtt://localhost\"\ntopic = \"t/{gateway}\"\n";
    let port = "[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"x\"\n";
    let cases: Vec<(String, &str, String)> = vec![
        (
            MINIMAL.replace(
                "id = \"kit-1\"",
                &format!("id = \"kit-1\"\nchannel_capacity = {BIG}"),
            ),
            "gateway.channel_capacity",
            "between 1 and 65536".into(),
        ),
        (
            format!("{MINIMAL}[outbox]\nmax_batch_rows = {BIG}\n"),
            "outbox.max_batch_rows",
            "between 1 and 100000".into(),
        ),
        (
            format!("{MINIMAL}[outbox]\ncommit_window_ms = {BIG}\n"),
            "outbox.commit_window_ms",
            "between 0 and 10000".into(),
        ),
        (
            format!("{MINIMAL}[outbox]\nmax_age_days = 2e14\n"),
            "outbox.max_age_days",
            "and 36500".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\nkeep_alive_secs = {BIG}\n"),
            "mqtt.keep_alive_secs",
            "between 5 and 65535".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\nmax_payload_bytes = {BIG}\n"),
            "mqtt.max_payload_bytes",
            "between 1 and 16777216".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\nmax_in_flight = {BIG}\n"),
            "mqtt.max_in_flight",
            "between 1 and 65535".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\ndead_letter_limit = {BIG}\n"),
            "mqtt.dead_letter_limit",
            "between 1 and 1000000".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\nreconnect_initial_ms = {BIG}\n"),
            "mqtt.reconnect_initial_ms",
            "between 1 and 3600000".into(),
        ),
        (
            format!("{MINIMAL}[mqtt]\nenabled = true\nreconnect_max_ms = {BIG}\n"),
            "mqtt.reconnect_max_ms",
            "and 86400000".into(),
        ),
        (
            format!("{MINIMAL}[ble]\nreconnect_max_ms = {BIG}\n"),
            "ble.reconnect_max_ms",
            "and 86400000".into(),
        ),
        (
            format!("{MINIMAL}[serial]\nreconnect_initial_ms = {BIG}\n"),
            "serial.reconnect_initial_ms",
            "between 1 and 3600000".into(),
        ),
        (
            format!("{MINIMAL}{port}min_interval_ms = {BIG}\n"),
            "serial.ports[0].min_interval_ms",
            "between 0 and 86400000".into(),
        ),
        (
            format!("{MINIMAL}{fhir}timeout_secs = {BIG}\n"),
            "uplinks[1]: timeout_secs",
            "between 1 and 3600".into(),
        ),
        (
            format!("{MINIMAL}{fhir}max_backoff_secs = {BIG}\n"),
            "uplinks[1]: max_backoff_secs",
            "between 1 and 86400".into(),
        ),
        (
            format!("{MINIMAL}{fhir}batch_size = {BIG}\n"),
            "uplinks[1]: batch_size",
            "between 1 and 10000".into(),
        ),
        (
            format!("{MINIMAL}{mqtt_up}timeout_secs = {BIG}\n"),
            "uplinks[1]: timeout_secs",
            "between 1 and 3600".into(),
        ),
        (
            format!("{MINIMAL}{mqtt_up}max_backoff_secs = 0\n"),
            "uplinks[1]: max_backoff_secs",
            "between 1 and 86400".into(),
        ),
        (
            MINIMAL.replace(
                "dir = \"/tmp/out\"",
                &format!("dir = \"/tmp/out\"\nbatch_size = {BIG}"),
            ),
            "uplinks[0]: batch_size",
            "between 1 and 10000".into(),
        ),
    ];
    for (text, key, range) in &cases {
        let msg = Config::from_toml_str(text, "test").unwrap_err().to_string();
        assert!(
            msg.contains(key) && msg.contains(range.as_str()),
            "`{key}` with `{range}` missing from {msg}"
        );
    }
    let largest = format!(
        "{}[outbox]\ncommit_window_ms = 10000\nmax_batch_rows = 100000\nmax_age_days = 36500\n[mqtt]\nenabled = true\nmax_in_flight = 65535\nkeep_alive_secs = 65535\nreconnect_max_ms = 86400000\n{fhir}timeout_secs = 3600\nmax_backoff_secs = 86400\nbatch_size = 10000\n",
        MINIMAL.replace("id = \"kit-1\"", "id = \"kit-1\"\nchannel_capacity = 65536")
    );
    let c = Config::from_toml_str(&largest, "test").unwrap();
    assert_eq!(c.outbox.commit_window, std::time::Duration::from_secs(10));
}

#[test]
fn environment_variables_override_the_file() {
    // A key no other test asserts on, so tests running in parallel are not disturbed.
    std::env::set_var("IOMT_GATEWAY__LOG__LEVEL", "iomt_gateway=trace");
    let c = Config::from_toml_str(MINIMAL, "test");
    std::env::remove_var("IOMT_GATEWAY__LOG__LEVEL");
    assert_eq!(c.unwrap().log_level, "iomt_gateway=trace");
}

/// Errors about the patient id name its key and line, never its value (before, a TOML
/// syntax error quoted the line and a type error the value).
#[test]
fn a_mistyped_patient_id_is_reported_by_key_and_line_never_by_value() {
    for (text, needle) in [
        (MINIMAL.replace("\"MRN-1\"", "\"MRN-1"), "line "),
        (
            MINIMAL.replace("\"MRN-1\"", "[\"MRN-1\"]"),
            "patient.id (line ",
        ),
        (
            MINIMAL.replace("\"MRN-1\"", "{ mrn = \"MRN-1\" }"),
            "patient.id (line ",
        ),
    ] {
        let err = Config::from_toml_str(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("MRN-1"), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}
