//! The MQTT ingest benchmark: `cargo bench -p iomt-gateway --bench mqtt_ingest`.
//!
//! A real mosquitto on 127.0.0.1 (started here, killed on exit); a rumqttc publisher
//! sends `n` QoS 1 messages (one generic JSON vitals reading each: heart rate, SpO2,
//! time) as fast as the broker acknowledges them. Measured in the same run:
//!
//! 1. **ceiling**: a plain rumqttc subscriber (QoS 1, automatic PUBACKs, no decoding),
//!    connected while the publisher runs, timed from the first publish to the last
//!    message received: mosquitto's own loopback rate on this machine;
//! 2. **ingest**: the real MQTT driver, pipeline and outbox instead of the plain
//!    subscriber (decode, normalize, seal, commit with `synchronous = FULL`, PUBACK after
//!    commit), timed from the first publish until the last row is durable: messages/s
//!    from the broker to durable rows.
//!
//! Options (environment): `BENCH_MESSAGES` (default 50000), `BENCH_IN_FLIGHT` (the
//! driver's `max_in_flight` and mosquitto's `max_inflight_messages`, default 1000),
//! `BENCH_DIR` (default: the system temp dir).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomt_drivers::mqtt::{MqttConfig, MqttDriver, Subscription};
use iomt_drivers::{reading_channel, reject_channel, Driver};
use iomt_gateway::normalize::{OutOfRange, Zone};
use iomt_gateway::outbox::seal::Keyring;
use iomt_gateway::outbox::{Outbox, OutboxSettings, WhenFull};
use iomt_gateway::pipeline::Pipeline;
use iomt_gateway::profile::{self, TransportSpec};
use iomt_gateway::pseudonym::{Domain, Pseudonymizer};
use iomt_testkit::mosquitto::publish_acked;
use iomt_testkit::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "iomt/bench-device/vitals";

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn messages(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let t = chrono::DateTime::from_timestamp(1_767_225_600 + i as i64, 0)
                .unwrap_or_default()
                .to_rfc3339();
            (
                TOPIC.to_string(),
                format!(
                    r#"{{"device_id":"bench-device","time":"{t}","heart_rate":{},"spo2":{}}}"#,
                    60 + i % 40,
                    90 + i % 10
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// Publishes `n` messages in rounds of at most 1000 (each round waits for its PUBACKs).
async fn publish(port: u16, client_id: &str, n: usize) {
    let all = messages(n);
    for (round, chunk) in all.chunks(1000).enumerate() {
        publish_acked(
            port,
            &format!("{client_id}-{round}"),
            chunk.to_vec(),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    }
}

/// Creates a persistent session subscribed to `filter` for `client_id`, then leaves.
async fn register_session(port: u16, client_id: &str, filter: &str) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    loop {
        match eventloop.poll().await.unwrap() {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(filter, QoS::AtLeastOnce).await.unwrap()
            }
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => {}
        }
    }
    client.disconnect().await.unwrap();
    while let Ok(ev) = eventloop.poll().await {
        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

/// A plain subscriber receives `n` messages while they are published; returns
/// (publish rate, receive rate) in messages/s.
async fn ceiling(port: u16, client_id: &str, n: usize) -> (f64, f64) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (_client, mut eventloop) = AsyncClient::new(o, 100);
    // The session (and its subscription) exists: wait for the connection.
    while !matches!(
        eventloop.poll().await.unwrap(),
        Event::Incoming(Packet::ConnAck(_))
    ) {}
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        publish(port, "bench-publisher", n).await;
        n as f64 / start.elapsed().as_secs_f64()
    });
    let mut got = 0;
    while got < n {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(_))) => got += 1,
            Ok(_) => {}
            Err(e) => eprintln!("ceiling subscriber: {e} after {got}"),
        }
    }
    let receive = n as f64 / start.elapsed().as_secs_f64();
    (publisher.await.unwrap(), receive)
}

fn main() {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_usize("BENCH_MESSAGES", if quick { 500 } else { 50_000 });
    let in_flight = env_usize("BENCH_IN_FLIGHT", 1000);
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, in_flight, dir.path()));
}

