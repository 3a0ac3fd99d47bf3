use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iomt_drivers::link::LinkEvent;
use iomt_drivers::{DeviceIdentity, Measurement, Quantity, Reading, Transport};
use rust_decimal::Decimal;

use super::view::{Asked, DeviceState, UplinkState};
use super::*;

fn identity(transport: Transport, address: &str) -> DeviceIdentity {
    DeviceIdentity {
        profile: "test-cuff".into(),
        transport,
        address: address.into(),
        serial_number: Some("SN-SECRET".into()),
        manufacturer: None,
        model: None,
        revisions: Default::default(),
    }
}

fn reading(id: &DeviceIdentity, at: chrono::DateTime<Utc>, battery: Option<i64>) -> Reading {
    let mut quantities = vec![Quantity {
        name: "systolic".into(),
        value: Measurement::Value(Decimal::new(1234, 1)),
        unit: "mm[Hg]".into(),
        site: None,
    }];
    if let Some(b) = battery {
        quantities.push(Quantity {
            name: BATTERY_FIELD.into(),
            value: Measurement::Value(Decimal::from(b)),
            unit: "%".into(),
            site: None,
        });
    }
    Reading {
        device: Arc::new(id.clone()),
        device_time: None,
        received_at: at,
        sequence: None,
        quantities,
        flags: Vec::new(),
        clock: None,
    }
}

fn health() -> Health {
    Health::new(Pseudonymizer::new(&[9; 32]))
}

