//! End-to-end tests of MQTT: the real binary, real mosquitto brokers started by the test on
//! free 127.0.0.1 ports (ingest broker and "cloud" broker), the test FHIR server as the
//! sink, and rumqttc clients in the test as publishers and collectors.

mod common;

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use common::kit::{read, sigterm_and_wait, vitals, wait_mqtt_connected, Kit};
use common::wait_until;
use iomt_testkit::mosquitto::publish_acked;
use iomt_testkit::{Collector, Mosquitto};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PATIENT: &str = "MRN-MQTT-0815";
const GATEWAY_ID: &str = "kit-mqtt-1";
const PROFILE: &str = "mqtt-generic-json-vitals";

/// The common [`Kit`] and the ingest broker the gateway's MQTT driver reads (killed by
/// its own Drop).
struct MqttKit {
    kit: Kit,
    broker: Mosquitto,
}

impl Deref for MqttKit {
    type Target = Kit;

    fn deref(&self) -> &Kit {
        &self.kit
    }
}

impl DerefMut for MqttKit {
    fn deref_mut(&mut self) -> &mut Kit {
        &mut self.kit
    }
}

impl MqttKit {
    fn new() -> Self {
        let kit = Kit::new();
        let broker = Mosquitto::start(&kit.path("broker"), "").unwrap();
        MqttKit { kit, broker }
    }

    /// Writes the configuration: the MQTT driver on the ingest broker, the FHIR uplink, and
    /// `extra` TOML appended (more uplinks).
    fn config(&self, commit_window_ms: u64, max_payload: usize, extra: &str) -> PathBuf {
        self.config_for(GATEWAY_ID, PATIENT)
            .driver(&format!(
                "[mqtt]\nenabled = true\nport = {}\nclient_id = \"iomt-gateway-test\"\nmax_payload_bytes = {max_payload}\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"{PROFILE}\"]",
                self.broker.port()
            ))
            .outbox(&format!("commit_window_ms = {commit_window_ms}"))
            .uplink(&format!("{}\n{extra}", self.fhir_uplink(1)))
            .log("info,iomt_drivers=debug")
            .write()
    }

    /// Publishes at QoS 1 and returns once the broker has every message.
    fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        self.rt
            .block_on(publish_acked(
                self.broker.port(),
                "test-publisher",
                messages,
                Duration::from_secs(30),
            ))
            .unwrap();
    }

    fn server_identifiers(&self) -> (usize, u64) {
        self.server
            .with_store(|s| (s.by_identifier.len(), s.duplicate_creates))
    }
}

#[test]
fn messages_published_before_during_and_across_a_restart_each_arrive_exactly_once() {
    let mut kit = MqttKit::new();
    let config = kit.config(5, 65536, "");
    // A first start creates the gateway's persistent session in the broker.
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    sigterm_and_wait(child, &log);

    // Before the gateway starts: the broker keeps them for its session.
    kit.publish(vitals("patch-1", 0, 100));
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    // While it runs.
    kit.publish(vitals("patch-2", 0, 100));
    wait_until(
        Duration::from_secs(60),
        "200 Observations at the sink",
        || kit.server_identifiers().0 >= 200,
    );
    // While it restarts: published between a stop and the next start.
    sigterm_and_wait(child, &log);
    kit.publish(vitals("patch-3", 0, 100));
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    kit.publish(vitals("patch-1", 100, 50));
    wait_until(
        Duration::from_secs(60),
        "350 Observations at the sink",
        || kit.server_identifiers().0 >= 350,
    );
    sigterm_and_wait(child, &log);
    let (distinct, duplicates) = kit.server_identifiers();
    assert_eq!(distinct, 350, "each message once");
    assert_eq!(duplicates, 0);
    // And nothing was refused.
    let (ok, out) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok && out.contains("no dead letters"), "{out}");
    // The device ids came from the topic and are pseudonymized: never in a resource.
    let all = kit
        .server
        .with_store(|s| serde_json::to_string(&(&s.observations, &s.devices)).unwrap_or_default());
    for secret in ["patch-1", "patch-2", "patch-3", PATIENT, GATEWAY_ID] {
        assert!(!all.contains(secret), "{secret} left the gateway in clear");
    }
    let logs: String = (1..=kit.runs).map(|i| kit.run_log(i)).collect();
    for line in logs.lines().filter(|l| !l.contains("DEBUG")) {
        assert!(
            !line.contains("heart_rate") && !line.contains(PATIENT),
            "value or patient logged above debug: {line}"
        );
    }
}