async fn run(n: usize, in_flight: usize, dir: &Path) {
    let broker = Mosquitto::start(
        &dir.join("broker"),
        &std::env::var("BENCH_MOSQUITTO_CONF").unwrap_or_else(|_| {
            format!("max_inflight_messages {in_flight}\nmax_queued_messages 0\n")
        }),
    )
    .unwrap();
    let port = broker.port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let profile =
        profile::load_file(&root.join("device-profiles/mqtt-generic-json-vitals.toml")).unwrap();
    let TransportSpec::Mqtt(spec) = &profile.transport else {
        panic!("not an MQTT profile")
    };

    // 1. Ceiling: mosquitto to a plain subscriber.
    register_session(port, "bench-plain", "iomt/+/vitals").await;
    let (publish_rate, ceiling_rate) =
        tokio::time::timeout(Duration::from_secs(900), ceiling(port, "bench-plain", n))
            .await
            .expect("the ceiling run finishes");
    eprintln!("ceiling: {ceiling_rate:.0} messages/s");
    register_session(port, "bench-gateway", "iomt/+/vitals").await;

    // 2. The gateway: driver → pipeline → outbox, until every row is durable.
    let keyring = Arc::new(Keyring::new(&[42; 32]));
    let (outbox, writer) = Outbox::open(
        OutboxSettings {
            path: dir.join("outbox.db"),
            max_bytes: 4 << 30,
            max_age: None,
            when_full: WhenFull::EvictOldest,
            commit_window: Duration::from_millis(20),
            quiet_commit_window: Duration::from_millis(20),
            max_batch_rows: 1000,
            pseudonym_key: None,
        },
        keyring,
        vec!["fhir".into()],
    )
    .await
    .unwrap();
    let pseudonymizer = Pseudonymizer::new(&[7; 32]);
    let profile = Arc::new(profile.clone());
    let pipeline = Pipeline {
        profiles: HashMap::from([(profile.id.clone(), profile.clone())]),
        patient_pseudonym: pseudonymizer.pseudonym(Domain::Patient, "bench-patient"),
        gateway_pseudonym: pseudonymizer.pseudonym(Domain::Gateway, "bench-kit"),
        pseudonymizer,
        zones: (Zone::GatewayLocal, Default::default()),
        address_zones: Default::default(),
        out_of_range: OutOfRange::Flag,
        outbox: outbox.clone(),
        observer: None,
        clock: None,
        health: None,
    };
    let (rejects, mut reject_rx) = reject_channel(16);
    let driver = Box::new(
        MqttDriver::new(MqttConfig {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            client_id: "bench-gateway".into(),
            credentials: None,
            keep_alive: Duration::from_secs(30),
            max_payload: 65536,
            max_in_flight: in_flight,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            subscriptions: vec![Subscription {
                profile: profile.id.clone(),
                manufacturer: profile.manufacturer.clone(),
                model: profile.model.clone(),
                filter: spec.topic.clone(),
                decoder: spec.json.clone(),
                device_id_level: spec.device_id_level,
            }],
            rejects,
        })
        .unwrap(),
    );
    let observations = 2 * n as i64;
    let mut committed = outbox.committed();
    let first = *committed.borrow();
    let (tx, rx) = reading_channel(4096);
    let cancel = CancellationToken::new();
    let pipe = tokio::spawn(pipeline.run(rx));
    let drv = tokio::spawn(driver.run(tx, cancel.clone()));
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        publish(port, "bench-publisher-2", n).await;
        n as f64 / start.elapsed().as_secs_f64()
    });
    let refused = tokio::spawn(async move {
        let mut count = 0;
        while reject_rx.recv().await.is_some() {
            count += 1;
        }
        count
    });
    tokio::time::timeout(Duration::from_secs(900), async {
        while *committed.borrow_and_update() - first < observations {
            if tokio::time::timeout(Duration::from_secs(5), committed.changed())
                .await
                .is_err()
            {
                eprintln!(
                    "no commit for 5 s: {} of {observations} rows durable",
                    *committed.borrow() - first
                );
            }
        }
    })
    .await
    .expect("every message becomes durable rows");
    let ingest_secs = start.elapsed().as_secs_f64();
    let publish_rate_2 = publisher.await.unwrap();
    cancel.cancel();
    drv.await.unwrap().unwrap();
    let stats = pipe.await.unwrap();
    let refused = refused.await.unwrap();
    drop(outbox);
    writer.await.unwrap();
    drop(broker);

    let ingest_rate = n as f64 / ingest_secs;
    println!("MQTT ingest benchmark ({n} messages, 2 observations each, in flight {in_flight})");
    println!("  publisher (QoS 1), ceiling run      {publish_rate:>10.0} messages/s");
    println!("  ceiling: mosquitto → plain client   {ceiling_rate:>10.0} messages/s");
    println!("  publisher (QoS 1), gateway run      {publish_rate_2:>10.0} messages/s");
    println!(
        "  gateway: mosquitto → durable rows   {ingest_rate:>10.0} messages/s ({:.0} observations/s)",
        2.0 * ingest_rate
    );
    println!(
        "  gateway / ceiling                   {:>10.2}",
        ingest_rate / ceiling_rate
    );
    println!(
        "  readings {}, observations {}, refused {refused}",
        stats.readings, stats.observations
    );
    assert_eq!(stats.observations as i64, observations);
}
