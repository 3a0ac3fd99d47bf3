//! The device's clock against the gateway's: the PHD IG's coincident time stamp (the
//! **Device clocks** rule of the rule book, `normalize`'s module doc).
//!
//! A driver that can read the device's current time (BLE: the Current Time
//! characteristic, at each connection; serial: a live stream's first time stamp of the
//! session against its receive time) attaches a [`ClockComparison`] to the readings of
//! that connection or session. From it the normalizer
//! - makes one Coincident Time Stamp Observation (PHD IG profile
//!   `PhdCoincidentTimeStampObservation`: MDC 67975 `MDC_ATTR_TIME_ABS`,
//!   `effectiveDateTime` the gateway's time, `valueDateTime` the device's time at that
//!   moment, with the offset of the device's zone);
//! - places the device's time stamps on the gateway's timeline when the two clocks differ
//!   by more than [`CORRECTION_THRESHOLD`](super::CORRECTION_THRESHOLD) (a time rule, in
//!   `normalize/time.rs`);
//! - makes every Observation whose time came from the device reference it (the IG's
//!   `CoincidentTimeStampReference` extension), corrected or not, so that the device's
//!   own time stamp can always be recovered.

use chrono::SecondsFormat;
use iomt_drivers::{ClockComparison, DeviceTime, Reading};

use super::time::{fhir_instant, resolve_local, Zone};
use super::{derived_uuid, skeleton, Context, Normalized, TimeSource};
use crate::catalog::Category;
use crate::fhir::{self, CodeableConcept, Coding, Extension, Identifier, Observation, Reference};

/// MDC_ATTR_TIME_ABS: the device's absolute (wall-clock) time.
const MDC_TIME_ABS: &str = "67975";

/// The device's time as its clock showed it: a wall-clock time with the offset of its
/// zone at that moment (`2024-03-15T13:10:00+01:00`), a zoned time as it came.
fn device_text(t: DeviceTime, zone: Zone) -> Option<String> {
    let shown = match t {
        DeviceTime::Zoned(t) => t,
        DeviceTime::Local(n) => {
            let utc = resolve_local(n, zone)?;
            match zone {
                Zone::GatewayLocal => utc.with_timezone(&chrono::Local).fixed_offset(),
                Zone::Named(tz) => utc.with_timezone(&tz).fixed_offset(),
            }
        }
    };
    let format = if shown.timestamp_subsec_millis() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    Some(shown.to_rfc3339_opts(format, true))
}

/// The Coincident Time Stamp Observation of `clock`, `None` when the device's time cannot
/// be read in its zone.
pub(super) fn coincident_time_stamp(
    clock: &ClockComparison,
    reading: &Reading,
    ctx: &Context,
    demo: bool,
) -> Option<Observation> {
    let device = device_text(clock.device_now, ctx.zone)?;
    let gateway = fhir_instant(clock.gateway_now);
    let uuid = derived_uuid(&[
        ctx.device_pseudonym,
        "coincident-time-stamp",
        &gateway,
        &device,
    ]);
    let code = CodeableConcept {
        coding: vec![Coding::new(fhir::MDC, MDC_TIME_ABS, "MDC_ATTR_TIME_ABS")],
        text: Some("Absolute time".into()),
    };
    let mut obs = skeleton(
        &uuid,
        Category::Device,
        Some(fhir::COINCIDENT_TIME_STAMP_PROFILE),
        code,
        &gateway,
        reading,
        ctx,
        demo,
    );
    obs.issued = gateway;
    obs.value_date_time = Some(device);
    Some(obs)
}

/// The extension by which a measurement references its Coincident Time Stamp Observation:
/// by the Observation's identifier, which resolves whichever Bundle delivered it.
pub(super) fn reference_to(coincident: &Observation) -> Option<Extension> {
    let id: &Identifier = coincident.identifier.first()?;
    Some(Extension {
        url: fhir::COINCIDENT_TIME_STAMP_REFERENCE.into(),
        value_reference: Reference {
            reference: None,
            identifier: Some(id.clone()),
        },
    })
}

/// The Coincident Time Stamp Observation of the reading's clock comparison, referenced by
/// every Observation whose time came from the device.
pub(super) fn reference_clock(reading: &Reading, ctx: &Context, demo: bool, out: &mut Normalized) {
    let from_device = matches!(
        out.time_source,
        TimeSource::DeviceZoned | TimeSource::DeviceLocal | TimeSource::DeviceCorrected
    );
    let Some(clock) = reading.clock.as_ref().filter(|_| from_device) else {
        return;
    };
    if out.observations.is_empty() {
        return;
    }
    let Some(cts) = coincident_time_stamp(clock, reading, ctx, demo) else {
        return;
    };
    if let Some(ext) = reference_to(&cts) {
        for obs in &mut out.observations {
            obs.extension.push(ext.clone());
        }
    }
    out.coincident = Some(cts);
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    const BERLIN: Zone = Zone::Named(chrono_tz::Europe::Berlin);

    #[test]
    fn the_device_time_keeps_the_offset_of_its_zone() {
        assert_eq!(
            device_text(
                DeviceTime::Local(
                    NaiveDate::from_ymd_opt(2026, 7, 1)
                        .unwrap()
                        .and_hms_opt(12, 0, 0)
                        .unwrap()
                ),
                BERLIN
            )
            .as_deref(),
            Some("2026-07-01T12:00:00+02:00")
        );
    }
}
