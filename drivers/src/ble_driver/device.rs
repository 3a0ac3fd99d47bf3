//! One allow-listed device's task: its sessions (notification stream first, connect,
//! Device Information and Battery Level, subscribe, decode and send), the glucose meter's
//! Record Access Control Point, and the wait for the next advertisement.

use std::sync::{Arc, Mutex};

use btleplug::api::{CharPropFlags, Characteristic as BleChar, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cgm::{self, Cgm};
use super::{sequence, uuid_from_u16, uuid_to_u16, BleDeviceConfig, DevEvent, SequenceStore};
use crate::backoff::Backoff;
use crate::ble::{self, BatteryLevel, GattValue, GlucoseJoiner, GlucoseRecord};
use crate::driver::ReadingSender;
use crate::link::LinkEvent;
use crate::reading::{ClockComparison, DeviceIdentity, Reading};

/// How a session ended.
enum SessionEnd {
    /// The device went away; wait until it advertises again.
    Disconnected,
    /// The driver stops.
    Stop,
}

pub(super) struct DeviceTask {
    pub(super) cfg: BleDeviceConfig,
    pub(super) tx: ReadingSender,
    pub(super) cancel: CancellationToken,
    pub(super) events: mpsc::Receiver<DevEvent>,
    pub(super) backoff: Backoff,
    pub(super) sequences: Arc<Mutex<SequenceStore>>,
    /// The device's clock compared with the gateway's at this session's connection.
    pub(super) clock: Option<ClockComparison>,
    /// Where connections and hang-ups are reported (the gateway's health view).
    pub(super) links: crate::link::LinkReporter,
}

/// Per-session counters.
#[derive(Default)]
struct Counts {
    readings: u64,
    rejected: u64,
    /// Rejections by kind ([`ble::GattError::kind`], `glucose context`).
    reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Measurements dropped by the device's `min_interval`.
    thinned: u64,
    /// When the last measurement was forwarded.
    last_sent: Option<tokio::time::Instant>,
}

impl Counts {
    fn reject(&mut self, kind: &'static str) {
        self.rejected = self.rejected.saturating_add(1);
        let n = self.reasons.entry(kind).or_default();
        *n = n.saturating_add(1);
    }

    /// `truncated: 2, invalid: 1`, or `none`.
    fn reasons(&self) -> String {
        if self.reasons.is_empty() {
            return "none".to_string();
        }
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        parts.join(", ")
    }
}

impl DeviceTask {
    pub(super) async fn run(mut self) {
        let mut peripheral: Option<Peripheral> = None;
        loop {
            let event = tokio::select! {
                () = self.cancel.cancelled() => return,
                e = self.events.recv() => e,
            };
            match event {
                None => return,
                Some(DevEvent::Disconnected) => continue,
                Some(DevEvent::Seen(p)) => {
                    // One Peripheral for the whole run: it keeps the discovered services,
                    // so a notification right after a reconnect maps to its characteristic.
                    if peripheral.is_none() {
                        peripheral = Some(*p);
                    }
                }
            }
            let Some(p) = peripheral.clone() else {
                continue;
            };
            match self.session(&p).await {
                Ok(SessionEnd::Stop) => return,
                Ok(SessionEnd::Disconnected) => {
                    self.links
                        .report(&self.cfg.identity, LinkEvent::Disconnected);
                    self.backoff.succeed();
                    // Sightings from before the hang-up are stale.
                    while let Ok(e) = self.events.try_recv() {
                        drop(e);
                    }
                }
                Err(e) => {
                    self.links.report(&self.cfg.identity, LinkEvent::Failed);
                    let delay = self.backoff.fail();
                    if self.backoff.failures() == 1 {
                        tracing::warn!(profile = %self.cfg.identity.profile, error = %e, "BLE device session failed; retrying when it advertises again");
                    } else {
                        tracing::debug!(device = %self.cfg.address, error = %e, "BLE device session failed again");
                    }
                    let _ = p.disconnect().await;
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn session(&mut self, p: &Peripheral) -> Result<SessionEnd, btleplug::Error> {
        // Before connect(): see the module doc.
        let mut notes = p.notifications().await?;
        p.connect().await?;
        p.discover_services().await?;
        let (identity, battery) = self.read_identity(p).await;
        self.clock = super::clock::compare_and_set(p, &self.cfg).await;
        tracing::info!(profile = %self.cfg.identity.profile, clock = self.clock.is_some(), "BLE device connected");
        self.links.report(&self.cfg.identity, LinkEvent::Connected);
        if let Some(b) = battery.filter(|_| self.cfg.battery) {
            use crate::ble::FinalMeasurement;
            if self
                .tx
                .send(b.to_reading(identity.clone(), Utc::now()))
                .await
                .is_err()
            {
                return Ok(SessionEnd::Stop);
            }
        }
        let chars = p.characteristics();
        let find = |u: u16| chars.iter().find(|c| c.uuid == uuid_from_u16(u)).cloned();
        let mut wanted = self.cfg.measurements.clone();
        if self.cfg.is_glucose() {
            wanted.extend([0x2A34, 0x2A52]);
        }
        if self.cfg.is_cgm() {
            wanted.push(0x2A52);
        }
        for u in wanted {
            if let Some(c) = find(u) {
                if c.properties
                    .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
                {
                    p.subscribe(&c).await?;
                }
            } else if self.cfg.measurements.contains(&u) {
                tracing::warn!(profile = %self.cfg.identity.profile, characteristic = format!("0x{u:04X}"), "the device lacks its profile's measurement characteristic");
            }
        }
        let unmapped = unmapped_health_characteristics(&chars, &self.cfg.measurements);
        if !unmapped.is_empty() {
            tracing::info!(profile = %self.cfg.identity.profile, characteristics = %unmapped.join(", "), "the device offers health characteristics its profile does not map; their values are ignored");
        }
        let mut glucose = GlucoseJoiner::new(16);
        if self.cfg.is_glucose() {
            if let Some(racp) = find(0x2A52) {
                self.request_records(p, &racp, &self.cfg.address).await?;
            }
        }
        let mut cgm = None;
        if self.cfg.is_cgm() {
            let state = Cgm::read(p, &self.cfg).await;
            if let Some(racp) = find(0x2A52) {
                self.request_records(p, &racp, &state.key).await?;
            }
            cgm = Some(state);
        }
        let mut counts = Counts::default();
        let end = loop {
            tokio::select! {
                () = self.cancel.cancelled() => {
                    let _ = p.disconnect().await;
                    break SessionEnd::Stop;
                }
                e = self.events.recv() => match e {
                    None => break SessionEnd::Stop,
                    Some(DevEvent::Disconnected) => break SessionEnd::Disconnected,
                    // Advertising again while we think it is connected: a disconnect
                    // event may have been dropped (the channel is small); ask BlueZ.
                    Some(DevEvent::Seen(_)) => {
                        if !p.is_connected().await.unwrap_or(false) {
                            break SessionEnd::Disconnected;
                        }
                    }
                },
                n = notes.next() => {
                    let Some(n) = n else { break SessionEnd::Disconnected };
                    if !self.handle(n.uuid, &n.value, &identity, &mut glucose, &mut cgm, &mut counts).await {
                        break SessionEnd::Stop;
                    }
                }
            }
        };
        // Records whose context never came are not held back.
        for r in glucose.flush() {
            if !self.send_glucose(r, &identity, &mut counts).await {
                break;
            }
        }
        tracing::info!(
            profile = %self.cfg.identity.profile,
            readings = counts.readings,
            rejected = counts.rejected,
            reasons = %counts.reasons(),
            thinned = counts.thinned,
            "BLE device session ended"
        );
        Ok(end)
    }

    /// Asks for the records after the last one recorded under `key`.
    async fn request_records(
        &self,
        p: &Peripheral,
        racp: &BleChar,
        key: &str,
    ) -> Result<(), btleplug::Error> {
        let last = self
            .sequences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last(key);
        if let Some(request) = sequence::racp_request(last) {
            tracing::debug!(device = %self.cfg.address, request = %hex::encode(&request), "RACP request");
            p.write(racp, &request, WriteType::WithResponse).await?;
        }
        Ok(())
    }

    /// Reads Device Information and Battery Level; failures leave the profile's values
    /// (and no battery level).
    async fn read_identity(&self, p: &Peripheral) -> (Arc<DeviceIdentity>, Option<BatteryLevel>) {
        let mut identity = (*self.cfg.identity).clone();
        let mut battery = None;
        for c in p.characteristics() {
            let Some(u) = uuid_to_u16(c.uuid) else {
                continue;
            };
            if !matches!(u, 0x2A19 | 0x2A24..=0x2A29) || !c.properties.contains(CharPropFlags::READ)
            {
                continue;
            }
            let bytes = match p.read(&c).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(device = %self.cfg.address, characteristic = format!("0x{u:04X}"), error = %e, "read failed");
                    continue;
                }
            };
            match ble::decode(u, &bytes) {
                Ok(GattValue::DeviceString(_, s)) => {
                    let slot = match u {
                        0x2A29 => &mut identity.manufacturer,
                        0x2A24 => &mut identity.model,
                        0x2A26 => &mut identity.revisions.firmware,
                        0x2A27 => &mut identity.revisions.hardware,
                        0x2A28 => &mut identity.revisions.software,
                        _ => &mut identity.serial_number,
                    };
                    if s.value.is_some() {
                        *slot = s.value;
                    }
                }
                Ok(GattValue::Battery(b)) => {
                    tracing::debug!(device = %self.cfg.address, battery = b.percent, "battery level");
                    if b.percent <= 10 {
                        tracing::warn!(profile = %self.cfg.identity.profile, "a BLE device's battery is low");
                    }
                    battery = Some(b);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(device = %self.cfg.address, error = %e, "device information rejected")
                }
            }
        }
        (Arc::new(identity), battery)
    }

    /// Handles one value from the stream; `false` when the channel is closed.
    async fn handle(
        &self,
        uuid: Uuid,
        value: &[u8],
        identity: &Arc<DeviceIdentity>,
        glucose: &mut GlucoseJoiner,
        cgm: &mut Option<Cgm>,
        counts: &mut Counts,
    ) -> bool {
        let Some(u) = uuid_to_u16(uuid) else {
            return true;
        };
        if let (cgm::MEASUREMENT, Some(state)) = (u, cgm.as_mut()) {
            return self.handle_cgm(value, state, identity, counts).await;
        }
        let is_measurement = self.cfg.measurements.contains(&u)
            || (self.cfg.is_glucose() && u == 0x2A34)
            || matches!(u, 0x2A36 | 0x2A1E);
        if (self.cfg.is_glucose() || self.cfg.is_cgm()) && u == 0x2A52 {
            let response = sequence::racp_response(value);
            tracing::debug!(device = %self.cfg.address, response = ?response, "RACP response");
            if let sequence::RacpResponse::Failed(op, code) = response {
                tracing::warn!(profile = %self.cfg.identity.profile, opcode = op, code, "the glucose meter refused the record request");
            }
            for r in glucose.flush() {
                if !self.send_glucose(r, identity, counts).await {
                    return false;
                }
            }
            return true;
        }
        if !is_measurement {
            // Read results and other characteristics (BlueZ announces reads as changes).
            return true;
        }
        let decoded = match ble::decode(u, value) {
            Ok(v) => v,
            Err(e) => {
                counts.reject(e.kind());
                tracing::debug!(device = %self.cfg.address, error = %e, bytes = %hex::encode(value), "BLE packet rejected");
                return true;
            }
        };
        match decoded {
            GattValue::Glucose(m) => {
                for r in glucose.measurement(m) {
                    if !self.send_glucose(r, identity, counts).await {
                        return false;
                    }
                }
                true
            }
            GattValue::GlucoseContext(c) => match glucose.context(c) {
                Ok(r) => self.send_glucose(r, identity, counts).await,
                Err(e) => {
                    counts.reject("glucose context");
                    tracing::debug!(device = %self.cfg.address, error = %e, "glucose context rejected");
                    true
                }
            },
            other => {
                let Some(m) = other.as_final() else {
                    tracing::debug!(device = %self.cfg.address, characteristic = format!("0x{u:04X}"), "intermediate value");
                    return true;
                };
                for a in m.anomalies() {
                    tracing::warn!(profile = %self.cfg.identity.profile, anomaly = ?a, "BLE measurement anomaly");
                }
                let now = tokio::time::Instant::now();
                if let (Some(min), Some(last)) = (self.cfg.min_interval, counts.last_sent) {
                    if now.duration_since(last) < min {
                        counts.thinned = counts.thinned.saturating_add(1);
                        return true;
                    }
                }
                counts.last_sent = Some(now);
                counts.readings += 1;
                self.tx
                    .send(self.with_clock(m.to_reading(identity.clone(), Utc::now())))
                    .await
                    .is_ok()
            }
        }
    }

    /// The reading with this connection's clock comparison, when it carries a device time
    /// stamp to place on the gateway's timeline.
    fn with_clock(&self, mut reading: Reading) -> Reading {
        if reading.device_time.is_some() {
            reading.clock = self.clock;
        }
        reading
    }

    /// Handles one CGM Measurement notification (one or more records); `false` when the
    /// channel is closed.
    async fn handle_cgm(
        &self,
        value: &[u8],
        state: &mut Cgm,
        identity: &Arc<DeviceIdentity>,
        counts: &mut Counts,
    ) -> bool {
        use crate::ble::FinalMeasurement;
        let records = match state.records(value) {
            Ok(r) => r,
            Err(e) => {
                counts.reject(e.kind());
                tracing::debug!(device = %self.cfg.address, error = %e, bytes = %hex::encode(value), "BLE packet rejected");
                return true;
            }
        };
        for m in records {
            state.note_status(m.status, &self.cfg);
            for a in m.anomalies() {
                tracing::warn!(profile = %self.cfg.identity.profile, anomaly = ?a, "BLE measurement anomaly");
            }
            let reading = self.with_clock(m.to_reading(identity.clone(), Utc::now()));
            if !self
                .send_recorded(reading, &state.key, m.time_offset_minutes, counts)
                .await
            {
                return false;
            }
        }
        true
    }

    /// Sends a glucose record and records its sequence number once it is committed;
    /// `false` when the channel is closed.
    async fn send_glucose(
        &self,
        r: GlucoseRecord,
        identity: &Arc<DeviceIdentity>,
        counts: &mut Counts,
    ) -> bool {
        use crate::ble::FinalMeasurement;
        let seq = r.measurement.sequence;
        let reading = self.with_clock(r.measurement.to_reading(identity.clone(), Utc::now()));
        self.send_recorded(reading, &self.cfg.address, seq, counts)
            .await
    }

    /// Sends a stored-record reading and records `seq` under `key` once it is committed;
    /// `false` when the channel is closed.
    async fn send_recorded(
        &self,
        reading: Reading,
        key: &str,
        seq: u16,
        counts: &mut Counts,
    ) -> bool {
        let Ok(ack) = self.tx.send_acked(reading).await else {
            return false;
        };
        counts.readings += 1;
        match ack.await {
            Ok(_) => {
                let result = self
                    .sequences
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(key, seq);
                if let Err(e) = result {
                    tracing::error!(error = %e, "cannot record the glucose records fetched; they will be fetched again");
                }
            }
            Err(_) => {
                tracing::warn!(profile = %self.cfg.identity.profile, "a glucose record was not committed; it will be fetched again");
            }
        }
        true
    }
}

/// The health measurement characteristics (those a profile decoder exists for) among
/// `chars` that notify or indicate and are not in `mapped`, as `0x2A5F (PLX Continuous
/// Measurement)`, in the device's order.
fn unmapped_health_characteristics(
    chars: &std::collections::BTreeSet<BleChar>,
    mapped: &[u16],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in chars {
        let Some(u) = uuid_to_u16(c.uuid) else {
            continue;
        };
        if mapped.contains(&u)
            || !c
                .properties
                .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
        {
            continue;
        }
        if let Some((_, e)) = ble::registry::profile_decoders().find(|(_, e)| e.uuid16 == u) {
            let text = format!("0x{u:04X} ({})", e.name);
            if !out.contains(&text) {
                out.push(text);
            }
        }
    }
    out
}
