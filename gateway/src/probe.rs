//! `profile test`: decode one captured payload with a profile and show the Observations
//! it becomes, exactly as the daemon would produce them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use iomt_drivers::{DeviceIdentity, Quantity, Reading};

use crate::fhir::{self, Observation, Reference};
use crate::normalize::{self, Context, OutOfRange, Zone};
use crate::profile::{normalize_uuid, parse_hex, Profile, TransportSpec};
use crate::pseudonym::{Domain, Pseudonymizer};
use iomt_drivers::decode::frame::{FrameDecoder, ScanEvent};

/// Why a payload could not be tried.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The payload does not decode with this profile.
    #[error("the payload does not decode with profile `{profile}`: {reason}")]
    Decode {
        /// The profile id.
        profile: String,
        /// Why.
        reason: String,
    },
    /// The option does not apply to this profile.
    #[error("{0}")]
    Usage(String),
    /// Decoding for this transport is not available in this release.
    #[error("profile `{profile}` uses the built-in GATT decoder `{decoder}`, and BLE payload decoding is not available in this release yet")]
    Unsupported {
        /// The profile id.
        profile: String,
        /// The decoder name.
        decoder: String,
    },
    /// Decoding worked but no Observation resulted.
    #[error("the payload decoded, but produced no Observation: {0}")]
    Nothing(String),
}

/// Decodes `payload` with `profile` and normalizes it, as received at `received_at`.
///
/// Payload forms: a text line for line-oriented serial profiles; hex bytes (spaces
/// allowed) for binary serial profiles, holding one or more whole frames (or packets);
/// a JSON object for MQTT profiles (one Observation set per reading when the profile
/// reads an array of readings); a JSON object `{"field": value}` for simulator profiles;
/// hex for BLE. `topic`, for MQTT profiles, is checked against the profile's filter.
pub fn test_payload(
    profile: &Profile,
    payload: &str,
    characteristic: Option<&str>,
    topic: Option<&str>,
    received_at: DateTime<Utc>,
    zone: Zone,
) -> Result<Vec<Observation>, ProbeError> {
    let decode_err = |reason: String| ProbeError::Decode {
        profile: profile.id.clone(),
        reason,
    };
    if characteristic.is_some() && !matches!(profile.transport, TransportSpec::Ble(_)) {
        return Err(ProbeError::Usage(format!(
            "--characteristic applies to BLE profiles only; `{}` is a {} profile",
            profile.id,
            profile.transport.transport()
        )));
    }
    if let Some(t) = topic {
        match &profile.transport {
            TransportSpec::Mqtt(spec) if iomt_drivers::mqtt::topic_matches(&spec.topic, t) => {}
            TransportSpec::Mqtt(spec) => {
                return Err(ProbeError::Usage(format!(
                    "topic `{t}` does not match the profile's topic filter `{}`",
                    spec.topic
                )))
            }
            _ => {
                return Err(ProbeError::Usage(format!(
                    "--topic applies to MQTT profiles only; `{}` is a {} profile",
                    profile.id,
                    profile.transport.transport()
                )))
            }
        }
    }
    let device = Arc::new(DeviceIdentity {
        profile: profile.id.clone(),
        transport: profile.transport.transport(),
        address: "profile-test".into(),
        serial_number: None,
        manufacturer: Some(profile.manufacturer.clone()),
        model: Some(profile.model.clone()),
    });
    let reading = match &profile.transport {
        TransportSpec::Ble(spec) => {
            if let Some(c) = characteristic {
                let wanted = normalize_uuid(c)
                    .ok_or_else(|| ProbeError::Usage(format!("`{c}` is not a Bluetooth UUID")))?;
                let own = normalize_uuid(&format!("{:04x}", spec.decoder.characteristic))
                    .unwrap_or_default();
                if wanted != own {
                    return Err(ProbeError::Usage(format!(
                        "profile `{}` decodes characteristic {:04X}, not {c}",
                        profile.id, spec.decoder.characteristic
                    )));
                }
            }
            return Err(ProbeError::Unsupported {
                profile: profile.id.clone(),
                decoder: spec.decoder.name.into(),
            });
        }
        TransportSpec::Serial(spec) => match (spec.line(), spec.frame()) {
            (Some(line), _) => line
                .decode(payload, device, received_at)
                .map_err(|e| decode_err(e.to_string()))?,
            (None, Some(frame)) => {
                let readings =
                    decode_frames(frame, payload, device, received_at).map_err(decode_err)?;
                let mut all = Vec::new();
                for r in &readings {
                    all.extend(normalize_for_test(r, profile, zone)?);
                }
                return Ok(all);
            }
            (None, None) => return Err(decode_err("the profile has no serial decoder".into())),
        },
        TransportSpec::Mqtt(spec) => {
            let value = spec
                .json
                .parse(payload.as_bytes())
                .map_err(|e| decode_err(e.to_string()))?;
            let readings = spec
                .json
                .decode_all(&value, device, received_at)
                .map_err(|e| decode_err(e.to_string()))?;
            let mut all = Vec::new();
            for r in &readings {
                all.extend(normalize_for_test(r, profile, zone)?);
            }
            return Ok(all);
        }
        TransportSpec::Sim(spec) => {
            let value: serde_json::Value = serde_json::from_str(payload).map_err(|e| {
                decode_err(format!(
                    "expected a JSON object like {{\"field\": 72}}: {e}"
                ))
            })?;
            let obj = value
                .as_object()
                .ok_or_else(|| decode_err("expected a JSON object like {\"field\": 72}".into()))?;
            let mut quantities = Vec::new();
            for (name, signal) in &spec.signals {
                let Some(v) = obj.get(name) else { continue };
                let text = match v {
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    _ => return Err(decode_err(format!("field `{name}`: expected a number"))),
                };
                let value = if text.eq_ignore_ascii_case("nan") {
                    Quantity::absent(
                        name.clone(),
                        iomt_drivers::AbsentReason::NotANumber,
                        signal.unit(),
                    )
                } else {
                    let d = text
                        .parse()
                        .map_err(|_| decode_err(format!("field `{name}`: not a decimal number")))?;
                    Quantity::new(name.clone(), d, signal.unit())
                };
                quantities.push(value);
            }
            if let Some(unknown) = obj
                .keys()
                .find(|k| !spec.signals.iter().any(|(n, _)| n == *k))
            {
                return Err(decode_err(format!("the profile has no field `{unknown}`")));
            }
            Reading {
                device,
                device_time: None,
                received_at,
                sequence: None,
                quantities,
                flags: Vec::new(),
            }
        }
    };
    normalize_for_test(&reading, profile, zone)
}

