//! Normalization: a [`Reading`] + its [`Profile`] + a [`Context`] → FHIR R4 Observations.
//!
//! A pure function: no IO, no clock, no randomness, so the same reading gives the same
//! Observations (and the same identifiers) on any gateway that shares the
//! pseudonymization key. Golden-file tests in `gateway/tests/golden/` pin its output.
//!
//! Rules (documented for clinical engineers in `device-profiles/README.md`):
//! - **Codes**: LOINC from the catalog (or the profile's override), plus the MDC code, each
//!   with its system URI; SpO2 carries both 2708-6 and 59408-5.
//! - **Units**: UCUM with `system = http://unitsofmeasure.org`. A value in a unit the
//!   vital-signs profile allows is emitted as is; any other unit of the same dimension is
//!   converted to the catalog unit (kPa → mm[Hg], kg/L → mg/dL), keeping precision.
//! - **Temperature site**: a body temperature whose device names the site keeps 8310-5
//!   first and adds the site's LOINC (where one exists) and MDC codes, and `bodySite`.
//! - **Glucose units**: a glucose field whose value arrives in the other dimension (a meter
//!   switching between mg/dL and mmol/L) takes its sibling kind's LOINC (41653-7 ↔ 14743-9),
//!   so the code's property always matches the unit.
//! - **Blood pressure**: systolic, diastolic and mean arterial pressure from one reading
//!   become one 85354-9 panel with components; pulse is a separate Observation.
//! - **Special values** (NaN, NRes, ±infinity, reserved, unsupported): no value, a
//!   `dataAbsentReason` (NRes and reserved values are `error`, as the PHD IG says).
//! - **Out of range** (outside the plausible range of the catalog or the profile): by
//!   default the value is kept and marked with `interpretation` = `questionable`
//!   (measurement-status code system), because an implausible value may still be real and
//!   must reach a clinician; with `out_of_range = "reject"` it is dropped and counted.
//! - **Time**: `effectiveDateTime` is the device's measurement time in UTC. A device time
//!   without zone is read in the device's configured zone (default: the gateway's). The
//!   receive time is used instead when the device gives no time, says its clock is not
//!   set, or gives a time more than [`MAX_FUTURE`] ahead of the receive time. `issued` is
//!   the receive time.
//!   A CGM record's device time is made by the driver: session start + time offset
//!   (`iomt_drivers::ble::cgm`), zoned when the session start gives its zone.
//! - **The gateway's clock**: the receive time is only as right as the gateway's clock. The
//!   normalizer takes it as given (no clock, no IO here); the pipeline looks at the
//!   clock's synchronization on every reading (`clock.rs`) and stores a reading received
//!   while it is not synchronized with a hold (boot id, `CLOCK_BOOTTIME` at receipt, the
//!   receive time written). Such rows are not sent while the clock is not synchronized.
//!   Once it is, `issued`, and `effectiveDateTime` where it is the receive time, become
//!   `now - (boottime now - boottime at receipt)`; a device's own time is kept; `id` and
//!   `identifier` stay as derived here (a row of an earlier boot whose clock was
//!   synchronized later is placed by that boot's anchor: boottime at receipt + wall minus
//!   boottime at the sync). Past `[clock] unsynchronized_wait_secs` without a
//!   synchronized clock, or for a row of an earlier boot whose clock was never seen
//!   synchronized, the times stay as they were and
//!   the Observation is marked uncertain: `meta.tag`
//!   `urn:iomt-gateway:time-quality|gateway-clock-unsynchronized` and a `note`
//!   (`clock/hold.rs`; not a `dataAbsentReason`: the value is present, its time is in
//!   doubt). While the clock is behind, a correct device time may look more than
//!   [`MAX_FUTURE`] ahead: the receive time is then used and corrected like any other.
//! - **Device clocks** (`normalize/clock.rs`): a reading that carries a comparison of the
//!   device's clock with the gateway's (a BLE device's Current Time read at the
//!   connection; on a serial port marked `live_clock`, the first time stamp of the
//!   session against its receive time) gets a Coincident Time Stamp Observation (PHD IG; MDC 67975, the
//!   gateway's time as `effectiveDateTime`, the device's as `valueDateTime`) in
//!   [`Normalized::coincident`]; when the clocks differ by more than
//!   [`CORRECTION_THRESHOLD`] (60 s, a reset to 2000-01-01 included) the device's time
//!   stamp is placed on the gateway's timeline (time elapsed on the device's clock since
//!   the measurement, counted back from the gateway's time); every Observation whose time
//!   came from the device references it (`CoincidentTimeStampReference`). The rules above
//!   (clock not set, more than a day ahead) still apply, after the correction. Without a
//!   comparison (no Current Time, serial without `live_clock`, MQTT), time stamps are
//!   used as they are.
//! - **Identity**: `identifier` (and `id`) is a UUID derived from the device pseudonym,
//!   the field names, the effective time and the device's sequence number. The Device
//!   resource names what the device reports about itself (manufacturer, model, revisions),
//!   else the profile's manufacturer and model; identifying values only as pseudonyms.
//! - **Device status** the device announces with a reading (a CGM's sensor status
//!   annunciations, by name) becomes a `note` on each of its Observations; the value is
//!   kept.
//! - **Test data** (control solution, calibration) is never emitted as a patient
//!   observation; demo data is emitted with the `HTEST` security label.

