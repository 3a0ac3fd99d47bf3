//! End-to-end tests of `iomt-gateway run`: configuration, keys, signals and logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::config::Config;
use common::{fails, run_config, texts, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PATIENT: &str = "MRN-TEST-4711";

/// A configuration with the simulator and a file uplink to `dir/out`, `extra` appended
/// after `[log]`.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    Config::new(dir, "kit-test-1", PATIENT)
        .time_zone("Europe/Berlin")
        .driver(
            "[sim]\nenabled = true\ninterval_secs = 0.05\nnan_probability = 0.05\nout_of_range_probability = 0.05",
        )
        .uplink(&format!(
            "kind = \"file\"\ndir = \"{}/out\"\nbatch_size = 10",
            dir.display()
        ))
        .log("debug")
        .append(extra)
        .write()
}

/// A temp dir with the keys and the configuration (`extra` appended after `[log]`).
fn configured(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let config = write_config(tmp.path(), extra);
    (tmp, config)
}

#[test]
fn run_stops_cleanly_on_sigterm_flushing_its_last_batch_and_never_logs_the_patient() {
    let (tmp, config) = configured("");
    let child = run_config(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = common::DaemonGuard(child.id());
    let out_dir = tmp.path().join("out");
    wait_until(Duration::from_secs(20), "the first bundle", || {
        !common::json_files(&out_dir).is_empty()
    });

    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        sent.elapsed()
    );
    let (stdout, stderr) = texts(&output);
    assert!(
        output.status.success(),
        "exit {:?}\n{stderr}",
        output.status
    );
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("pipeline drained"), "{stderr}");

    // Every reading the pipeline took in ended up in a Bundle (the last batch was flushed).
    let observations = common::observations_in(&out_dir);
    let drained = stderr
        .lines()
        .find(|l| l.contains("pipeline drained"))
        .unwrap();
    let reported: usize = drained
        .split("observations=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no observation count in `{drained}`"));
    assert_eq!(observations.len(), reported);

    // Healthcare data rules: no patient id, no device serial, no measured value in logs.
    let logs = format!("{stdout}{stderr}");
    assert!(!logs.contains(PATIENT), "the patient id was logged");
    assert!(!logs.contains("SIM-SIM"), "a device serial was logged");
    assert!(!logs.contains("valueQuantity"), "an observation was logged");
    let bundles: String = common::json_files(&out_dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!bundles.contains(PATIENT), "the patient id left in clear");
}

#[test]
fn run_refuses_a_key_file_readable_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_with_mode(
        &tmp.path().join("pseudonym.key"),
        common::random_key(),
        0o644,
    );
    let config = write_config(tmp.path(), "");
    let stderr = fails(&mut run_config(&config));
    assert!(
        stderr.contains("readable by group or others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn run_reports_every_configuration_problem_at_once() {
    let (_tmp, config) = configured("");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("Europe/Berlin", "Mars/Olympus")
        .replace("interval_secs = 0.05", "interval_secs = -1")
        .replace("batch_size = 10", "batch_size = 0");
    std::fs::write(&config, text).unwrap();
    let stderr = fails(&mut run_config(&config));
    for key in [
        "gateway.time_zone",
        "sim.interval_secs",
        "uplinks[0]: batch_size",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
}

#[test]
fn run_refuses_unknown_keys_and_a_missing_file_clearly() {
    let (_tmp, config) = configured("colour = \"blue\"");
    let stderr = fails(&mut run_config(&config));
    assert!(stderr.contains("colour"), "{stderr}");

    let stderr = common::run_fails(&["run", "--config", "/nonexistent/gateway.toml"]);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn environment_variables_override_the_configuration_file() {
    let (_tmp, config) = configured("");
    let stderr = fails(run_config(&config).env("IOMT_GATEWAY__SIM__PROFILES", "no-such-profile"));
    assert!(stderr.contains("`no-such-profile`"), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_profiles_directory_naming_file_and_line() {
    let (_tmp, config) = configured("");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{}/device-profiles", common::root().display()),
        &format!(
            "{}/tests/fixtures/profiles/broken",
            common::root().display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let stderr = fails(&mut run_config(&config));
    assert!(stderr.contains("duplicate-field.toml:14:"), "{stderr}");
}
