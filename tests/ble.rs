//! End-to-end tests of the BLE driver over D-Bus: a private `dbus-daemon`, the simulated
//! BlueZ of `iomt-testkit` on it, and the real `iomt-gateway run` with
//! `DBUS_SYSTEM_BUS_ADDRESS` pointing at it, writing FHIR Bundles to files.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Timelike;

use common::config::Config;
use common::running::Running;
use common::{coincident_of, gateway, observations_in, validate_fhir, wait_until};
use iomt_testkit::bluez::{cgm_record, DeviceKind, DeviceSpec, PrivateBus, SimBluez};

const DEADLINE: Duration = Duration::from_secs(60);
/// MDC_ATTR_VAL_BATT_CHARGE: the battery charge has no LOINC code.
const BATTERY: &str = "67996";

const CUFF: &str = "A0:00:00:00:00:01";
const OXIMETER: &str = "A0:00:00:00:00:02";
const METER: &str = "A0:00:00:00:00:03";
const NEIGHBOUR_SCALE: &str = "B0:00:00:00:00:09";
const NEIGHBOUR_CUFF: &str = "B0:00:00:00:00:0A";

/// Blood Pressure Measurement: 128/82 mmHg, MAP 97, pulse 72 (profile example).
const BP_128: &str = "1E 80 00 52 00 61 00 DD 07 08 1A 09 0A 14 48 00 01 00 00";
/// 122/80 mmHg, MAP 95, pulse 70, 2024-03-15 09:00:00.
const BP_122: &str = "1E 7A 00 50 00 5F 00 E8 07 03 0F 09 00 00 46 00 01 00 00";
/// PLX Spot-Check: SpO2 97 %, pulse 72 (profile example).
const SPO2_97: &str = "0B 61 00 48 00 E8 07 03 0F 08 1E 00 80 00 F0 E0";
/// SpO2 95 %, pulse 64.
const SPO2_95: &str = "0B 5F 00 40 00 E8 07 03 0F 08 1F 00 80 00 F0 E0";

/// Glucose records 5, 6, 7: 100, 110, 120 mg/dL (sent as kg/L).
fn glucose(seq: u8, mantissa: u8) -> (u16, Vec<u8>) {
    let hour = 7 + seq;
    (
        u16::from(seq),
        vec![
            0x03, seq, 0x00, 0xE8, 0x07, 0x03, 0x0F, hour, 0x1E, 0x00, 0x00, 0x00, mantissa, 0xB0,
            0x11,
        ],
    )
}

const SYSTOLIC: &str = "8480-6";
const SPO2: &str = "2708-6";
const GLUCOSE: &str = "41653-7";
const BODY_WEIGHT: &str = "29463-7";

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// The bus, the simulated BlueZ and a temp dir; dropped in reverse order.
struct World {
    tmp: tempfile::TempDir,
    bus: PrivateBus,
    bluez: SimBluez,
}

