//! What a heartbeat tells the backend: the gateway is alive, and each device's state and
//! when it was last seen. Made from the model when a heartbeat goes out (every
//! `[status] heartbeat_interval_secs`, and a few seconds after a state change), never
//! polled.
//!
//! - For a FHIR server: each device's own Device resource (as the pipeline made it) with
//!   `status` `active`, `statusReason` from HL7's device-status-reason code system
//!   (`online`: connected; `standby`: seen within `[status] seen_within_secs`; `offline`:
//!   not seen) and the extension [`LAST_SEEN_URL`] holding when it was last heard from.
//! - For an MQTT broker: a [`StatusMessage`], small JSON, retained on the status topic.
//!
//! A device's state changes by events (it connects, hangs up, is heard from) and by time
//! alone (silent for longer than `seen_within_secs`: "not seen"); [`Health::state_changes`]
//! wakes on the former, [`Health::next_unseen`] says when the latter is due, so the
//! delivery loop sets one timer instead of looking.
//!
//! Neither holds a patient id, a measured value, a serial number or an address: devices
//! are named by their pseudonyms, as everywhere in the model. Only devices heard from
//! since the daemon started are reported: one not seen since then keeps what the
//! backend last received about it (its last-seen time in particular).

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::view::DeviceState;
use super::Health;
use crate::fhir::{self, CodeableConcept, Coding, DateTimeExtension};

/// The extension of a measuring device's Device resource holding when the gateway last
/// heard from it (valueDateTime).
pub const LAST_SEEN_URL: &str = "urn:iomt-gateway:device-last-seen";

/// HL7's code system of a Device's `statusReason`.
pub const DEVICE_STATUS_REASON: &str = "http://terminology.hl7.org/CodeSystem/device-status-reason";

/// One device as a heartbeat reports it.
#[derive(Debug, Clone)]
pub struct ReportedDevice {
    /// Its pseudonym.
    pub device: String,
    /// Its profile id.
    pub profile: String,
    /// Its transport.
    pub transport: String,
    /// Its state.
    pub state: DeviceState,
    /// When it was last heard from (now, while connected).
    pub last_seen: DateTime<Utc>,
    /// Its Device resource, once it sent a reading.
    resource: Option<Arc<fhir::Device>>,
}

impl ReportedDevice {
    /// The id of its Device resource, once it sent a reading.
    pub fn resource_id(&self) -> Option<&str> {
        self.resource.as_deref().map(|r| r.id.as_str())
    }

    /// Its Device resource carrying its state (`None`: it sent no reading since the start,
    /// so there is no resource to report on).
    pub fn fhir_device(&self) -> Option<fhir::Device> {
        let mut device = fhir::Device::clone(self.resource.as_deref()?);
        let (code, display) = match self.state {
            DeviceState::Connected => ("online", "online"),
            DeviceState::Seen => ("standby", "standby"),
            DeviceState::NotSeen => ("offline", "offline"),
        };
        device.status = Some("active".into());
        device.status_reason = vec![CodeableConcept {
            coding: vec![Coding::new(DEVICE_STATUS_REASON, code, display)],
            text: None,
        }];
        device.extension = vec![DateTimeExtension {
            url: LAST_SEEN_URL.into(),
            value_date_time: self.last_seen.to_rfc3339_opts(SecondsFormat::Secs, true),
        }];
        Some(device)
    }
}

/// The MQTT uplink's status message (retained on its status topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// `online`, or `offline` (the last will, published by the broker when the
    /// connection is lost without a goodbye).
    pub state: String,
    /// The gateway's pseudonym.
    pub gateway: String,
    /// The gateway's version.
    pub version: String,
    /// When this message was made (`null` in the last will, made at connection time).
    pub sent_at: Option<DateTime<Utc>>,
    /// When this uplink last delivered Observations (since the start).
    pub last_delivery: Option<DateTime<Utc>>,
    /// Whether the gateway's clock is synchronized.
    pub clock_synchronized: Option<bool>,
    /// Rows waiting for this uplink (`null`: the outbox did not answer).
    pub backlog_rows: Option<u64>,
    /// Each device heard from since the start.
    pub devices: Vec<StatusDevice>,
}

/// One device in a [`StatusMessage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDevice {
    /// Its pseudonym.
    pub device: String,
    /// Its profile id.
    pub profile: String,
    /// Its transport.
    pub transport: String,
    /// `connected`, `seen` or `not seen`.
    pub state: DeviceState,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
}

impl StatusMessage {
    /// The last will: `offline`, with nothing that changes after the connection.
    pub fn offline(gateway: &str) -> Self {
        Self {
            state: "offline".into(),
            gateway: gateway.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sent_at: None,
            last_delivery: None,
            clock_synchronized: None,
            backlog_rows: None,
            devices: Vec::new(),
        }
    }
}

impl Health {
    /// Wakes when a device's state changes (it connects, hangs up, is first heard from,
    /// or heard from again after being "not seen").
    pub fn state_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub(super) fn state_changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How recently a device must have been heard from to be "seen" (`[status]
    /// seen_within_secs`; 600 s until set).
    pub fn set_seen_within(&self, seen_within: std::time::Duration) {
        self.lock().seen_within = seen_within;
    }

    /// The Device resource the pipeline made for the device `id` (once per device, when
    /// its first reading comes).
    pub fn device_resource(&self, id: &iomt_drivers::DeviceIdentity, resource: &fhir::Device) {
        let mut state = self.lock();
        self.device(&mut state, id).resource = Some(Arc::new(resource.clone()));
    }

    /// When the next device now "seen" becomes "not seen" if it stays silent: its state
    /// changes with time alone, and a heartbeat then reports it.
    pub fn next_unseen(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let state = self.lock();
        let within = chrono::Duration::from_std(state.seen_within).ok()?;
        state
            .devices
            .values()
            .filter(|d| d.link != super::Link::Connected)
            .filter_map(|d| d.last_seen?.checked_add_signed(within))
            .filter(|t| *t >= now)
            .min()
    }

    /// The devices heard from since the start, as a heartbeat at `now` reports them.
    pub fn reported_devices(&self, now: DateTime<Utc>) -> Vec<ReportedDevice> {
        let state = self.lock();
        state
            .devices
            .iter()
            .filter_map(|(pseudonym, d)| {
                let last_seen = d.last_seen?;
                let s = d.state(now, state.seen_within);
                Some(ReportedDevice {
                    device: pseudonym.clone(),
                    profile: d.profile.clone(),
                    transport: d.transport.to_string(),
                    state: s,
                    last_seen: if s == DeviceState::Connected {
                        now
                    } else {
                        last_seen
                    },
                    resource: d.resource.clone(),
                })
            })
            .collect()
    }

    /// The status message of `uplink` at `now`.
    pub fn status_message(
        &self,
        gateway: &str,
        uplink: &str,
        now: DateTime<Utc>,
        clock_synchronized: Option<bool>,
        backlog_rows: Option<u64>,
    ) -> StatusMessage {
        let devices = self
            .reported_devices(now)
            .into_iter()
            .map(|d| StatusDevice {
                device: d.device,
                profile: d.profile,
                transport: d.transport,
                state: d.state,
                last_seen: d.last_seen,
            })
            .collect();
        let last_delivery = self
            .lock()
            .uplinks
            .get(uplink)
            .and_then(|u| u.last_delivery);
        StatusMessage {
            state: "online".into(),
            sent_at: Some(now),
            last_delivery,
            clock_synchronized,
            backlog_rows,
            devices,
            ..StatusMessage::offline(gateway)
        }
    }
}
