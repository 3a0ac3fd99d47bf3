//! End-to-end tests of the one-shot CLI commands: `profile check`, `profile test`, `--help`.

mod common;

use common::{root, run, run_fails, run_ok, texts, validate_fhir};

#[test]
fn shipped_profiles_pass_profile_check() {
    let stdout = run_ok(&["profile", "check", "device-profiles"]);
    assert!(stdout.contains("all valid"), "{stdout}");
}

#[test]
fn profile_check_without_paths_checks_the_profiles_directory() {
    let stdout = run_ok(&["profile", "check"]);
    assert!(
        stdout.contains("device-profiles/sim-bp-cuff.toml"),
        "{stdout}"
    );
}

/// Each broken fixture starts with `# expect: LINE: TEXT`: `profile check` must exit 1 and
/// print `FILE:LINE: ...TEXT...`.
#[test]
fn each_broken_profile_fails_with_its_file_and_line() {
    let dir = root().join("tests/fixtures/profiles/broken");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks `# expect:`", path.display()));
        let (line, message) = expect.split_once(": ").unwrap();
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let out = run(&["profile", "check", &rel]);
        let (_, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{rel}: {stderr}");
        let wanted_prefix = format!("{rel}:{line}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&wanted_prefix) && l.contains(message)),
            "{rel}: expected a line `{wanted_prefix}...{message}...`, got:\n{stderr}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} fixtures");
}

#[test]
fn profile_check_reports_every_broken_file_in_a_directory() {
    let out = run(&[
        "profile",
        "check",
        "tests/fixtures/profiles/broken",
        "device-profiles",
    ]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "problem(s) in 7 of {} profile file(s)",
            7 + shipped_profile_count()
        )),
        "{stderr}"
    );
    // Valid files are still listed as ok.
    assert!(stdout.contains("sim-scale"), "{stdout}");
}

/// The number of profile files shipped in `device-profiles/`.
fn shipped_profile_count() -> usize {
    std::fs::read_dir(root().join("device-profiles"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count()
}

#[test]
fn profile_test_prints_valid_fhir_for_a_simulator_payload() {
    let stdout = run_ok(&[
        "profile",
        "test",
        "sim-bp-cuff",
        "--payload",
        r#"{"systolic":120,"diastolic":80,"pulse_rate":64}"#,
    ]);
    let obs: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(obs.len(), 2);
    assert!(stdout.contains("85354-9") && stdout.contains("8480-6") && stdout.contains("8462-4"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("obs.json");
    std::fs::write(&file, &stdout).unwrap();
    let (ok, report) = validate_fhir(&[std::path::Path::new("--observations-array"), &file]);
    assert!(ok, "{report}");
}

#[test]
fn profile_test_decodes_a_serial_line_and_a_mqtt_json_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("masimo.toml");
    std::fs::write(
        &serial,
        r#"id = "test-masimo"
name = "Masimo ASCII 1"
manufacturer = "Masimo"
model = "Rad-8"
[serial]
baud = 9600
[serial.line]
regex = '^(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d) .*SPO2=(?P<spo2>[-\d]+)%? BPM=(?P<bpm>[-\d]+)'
timestamp_captures = ["date", "time"]
timestamp_format = "%m/%d/%y %H:%M:%S"
[[field]]
name = "spo2"
vital = "spo2"
no_reading = ["---"]
[[field]]
name = "bpm"
vital = "pulse_rate_oximetry"
capture = "bpm"
no_reading = ["---"]
"#,
    )
    .unwrap();
    let stdout = run_ok(&[
        "profile",
        "test",
        serial.to_str().unwrap(),
        "--time-zone",
        "Europe/Berlin",
        "--payload",
        "02/15/24 10:41:03 SN=0000012345 SPO2=097% BPM=072 PI=01.23% ALARM=0000 EXC=000000",
    ]);
    assert!(
        stdout.contains("\"effectiveDateTime\": \"2024-02-15T09:41:03Z\""),
        "{stdout}"
    );
    assert!(stdout.contains("\"value\": 97"), "{stdout}");

    let mqtt = tmp.path().join("esp32.toml");
    std::fs::write(
        &mqtt,
        r#"id = "test-esp32"
name = "ESP32 sensor"
manufacturer = "Generic"
model = "ESP32"
[mqtt]
topic = "home/+/vitals"
[mqtt.json]
device_id = "/id"
timestamp = "/ts"
[[field]]
name = "temp"
vital = "body_temperature"
pointer = "/temp"
"#,
    )
    .unwrap();
    let stdout = run_ok(&[
        "profile",
        "test",
        mqtt.to_str().unwrap(),
        "--payload",
        r#"{"id":"esp-1","ts":"2024-02-15T10:41:03+01:00","temp":36.60}"#,
    ]);
    assert!(
        stdout.contains("\"value\": 36.60"),
        "precision kept: {stdout}"
    );
    assert!(stdout.contains("\"code\": \"Cel\""));
}

#[test]
fn profile_test_refuses_a_payload_that_does_not_decode() {
    let stderr = run_fails(&["profile", "test", "sim-scale", "--payload", "not json"]);
    assert!(
        stderr.contains("does not decode with profile `sim-scale`"),
        "{stderr}"
    );

    let stderr = run_fails(&[
        "profile",
        "test",
        "sim-scale",
        "--payload",
        "{}",
        "--characteristic",
        "2A9D",
    ]);
    assert!(
        stderr.contains("--characteristic applies to BLE profiles only"),
        "{stderr}"
    );

    run_fails(&["profile", "test", "no-such-profile", "--payload", "{}"]);
}

#[test]
fn every_command_explains_itself_in_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["demo", "--help"],
        vec!["profile", "--help"],
        vec!["profile", "check", "--help"],
        vec!["profile", "test", "--help"],
    ] {
        let stdout = run_ok(&args);
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let (stdout, _) = texts(&run(&["demo", "--help"]));
    assert!(
        stdout.contains("--for") && stdout.contains("--out"),
        "{stdout}"
    );
}

#[test]
fn golden_observations_are_valid_fhir_for_the_independent_validator() {
    let dir = root().join("gateway/tests/golden");
    let files: Vec<_> = common::json_files(&dir);
    assert!(files.len() >= 17, "golden files missing");
    let flag = std::path::Path::new("--observations-array");
    let args: Vec<&std::path::Path> = files.iter().flat_map(|f| [flag, f.as_path()]).collect();
    let (ok, report) = validate_fhir(&args);
    assert!(ok, "{report}");
    assert!(report.contains(", 0 failed"), "{report}");
}

#[test]
fn the_validator_accepts_an_mdc_only_code_for_the_battery_charge_alone() {
    let golden = root().join("gateway/tests/golden/kind-battery.json");
    let text = std::fs::read_to_string(&golden).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let check = |name: &str, json: &str| {
        let file = tmp.path().join(name);
        std::fs::write(&file, json).unwrap();
        validate_fhir(&[std::path::Path::new("--observations-array"), &file])
    };
    let (ok, report) = check("battery.json", &text);
    assert!(ok, "{report}");
    // Another MDC code without LOINC (here: SpO2) is not a device measurement.
    let (ok, report) = check("spo2-mdc-only.json", &text.replace("67996", "150456"));
    assert!(!ok && report.contains("no LOINC"), "{report}");
    // The battery charge is no vital sign.
    let vital = text.replace(
        r#""system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
            "code": "phd","#,
        r#""system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs","#,
    );
    assert_ne!(vital, text);
    let (ok, report) = check("battery-vital.json", &vital);
    assert!(!ok && report.contains("not a vital sign"), "{report}");
}
