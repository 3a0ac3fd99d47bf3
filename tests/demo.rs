//! End-to-end test of `iomt-gateway demo`: the README's first command.

mod common;

use common::{observations_in, run_fails, run_ok, validate_fhir};

#[test]
fn demo_writes_bundles_that_an_independent_fhir_validator_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("bundles");
    let stdout = run_ok(&[
        "demo",
        "--for",
        "3",
        "--interval",
        "0.1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);

    // The console view and the summary.
    assert!(stdout.contains("Blood pressure"), "{stdout}");
    assert!(
        stdout.contains("Summary") && stdout.contains("bundles written"),
        "{stdout}"
    );

    let bundles = common::json_files(&out_dir);
    assert!(!bundles.is_empty(), "no bundle written");
    let (ok, report) = validate_fhir(&[&out_dir]);
    assert!(ok, "{report}");
    assert!(report.contains(", 0 failed"), "{report}");

    let observations = observations_in(&out_dir);
    assert!(
        observations.len() >= 12,
        "only {} observations",
        observations.len()
    );
    let mut kinds = std::collections::BTreeSet::new();
    for o in &observations {
        let codings = o["code"]["coding"].as_array().unwrap();
        let loinc = codings
            .iter()
            .find(|c| c["system"] == "http://loinc.org")
            .expect("a LOINC coding");
        kinds.insert(loinc["code"].as_str().unwrap().to_string());
        assert!(
            codings.iter().all(|c| c["system"].is_string()),
            "every coding has a system: {o}"
        );
        let quantities = std::iter::once(&o["valueQuantity"]).chain(
            o["component"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| &c["valueQuantity"]),
        );
        for q in quantities.filter(|q| !q.is_null()) {
            assert_eq!(q["system"], "http://unitsofmeasure.org", "{o}");
            assert!(q["code"].is_string(), "{o}");
        }
        assert!(o["effectiveDateTime"].as_str().unwrap().ends_with('Z'));
    }
    // The whole sim kit flowed: BP panel, heart rate, SpO2, temperature, weight, glucose, respiration.
    for code in [
        "85354-9", "8867-4", "2708-6", "8310-5", "29463-7", "41653-7", "9279-1",
    ] {
        assert!(kinds.contains(code), "{code} missing from {kinds:?}");
    }
    // The simulated patient's identifier never appears: only its pseudonym.
    let all = std::fs::read_to_string(&bundles[0]).unwrap();
    assert!(!all.contains("demo-patient"));
    assert!(
        !all.contains("SIM-SIM-"),
        "device serial numbers never leave"
    );
}

#[test]
fn demo_without_out_creates_and_prints_a_fresh_directory() {
    let stdout = run_ok(&["demo", "--for", "1", "--interval", "0.2", "--quiet"]);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Bundles go to "))
        .expect("the output directory is printed");
    let dir = std::path::PathBuf::from(line.trim_start_matches("Bundles go to "));
    assert!(dir.is_dir(), "{}", dir.display());
    assert!(!common::json_files(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        !stdout.contains("Heart rate"),
        "--quiet hides the console view"
    );
}

#[test]
fn demo_refuses_a_nonsensical_duration() {
    let stderr = run_fails(&["demo", "--for", "0"]);
    assert!(stderr.contains("--for"), "{stderr}");
}

#[test]
fn demo_serial_reads_simulated_serial_devices_on_ptys_with_the_real_driver() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("bundles");
    let stdout = run_ok(&[
        "demo",
        "--serial",
        "--for",
        "3",
        "--interval",
        "0.2",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    let (ok, report) = validate_fhir(&[&out_dir]);
    assert!(ok, "{report}");
    let codes: std::collections::BTreeSet<String> = observations_in(&out_dir)
        .iter()
        .map(|o| o["code"]["coding"][0]["code"].as_str().unwrap().to_string())
        .collect();
    // SpO2 and pulse from the oximeters, weight, body fat and BMI from the Tanita.
    for code in ["2708-6", "8867-4", "29463-7", "41982-0", "39156-5"] {
        assert!(codes.contains(code), "{code} missing: {codes:?}");
    }
}
