//! The kit's health: one model inside the daemon, kept up to date by the components as
//! things happen, and read by the local status endpoint (`/status`, `/metrics`), the
//! `status` command and systemd's `STATUS=` line.
//!
//! Links are reported by the BLE driver (connected, hung up, failed, and the signal a
//! device advertised at) and the serial driver (port open, lost, cannot be opened); a
//! simulator or MQTT device is seen through its readings only.
//!
//! **Cheap, event-driven.** Components report with plain calls that take a mutex for a
//! few field updates (a reading, a link change, a delivery, a failure); nothing polls.
//! What is asked of other components (the outbox's backlog, the disk, the clock) is
//! asked only when somebody reads the model (`view.rs`). The idle daemon thus pays
//! nothing for it.
//!
//! **Nothing identifying.** The model holds no patient id, no measured value, no device
//! serial number or address: a device is named by its keyed pseudonym (the one its FHIR
//! Device resource carries), with its profile and transport. A device's battery charge
//! is kept (a device's state, not a patient's measurement). Error texts are fixed
//! sentences chosen here, never a driver's or server's text (which may name a device).
//!
//! **Bounded.** Devices come from outside (an MQTT topic may name any device), so at
//! most [`MAX_DEVICES`] are kept besides the configured ones; a new one beyond them
//! replaces the unconfigured one seen longest ago.
//! Counters by transport and profile are bounded by the loaded profiles.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use iomt_drivers::link::{LinkEvent, LinkReporter};
use iomt_drivers::{DeviceIdentity, Measurement, Reading, Transport};
use tokio::sync::watch;

use crate::pseudonym::{Domain, Pseudonymizer};

pub mod config;
pub mod heartbeat;
pub mod metrics;
pub mod server;
pub mod view;

/// The most devices the model keeps (about 300 bytes each): as many as the pipeline
/// keeps pseudonyms for (its `DEVICE_CACHE`). With fewer, a site of more devices
/// than the model holds made every reading a new device: a full scan for the one to
/// evict, a new summary and a heartbeat's worth of state change per reading (a tenth of
/// the daemon's CPU in the MQTT round-trip benchmark's 1000 devices).
pub const MAX_DEVICES: usize = 1024;

/// The field name a profile maps a device's battery charge to (BLE Battery Level).
const BATTERY_FIELD: &str = "battery_level";

/// A device's link as its driver last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The driver reports no link for this transport (simulator, MQTT).
    Unreported,
    /// A session is open.
    Connected,
    /// No session (never connected, hung up, or failed).
    Down,
}

/// What the model keeps of one device.
#[derive(Debug, Clone)]
struct DeviceState {
    /// Configured (a BLE allow-list entry, a simulator device): never evicted.
    configured: bool,
    profile: String,
    transport: Transport,
    link: Link,
    last_seen: Option<DateTime<Utc>>,
    last_reading: Option<DateTime<Utc>>,
    /// Readings per hour over the last 24 hours: (hour since the epoch, count).
    hourly: [(i64, u32); 24],
    battery_percent: Option<u8>,
    /// The signal (dBm) it was last heard advertising at, and when (BLE).
    signal: Option<(DateTime<Utc>, i16)>,
    last_error: Option<(DateTime<Utc>, &'static str)>,
    /// Its FHIR Device resource, as the pipeline made it at its first reading (what a
    /// heartbeat reports its state in).
    resource: Option<Arc<crate::fhir::Device>>,
}

impl DeviceState {
    /// Its state at `now`: connected, or heard from within `seen_within`, or not.
    fn state(&self, now: DateTime<Utc>, seen_within: Duration) -> view::DeviceState {
        let seen_within = chrono::Duration::from_std(seen_within).unwrap_or(chrono::Duration::MAX);
        if self.link == Link::Connected {
            view::DeviceState::Connected
        } else if self.last_seen.is_some_and(|t| now - t <= seen_within) {
            view::DeviceState::Seen
        } else {
            view::DeviceState::NotSeen
        }
    }
}

/// What the model keeps of one uplink.
#[derive(Debug, Clone, Default)]
struct UplinkState {
    last_delivery: Option<DateTime<Utc>>,
    last_heartbeat: Option<DateTime<Utc>>,
    consecutive_failures: u64,
    last_failure: Option<DateTime<Utc>>,
    delivered: u64,
    failures: u64,
    dead_lettered: u64,
}

/// Counters of one (transport, profile) since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounters {
    /// Readings received.
    pub readings: u64,
    /// Observations made and handed to the outbox.
    pub observations: u64,
    /// Fields or readings refused (unmapped field, bad unit, implausible value, test data).
    pub rejected: u64,
}

