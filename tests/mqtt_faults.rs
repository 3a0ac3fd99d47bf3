//! End-to-end tests of MQTT ingest under the faults a kit meets unattended (issue #14):
//! the real binary, a real mosquitto broker started by the test, the test FHIR server as
//! the sink, and a rumqttc publisher in the test.
//!
//! - A message far larger than the driver's packet limit is kept in the dead letters and
//!   acknowledged; what follows it is read.
//! - Commits that fail (the outbox's write lock held by the test, or the outbox on a small
//!   tmpfs the test mounts and fills) leave messages unacknowledged; once the outbox can
//!   commit again, intake resumes by itself and every message arrives exactly once.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::kit::{read, sigterm_and_wait, vitals, wait_mqtt_connected, Kit};
use common::wait_until;
use iomt_testkit::mosquitto::publish_acked;
use iomt_testkit::Mosquitto;

const PATIENT: &str = "MRN-MQTT-FAULT-1";
const GATEWAY_ID: &str = "kit-mqtt-fault-1";
const PROFILE: &str = "mqtt-generic-json-vitals";

/// The common [`Kit`] and the ingest broker the gateway's MQTT driver reads.
struct MqttKit {
    kit: Kit,
    broker: Mosquitto,
}

impl MqttKit {
    fn new() -> Self {
        let kit = Kit::new();
        let broker = Mosquitto::start(&kit.path("broker"), "").unwrap();
        MqttKit { kit, broker }
    }

    /// The configuration: the MQTT driver on the ingest broker and the FHIR uplink.
    fn config(&self, max_payload: usize) -> PathBuf {
        self.kit
            .config_for(GATEWAY_ID, PATIENT)
            .driver(&format!(
                "[mqtt]\nenabled = true\nport = {}\nclient_id = \"iomt-gateway-faults\"\nmax_payload_bytes = {max_payload}\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"{PROFILE}\"]",
                self.broker.port()
            ))
            .outbox("commit_window_ms = 5")
            .uplink(&self.kit.fhir_uplink(1))
            .log("info,iomt_drivers=debug")
            .write()
    }

    /// Publishes at QoS 1 and returns once the broker has every message.
    fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        self.kit
            .rt
            .block_on(publish_acked(
                self.broker.port(),
                "test-publisher",
                messages,
                Duration::from_secs(60),
            ))
            .unwrap();
    }

    /// (distinct Observation identifiers, creates of an identifier already stored).
    fn server_identifiers(&self) -> (usize, u64) {
        self.kit
            .server
            .with_store(|s| (s.by_identifier.len(), s.duplicate_creates))
    }
}

/// Issue #14, item 4: a QoS 1 message larger than the packet limit (max(8 × 64 KiB,
/// 1 MiB) here) dropped the connection, the broker redelivered it on every reconnect, and
/// nothing behind it was ever read.
#[test]
fn a_10_mb_message_is_dead_lettered_and_the_next_valid_message_is_committed() {
    let mut kit = MqttKit::new();
    let config = kit.config(65536);
    let (mut child, log) = kit.kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    let big_len = 10_000_000;
    let mut messages = vec![("iomt/huge-1/vitals".to_string(), vec![b'x'; big_len])];
    messages.extend(vitals("after-1", 0, 1));
    kit.publish(messages);
    wait_until(
        Duration::from_secs(60),
        "the valid message behind the 10 MB one at the sink",
        || kit.server_identifiers().0 >= 1,
    );
    wait_until(Duration::from_secs(30), "the refusal logged", || {
        read(&log).contains("kept in the dead letters")
    });
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_identifiers(), (1, 0));
    // Its topic, size and first bytes (cut to the limit) are in the dead letters.
    let (ok, out) = kit.kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.contains(" mqtt ")).collect();
    assert_eq!(refused.len(), 1, "{out}");
    assert!(refused[0].contains("topic=iomt/huge-1/vitals"), "{out}");
    // The profile's `max_payload` (8 KiB) is below `mqtt.max_payload_bytes`.
    assert!(
        refused[0].contains("exceeds the limit of 8192 bytes"),
        "{out}"
    );
    let (_, with) = kit
        .kit
        .cli(&["outbox", "dead-letters", "--payloads", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&with).unwrap();
    let ingest = v["ingest"].as_array().unwrap();
    assert_eq!(ingest.len(), 1, "{with:.2000}");
    assert_eq!(ingest[0]["size"], big_len);
    assert_eq!(ingest[0]["payload"].as_str().unwrap().len(), 8192);
    // Acknowledged: a restarted gateway does not get it again, and reads what follows.
    let (mut child, log2) = kit.kit.start(&config);
    wait_mqtt_connected(&mut child, &log2);
    kit.publish(vitals("after-1", 1, 1));
    wait_until(Duration::from_secs(30), "the next valid message", || {
        kit.server_identifiers().0 == 2
    });
    sigterm_and_wait(child, &log2);
    assert!(!read(&log2).contains("kept in the dead letters"));
    assert_eq!(kit.server_identifiers(), (2, 0));
}

