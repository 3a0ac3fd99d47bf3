//! End-to-end tests of the serial driver: the real `iomt-gateway run` reads real
//! pseudo-terminals configured as `[[serial.ports]]`, one per shipped serial profile, and
//! writes FHIR Bundles that an independent validator checks.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use common::config::Config;
use common::running::Running;
use common::{coincident_of, observations_in, run_config, validate_fhir, wait_until};
use iomt_drivers::serial::pty::Pty;
use iomt_drivers::serial::sim::{encode, nonin_packet, SimFormat, SimValues};

const DEADLINE: Duration = Duration::from_secs(30);
const PATIENT: &str = "MRN-SERIAL-0815";

/// Writes the keys and a configuration with a `[[serial.ports]]` table for each
/// `(profile, path, time zone, further keys of the port)`, writing Bundles to `dir/out`.
fn write_config(dir: &Path, ports: &[(&str, PathBuf, &str, &str)]) -> PathBuf {
    common::write_keys(dir);
    let mut serial = "[serial]\nreconnect_initial_ms = 20\nreconnect_max_ms = 200\n".to_string();
    for (profile, path, zone, more) in ports {
        serial.push_str(&format!(
            "\n[[serial.ports]]\npath = \"{}\"\nprofile = \"{profile}\"\ntime_zone = \"{zone}\"\n{more}\n",
            path.display()
        ));
    }
    Config::new(dir, "kit-serial-1", PATIENT)
        .time_zone("UTC")
        .driver(&serial)
        .file_uplink(&dir.join("out"))
        .write()
}

fn at(h: u32, m: u32, s: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 3, 15)
        .unwrap()
        .and_hms_opt(h, m, s)
        .unwrap()
}

fn values(spo2: u8, pulse: u16) -> SimValues {
    SimValues {
        spo2: Some(spo2),
        pulse: Some(pulse),
        weight_dg: 701,
        fat_permille: 212,
    }
}

/// (LOINC code, value) of every Observation with a value.
fn coded_values(dir: &Path) -> Vec<(String, String)> {
    observations_in(dir)
        .iter()
        .filter_map(|o| {
            let code = o["code"]["coding"][0]["code"].as_str()?.to_string();
            let value = o["valueQuantity"]["value"].as_number()?.to_string();
            Some((code, value))
        })
        .collect()
}

fn has(dir: &Path, code: &str, value: &str) -> bool {
    coded_values(dir)
        .iter()
        .any(|(c, v)| c == code && v == value)
}

const SPO2: &str = "2708-6";
const PULSE: &str = "8867-4";

/// Writes `bytes` in pieces of `chunk` bytes, as a slow UART delivers them.
fn write_split(pty: &mut Pty, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk) {
        pty.write(piece).unwrap();
    }
}