#[test]
fn a_device_is_named_by_its_pseudonym_and_counted_over_24_hours() {
    let h = health();
    let id = identity(Transport::Sim, "AA:BB:CC:DD:EE:FF");
    let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let outcome = ReadingOutcome {
        observations: 1,
        rejected: 0,
    };
    h.reading(
        &reading(&id, now - chrono::Duration::hours(30), None),
        outcome,
    );
    h.reading(
        &reading(&id, now - chrono::Duration::hours(2), Some(87)),
        outcome,
    );
    h.reading(&reading(&id, now, None), outcome);
    let view = h.view(now, Duration::from_secs(600), &Asked::default());
    let d = &view.devices[0];
    assert_eq!(d.readings_24h, 2);
    assert_eq!(d.battery_percent, Some(87));
    assert_eq!(d.state, DeviceState::Seen);
    assert_eq!(d.last_reading, Some(now));
    let json = serde_json::to_string(&view).unwrap();
    for secret in ["AA:BB:CC:DD:EE:FF", "SN-SECRET", "123.4"] {
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert_eq!(view.ingest[0].readings, 3);
}

#[test]
fn a_ble_device_that_hung_up_long_ago_is_not_seen() {
    let h = health();
    let id = identity(Transport::Ble, "AA:BB:CC:DD:EE:01");
    h.device_configured(&id);
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    assert_eq!(view.devices[0].state, DeviceState::NotSeen);
    h.link(&id, LinkEvent::Connected);
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    assert_eq!(view.devices[0].state, DeviceState::Connected);
    h.link(&id, LinkEvent::Disconnected);
    let later = Utc::now() + chrono::Duration::minutes(11);
    let view = h.view(later, Duration::from_secs(600), &Asked::default());
    assert_eq!(view.devices[0].state, DeviceState::NotSeen);
    assert!(view.devices[0].last_seen.is_some());
}

#[test]
fn a_ble_devices_last_advertised_signal_is_kept_with_its_time_and_wakes_nobody() {
    let h = health();
    let id = identity(Transport::Ble, "AA:BB:CC:DD:EE:03");
    h.device_configured(&id);
    let (mut summary, mut changes) = (h.summary(), h.state_changes());
    summary.borrow_and_update();
    changes.borrow_and_update();
    let before = Utc::now();
    h.link(&id, LinkEvent::Advertised { rssi_dbm: -71 });
    assert!(!summary.has_changed().unwrap(), "no summary to send again");
    assert!(!changes.has_changed().unwrap(), "no heartbeat to send");
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    let d = &view.devices[0];
    assert_eq!(d.signal_dbm, Some(-71));
    assert!(d.signal_at.is_some_and(|t| t >= before));
    assert_eq!(
        d.state,
        DeviceState::NotSeen,
        "an advertisement is not a link"
    );
    assert_eq!(d.last_seen, None);
    h.link(&id, LinkEvent::Connected);
    h.link(&id, LinkEvent::Disconnected);
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    assert_eq!(
        view.devices[0].signal_dbm,
        Some(-71),
        "kept after a hang-up"
    );
    let metrics = super::metrics::render(&view);
    let sample = format!(
        "iomt_gateway_device_signal_dbm{{transport=\"ble\",profile=\"test-cuff\",device=\"{}\"}} -71",
        view.devices[0].device
    );
    assert!(metrics.contains(&sample), "{metrics}");
}

#[test]
fn the_summary_changes_only_with_the_state() {
    let h = health();
    let mut summary = h.summary();
    summary.borrow_and_update();
    h.uplink_configured("fhir");
    assert!(summary.has_changed().unwrap());
    summary.borrow_and_update();
    h.delivered("fhir", 3);
    assert!(!summary.has_changed().unwrap());
    h.delivery_failed("fhir");
    assert!(summary.borrow_and_update().contains("failing: fhir"));
    h.delivery_failed("fhir");
    assert!(!summary.has_changed().unwrap());
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    assert_eq!(view.uplinks[0].state, UplinkState::Failing);
    assert_eq!(view.uplinks[0].consecutive_failures, 2);
}

#[test]
fn devices_beyond_the_limit_replace_the_unconfigured_one_seen_longest_ago() {
    let h = health();
    let cuff = identity(Transport::Ble, "AA:BB:CC:DD:EE:02");
    h.device_configured(&cuff);
    let start = Utc::now();
    for i in 0..=MAX_DEVICES {
        let id = identity(Transport::Mqtt, &format!("dev-{i}"));
        let at = start + chrono::Duration::seconds(i as i64);
        h.reading(&reading(&id, at, None), ReadingOutcome::default());
    }
    let view = h.view(Utc::now(), Duration::from_secs(600), &Asked::default());
    assert_eq!(view.devices.len(), MAX_DEVICES);
    assert!(
        view.devices.iter().any(|d| d.transport == "ble"),
        "the configured cuff, never seen, is kept"
    );
}

#[test]
fn heartbeats_report_devices_heard_from_since_the_start_by_state_without_serial_or_address() {
    let h = health();
    h.set_seen_within(Duration::from_secs(60));
    let cuff = identity(Transport::Ble, "A0:00:00:00:00:01");
    let never = identity(Transport::Ble, "A0:00:00:00:00:02");
    h.device_configured(&never);
    let mut changes = h.state_changes();
    changes.borrow_and_update();
    h.link(&cuff, LinkEvent::Connected);
    assert!(
        changes.has_changed().unwrap(),
        "a connection is a state change"
    );
    let resource = crate::normalize::gateway_resource("cuff");
    h.device_resource(&cuff, &resource);
    let now = Utc::now();
    let reported = h.reported_devices(now);
    assert_eq!(reported.len(), 1, "the device never heard from is left out");
    assert_eq!(reported[0].state, DeviceState::Connected);
    assert_eq!(reported[0].last_seen, now, "connected: seen now");
    let device = reported[0].fhir_device().unwrap();
    assert_eq!(device.status.as_deref(), Some("active"));
    assert_eq!(device.status_reason[0].coding[0].code, "online");

    changes.borrow_and_update();
    h.link(&cuff, LinkEvent::Disconnected);
    assert!(
        changes.has_changed().unwrap(),
        "a hang-up is a state change"
    );
    let later = now + chrono::Duration::seconds(120);
    let reported = h.reported_devices(later);
    assert_eq!(reported[0].state, DeviceState::NotSeen);
    assert!(reported[0].last_seen <= Utc::now());
    let device = reported[0].fhir_device().unwrap();
    assert_eq!(device.status_reason[0].coding[0].code, "offline");
    assert_eq!(device.extension[0].url, super::heartbeat::LAST_SEEN_URL);
    let message = h.status_message("gw", "cloud", later, Some(true), Some(0));
    let json = serde_json::to_string(&message).unwrap();
    assert!(json.contains("\"state\":\"not seen\""), "{json}");
    for secret in ["A0:00:00:00:00:01", "SN-SECRET", "123.4"] {
        assert!(!json.contains(secret), "{json}");
        assert!(!serde_json::to_string(&device).unwrap().contains(secret));
    }
}
