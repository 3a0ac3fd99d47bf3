//! End-to-end tests of numbers the gateway cannot honour: `iomt-gateway run` with a
//! configuration value too large for the clock, the allocator or the channels exits at
//! once with a message naming the key and its allowed range, instead of aborting on an
//! overflow, hanging, or starting with a limit it cannot keep.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::config::Config;
use common::{run_config, texts};

const PATIENT: &str = "MRN-NUMBERS-1";
const HUGE: &str = "9223372036854775807";
const TWO_TO_61: &str = "2305843009213693952";

/// Where a value goes in the configuration.
enum Place {
    Gateway,
    Outbox,
    FileUplink,
    FhirUplink,
    Mqtt,
}

/// The configuration with `key = value` placed at `place`.
fn config(dir: &Path, place: &Place, key: &str, value: &str) -> std::path::PathBuf {
    let line = format!("{key} = {value}");
    let mut c = Config::new(dir, "kit-numbers-1", PATIENT)
        .driver("[sim]\nenabled = true\ninterval_secs = 0.05\nmax_readings = 20")
        .log("info");
    c = match place {
        Place::Gateway | Place::FileUplink => c,
        Place::Outbox => c.outbox(&line),
        Place::FhirUplink => c.uplink(&format!(
            "kind = \"fhir\"\nname = \"fhir\"\nbase_url = \"http://127.0.0.1:9/fhir\"\n{line}"
        )),
        Place::Mqtt => c.driver(&format!("[mqtt]\nenabled = true\nport = 9\n{line}")),
    };
    c = if matches!(place, Place::FileUplink) {
        c.uplink(&format!(
            "kind = \"file\"\ndir = \"{}/out\"\n{line}",
            dir.display()
        ))
    } else {
        c.file_uplink(&dir.join("out"))
    };
    let path = c.write();
    if matches!(place, Place::Gateway) {
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "[gateway]\n",
            &format!("[gateway]\n{line}\n"),
            1,
        );
        std::fs::write(&path, text).unwrap();
    }
    path
}

/// Runs the daemon on `config` for at most `limit`; its exit status (None: still running,
/// then killed) and its stderr.
fn run_for(config: &Path, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
    let mut child = run_config(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = common::DaemonGuard(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (status, texts(&out).1)
}

#[test]
fn run_refuses_each_number_too_large_naming_the_key_and_its_range() {
    let cases = [
        (
            Place::Gateway,
            "channel_capacity",
            TWO_TO_61,
            "gateway.channel_capacity",
        ),
        (
            Place::Outbox,
            "max_batch_rows",
            TWO_TO_61,
            "outbox.max_batch_rows",
        ),
        (Place::Outbox, "max_age_days", "2e14", "outbox.max_age_days"),
        (
            Place::Outbox,
            "commit_window_ms",
            HUGE,
            "outbox.commit_window_ms",
        ),
        (Place::FhirUplink, "timeout_secs", HUGE, "timeout_secs"),
        (
            Place::FhirUplink,
            "max_backoff_secs",
            HUGE,
            "max_backoff_secs",
        ),
        (Place::FileUplink, "batch_size", HUGE, "batch_size"),
        (Place::Mqtt, "max_in_flight", HUGE, "mqtt.max_in_flight"),
        (
            Place::Mqtt,
            "max_payload_bytes",
            HUGE,
            "mqtt.max_payload_bytes",
        ),
        (Place::Mqtt, "keep_alive_secs", HUGE, "mqtt.keep_alive_secs"),
        (
            Place::Mqtt,
            "dead_letter_limit",
            HUGE,
            "mqtt.dead_letter_limit",
        ),
        (
            Place::Mqtt,
            "reconnect_max_ms",
            HUGE,
            "mqtt.reconnect_max_ms",
        ),
    ];
    let mut wrong = Vec::new();
    for (place, key, value, named) in &cases {
        let tmp = tempfile::tempdir().unwrap();
        common::write_keys(tmp.path());
        let path = config(tmp.path(), place, key, value);
        let (status, stderr) = run_for(&path, Duration::from_secs(10));
        let refused = status.is_some_and(|s| s.code() == Some(1))
            && stderr.contains(named)
            && stderr.contains("between");
        if !refused {
            let tail: String = stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ");
            wrong.push(format!("{key} = {value}: {status:?}: {tail}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused with the key and its range:\n{}",
        wrong.join("\n")
    );
}