#[test]
fn bytes_on_real_ptys_become_fhir_observations_for_every_shipped_serial_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut masimo = Pty::open().unwrap();
    let mut oem3 = Pty::open().unwrap();
    let mut df13 = Pty::open().unwrap();
    let mut cms50 = Pty::open().unwrap();
    let mut tanita = Pty::open().unwrap();
    // The 9560 is reached through a stable name, as /dev/serial/by-id/... would be.
    let by_id = tmp.path().join("usb-Nonin_9560-if00");
    std::os::unix::fs::symlink(df13.slave_path(), &by_id).unwrap();
    let config = write_config(
        tmp.path(),
        &[
            // Lines stamped in 2024 are a recording played back, not the device's clock
            // now: the port says so.
            (
                "masimo-rad8-ascii1",
                masimo.slave_path().clone(),
                "UTC",
                "live_clock = false",
            ),
            ("nonin-oem3-format2", oem3.slave_path().clone(), "UTC", ""),
            ("nonin-9560-format13", by_id.clone(), "Europe/Berlin", ""),
            ("contec-cms50", cms50.slave_path().clone(), "UTC", ""),
            (
                "tanita-bc418",
                tanita.slave_path().clone(),
                "Europe/Berlin",
                "",
            ),
        ],
    );
    let gw = Running::start(&config, &[], DEADLINE);
    gw.wait_log("serial port opened", 5);

    // Masimo ASCII 1: a partial first line, noise, a line split across three writes,
    // and a "no finger" line.
    masimo.write(b"O2=099% BPM=099 EXC=000800\r\n").unwrap();
    let line_a = encode(SimFormat::MasimoAscii1, &values(95, 61), at(10, 0, 1));
    masimo.write(&line_a).unwrap();
    masimo.write(b"\x00\xff\xfe line noise \x07\r\n").unwrap();
    let line_b = encode(SimFormat::MasimoAscii1, &values(94, 62), at(10, 0, 2));
    write_split(&mut masimo, &line_b, line_b.len() / 3 + 1);
    let none = SimValues {
        spo2: None,
        pulse: None,
        ..values(0, 0)
    };
    masimo
        .write(&encode(SimFormat::MasimoAscii1, &none, at(10, 0, 3)))
        .unwrap();

    // Nonin OEM III: a partial packet, noise, a packet with one bad checksum, then a
    // valid packet split into 7-byte reads.
    let mut bad = nonin_packet(199, 88);
    bad[14] ^= 0x01;
    oem3.write(&nonin_packet(150, 80)[60..]).unwrap();
    oem3.write(&[0x01, 0x81, 0x55]).unwrap();
    oem3.write(&bad).unwrap();
    write_split(&mut oem3, &nonin_packet(63, 93), 7);

    // Nonin 9560 format 13: a record with a bad checksum, then a valid one.
    let mut bad = encode(SimFormat::Nonin9560Format13, &values(87, 198), at(10, 0, 0));
    let chk = bad.len() - 2;
    bad[chk] ^= 0xFF;
    df13.write(&bad).unwrap();
    write_split(
        &mut df13,
        &encode(SimFormat::Nonin9560Format13, &values(92, 64), at(10, 42, 7)),
        5,
    );

    // Contec CMS50: noise with bit 7 set, a packet cut short, then a valid packet.
    cms50.write(&[0xFF, 0x80, 0x85, 0x3C]).unwrap();
    cms50
        .write(&encode(
            SimFormat::ContecCms50,
            &values(91, 65),
            at(0, 0, 0),
        ))
        .unwrap();

    // Tanita BC-418: a partial first line, then a result line split in two.
    tanita.write(b"2,\"10:41\",0,1\r\n").unwrap();
    let line = encode(SimFormat::TanitaBc418, &values(0, 0), at(10, 42, 0));
    write_split(&mut tanita, &line, 40);

    wait_until(DEADLINE, "every expected observation", || {
        [
            (SPO2, "95"),
            (PULSE, "61"),
            (SPO2, "94"),
            (PULSE, "62"),
            (SPO2, "93"),
            (PULSE, "63"),
            (SPO2, "92"),
            (PULSE, "64"),
            (SPO2, "91"),
            (PULSE, "65"),
            ("29463-7", "70.1"),
            ("41982-0", "21.2"),
        ]
        .iter()
        .all(|(c, v)| has(&out, c, v))
    });

    // Rejected frames left nothing behind, the "no finger" line became absent values,
    // and device times were read in the port's zone.
    let all = coded_values(&out);
    for v in ["99", "199", "198", "88", "87", "150", "80"] {
        assert!(
            !all.iter().any(|(_, x)| x == v),
            "value {v} from a rejected frame: {all:?}"
        );
    }
    let obs = observations_in(&out);
    assert!(
        obs.iter().any(|o| o["dataAbsentReason"].is_object()),
        "the Masimo no-finger line gives dataAbsentReason"
    );
    let times: Vec<&str> = obs
        .iter()
        .filter_map(|o| o["effectiveDateTime"].as_str())
        .collect();
    assert!(
        times.contains(&"2024-03-15T09:42:07Z"),
        "9560 in Europe/Berlin: {times:?}"
    );
    assert!(
        times.contains(&"2024-03-15T10:00:01Z"),
        "Masimo in UTC: {times:?}"
    );
    assert!(
        times.contains(&"2024-03-15T09:42:00Z"),
        "Tanita in Europe/Berlin: {times:?}"
    );

    // Unplug the 9560 (its node vanishes) and plug it back under the same name.
    drop(df13);
    std::fs::remove_file(&by_id).unwrap();
    gw.wait_log("serial port lost", 1);
    let mut df13 = Pty::open().unwrap();
    std::os::unix::fs::symlink(df13.slave_path(), &by_id).unwrap();
    gw.wait_log("serial port opened", 6);
    df13.write(&encode(
        SimFormat::Nonin9560Format13,
        &values(90, 66),
        at(10, 43, 0),
    ))
    .unwrap();
    wait_until(DEADLINE, "the reading after the replug", || {
        has(&out, PULSE, "66")
    });

    let log = gw.stop();
    let (ok, report) = validate_fhir(&[&out]);
    assert!(ok, "{report}");
    assert!(report.contains(", 0 failed"), "{report}");

    // Technicians see the port path; nobody sees the patient, a serial number or a value.
    assert!(log.contains(&format!("port={}", by_id.display())), "{log}");
    assert!(!log.contains(PATIENT), "the patient id was logged");
    assert!(
        !log.contains("0000056661"),
        "a device serial number was logged"
    );
    assert!(!log.contains("SPO2="), "a measured line was logged");
    let bundles: String = common::json_files(&out)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!bundles.contains(PATIENT) && !bundles.contains("0000056661"));
}

