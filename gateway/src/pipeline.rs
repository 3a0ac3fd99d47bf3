//! The pipeline task: readings → normalize (pure) → outbox.
//!
//! It runs until the reading channel closes (every driver has stopped) and every reading
//! taken has been handed to the outbox, so a shutdown never drops what was already read.
//! A driver's commit acknowledgement travels with the reading into the outbox and fires
//! only after the commit.
//!
//! **The clock.** On every reading the pipeline asks the gateway's clock whether it is
//! synchronized (`clock.rs`); a reading received while it is not is stored with a
//! `clock::TimeHold` inside each Observation's stored JSON (the delivery loops hold it
//! back, correct it or mark it; the member never goes out).
//!
//! **Bounded.** Device ids come from outside (an MQTT topic level or payload field), so
//! what is kept per device is bounded: a reading whose device id is longer than
//! [`MAX_DEVICE_ID_BYTES`] is refused (counted in [`Stats::device_id_too_long`], logged
//! without the id, acknowledged so its source lets go of it), and each device's
//! pseudonym and Device resource are computed again when it comes back after
//! [`DEVICE_CACHE`] other devices (the least recently used is forgotten).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iomt_drivers::reading::MAX_DEVICE_ID_BYTES;
use iomt_drivers::{Committed, DeviceIdentity, ReadingReceiver};

use crate::cache::LruCache;
use crate::clock::{Clock, HOLD_MEMBER};

use crate::fhir::{self, Observation, Reference};
use crate::health::ReadingOutcome;
use crate::normalize::{self, Context, OutOfRange, Rejection, Zone};
use crate::outbox::{Append, DeviceJsonIn, Outbox};
use crate::profile::Profile;
use crate::pseudonym::{Domain, Pseudonymizer};

/// Counters of one pipeline run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Readings received.
    pub readings: u64,
    /// Observations produced and handed to the outbox.
    pub observations: u64,
    /// Observations without a value (`dataAbsentReason`).
    pub absent: u64,
    /// Values flagged as implausible.
    pub flagged: u64,
    /// Fields or readings dropped (unmapped field, bad unit, rejected implausible value,
    /// test data, unknown profile).
    pub rejected: u64,
    /// Readings that could not be handed to the outbox.
    pub store_errors: u64,
    /// Readings refused because their device id is longer than [`MAX_DEVICE_ID_BYTES`].
    pub device_id_too_long: u64,
}

/// The most devices whose pseudonym and Device resource the pipeline keeps (about 1 KiB
/// each).
pub const DEVICE_CACHE: usize = 1024;

/// What an Observation's JSON buffer gets beyond the last one's length (bytes).
const JSON_SLACK: usize = 256;

/// Called for each Observation as it flows (the demo's console view).
pub type Observer = Box<dyn FnMut(&Profile, &DeviceIdentity, &Observation) + Send>;

/// Everything the pipeline needs besides its channel.
pub struct Pipeline {
    /// Profiles by id.
    pub profiles: HashMap<String, Arc<Profile>>,
    /// The pseudonymizer.
    pub pseudonymizer: Pseudonymizer,
    /// The patient's pseudonym.
    pub patient_pseudonym: String,
    /// The gateway's pseudonym.
    pub gateway_pseudonym: String,
    /// Zone of device wall-clock times, per profile id, with a default.
    pub zones: (Zone, BTreeMap<String, Zone>),
    /// Zones set for one device, keyed `transport:address` (a serial port's
    /// `time_zone`); they win over the profile's zone.
    pub address_zones: BTreeMap<String, Zone>,
    /// Out-of-range rule.
    pub out_of_range: OutOfRange,
    /// Where Observations go.
    pub outbox: Outbox,
    /// Optional per-Observation callback.
    pub observer: Option<Observer>,
    /// The gateway's clock: looked at on every reading; a reading received while it is
    /// not synchronized is stored with a `clock::TimeHold`. `None`: the clock is trusted.
    pub clock: Option<Arc<Clock>>,
    /// The kit's health model, told of every reading's outcome (`None`: not reported).
    pub health: Option<crate::health::Health>,
}

