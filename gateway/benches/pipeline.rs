//! The store-and-forward benchmark: `cargo bench -p iomt-gateway --bench pipeline`.
//!
//! Measures, on this machine's disk:
//! 1. ingest: readings → normalize → seal → durable outbox rows (observations/s);
//! 2. the ceiling: plain SQLite inserts of equal-sized rows with the same durability
//!    (WAL, synchronous=FULL) and the same rows per transaction, and our ratio to it;
//! 3. drain: outbox → FHIR transaction Bundles → a local FHIR server (iomt-testkit) →
//!    rows deleted (observations/s);
//! 4. bytes written to disk per observation (`/proc/self/io`, ingest + drain);
//! 5. peak RSS of the process (`VmHWM`; it includes the in-process test server).
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

fn peak_rss_kib() -> u64 {
    proc_value("/proc/self/status", "VmHWM:")
}

fn settings(path: PathBuf) -> OutboxSettings {
    OutboxSettings {
        path,
        max_bytes: 4 << 30,
        max_age: None,
        when_full: WhenFull::EvictOldest,
        commit_window: Duration::from_millis(20),
        max_batch_rows: 1000,
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
        out_of_range: OutOfRange::Flag,
        outbox: outbox.clone(),
        observer: None,
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
    let uplink = FhirUplink::new(FhirSettings {
        name: "fhir".into(),
        base_url: server.base_url(),
        bearer_token_file: None,
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    let gateway = serde_json::to_value(normalize::gateway_resource(
        &pseudonymizer.pseudonym(Domain::Gateway, "bench-kit"),
    ))
    .unwrap();
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
        },
        gateway,
        cancel.clone(),
    ));
    loop {
        let s = outbox.status(vec!["fhir".into()]).await.unwrap();
        if s.rows == 0 {
            break;
        }
        // The drain loop runs on its own; poll its progress at a coarse interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
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

    let rss = peak_rss_kib();
    println!("iomt-gateway store-and-forward benchmark");
    println!("  readings                         {count}");
    println!("  observations                     {observations}");
    println!("  sealed row size (avg)            {avg_row:.0} bytes");
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
        "  peak RSS                         {:.1} MiB (whole process, test server included)",
        rss as f64 / 1024.0
    );
    assert_eq!(
        at_server as u64, observations,
        "every observation reaches the server"
    );
}
