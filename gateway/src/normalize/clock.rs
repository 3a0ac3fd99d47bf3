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

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use iomt_drivers::{ClockComparison, DeviceTime, Reading};

use super::time::{fhir_instant, resolve_local, Zone};
use super::{derived_uuid, skeleton, Context, Normalized, TimeSource};
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
    reading: &Reading,
    ctx: &Context,
    demo: bool,
) -> Option<Observation> {
    let device = device_text(clock.device_now, ctx.zone)?;
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
    use chrono::{FixedOffset, NaiveDate, NaiveDateTime, TimeZone};

    use super::*;

    const BERLIN: Zone = Zone::Named(chrono_tz::Europe::Berlin);

    fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
    }

    /// The gateway read the device's clock at 2026-12-07 10:00:00 UTC (11:00 in Berlin).
    fn clock(device_now: NaiveDateTime) -> ClockComparison {
        ClockComparison {
            device_now: DeviceTime::Local(device_now),
            gateway_now: Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap(),
        }
    }

    #[test]
    fn a_clock_within_a_minute_is_not_corrected_and_one_beyond_it_is() {
        let right = clock(wall(2026, 12, 7, 11, 0, 59));
        assert_eq!(offset(&right, BERLIN), Some(Duration::seconds(59)));
        assert_eq!(
            corrected(
                DeviceTime::Local(wall(2026, 12, 7, 10, 55, 0)),
                &right,
                BERLIN
            ),
            None
        );
        let off = clock(wall(2026, 12, 7, 11, 1, 1));
        assert_eq!(
            corrected(
                DeviceTime::Local(wall(2026, 12, 7, 10, 56, 1)),
                &off,
                BERLIN
            ),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 9, 55, 0).unwrap())
        );
    }

    #[test]
    fn a_clock_reset_to_2000_places_its_stamps_by_the_time_elapsed_on_it() {
        let reset = clock(wall(2000, 1, 1, 0, 7, 0));
        assert!(offset(&reset, BERLIN).unwrap() < -Duration::days(9000));
        // Measured 5 minutes before the connection by the cuff's clock.
        assert_eq!(
            corrected(DeviceTime::Local(wall(2000, 1, 1, 0, 2, 0)), &reset, BERLIN),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 9, 55, 0).unwrap())
        );
    }

    #[test]
    fn a_zoned_stamp_is_corrected_by_the_offset_of_the_clock() {
        let ahead = clock(wall(2026, 12, 7, 14, 10, 0)); // 3 h 10 min ahead
        let stamp = FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2026, 12, 7, 14, 5, 0)
            .unwrap();
        assert_eq!(
            corrected(DeviceTime::Zoned(stamp), &ahead, BERLIN),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 9, 55, 0).unwrap())
        );
    }

    #[test]
    fn the_device_time_keeps_the_offset_of_its_zone() {
        assert_eq!(
            device_text(DeviceTime::Local(wall(2026, 7, 1, 12, 0, 0)), BERLIN).as_deref(),
            Some("2026-07-01T12:00:00+02:00")
        );
    }
}
