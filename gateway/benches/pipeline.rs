//! The store-and-forward benchmark: `cargo bench -p iomt-gateway --bench pipeline`.
//!
//! Measures, on this machine's disk:
//! 1. ingest: readings → normalize → seal → durable outbox rows (observations/s);
//! 2. the ceiling: plain SQLite inserts of equal-sized rows with the same durability
//!    (WAL, synchronous=FULL) and the same rows per transaction, and our ratio to it;
//! 3. drain: outbox → FHIR transaction Bundles → a local FHIR server (iomt-testkit) →
//!    rows deleted (observations/s);
//! 4. bytes written to disk per observation (`/proc/self/io`, ingest + drain);
//! 5. peak RSS of the real daemon (`iomt-gateway run`, `VmHWM`) while its simulator
//!    produces readings as fast as its timer allows and it forwards them to the local
//!    FHIR server.
//!
//! Options (environment): `BENCH_OBSERVATIONS` (default 200000), `BENCH_DIR` (default: a
//! temporary directory under the system temp dir).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomt_drivers::sim::{SimClock, SimDevice, SimDriver};
use iomt_drivers::{reading_channel, DeviceIdentity, Transport};
use iomt_gateway::normalize::{self, OutOfRange, Zone};
use iomt_gateway::outbox::seal::Keyring;
use iomt_gateway::outbox::{Outbox, OutboxSettings, WhenFull};
use iomt_gateway::pipeline::Pipeline;
use iomt_gateway::pseudonym::{Domain, Pseudonymizer};
use iomt_gateway::uplink::deliver::{self, DeliverySettings};
use iomt_gateway::uplink::fhir_http::{FhirSettings, FhirUplink};
use iomt_gateway::{demo, profile::TransportSpec};
use iomt_testkit::FhirServer;
use tokio_util::sync::CancellationToken;

