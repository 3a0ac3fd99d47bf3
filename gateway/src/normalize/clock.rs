//! The device's clock against the gateway's: the PHD IG's coincident time stamp (the
//! **Device clocks** rule of the rule book, `normalize`'s module doc).
//!
//! A driver that can read the device's current time (BLE: the Current Time
//! characteristic, at each connection) attaches a [`ClockComparison`] to the readings of
//! that connection. From it the normalizer
//! - makes one Coincident Time Stamp Observation (PHD IG profile
//!   `PhdCoincidentTimeStampObservation`: MDC 67975 `MDC_ATTR_TIME_ABS`,
//!   `effectiveDateTime` the gateway's time, `valueDateTime` the device's time at that
//!   moment, read in the device's zone);
//! - places the device's time stamps on the gateway's timeline when the two clocks differ
//!   by more than [`CORRECTION_THRESHOLD`]: the measurement time minus the offset
//!   (device − gateway, rounded to whole seconds);
//! - makes every Observation whose time came from the device reference it (the IG's
//!   `CoincidentTimeStampReference` extension), corrected or not, so that the device's
//!   own time stamp can always be recovered.

use chrono::{DateTime, Duration, Utc};
use iomt_drivers::{ClockComparison, DeviceTime};

use super::time::{fhir_instant, resolve_local, Zone};
use super::{derived_uuid, skeleton, Context};
use crate::catalog::Category;
use crate::fhir::{self, CodeableConcept, Coding, Extension, Identifier, Observation, Reference};

/// Device clocks that differ from the gateway's by more than this are corrected; within
/// it, the device's time stamps are kept as they are (a minute is below what matters for
/// a spot measurement, and above the jitter of reading a clock over BLE).
pub const CORRECTION_THRESHOLD: Duration = Duration::seconds(60);

/// MDC_ATTR_TIME_ABS: the device's absolute (wall-clock) time.
const MDC_TIME_ABS: &str = "67975";

/// An instant of a device time, reading a wall-clock time in `zone`.
fn instant(t: DeviceTime, zone: Zone) -> Option<DateTime<Utc>> {
    match t {
        DeviceTime::Zoned(t) => Some(t.with_timezone(&Utc)),
        DeviceTime::Local(n) => resolve_local(n, zone),
    }
}

/// How far the device's clock is ahead of the gateway's (negative: behind), to the
/// nearest second.
pub fn offset(clock: &ClockComparison, zone: Zone) -> Option<Duration> {
    let device = instant(clock.device_now, zone)?;
    let ms = (device - clock.gateway_now).num_milliseconds();
    // Rounded half away from zero to whole seconds: device time stamps have seconds.
    let secs = (ms.saturating_add(if ms < 0 { -500 } else { 500 })) / 1000;
    Some(Duration::seconds(secs))
}

/// The measurement time `t` placed on the gateway's timeline, when the device's clock is
/// off by more than [`CORRECTION_THRESHOLD`]; `None` when no correction applies.
pub(super) fn corrected(
    t: DeviceTime,
    clock: &ClockComparison,
    zone: Zone,
) -> Option<DateTime<Utc>> {
    let offset = offset(clock, zone)?;
    if offset.abs() <= CORRECTION_THRESHOLD {
        return None;
    }
    match (t, clock.device_now) {
        // Both on the device's wall clock: the time elapsed on it since the measurement,
        // counted back from the gateway's time (no zone or DST enters).
        (DeviceTime::Local(m), DeviceTime::Local(now)) => {
            let elapsed = now - m;
            let ms = elapsed.num_milliseconds();
            let elapsed =
                Duration::seconds((ms.saturating_add(if ms < 0 { -500 } else { 500 })) / 1000);
            clock
                .gateway_now
                .checked_sub_signed(elapsed)
                .map(whole_seconds)
        }
        _ => instant(t, zone)?.checked_sub_signed(offset),
    }
}

/// `t` without its fraction of a second (the gateway's clock reading has one).
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// The Coincident Time Stamp Observation of `clock`, `None` when the device's time cannot
/// be read in its zone.
pub(super) fn coincident_time_stamp(
    clock: &ClockComparison,
    reading: &iomt_drivers::Reading,
    ctx: &Context,
    demo: bool,
) -> Option<Observation> {
    let device = fhir_instant(instant(clock.device_now, ctx.zone)?);
    let gateway = fhir_instant(clock.gateway_now);
    let uuid = derived_uuid(&[
        &ctx.device_pseudonym,
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
