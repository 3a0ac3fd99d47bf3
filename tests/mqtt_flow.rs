//! End-to-end tests of the MQTT path under load (issue #18): the real binary, real
//! mosquitto brokers started by the test (their in-flight window set in their
//! configuration file), a counting MQTT proxy between the gateway and its ingest broker,
//! the test FHIR server as the sink, and rumqttc publishers and collectors in the test.
//!
//! - A publisher faster than the gateway, with mosquitto's window smaller than the
//!   gateway's `max_in_flight`: every reading arrives, exactly once, without a stall.
//! - A broker that sends everything at once and an outbox that cannot commit: the driver
//!   takes at most `max_in_flight` messages.
//! - The cloud broker of the MQTT uplink away for 30 s: delivery resumes within seconds
//!   of its return, every Observation once.
//! - Observation mode under load (a window of unacknowledged messages): every reading at
//!   the cloud broker once.

mod common;
#[path = "common/mqtt_proxy.rs"]
mod mqtt_proxy;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::kit::{read, sigterm_and_wait, vitals, wait_logged, wait_mqtt_connected, Kit};
use iomt_testkit::mosquitto::publish_acked;
use iomt_testkit::{Collector, Mosquitto};

const PATIENT: &str = "MRN-MQTT-FLOW-1";
const GATEWAY_ID: &str = "kit-mqtt-flow-1";
const PROFILE: &str = "mqtt-generic-json-vitals";

/// The gateway's configuration: the MQTT driver on `port` with `max_in_flight`, the FHIR
/// uplink, and `uplinks` appended.
fn config(kit: &Kit, port: u16, max_in_flight: usize, uplinks: &str) -> PathBuf {
    config_logging(kit, port, max_in_flight, uplinks, "info")
}

/// [`config`] with the log level `log`.
fn config_logging(kit: &Kit, port: u16, max_in_flight: usize, uplinks: &str, log: &str) -> PathBuf {
    kit.config_for(GATEWAY_ID, PATIENT)
        .driver(&format!(
            "[mqtt]\nenabled = true\nport = {port}\nclient_id = \"iomt-gateway-flow\"\nmax_in_flight = {max_in_flight}\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"{PROFILE}\"]"
        ))
        .outbox("commit_window_ms = 20")
        .uplink(&format!("{}\n{uplinks}", kit.fhir_uplink(1)))
        .log(log)
        .write()
}

/// Publishes `total` messages in rounds of 500 (each round acknowledged by the broker
/// before the next), from a thread, as fast as the broker takes them.
fn publish_in_background(port: u16, total: u32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for round in 0..total / 500 {
            rt.block_on(publish_acked(
                port,
                "flow-publisher",
                vitals("flow-1", round * 500, 500),
                Duration::from_secs(60),
            ))
            .unwrap();
        }
    })
}

fn sink(kit: &Kit) -> (usize, u64) {
    kit.server
        .with_store(|s| (s.by_identifier.len(), s.duplicate_creates))
}

/// A burst many times mosquitto's window, published faster than the gateway commits:
/// ingestion never stalls and every reading arrives once, with mosquitto's window (20)
/// smaller than the gateway's `max_in_flight` (64).
#[test]
fn a_publisher_faster_than_the_gateway_never_stalls_ingest() {
    const N: u32 = 10000;
    let mut kit = Kit::new();
    let broker = Mosquitto::start(
        &kit.path("broker"),
        "max_inflight_messages 20\nmax_queued_messages 1000000\n",
    )
    .unwrap();
    let (proxy, window) = kit.rt.block_on(mqtt_proxy::start(broker.port()));
    let config = config(&kit, proxy, 64, "");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    common::wait_until(Duration::from_secs(30), "the subscription", || {
        window.subscribed()
    });
    let publisher = publish_in_background(broker.port(), N);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sink(&kit).0 < N as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "ingest stalled: {} of {N} readings at the sink after 120 s; the broker sent {} messages, the gateway {} PUBACKs, at most {} unacknowledged at once",
            sink(&kit).0,
            window.published(),
            window.acks(),
            window.peak()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    publisher.join().unwrap();
    sigterm_and_wait(child, &log);
    assert_eq!(sink(&kit), (N as usize, 0), "each reading exactly once");
    assert!(window.published() >= N as usize);
    // mosquitto 2.0.11 (Debian 12) does not hold its own window once PUBACKs flow (the
    // proxy sees far more than 20 messages unacknowledged at once): the bound is the
    // driver's `max_in_flight`, which stops reading from the socket.
    let broker_log = read(&kit.path("broker/mosquitto.log"));
    assert!(!broker_log.contains("dropped"), "{broker_log}");
}

