//! The time rules of the rule book (`normalize`'s module doc): which clock
//! `effectiveDateTime` comes from, how a wall-clock time is read in a zone (DST gaps and
//! repeats), how instants are written, and how a device's time stamp is placed on the
//! gateway's timeline by a comparison of the two clocks (`normalize/clock.rs` makes the
//! Coincident Time Stamp Observation of that comparison).

use chrono::{
    DateTime, Duration, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc,
};
use iomt_drivers::{ClockComparison, DeviceTime, Reading, ReadingFlag};

/// Device times further ahead of the receive time than this are not trusted.
pub const MAX_FUTURE: chrono::Duration = chrono::Duration::hours(24);

/// The zone a device's wall-clock times are in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// The gateway's own local zone (from `TZ` or `/etc/localtime`).
    GatewayLocal,
    /// A named IANA zone.
    Named(chrono_tz::Tz),
}

/// Which clock `effectiveDateTime` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The device's time, with its zone.
    DeviceZoned,
    /// The device's wall-clock time, read in the configured zone.
    DeviceLocal,
    /// The device's time, placed on the gateway's timeline by the offset of the device's
    /// clock (a coincident time stamp showed it off by more than the threshold).
    DeviceCorrected,
    /// The gateway's receive time, because the device gave none.
    Received,
    /// The gateway's receive time, because the device time was not trustworthy.
    ReceivedDistrusted,
}

/// Formats an instant as FHIR wants it: UTC, `Z`, milliseconds only when non-zero.
pub fn fhir_instant(t: DateTime<Utc>) -> String {
    let format = if t.timestamp_subsec_millis() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    t.to_rfc3339_opts(format, true)
}

/// Resolves a wall-clock time in `zone`. An ambiguous time (the hour repeated when DST
/// ends) takes the earlier instant; a time in the DST gap is read with the offset in
/// force just before the gap.
pub fn resolve_local(naive: NaiveDateTime, zone: Zone) -> Option<DateTime<Utc>> {
    fn pick<Z: TimeZone>(zone: &Z, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        match zone.from_local_datetime(&naive) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(early, _) => Some(early.with_timezone(&Utc)),
            LocalResult::None => {
                let before = naive - chrono::Duration::hours(3);
                let offset = zone.from_local_datetime(&before).earliest()?.offset().fix();
                offset
                    .from_local_datetime(&naive)
                    .single()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }
    match zone {
        Zone::GatewayLocal => pick(&chrono::Local, naive),
        Zone::Named(tz) => pick(&tz, naive),
    }
}

/// The effective time of a reading and where it came from (the **Time** rule).
pub(super) fn effective_time(reading: &Reading, zone: Zone) -> (DateTime<Utc>, TimeSource) {
    let received = reading.received_at;
    if reading.flags.contains(&ReadingFlag::ClockNotSet) {
        return (received, TimeSource::ReceivedDistrusted);
    }
    let device = match reading.device_time {
        None => return (received, TimeSource::Received),
        Some(t) if reading.clock.is_some() => {
            match reading.clock.as_ref().and_then(|c| corrected(t, c, zone)) {
                Some(c) => Some((c, TimeSource::DeviceCorrected)),
                None => device_instant(t, zone),
            }
        }
        Some(t) => device_instant(t, zone),
    };
    match device {
        Some((t, src)) if t <= received + MAX_FUTURE => (t, src),
        _ => (received, TimeSource::ReceivedDistrusted),
    }
}

/// A device time as it is, read in `zone` when it has none.
fn device_instant(t: DeviceTime, zone: Zone) -> Option<(DateTime<Utc>, TimeSource)> {
    match t {
        DeviceTime::Zoned(t) => Some((t.with_timezone(&Utc), TimeSource::DeviceZoned)),
        DeviceTime::Local(n) => resolve_local(n, zone).map(|t| (t, TimeSource::DeviceLocal)),
    }
}

/// Device clocks that differ from the gateway's by more than this are corrected; within
/// it, the device's time stamps are kept as they are (a minute is below what matters for
/// a spot measurement, and above the jitter of reading a clock over BLE).
pub const CORRECTION_THRESHOLD: Duration = Duration::seconds(60);

/// An instant of a device time, reading a wall-clock time in `zone`.
pub(super) fn instant(t: DeviceTime, zone: Zone) -> Option<DateTime<Utc>> {
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
fn corrected(t: DeviceTime, clock: &ClockComparison, zone: Zone) -> Option<DateTime<Utc>> {
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
}
