//! End-to-end tests of the kit's health view: the real daemon's local status endpoint
//! (`/status`, `/metrics`, the technician page `/` in headless Chromium, its screenshot
//! kept in `target/test-artifacts/`), `iomt-gateway status` against it, the LAN
//! binding's bearer token, and what none of them may show (patient id, device addresses
//! and serials, measured values). `/metrics` is read by an independent parser, the
//! `prometheus_client` Python package (tests/requirements.txt).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::config::Config;
use common::privacy::{assert_free_of, assert_json_free_of, measured_values};
use common::running::Running;
use common::{gateway, observations_in, texts, validator_python, wait_until};
use iomt_testkit::bluez::{DeviceKind, DeviceSpec, PrivateBus, SimBluez};

const DEADLINE: Duration = Duration::from_secs(60);
const PATIENT: &str = "MRN-STATUS-7781";

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port` over HTTP/1.0: (status code, body).
fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Whether something answers on the port.
fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `iomt-gateway status [extra] --config config`: (exit code, stdout, stderr).
fn status_cli(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = gateway()
        .arg("status")
        .args(extra)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let (o, e) = texts(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

fn status_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = status_cli(config, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// `/metrics` parsed by `prometheus_client`: sample name{labels} → value.
fn parsed_metrics(text: &str, dir: &Path) -> BTreeMap<String, f64> {
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let out = Command::new(validator_python())
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python runs");
    let (o, e) = texts(&out);
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics: {e}\n{text}"
    );
    serde_json::from_str(&o).unwrap()
}

/// The decimal values (with a decimal point) of `values`: what text views that also show
/// counters (a table of counts, `/metrics`' sample values) are scanned for.
fn decimals(values: &[String]) -> Vec<String> {
    values.iter().filter(|v| v.contains('.')).cloned().collect()
}

/// `/metrics` without its sample values (counters and gauges, which may equal a measured
/// integer by chance): metric names, labels and comments, scanned for every secret.
fn metrics_labels(text: &str) -> String {
    text.lines()
        .map(|l| match l.starts_with('#') {
            true => l,
            false => l.rsplit_once(' ').map_or(l, |(head, _)| head),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn sim_config(dir: &Path, port: u16, max_readings: u64) -> PathBuf {
    common::write_keys(dir);
    Config::new(dir, "kit-status-1", PATIENT)
        .driver(&format!(
            "[sim]\nenabled = true\nprofiles = [\"sim-thermometer\", \"sim-pulse-oximeter\"]\ninterval_secs = 0.01\nmax_readings = {max_readings}"
        ))
        .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
        .file_uplink(&dir.join("out"))
        .append(&format!("\n[status]\nlisten = \"127.0.0.1:{port}\""))
        .write()
}

#[test]
fn after_the_simulator_ran_status_and_metrics_count_what_it_sent_and_name_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // 40 readings in all, 20 per device.
    let config = sim_config(tmp.path(), port, 40);
    let gw = Running::start(&config, &[], DEADLINE);
    let out = tmp.path().join("out");
    gw.wait_log("simulator reached its reading limit", 1);
    wait_until(DEADLINE, "every reading delivered", || {
        if !listening(port) {
            return false;
        }
        let s = status_json(&config);
        let sum = |key: &str| -> u64 {
            s["ingest"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i[key].as_u64().unwrap())
                .sum()
        };
        sum("readings") == 40
            && s["uplinks"][0]["backlog_rows"] == 0
            && s["uplinks"][0]["delivered"].as_u64() == Some(sum("observations"))
    });

    let status = status_json(&config);
    let g = &status["gateway"];
    assert_eq!(g["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(g["clock_synchronized"], true);
    assert!(g["disk_free_bytes"].as_u64().unwrap() > 0);
    assert!(g["outbox_bytes"].as_u64().unwrap() > 0);
    assert_eq!(g["dead_letters"], 0);
    let devices = status["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{status}");
    for d in devices {
        assert_eq!(d["transport"], "sim");
        assert_eq!(d["state"], "seen");
        assert_eq!(d["readings_24h"], 20);
        assert!(d["last_reading"].is_string() && d["last_seen"].is_string());
        assert!(d["signal_dbm"].is_null());
        let pseudonym = d["device"].as_str().unwrap();
        assert!(
            pseudonym.len() >= 16 && pseudonym.chars().all(|c| c.is_ascii_hexdigit()),
            "a pseudonym: {pseudonym}"
        );
    }
    let u = &status["uplinks"][0];
    assert_eq!(u["name"], "file");
    assert_eq!(u["state"], "ok");
    assert_eq!(u["backlog_rows"], 0);
    assert_eq!(u["consecutive_failures"], 0);
    assert!(u["last_delivery"].is_string());

    let (code, metrics) = http_get(port, "/metrics", None);
    assert_eq!(code, 200);
    let m = parsed_metrics(&metrics, tmp.path());
    for profile in ["sim-thermometer", "sim-pulse-oximeter"] {
        let key = |name: &str| format!("{name}{{profile={profile},transport=sim}}");
        assert_eq!(m[&key("iomt_gateway_readings_total")], 20.0, "{metrics}");
        assert_eq!(m[&key("iomt_gateway_devices_connected")], 0.0);
    }
    // The oximeter makes two Observations a reading (SpO2 and pulse rate).
    let observations: f64 = ["sim-thermometer", "sim-pulse-oximeter"]
        .iter()
        .map(|p| m[&format!("iomt_gateway_observations_total{{profile={p},transport=sim}}")])
        .sum();
    assert_eq!(observations, observations_in(&out).len() as f64);
    assert_eq!(
        m["iomt_gateway_delivered_observations_total{uplink=file}"],
        observations
    );
    assert_eq!(m["iomt_gateway_delivery_failures_total{uplink=file}"], 0.0);
    assert_eq!(m["iomt_gateway_backlog_rows{uplink=file}"], 0.0);
    assert_eq!(m["iomt_gateway_clock_synchronized{}"], 1.0);
    // Every commit is counted in the histogram, within its +Inf bucket.
    let commits = m["iomt_gateway_outbox_commit_seconds_count{}"];
    assert!(commits >= 1.0, "{metrics}");
    assert_eq!(
        m["iomt_gateway_outbox_commit_seconds_bucket{le=+Inf}"],
        commits
    );

    let (code, table, err) = status_cli(&config, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("sim-thermometer") && table.contains("just now"),
        "ages in words: {table}"
    );
    assert!(table.contains("file") && table.contains("ok"), "{table}");

    let (_, raw_status) = http_get(port, "/status", None);
    let log = gw.stop();
    let mut secrets = vec![
        PATIENT.to_string(),
        "kit-status-1".to_string(),
        "sim-thermometer-1".into(),
        "sim-pulse-oximeter-1".into(),
        "SIM-SIM-THERMOMETER-0001".into(),
        "SIM-SIM-PULSE-OXIMETER-0001".into(),
    ];
    let measured = measured_values(&out);
    assert!(
        measured.iter().any(|v| !v.contains('.')) && measured.iter().any(|v| v.contains('.')),
        "the test knows measured integers (SpO2, pulse) and decimals (temperature): {measured:?}"
    );
    let names = secrets.clone();
    secrets.extend(measured.iter().cloned());
    let status: serde_json::Value = serde_json::from_str(&raw_status).unwrap();
    assert_json_free_of("/status", &status, &secrets);
    assert_free_of("/metrics", &metrics_labels(&metrics), &secrets);
    // Counts in the table and sample values may equal an integer reading (60
    // Observations, a pulse of 60): only names and decimals there.
    let names_and_decimals = [names, decimals(&measured)].concat();
    assert_free_of("/metrics", &metrics, &names_and_decimals);
    assert_free_of("status", &table, &names_and_decimals);
    assert!(log.contains("status endpoint listening"), "{log}");
}

#[test]
fn status_says_the_gateway_is_not_running_when_nothing_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = sim_config(tmp.path(), port, 1);
    let (code, out, err) = status_cli(&config, &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("the gateway is not running"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn the_lan_binding_needs_a_token_file_and_refuses_requests_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = sim_config(tmp.path(), port, 1000);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:", "0.0.0.0:");
    std::fs::write(&config, &text).unwrap();
    let out = common::run_config(&config).output().unwrap();
    let (_, err) = texts(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("status.listen") && err.contains("status.token_file"),
        "{err}"
    );

    let token_file = tmp.path().join("status.token");
    common::write_with_mode(&token_file, "s3cret-token-for-the-lan\n", 0o644);
    let with_token = format!("{text}token_file = \"{}\"\n", token_file.display());
    std::fs::write(&config, &with_token).unwrap();
    let out = common::run_config(&config).output().unwrap();
    let (_, err) = texts(&out);
    assert!(!out.status.success(), "a readable token file is refused");
    assert!(err.contains("status.token"), "{err}");

    common::write_private(&token_file, "s3cret-token-for-the-lan\n");
    let gw = Running::start(&config, &[], DEADLINE);
    wait_until(DEADLINE, "the endpoint", || listening(port));
    for path in ["/status", "/metrics"] {
        assert_eq!(http_get(port, path, None).0, 401, "{path} without a token");
        assert_eq!(http_get(port, path, Some("wrong")).0, 401, "{path}");
        assert_eq!(
            http_get(port, path, Some("s3cret-token-for-the-lan")).0,
            200,
            "{path}"
        );
    }
    // The page holds no data: served without the token, it asks for it.
    let (code, page) = http_get(port, "/", None);
    assert_eq!(code, 200);
    assert!(!page.contains("sim-thermometer"), "{page}");
    let (code, table, err) = status_cli(&config, &[]);
    assert_eq!(code, 0, "status reads the token file: {err}");
    assert!(table.contains("sim-thermometer"), "{table}");
    gw.stop();
}

const CUFF: &str = "A0:00:00:00:00:01";
/// The signal the simulated cuff advertises at (dBm): no measured value nor count of
/// these tests reads 67.
const SIGNAL: i16 = -67;
/// 128/82 mmHg, MAP 97, pulse 72.
const BP_128: &str = "1E 80 00 52 00 61 00 DD 07 08 1A 09 0A 14 48 00 01 00 00";

/// The simulated BlueZ on a private bus under `dir`, with the cuff advertising at
/// [`SIGNAL`] and one 128/82 reading queued. Both must live as long as the test.
fn simulated_cuff(dir: &Path) -> (PrivateBus, SimBluez) {
    let bus = PrivateBus::start(dir).unwrap();
    let sim = SimBluez::start(bus.address()).unwrap();
    sim.add_device(DeviceSpec {
        address: CUFF.into(),
        name: "A&D_UA-651".into(),
        kind: DeviceKind::BloodPressure,
        battery: 80,
    });
    let bytes: Vec<u8> = BP_128
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    sim.queue(CUFF, 0x2A35, &bytes);
    sim.set_rssi(CUFF, SIGNAL);
    sim.advertise(CUFF);
    (bus, sim)
}

/// The daemon's BLE section for the cuff, reconnecting within half a second.
fn cuff_driver() -> String {
    format!(
        "[ble]\nadapter = \"hci0\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\n[[ble.devices]]\naddress = \"{CUFF}\"\nprofile = \"and-ua-651ble\"\n"
    )
}

#[test]
fn a_ble_cuff_that_went_away_shows_not_seen_with_its_last_seen_time_its_battery_and_its_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let (bus, sim) = simulated_cuff(tmp.path());
    common::write_keys(tmp.path());
    let port = free_port();
    let out = tmp.path().join("out");
    let config = Config::new(tmp.path(), "kit-status-ble", PATIENT)
        .driver(&cuff_driver())
        .file_uplink(&out)
        .append(&format!(
            "\n[status]\nlisten = \"127.0.0.1:{port}\"\nseen_within_secs = 2"
        ))
        .write();
    let gw = Running::start(
        &config,
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
        DEADLINE,
    );
    wait_until(DEADLINE, "the endpoint", || listening(port));
    let device = |config: &Path| status_json(config)["devices"][0].clone();
    assert_eq!(
        status_json(&config)["devices"].as_array().unwrap().len(),
        1,
        "the allow-listed cuff is listed before it shows up"
    );
    wait_until(DEADLINE, "the cuff connected", || {
        device(&config)["state"] == "connected"
    });
    wait_until(DEADLINE, "its reading", || {
        device(&config)["readings_24h"].as_u64() >= Some(2)
    });
    let connected = device(&config);
    assert_eq!(connected["battery_percent"], 80);
    assert_eq!(connected["transport"], "ble");
    assert_eq!(connected["profile"], "and-ua-651ble");
    assert_eq!(
        connected["signal_dbm"], SIGNAL,
        "the signal it advertised at before the connection: {connected}"
    );
    let signal_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(connected["signal_at"].clone()).expect("signal_at is a time");
    let first_seen: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(connected["last_seen"].clone()).unwrap();
    assert!(
        signal_at <= first_seen,
        "heard advertising before connected: {connected}"
    );

    sim.hang_up(CUFF);
    wait_until(DEADLINE, "the cuff not seen", || {
        device(&config)["state"] == "not seen"
    });
    let gone = device(&config);
    assert!(gone["last_seen"].is_string(), "{gone}");
    assert_eq!(
        gone["signal_dbm"], SIGNAL,
        "the last signal heard stays: {gone}"
    );
    assert_eq!(gone["signal_at"], connected["signal_at"], "{gone}");
    let (code, metrics) = http_get(port, "/metrics", None);
    assert_eq!(code, 200);
    let m = parsed_metrics(&metrics, tmp.path());
    assert_eq!(
        m["iomt_gateway_devices_connected{profile=and-ua-651ble,transport=ble}"],
        0.0
    );
    let pseudonym = gone["device"].as_str().unwrap();
    let gauge = format!(
        "iomt_gateway_device_signal_dbm{{device={pseudonym},profile=and-ua-651ble,transport=ble}}"
    );
    assert_eq!(m.get(&gauge), Some(&f64::from(SIGNAL)), "{gauge} in {m:?}");
    let (_, table, _) = status_cli(&config, &[]);
    assert!(table.contains("not seen"), "{table}");
    assert!(table.contains("SIGNAL"), "{table}");
    assert!(table.contains(&format!("{SIGNAL} dBm")), "{table}");
    let (_, raw_status) = http_get(port, "/status", None);
    gw.stop();
    let mut secrets = vec![
        PATIENT.to_string(),
        CUFF.to_string(),
        CUFF.replace(':', "_"),
        format!("SN-{}", CUFF.replace(':', "")),
    ];
    let measured = measured_values(&out);
    // 128/82 mmHg, MAP 97, pulse 72: integers, found as whole numbers.
    for v in ["128", "82", "97", "72"] {
        assert!(measured.contains(&v.to_string()), "{v} in {measured:?}");
    }
    // The battery charge (80 %) is an Observation too, shown on purpose.
    secrets.extend(measured.into_iter().filter(|v| v != "80"));
    let status: serde_json::Value = serde_json::from_str(&raw_status).unwrap();
    assert_json_free_of("/status", &status, &secrets);
    assert_free_of("/metrics", &metrics_labels(&metrics), &secrets);
    // No counter of this short test reaches 72 (one cuff, a few readings; ages in words).
    assert_free_of("status", &table, &secrets);
}

/// Loads `url` in headless Chromium (Debian's `chromium`, installed by `.ci/run`) and
/// returns the DOM once its script ran; keeps a screenshot at `screenshot`.
fn chromium(url: &str, screenshot: &Path) -> String {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1200,900",
        "--virtual-time-budget=5000",
    ];
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args(base)
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs (Debian package `chromium`, installed by .ci/run)");
        let (o, e) = texts(&out);
        assert!(out.status.success(), "chromium failed: {e}");
        o
    };
    run(&[format!("--screenshot={}", screenshot.display())]);
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    run(&["--dump-dom".to_string()])
}

#[test]
fn the_technician_page_in_headless_chromium_shows_the_devices_the_uplink_and_the_kit() {
    let tmp = tempfile::tempdir().unwrap();
    let (bus, _sim) = simulated_cuff(tmp.path());
    common::write_keys(tmp.path());
    let port = free_port();
    let out = tmp.path().join("out");
    let config = Config::new(tmp.path(), "kit-status-page", PATIENT)
        .driver(&format!(
            "[sim]\nenabled = true\nprofiles = [\"sim-thermometer\"]\ninterval_secs = 0.05\nmax_readings = 10\n\n{}",
            cuff_driver()
        ))
        .file_uplink(&out)
        .append(&format!("\n[status]\nlisten = \"127.0.0.1:{port}\""))
        .write();
    let gw = Running::start(
        &config,
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
        DEADLINE,
    );
    wait_until(
        DEADLINE,
        "the cuff connected with its signal, the simulator's ten readings taken, all delivered",
        || {
            if !listening(port) {
                return false;
            }
            let s = status_json(&config);
            let devices = s["devices"].as_array().unwrap();
            let taken = devices.iter().any(|d| {
                d["profile"] == "and-ua-651ble"
                    && d["battery_percent"] == 80
                    && d["signal_dbm"] == SIGNAL
            }) && devices
                .iter()
                .any(|d| d["profile"] == "sim-thermometer" && d["readings_24h"] == 10);
            let handed: u64 = s["ingest"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["observations"].as_u64())
                .sum();
            // The status endpoint asks the outbox before it reads the model, so one answer
            // can pair a backlog counted before a commit with deliveries counted after it.
            // The outbox's own counts, read after the model's: every Observation handed to
            // it delivered (and its row deleted), none waiting; the page then shows 0 rows.
            taken
                && handed > 0
                && common::try_outbox_status(&config).is_ok_and(|o| {
                    common::uplink_named(&o, "file").is_some_and(|u| {
                        u["queued"] == 0 && u["delivered"].as_u64() >= Some(handed)
                    })
                })
        },
    );

    let (code, html) = http_get(port, "/", None);
    assert_eq!(code, 200);
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page loads nothing from outside: {external}"
        );
    }
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("technician-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let dom = chromium(&format!("http://127.0.0.1:{port}/"), &screenshot);
    for shown in [
        "sim-thermometer",
        "and-ua-651ble",
        "80 %",
        format!("{SIGNAL} dBm").as_str(),
        "file",
        "0 rows",
        "clock synchronized",
        env!("CARGO_PKG_VERSION"),
    ] {
        assert!(dom.contains(shown), "the page shows `{shown}`:\n{dom}");
    }
    assert!(
        dom.contains(">connected<") || dom.contains(">seen<"),
        "the cuff's state: {dom}"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "no error shown: {dom}"
    );
    gw.stop();
    let mut secrets = vec![
        PATIENT.to_string(),
        CUFF.to_string(),
        "sim-thermometer-1".into(),
        "SIM-SIM-THERMOMETER-0001".into(),
    ];
    let measured = measured_values(&out);
    assert!(measured.contains(&"72".to_string()), "{measured:?}");
    // The simulated thermometer's decimals and the cuff's 128/82/97/72; the page's
    // counts stay below them (10 readings, a few rows, ages in words).
    // The cuff's battery charge (80 %) is an Observation too, shown on purpose.
    secrets.extend(
        measured
            .into_iter()
            .filter(|v| v.contains('.') || (v.len() > 1 && v != "80")),
    );
    assert_free_of("the page", &dom, &secrets);
}

#[test]
fn a_quiet_kit_sends_heartbeats_to_the_fhir_server_that_name_nobody() {
    let kit = common::kit::Kit::new();
    let port = free_port();
    let config = kit
        .config_for("kit-status-beat", PATIENT)
        .driver("[sim]\nenabled = true\nprofiles = [\"sim-thermometer\"]\ninterval_secs = 0.01\nmax_readings = 3")
        .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
        .uplink(&kit.fhir_uplink(1))
        .append(&format!(
            "\n[status]\nlisten = \"127.0.0.1:{port}\"\nheartbeat_interval_secs = 1"
        ))
        .write();
    let gw = Running::start(&config, &[], DEADLINE);
    wait_until(DEADLINE, "the 3 readings stored on the server", || {
        kit.server.with_store(|s| s.observations.len()) == 3
    });
    gw.wait_log("simulator reached its reading limit", 1);
    let after_readings = kit.server.with_store(|s| s.requests);
    // Nothing more is measured: only heartbeats reach the server now.
    wait_until(DEADLINE, "two heartbeats", || {
        kit.server.with_store(|s| s.requests) >= after_readings + 2
    });
    let status = status_json(&config);
    assert!(
        status["uplinks"][0]["last_heartbeat"].is_string(),
        "{status}"
    );
    let (observations, devices) = kit.server.with_store(|s| {
        (
            s.observations.len(),
            serde_json::to_string(&s.devices).unwrap(),
        )
    });
    assert_eq!(observations, 3, "heartbeats carry no Observation");
    assert!(devices.contains("gateway"), "{devices}");
    gw.stop();
    assert_free_of(
        "the heartbeats",
        &devices,
        &[
            PATIENT.to_string(),
            "kit-status-beat".into(),
            "sim-thermometer-1".into(),
            "SIM-SIM-THERMOMETER-0001".into(),
        ],
    );
}

#[test]
fn a_serial_port_shows_connected_while_open_and_not_seen_once_unplugged() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let pty = iomt_drivers::serial::pty::Pty::open().unwrap();
    // A stable name, as /dev/serial/by-id gives: the node vanishes when unplugged.
    let by_id = tmp.path().join("usb-Nonin_9560-if00");
    std::os::unix::fs::symlink(pty.slave_path(), &by_id).unwrap();
    let port = free_port();
    let config = Config::new(tmp.path(), "kit-status-serial", PATIENT)
        .driver(&format!(
            "[serial]\nreconnect_initial_ms = 20\nreconnect_max_ms = 200\n\n[[serial.ports]]\npath = \"{}\"\nprofile = \"nonin-9560-format13\"\n",
            by_id.display()
        ))
        .file_uplink(&tmp.path().join("out"))
        .append(&format!(
            "\n[status]\nlisten = \"127.0.0.1:{port}\"\nseen_within_secs = 1"
        ))
        .write();
    let gw = Running::start(&config, &[], DEADLINE);
    wait_until(DEADLINE, "the endpoint", || listening(port));
    let device = || status_json(&config)["devices"][0].clone();
    wait_until(DEADLINE, "the port open", || {
        device()["state"] == "connected"
    });
    assert_eq!(device()["transport"], "serial");

    drop(pty);
    std::fs::remove_file(&by_id).unwrap();
    gw.wait_log("serial port lost", 1);
    wait_until(DEADLINE, "the port not seen", || {
        device()["state"] == "not seen"
    });
    let gone = device();
    assert!(gone["last_seen"].is_string(), "{gone}");
    let (_, raw_status) = http_get(port, "/status", None);
    gw.stop();
    assert_free_of(
        "/status",
        &raw_status,
        &[
            PATIENT.to_string(),
            by_id.display().to_string(),
            "usb-Nonin".into(),
        ],
    );
}

/// The Devices the FHIR server holds whose identifier has `system`.
fn server_devices(kit: &common::kit::Kit, system: &str) -> Vec<serde_json::Value> {
    kit.server.with_store(|s| {
        s.devices
            .values()
            .filter(|d| d["identifier"][0]["system"] == system)
            .cloned()
            .collect()
    })
}

/// The code of a Device's `statusReason` (device-status-reason), if any.
fn status_reason(device: &serde_json::Value) -> Option<String> {
    device["statusReason"][0]["coding"][0]["code"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_cuff_that_goes_away_is_reported_to_the_fhir_server_within_seconds_with_its_state_and_last_seen_time(
) {
    let kit = common::kit::Kit::new();
    let (bus, sim) = simulated_cuff(kit.dir.path());
    let port = free_port();
    // An hour between periodic heartbeats: what arrives within seconds comes from the
    // state change.
    let config = kit
        .config_for("kit-status-change", PATIENT)
        .driver(&cuff_driver())
        .uplink(&kit.fhir_uplink(1))
        .append(&format!(
            "\n[status]\nlisten = \"127.0.0.1:{port}\"\nheartbeat_interval_secs = 3600"
        ))
        .write();
    let gw = Running::start(
        &config,
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
        DEADLINE,
    );
    let device_system = "urn:iomt-gateway:device-pseudonym";
    wait_until(
        DEADLINE,
        "the cuff's reading stored and it connected",
        || {
            kit.server.with_store(|s| !s.observations.is_empty())
                && listening(port)
                && status_json(&config)["devices"][0]["state"] == "connected"
        },
    );
    let before = server_devices(&kit, device_system);
    assert_eq!(before.len(), 1, "{before:?}");

    sim.hang_up(CUFF);
    let hung_up = std::time::Instant::now();
    wait_until(DEADLINE, "the cuff reported seen, no longer online", || {
        server_devices(&kit, device_system)
            .first()
            .and_then(status_reason)
            .is_some_and(|r| r == "standby")
    });
    assert!(
        hung_up.elapsed() < Duration::from_secs(30),
        "a state change is sent within seconds, not after the hour: {:?}",
        hung_up.elapsed()
    );
    let cuff = server_devices(&kit, device_system).remove(0);
    assert_eq!(cuff["status"], "active", "{cuff:#}");
    assert_eq!(
        cuff["statusReason"][0]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/device-status-reason"
    );
    let last_seen = cuff["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == "urn:iomt-gateway:device-last-seen")
        .and_then(|e| e["valueDateTime"].as_str())
        .unwrap_or_else(|| panic!("a last-seen time: {cuff:#}"));
    let last_seen: chrono::DateTime<chrono::Utc> = last_seen.parse().unwrap();
    let view_seen: chrono::DateTime<chrono::Utc> = status_json(&config)["devices"][0]["last_seen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (last_seen - view_seen).num_seconds().abs() <= 1,
        "{last_seen} vs {view_seen}"
    );
    // The gateway's Device was sent with it, and both are valid FHIR R4 (checked in a
    // transaction Bundle with the cuff's Observations, as the validator wants).
    let gateway = server_devices(&kit, "urn:iomt-gateway:gateway-pseudonym");
    assert_eq!(gateway.len(), 1);
    let mut entries: Vec<serde_json::Value> = [gateway[0].clone(), cuff.clone()]
        .into_iter()
        .map(|d| {
            let id = d["id"].as_str().unwrap().to_string();
            serde_json::json!({
                "fullUrl": format!("urn:uuid:{id}"),
                "resource": d,
                "request": {"method": "PUT", "url": format!("Device/{id}")},
            })
        })
        .collect();
    entries.extend(
        kit.server
            .with_store(|s| s.observations.clone())
            .into_iter()
            .map(|o| {
                serde_json::json!({
                    "fullUrl": format!("urn:uuid:{}", o["id"].as_str().unwrap()),
                    "resource": o,
                    "request": {
                        "method": "POST",
                        "url": "Observation",
                        "ifNoneExist": format!(
                            "identifier={}|{}",
                            o["identifier"][0]["system"].as_str().unwrap(),
                            o["identifier"][0]["value"].as_str().unwrap()
                        ),
                    },
                })
            }),
    );
    let file = kit.path("heartbeat.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({
            "resourceType": "Bundle", "type": "transaction", "entry": entries,
        }))
        .unwrap(),
    )
    .unwrap();
    let (valid, report) = common::validate_fhir(&[&file]);
    assert!(valid, "{report}");
    gw.stop();
    let devices = kit
        .server
        .with_store(|s| serde_json::to_value(&s.devices).unwrap());
    assert_json_free_of(
        "the Devices on the server",
        &devices,
        &[
            PATIENT.to_string(),
            "kit-status-change".into(),
            CUFF.to_string(),
            CUFF.replace(':', "_"),
            // The serial number the simulated cuff's Device Information gives.
            format!("SN-{}", CUFF.replace(':', "")),
            "128".into(),
            "82".into(),
            "97".into(),
            "72".into(),
        ],
    );
}

#[test]
fn a_device_that_falls_silent_is_reported_offline_to_the_fhir_server_once_its_seen_period_is_over()
{
    let kit = common::kit::Kit::new();
    let port = free_port();
    let config = kit
        .config_for("kit-status-silent", PATIENT)
        .driver("[sim]\nenabled = true\nprofiles = [\"sim-thermometer\"]\ninterval_secs = 0.01\nmax_readings = 3")
        .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
        .uplink(&kit.fhir_uplink(1))
        .append(&format!(
            "\n[status]\nlisten = \"127.0.0.1:{port}\"\nseen_within_secs = 2\nheartbeat_interval_secs = 3600"
        ))
        .write();
    let gw = Running::start(&config, &[], DEADLINE);
    let device_system = "urn:iomt-gateway:device-pseudonym";
    gw.wait_log("simulator reached its reading limit", 1);
    let silent = std::time::Instant::now();
    wait_until(DEADLINE, "the thermometer reported offline", || {
        server_devices(&kit, device_system)
            .first()
            .and_then(status_reason)
            .is_some_and(|r| r == "offline")
    });
    assert!(
        silent.elapsed() < Duration::from_secs(30),
        "reported when its 2 s are over, not after the hour: {:?}",
        silent.elapsed()
    );
    let status = status_json(&config);
    assert_eq!(status["devices"][0]["state"], "not seen");
    let device = server_devices(&kit, device_system).remove(0);
    let last_seen = &device["extension"][0]["valueDateTime"];
    let view_seen: chrono::DateTime<chrono::Utc> = status["devices"][0]["last_seen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sent: chrono::DateTime<chrono::Utc> = last_seen.as_str().unwrap().parse().unwrap();
    assert!((sent - view_seen).num_seconds().abs() <= 1, "{device:#}");
    gw.stop();
}
