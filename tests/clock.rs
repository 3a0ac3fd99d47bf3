//! End-to-end tests of the gateway's own clock: the real binary, readings over a real
//! mosquitto, the test FHIR server and a file uplink as the sinks, the independent FHIR
//! validator. The clock's status comes from the test seam (`[clock] source =
//! "status-file"`): a file saying `unsynchronized offset_secs=-259200` makes the gateway
//! treat its wall clock as reading three days behind the true time, as a Raspberry Pi
//! without a real-time clock does after a power cut until NTP answers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::kit::{read, sigterm_and_wait, wait_logged, Kit};
use common::{observations_in, validate_fhir, wait_until};
use iomt_testkit::mosquitto::publish_acked;
use iomt_testkit::Mosquitto;

const PATIENT: &str = "MRN-CLOCK-2718";
const PROFILE: &str = "mqtt-generic-json-vitals";
const THREE_DAYS_SECS: i64 = 3 * 86_400;

struct ClockKit {
    kit: Kit,
    broker: Mosquitto,
    status: PathBuf,
    out: PathBuf,
}

impl ClockKit {
    fn new() -> Self {
        let kit = Kit::new();
        let broker = Mosquitto::start(&kit.path("broker"), "").unwrap();
        let status = kit.path("clock-status");
        let out = kit.path("out");
        std::fs::create_dir_all(&out).unwrap();
        ClockKit {
            kit,
            broker,
            status,
            out,
        }
    }

    fn set_clock(&self, text: &str) {
        std::fs::write(&self.status, text).unwrap();
    }

    fn config(&self, wait_secs: u64) -> PathBuf {
        self.kit
            .config_for("kit-clock-1", PATIENT)
            .driver(&format!(
                "[mqtt]\nenabled = true\nport = {}\nclient_id = \"iomt-gateway-clock\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"{PROFILE}\"]",
                self.broker.port()
            ))
            .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
            .uplink(&self.kit.fhir_uplink(1))
            .file_uplink(&self.out)
            .clock(&format!(
                "source = \"status-file\"\nstatus_file = \"{}\"\nunsynchronized_wait_secs = {wait_secs}",
                self.status.display()
            ))
            .log("info,iomt_gateway::uplink=debug")
            .write()
    }

    /// Publishes one reading without a device time (the gateway's receipt time becomes its
    /// effective time) and returns the true time it was handed to the broker.
    fn publish(&self, device: &str, heart_rate: u32) -> DateTime<Utc> {
        let before = Utc::now();
        let payload = format!("{{\"device_id\":\"{device}\",\"heart_rate\":{heart_rate}}}");
        self.kit
            .rt
            .block_on(publish_acked(
                self.broker.port(),
                "clock-test-publisher",
                vec![(format!("iomt/{device}/vitals"), payload.into_bytes())],
                Duration::from_secs(30),
            ))
            .unwrap();
        before
    }

    /// The Observations at the FHIR server, by heart rate.
    fn at_server(&self) -> Vec<serde_json::Value> {
        self.kit.server.with_store(|s| s.observations.clone())
    }

    fn queued(&self, uplink: &str) -> u64 {
        let status = self.kit.outbox_status();
        common::uplink_named(&status, uplink)
            .and_then(|u| u["queued"].as_u64())
            .unwrap_or(0)
    }
}

