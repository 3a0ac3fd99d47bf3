//! What the model shows: the JSON document of `/status` (also what `status --json`
//! prints, and what `/metrics` is rendered from). Made when somebody asks, from the
//! model and from what is asked of the other components at that moment (the outbox's
//! counts, the free disk, the clock).
//!
//! A field a component does not report yet is `null`, and its doc says so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Health;
use crate::outbox::latency::LatencySnapshot;
use crate::outbox::store::Status as OutboxStatus;

/// The whole view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The gateway itself.
    pub gateway: GatewayView,
    /// Each device known (configured, or seen since the start), by pseudonym.
    pub devices: Vec<DeviceView>,
    /// Each configured uplink.
    pub uplinks: Vec<UplinkView>,
    /// Counters since the start, per transport and profile.
    pub ingest: Vec<IngestView>,
}

/// The gateway's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayView {
    /// The gateway's version.
    pub version: String,
    /// When this view was made.
    pub now: DateTime<Utc>,
    /// When the daemon started.
    pub started_at: DateTime<Utc>,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Whether the system clock is synchronized (`null`: the clock is not watched).
    pub clock_synchronized: Option<bool>,
    /// Bytes of the outbox's files on disk (`null`: the outbox did not answer).
    pub outbox_bytes: Option<u64>,
    /// Bytes free on the outbox's file system (`null`: cannot be asked).
    pub disk_free_bytes: Option<u64>,
    /// Rows in the dead letters, all uplinks together (`null`: the outbox did not answer).
    pub dead_letters: Option<u64>,
    /// How long the outbox's write transactions took since the start (`null`: not asked).
    pub commit_seconds: Option<LatencySnapshot>,
}

/// A device's state: `connected`, `seen` or `not seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A session with it is open (BLE), or its serial port is open.
    #[serde(rename = "connected")]
    Connected,
    /// Heard from (a reading, a connection or a hang-up) within `[status] seen_within_secs`.
    #[serde(rename = "seen")]
    Seen,
    /// Never heard from since the start, or not within `[status] seen_within_secs`.
    #[serde(rename = "not seen")]
    NotSeen,
}

/// One device: no serial number, no address, no measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device's pseudonym (as in its FHIR Device resource's identifier).
    pub device: String,
    /// Its profile id.
    pub profile: String,
    /// Its transport (`ble`, `serial`, `mqtt`, `sim`).
    pub transport: String,
    /// Its state.
    pub state: DeviceState,
    /// When it was last heard from (a reading, a connection or a hang-up).
    pub last_seen: Option<DateTime<Utc>>,
    /// When its last reading was received.
    pub last_reading: Option<DateTime<Utc>>,
    /// Readings received from it in the last 24 hours (since the start, at most).
    pub readings_24h: u64,
    /// Its battery charge in percent, from the last reading carrying it (BLE Battery
    /// Level, when its profile maps `battery_level`); `null` otherwise.
    pub battery_percent: Option<u8>,
    /// Its BLE signal strength (dBm): the RSSI BlueZ reported when the device was last
    /// heard advertising (at `signal_at`), kept after it connects or goes away (BlueZ
    /// reports none for a connected link); `null` for other transports and for a device
    /// not heard advertising since the start.
    pub signal_dbm: Option<i16>,
    /// When the device was heard advertising at `signal_dbm`.
    pub signal_at: Option<DateTime<Utc>>,
    /// The last problem with it, a fixed sentence (details in the journal).
    pub last_error: Option<String>,
    /// When that problem happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

/// An uplink's state: `ok` (the last attempt succeeded, or none failed) or `failing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkState {
    /// No failure since its last delivery.
    Ok,
    /// Its last attempt failed; it retries with backoff.
    Failing,
}

/// One uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkView {
    /// Its configured name.
    pub name: String,
    /// Its state.
    pub state: UplinkState,
    /// When it last delivered (since the start).
    pub last_delivery: Option<DateTime<Utc>>,
    /// When it last sent a heartbeat (since the start): acknowledged by the FHIR server,
    /// or the MQTT status message handed to the broker; `null` for an uplink that sends
    /// none (the file uplink) or none yet.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// When its last attempt failed (since the start).
    pub last_failure: Option<DateTime<Utc>>,
    /// Failed attempts since its last delivery.
    pub consecutive_failures: u64,
    /// Rows waiting for it (`null`: the outbox did not answer).
    pub backlog_rows: Option<u64>,
    /// Age in seconds of its oldest waiting row (`null`: none waits, or no answer).
    pub oldest_age_seconds: Option<u64>,
    /// Rows it rejected for good, kept in the dead letters, since the outbox was created
    /// (`null`: the outbox did not answer).
    pub dead_letters: Option<u64>,
    /// Observations delivered since the start.
    pub delivered: u64,
    /// Failed attempts since the start.
    pub failures: u64,
    /// Observations moved to the dead letters since the start.
    pub dead_lettered: u64,
}