/// Scans hex `payload` for frames (checking sync, length and checksum, assembling
/// packets) and decodes each.
fn decode_frames(
    decoder: &FrameDecoder,
    payload: &str,
    device: Arc<DeviceIdentity>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, String> {
    let bytes = parse_hex(payload).map_err(|e| format!("a binary profile takes hex bytes: {e}"))?;
    let mut scanner = decoder.scanner();
    let mut events = Vec::new();
    scanner.push(&bytes, &mut events);
    let mut readings = Vec::new();
    let mut problems = Vec::new();
    for e in events {
        match e {
            ScanEvent::Unit(unit) => readings.push(
                decoder
                    .decode(&unit, device.clone(), received_at)
                    .map_err(|e| e.to_string())?,
            ),
            ScanEvent::Rejected { reason, raw } => {
                problems.push(format!("{reason} in `{}`", hex::encode_upper(raw)))
            }
        }
    }
    if readings.is_empty() {
        let packet = decoder
            .spec
            .packet
            .as_ref()
            .map(|p| format!(" (this profile needs whole packets of {} frames)", p.frames))
            .unwrap_or_default();
        return Err(if problems.is_empty() {
            format!("no complete, valid frame in {} bytes{packet}", bytes.len())
        } else {
            format!("no valid frame: {}", problems.join("; "))
        });
    }
    Ok(readings)
}

fn normalize_for_test(
    reading: &Reading,
    profile: &Profile,
    zone: Zone,
) -> Result<Vec<Observation>, ProbeError> {
    let p = Pseudonymizer::new(&crate::demo::DEMO_KEY);
    let ctx = Context {
        subject: Reference {
            reference: None,
            identifier: Some(fhir::Identifier {
                system: normalize::PATIENT_PSEUDONYM_SYSTEM.into(),
                value: p.pseudonym(Domain::Patient, "example-patient"),
            }),
        },
        device_pseudonym: p.pseudonym(Domain::Device, "profile-test"),
        gateway_pseudonym: p.pseudonym(Domain::Gateway, "profile-test"),
        zone,
        out_of_range: OutOfRange::Flag,
    };
    let out = normalize::normalize(reading, profile, &ctx);
    if out.observations.is_empty() {
        let reasons: Vec<String> = out.rejections.iter().map(|r| r.to_string()).collect();
        return Err(ProbeError::Nothing(if reasons.is_empty() {
            "no field of the profile was present".into()
        } else {
            reasons.join("; ")
        }));
    }
    Ok(out.observations)
}