impl World {
    fn new(devices: &[(&str, &str, DeviceKind)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bus = PrivateBus::start(tmp.path()).unwrap();
        let bluez = SimBluez::start(bus.address()).unwrap();
        for (address, name, kind) in devices {
            bluez.add_device(DeviceSpec {
                address: address.to_string(),
                name: name.to_string(),
                kind: *kind,
                battery: 80,
            });
        }
        Self { tmp, bus, bluez }
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    /// Writes the keys and the gateway's configuration with these `(address, profile)`
    /// allowed.
    fn config(&self, allowed: &[(&str, &str)]) -> PathBuf {
        let with: Vec<(&str, &str, &str)> = allowed.iter().map(|(a, p)| (*a, *p, "")).collect();
        self.config_with(&with)
    }

    /// [`World::config`] with extra keys (`set_clock = true`) for some devices.
    fn config_with(&self, allowed: &[(&str, &str, &str)]) -> PathBuf {
        let dir = self.tmp.path();
        common::write_keys(dir);
        let mut ble =
            "[ble]\nadapter = \"hci0\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n"
                .to_string();
        for (address, profile, extra) in allowed {
            ble.push_str(&format!(
                "\n[[ble.devices]]\naddress = \"{address}\"\nprofile = \"{profile}\"\ntime_zone = \"Europe/Berlin\"\n{extra}\n"
            ));
        }
        Config::new(dir, "kit-ble-1", "MRN-BLE-0042")
            .time_zone("UTC")
            .driver(&ble)
            .file_uplink(&self.out())
            .write()
    }

    /// Starts the gateway on `config`, on the private bus.
    fn start(&self, config: &Path) -> Running {
        Running::start(
            config,
            &[("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())],
            DEADLINE,
        )
    }

    /// (first code of the Observation or of its first component, value) pairs: LOINC, or
    /// MDC for the battery charge.
    fn values(&self) -> Vec<(String, String)> {
        observations_in(&self.out())
            .iter()
            .filter_map(|o| {
                let (code, value) = match o.get("component").and_then(|c| c.as_array()) {
                    Some(c) => (&c[0]["code"], &c[0]["valueQuantity"]["value"]),
                    None => (&o["code"], &o["valueQuantity"]["value"]),
                };
                Some((
                    code["coding"][0]["code"].as_str()?.to_string(),
                    value.as_number()?.to_string(),
                ))
            })
            .collect()
    }

    fn count(&self, code: &str, value: &str) -> usize {
        self.values()
            .iter()
            .filter(|(c, v)| c == code && v == value)
            .count()
    }

    /// Waits for an Observation; on timeout, the failure shows the gateway's log.
    fn wait_for(&self, gw: &Running, code: &str, value: &str) {
        self.wait_within(DEADLINE, gw, code, value);
    }

    /// [`World::wait_for`] with its own deadline.
    fn wait_within(&self, deadline: Duration, gw: &Running, code: &str, value: &str) {
        let what = format!("an Observation {code} = {value} within {deadline:?}");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(deadline, &what, || self.count(code, value) >= 1)
        }));
        assert!(result.is_ok(), "no {what}; gateway log:\n{}", gw.log());
    }
}

#[test]
fn a_cuff_an_oximeter_and_a_glucose_meter_over_dbus_become_fhir_observations_and_the_neighbours_devices_are_ignored(
) {
    let world = World::new(&[
        (CUFF, "A&D_UA-651", DeviceKind::BloodPressure),
        (OXIMETER, "Nonin3230_1", DeviceKind::PulseOximeter),
        (METER, "Meter", DeviceKind::Glucose),
        (NEIGHBOUR_SCALE, "Scale", DeviceKind::WeightScale),
        (NEIGHBOUR_CUFF, "A&D_UA-651", DeviceKind::BloodPressure),
    ]);
    let sim = &world.bluez;
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.queue(OXIMETER, 0x2A5E, &bytes(SPO2_97));
    sim.store_records(METER, &[glucose(5, 0x64), glucose(6, 0x6E)]);
    sim.queue(NEIGHBOUR_SCALE, 0x2A9D, &[0x02, 0x20, 0x4E]);
    sim.queue(NEIGHBOUR_CUFF, 0x2A35, &bytes(BP_122));
    for a in [CUFF, OXIMETER, METER, NEIGHBOUR_SCALE, NEIGHBOUR_CUFF] {
        sim.advertise(a);
    }
    let config = world.config(&[
        (CUFF, "and-ua-651ble"),
        (OXIMETER, "nonin-3230"),
        (METER, "standard-glucose-meter"),
    ]);
    let gw = world.start(&config);
    world.wait_for(&gw, SYSTOLIC, "128");
    world.wait_for(&gw, SPO2, "97");
    world.wait_for(&gw, GLUCOSE, "100");
    world.wait_for(&gw, GLUCOSE, "110");
    assert!(sim.discovering(), "the gateway scans");
    let log = gw.stop();

    assert_eq!(sim.connects(NEIGHBOUR_SCALE), 0, "{log}");
    assert_eq!(sim.connects(NEIGHBOUR_CUFF), 0, "{log}");
    assert_eq!(world.count(SYSTOLIC, "122"), 0);
    assert!(world.values().iter().all(|(c, _)| c != BODY_WEIGHT));
    assert_eq!(sim.racp_requests(METER), vec![vec![0x01, 0x01]]);
    // No address, serial number or value at info.
    for secret in [CUFF, OXIMETER, METER, "SN-A0", "MRN-BLE"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}

#[test]
fn a_cuff_that_hangs_up_and_comes_back_is_read_again() {
    let world = World::new(&[(CUFF, "A&D_UA-651", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.advertise(CUFF);
    let gw = world.start(&world.config(&[(CUFF, "and-ua-651ble")]));
    world.wait_for(&gw, SYSTOLIC, "128");

    sim.hang_up(CUFF);
    gw.wait_log("BLE device session ended", 1);
    // The next measurement is indicated as soon as the link is up again, before the
    // driver subscribes: BlueZ keeps the client's notification session.
    sim.queue(CUFF, 0x2A35, &bytes(BP_122));
    sim.advertise(CUFF);
    world.wait_for(&gw, SYSTOLIC, "122");
    gw.stop();
    assert_eq!(sim.connects(CUFF), 2);
    assert_eq!(world.count(SYSTOLIC, "128"), 1);
    assert_eq!(world.count(SYSTOLIC, "122"), 1);
    // The battery charge read at each connection: one device Observation each (MDC 67996).
    assert_eq!(world.count(BATTERY, "80"), 2);
    // The cuff's clock has no zone; the configured Europe/Berlin makes 09:00 08:00 UTC.
    let times: Vec<String> = observations_in(&world.out())
        .iter()
        .filter_map(|o| o["effectiveDateTime"].as_str().map(str::to_string))
        .collect();
    assert!(
        times.iter().any(|t| t == "2024-03-15T08:00:00Z"),
        "{times:?}"
    );
}

#[test]
fn an_unpaired_cuff_that_bluez_forgot_while_away_is_read_again_when_it_returns() {
    let world = World::new(&[(CUFF, "A&D_UA-651", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    sim.set_paired(CUFF, false);
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.advertise(CUFF);
    let gw = world.start(&world.config(&[(CUFF, "and-ua-651ble")]));
    world.wait_for(&gw, SYSTOLIC, "128");

    // A day passes: the cuff hangs up, and after ~30 s without advertising BlueZ drops
    // the unpaired device, its GATT objects and the gateway's notification sessions.
    sim.hang_up(CUFF);
    gw.wait_log("BLE device session ended", 1);
    assert!(
        sim.forget(CUFF),
        "BlueZ removes an unpaired device it no longer sees"
    );
    // It comes back as a new device; the driver must connect and subscribe again.
    sim.queue(CUFF, 0x2A35, &bytes(BP_122));
    sim.advertise(CUFF);
    world.wait_for(&gw, SYSTOLIC, "122");
    gw.stop();
    assert_eq!(sim.connects(CUFF), 2);
    assert_eq!(world.count(SYSTOLIC, "128"), 1);
    assert_eq!(world.count(SYSTOLIC, "122"), 1);
}

/// How soon after a Bluetooth restart the next measurement must arrive (issue #14).
const AFTER_RESTART: Duration = Duration::from_secs(30);

#[test]
fn after_bluetoothd_restarts_the_next_measurement_of_a_connected_cuff_arrives_within_30_s() {
    let world = World::new(&[(CUFF, "A&D_UA-651", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.advertise(CUFF);
    let gw = world.start(&world.config(&[(CUFF, "and-ua-651ble")]));
    world.wait_for(&gw, SYSTOLIC, "128");
    assert!(sim.is_connected(CUFF));

    // `systemctl restart bluetooth`: org.bluez leaves the bus with its objects, the
    // gateway's discovery and notification sessions die with it; the gateway says so
    // while BlueZ is away. Then a fresh bluetoothd takes the name, and the cuff measures
    // again and advertises.
    sim.stop_daemon();
    gw.wait_log("BlueZ left the system bus", 1);
    sim.start_daemon().unwrap();
    sim.queue(CUFF, 0x2A35, &bytes(BP_122));
    sim.advertise(CUFF);
    world.wait_within(AFTER_RESTART, &gw, SYSTOLIC, "122");
    assert!(sim.discovering(), "the gateway scans again");
    assert!(sim.is_notifying(CUFF, 0x2A35), "and subscribed again");
    let log = gw.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("BlueZ left the system bus")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("BLE scanning resumed")),
        "{log}"
    );
    assert_eq!(sim.connects(CUFF), 2);
    assert_eq!(world.count(SYSTOLIC, "128"), 1);
    assert_eq!(world.count(SYSTOLIC, "122"), 1);
}

#[test]
fn after_the_adapter_is_powered_off_and_on_the_next_measurement_of_a_connected_oximeter_arrives_within_30_s(
) {
    let world = World::new(&[(OXIMETER, "Nonin3230_1", DeviceKind::PulseOximeter)]);
    let sim = &world.bluez;
    sim.queue(OXIMETER, 0x2A5E, &bytes(SPO2_97));
    sim.advertise(OXIMETER);
    let gw = world.start(&world.config(&[(OXIMETER, "nonin-3230")]));
    world.wait_for(&gw, SPO2, "97");
    assert!(sim.is_connected(OXIMETER));

    // `bluetoothctl power off`: the oximeter disconnects, BlueZ drops the gateway's
    // discovery and notification sessions. The gateway must not power it on again itself.
    sim.power(false);
    gw.wait_log("BLE device session ended", 1);
    assert!(
        !sim.powered(),
        "the gateway leaves an adapter someone switched off"
    );
    sim.power(true);
    sim.queue(OXIMETER, 0x2A5E, &bytes(SPO2_95));
    sim.advertise(OXIMETER);
    world.wait_within(AFTER_RESTART, &gw, SPO2, "95");
    assert!(sim.discovering(), "the gateway scans again");
    assert!(sim.is_notifying(OXIMETER, 0x2A5E), "and subscribed again");
    let log = gw.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("Bluetooth adapter was powered off")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("BLE scanning resumed")),
        "{log}"
    );
    assert_eq!(sim.client_power_ons(), 0);
    assert_eq!(world.count(SPO2, "97"), 1);
    assert_eq!(world.count(SPO2, "95"), 1);
}

#[test]
fn glucose_records_are_fetched_exactly_once_across_a_gateway_restart() {
    let world = World::new(&[(METER, "Meter", DeviceKind::Glucose)]);
    let sim = &world.bluez;
    sim.store_records(METER, &[glucose(5, 0x64), glucose(6, 0x6E)]);
    sim.advertise(METER);
    let config = world.config(&[(METER, "standard-glucose-meter")]);
    let gw = world.start(&config);
    world.wait_for(&gw, GLUCOSE, "110");
    world.wait_for(&gw, GLUCOSE, "100");
    gw.stop();

    sim.store_records(METER, &[glucose(7, 0x78)]);
    let gw = world.start(&config);
    world.wait_for(&gw, GLUCOSE, "120");
    gw.wait_log("BLE device connected", 1);
    gw.stop();

    assert_eq!(
        sim.racp_requests(METER),
        vec![vec![0x01, 0x01], vec![0x01, 0x03, 0x01, 0x07, 0x00]]
    );
    for v in ["100", "110", "120"] {
        assert_eq!(world.count(GLUCOSE, v), 1, "glucose {v}");
    }
}

#[test]
fn a_device_sending_garbage_is_counted_and_does_not_disturb_the_others() {
    let world = World::new(&[
        (CUFF, "A&D_UA-651", DeviceKind::BloodPressure),
        (OXIMETER, "Nonin3230_1", DeviceKind::PulseOximeter),
    ]);
    let sim = &world.bluez;
    sim.queue(OXIMETER, 0x2A5E, &[0x0B]);
    sim.queue(OXIMETER, 0x2A5E, &[0x0B, 0x61, 0x00]);
    sim.queue(OXIMETER, 0x2A5E, &bytes(SPO2_95));
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.advertise(OXIMETER);
    sim.advertise(CUFF);
    let gw = world.start(&world.config(&[(CUFF, "and-ua-651ble"), (OXIMETER, "nonin-3230")]));
    world.wait_for(&gw, SYSTOLIC, "128");
    world.wait_for(&gw, SPO2, "95");
    let log = gw.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("nonin-3230") && l.contains("rejected=2")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("and-ua-651ble") && l.contains("rejected=0")),
        "{log}"
    );
    // Why, counted at info (the bytes themselves stay at debug).
    assert!(
        log.lines().any(|l| l.contains("nonin-3230")
            && l.contains("rejected=2")
            && l.contains("truncated: 2")),
        "{log}"
    );
}

#[test]
fn scan_lists_nearby_devices_with_their_services_and_matching_profiles() {
    let world = World::new(&[
        (CUFF, "A&D_UA-651", DeviceKind::BloodPressure),
        (NEIGHBOUR_SCALE, "Scale", DeviceKind::WeightScale),
    ]);
    world.bluez.advertise(CUFF);
    world.bluez.advertise(NEIGHBOUR_SCALE);
    let profiles = common::root().join("device-profiles");
    let out = gateway()
        .args([
            "scan",
            "--for",
            "1",
            "--profiles",
            profiles.to_str().unwrap(),
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address())
        .output()
        .unwrap();
    let (stdout, stderr) = common::texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let line = |address: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(address))
            .unwrap_or_else(|| panic!("{address} not listed:\n{stdout}"))
            .to_string()
    };
    let cuff = line(CUFF);
    assert!(
        cuff.contains("1810") && cuff.contains("and-ua-651ble"),
        "{cuff}"
    );
    let scale = line(NEIGHBOUR_SCALE);
    assert!(
        scale.contains("181D") && scale.contains("standard-weight-scale"),
        "{scale}"
    );
    assert!(!world.bluez.discovering(), "scan stops discovery when done");
}

/// The device clocks' zone in [`World::config`].
const BERLIN: chrono_tz::Tz = chrono_tz::Europe::Berlin;
const CUFF_AHEAD: &str = "A0:00:00:00:00:11";
const CUFF_RESET: &str = "A0:00:00:00:00:12";
const CUFF_RIGHT: &str = "A0:00:00:00:00:13";

/// A Blood Pressure Measurement of `systolic`/80 mmHg, pulse 70, stamped `t` by the cuff.
fn bp_at(systolic: u8, t: chrono::NaiveDateTime) -> Vec<u8> {
    use chrono::{Datelike, Timelike};
    let [y0, y1] = (t.year() as u16).to_le_bytes();
    vec![
        0x1E,
        systolic,
        0x00,
        0x50,
        0x00,
        0x5F,
        0x00,
        y0,
        y1,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        0x46,
        0x00,
        0x01,
        0x00,
        0x00,
    ]
}

fn instant(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// The blood-pressure panel whose systolic is `systolic`.
fn panel(out: &Path, systolic: &str) -> serde_json::Value {
    observations_in(out)
        .into_iter()
        .find(|o| {
            o["component"][0]["code"]["coding"][0]["code"] == SYSTOLIC
                && o["component"][0]["valueQuantity"]["value"] == systolic.parse::<u64>().unwrap()
        })
        .unwrap_or_else(|| panic!("no panel with systolic {systolic}"))
}

fn assert_near(
    actual: chrono::DateTime<chrono::Utc>,
    expected: chrono::DateTime<chrono::Utc>,
    what: &str,
) {
    let off = (actual - expected).num_milliseconds().abs();
    assert!(
        off <= 3000,
        "{what}: {actual} is not within 3 s of {expected}"
    );
}

#[test]
fn cuffs_with_a_clock_3_h_10_min_ahead_reset_to_2000_or_right_are_placed_on_the_gateways_timeline()
{
    let world = World::new(&[
        (CUFF_AHEAD, "A&D_UA-651", DeviceKind::BloodPressure),
        (CUFF_RESET, "A&D_UA-651", DeviceKind::BloodPressure),
        (CUFF_RIGHT, "A&D_UA-651", DeviceKind::BloodPressure),
    ]);
    let sim = &world.bluez;
    let now = chrono::Utc::now();
    let local = now.with_timezone(&BERLIN).naive_local();
    let ahead = local + chrono::Duration::minutes(190);
    let reset = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 7, 0)
        .unwrap();
    // Each cuff measured 5 minutes ago, stamped by its own clock.
    let measured = now - chrono::Duration::minutes(5);
    let five = chrono::Duration::minutes(5);
    for (address, clock, systolic) in [
        (CUFF_AHEAD, ahead, 131),
        (CUFF_RESET, reset, 132),
        (CUFF_RIGHT, local, 133),
    ] {
        sim.add_current_time(address, clock, false);
        sim.queue(address, 0x2A35, &bp_at(systolic, clock - five));
        sim.advertise(address);
    }
    // A second stored measurement of the cuff that is ahead, a minute later on its clock.
    sim.queue(
        CUFF_AHEAD,
        0x2A35,
        &bp_at(135, ahead - five + chrono::Duration::minutes(1)),
    );
    let config = world.config(&[
        (CUFF_AHEAD, "and-ua-651ble"),
        (CUFF_RESET, "and-ua-651ble"),
        (CUFF_RIGHT, "and-ua-651ble"),
    ]);
    let gw = world.start(&config);
    for systolic in ["131", "132", "133", "135"] {
        world.wait_for(&gw, SYSTOLIC, systolic);
    }
    let log = gw.stop();
    let out = world.out();
    for (systolic, device_now) in [("131", ahead), ("132", reset), ("133", local)] {
        let obs = panel(&out, systolic);
        let effective = instant(obs["effectiveDateTime"].as_str().unwrap());
        assert_near(
            effective,
            measured,
            &format!("cuff {systolic}: effective time"),
        );
        let (gateway, device) = coincident_of(&out, &obs);
        assert_near(
            instant(&gateway),
            now,
            &format!("cuff {systolic}: gateway time"),
        );
        let device_utc = device_now
            .and_local_timezone(BERLIN)
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_near(
            instant(&device),
            device_utc,
            &format!("cuff {systolic}: device time"),
        );
    }
    let second = panel(&out, "135");
    assert_near(
        instant(second["effectiveDateTime"].as_str().unwrap()),
        measured + chrono::Duration::minutes(1),
        "the second reading of the cuff that is ahead",
    );
    assert_eq!(
        coincident_of(&out, &second),
        coincident_of(&out, &panel(&out, "131"))
    );
    // One Coincident Time Stamp Observation per connection, however many readings.
    let coincident = observations_in(&out)
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "67975")
        .count();
    assert_eq!(coincident, 3);
    assert!(log.contains("a device's clock is off"), "{log}");
    assert_eq!(
        sim.clock_writes(CUFF_AHEAD),
        0,
        "the clock is only read by default"
    );
    let (ok, report) = validate_fhir(&[&out]);
    assert!(ok, "{report}");
}

#[test]
fn with_set_clock_the_cuffs_clock_is_written_once_per_connection_and_the_next_reading_needs_no_correction(
) {
    let world = World::new(&[(CUFF_AHEAD, "A&D_UA-651", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    let now = chrono::Utc::now();
    let ahead = now.with_timezone(&BERLIN).naive_local() + chrono::Duration::minutes(190);
    sim.add_current_time(CUFF_AHEAD, ahead, true);
    sim.queue(
        CUFF_AHEAD,
        0x2A35,
        &bp_at(141, ahead - chrono::Duration::minutes(5)),
    );
    sim.advertise(CUFF_AHEAD);
    let config = world.config_with(&[(CUFF_AHEAD, "and-ua-651ble", "set_clock = true")]);
    let gw = world.start(&config);
    world.wait_for(&gw, SYSTOLIC, "141");
    let first = panel(&world.out(), "141");
    assert_near(
        instant(first["effectiveDateTime"].as_str().unwrap()),
        now - chrono::Duration::minutes(5),
        "the reading stamped before the clock was set is corrected",
    );
    assert_eq!(sim.clock_writes(CUFF_AHEAD), 1);
    let true_local = chrono::Utc::now().with_timezone(&BERLIN).naive_local();
    let shown = sim.device_clock(CUFF_AHEAD).unwrap();
    assert!(
        (shown - true_local).num_seconds().abs() <= 2,
        "{shown} vs {true_local}"
    );

    sim.hang_up(CUFF_AHEAD);
    gw.wait_log("BLE device session ended", 1);
    let stamp = sim.device_clock(CUFF_AHEAD).unwrap() - chrono::Duration::minutes(1);
    sim.queue(CUFF_AHEAD, 0x2A35, &bp_at(142, stamp));
    sim.advertise(CUFF_AHEAD);
    world.wait_for(&gw, SYSTOLIC, "142");
    gw.stop();
    assert_eq!(sim.connects(CUFF_AHEAD), 2);
    assert_eq!(sim.clock_writes(CUFF_AHEAD), 2, "once per connection");
    let second = panel(&world.out(), "142");
    // The device's own stamp, read in its zone, unchanged: no correction was needed.
    let stamp_utc = stamp
        .and_local_timezone(BERLIN)
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(
        instant(second["effectiveDateTime"].as_str().unwrap()),
        stamp_utc.with_nanosecond(0).unwrap()
    );
    let (gateway, device) = coincident_of(&world.out(), &second);
    assert_near(instant(&device), instant(&gateway), "the clocks agree");
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}

#[test]
fn the_cuffs_device_resource_names_what_its_device_information_says_and_no_serial_number() {
    let world = World::new(&[(CUFF, "A&D_UA-651", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.advertise(CUFF);
    let gw = world.start(&world.config(&[(CUFF, "and-ua-651ble")]));
    world.wait_for(&gw, SYSTOLIC, "128");
    gw.stop();
    let mut devices = Vec::new();
    for f in common::json_files(&world.out()) {
        let bundle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Device"
                && r["identifier"][0]["system"] == "urn:iomt-gateway:device-pseudonym"
            {
                devices.push(r.clone());
            }
        }
    }
    let device = devices.first().expect("the cuff's Device resource");
    // The simulated cuff's Device Information, not the profile's "A&D Medical"/"UA-651BLE".
    assert_eq!(device["manufacturer"], "Simulated Medical", "{device}");
    assert_eq!(device["modelNumber"], "BloodPressure", "{device}");
    let versions: Vec<(String, String)> = device["version"]
        .as_array()
        .unwrap_or_else(|| panic!("no version: {device}"))
        .iter()
        .map(|v| {
            (
                v["type"]["coding"][0]["code"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            ("531975".to_string(), "SW 2.0".to_string()),
            ("531976".to_string(), "FW 1.4.2".to_string())
        ]
    );
    let text = device.to_string();
    for secret in ["SN-", "A0:00", "A00000"] {
        assert!(!text.contains(secret), "`{secret}` in {text}");
    }
}

/// A vendor service UUID (A&D's), the only service some cuffs advertise until paired.
const VENDOR_SERVICE: &str = "233bf000-5a34-1b6d-975c-000d5690abe4";
const KETTLE: &str = "B0:00:00:00:00:0B";
const PLAIN_CUFF: &str = "A0:00:00:00:00:04";
/// 130/82 mmHg, pulse 72.
const BP_130: &str = "1E 82 00 52 00 61 00 DD 07 08 1A 09 0A 14 48 00 01 00 00";

/// The profiles `iomt-gateway scan` lists for `address` (the text after `profiles: `).
fn scanned_profiles(world: &World, address: &str) -> String {
    scanned_profiles_with(world, address, &[])
}

/// [`scanned_profiles`] with more arguments for `scan`.
fn scanned_profiles_with(world: &World, address: &str, more: &[&str]) -> String {
    let profiles = common::root().join("device-profiles");
    let out = gateway()
        .args([
            "scan",
            "--for",
            "1",
            "--profiles",
            profiles.to_str().unwrap(),
        ])
        .args(more)
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address())
        .output()
        .unwrap();
    let (stdout, stderr) = common::texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(address))
        .unwrap_or_else(|| panic!("{address} not listed:\n{stdout}"));
    line.split_once("profiles: ")
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| panic!("no profiles in {line}"))
}

#[test]
fn a_cuff_advertising_only_its_name_and_a_vendor_service_is_read_and_scan_agrees_with_run() {
    let world = World::new(&[
        (CUFF, "A&D_UA-651BLE_1", DeviceKind::BloodPressure),
        (OXIMETER, "Nonin3230_1", DeviceKind::PulseOximeter),
        (KETTLE, "Kettle", DeviceKind::BloodPressure),
        (PLAIN_CUFF, "BP Cuff", DeviceKind::BloodPressure),
    ]);
    let sim = &world.bluez;
    sim.advertise_services(CUFF, &[VENDOR_SERVICE]);
    sim.advertise_services(KETTLE, &[VENDOR_SERVICE]);
    sim.queue(CUFF, 0x2A35, &bytes(BP_128));
    sim.queue(OXIMETER, 0x2A5E, &bytes(SPO2_97));
    sim.queue(KETTLE, 0x2A35, &bytes(BP_122));
    sim.queue(PLAIN_CUFF, 0x2A35, &bytes(BP_130));
    for a in [CUFF, OXIMETER, KETTLE, PLAIN_CUFF] {
        sim.advertise(a);
    }
    // The kettle is allow-listed under the cuff's profile but matches it neither by
    // service nor by name: never connected.
    let config = world.config(&[
        (CUFF, "and-ua-651ble"),
        (OXIMETER, "nonin-3230"),
        (KETTLE, "and-ua-651ble"),
        (PLAIN_CUFF, "omron-x4-smart"),
    ]);
    let gw = world.start(&config);
    world.wait_for(&gw, SYSTOLIC, "128");
    world.wait_for(&gw, SPO2, "97");
    world.wait_for(&gw, SYSTOLIC, "130");
    let log = gw.stop();
    assert_eq!(sim.connects(KETTLE), 0, "{log}");
    assert_eq!(world.count(SYSTOLIC, "122"), 0);

    // `scan` names the same profile for each device `run` took, and none for the kettle.
    let cuff = scanned_profiles(&world, CUFF);
    assert!(
        cuff.starts_with("and-ua-651ble (best match: name prefix"),
        "{cuff}"
    );
    let oximeter = scanned_profiles(&world, OXIMETER);
    assert!(oximeter.contains("nonin-3230"), "{oximeter}");
    let kettle = scanned_profiles(&world, KETTLE);
    assert!(kettle.starts_with("none"), "{kettle}");
    // A cuff that advertises only the Blood Pressure service matches every cuff profile
    // equally: scan says so rather than pick one.
    let plain = scanned_profiles(&world, PLAIN_CUFF);
    for p in [
        "and-ua-651ble (service 1810)",
        "omron-x4-smart (service 1810)",
    ] {
        assert!(plain.contains(p), "{plain}");
    }
    assert!(plain.contains("no single best match"), "{plain}");
    assert!(!plain.contains("(best match"), "{plain}");
}

/// PLX Continuous Measurement: SpO2 96 %, pulse 70.
const SPO2_96_CONTINUOUS: &str = "00 60 00 46 00";
const OXIMETER_SPOT_ONLY: &str = "A0:00:00:00:00:05";
/// What the driver says about characteristics a profile leaves out.
const UNMAPPED: &str = "the device offers health characteristics its profile does not map";

#[test]
fn a_nonin_3230_delivers_spot_check_and_continuous_readings_in_one_session() {
    let world = World::new(&[
        (OXIMETER, "Nonin3230_1", DeviceKind::PulseOximeter),
        (OXIMETER_SPOT_ONLY, "Nonin3230_2", DeviceKind::PulseOximeter),
    ]);
    let sim = &world.bluez;
    for a in [OXIMETER, OXIMETER_SPOT_ONLY] {
        sim.queue(a, 0x2A5E, &bytes(SPO2_97));
        sim.queue(a, 0x2A5F, &bytes(SPO2_96_CONTINUOUS));
    }
    // A copy of the shipped profiles plus one that maps the spot check only.
    let profiles = world.tmp.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let shipped = common::root().join("device-profiles");
    for e in std::fs::read_dir(&shipped).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), profiles.join(e.file_name())).unwrap();
    }
    let nonin = std::fs::read_to_string(shipped.join("nonin-3230.toml")).unwrap();
    let spot_only: String = nonin
        .lines()
        .map(|l| match l {
            l if l.starts_with("id = ") => "id = \"nonin-spot-only\"".to_string(),
            l if l.starts_with("decoder") => "decoder = \"plx_spot_check_measurement\"".to_string(),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(profiles.join("nonin-spot-only.toml"), spot_only).unwrap();
    let config = world.config(&[
        (OXIMETER, "nonin-3230"),
        (OXIMETER_SPOT_ONLY, "nonin-spot-only"),
    ]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{}", shipped.display()),
        &format!("{}", profiles.display()),
    );
    std::fs::write(&config, text).unwrap();
    for a in [OXIMETER, OXIMETER_SPOT_ONLY] {
        sim.advertise(a);
    }
    let gw = world.start(&config);
    world.wait_for(&gw, SPO2, "96");
    wait_until(DEADLINE, "both spot checks", || {
        world.count(SPO2, "97") == 2
    });
    gw.wait_log(UNMAPPED, 1);
    let log = gw.stop();
    assert_eq!(sim.connects(OXIMETER), 1, "{log}");
    assert_eq!(
        world.count(SPO2, "96"),
        1,
        "only the profile mapping 0x2A5F reads it"
    );
    assert!(!sim.is_notifying(OXIMETER_SPOT_ONLY, 0x2A5F), "{log}");
    let unmapped: Vec<&str> = log.lines().filter(|l| l.contains(UNMAPPED)).collect();
    assert_eq!(unmapped.len(), 1, "{log}");
    assert!(
        unmapped[0].contains("nonin-spot-only") && unmapped[0].contains("0x2A5F"),
        "{log}"
    );
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}

#[test]
fn scan_with_identify_ranks_the_profiles_of_a_plain_cuff_by_its_device_information() {
    let world = World::new(&[(PLAIN_CUFF, "BP", DeviceKind::BloodPressure)]);
    let sim = &world.bluez;
    sim.set_device_information(PLAIN_CUFF, "OMRON HEALTHCARE", "HEM-7155T");
    sim.advertise(PLAIN_CUFF);
    // Without a connection nothing tells the cuff profiles apart.
    let plain = scanned_profiles(&world, PLAIN_CUFF);
    assert!(plain.contains("no single best match"), "{plain}");
    assert_eq!(
        sim.connects(PLAIN_CUFF),
        0,
        "scan does not connect unless asked"
    );
    let identified = scanned_profiles_with(&world, PLAIN_CUFF, &["--identify"]);
    assert!(
        identified.starts_with(
            "omron-x4-smart (best match: Device Information manufacturer and model, service 1810)"
        ),
        "{identified}"
    );
    assert!(
        identified.contains("and-ua-651ble (service 1810)"),
        "{identified}"
    );
    assert_eq!(sim.connects(PLAIN_CUFF), 1);
    assert!(!sim.is_connected(PLAIN_CUFF), "scan hangs up after reading");
}

const STRAP: &str = "A0:00:00:00:00:06";
const HEART_RATE: &str = "8867-4";

/// Heart Rate Measurement: sensor contact detected, `bpm` (uint8), one RR interval of
/// 1024/1024 s.
fn hr(bpm: u8) -> Vec<u8> {
    vec![0x16, bpm, 0x00, 0x04]
}

#[test]
fn a_polar_h10_sending_every_second_is_thinned_to_one_heart_rate_per_min_interval() {
    let world = World::new(&[(STRAP, "Polar H10 1A2B3C4D", DeviceKind::HeartRate)]);
    let sim = &world.bluez;
    for bpm in 72..77 {
        sim.queue(STRAP, 0x2A37, &hr(bpm));
    }
    sim.advertise(STRAP);
    let config = world.config_with(&[(STRAP, "polar-h10", "min_interval_ms = 60000")]);
    let gw = world.start(&config);
    world.wait_for(&gw, HEART_RATE, "72");
    wait_until(DEADLINE, "every beat sent", || sim.pending(STRAP) == 0);
    sim.hang_up(STRAP);
    gw.wait_log("BLE device session ended", 1);
    let log = gw.stop();
    assert!(
        log.lines().any(|l| l.contains("BLE device session ended")
            && l.contains("polar-h10")
            && l.contains("readings=1")
            && l.contains("thinned=4")),
        "{log}"
    );
    let rates: Vec<String> = world
        .values()
        .into_iter()
        .filter(|(c, _)| c == HEART_RATE)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(rates, ["72"], "{log}");
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}

const CGM: &str = "A0:00:00:00:00:21";
/// LOINC Glucose [Mass/volume] in Interstitial fluid.
const INTERSTITIAL_GLUCOSE: &str = "99504-3";

/// The `effectiveDateTime` of the interstitial glucose Observations of value `v`.
fn cgm_times(out: &Path, v: &str) -> Vec<String> {
    observations_in(out)
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == INTERSTITIAL_GLUCOSE)
        .filter(|o| {
            o["valueQuantity"]["value"]
                .as_number()
                .map(|n| n.to_string())
                == Some(v.into())
        })
        .map(|o| {
            o["effectiveDateTime"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn cgm_records_live_and_stored_are_fetched_exactly_once_across_a_gateway_restart() {
    let world = World::new(&[(CGM, "CGM", DeviceKind::Cgm)]);
    let sim = &world.bluez;
    // Stored: 100 mg/dL at 5 min, 105 at 10 min into the session; live: 110 at 15 min with
    // "device battery low", and one record whose E2E-CRC is wrong.
    sim.store_records(
        CGM,
        &[(5, cgm_record(100, 5, 0)), (10, cgm_record(105, 10, 0))],
    );
    let mut bad = cgm_record(99, 12, 0);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    sim.queue(CGM, 0x2AA7, &bad);
    sim.queue(CGM, 0x2AA7, &cgm_record(110, 15, 0x02));
    sim.advertise(CGM);
    let config = world.config(&[(CGM, "standard-cgm")]);
    let gw = world.start(&config);
    for v in ["100", "105", "110"] {
        world.wait_for(&gw, INTERSTITIAL_GLUCOSE, v);
    }
    let log = gw.stop();
    assert!(
        log.lines().any(|l| l.contains("BLE device session ended")
            && l.contains("rejected=1")
            && l.contains("invalid: 1")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("CGM sensor status annunciation")
                && l.contains("device battery low")
                && l.contains("WARN")),
        "{log}"
    );

    sim.store_records(CGM, &[(20, cgm_record(115, 20, 0))]);
    let gw = world.start(&config);
    world.wait_for(&gw, INTERSTITIAL_GLUCOSE, "115");
    gw.wait_log("BLE device connected", 1);
    gw.stop();

    // The second connection asks only for the records after the last one committed.
    assert_eq!(
        sim.racp_requests(CGM),
        vec![vec![0x01, 0x01], vec![0x01, 0x03, 0x01, 16, 0x00]]
    );
    for v in ["100", "105", "110", "115"] {
        assert_eq!(world.count(INTERSTITIAL_GLUCOSE, v), 1, "glucose {v}");
    }
    assert_eq!(world.count(INTERSTITIAL_GLUCOSE, "99"), 0);
    // Session start 2024-03-15 08:00 +01:00 (SESSION_START) + the time offset.
    assert_eq!(cgm_times(&world.out(), "100"), ["2024-03-15T07:05:00Z"]);
    assert_eq!(cgm_times(&world.out(), "115"), ["2024-03-15T07:20:00Z"]);
    // The annunciation is a note on its record's Observation, never on the others.
    let notes: Vec<(String, serde_json::Value)> = observations_in(&world.out())
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == INTERSTITIAL_GLUCOSE)
        .map(|o| (o["valueQuantity"]["value"].to_string(), o["note"].clone()))
        .collect();
    for (v, note) in &notes {
        if v == "110" {
            assert_eq!(
                note[0]["text"], "device status: device battery low",
                "{notes:?}"
            );
        } else {
            assert!(note.is_null(), "{notes:?}");
        }
    }
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}

const BODY_SCALE: &str = "A0:00:00:00:00:07";

#[test]
fn a_body_composition_scale_sends_body_fat_muscle_water_weight_height_and_bmi() {
    let world = World::new(&[(BODY_SCALE, "BCS Scale", DeviceKind::BodyComposition)]);
    let sim = &world.bluez;
    // The profile's example: body fat 21.4 %, muscle 43.8 %, muscle mass 33.440 kg, body
    // water 40.240 kg, weight 70.000 kg, height 1.750 m (and fields not mapped).
    sim.queue(
        BODY_SCALE,
        0x2A9C,
        &bytes("FE 0F D6 00 E7 07 0C 19 0E 1E 2D 02 80 1C B6 01 20 1A 40 2B 30 27 70 1F 88 13 B0 36 D6 06"),
    );
    // Beside it, the Weight Scale service: 70.000 kg, BMI 22.9, 1.750 m.
    sim.queue(BODY_SCALE, 0x2A9D, &bytes("08 B0 36 E5 00 D6 06"));
    sim.advertise(BODY_SCALE);
    let config = world.config(&[(BODY_SCALE, "standard-body-composition")]);
    let gw = world.start(&config);
    world.wait_for(&gw, "41982-0", "21.4");
    world.wait_for(&gw, "39156-5", "22.9");
    let log = gw.stop();
    let values = world.values();
    for (code, value) in [
        ("41982-0", "21.4"),
        ("73965-6", "43.8"),
        ("73964-9", "33.440"),
        ("101683-1", "40.240"),
        ("39156-5", "22.9"),
    ] {
        assert_eq!(
            values
                .iter()
                .filter(|(c, v)| c == code && v == value)
                .count(),
            1,
            "{code} = {value} in {values:?}\n{log}"
        );
    }
    // Weight and height come from both characteristics: once each.
    for (code, value) in [(BODY_WEIGHT, "70.000"), ("8302-2", "175.0")] {
        assert_eq!(
            values
                .iter()
                .filter(|(c, v)| c == code && v == value)
                .count(),
            2,
            "{code} = {value} in {values:?}"
        );
    }
    let (ok, report) = validate_fhir(&[&world.out()]);
    assert!(ok, "{report}");
}