#[test]
fn run_names_the_loaded_serial_profiles_when_a_port_names_an_unknown_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &[("sim-bp-cuff", PathBuf::from("/dev/ttyUSB9"), "UTC", "")],
    );
    let stderr = common::fails(&mut run_config(&config));
    assert!(
        stderr.contains("profile `sim-bp-cuff` is not a loaded serial profile")
            && stderr.contains("masimo-rad8-ascii1"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_live_clock_on_a_port_whose_profile_reads_no_device_time() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &[(
            "contec-cms50",
            PathBuf::from("/dev/ttyUSB9"),
            "UTC",
            "live_clock = true",
        )],
    );
    let stderr = common::fails(&mut run_config(&config));
    assert!(
        stderr.contains("serial port `/dev/ttyUSB9`: live_clock = true, but profile `contec-cms50` reads no time stamp"),
        "{stderr}"
    );
}

#[test]
fn profile_test_decodes_a_hex_frame_and_reports_a_bad_checksum() {
    let stdout = common::run_ok(&[
        "profile",
        "test",
        "contec-cms50",
        "--payload",
        "C5 3C 28 48 62",
    ]);
    let obs: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let vals: Vec<String> = obs
        .iter()
        .map(|o| o["valueQuantity"]["value"].to_string())
        .collect();
    assert_eq!(vals, ["72", "98"]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("obs.json");
    std::fs::write(&file, &stdout).unwrap();
    let (ok, report) = validate_fhir(&[Path::new("--observations-array"), &file]);
    assert!(ok, "{report}");

    let stderr = common::run_fails(&[
        "profile",
        "test",
        "nonin-9560-format13",
        "--payload",
        "00 02 00 0D 00 0E 14 18 03 0F 0A 2A 07 00 00 00 00 48 00 61 23 03",
    ]);
    assert!(stderr.contains("bad checksum"), "{stderr}");
}

#[test]
fn profile_test_decodes_every_shipped_serial_example_payload() {
    // The `Try it:` payloads written in the profiles' comments.
    let oem3: String = [
        "01 81 01 00 83 01 80 01 48 CA 01 80 01 61 E3 01 80 01 30 B2",
        &" 01 80 01 00 82".repeat(21),
    ]
    .concat();
    for (profile, payload, expected) in [
        (
            "masimo-rad8-ascii1",
            "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800",
            vec!["98", "97"],
        ),
        ("nonin-oem3-format2", oem3.as_str(), vec!["72", "97"]),
        (
            "nonin-9560-format13",
            "00 02 00 0D 00 0E 14 18 03 0F 0A 2A 07 00 00 00 00 48 00 61 22 03",
            vec!["72", "97"],
        ),
        ("contec-cms50", "C5 3C 28 48 62", vec!["72", "98"]),
        (
            "tanita-bc418",
            r#""15/03/24","10:42",0,1,175,72.4,18.5,13.4,59.0,43.1,45,23.6,7012,512"#,
            vec!["72.4", "18.5", "23.6"],
        ),
    ] {
        let stdout = common::run_ok(&["profile", "test", profile, "--payload", payload]);
        let obs: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
        let vals: Vec<String> = obs
            .iter()
            .map(|o| o["valueQuantity"]["value"].to_string())
            .collect();
        assert_eq!(vals, expected, "{profile}");
    }
}

#[test]
fn run_without_any_driver_says_how_to_add_a_serial_port() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &[]);
    let stderr = common::fails(&mut run_config(&config));
    assert!(
        stderr.contains("no driver is enabled") && stderr.contains("[[serial.ports]]"),
        "{stderr}"
    );
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

fn effective(obs: &serde_json::Value) -> DateTime<Utc> {
    instant(obs["effectiveDateTime"].as_str().unwrap())
}