/// Issue #14, item 2 (the MQTT half of a full disk): messages whose commit failed were
/// never acknowledged, filled the broker's in-flight window (20) and were never sent
/// again, so intake stayed stopped after the outbox could commit again.
#[test]
fn after_commits_failed_intake_resumes_by_itself_and_every_message_arrives_once() {
    let mut kit = MqttKit::new();
    let config = kit.config(65536);
    let (mut child, log) = kit.kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    // Hold the outbox's write lock: every transaction of the gateway fails (busy), as
    // every transaction fails on a full disk.
    let lock = rusqlite::Connection::open(kit.kit.path("outbox.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    kit.publish(vitals("cuff-1", 0, 40));
    wait_until(
        Duration::from_secs(60),
        "a commit of an MQTT message to fail",
        || read(&log).contains("MQTT message could not be stored"),
    );
    // While the outbox still cannot commit, the session is reconnected and the
    // redelivered messages fail again, with a growing delay.
    wait_until(
        Duration::from_secs(60),
        "two reconnects while commits fail",
        || read(&log).matches("connected to the MQTT broker").count() >= 3,
    );
    assert_eq!(kit.server_identifiers().0, 0);
    // Space is back: the lock goes, and intake resumes without a restart.
    drop(lock);
    wait_until(
        Duration::from_secs(60),
        "all 40 Observations at the sink after the outbox recovered",
        || kit.server_identifiers().0 >= 40,
    );
    kit.publish(vitals("cuff-1", 40, 5));
    wait_until(Duration::from_secs(30), "5 more Observations", || {
        kit.server_identifiers().0 >= 45
    });
    sigterm_and_wait(child, &log);
    assert_eq!(
        kit.server_identifiers(),
        (45, 0),
        "each message exactly once"
    );
    let (ok, out) = kit.kit.cli(&["outbox", "dead-letters"]);
    assert!(ok && out.contains("no dead letters"), "{out}");
    // Said once per episode, and the end of it.
    let text = read(&log);
    assert_eq!(
        text.matches("reconnecting so that the broker delivers them again")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("intake resumed"), "{text}");
}

/// A small tmpfs the test mounts (it runs as root), unmounted when dropped.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test runs as root)"
        );
        SmallFs { path }
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Issue #14, item 2 with a really full disk: the outbox on a small tmpfs filled by the
/// test; once space is freed, MQTT intake resumes by itself within 60 s.
#[test]
fn after_the_outbox_disk_was_full_mqtt_intake_resumes_once_space_is_freed() {
    let mut kit = MqttKit::new();
    // Room for the outbox's free-space floor and reserve, and a little more.
    let small = SmallFs::mount(kit.kit.path("small"), "16m");
    let config = kit.config(65536);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &kit.kit.path("outbox.db").display().to_string(),
        &small.path.join("outbox.db").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let (mut child, log) = kit.kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    kit.publish(vitals("scale-1", 0, 5));
    wait_until(
        Duration::from_secs(60),
        "5 rows delivered and deleted",
        || {
            kit.kit
                .try_outbox_status()
                .is_ok_and(|s| s["rows"] == 0 && kit.server_identifiers().0 == 5)
        },
    );
    let filler = small.fill();
    kit.publish(vitals("scale-1", 5, 40));
    // The outbox stops storing below its free-space floor: the messages wait at the
    // broker, unacknowledged.
    wait_until(
        Duration::from_secs(60),
        "the outbox to say the disk is full",
        || read(&log).contains("disk is full"),
    );
    assert!(kit.server_identifiers().0 < 45, "{}", read(&log));
    std::fs::remove_file(filler).unwrap();
    wait_until(
        Duration::from_secs(60),
        "all 45 Observations at the sink after space was freed",
        || kit.server_identifiers().0 >= 45,
    );
    sigterm_and_wait(child, &log);
    assert_eq!(
        kit.server_identifiers(),
        (45, 0),
        "each message exactly once"
    );
}
