//! The MQTT round-trip benchmark: `cargo bench -p iomt-gateway --bench mqtt_roundtrip`.
//!
//! Two real mosquittos on free 127.0.0.1 ports, started here: one for the devices, one for
//! the cloud. A load generator publishes QoS 1 readings (generic JSON vitals, one heart
//! rate each, from many device ids) to the device broker with a window of unacknowledged
//! publishes; a counter subscribed to the cloud broker checks that every reading arrived
//! exactly once (by its Observation identifier). Measured in the same run:
//!
//! 1. **ceiling**: a plain QoS 1 bridge (subscribe, republish at QoS 1, no storage) in
//!    this process, in place of the gateway;
//! 2. **gateway**, for `bundle` and `observation` modes: the real daemon (`iomt-gateway
//!    run` of the profile the benchmark is built in) with its MQTT driver on the device
//!    broker and its MQTT uplink to the cloud broker,
//!    - *live*: the generator publishes while the daemon runs; timed from the first
//!      publish to the last reading counted at the cloud;
//!    - *backlog*: the readings wait in the device broker (the daemon's persistent
//!      session) when the daemon starts; timed from its start to the last reading
//!      counted.
//!
//! For the gateway, from `/proc` of the daemon over both phases: CPU-seconds per 1000
//! readings (`utime + stime`), the peak RSS (`VmHWM`) and the bytes written to storage
//! per reading (`write_bytes`).
//!
//! Arguments (after `--`): the number of readings (default 100000) and the generator's
//! window (default 1000), e.g. `cargo bench --profile dev -p iomt-gateway --bench
//! mqtt_roundtrip -- 2000 100` for a quick check.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kit::{Kit, PATIENT};
use common::running::Running;
use iomt_testkit::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::runtime::Runtime;

/// The profile the daemon decodes the readings with.
const PROFILE: &str = "mqtt-generic-json-vitals";
/// Device ids the readings come from.
const DEVICES: u32 = 1000;
/// How long a phase may take before the benchmark gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