/// The SpO2 Observation of value `spo2`.
fn spo2_of(dir: &Path, spo2: u64) -> serde_json::Value {
    observations_in(dir)
        .into_iter()
        .find(|o| o["code"]["coding"][0]["code"] == SPO2 && o["valueQuantity"]["value"] == spo2)
        .unwrap_or_else(|| panic!("no SpO2 Observation of {spo2}"))
}

fn assert_near(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let off = (actual - expected).num_milliseconds().abs();
    assert!(
        off <= 3000,
        "{what}: {actual} is not within 3 s of {expected}"
    );
}

#[test]
fn a_live_rad8_whose_clock_is_3_h_10_min_behind_is_corrected_and_one_within_a_minute_keeps_its_time_stamps(
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut behind = Pty::open().unwrap();
    let mut right = Pty::open().unwrap();
    let config = write_config(
        tmp.path(),
        &[
            (
                "masimo-rad8-ascii1",
                behind.slave_path().clone(),
                "Europe/Berlin",
                "",
            ),
            ("masimo-rad8-ascii1", right.slave_path().clone(), "UTC", ""),
        ],
    );
    let gw = Running::start(&config, &[], DEADLINE);
    gw.wait_log("serial port opened", 2);

    // Each device sends a line a second, stamped by its own clock as it sends it: one
    // clock 3 h 10 min behind (in Berlin), one 20 s behind (in UTC). A line end first
    // closes the partial line the gateway opens into.
    let now = Utc::now();
    let second = chrono::Duration::seconds(1);
    let behind_clock = now.with_timezone(&chrono_tz::Europe::Berlin).naive_local()
        - chrono::Duration::minutes(190);
    let right_clock = DateTime::from_timestamp(now.timestamp() - 20, 0)
        .unwrap()
        .naive_utc();
    let mut bytes = b"\r\n".to_vec();
    for (k, spo2) in [91u8, 92, 93].into_iter().enumerate() {
        bytes.extend(encode(
            SimFormat::MasimoAscii1,
            &values(spo2, 70),
            behind_clock + second * k as i32,
        ));
    }
    behind.write(&bytes).unwrap();
    let mut bytes = b"\r\n".to_vec();
    for (k, spo2) in [96u8, 97].into_iter().enumerate() {
        bytes.extend(encode(
            SimFormat::MasimoAscii1,
            &values(spo2, 80),
            right_clock + second * k as i32,
        ));
    }
    right.write(&bytes).unwrap();
    wait_until(DEADLINE, "the SpO2 of both devices", || {
        ["91", "92", "93", "96", "97"]
            .iter()
            .all(|v| has(&out, SPO2, v))
    });
    let log = gw.stop();

    // The clock that is behind: measurement times on the gateway's timeline, a second
    // apart as on the device, all referencing one Coincident Time Stamp Observation
    // with both clocks' times.
    let first = spo2_of(&out, 91);
    assert_near(effective(&first), now, "the first line of the clock behind");
    assert_near(
        effective(&first),
        instant(first["issued"].as_str().unwrap()),
        "the first line against its receive time",
    );
    let third = spo2_of(&out, 93);
    assert_eq!(effective(&third) - effective(&first), second * 2);
    let (gateway, device) = coincident_of(&out, &first);
    assert_eq!(
        coincident_of(&out, &third),
        (gateway.clone(), device.clone())
    );
    assert_near(instant(&gateway), now, "the gateway's time");
    assert_near(
        instant(&device),
        now - chrono::Duration::minutes(190),
        "the device's time",
    );
    assert!(device.ends_with("+01:00"), "Berlin in December: {device}");

    // The clock within a minute: its own time stamps, and the comparison referenced.
    let own = spo2_of(&out, 96);
    assert_eq!(
        effective(&own),
        right_clock.and_utc(),
        "the device's own time stamp"
    );
    let (gateway, device) = coincident_of(&out, &own);
    assert_near(instant(&gateway), now, "the gateway's time");
    assert_near(
        instant(&device),
        now - chrono::Duration::seconds(20),
        "the device's time within a minute",
    );
    assert_eq!(
        effective(&spo2_of(&out, 97)),
        right_clock.and_utc() + second
    );

    // One Coincident Time Stamp Observation per device and session.
    let coincident = observations_in(&out)
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "67975")
        .count();
    assert_eq!(coincident, 2);
    assert!(log.contains("a device's clock is off"), "{log}");
    let (ok, report) = validate_fhir(&[&out]);
    assert!(ok, "{report}");
    assert!(report.contains(", 0 failed"), "{report}");
}