/// A broker with no window of its own (it sends every message at once) and an outbox
/// that cannot commit: the driver takes no more than `max_in_flight` messages (8) before
/// it stops reading; once the outbox commits again every message arrives once.
#[test]
fn the_driver_takes_at_most_max_in_flight_messages_while_none_is_committed() {
    let mut kit = Kit::new();
    let broker = Mosquitto::start(
        &kit.path("broker"),
        "max_inflight_messages 0\nmax_queued_messages 1000000\n",
    )
    .unwrap();
    let (proxy, window) = kit.rt.block_on(mqtt_proxy::start(broker.port()));
    let config = config_logging(&kit, proxy, 8, "", "info,iomt_drivers=debug");
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    common::wait_until(Duration::from_secs(30), "the subscription", || {
        window.subscribed()
    });
    // The outbox's write lock held: no commit until it goes (then they fail, busy).
    let lock = rusqlite::Connection::open(kit.path("outbox.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    kit.rt
        .block_on(publish_acked(
            broker.port(),
            "bound-publisher",
            vitals("bound-1", 0, 100),
            Duration::from_secs(30),
        ))
        .unwrap();
    wait_logged(
        &mut child,
        &log,
        "the commits to fail",
        "MQTT message could not be stored",
    );
    let text = read(&log);
    let before = &text[..text.find("MQTT message could not be stored").unwrap_or(0)];
    let taken = before
        .matches("MQTT message handed to the pipeline")
        .count();
    assert!(
        (1..=8).contains(&taken),
        "{taken} messages taken with none committed (max_in_flight 8); the broker sent {}",
        window.published()
    );
    drop(lock);
    common::wait_until(Duration::from_secs(120), "100 at the sink", || {
        sink(&kit).0 >= 100
    });
    sigterm_and_wait(child, &log);
    assert_eq!(sink(&kit), (100, 0), "each reading exactly once");
}

/// Distinct Observation identifiers and messages received by `collector`.
fn received(collector: &Collector) -> (usize, usize) {
    let all = collector.received();
    let ids: HashSet<String> = all
        .iter()
        .filter_map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            v["identifier"][0]["value"].as_str().map(str::to_string)
        })
        .collect();
    (ids.len(), all.len())
}

/// The cloud broker away for over 30 s, with the uplink's default `max_backoff_secs`
/// (300): delivery resumes within a few seconds of the broker being back (not at the
/// delivery loop's next backoff step), and every Observation arrives once.
#[test]
fn the_mqtt_uplink_delivers_again_within_seconds_of_the_cloud_broker_coming_back() {
    let mut kit = Kit::new();
    let broker = Mosquitto::start(&kit.path("broker"), "").unwrap();
    let mut cloud = Mosquitto::start(&kit.path("cloud"), "").unwrap();
    let collector = kit
        .rt
        .block_on(Collector::start(cloud.port(), "cloud-subscriber", "fhir/#"));
    let (proxy, window) = kit.rt.block_on(mqtt_proxy::start(broker.port()));
    let uplink = format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"fhir/{{gateway}}/observations\"\nmode = \"observation\"\nbatch_size = 20\ntimeout_secs = 2\n",
        cloud.port()
    );
    let config = config(&kit, proxy, 64, &uplink);
    let (mut child, log) = kit.start(&config);
    wait_mqtt_connected(&mut child, &log);
    common::wait_until(Duration::from_secs(30), "the subscription", || {
        window.subscribed()
    });
    let publish = |from: u32| {
        kit.rt
            .block_on(publish_acked(
                broker.port(),
                "outage-publisher",
                vitals("outage-1", from, 100),
                Duration::from_secs(30),
            ))
            .unwrap()
    };
    publish(0);
    // Stopped once the gateway has the PUBACKs (stopped between a message and its PUBACK,
    // the broker would get that message again: QoS 1 is at least once).
    common::wait_until(
        Duration::from_secs(60),
        "100 delivered to the cloud",
        || {
            kit.try_outbox_status()
                .ok()
                .and_then(|s| common::uplink_named(&s, "cloud").map(|u| u["delivered"] == 100))
                .unwrap_or(false)
        },
    );
    cloud.stop().unwrap();
    publish(100);
    common::wait_until(Duration::from_secs(30), "the uplink to notice", || {
        read(&log).contains("delivery failed; rows kept, will retry")
    });
    // The outage: at least 30 s, ended just as the delivery loop starts a backoff step of
    // 8 s or more, so that a retry timed by that backoff alone would come too late.
    let down = std::time::Instant::now();
    let mut retries = 0;
    common::wait_until(
        Duration::from_secs(180),
        "a long backoff step after 30 s",
        || {
            let text = read(&log);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("delivery failed; rows kept, will retry"))
                .collect();
            let new = lines.len() > retries;
            retries = lines.len();
            new && down.elapsed() >= Duration::from_secs(30)
                && lines
                    .last()
                    .and_then(|l| l.split("retry_in_ms=").nth(1))
                    .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|ms| ms >= 8000)
        },
    );
    cloud.restart().unwrap();
    let back = std::time::Instant::now();
    common::wait_until(Duration::from_secs(60), "200 at the cloud", || {
        received(&collector).0 >= 200
    });
    let resumed = back.elapsed();
    sigterm_and_wait(child, &log);
    assert!(
        resumed < Duration::from_secs(6),
        "delivery resumed {resumed:?} after the broker was back"
    );
    let all = collector.received();
    let mut seen = HashSet::new();
    let twice: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (_, p))| !seen.insert(p.clone()))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        received(&collector),
        (200, 200),
        "each Observation once; received again at positions {twice:?}"
    );
    assert_eq!(sink(&kit), (200, 0));
}