/// Reading `i`: a topic naming its device and a payload with a distinct time per device.
fn reading(i: u32) -> (String, Vec<u8>) {
    let (dev, n) = (i % DEVICES, i / DEVICES);
    let t = format!(
        "2026-01-{:02}T{:02}:{:02}:{:02}Z",
        1 + n / 86_400 % 28,
        n / 3600 % 24,
        n / 60 % 60,
        n % 60
    );
    (
        format!("iomt/dev-{dev}/vitals"),
        format!(r#"{{"time":"{t}","heart_rate":{}}}"#, 50 + i % 80).into_bytes(),
    )
}

/// Publishes readings `from..from + n` at QoS 1 with at most `window` unacknowledged;
/// returns once the broker has acknowledged all.
async fn generate(port: u16, from: u32, n: u32, window: u16) {
    let mut o = MqttOptions::new(format!("load-{from}"), "127.0.0.1", port);
    o.set_inflight(window.max(1))
        .set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(o, usize::from(window).max(16));
    let sender = tokio::spawn(async move {
        for i in from..from + n {
            let (topic, payload) = reading(i);
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < n {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("load generator: {e}"),
        }
    }
    sender.abort();
}

/// What the cloud side received: Observation identifiers, and how many in all.
#[derive(Default)]
struct Tally {
    ids: HashSet<String>,
    total: u64,
    /// Identifiers that arrived more than once (the first few).
    again: Vec<String>,
    /// The counter's own connection errors (a reconnect makes the broker send again what
    /// the counter had not acknowledged).
    errors: Vec<String>,
}

/// Subscribes to `filter` on the cloud broker and counts the Observations that arrive
/// (in Bundles or alone) by identifier.
async fn counter(port: u16, id: &str, filter: &str) -> Arc<Mutex<Tally>> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_max_packet_size(256 << 20, 256 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let keep = tally.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let filter = filter.to_string();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let found = observations(&p.topic, &p.payload);
                    let mut t = keep.lock().unwrap();
                    for id in found {
                        t.total += 1;
                        if !t.ids.insert(id.clone()) && t.again.len() < 5 {
                            t.again.push(id);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    keep.lock().unwrap().errors.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ready_rx.await.unwrap();
    tally
}

/// The parts of a message the counter reads; serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct Message<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Option<&'a str>,
    #[serde(default, borrow)]
    identifier: Vec<Identifier<'a>>,
    #[serde(default, borrow)]
    entry: Vec<Entry<'a>>,
}

#[derive(serde::Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    resource: Message<'a>,
}

#[derive(serde::Deserialize)]
struct Identifier<'a> {
    #[serde(borrow)]
    value: std::borrow::Cow<'a, str>,
}

/// The identifiers of the Observations in a message: a Bundle's, an Observation's, or
/// topic and payload (the plain bridge republishes readings as they are).
///
/// Deserialized into the few borrowed fields above, not into a `serde_json::Value`: the
/// counter shares the machine's two cores with the brokers and the daemon, and a whole
/// tree per Bundle of 1000 entries cost it more than half a core.
fn observations(topic: &str, payload: &[u8]) -> Vec<String> {
    let id = |m: &Message<'_>| m.identifier.first().map(|i| i.value.to_string());
    match serde_json::from_slice::<Message<'_>>(payload) {
        Ok(m) if m.resource_type == Some("Bundle") => m
            .entry
            .iter()
            .filter(|e| e.resource.resource_type == Some("Observation"))
            .filter_map(|e| id(&e.resource))
            .collect(),
        Ok(m) if m.resource_type == Some("Observation") => id(&m).into_iter().collect(),
        Ok(_) => vec![format!("{topic} {}", String::from_utf8_lossy(payload))],
        Err(_) => Vec::new(),
    }
}

/// Waits until `tally` holds `n` distinct readings; returns when.
fn wait_counted(tally: &Mutex<Tally>, n: usize, what: &str) -> Instant {
    let start = Instant::now();
    loop {
        let have = tally.lock().unwrap().ids.len();
        if have >= n {
            return Instant::now();
        }
        assert!(
            start.elapsed() < PHASE_LIMIT,
            "{what}: {have} of {n} readings at the cloud after {PHASE_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Creates the persistent session of `client_id` on the device broker, subscribed to the
/// readings, so that the broker keeps what is published before that client connects.
async fn register_session(port: u16, client_id: &str) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(o, 8);
    loop {
        match eventloop.poll().await.unwrap() {
            Event::Incoming(Packet::ConnAck(_)) => client
                .subscribe("iomt/+/vitals", QoS::AtLeastOnce)
                .await
                .unwrap(),
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => {}
        }
    }
    client.disconnect().await.unwrap();
    while let Ok(e) = eventloop.poll().await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

/// The plain QoS 1 bridge: readings from the device broker republished to the cloud
/// broker under `bridge/`, acknowledged automatically.
async fn bridge(device: u16, cloud: u16) {
    let mut o = MqttOptions::new("plain-bridge", "127.0.0.1", cloud);
    o.set_inflight(1000);
    let (out, mut out_loop) = AsyncClient::new(o, 1024);
    tokio::spawn(async move { while out_loop.poll().await.is_ok() {} });
    let mut o = MqttOptions::new("plain-bridge", "127.0.0.1", device);
    o.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe("iomt/+/vitals", QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = format!("bridge/{}", p.topic);
                    if out
                        .publish(topic, QoS::AtLeastOnce, false, p.payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

/// A `Key: value` line of a `/proc` file, as a number (`kB` dropped).
fn proc_value(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `utime + stime` of the process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let per_sec = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    ticks as f64 / per_sec as f64
}

/// One mode's figures.
struct Figures {
    live: f64,
    backlog: f64,
    cpu_per_1000: f64,
    peak_rss_mib: f64,
    written_per_reading: f64,
}

/// The whole round trip through the daemon in `mode`: live, then from a backlog.
fn gateway_run(rt: &Runtime, mode: &str, n: u32, window: u16) -> Figures {
    let kit = Kit::new();
    let device = Mosquitto::start(
        &kit.path("device-broker"),
        "max_inflight_messages 1000\nmax_queued_messages 100000000\n",
    )
    .unwrap();
    let cloud =
        Mosquitto::start(&kit.path("cloud-broker"), "max_queued_messages 100000000\n").unwrap();
    let client_id = "iomt-gateway-roundtrip";
    rt.block_on(register_session(device.port(), client_id));
    let tally = rt.block_on(counter(cloud.port(), &format!("count-{mode}"), "gw/#"));
    let config = kit
        .config_for("kit-roundtrip", PATIENT)
        .driver(&format!(
            "[mqtt]\nenabled = true\nport = {}\nclient_id = \"{client_id}\"\nmax_in_flight = 1000\nprofiles = [\"{PROFILE}\"]",
            device.port()
        ))
        .uplink(&format!(
            "kind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic = \"gw/{{gateway}}/fhir\"\nmode = \"{mode}\"\nbatch_size = 1000",
            cloud.port()
        ))
        .log("warn,iomt_gateway=info")
        .write();

    // Live: published while the daemon runs.
    let daemon = Running::start(&config, &[], Duration::from_secs(60));
    daemon.wait_log("gateway running", 1);
    let pid = daemon.pid();
    let half = n / 2;
    let start = Instant::now();
    let generator = rt.spawn(generate(device.port(), 0, half, window));
    let live_done = wait_counted(&tally, half as usize, "live");
    // Its last PUBACKs may still be on their way: the broker must outlive them.
    rt.block_on(generator).unwrap();
    let live = f64::from(half) / live_done.duration_since(start).as_secs_f64();
    let cpu_live = cpu_secs(pid);
    let written_live = proc_value(&format!("/proc/{pid}/io"), "write_bytes:");
    let rss_live = proc_value(&format!("/proc/{pid}/status"), "VmHWM:");
    let live_log = daemon.stop();

    // Backlog: published while the daemon is stopped, kept by its persistent session.
    rt.block_on(generate(device.port(), half, n - half, window));
    let start = Instant::now();
    let daemon = Running::start(&config, &[], Duration::from_secs(60));
    let pid = daemon.pid();
    let done = wait_counted(&tally, n as usize, "backlog");
    let backlog = f64::from(n - half) / done.duration_since(start).as_secs_f64();
    let cpu = cpu_live + cpu_secs(pid);
    let written = written_live + proc_value(&format!("/proc/{pid}/io"), "write_bytes:");
    let rss = rss_live.max(proc_value(&format!("/proc/{pid}/status"), "VmHWM:"));
    let backlog_log = daemon.stop();

    let t = tally.lock().unwrap();
    assert_eq!(t.ids.len(), n as usize, "{mode}: readings lost");
    // What the daemon said about its connections and its shutdown, if a reading came
    // twice.
    let said = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("WARN")
                    || l.contains("shutdown")
                    || l.contains("connected")
                    || l.contains("stopped")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        t.total,
        u64::from(n),
        "{mode}: readings duplicated, e.g. {:?}; the counter's connection errors: {:?}; the daemon, live: {:#?}; from a backlog: {:#?}",
        t.again,
        t.errors,
        said(&live_log),
        said(&backlog_log)
    );
    Figures {
        live,
        backlog,
        cpu_per_1000: cpu / f64::from(n) * 1000.0,
        peak_rss_mib: rss as f64 / 1024.0,
        written_per_reading: written as f64 / f64::from(n),
    }
}

/// The plain bridge's readings/s, live.
fn ceiling(rt: &Runtime, n: u32, window: u16) -> f64 {
    let kit = Kit::new();
    let device = Mosquitto::start(
        &kit.path("device-broker"),
        "max_inflight_messages 1000\nmax_queued_messages 100000000\n",
    )
    .unwrap();
    let cloud =
        Mosquitto::start(&kit.path("cloud-broker"), "max_queued_messages 100000000\n").unwrap();
    rt.block_on(register_session(device.port(), "plain-bridge"));
    let tally = rt.block_on(counter(cloud.port(), "count-bridge", "bridge/#"));
    rt.block_on(bridge(device.port(), cloud.port()));
    let start = Instant::now();
    let generator = rt.spawn(generate(device.port(), 0, n, window));
    let done = wait_counted(&tally, n as usize, "plain bridge");
    rt.block_on(generator).unwrap();
    f64::from(n) / done.duration_since(start).as_secs_f64()
}

fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = numbers
        .first()
        .map_or(100_000, |&v| v.clamp(2, 10_000_000) as u32);
    let window = numbers.get(1).map_or(1000, |&v| v.clamp(1, 65_535) as u16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("mqtt_roundtrip: {n} readings, window {window}, {DEVICES} device ids");
    let ceiling = ceiling(&rt, n, window);
    println!("  plain QoS 1 bridge (ceiling)     {ceiling:>10.0} readings/s");
    for mode in ["bundle", "observation"] {
        let f = gateway_run(&rt, mode, n, window);
        println!("  gateway, {mode}:");
        println!(
            "    live                           {:>10.0} readings/s ({:.2} of the ceiling)",
            f.live,
            f.live / ceiling
        );
        println!(
            "    from a backlog                 {:>10.0} readings/s ({:.2} of the ceiling)",
            f.backlog,
            f.backlog / ceiling
        );
        println!(
            "    CPU per 1000 readings          {:>10.3} s",
            f.cpu_per_1000
        );
        println!(
            "    peak RSS                       {:>10.1} MiB",
            f.peak_rss_mib
        );
        println!(
            "    written per reading            {:>10.0} bytes",
            f.written_per_reading
        );
        println!("    0 lost, 0 duplicated");
    }
}