/// Counters of one transport and profile since the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestView {
    /// The transport.
    pub transport: String,
    /// The profile id.
    pub profile: String,
    /// Readings received.
    pub readings: u64,
    /// Observations made and handed to the outbox.
    pub observations: u64,
    /// Fields or readings refused.
    pub rejected: u64,
}

/// What is asked of the other components when the view is made.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// The outbox's counts (`None`: it did not answer).
    pub outbox: Option<OutboxStatus>,
    /// Whether the clock is synchronized (`None`: not watched).
    pub clock_synchronized: Option<bool>,
    /// Free bytes on the outbox's file system.
    pub disk_free_bytes: Option<u64>,
    /// The outbox's commit latency.
    pub commit_seconds: Option<LatencySnapshot>,
}

impl Health {
    /// The view at `now`: a device heard from within `seen_within` is "seen".
    pub fn view(&self, now: DateTime<Utc>, seen_within: Duration, asked: &Asked) -> StatusView {
        let state = self.lock();
        let hour = now.timestamp().div_euclid(3600);
        let devices = state
            .devices
            .iter()
            .map(|(pseudonym, d)| DeviceView {
                device: pseudonym.clone(),
                profile: d.profile.clone(),
                transport: d.transport.to_string(),
                state: d.state(now, seen_within),
                last_seen: d.last_seen,
                last_reading: d.last_reading,
                readings_24h: d
                    .hourly
                    .iter()
                    .filter(|(h, _)| *h > hour - 24 && *h <= hour)
                    .map(|(_, n)| u64::from(*n))
                    .sum(),
                battery_percent: d.battery_percent,
                signal_dbm: d.signal.map(|(_, dbm)| dbm),
                signal_at: d.signal.map(|(t, _)| t),
                last_error: d.last_error.map(|(_, e)| e.to_string()),
                last_error_at: d.last_error.map(|(t, _)| t),
            })
            .collect();
        let queued = |name: &str| {
            asked
                .outbox
                .as_ref()
                .and_then(|o| o.uplinks.iter().find(|u| u.name == name))
        };
        let uplinks = state
            .uplinks
            .iter()
            .map(|(name, u)| {
                let q = queued(name);
                UplinkView {
                    name: name.clone(),
                    state: if u.consecutive_failures > 0 {
                        UplinkState::Failing
                    } else {
                        UplinkState::Ok
                    },
                    last_delivery: u.last_delivery,
                    last_heartbeat: u.last_heartbeat,
                    last_failure: u.last_failure,
                    consecutive_failures: u.consecutive_failures,
                    backlog_rows: q.map(|q| q.queued),
                    oldest_age_seconds: q.and_then(|q| q.oldest_ms).map(|ms| {
                        u64::try_from(now.timestamp_millis().saturating_sub(ms) / 1000).unwrap_or(0)
                    }),
                    dead_letters: q.map(|q| q.dead_lettered),
                    delivered: u.delivered,
                    failures: u.failures,
                    dead_lettered: u.dead_lettered,
                }
            })
            .collect();
        let ingest = state
            .ingest
            .iter()
            .map(|((transport, profile), c)| IngestView {
                transport: transport.to_string(),
                profile: profile.clone(),
                readings: c.readings,
                observations: c.observations,
                rejected: c.rejected,
            })
            .collect();
        StatusView {
            gateway: GatewayView {
                version: env!("CARGO_PKG_VERSION").to_string(),
                now,
                started_at: self.inner.started_at,
                uptime_seconds: self.inner.started.elapsed().as_secs(),
                clock_synchronized: asked.clock_synchronized,
                outbox_bytes: asked.outbox.as_ref().map(|o| o.disk_bytes),
                disk_free_bytes: asked.disk_free_bytes,
                dead_letters: asked
                    .outbox
                    .as_ref()
                    .map(|o| o.uplinks.iter().map(|u| u.dead_lettered).sum()),
                commit_seconds: asked.commit_seconds.clone(),
            },
            devices,
            uplinks,
            ingest,
        }
    }
}
