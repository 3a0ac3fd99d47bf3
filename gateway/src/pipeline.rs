//! The pipeline task: readings → normalize → batch into Bundles → uplinks.
//!
//! It runs until the reading channel closes (every driver has stopped), then flushes the
//! last partial batch, so a shutdown never drops what was already read. Bundles are cut
//! at `batch_max` Observations or `batch_delay` after the first one, whichever is first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iomt_drivers::{DeviceIdentity, Reading, ReadingReceiver};

use crate::fhir::{self, Bundle, BundleEntry, BundleRequest, Observation, Reference};
use crate::normalize::{self, Context, OutOfRange, Rejection, Zone};
use crate::profile::Profile;
use crate::pseudonym::{Domain, Pseudonymizer};
use crate::uplink::Uplink;

/// Counters of one pipeline run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Readings received.
    pub readings: u64,
    /// Observations produced.
    pub observations: u64,
    /// Observations without a value (`dataAbsentReason`).
    pub absent: u64,
    /// Values flagged as implausible.
    pub flagged: u64,
    /// Fields or readings dropped (unmapped field, bad unit, rejected implausible value,
    /// test data, unknown profile).
    pub rejected: u64,
    /// Bundles delivered to every uplink.
    pub bundles: u64,
    /// Failed deliveries.
    pub delivery_errors: u64,
}

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
    /// Most Observations per Bundle.
    pub batch_max: usize,
    /// Longest wait for a partial batch.
    pub batch_delay: Duration,
    /// Where Bundles go.
    pub uplinks: Vec<Box<dyn Uplink>>,
    /// Optional per-Observation callback.
    pub observer: Option<Observer>,
}

/// A batch being assembled.
#[derive(Default)]
struct Batch {
    observations: Vec<Observation>,
    devices: BTreeMap<String, fhir::Device>,
}

impl Pipeline {
    /// Runs until `rx` is closed and drained; returns the counters.
    pub async fn run(mut self, mut rx: ReadingReceiver) -> Stats {
        let mut stats = Stats::default();
        let mut batch = Batch::default();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(at) => tokio::select! {
                    r = rx.recv() => r.map(Some),
                    _ = tokio::time::sleep_until(at) => Some(None),
                },
                None => rx.recv().await.map(Some),
            };
            match next {
                None => break,
                Some(None) => {
                    self.flush(&mut batch, &mut stats).await;
                    deadline = None;
                }
                Some(Some(reading)) => {
                    self.ingest(&reading, &mut batch, &mut stats);
                    if batch.observations.len() >= self.batch_max {
                        self.flush(&mut batch, &mut stats).await;
                        deadline = None;
                    } else if deadline.is_none() && !batch.observations.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + self.batch_delay);
                    }
                }
            }
        }
        self.flush(&mut batch, &mut stats).await;
        tracing::info!(
            readings = stats.readings,
            observations = stats.observations,
            bundles = stats.bundles,
            rejected = stats.rejected,
            delivery_errors = stats.delivery_errors,
            "pipeline drained"
        );
        stats
    }

    fn ingest(&mut self, reading: &Reading, batch: &mut Batch, stats: &mut Stats) {
        stats.readings += 1;
        let Some(profile) = self.profiles.get(&reading.device.profile).cloned() else {
            stats.rejected += 1;
            tracing::warn!(profile = %reading.device.profile, "reading from a device whose profile is not loaded; dropped");
            return;
        };
        let identity = &reading.device;
        let address = format!("{}:{}", identity.transport, identity.address);
        let device_pseudonym = self.pseudonymizer.pseudonym(Domain::Device, &address);
        let zone = self
            .address_zones
            .get(&address)
            .or_else(|| self.zones.1.get(&profile.id))
            .copied()
            .unwrap_or(self.zones.0);
        let ctx = Context {
            subject: Reference {
                reference: None,
                identifier: Some(fhir::Identifier {
                    system: normalize::PATIENT_PSEUDONYM_SYSTEM.into(),
                    value: self.patient_pseudonym.clone(),
                }),
            },
            device_pseudonym: device_pseudonym.clone(),
            gateway_pseudonym: self.gateway_pseudonym.clone(),
            zone,
            out_of_range: self.out_of_range,
        };
        let out = normalize::normalize(reading, &profile, &ctx);
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
        if out.observations.is_empty() {
            return;
        }
        batch
            .devices
            .entry(device_pseudonym.clone())
            .or_insert_with(|| normalize::device_resource(&profile, &device_pseudonym));
        for obs in out.observations {
            stats.observations += 1;
            if obs.data_absent_reason.is_some()
                || obs.component.iter().any(|c| c.data_absent_reason.is_some())
            {
                stats.absent += 1;
            }
            if let Some(observer) = self.observer.as_mut() {
                observer(&profile, identity, &obs);
            }
            batch.observations.push(obs);
        }
    }

    async fn flush(&mut self, batch: &mut Batch, stats: &mut Stats) {
        if batch.observations.is_empty() {
            return;
        }
        let taken = std::mem::take(batch);
        let count = taken.observations.len();
        let bundle = build_bundle(taken, &self.gateway_pseudonym);
        let mut ok = true;
        for uplink in &mut self.uplinks {
            if let Err(e) = uplink.deliver(&bundle).await {
                ok = false;
                stats.delivery_errors += 1;
                tracing::error!(uplink = uplink.name(), error = %e, observations = count, "delivery failed");
            }
        }
        if ok {
            stats.bundles += 1;
        }
    }
}

/// Builds a transaction Bundle: the gateway and measuring devices as PUTs to their
/// deterministic ids, each Observation as a conditional create on its identifier.
fn build_bundle(batch: Batch, gateway_pseudonym: &str) -> Bundle {
    let mut entry = Vec::with_capacity(batch.observations.len() + batch.devices.len() + 1);
    let gateway = normalize::gateway_resource(gateway_pseudonym);
    for device in std::iter::once(gateway).chain(batch.devices.into_values()) {
        let url = format!("Device/{}", device.id);
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{}", device.id),
            resource: serde_json::to_value(&device).unwrap_or_default(),
            request: BundleRequest {
                method: "PUT".into(),
                url,
                if_none_exist: None,
            },
        });
    }
    for obs in batch.observations {
        let ident = obs.identifier.first().cloned();
        entry.push(BundleEntry {
            full_url: format!("urn:uuid:{}", obs.id),
            resource: serde_json::to_value(&obs).unwrap_or_default(),
            request: BundleRequest {
                method: "POST".into(),
                url: "Observation".into(),
                if_none_exist: ident.map(|i| format!("identifier={}|{}", i.system, i.value)),
            },
        });
    }
    Bundle {
        resource_type: "Bundle".into(),
        kind: "transaction".into(),
        entry,
    }
}