#[derive(Debug)]
struct State {
    /// How recently a device must have been heard from to be "seen".
    seen_within: Duration,
    devices: BTreeMap<String, DeviceState>,
    uplinks: BTreeMap<String, UplinkState>,
    ingest: BTreeMap<(String, String), IngestCounters>,
}

struct Inner {
    started: Instant,
    started_at: DateTime<Utc>,
    pseudonymizer: Pseudonymizer,
    state: Mutex<State>,
    /// The one-line summary, sent again only when it changes.
    summary: watch::Sender<String>,
    /// Bumped when a device's state changes (connected, seen, not seen): heartbeats
    /// follow it.
    changes: watch::Sender<u64>,
}

/// The health model, shared by every component (cheap to clone).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// A reading's outcome in the pipeline, as the model counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadingOutcome {
    /// Observations made from it.
    pub observations: u64,
    /// Fields or the whole reading refused.
    pub rejected: u64,
}

impl Health {
    /// An empty model; devices are named by their pseudonym under `pseudonymizer`.
    pub fn new(pseudonymizer: Pseudonymizer) -> Self {
        let (summary, _) = watch::channel(String::new());
        let (changes, _) = watch::channel(0);
        let health = Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                started_at: Utc::now(),
                pseudonymizer,
                state: Mutex::new(State {
                    seen_within: Duration::from_secs(config::DEFAULT_SEEN_WITHIN_SECS),
                    devices: BTreeMap::new(),
                    uplinks: BTreeMap::new(),
                    ingest: BTreeMap::new(),
                }),
                summary,
                changes,
            }),
        };
        health.changed(&health.lock());
        health
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pseudonym naming a device (as in its FHIR Device resource).
    fn pseudonym(&self, id: &DeviceIdentity) -> String {
        let address = format!("{}:{}", id.transport, id.address);
        self.inner.pseudonymizer.pseudonym(Domain::Device, &address)
    }

    /// The entry of a device, made (and the oldest evicted beyond [`MAX_DEVICES`]) if new.
    fn device<'s>(&self, state: &'s mut State, id: &DeviceIdentity) -> &'s mut DeviceState {
        self.device_named(state, self.pseudonym(id), id)
    }

    /// [`Health::device`] with the pseudonym already known.
    fn device_named<'s>(
        &self,
        state: &'s mut State,
        key: String,
        id: &DeviceIdentity,
    ) -> &'s mut DeviceState {
        if !state.devices.contains_key(&key) && state.devices.len() >= MAX_DEVICES {
            let oldest = state
                .devices
                .iter()
                .filter(|(_, d)| !d.configured)
                .min_by_key(|(_, d)| d.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                state.devices.remove(&oldest);
            }
        }
        state.devices.entry(key).or_insert_with(|| DeviceState {
            configured: false,
            profile: id.profile.clone(),
            transport: id.transport,
            link: match id.transport {
                Transport::Ble | Transport::Serial => Link::Down,
                _ => Link::Unreported,
            },
            last_seen: None,
            last_reading: None,
            hourly: [(0, 0); 24],
            battery_percent: None,
            signal: None,
            last_error: None,
            resource: None,
        })
    }

    /// A configured device (a BLE allow-list entry, a serial port): listed as "not seen"
    /// until it shows up.
    pub fn device_configured(&self, id: &DeviceIdentity) {
        let mut state = self.lock();
        self.device(&mut state, id).configured = true;
        self.changed(&state);
    }

    /// A driver's report of a device's link.
    pub fn link(&self, id: &DeviceIdentity, event: LinkEvent) {
        let now = Utc::now();
        let mut state = self.lock();
        let device = self.device(&mut state, id);
        if let LinkEvent::Advertised { rssi_dbm } = event {
            // Neither a link nor a state change: nothing to wake.
            device.signal = Some((now, rssi_dbm));
            return;
        }
        let before = (device.link, device.last_seen.is_some());
        match event {
            LinkEvent::Connected => {
                device.link = Link::Connected;
                device.last_seen = Some(now);
            }
            LinkEvent::Disconnected => {
                device.link = Link::Down;
                device.last_seen = Some(now);
            }
            LinkEvent::Failed => {
                device.link = Link::Down;
                device.last_error = Some((now, "the connection failed (details in the journal)"));
            }
            LinkEvent::Advertised { .. } => {}
        }
        if before != (device.link, device.last_seen.is_some()) {
            self.state_changed();
        }
        self.changed(&state);
    }

    /// The reporter a driver calls on its devices' link changes.
    pub fn link_reporter(&self) -> LinkReporter {
        let health = self.clone();
        LinkReporter::new(move |id, event| health.link(id, event))
    }

    /// A reading went through the pipeline.
    pub fn reading(&self, reading: &Reading, outcome: ReadingOutcome) {
        self.reading_named(reading, self.pseudonym(&reading.device), outcome);
    }

    /// [`Health::reading`] from a caller that knows the device's pseudonym already (the
    /// pipeline, which made it with the same key): no second HMAC per reading.
    pub fn reading_named(&self, reading: &Reading, pseudonym: String, outcome: ReadingOutcome) {
        let id = &reading.device;
        let at = reading.received_at;
        let hour = at.timestamp().div_euclid(3600);
        let battery = reading
            .quantities
            .iter()
            .find(|q| q.name == BATTERY_FIELD)
            .and_then(|q| match &q.value {
                Measurement::Value(v) => v.round().to_string().parse::<u8>().ok(),
                Measurement::Absent(_) => None,
            })
            .filter(|b| *b <= 100);
        let mut state = self.lock();
        let counters = state
            .ingest
            .entry((id.transport.to_string(), id.profile.clone()))
            .or_default();
        counters.readings += 1;
        counters.observations += outcome.observations;
        counters.rejected += outcome.rejected;
        let seen_within =
            chrono::Duration::from_std(state.seen_within).unwrap_or(chrono::Duration::MAX);
        let device = self.device_named(&mut state, pseudonym, id);
        let new = device.last_seen.is_none();
        // Heard from again after a silence long enough to be "not seen".
        let back = device.link != Link::Connected
            && device.last_seen.is_some_and(|t| at - t > seen_within);
        device.last_seen = Some(at);
        device.last_reading = Some(at);
        let slot = &mut device.hourly[hour.rem_euclid(24) as usize];
        if slot.0 != hour {
            *slot = (hour, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        if battery.is_some() {
            device.battery_percent = battery;
        }
        if outcome.observations == 0 && outcome.rejected > 0 {
            device.last_error = Some((at, "a reading was refused by its profile"));
        }
        if new || back {
            self.state_changed();
        }
        if new {
            self.changed(&state);
        }
    }

    /// An uplink is configured (listed before its first delivery).
    pub fn uplink_configured(&self, uplink: &str) {
        let mut state = self.lock();
        state.uplinks.entry(uplink.to_string()).or_default();
        self.changed(&state);
    }

    /// An uplink delivered `rows` Observations.
    pub fn delivered(&self, uplink: &str, rows: u64) {
        let mut state = self.lock();
        let u = state.uplinks.entry(uplink.to_string()).or_default();
        let recovered = u.consecutive_failures > 0;
        u.last_delivery = Some(Utc::now());
        u.consecutive_failures = 0;
        u.delivered += rows;
        if recovered {
            self.changed(&state);
        }
    }

    /// An uplink sent a heartbeat (`uplink::deliver`'s heartbeats).
    pub fn heartbeat(&self, uplink: &str) {
        let mut state = self.lock();
        let u = state.uplinks.entry(uplink.to_string()).or_default();
        u.last_heartbeat = Some(Utc::now());
    }

    /// A delivery attempt of an uplink failed (it will be retried).
    pub fn delivery_failed(&self, uplink: &str) {
        let mut state = self.lock();
        let u = state.uplinks.entry(uplink.to_string()).or_default();
        u.consecutive_failures += 1;
        u.failures += 1;
        u.last_failure = Some(Utc::now());
        if u.consecutive_failures == 1 {
            self.changed(&state);
        }
    }

    /// An uplink moved `rows` Observations to the dead letters.
    pub fn dead_lettered(&self, uplink: &str, rows: u64) {
        let mut state = self.lock();
        state
            .uplinks
            .entry(uplink.to_string())
            .or_default()
            .dead_lettered += rows;
    }

    /// The one-line summary (systemd's `STATUS=`), updated on state changes only.
    pub fn summary(&self) -> watch::Receiver<String> {
        self.inner.summary.subscribe()
    }

    /// Recomputes the summary; wakes its watchers only if it changed.
    fn changed(&self, state: &State) {
        let connected = state
            .devices
            .values()
            .filter(|d| d.link == Link::Connected)
            .count();
        let seen = state
            .devices
            .values()
            .filter(|d| d.last_seen.is_some())
            .count();
        let failing: Vec<&str> = state
            .uplinks
            .iter()
            .filter(|(_, u)| u.consecutive_failures > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        let uplinks = if failing.is_empty() {
            format!("{} uplink(s) ok", state.uplinks.len())
        } else {
            format!("uplink(s) failing: {}", failing.join(", "))
        };
        let line = format!(
            "running: {} device(s), {seen} seen, {connected} connected; {uplinks}",
            state.devices.len()
        );
        self.inner.summary.send_if_modified(|s| {
            if *s == line {
                false
            } else {
                *s = line;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests;