/// A measuring device's pseudonym, its Device resource (JSON, fingerprinted) and the zone
/// of its times, computed once.
struct KnownDevice {
    pseudonym: String,
    resource_id: String,
    /// How its Observations name its Device resource ([`normalize::device_reference`]).
    reference: String,
    json: DeviceJsonIn,
    /// The zone of its wall-clock times.
    zone: Zone,
}

impl Pipeline {
    /// Runs until `rx` is closed and drained; returns the counters.
    pub async fn run(mut self, mut rx: ReadingReceiver) -> Stats {
        let mut stats = Stats::default();
        let mut devices: LruCache<(Arc<DeviceIdentity>, String), KnownDevice> =
            LruCache::new(DEVICE_CACHE);
        // The last Coincident Time Stamp Observation stored per device pseudonym: a
        // connection's readings share one, stored with the first of them.
        let mut coincident: LruCache<String, String> = LruCache::new(DEVICE_CACHE);
        let mut json_hint = 2 * JSON_SLACK;
        // The parts of every reading's normalizing context that no device changes.
        let subject = Reference {
            reference: None,
            identifier: Some(fhir::Identifier {
                system: normalize::PATIENT_PSEUDONYM_SYSTEM.into(),
                value: self.patient_pseudonym.clone(),
            }),
        };
        let gateway_reference = normalize::device_reference(&self.gateway_pseudonym);
        while let Some(mut envelope) = rx.recv().await {
            stats.readings += 1;
            let clock = self.clock.as_ref().map(|c| (c, c.check()));
            if let Some((_, status)) = clock.filter(|(_, s)| s.offset_ms != 0) {
                // The test seam's simulated clock error (`[clock] source = "status-file"`).
                envelope.reading.received_at += chrono::Duration::milliseconds(status.offset_ms);
            }
            let reading = &envelope.reading;
            let hold = clock
                .and_then(|(c, status)| c.hold(status, reading.received_at.timestamp_millis()));
            if reading.device.address.len() > MAX_DEVICE_ID_BYTES {
                stats.device_id_too_long += 1;
                tracing::warn!(profile = %reading.device.profile, transport = %reading.device.transport, bytes = reading.device.address.len(), limit = MAX_DEVICE_ID_BYTES, "reading refused: its device id is too long");
                if let Some(ack) = envelope.ack {
                    let _ = ack.send(Committed::default());
                }
                continue;
            }
            let Some(profile) = self.profiles.get(&reading.device.profile).cloned() else {
                stats.rejected += 1;
                if let Some(h) = &self.health {
                    h.reading(
                        reading,
                        ReadingOutcome {
                            observations: 0,
                            rejected: 1,
                        },
                    );
                }
                tracing::warn!(profile = %reading.device.profile, "reading from a device whose profile is not loaded; dropped");
                continue;
            };
            let identity = reading.device.clone();
            let key = (identity.clone(), profile.id.clone());
            let device = devices.get_or_insert_with(key, || {
                let address = format!("{}:{}", identity.transport, identity.address);
                let pseudonym = self.pseudonymizer.pseudonym(Domain::Device, &address);
                let resource = normalize::device_resource(&profile, &identity, &pseudonym);
                if let Some(h) = &self.health {
                    h.device_resource(&identity, &resource);
                }
                KnownDevice {
                    resource_id: resource.id.clone(),
                    reference: normalize::device_reference(&pseudonym),
                    json: serde_json::to_vec(&resource).unwrap_or_default().into(),
                    zone: self
                        .address_zones
                        .get(&address)
                        .or_else(|| self.zones.1.get(&profile.id))
                        .copied()
                        .unwrap_or(self.zones.0),
                    pseudonym,
                }
            });
            let ctx = Context {
                subject: &subject,
                device_pseudonym: &device.pseudonym,
                device_reference: &device.reference,
                gateway_reference: &gateway_reference,
                zone: device.zone,
                out_of_range: self.out_of_range,
            };
            let out = normalize::normalize(reading, &profile, &ctx);
            log_outcome(&profile, &out, &mut stats);
            if let Some(h) = &self.health {
                let outcome = ReadingOutcome {
                    observations: out.observations.len() as u64,
                    rejected: out.rejections.len() as u64,
                };
                h.reading_named(reading, device.pseudonym.clone(), outcome);
            }
            if out.observations.is_empty() {
                // Nothing to store: the reading is handled, so its source may let go of it.
                if let Some(ack) = envelope.ack {
                    let _ = ack.send(Committed::default());
                }
                continue;
            }
            let mut observations = Vec::with_capacity(out.observations.len() + 1);
            let new_clock = out.coincident.as_ref().filter(|c| {
                coincident
                    .get(device.pseudonym.as_str())
                    .map(String::as_str)
                    != Some(c.id.as_str())
            });
            if let Some(cts) = new_clock {
                log_clock(&profile, &reading.clock, &ctx);
                match serde_json::to_vec(cts) {
                    Ok(json) => {
                        coincident.insert(device.pseudonym.clone(), cts.id.clone());
                        observations.push((cts.id.clone(), json));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a Coincident Time Stamp Observation could not be serialized; dropped")
                    }
                }
            }
            for obs in &out.observations {
                if let Some(observer) = self.observer.as_mut() {
                    observer(&profile, &identity, obs);
                }
                if obs.data_absent_reason.is_some()
                    || obs.component.iter().any(|c| c.data_absent_reason.is_some())
                {
                    stats.absent += 1;
                }
                let json = match &hold {
                    // Sized from the last Observation's length, not grown by doubling
                    // from nothing (the rows wait for their commit in these buffers).
                    None => {
                        let mut json = Vec::with_capacity(json_hint);
                        serde_json::to_writer(&mut json, obs).map(|()| {
                            json_hint = json.len() + JSON_SLACK;
                            json
                        })
                    }
                    Some(hold) => serde_json::to_value(obs).and_then(|mut v| {
                        if let Some(map) = v.as_object_mut() {
                            map.insert(HOLD_MEMBER.into(), serde_json::to_value(hold)?);
                        }
                        serde_json::to_vec(&v)
                    }),
                };
                match json {
                    Ok(json) => observations.push((obs.id.clone(), json)),
                    Err(e) => {
                        tracing::error!(error = %e, "an Observation could not be serialized; dropped")
                    }
                }
            }
            let count = observations.len() as u64;
            let append = Append {
                device_id: device.resource_id.clone(),
                device_json: device.json.clone(),
                observations,
                ack: envelope.ack,
                source_waits: envelope.source_waits,
            };
            match self.outbox.append(append).await {
                Ok(()) => stats.observations += count,
                Err(e) => {
                    stats.store_errors += 1;
                    tracing::error!(error = %e, "a reading could not be handed to the outbox; it is not acknowledged");
                }
            }
        }
        tracing::info!(
            readings = stats.readings,
            observations = stats.observations,
            rejected = stats.rejected,
            device_id_too_long = stats.device_id_too_long,
            store_errors = stats.store_errors,
            "pipeline drained"
        );
        stats
    }
}