/// The gateway between two mosquittos (each keeps up to a million messages): its MQTT
/// driver on the device broker (`max_in_flight` 64), the FHIR uplink, and an MQTT uplink
/// named `cloud` to the cloud broker with the keys `uplink` (topic, mode...); a collector
/// `client` subscribed to `filter` there. Returned once the driver is subscribed.
struct CloudRun {
    kit: Kit,
    broker: Mosquitto,
    /// The cloud broker, kept running while the test runs.
    _cloud: Mosquitto,
    collector: Collector,
    child: std::process::Child,
    log: PathBuf,
}

impl CloudRun {
    fn start(client: &str, filter: &str, uplink: &str) -> CloudRun {
        let mut kit = Kit::new();
        let broker =
            Mosquitto::start(&kit.path("broker"), "max_queued_messages 1000000\n").unwrap();
        let cloud = Mosquitto::start(&kit.path("cloud"), "max_queued_messages 1000000\n").unwrap();
        let collector = kit
            .rt
            .block_on(Collector::start(cloud.port(), client, filter));
        let uplink = format!(
            "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\n{uplink}\n",
            cloud.port()
        );
        let config = config(&kit, broker.port(), 64, &uplink);
        let (mut child, log) = kit.start(&config);
        wait_mqtt_connected(&mut child, &log);
        CloudRun {
            kit,
            broker,
            _cloud: cloud,
            collector,
            child,
            log,
        }
    }
}

/// Observation mode under load: the uplink keeps a window of unacknowledged messages
/// (each row marked delivered on its PUBACK, more rows fetched while others wait), and
/// every reading reaches the cloud broker exactly once.
#[test]
fn observation_mode_under_load_delivers_every_reading_once() {
    const N: u32 = 5000;
    let run = CloudRun::start(
        "cloud-subscriber",
        "fhir/#",
        "topic = \"fhir/{gateway}/observations\"\nmode = \"observation\"\nbatch_size = 100\ntimeout_secs = 10",
    );
    publish_in_background(run.broker.port(), N).join().unwrap();
    common::wait_until(
        Duration::from_secs(120),
        "every reading at the cloud",
        || received(&run.collector).0 >= N as usize,
    );
    common::wait_until(Duration::from_secs(30), "the outbox empty", || {
        run.kit.try_outbox_status().ok().is_some_and(|s| {
            s["rows"] == 0 && common::uplink_named(&s, "cloud").is_some_and(|u| u["delivered"] == N)
        })
    });
    sigterm_and_wait(run.child, &run.log);
    assert_eq!(received(&run.collector), (N as usize, N as usize));
    assert_eq!(sink(&run.kit), (N as usize, 0));
}

/// Bundle mode with `max_message_bytes` far below a batch's Bundle: each message stays
/// within the bound, each Bundle carries the Devices its Observations reference, and
/// every reading reaches the cloud broker exactly once.
#[test]
fn bundle_mode_keeps_every_message_within_max_message_bytes() {
    const N: u32 = 1000;
    const MAX: usize = 8192;
    let run = CloudRun::start(
        "cloud-bundles",
        "gw/#",
        &format!("topic = \"gw/{{gateway}}/bundle\"\nbatch_size = 500\nmax_message_bytes = {MAX}"),
    );
    publish_in_background(run.broker.port(), N).join().unwrap();
    let observations = |c: &Collector| -> (HashSet<String>, usize) {
        let mut ids = HashSet::new();
        let mut total = 0;
        for (_, p) in c.received() {
            let b: serde_json::Value = serde_json::from_slice(&p).unwrap();
            for e in b["entry"].as_array().unwrap() {
                if let Some(id) = e["resource"]["identifier"][0]["value"].as_str() {
                    if e["resource"]["resourceType"] == "Observation" {
                        ids.insert(id.to_string());
                        total += 1;
                    }
                }
            }
        }
        (ids, total)
    };
    common::wait_until(
        Duration::from_secs(120),
        "every reading at the cloud",
        || observations(&run.collector).0.len() >= N as usize,
    );
    sigterm_and_wait(run.child, &run.log);
    assert_eq!(
        observations(&run.collector).1,
        N as usize,
        "each reading once"
    );
    let bundles = run.collector.received();
    assert!(
        bundles.len() > (N as usize) * 1500 / MAX,
        "{} messages for {N} Observations of about 1.5 kB",
        bundles.len()
    );
    for (_, p) in &bundles {
        assert!(p.len() <= MAX, "a message of {} bytes", p.len());
        let b: serde_json::Value = serde_json::from_slice(p).unwrap();
        let entries = b["entry"].as_array().unwrap();
        let puts: HashSet<&str> = entries
            .iter()
            .filter(|e| e["request"]["method"] == "PUT")
            .filter_map(|e| e["request"]["url"].as_str())
            .collect();
        for e in entries {
            if let Some(device) = e["resource"]["device"]["reference"].as_str() {
                assert!(puts.contains(device), "{device} is not in its Bundle");
            }
        }
    }
}
