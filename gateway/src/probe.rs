//! `profile test`: decode one captured payload with a profile and show the Observations
//! it becomes, exactly as the daemon would produce them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use iomt_drivers::ble::{self, Characteristic, GattValue};
use iomt_drivers::{DeviceIdentity, Measurement, Quantity, Reading};

use crate::fhir::{self, Observation, Reference};
use crate::normalize::{self, Context, OutOfRange, Zone};
use crate::profile::{normalize_uuid, parse_hex, Profile, TransportSpec};

/// The Bluetooth SIG base UUID's tail: `0000xxxx-0000-1000-8000-00805f9b34fb`.
const SIG_BASE_TAIL: &str = "-0000-1000-8000-00805f9b34fb";
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
    /// The payload is an in-progress value (Intermediate Cuff Pressure or Intermediate
    /// Temperature), which never becomes an Observation.
    #[error("the payload decoded as {characteristic}, {value}: an in-progress value, which never becomes an Observation")]
    Intermediate {
        /// The characteristic.
        characteristic: String,
        /// What it holds, as decoded (e.g. `cuff pressure 21.5 mm[Hg]`).
        value: String,
    },
    /// Decoding worked but no Observation resulted.
    #[error("the payload decoded, but produced no Observation: {0}")]
    Nothing(String),
}

/// The 16-bit UUID of a Bluetooth SIG UUID written as `2A35`, `0x2A35` or in 128-bit form.
fn uuid16(text: &str) -> Option<u16> {
    let full = normalize_uuid(text)?;
    let short = full.strip_prefix("0000")?.strip_suffix(SIG_BASE_TAIL)?;
    u16::from_str_radix(short, 16).ok()
}

/// Decodes `payload` with `profile` and normalizes it, as received at `received_at`.
///
/// Payload forms: a text line for line-oriented serial profiles; hex bytes (spaces
/// allowed) for binary serial profiles, holding one or more whole frames (or packets);
/// a JSON object for MQTT profiles (one Observation set per reading when the profile
/// reads an array of readings; `topic` is checked against the profile's filter); a JSON
/// object `{"field": value}` for simulator profiles; hex bytes (spaces or colons allowed)
/// for BLE, decoded as the profile's characteristic or as `characteristic` (which may also
/// be the in-progress twin of the profile's characteristic: Intermediate Cuff Pressure 2A36
/// for blood pressure, Intermediate Temperature 2A1E for temperature; those decode but are
/// refused).
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
        revisions: Default::default(),
        profile: profile.id.clone(),
        transport: profile.transport.transport(),
        address: "profile-test".into(),
        serial_number: None,
        manufacturer: Some(profile.manufacturer.clone()),
        model: Some(profile.model.clone()),
    });
    let reading = match &profile.transport {
        TransportSpec::Ble(spec) => {
            let own: Vec<u16> = spec.characteristics().collect();
            let first = own.first().copied().unwrap_or_default();
            let uuid = match characteristic {
                None => first,
                Some(c) => {
                    let wanted = uuid16(c).ok_or_else(|| {
                        ProbeError::Usage(format!(
                            "`{c}` is not a 16-bit Bluetooth SIG characteristic UUID (e.g. 2A35)"
                        ))
                    })?;
                    // Cuffs and thermometers also send in-progress values; the Battery
                    // Level counts where the profile maps it.
                    let intermediate = own
                        .iter()
                        .any(|o| matches!((o, wanted), (0x2A35, 0x2A36) | (0x2A1C, 0x2A1E)));
                    let battery = wanted == 0x2A19 && profile.field(ble::BATTERY_FIELD).is_some();
                    if !own.contains(&wanted) && !intermediate && !battery {
                        let list: Vec<String> = own.iter().map(|o| format!("{o:04X}")).collect();
                        let also = if list.len() > 1 {
                            format!(" (all it decodes: {})", list.join(" and "))
                        } else {
                            String::new()
                        };
                        return Err(ProbeError::Usage(format!(
                            "profile `{}` decodes characteristic {first:04X}, not {c}{also}",
                            profile.id
                        )));
                    }
                    wanted
                }
            };
            let bytes = parse_hex(payload).map_err(decode_err)?;
            let value = ble::decode(uuid, &bytes).map_err(|e| decode_err(e.to_string()))?;
            let shown = |m: Measurement, unit: &str| match m {
                Measurement::Value(v) => format!("{v} {unit}"),
                Measurement::Absent(r) => format!("absent ({r:?})"),
            };
            match &value {
                GattValue::IntermediateCuffPressure(icp) => {
                    return Err(ProbeError::Intermediate {
                        characteristic: Characteristic::IntermediateCuffPressure.to_string(),
                        value: format!(
                            "cuff pressure {}",
                            shown(icp.cuff_pressure, icp.unit.ucum())
                        ),
                    })
                }
                GattValue::IntermediateTemperature(t) => {
                    return Err(ProbeError::Intermediate {
                        characteristic: Characteristic::IntermediateTemperature.to_string(),
                        value: format!("temperature {}", shown(t.temperature, t.unit.ucum())),
                    })
                }
                _ => {}
            }
            match value.as_final() {
                Some(m) => m.to_reading(device, received_at),
                None => {
                    return Err(ProbeError::Usage(format!(
                        "characteristic {uuid:04X} carries no measurement"
                    )))
                }
            }
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
                clock: None,
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
    let subject = Reference {
        reference: None,
        identifier: Some(fhir::Identifier {
            system: normalize::PATIENT_PSEUDONYM_SYSTEM.into(),
            value: p.pseudonym(Domain::Patient, "example-patient"),
        }),
    };
    let device = p.pseudonym(Domain::Device, "profile-test");
    let ctx = Context {
        subject: &subject,
        device_pseudonym: &device,
        device_reference: &normalize::device_reference(&device),
        gateway_reference: &normalize::device_reference(
            &p.pseudonym(Domain::Gateway, "profile-test"),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_payloads_may_have_spaces_or_colons() {
        assert_eq!(parse_hex("1E 8A 00").unwrap(), vec![0x1E, 0x8A, 0x00]);
        assert_eq!(parse_hex("1e:8a:00").unwrap(), vec![0x1E, 0x8A, 0x00]);
        assert_eq!(parse_hex(" 1E8A00\n").unwrap(), vec![0x1E, 0x8A, 0x00]);
        assert!(parse_hex("1E 8").unwrap_err().contains("hex bytes"));
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn characteristic_uuids_are_read_in_every_spelling() {
        assert_eq!(uuid16("2A35"), Some(0x2A35));
        assert_eq!(uuid16("0x2a36"), Some(0x2A36));
        assert_eq!(uuid16("00002a35-0000-1000-8000-00805f9b34fb"), Some(0x2A35));
        assert_eq!(uuid16("233bf001-5a34-1b6d-975c-000d5690abe4"), None);
        assert_eq!(uuid16("cuff"), None);
    }
}