fn proc_value(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn write_bytes() -> u64 {
    proc_value("/proc/self/io", "write_bytes:")
}

fn settings(path: PathBuf) -> OutboxSettings {
    OutboxSettings {
        path,
        max_bytes: 4 << 30,
        max_age: None,
        when_full: WhenFull::EvictOldest,
        commit_window: Duration::from_millis(20),
        quiet_commit_window: Duration::from_millis(20),
        max_batch_rows: 1000,
        pseudonym_key: None,
    }
}

/// Plain SQLite: `n` rows of `size` bytes, `per_txn` rows per transaction, same durability.
fn sqlite_ceiling(dir: &Path, n: usize, size: usize, per_txn: usize) -> f64 {
    let path = dir.join("ceiling.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE rows (seq INTEGER PRIMARY KEY, created_ms INTEGER, device_id TEXT, pending INTEGER, key_id INTEGER, nonce BLOB, sealed BLOB)")
        .unwrap();
    let payload = vec![0xa5u8; size];
    let start = Instant::now();
    let mut seq = 0i64;
    while (seq as usize) < n {
        conn.execute_batch("BEGIN").unwrap();
        {
            let mut stmt = conn
                .prepare_cached("INSERT INTO rows VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .unwrap();
            for _ in 0..per_txn.min(n - seq as usize) {
                seq += 1;
                stmt.execute(rusqlite::params![
                    seq,
                    0,
                    "dev-0123456789abcdef",
                    1,
                    1,
                    &payload[..12],
                    &payload
                ])
                .unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs the real daemon for a while at its simulator's full rate, forwarding to `server`;
/// returns (peak RSS in KiB, observations delivered, seconds).
async fn daemon_peak_rss(dir: &Path, server: &FhirServer) -> (u64, usize, f64) {
    use std::os::unix::fs::PermissionsExt;
    let secs: f64 = std::env::var("BENCH_DAEMON_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    for key in ["p.key", "s.key"] {
        let path = dir.join(key);
        std::fs::write(&path, [9u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
id = "bench-kit"
profiles_dir = "{root}/device-profiles"
[patient]
id = "bench-patient"
[pseudonymization]
key_file = "{dir}/p.key"
[sim]
enabled = true
interval_secs = 0.001
[outbox]
path = "{dir}/daemon.db"
key_file = "{dir}/s.key"
[[uplinks]]
kind = "fhir"
base_url = "{url}"
[log]
level = "warn"
# The benchmark machine's kernel need not report a synchronized clock; readings must not
# be held for it.
[clock]
source = "assume-synchronized"
"#,
            root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .display(),
            dir = dir.display(),
            url = server.base_url()
        ),
    )
    .unwrap();
    let before = server.with_store(|s| s.observations.len());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iomt-gateway"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed().as_secs_f64() < secs {
        peak = peak.max(proc_value(&status, "VmHWM:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(proc_value(&status, "VmHWM:"));
    let delivered = server.with_store(|s| s.observations.len()) - before;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (peak, delivered, secs)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this file as a test:
    // keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_OBSERVATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 200_000 });
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, dir.path()));
}

async fn run(n: usize, dir: &Path) {
    let profiles: Vec<Arc<_>> = demo::embedded_profiles()
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let pseudonymizer = Pseudonymizer::new(&demo::DEMO_KEY);
    let keyring = Arc::new(Keyring::new(&[42; 32]));
    let db = dir.join("outbox.db");
    let (outbox, writer) = Outbox::open(settings(db.clone()), keyring.clone(), vec!["fhir".into()])
        .await
        .unwrap();

    // Readings: the simulator's own models, generated ahead of time so that only the
    // gateway is measured. One reading of the BP cuff gives two observations, the others
    // one or two; we generate until `n` observations.
    let devices: Vec<SimDevice> = profiles
        .iter()
        .filter_map(|p| match &p.transport {
            TransportSpec::Sim(spec) => Some(SimDevice {
                identity: Arc::new(DeviceIdentity {
                    revisions: Default::default(),
                    profile: p.id.clone(),
                    transport: Transport::Sim,
                    address: format!("{}-bench", p.id),
                    serial_number: None,
                    manufacturer: None,
                    model: None,
                }),
                clock: SimClock::Zoned,
                signals: spec.signals.clone(),
            }),
            _ => None,
        })
        .collect();
    let readings_needed = n * 6 / 9 + 6; // ≈ 9 observations per 6 readings
    let readings = SimDriver::new(iomt_drivers::sim::SimConfig {
        interval: Duration::from_secs(1),
        nan_probability: 0.0,
        out_of_range_probability: 0.0,
        seed: 1,
        max_readings: None,
        devices,
    })
    .unwrap()
    .generate(readings_needed);

    let pipeline = Pipeline {
        profiles: profiles
            .iter()
            .map(|p| (p.id.clone(), p.clone()))
            .collect::<HashMap<_, _>>(),
        patient_pseudonym: pseudonymizer.pseudonym(Domain::Patient, "bench-patient"),
        gateway_pseudonym: pseudonymizer.pseudonym(Domain::Gateway, "bench-kit"),
        pseudonymizer: pseudonymizer.clone(),
        zones: (Zone::GatewayLocal, Default::default()),
        address_zones: Default::default(),
        out_of_range: OutOfRange::Flag,
        outbox: outbox.clone(),
        observer: None,
        clock: None,
        health: None,
    };

    // 0. The CPU cost of normalizing and serializing alone (no outbox), for reference.
    let cpu = {
        let profile_of: HashMap<&str, &Arc<_>> =
            profiles.iter().map(|p| (p.id.as_str(), p)).collect();
        let subject = iomt_gateway::fhir::Reference::to("Patient/x");
        let device = "0123456789abcdef0123456789abcdef";
        let (device_reference, gateway_reference) = (
            normalize::device_reference(device),
            normalize::device_reference("g"),
        );
        let c = normalize::Context {
            subject: &subject,
            device_pseudonym: device,
            device_reference: &device_reference,
            gateway_reference: &gateway_reference,
            zone: Zone::GatewayLocal,
            out_of_range: OutOfRange::Flag,
        };
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut count = 0usize;
        for r in readings.iter().take(20_000) {
            let out = normalize::normalize(r, profile_of[r.device.profile.as_str()], &c);
            for o in &out.observations {
                bytes += serde_json::to_vec(o).map(|v| v.len()).unwrap_or(0);
                count += 1;
            }
        }
        (
            count as f64 / start.elapsed().as_secs_f64(),
            bytes / count.max(1),
        )
    };

    // 1. Ingest.
    let written_before = write_bytes();
    let (tx, rx) = reading_channel(4096);
    let mut committed = outbox.committed();
    let start = Instant::now();
    let pipe = tokio::spawn(pipeline.run(rx));
    let count = readings.len();
    let feeder = tokio::spawn(async move {
        for r in readings {
            if tx.send(r).await.is_err() {
                break;
            }
        }
    });
    feeder.await.unwrap();
    let stats = pipe.await.unwrap();
    let observations = stats.observations;
    while *committed.borrow_and_update() < observations as i64 {
        committed.changed().await.unwrap();
    }
    let ingest_secs = start.elapsed().as_secs_f64();
    let ingest_rate = observations as f64 / ingest_secs;
    let ingest_written = write_bytes() - written_before;
    let status = outbox.status(vec!["fhir".into()]).await.unwrap();
    let avg_row = status.payload_bytes as f64 / status.rows.max(1) as f64;

    // 3. Drain to a local FHIR server.
    let server = FhirServer::start().await.unwrap();
    server.keep_resources(false);
    let uplink = FhirUplink::new(FhirSettings {
        name: "fhir".into(),
        base_url: server.base_url(),
        auth: Default::default(),
        timeout: Duration::from_secs(30),
        ca_file: None,
        client_identity: None,
        insecure: false,
        allow_insecure: false,
    })
    .unwrap();
    let gateway =
        normalize::gateway_resource(&pseudonymizer.pseudonym(Domain::Gateway, "bench-kit"));
    let cancel = CancellationToken::new();
    let written_before = write_bytes();
    let start = Instant::now();
    let batch = 500;
    let drain = tokio::spawn(deliver::run(
        outbox.clone(),
        Box::new(uplink),
        DeliverySettings {
            batch_size: batch,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            drain_deadline: Duration::from_secs(5),
            clock: None,
            health: None,
            heartbeat: None,
        },
        gateway,
        cancel.clone(),
    ));
    // The drain loop runs on its own; watch the server's count at a coarse interval.
    while server.with_store(|s| s.observations.len()) < observations as usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_secs = start.elapsed().as_secs_f64();
    let drain_written = write_bytes() - written_before;
    cancel.cancel();
    let delivered = drain.await.unwrap();
    let at_server = server.with_store(|s| s.observations.len());
    drop(outbox);
    writer.await.unwrap();

    // 2. The ceiling, with rows of the same size and the same rows per transaction.
    let ceiling = sqlite_ceiling(dir, observations as usize, avg_row.round() as usize, 1000);

    let rss = daemon_peak_rss(dir, &server).await;
    println!("iomt-gateway store-and-forward benchmark");
    println!("  readings                         {count}");
    println!("  observations                     {observations}");
    println!(
        "  sealed row size (avg)            {avg_row:.0} bytes (Observation JSON {} bytes)",
        cpu.1
    );
    println!(
        "  normalize + serialize only       {:.0} observations/s (one core)",
        cpu.0
    );
    println!(
        "  ingest to durable rows           {ingest_rate:.0} observations/s ({ingest_secs:.2} s)"
    );
    println!("  plain SQLite ceiling             {ceiling:.0} rows/s (same size, WAL, synchronous=FULL, 1000 rows/commit)");
    println!(
        "  ingest / ceiling                 {:.2}",
        ingest_rate / ceiling
    );
    println!("  drained to local FHIR server     {:.0} observations/s ({drain_secs:.2} s, {batch} per Bundle)", observations as f64 / drain_secs);
    println!(
        "  delivered / at server            {} / {at_server}",
        delivered.delivered
    );
    println!(
        "  disk bytes written / observation {:.0} (ingest {:.0} + drain {:.0})",
        (ingest_written + drain_written) as f64 / observations as f64,
        ingest_written as f64 / observations as f64,
        drain_written as f64 / observations as f64
    );
    println!(
        "  peak RSS of the daemon           {:.1} MiB ({} observations delivered in {:.0} s at the simulator's full rate)",
        rss.0 as f64 / 1024.0,
        rss.1,
        rss.2
    );
    assert_eq!(
        at_server as u64, observations,
        "every observation reaches the server"
    );
}
