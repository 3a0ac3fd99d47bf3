//! The time rules of the rule book (`normalize`'s module doc): which clock
//! `effectiveDateTime` comes from, how a wall-clock time is read in a zone (DST gaps and
//! repeats), and how instants are written.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc};
use iomt_drivers::{DeviceTime, Reading, ReadingFlag};

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
        Some(t) if reading.clock.is_some() => match reading
            .clock
            .as_ref()
            .and_then(|c| super::clock::corrected(t, c, zone))
        {
            Some(c) => Some((c, TimeSource::DeviceCorrected)),
            None => device_instant(t, zone),
        },
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