use iomt_drivers::{AbsentReason, Measurement, Quantity, Reading, ReadingFlag};
use ring::digest;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::catalog::{self, Category, Panel};
use crate::fhir::{
    self, CodeableConcept, Coding, Component, Extension, Identifier, Meta, Observation, Reference,
};
use crate::profile::{FieldMapping, Profile};
use crate::ucum;

mod blood_pressure;
mod clock;
mod device;
mod time;

use device::uuid_text;
pub use device::{
    device_resource, device_resource_id, gateway_resource, set_clock_synchronized,
    DEVICE_PSEUDONYM_SYSTEM, GATEWAY_PSEUDONYM_SYSTEM, PATIENT_PSEUDONYM_SYSTEM,
};
use time::effective_time;
pub use time::{
    fhir_instant, offset as clock_offset, resolve_local, TimeSource, Zone, CORRECTION_THRESHOLD,
    MAX_FUTURE,
};

/// What to do with a value outside its plausible range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutOfRange {
    /// Keep it, marked `questionable` (the default).
    #[default]
    Flag,
    /// Drop it and count it.
    Reject,
}

/// Everything besides the reading and the profile that the mapping needs. It borrows what
/// is the same for many readings (the pipeline keeps the patient's and the gateway's parts
/// once, and each device's with the device), so a reading copies none of it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The patient reference (pseudonymous).
    pub subject: &'a Reference,
    /// The measuring device's pseudonym (its Observations' ids are derived from it).
    pub device_pseudonym: &'a str,
    /// The measuring device's Device resource as each Observation's `device` names it:
    /// [`device_reference`] of `device_pseudonym`.
    pub device_reference: &'a str,
    /// The gateway's Device resource as each Observation's gateway extension names it:
    /// [`device_reference`] of the gateway's pseudonym.
    pub gateway_reference: &'a str,
    /// The zone of the device's wall-clock times.
    pub zone: Zone,
    /// The out-of-range rule.
    pub out_of_range: OutOfRange,
}

/// How an Observation names the Device resource of the device (or gateway) with
/// pseudonym `pseudonym`: `Device/<id>`, the id being [`device_resource_id`].
pub fn device_reference(pseudonym: &str) -> String {
    format!("Device/{}", device_resource_id(pseudonym))
}