/// Logs, once per connection (serial: per session), how far a device's clock is off (seconds only: no value,
/// no address), and whether its time stamps are corrected.
fn log_clock(profile: &Profile, clock: &Option<iomt_drivers::ClockComparison>, ctx: &Context) {
    let Some(offset) = clock
        .as_ref()
        .and_then(|c| normalize::clock_offset(c, ctx.zone))
    else {
        return;
    };
    let seconds = offset.num_seconds();
    if offset.abs() > normalize::CORRECTION_THRESHOLD {
        tracing::warn!(profile = %profile.id, offset_seconds = seconds, "a device's clock is off; its time stamps are placed on the gateway's timeline");
    } else {
        tracing::debug!(profile = %profile.id, offset_seconds = seconds, "device clock within the threshold");
    }
}

fn log_outcome(profile: &Profile, out: &normalize::Normalized, stats: &mut Stats) {
    for r in &out.rejections {
        stats.rejected += 1;
        match r {
            Rejection::UnmappedField(field) => {
                tracing::debug!(profile = %profile.id, field = %field, "field not mapped by the profile; ignored")
            }
            Rejection::Unit { field, reason } => {
                tracing::warn!(profile = %profile.id, field = %field, reason = %reason, "value rejected: unit")
            }
            Rejection::Implausible { field } => {
                tracing::warn!(profile = %profile.id, field = %field, "value rejected: outside its plausible range")
            }
            Rejection::TestData => {
                tracing::info!(profile = %profile.id, "test or calibration reading not forwarded as patient data")
            }
        }
    }
    if out.flagged > 0 {
        stats.flagged += out.flagged as u64;
        tracing::warn!(profile = %profile.id, count = out.flagged, "implausible value kept and marked questionable");
    }
    if out.time_source == normalize::TimeSource::ReceivedDistrusted {
        tracing::warn!(profile = %profile.id, "device time not trustworthy (clock not set or far in the future); receive time used");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iomt_drivers::{reading_channel, Quantity, Reading, Transport};
    use rust_decimal::Decimal;

    use super::*;
    use crate::outbox::seal::Keyring;
    use crate::outbox::{OutboxSettings, WhenFull};
    use crate::pseudonym::Pseudonymizer;

    fn reading(address: String) -> Reading {
        Reading {
            clock: None,
            device: Arc::new(DeviceIdentity {
                revisions: Default::default(),
                profile: "sim-thermometer".into(),
                transport: Transport::Sim,
                address,
                serial_number: None,
                manufacturer: None,
                model: None,
            }),
            device_time: None,
            received_at: chrono::Utc::now(),
            sequence: None,
            quantities: vec![Quantity::new(
                "body_temperature",
                Decimal::new(3650, 2),
                "Cel",
            )],
            flags: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_over_long_device_id_is_refused_counted_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let settings = OutboxSettings {
            path: dir.path().join("outbox.db"),
            max_bytes: 1 << 30,
            max_age: None,
            when_full: WhenFull::EvictOldest,
            commit_window: Duration::from_millis(1),
            quiet_commit_window: Duration::from_millis(1),
            max_batch_rows: 100,
            pseudonym_key: None,
        };
        let keyring = Arc::new(Keyring::new(&[7; 32]));
        let (outbox, writer) = Outbox::open(settings, keyring, vec!["fhir".into()])
            .await
            .unwrap();
        let pipeline = Pipeline {
            profiles: crate::demo::embedded_profiles()
                .unwrap()
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
            pseudonymizer: Pseudonymizer::new(&[9; 32]),
            patient_pseudonym: "patient".into(),
            gateway_pseudonym: "gateway".into(),
            zones: (Zone::Named(chrono_tz::UTC), BTreeMap::new()),
            address_zones: BTreeMap::new(),
            out_of_range: OutOfRange::default(),
            outbox,
            observer: None,
            clock: None,
            health: None,
        };
        let (tx, rx) = reading_channel(4);
        let run = tokio::spawn(pipeline.run(rx));
        let long = tx
            .send_acked(reading("x".repeat(MAX_DEVICE_ID_BYTES + 1)))
            .await
            .unwrap();
        assert!(long.await.unwrap().observations.is_empty());
        // More devices than the cache holds: each still stored.
        for i in 0..DEVICE_CACHE + 10 {
            let ok = tx.send_acked(reading(format!("t-{i}"))).await.unwrap();
            assert_eq!(ok.await.unwrap().observations.len(), 1);
        }
        drop(tx);
        let stats = run.await.unwrap();
        assert_eq!(stats.device_id_too_long, 1);
        assert_eq!(stats.observations, DEVICE_CACHE as u64 + 10);
        writer.await.unwrap();
    }
}
