//! The gateway at rest: an idle pipeline, outbox and delivery loop leave SQLite alone.
//!
//! Runs under tokio's paused time, so ten idle minutes take milliseconds and machine
//! noise cannot fool the count: the outbox's writer counts every transaction it runs,
//! and the fake uplink every Bundle it is sent. Regression test for a delivery loop that
//! woke on its own fetches (fetch → commit notification → fetch, thousands a second).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use iomt_drivers::{reading_channel, DeviceIdentity, Quantity, Reading, ReadingSender, Transport};
use iomt_gateway::fhir::Bundle;
use iomt_gateway::normalize::{OutOfRange, Zone};
use iomt_gateway::outbox::{seal::Keyring, Outbox, OutboxSettings, WhenFull};
use iomt_gateway::pipeline::Pipeline;
use iomt_gateway::pseudonym::Pseudonymizer;
use iomt_gateway::uplink::deliver::{self, DeliverySettings};
use iomt_gateway::uplink::{DeliveryFuture, Uplink};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

/// An uplink that acknowledges every Bundle and counts them.
struct Counting {
    bundles: Arc<AtomicUsize>,
}

impl Uplink for Counting {
    fn name(&self) -> &str {
        "fhir"
    }

    fn deliver<'a>(&'a mut self, _bundle: &'a Bundle) -> DeliveryFuture<'a> {
        self.bundles.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

fn thermometer_reading(n: u32) -> Reading {
    Reading {
        clock: None,
        device: Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "sim-thermometer".into(),
            transport: Transport::Sim,
            address: "thermometer-1".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        }),
        device_time: None,
        received_at: Utc::now(),
        sequence: Some(u64::from(n)),
        quantities: vec![Quantity::new(
            "body_temperature",
            Decimal::new(3650 + i64::from(n), 2),
            "Cel",
        )],
        flags: Vec::new(),
    }
}

/// Moves the paused clock forward by `secs` seconds, one second at a time, and after
/// each step lets every task run and waits for a transaction in flight to end (a ping
/// through the writer answers only then), then calls `check`. `advance` moves the clock
/// even when some task never lets the runtime idle (a loop that wakes itself), where a
/// plain `sleep` would wait for ever.
async fn pass_time(outbox: &Outbox, secs: u64, mut check: impl FnMut()) {
    for _ in 0..secs {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        outbox.ping().await.expect("the outbox writer answers");
        check();
    }
}

/// Sends one reading and waits until it is committed and then delivered.
async fn measure(tx: &ReadingSender, n: u32, bundles: &AtomicUsize) {
    let before = bundles.load(Ordering::SeqCst);
    let commit = tx
        .send_acked(thermometer_reading(n))
        .await
        .expect("the pipeline takes readings");
    commit.await.expect("the reading is committed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bundles.load(Ordering::SeqCst) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading {n} was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_gateway_runs_no_outbox_transaction_and_no_fetch_for_ten_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = OutboxSettings {
        path: dir.path().join("outbox.db"),
        max_bytes: 1 << 30,
        max_age: None,
        when_full: WhenFull::EvictOldest,
        commit_window: Duration::from_millis(20),
        quiet_commit_window: Duration::from_millis(20),
        max_batch_rows: 1000,
        pseudonym_key: None,
    };
    let keyring = Arc::new(Keyring::new(&[7; 32]));
    let (outbox, writer) = Outbox::open(settings, keyring, vec!["fhir".into()])
        .await
        .unwrap();

    let bundles = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let gateway_device = iomt_gateway::normalize::gateway_resource("gateway-pseudonym");
    let delivery = tokio::spawn(deliver::run(
        outbox.clone(),
        Box::new(Counting {
            bundles: bundles.clone(),
        }),
        DeliverySettings {
            batch_size: 100,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(2),
            clock: None,
            health: None,
            heartbeat: None,
        },
        gateway_device,
        cancel.clone(),
    ));
    let profiles = iomt_gateway::demo::embedded_profiles().unwrap();
    let pipeline = Pipeline {
        profiles: profiles
            .into_iter()
            .map(|p| (p.id.clone(), Arc::new(p)))
            .collect::<HashMap<_, _>>(),
        pseudonymizer: Pseudonymizer::new(&[9; 32]),
        patient_pseudonym: "patient-pseudonym".into(),
        gateway_pseudonym: "gateway-pseudonym".into(),
        zones: (Zone::Named(chrono_tz::UTC), BTreeMap::new()),
        address_zones: BTreeMap::new(),
        out_of_range: OutOfRange::default(),
        outbox: outbox.clone(),
        observer: None,
        clock: None,
        health: None,
    };
    let (tx, rx) = reading_channel(16);
    let pipeline = tokio::spawn(pipeline.run(rx));

    // One reading goes all the way, and its delivered row is deleted (after the delay
    // that lets deletions share a commit with later writes).
    measure(&tx, 0, &bundles).await;
    pass_time(&outbox, 30, || {}).await;
    let settled = outbox.transactions();

    // Ten idle minutes: not one transaction, not one Bundle.
    pass_time(&outbox, 600, || {
        assert_eq!(
            outbox.transactions(),
            settled,
            "the outbox ran transactions while nothing happened"
        );
    })
    .await;
    assert_eq!(bundles.load(Ordering::SeqCst), 1);

    // A reading costs a bounded number of transactions: its commit, the delivery loop's
    // fetch, the fetch that finds nothing more, and the deletion of the delivered row.
    measure(&tx, 1, &bundles).await;
    pass_time(&outbox, 30, || {}).await;
    let per_reading = outbox.transactions() - settled;
    assert!(
        per_reading <= 4,
        "one reading cost {per_reading} outbox transactions"
    );
    pass_time(&outbox, 600, || {
        assert_eq!(outbox.transactions() - settled, per_reading)
    })
    .await;

    drop(tx);
    pipeline.await.unwrap();
    cancel.cancel();
    delivery.await.unwrap();
    drop(outbox);
    writer.await.unwrap();
}