/// Why (part of) a reading produced no Observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The profile maps no field of this name (a decoder may report more than a profile wants).
    UnmappedField(String),
    /// The unit could not be converted.
    Unit {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The value is outside the plausible range and the rule is `reject`.
    Implausible {
        /// The field.
        field: String,
    },
    /// The reading is test or calibration data.
    TestData,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnmappedField(field) => {
                write!(f, "field `{field}` is not mapped by the profile")
            }
            Rejection::Unit { field, reason } => write!(f, "field `{field}`: {reason}"),
            Rejection::Implausible { field } => {
                write!(
                    f,
                    "field `{field}` is outside its plausible range (out_of_range = \"reject\")"
                )
            }
            Rejection::TestData => {
                f.write_str("test or calibration data is never a patient observation")
            }
        }
    }
}

/// The result of normalizing one reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The Observations.
    pub observations: Vec<Observation>,
    /// What was left out, and why.
    pub rejections: Vec<Rejection>,
    /// How many values were flagged as questionable.
    pub flagged: usize,
    /// Where the effective time came from.
    pub time_source: TimeSource,
    /// The Coincident Time Stamp Observation the Observations reference, when the reading
    /// carries a comparison of the device's clock with the gateway's.
    pub coincident: Option<Observation>,
}

/// A UUID (version 8, RFC 9562) from the SHA-256 of `parts`, each length-prefixed.
fn derived_uuid(parts: &[&str]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"iomt-gateway/v1/observation\0");
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    uuid_text(b)
}

fn absent_reason(reason: AbsentReason) -> CodeableConcept {
    let (code, display) = match reason {
        AbsentReason::NotANumber => ("not-a-number", "Not a Number (NaN)"),
        AbsentReason::NotAtThisResolution => ("error", "Error"),
        AbsentReason::PositiveInfinity => ("positive-infinity", "Positive Infinity (PINF)"),
        AbsentReason::NegativeInfinity => ("negative-infinity", "Negative Infinity (NINF)"),
        AbsentReason::Unsupported => ("unsupported", "Unsupported"),
        AbsentReason::Reserved => ("error", "Error"),
    };
    CodeableConcept {
        coding: vec![Coding::new(fhir::DATA_ABSENT_REASON, code, display)],
        text: None,
    }
}

fn questionable() -> CodeableConcept {
    CodeableConcept {
        coding: vec![Coding::new(
            fhir::MEASUREMENT_STATUS,
            "questionable",
            "Questionable",
        )],
        text: Some("outside the plausible range for this measurement".into()),
    }
}

fn code_of(m: &FieldMapping) -> CodeableConcept {
    let mut coding: Vec<Coding> = m
        .loinc
        .iter()
        .map(|l| Coding::new(fhir::LOINC, l.code.clone(), l.display.clone()))
        .collect();
    coding.extend(
        m.kind
            .extra_loinc
            .iter()
            .map(|l| Coding::new(fhir::LOINC, l.code, l.display)),
    );
    if let Some(mdc) = &m.mdc {
        coding.push(Coding {
            system: fhir::MDC.into(),
            code: mdc.code.to_string(),
            display: (!mdc.refid.is_empty()).then(|| mdc.refid.clone()),
        });
    }
    // The text: LOINC's display, else the MDC reference id, else the kind's name.
    let text = match (&m.loinc, &m.mdc) {
        (Some(l), _) => l.display.clone(),
        (None, Some(mdc)) if !mdc.refid.is_empty() => mdc.refid.clone(),
        _ => m.kind.key.replace('_', " "),
    };
    CodeableConcept {
        coding,
        text: Some(text),
    }
}