fn instant(v: &serde_json::Value, key: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v[key].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn with_rate(obs: &[serde_json::Value], rate: u32) -> &serde_json::Value {
    obs.iter()
        .find(|o| o["valueQuantity"]["value"] == rate)
        .unwrap_or_else(|| panic!("no Observation of heart rate {rate} in {obs:#?}"))
}

fn validate(dir: &Path) {
    // A directory: every *.json below it, and a failure when there is none.
    let (ok, report) = validate_fhir(&[dir]);
    assert!(ok, "{report}");
}

#[test]
fn readings_received_while_the_clock_is_unsynchronized_go_out_only_once_it_is_with_their_true_receipt_time(
) {
    let mut k = ClockKit::new();
    // The wall clock reads three days behind the truth, and no time daemon has set it.
    k.set_clock(&format!("unsynchronized offset_secs=-{THREE_DAYS_SECS}"));
    let config = k.config(3600);
    let (mut child, log) = k.kit.start(&config);
    wait_logged(
        &mut child,
        &log,
        "the gateway to connect",
        "connected to the MQTT broker",
    );
    wait_until(Duration::from_secs(5), "the clock reported", || {
        read(&log).contains("the system clock is not synchronized")
    });

    // One at a time (readings of one device received in the same millisecond would be
    // one Observation).
    let mut sent: Vec<(u32, DateTime<Utc>)> = Vec::new();
    for (n, rate) in [61, 62, 63].into_iter().enumerate() {
        sent.push((rate, k.publish("watch-1", rate)));
        wait_until(Duration::from_secs(20), "the reading queued", || {
            k.queued("fhir") == n as u64 + 1 && k.queued("file") == n as u64 + 1
        });
    }
    // Both delivery loops have looked at the rows and held them back.
    wait_until(Duration::from_secs(20), "the rows held back", || {
        read(&log)
            .matches("readings held back until the clock is synchronized")
            .count()
            >= 2
    });
    assert!(
        k.at_server().is_empty(),
        "nothing goes out while unsynchronized"
    );
    assert!(common::json_files(&k.out).is_empty());
    let (ok, text) = k.kit.cli(&["outbox", "status"]);
    assert!(ok, "{text}");
    assert!(text.contains("clock       NOT synchronized"), "{text}");
    assert_eq!(k.kit.outbox_status()["clock"]["synchronized"], false);

    // NTP answers: the clock is stepped to the true time and reported synchronized. The
    // next reading lets the gateway notice (so does its once-a-minute look).
    k.set_clock("synchronized");
    let (late_rate, late_sent) = (64, k.publish("watch-1", 64));
    wait_until(
        Duration::from_secs(20),
        "four Observations at the server",
        || k.at_server().len() == 4,
    );
    wait_until(Duration::from_secs(20), "four in the files", || {
        observations_in(&k.out).len() == 4
    });
    let done = Utc::now();
    assert_eq!(k.kit.outbox_status()["clock"]["synchronized"], true);
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(text.contains("the system clock is synchronized"), "{text}");
    assert!(
        text.contains("go out with their receipt time corrected"),
        "{text}"
    );

    for obs in [k.at_server(), observations_in(&k.out)] {
        for &(rate, published) in sent.iter().chain([(late_rate, late_sent)].iter()) {
            let o = with_rate(&obs, rate);
            for key in ["effectiveDateTime", "issued"] {
                let t = instant(o, key);
                // Received after it was published, before the test looked: within a second.
                let early = (t - published).num_milliseconds();
                assert!(
                    (0..1000).contains(&early) && t <= done,
                    "{key} of {rate}: {t}, published at {published}"
                );
            }
            assert!(o.get("iomtGatewayTimeHold").is_none(), "{o:#}");
            assert!(o["meta"].get("tag").is_none(), "not marked: {o:#}");
        }
    }
    // The gateway's Device says its clock is synchronized (PhgDevice time sync).
    let gateway = k.kit.server.with_store(|s| {
        s.devices
            .values()
            .find(|d| d["deviceName"][0]["name"] == "iomt-gateway")
            .cloned()
            .unwrap()
    });
    assert_eq!(gateway["property"][0]["type"]["coding"][0]["code"], "68220");
    assert_eq!(
        gateway["property"][0]["valueCode"][0]["coding"][0]["code"],
        "532226"
    );
    assert_eq!(
        gateway["property"][1]["valueCode"][0]["coding"][0]["code"],
        "Y"
    );
    validate(&k.out);
    // Nothing identifying in the log.
    assert!(
        !text.contains(PATIENT) && !text.contains("watch-1"),
        "{text}"
    );
}

#[test]
fn past_the_wait_held_readings_go_out_marked_uncertain_with_the_time_they_were_given() {
    let mut k = ClockKit::new();
    k.set_clock(&format!("unsynchronized offset_secs=-{THREE_DAYS_SECS}"));
    let config = k.config(1);
    let (mut child, log) = k.kit.start(&config);
    wait_logged(
        &mut child,
        &log,
        "the gateway to connect",
        "connected to the MQTT broker",
    );
    let published = k.publish("cuff-9", 71);
    // Past the wait (a second here) the delivery loops send it: they wait for the first
    // held row's wait to end, with no reading to wake them.
    wait_until(Duration::from_secs(20), "the reading delivered", || {
        k.at_server()
            .iter()
            .any(|o| o["valueQuantity"]["value"] == 71)
    });
    wait_until(Duration::from_secs(20), "it is in the files too", || {
        observations_in(&k.out)
            .iter()
            .any(|o| o["valueQuantity"]["value"] == 71)
    });
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(text.contains("go out marked uncertain"), "{text}");

    for obs in [k.at_server(), observations_in(&k.out)] {
        let o = with_rate(&obs, 71);
        // The time it was given (the wall clock's, three days behind), not a made-up
        // correction, and marked as uncertain for the backend and for a clinician.
        let behind = published - instant(o, "effectiveDateTime");
        assert!((behind.num_seconds() - THREE_DAYS_SECS).abs() <= 1, "{o:#}");
        assert_eq!(
            o["meta"]["tag"][0]["system"],
            "urn:iomt-gateway:time-quality"
        );
        assert_eq!(o["meta"]["tag"][0]["code"], "gateway-clock-unsynchronized");
        assert!(o["note"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Time uncertain"));
        assert!(o.get("iomtGatewayTimeHold").is_none(), "{o:#}");
    }
    // The gateway's Device says its clock is not synchronized.
    let gateway = k.kit.server.with_store(|s| {
        s.devices
            .values()
            .find(|d| d["deviceName"][0]["name"] == "iomt-gateway")
            .cloned()
            .unwrap()
    });
    assert_eq!(
        gateway["property"][0]["valueCode"][0]["coding"][0]["code"],
        "532224"
    );
    assert_eq!(
        gateway["property"][1]["valueCode"][0]["coding"][0]["code"],
        "N"
    );
    validate(&k.out);
}

#[test]
fn readings_held_when_the_gateway_stops_are_corrected_after_its_restart() {
    let mut k = ClockKit::new();
    k.set_clock(&format!("unsynchronized offset_secs=-{THREE_DAYS_SECS}"));
    let config = k.config(3600);
    let (mut child, log) = k.kit.start(&config);
    wait_logged(
        &mut child,
        &log,
        "the gateway to connect",
        "connected to the MQTT broker",
    );
    let published = k.publish("scale-3", 55);
    wait_until(Duration::from_secs(20), "the reading queued", || {
        k.queued("fhir") == 1
    });
    // Stopped while the clock is still wrong: the held row stays in the outbox, unsent.
    sigterm_and_wait(child, &log);
    assert!(k.at_server().is_empty());
    assert_eq!(k.queued("fhir"), 1);

    // Started again (same boot) once the clock is synchronized.
    k.set_clock("synchronized");
    let (mut child, log) = k.kit.start(&config);
    wait_logged(
        &mut child,
        &log,
        "the gateway to connect",
        "connected to the MQTT broker",
    );
    wait_until(
        Duration::from_secs(20),
        "the held reading delivered",
        || k.at_server().len() == 1,
    );
    sigterm_and_wait(child, &log);
    let o = with_rate(&k.at_server(), 55).clone();
    let early = (instant(&o, "effectiveDateTime") - published).num_milliseconds();
    assert!((0..1000).contains(&early), "{o:#}");
    assert!(o["meta"].get("tag").is_none(), "{o:#}");
}
