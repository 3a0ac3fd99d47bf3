//! Heartbeats of the delivery loop: the backend learns that the kit is alive, and each
//! device's state, whether or not the patient measured.
//!
//! **When.** After `[status] heartbeat_interval_secs` without contact (a FHIR uplink: a
//! delivered Bundle counts, as it carries the gateway's Device; an MQTT uplink: its status
//! is sent every interval whatever was delivered, so its `sent_at` stays fresh), and
//! [`DEBOUNCE`] after a device's state or the clock's synchronization changes: the loop
//! waits on the health model's state-change watch and the clock's watch, and sets a timer
//! for the moment a silent device becomes "not seen"; it never polls, so an idle kit pays
//! one message per interval. An MQTT uplink also sends its status as
//! soon as it starts (the broker then keeps it, retained).
//!
//! **What.** A FHIR uplink sends a Bundle: the gateway's Device (PUT) and the Device of
//! each device whose reported state differs from what the server last acknowledged, with
//! that state (`health::heartbeat`); a connected device is reported every time (its
//! last-seen time is "now"). Bundles of Observations carry their devices' state too, so a
//! delivery never takes it away. An MQTT uplink publishes its status message. PUTs to
//! deterministic ids and a retained message are idempotent: a heartbeat sent twice does no
//! harm.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Loop;
use crate::fhir::{BundleEntry, BundleRequest};
use crate::outbox::DeviceJson;
use crate::uplink::{bundle, Heartbeat};

/// The shortest time between two heartbeats: state changes in a burst (a cuff connects,
/// sends, hangs up) make one heartbeat.
pub const DEBOUNCE: Duration = Duration::from_secs(2);

/// How long after a device's "seen" period ends the heartbeat reporting it "not seen"
/// goes (so that it is over when the heartbeat looks).
const UNSEEN_MARGIN: Duration = Duration::from_millis(50);

/// What the loop keeps for heartbeats.
#[derive(Debug, Default)]
pub(super) struct Beats {
    /// When the last heartbeat was sent.
    pub last: Option<Instant>,
    /// A state changed since the last heartbeat.
    pub pending: bool,
    /// Device id → the Device (with its state) the server last acknowledged.
    pub reported: HashMap<String, String>,
    /// Device id → the Device with its state in the Bundle in flight.
    pub in_flight: Vec<(String, String)>,
}