/// A glucose meter may switch between mg/dL and mmol/L (GATT flag bit 2): the LOINC
/// property must follow the unit (mass ↔ moles), so a glucose field whose value arrives
/// in the other dimension is mapped to its sibling kind (41653-7 ↔ 14743-9) instead of
/// being converted with a molar mass. Profiles that override the code keep theirs.
fn glucose_in_its_unit(m: &FieldMapping, unit: &str) -> Option<FieldMapping> {
    let sibling = match m.kind.key {
        "glucose" => "glucose_molar",
        "glucose_molar" => "glucose",
        _ => return None,
    };
    let kind = catalog::kind(sibling)?;
    let overridden = m.loinc.as_ref().map(|l| l.code.as_str()) != m.kind.loinc.map(|l| l.code);
    if overridden || ucum::dimension(unit) != ucum::dimension(kind.unit) {
        return None;
    }
    Some(FieldMapping {
        name: m.name.clone(),
        kind,
        loinc: kind.loinc.map(Into::into),
        mdc: kind.mdc.map(Into::into),
        plausible: kind.plausible,
    })
}

/// The value part of one quantity after unit conversion and range check.
enum Value {
    Present {
        quantity: fhir::Quantity,
        questionable: bool,
    },
    Absent(CodeableConcept),
}

fn value_of(q: &Quantity, m: &FieldMapping, policy: OutOfRange) -> Result<Value, Rejection> {
    let v = match q.value {
        Measurement::Absent(reason) => return Ok(Value::Absent(absent_reason(reason))),
        Measurement::Value(v) => v,
    };
    let kind = m.kind;
    let unit_err = |reason: String| Rejection::Unit {
        field: q.name.clone(),
        reason,
    };
    let emitted_unit = if q.unit == kind.unit || kind.also_emitted_in.contains(&q.unit.as_str()) {
        q.unit.as_str()
    } else {
        kind.unit
    };
    let value = ucum::convert(v, &q.unit, emitted_unit).map_err(|e| unit_err(e.to_string()))?;
    let in_catalog_unit =
        ucum::convert(v, &q.unit, kind.unit).map_err(|e| unit_err(e.to_string()))?;
    let f = in_catalog_unit.to_f64().unwrap_or(f64::NAN);
    let implausible = !(f >= m.plausible.0 && f <= m.plausible.1);
    if implausible && policy == OutOfRange::Reject {
        return Err(Rejection::Implausible {
            field: q.name.clone(),
        });
    }
    Ok(Value::Present {
        quantity: fhir_quantity(value, emitted_unit),
        questionable: implausible,
    })
}

fn fhir_quantity(value: Decimal, unit: &str) -> fhir::Quantity {
    let number = value
        .to_string()
        .parse::<serde_json::Number>()
        .unwrap_or_else(|_| serde_json::Number::from(0));
    fhir::Quantity {
        value: number,
        unit: ucum::display(unit).to_string(),
        system: fhir::UCUM.into(),
        code: unit.into(),
    }
}

