//! Heartbeats of the delivery loop, in paused time: after the interval, soon after a
//! device's state or the clock changes (at most one per [`DEBOUNCE`]), and nothing else
//! while the kit is idle.

use std::time::Duration;

use iomt_drivers::link::LinkEvent;
use iomt_drivers::{DeviceIdentity, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{id, run, Bed, DeliverySettings, UPLINK};
use crate::clock::{Clock, ClockSettings, ClockSource};
use crate::fhir::Bundle;
use crate::health::Health;
use crate::outbox::Append;
use crate::pseudonym::Pseudonymizer;
use crate::uplink::deliver::heartbeat::DEBOUNCE;
use crate::uplink::{DeliveryFuture, Heartbeat, Uplink};

/// A FHIR-like uplink that acknowledges everything and reports when each Bundle came
/// and the Devices it PUT (their `statusReason` codes, `-` for none).
struct Beating(mpsc::UnboundedSender<(Instant, Vec<String>)>);

impl Uplink for Beating {
    fn name(&self) -> &str {
        UPLINK
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        let devices = bundle
            .entry
            .iter()
            .filter(|e| e.request.method == "PUT")
            .map(|e| {
                let d: serde_json::Value = serde_json::from_str(e.resource.get()).unwrap();
                d["statusReason"][0]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string()
            })
            .collect();
        let _ = self.0.send((Instant::now(), devices));
        Box::pin(std::future::ready(Ok(())))
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat::Bundle
    }
}

fn cuff() -> DeviceIdentity {
    DeviceIdentity {
        profile: "test-cuff".into(),
        transport: Transport::Ble,
        address: "A0:00:00:00:00:01".into(),
        serial_number: None,
        manufacturer: None,
        model: None,
        revisions: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_change_is_reported_within_seconds_once_per_burst_and_the_idle_kit_only_beats_each_interval(
) {
    let bed = Bed::with_rows(0).await;
    let status = bed.dir.path().join("clock");
    std::fs::write(&status, "synchronized").unwrap();
    let clock = Clock::new(ClockSettings {
        source: ClockSource::StatusFile(status.clone()),
        wait: Duration::from_secs(3600),
    });
    clock.check();
    let health = Health::new(Pseudonymizer::new(&[9; 32]));
    // The model's "seen" period runs on the wall clock, which paused time does not move:
    // long enough that no device becomes "not seen" during the test.
    health.set_seen_within(Duration::from_secs(30 * 24 * 3600));
    let (tx, mut beats) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let interval = Duration::from_secs(900);
    let task = tokio::spawn(run(
        bed.outbox.clone(),
        Box::new(Beating(tx)),
        DeliverySettings {
            batch_size: 100,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(2),
            clock: Some(clock.clone()),
            health: Some(health.clone()),
            heartbeat: Some(interval),
        },
        crate::normalize::gateway_resource("gateway-pseudonym"),
        cancel.clone(),
    ));
    let start = Instant::now();
    // Idle: the first heartbeat after the interval, the gateway's Device alone.
    let (at, devices) = beats.recv().await.unwrap();
    assert_eq!(at - start, interval);
    assert_eq!(devices, ["-"]);

    // The cuff connects, sends (its Device made by the pipeline) and hangs up within a
    // second: one heartbeat right away, its reading's Bundle, then one heartbeat after
    // the debounce with the last state.
    let cuff = cuff();
    let cuff_device = crate::fhir::Device {
        id: "cuff-device".into(),
        ..crate::normalize::gateway_resource("cuff-pseudonym")
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let changed = Instant::now();
    health.link(&cuff, LinkEvent::Connected);
    health.device_resource(&cuff, &cuff_device);
    let (at, devices) = beats.recv().await.unwrap();
    assert!(
        at - changed < Duration::from_millis(10),
        "{:?}",
        at - changed
    );
    assert_eq!(devices, ["-", "online"]);
    // A delivery of its reading carries its state too (the stored Device has none).
    let (ack, acked) = oneshot::channel();
    let json = format!(
        r#"{{"resourceType":"Observation","id":"{0}","identifier":[{{"system":"urn:ietf:rfc:3986","value":"urn:uuid:{0}"}}]}}"#,
        id(0)
    );
    bed.outbox
        .append(Append {
            device_id: "cuff-device".into(),
            device_json: serde_json::to_vec(&cuff_device).unwrap().into(),
            observations: vec![(id(0), json.into_bytes())],
            ack: Some(ack),
            source_waits: true,
        })
        .await
        .unwrap();
    acked.await.unwrap();
    let (_, devices) = beats.recv().await.unwrap();
    assert_eq!(devices, ["-", "online"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    health.link(&cuff, LinkEvent::Disconnected);
    let (at2, devices) = beats.recv().await.unwrap();
    assert_eq!(at2 - at, DEBOUNCE);
    assert_eq!(devices, ["-", "standby"]);

    // The clock is no longer synchronized: the gateway's Device says so soon; the cuff's
    // state is unchanged, so it is not sent again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    std::fs::write(&status, "unsynchronized").unwrap();
    let changed = Instant::now();
    clock.check();
    let (at, devices) = beats.recv().await.unwrap();
    assert!(
        at - changed < Duration::from_millis(10),
        "{:?}",
        at - changed
    );
    assert_eq!(devices, ["-"]);

    // Then nothing until the interval is over: no polling, no other request.
    tokio::time::sleep(interval - Duration::from_secs(1)).await;
    assert!(beats.try_recv().is_err());
    let (next, _) = beats.recv().await.unwrap();
    assert_eq!(next - at, interval);
    cancel.cancel();
    task.await.unwrap();
}