impl Loop<'_> {
    /// When the next heartbeat is due, with `interval` between them (`None`: never).
    pub(super) fn next_beat(&self, interval: Option<Duration>) -> Option<Instant> {
        let interval = interval?;
        let periodic = match self.uplink.heartbeat() {
            Heartbeat::None => return None,
            Heartbeat::Bundle => self.last_contact + interval,
            Heartbeat::Status => self.beats.last.map_or_else(Instant::now, |t| t + interval),
        };
        let now = Instant::now();
        let debounced = |at: Instant| self.beats.last.map_or(at, |t| (t + DEBOUNCE).max(at));
        // A device becoming "not seen" with time alone: a timer, not a look now and then.
        let unseen = self.health.and_then(|h| {
            let wall = chrono::Utc::now();
            let due = h.next_unseen(wall)?;
            let wait = (due - wall).to_std().unwrap_or_default() + UNSEEN_MARGIN;
            Some(debounced(now + wait))
        });
        let soon = self.beats.pending.then(|| debounced(now));
        [Some(periodic), soon, unseen].into_iter().flatten().min()
    }

    /// Sends a heartbeat. A failure is logged and waits for the next one.
    pub(super) async fn heartbeat(&mut self) {
        self.last_contact = Instant::now();
        self.beats.last = Some(Instant::now());
        self.beats.pending = false;
        let answer = match self.uplink.heartbeat() {
            Heartbeat::None => return,
            Heartbeat::Bundle => {
                let built = self.heartbeat_bundle();
                tokio::select! {
                    biased;
                    answer = self.uplink.deliver(&built) => answer,
                    _ = self.abandon.cancelled() => return,
                }
            }
            Heartbeat::Status => {
                let message = self.status_message().await;
                tokio::select! {
                    biased;
                    answer = self.uplink.status(&message) => answer,
                    _ = self.abandon.cancelled() => return,
                }
            }
        };
        match answer {
            Ok(()) => {
                self.acknowledged();
                tracing::debug!(uplink = self.uplink.name(), "heartbeat sent");
                if let Some(h) = self.health {
                    h.heartbeat(self.uplink.name());
                }
            }
            Err(e) => {
                self.beats.in_flight.clear();
                tracing::warn!(uplink = self.uplink.name(), error = %e, "heartbeat failed; sent again after the next interval")
            }
        }
    }

    /// The Devices (with their state) of a Bundle in flight were acknowledged.
    pub(super) fn acknowledged(&mut self) {
        let sent = std::mem::take(&mut self.beats.in_flight);
        self.beats.reported.extend(sent);
    }

    /// The gateway's Device and the Devices whose state the server has not acknowledged.
    fn heartbeat_bundle(&mut self) -> crate::fhir::Bundle<'static> {
        self.beats.in_flight.clear();
        let gateway = &self.gateway[usize::from(!self.clock.synchronized())];
        let none = HashMap::new();
        let built = bundle::build((gateway.0.as_str(), &gateway.1), &none, HashMap::new(), &[]);
        // Owned: the Bundle outlives this borrow of the loop.
        let mut bundle = crate::fhir::Bundle {
            resource_type: built.bundle.resource_type,
            kind: built.bundle.kind,
            entry: built
                .bundle
                .entry
                .into_iter()
                .map(|e| BundleEntry {
                    resource: std::borrow::Cow::Owned(e.resource.into_owned()),
                    ..e
                })
                .collect(),
        };
        let states = self.states(None);
        // Bounded like the model: devices it no longer keeps are forgotten here too.
        self.beats
            .reported
            .retain(|id, _| states.iter().any(|(s, _)| s == id));
        for (id, json) in states {
            if self.beats.reported.get(&id) == Some(&json) {
                continue;
            }
            if let Ok(resource) = RawValue::from_string(json.clone()) {
                bundle.entry.push(BundleEntry {
                    full_url: format!("urn:uuid:{id}"),
                    resource: std::borrow::Cow::Owned(resource),
                    request: BundleRequest {
                        method: "PUT".into(),
                        url: format!("Device/{id}"),
                        if_none_exist: None,
                    },
                });
                self.beats.in_flight.push((id, json));
            }
        }
        bundle
    }

    /// The Devices (id, JSON) of the devices the health model reports on, with their
    /// state; only those in `among`, if given.
    fn states(&self, among: Option<&HashMap<String, DeviceJson>>) -> Vec<(String, String)> {
        let Some(health) = self.health else {
            return Vec::new();
        };
        health
            .reported_devices(chrono::Utc::now())
            .iter()
            .filter(|d| among.is_none_or(|a| d.resource_id().is_some_and(|id| a.contains_key(id))))
            .filter_map(|d| d.fhir_device())
            .filter_map(|d| Some((d.id.clone(), serde_json::to_string(&d).ok()?)))
            .collect()
    }

    /// For a Bundle of Observations of a FHIR uplink with heartbeats: the devices it
    /// references that the health model reports on, with their state, to go in place of
    /// the stored Device (so a delivery never takes the state away); empty when there is
    /// nothing to replace.
    pub(super) fn with_states(
        &mut self,
        devices: &HashMap<String, DeviceJson>,
    ) -> HashMap<String, Box<RawValue>> {
        let mut replaced = HashMap::new();
        if self.heartbeat_interval.is_none()
            || self.uplink.heartbeat() != Heartbeat::Bundle
            || devices.is_empty()
        {
            return replaced;
        }
        for (id, json) in self.states(Some(devices)) {
            if let Ok(raw) = RawValue::from_string(json.clone()) {
                replaced.insert(id.clone(), raw);
                self.beats.in_flight.push((id, json));
            }
        }
        replaced
    }

    /// The MQTT status message, JSON.
    async fn status_message(&mut self) -> Vec<u8> {
        let name = self.uplink.name().to_string();
        let backlog = self
            .outbox
            .status(vec![name.clone()])
            .await
            .ok()
            .and_then(|s| s.uplinks.into_iter().find(|u| u.name == name))
            .map(|u| u.queued);
        let message = match self.health {
            Some(h) => h.status_message(
                self.gateway_pseudonym,
                &name,
                chrono::Utc::now(),
                Some(self.clock.synchronized()),
                backlog,
            ),
            None => crate::health::heartbeat::StatusMessage {
                state: "online".into(),
                sent_at: Some(chrono::Utc::now()),
                backlog_rows: backlog,
                ..crate::health::heartbeat::StatusMessage::offline(self.gateway_pseudonym)
            },
        };
        serde_json::to_vec(&message).unwrap_or_default()
    }
}