#[test]
fn a_gateway_killed_before_committing_gets_the_message_again_from_the_broker() {
    let mut kit = MqttKit::new();
    let config = kit.config(5, 65536, "");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    // Hold the outbox's write lock, as a slow SD card would: the gateway receives the
    // message and hands it to the outbox, but cannot commit it.
    let lock = rusqlite::Connection::open(kit.path("outbox.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    kit.publish(vitals("cuff-9", 0, 1));
    wait_until(
        Duration::from_secs(30),
        "the message to reach the pipeline",
        || read(&log).contains("MQTT message handed to the pipeline"),
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    drop(lock);
    // It was received but not committed, so not acknowledged and not delivered.
    let (ok, status) = kit.cli(&["outbox", "status"]);
    assert!(ok, "{status}");
    assert!(status.contains("rows        0"), "{status}");
    assert_eq!(kit.server_identifiers().0, 0);

    // The broker redelivers it to the restarted gateway.
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    wait_until(
        Duration::from_secs(60),
        "the redelivered message at the sink",
        || kit.server_identifiers().0 == 1,
    );
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_identifiers(), (1, 0));
}

#[test]
fn malformed_payloads_land_in_dead_letters_with_their_reasons_and_valid_traffic_keeps_flowing() {
    let mut kit = MqttKit::new();
    let config = kit.config(5, 1024, "");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    let topic = "iomt/bad-1/vitals".to_string();
    let mut messages = vitals("good-1", 0, 5);
    messages.push((topic.clone(), b"secret-not-json {".to_vec()));
    messages.extend(vitals("good-1", 5, 5));
    messages.push((
        topic.clone(),
        br#"{"time":"2026-01-01T00:00:00Z","pulse":1}"#.to_vec(),
    ));
    messages.push((topic.clone(), br#"{"heart_rate":{"value":72}}"#.to_vec()));
    let big = format!(r#"{{"heart_rate":72,"pad":"{}"}}"#, "x".repeat(4000));
    let big_len = big.len();
    messages.push((topic.clone(), big.into_bytes()));
    messages.push((
        topic.clone(),
        br#"{"heart_rate":72,"time":"yesterday"}"#.to_vec(),
    ));
    messages.extend(vitals("good-1", 10, 5));
    kit.publish(messages);
    wait_until(Duration::from_secs(60), "15 valid Observations", || {
        kit.server_identifiers().0 >= 15
    });
    wait_until(Duration::from_secs(30), "5 refusals logged", || {
        read(&log).matches("kept in the dead letters").count() >= 5
    });
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_identifiers(), (15, 0));

    let (ok, out) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.contains(" mqtt ")).collect();
    assert_eq!(refused.len(), 5, "{out}");
    for (line, reason) in refused.iter().zip([
        "not JSON",
        "no field of the profile",
        "field `heart_rate`: expected a number, found an object",
        "exceeds the limit of 1024 bytes",
        "timestamp",
    ]) {
        assert!(line.contains(reason), "`{reason}` not in `{line}`");
        assert!(line.contains("topic=iomt/bad-1/vitals"), "{line}");
    }
    // Payloads only on request; the oversized one cut to the limit.
    assert!(!out.contains("secret-not-json"));
    let (_, with) = kit.cli(&["outbox", "dead-letters", "--payloads", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&with).unwrap();
    let ingest = v["ingest"].as_array().unwrap();
    assert_eq!(ingest[0]["payload"], "secret-not-json {");
    assert_eq!(ingest[3]["size"], big_len);
    assert_eq!(ingest[3]["payload"].as_str().unwrap().len(), 1024);
    // Sealed at rest, and never logged.
    let db = std::fs::read(kit.path("outbox.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("secret-not-json"));
    assert!(!read(&log).contains("secret-not-json"));
    // Acknowledged: a restarted gateway gets none of them again.
    let (mut child, log2) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log2);
    kit.publish(vitals("good-1", 15, 1));
    wait_until(Duration::from_secs(30), "the next valid message", || {
        kit.server_identifiers().0 == 16
    });
    sigterm_and_wait(child, &log2);
    assert!(!read(&log2).contains("kept in the dead letters"));
}

#[test]
fn the_mqtt_uplink_delivers_every_row_to_the_cloud_broker_across_its_restart() {
    let mut kit = MqttKit::new();
    let mut cloud = Mosquitto::start(&kit.path("cloud"), "").unwrap();
    let collector = kit
        .rt
        .block_on(Collector::start(cloud.port(), "cloud-subscriber", "fhir/#"));
    let uplink = format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"fhir/{{gateway}}/observations\"\nmode = \"observation\"\nbatch_size = 20\ntimeout_secs = 2\nmax_backoff_secs = 1\n",
        cloud.port()
    );
    let config = kit.config(5, 65536, &uplink);
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    kit.publish(vitals("wear-1", 0, 150));
    let distinct = |c: &Collector| {
        c.received()
            .iter()
            .filter_map(|(_, p)| {
                let v: serde_json::Value = serde_json::from_slice(p).ok()?;
                v["identifier"][0]["value"].as_str().map(str::to_string)
            })
            .collect::<HashSet<String>>()
            .len()
    };
    wait_until(
        Duration::from_secs(60),
        "some Observations at the cloud broker",
        || distinct(&collector) >= 20,
    );
    // The cloud broker goes away while the rest is published, and comes back.
    cloud.stop().unwrap();
    kit.publish(vitals("wear-1", 150, 150));
    wait_until(Duration::from_secs(30), "the uplink to notice", || {
        read(&log).contains("MQTT uplink: broker unreachable or connection lost")
    });
    cloud.restart().unwrap();
    wait_until(
        Duration::from_secs(90),
        "300 Observations at the cloud broker",
        || distinct(&collector) >= 300,
    );
    sigterm_and_wait(child, &log);
    assert_eq!(distinct(&collector), 300);
    // The topic names the gateway only by its pseudonym; the payloads carry no id in clear.
    let received = collector.received();
    assert!(received.iter().all(|(t, _)| t.starts_with("fhir/")
        && t.ends_with("/observations")
        && !t.contains(GATEWAY_ID)));
    assert!(received.iter().all(|(_, p)| {
        let text = String::from_utf8_lossy(p);
        !text.contains("wear-1") && !text.contains(PATIENT)
    }));
    // Every row was acknowledged by both uplinks and left the outbox.
    let status = kit.outbox_status();
    assert_eq!(status["rows"], 0, "{status}");
    let cloud_status = common::uplink_named(&status, "cloud").unwrap();
    assert_eq!(cloud_status["delivered"], 300, "{status}");
}

#[test]
fn bundle_mode_publishes_one_transaction_bundle_per_batch() {
    let mut kit = MqttKit::new();
    let cloud = Mosquitto::start(&kit.path("cloud"), "").unwrap();
    let collector = kit
        .rt
        .block_on(Collector::start(cloud.port(), "cloud-bundles", "gw/#"));
    let uplink = format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"gw/{{gateway}}/bundle\"\nbatch_size = 100\n",
        cloud.port()
    );
    let config = kit.config(5, 65536, &uplink);
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    kit.publish(vitals("wear-2", 0, 10));
    let observations = |c: &Collector| -> usize {
        c.received()
            .iter()
            .filter_map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).ok())
            .map(|b| {
                assert_eq!(b["resourceType"], "Bundle");
                assert_eq!(b["type"], "transaction");
                b["entry"]
                    .as_array()
                    .map(|e| {
                        e.iter()
                            .filter(|e| e["resource"]["resourceType"] == "Observation")
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    wait_until(
        Duration::from_secs(60),
        "10 Observations in Bundles",
        || observations(&collector) >= 10,
    );
    sigterm_and_wait(child, &log);
    let bundles = collector.received();
    assert!(
        bundles.len() < 10,
        "{} messages for 10 Observations",
        bundles.len()
    );
    // A Bundle validates as FHIR R4.
    let path = kit.path("bundle.json");
    std::fs::write(&path, &bundles[0].1).unwrap();
    let (ok, out) = common::validate_fhir(&[&path]);
    assert!(ok, "{out}");
}

/// Regression: PUBACKs waited on rumqttc's request queue, which drains only while the
/// event loop is polled, and the loop waited on them: ingestion stopped after about 100
/// messages of a burst larger than mosquitto's default in-flight window (20).
#[test]
fn a_burst_larger_than_the_brokers_in_flight_window_is_ingested_completely() {
    let mut kit = MqttKit::new();
    let config = kit.config(5, 65536, "");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    kit.publish(vitals("burst-1", 0, 1000));
    wait_until(
        Duration::from_secs(120),
        "1000 Observations at the sink",
        || kit.server_identifiers().0 >= 1000,
    );
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_identifiers(), (1000, 0));
}

/// Rows the outbox has ever stored (its AUTOINCREMENT sequence; delivered rows leave the
/// table, not the count).
fn rows_ever_stored(kit: &MqttKit) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        kit.path("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'rows'), 0)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_gateway_killed_while_it_reads_a_backlog_is_sent_again_at_most_max_in_flight_stored_messages() {
    // The broker holds each message as unacknowledged until its PUBACK, and delivers all
    // those again to the next session: a committed message whose PUBACK was not yet
    // written is stored twice. `max_in_flight` bounds them, PUBACKs owed included (the
    // PUBACKs once fell thousands behind the commits while a backlog was read).
    const N: u32 = 10_000;
    const MAX_IN_FLIGHT: i64 = 50;
    // The broker keeps the whole backlog for the stopped gateway (1000 by default).
    let kit = Kit::new();
    let broker = Mosquitto::start(&kit.path("broker"), "max_queued_messages 100000\n").unwrap();
    let mut kit = MqttKit { kit, broker };
    let config = kit
        .config_for(GATEWAY_ID, PATIENT)
        .driver(&format!(
            "[mqtt]\nenabled = true\nport = {}\nclient_id = \"iomt-gateway-test\"\nmax_in_flight = {MAX_IN_FLIGHT}\nreconnect_initial_ms = 50\nprofiles = [\"{PROFILE}\"]",
            kit.broker.port()
        ))
        .outbox("commit_window_ms = 5")
        .uplink(&kit.fhir_uplink(1))
        .log("info")
        .write();
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    sigterm_and_wait(child, &log);
    kit.publish(vitals("backlog-1", 0, N));
    let (mut child, _) = kit.start(&config);
    wait_until(
        Duration::from_secs(120),
        "a third of the backlog stored",
        || rows_ever_stored(&kit) >= i64::from(N / 3),
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    wait_until(
        Duration::from_secs(180),
        "every reading at the sink",
        || kit.server_identifiers().0 >= N as usize,
    );
    sigterm_and_wait(child, &log);
    // At most max_in_flight, and the PUBACKs still in the connection's buffers when the
    // process died (the kernel resets a connection closed with unread data, and drops
    // them): a few batches. Before the PUBACKs kept up, about 3,200 of the 3,400 or so
    // stored by the kill were stored twice.
    let stored_twice = rows_ever_stored(&kit) - i64::from(N);
    assert!(
        (0..=4 * MAX_IN_FLIGHT).contains(&stored_twice),
        "{stored_twice} messages were stored twice; max_in_flight is {MAX_IN_FLIGHT}"
    );
    assert_eq!(kit.server_identifiers().0, N as usize);
}

/// Device rows in the outbox's `devices` table.
fn device_rows(kit: &MqttKit) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        kit.path("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn many_device_ids_leave_no_device_rows_behind_and_over_long_ids_are_refused() {
    let mut kit = MqttKit::new();
    let config = kit.config(5, 65536, "");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    // 400 devices seen once each, and 4 whose id (a topic level) is 3000 bytes long.
    let mut messages: Vec<(String, Vec<u8>)> = (0..400)
        .flat_map(|i| vitals(&format!("patch-{i}"), i, 1))
        .collect();
    let long_id = "L".repeat(3000);
    for i in 0..4 {
        messages.extend(vitals(&format!("{long_id}{i}"), 1000 + i, 1));
    }
    kit.publish(messages);
    wait_until(
        Duration::from_secs(60),
        "400 Observations delivered",
        || kit.server_identifiers().0 >= 400,
    );
    wait_until(Duration::from_secs(30), "4 over-long ids refused", || {
        read(&log).matches("kept in the dead letters").count() >= 4
    });
    // Delivered rows are deleted; no Device row stays once no row needs it.
    wait_until(Duration::from_secs(30), "the devices table emptied", || {
        device_rows(&kit) == 0
    });
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_identifiers(), (400, 0));
    let (ok, out) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.contains(" mqtt ")).collect();
    assert_eq!(refused.len(), 4, "{out}");
    for line in refused {
        assert!(
            line.contains("device id of 3001 bytes exceeds the limit of 256 bytes"),
            "{line}"
        );
    }
    // Not logged at info or above (the debug lines of this test's log level show topics).
    assert!(
        !read(&log)
            .lines()
            .any(|l| !l.contains(" DEBUG ") && l.contains(&long_id)),
        "an over-long id was logged at info or above"
    );
}

/// The retained status messages a fresh subscriber to `iomt/+/status` on the broker at
/// `port` receives first (the broker sends the retained one at once), as JSON.
fn retained_status(kit: &MqttKit, port: u16, client: &str) -> Vec<(String, serde_json::Value)> {
    let c = kit
        .rt
        .block_on(Collector::start(port, client, "iomt/+/status"));
    let mut got = Vec::new();
    wait_until(Duration::from_secs(20), "a retained status message", || {
        got = c.received();
        !got.is_empty()
    });
    got.into_iter()
        .map(|(t, p)| (t, serde_json::from_slice(&p).expect("the status is JSON")))
        .collect()
}

#[test]
fn the_mqtt_uplink_keeps_a_retained_online_status_and_its_last_will_says_offline_once_killed() {
    let mut kit = MqttKit::new();
    let cloud = Mosquitto::start(&kit.path("cloud"), "").unwrap();
    // An hour between periodic heartbeats: the status follows the connection and the
    // devices' state changes.
    let uplink = format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"iomt/{{gateway}}/fhir\"\ntimeout_secs = 2\nmax_backoff_secs = 1\n\n[status]\nenabled = false\nheartbeat_interval_secs = 3600\n",
        cloud.port()
    );
    let config = kit.config(5, 65536, &uplink);
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    let messages = vitals("cuff-9", 0, 3);
    let measured: Vec<String> = messages
        .iter()
        .map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            v["heart_rate"].to_string()
        })
        .collect();
    kit.publish(messages);
    let mut n = 0;
    let mut status = serde_json::Value::Null;
    let mut topic = String::new();
    wait_until(
        Duration::from_secs(30),
        "an online status naming the device",
        || {
            n += 1;
            let (t, s) = retained_status(&kit, cloud.port(), &format!("status-{n}")).remove(0);
            (topic, status) = (t, s);
            status["state"] == "online"
                && status["devices"].as_array().is_some_and(|d| d.len() == 1)
        },
    );
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!((parts[0], parts[2]), ("iomt", "status"), "{topic}");
    assert!(
        parts[1].len() >= 16 && parts[1].chars().all(|c| c.is_ascii_hexdigit()),
        "the gateway's pseudonym: {topic}"
    );
    assert_eq!(status["gateway"], parts[1]);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["sent_at"].is_string(), "{status:#}");
    assert_eq!(status["clock_synchronized"], true);
    assert!(status["backlog_rows"].is_u64(), "{status:#}");
    let device = &status["devices"][0];
    assert_eq!(device["profile"], PROFILE);
    assert_eq!(device["state"], "seen");
    assert!(device["last_seen"].is_string(), "{device}");
    assert!(
        device["device"].as_str().is_some_and(|d| d.len() >= 16),
        "{device}"
    );
    let mut secrets = vec![
        "cuff-9".to_string(),
        PATIENT.to_string(),
        GATEWAY_ID.to_string(),
    ];
    secrets.extend(measured);
    common::privacy::assert_json_free_of("the MQTT status", &status, &secrets);

    // SIGKILL: no goodbye; the broker publishes the last will, retained.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let mut offline = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the retained offline will", || {
        n += 1;
        let (t, s) = retained_status(&kit, cloud.port(), &format!("after-kill-{n}")).remove(0);
        assert_eq!(t, topic, "the will is on the status topic");
        offline = s;
        offline["state"] == "offline"
    });
    assert_eq!(offline["gateway"], parts[1]);
    assert_eq!(offline["version"], env!("CARGO_PKG_VERSION"));
    common::privacy::assert_json_free_of("the last will", &offline, &secrets);
}