/// Normalizes one reading.
pub fn normalize(reading: &Reading, profile: &Profile, ctx: &Context) -> Normalized {
    let (effective, time_source) = effective_time(reading, ctx.zone);
    let mut out = Normalized {
        observations: Vec::new(),
        rejections: Vec::new(),
        flagged: 0,
        time_source,
        coincident: None,
    };
    if reading.flags.contains(&ReadingFlag::TestData) {
        out.rejections.push(Rejection::TestData);
        return out;
    }
    let effective_text = fhir_instant(effective);
    let sequence = reading.sequence.map(|s| s.to_string()).unwrap_or_default();
    let demo = reading.flags.contains(&ReadingFlag::DemoData);

    let mut panel: Vec<(&Quantity, &FieldMapping)> = Vec::new();
    // Glucose fields whose value came in the other dimension, mapped to their sibling kind.
    let switched: Vec<Option<FieldMapping>> = reading
        .quantities
        .iter()
        .map(|q| {
            profile
                .field(&q.name)
                .and_then(|m| glucose_in_its_unit(m, &q.unit))
        })
        .collect();
    for (q, switched) in reading.quantities.iter().zip(&switched) {
        let Some(m) = profile.field(&q.name) else {
            out.rejections
                .push(Rejection::UnmappedField(q.name.clone()));
            continue;
        };
        let m = switched.as_ref().unwrap_or(m);
        if m.kind.panel == Some(Panel::BloodPressure) {
            panel.push((q, m));
            continue;
        }
        match value_of(q, m, ctx.out_of_range) {
            Err(r) => out.rejections.push(r),
            Ok(value) => {
                let uuid =
                    derived_uuid(&[ctx.device_pseudonym, &q.name, &effective_text, &sequence]);
                let mut code = code_of(m);
                let site = q
                    .site
                    .filter(|_| m.kind.key == "body_temperature")
                    .and_then(catalog::temperature_site);
                if let Some(site) = site {
                    // 8310-5 stays first (the vital-signs coding); the site codes join it.
                    if let Some(l) = site.loinc {
                        code.coding
                            .insert(1, Coding::new(fhir::LOINC, l.code, l.display));
                    }
                    code.coding.push(Coding::new(
                        fhir::MDC,
                        site.mdc.code.to_string(),
                        site.mdc.refid,
                    ));
                }
                let mut obs = skeleton(
                    &uuid,
                    m.kind.category,
                    m.kind.fhir_profile,
                    code,
                    &effective_text,
                    reading,
                    ctx,
                    demo,
                );
                obs.body_site = site.map(|s| CodeableConcept {
                    coding: Vec::new(),
                    text: Some(s.name.into()),
                });
                match value {
                    Value::Present {
                        quantity,
                        questionable: q,
                    } => {
                        obs.value_quantity = Some(quantity);
                        if q {
                            obs.interpretation.push(questionable());
                            out.flagged += 1;
                        }
                    }
                    Value::Absent(reason) => obs.data_absent_reason = Some(reason),
                }
                out.observations.push(obs);
            }
        }
    }

    if !panel.is_empty() {
        if let Some(obs) = blood_pressure::observation(
            &panel,
            &effective_text,
            &sequence,
            reading,
            ctx,
            demo,
            &mut out,
        ) {
            out.observations.push(obs);
        }
    }
    clock::reference_clock(reading, ctx, demo, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn skeleton(
    uuid: &str,
    category: Category,
    fhir_profile: Option<&str>,
    code: CodeableConcept,
    effective: &str,
    reading: &Reading,
    ctx: &Context,
    demo: bool,
) -> Observation {
    let mut meta = Meta::default();
    if category == Category::VitalSigns {
        meta.profile.push(catalog::VITAL_SIGNS_PROFILE.into());
    }
    if let Some(p) = fhir_profile {
        meta.profile.push(p.into());
    }
    if demo {
        meta.security
            .push(Coding::new(fhir::ACT_REASON, "HTEST", "test health data"));
    }
    Observation {
        resource_type: "Observation".into(),
        id: uuid.into(),
        meta,
        extension: vec![Extension {
            url: fhir::GATEWAY_DEVICE_EXTENSION.into(),
            value_reference: Reference::to(ctx.gateway_reference),
        }],
        identifier: vec![Identifier {
            system: fhir::URN_SYSTEM.into(),
            value: format!("urn:uuid:{uuid}"),
        }],
        status: "final".into(),
        category: category
            .coding()
            .map(|(code, display)| Coding::new(fhir::OBSERVATION_CATEGORY, code, display))
            .into_iter()
            .chain([Coding::new(
                fhir::PHD_CATEGORY,
                "phd",
                "PHD generated Observation",
            )])
            .map(|coding| CodeableConcept {
                coding: vec![coding],
                text: None,
            })
            .collect(),
        code,
        subject: ctx.subject.clone(),
        effective_date_time: effective.into(),
        issued: fhir_instant(reading.received_at),
        value_quantity: None,
        value_date_time: None,
        data_absent_reason: None,
        interpretation: Vec::new(),
        note: reading
            .flags
            .iter()
            .filter_map(|f| match f {
                ReadingFlag::DeviceStatus(status) => Some(fhir::Annotation {
                    text: format!("device status: {status}"),
                }),
                _ => None,
            })
            .collect(),
        body_site: None,
        device: Reference::to(ctx.device_reference),
        component: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
