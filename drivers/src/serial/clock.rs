//! The device's clock on a live serial stream: a device that sends each line (or frame) as
//! it measures, stamped by its own clock (a Masimo Rad-8's trend output, a line a second),
//! shows its clock in every line. The time stamp of such a line against the gateway's
//! receive time is the PHD IG's coincident time stamp, as a BLE device's Current Time read
//! at a connection is (`ble_driver/clock.rs`).
//!
//! Only for ports whose profile (or port configuration) says `live_clock`: a device that
//! dumps stored records, or a recording played back, stamps lines long before they are
//! sent.
//!
//! Per session (the port opened or reopened) the first reading with a device time gives
//! the comparison, and every reading of the session carries it, so the gateway makes one
//! Coincident Time Stamp Observation per session and places every time stamp of the
//! session by it. A later line whose clock has moved against the receive time by more than
//! [`DRIFT_THRESHOLD`] (the device's clock was set, it changed to or from daylight saving
//! time, or it drifted a minute over a long session) starts a new comparison. The receive
//! time trails the moment a line was sent by what the port has buffered: under a second
//! normally, and at most what the kernel's buffer holds while the gateway is busy (a few
//! kilobytes: about half a minute of a Rad-8's lines), below the threshold.
//!
//! Readings the device marks as stored (`FromStorage`) are placed by the comparison but
//! never give one; readings whose clock the device says is not set neither give nor
//! carry one (the gateway uses their receive time).

use chrono::Duration;

use crate::reading::{ClockComparison, DeviceTime, Reading, ReadingFlag};

/// A live stream whose device clock moved against the receive time by more than this
/// since the session's comparison gets a new one. The gateway's correction threshold
/// (60 s, `normalize/time.rs`): a smaller move changes no corrected time enough to
/// matter, and a larger one would be a correction off by more than the threshold.
pub const DRIFT_THRESHOLD: Duration = Duration::seconds(60);

/// The comparison of one session of a live-clock port.
#[derive(Debug, Default)]
pub(super) struct LiveClock {
    current: Option<ClockComparison>,
}

impl LiveClock {
    /// Compares the device time of `reading` with its receive time, and attaches the
    /// session's comparison to it. Returns `true` when this reading started a new
    /// comparison.
    pub(super) fn stamp(&mut self, reading: &mut Reading) -> bool {
        let Some(device_now) = reading.device_time else {
            return false;
        };
        if reading.flags.contains(&ReadingFlag::ClockNotSet) {
            return false;
        }
        let mut started = false;
        if !reading.flags.contains(&ReadingFlag::FromStorage) {
            let seen = ClockComparison {
                device_now,
                gateway_now: reading.received_at,
            };
            let moved = match &self.current {
                None => true,
                Some(current) => drift(current, &seen).is_none_or(|d| d.abs() > DRIFT_THRESHOLD),
            };
            if moved {
                self.current = Some(seen);
                started = true;
            }
        }
        reading.clock = self.current;
        started
    }
}

/// How much the device's clock moved against the gateway's between two comparisons;
/// `None` when they cannot be compared (one zoned, one wall-clock time, or overflow).
/// Wall-clock times are compared as they are, with no zone: a change to daylight saving
/// time is a move of the device's clock by an hour.
fn drift(earlier: &ClockComparison, later: &ClockComparison) -> Option<Duration> {
    let on_device = match (earlier.device_now, later.device_now) {
        (DeviceTime::Local(a), DeviceTime::Local(b)) => b.signed_duration_since(a),
        (DeviceTime::Zoned(a), DeviceTime::Zoned(b)) => b.signed_duration_since(a),
        _ => return None,
    };
    let on_gateway = later.gateway_now.signed_duration_since(earlier.gateway_now);
    on_device.checked_sub(&on_gateway)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};

    use super::*;
    use crate::reading::{DeviceIdentity, Transport};

    fn wall(h: u32, m: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 7)
            .unwrap()
            .and_hms_opt(h, m, s)
            .unwrap()
    }

    /// A reading stamped `device` by the device, received at 10:00:00 + `after` seconds.
    fn line(device: Option<NaiveDateTime>, after: i64, flags: Vec<ReadingFlag>) -> Reading {
        Reading {
            device: Arc::new(DeviceIdentity {
                profile: "masimo".into(),
                transport: Transport::Serial,
                address: "/dev/ttyUSB0".into(),
                serial_number: None,
                manufacturer: None,
                model: None,
                revisions: Default::default(),
            }),
            device_time: device.map(DeviceTime::Local),
            received_at: Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap()
                + Duration::seconds(after),
            sequence: None,
            quantities: Vec::new(),
            flags,
            clock: None,
        }
    }

    #[test]
    fn the_first_line_gives_the_comparison_every_line_of_the_session_carries() {
        let mut clock = LiveClock::default();
        let mut first = line(Some(wall(6, 50, 0)), 0, vec![]);
        assert!(clock.stamp(&mut first));
        let expected = ClockComparison {
            device_now: DeviceTime::Local(wall(6, 50, 0)),
            gateway_now: first.received_at,
        };
        assert_eq!(first.clock, Some(expected));
        // An hour later the clock has drifted 30 s: still the same comparison.
        let mut later = line(Some(wall(7, 50, 30)), 3600, vec![]);
        assert!(!clock.stamp(&mut later));
        assert_eq!(later.clock, Some(expected));
    }

    #[test]
    fn a_clock_that_moves_beyond_the_threshold_gives_a_new_comparison() {
        let mut clock = LiveClock::default();
        clock.stamp(&mut line(Some(wall(6, 50, 0)), 0, vec![]));
        // Someone set the device's clock: it now shows the right time.
        let mut set = line(Some(wall(10, 0, 5)), 5, vec![]);
        assert!(clock.stamp(&mut set));
        assert_eq!(
            set.clock.map(|c| c.device_now),
            Some(DeviceTime::Local(wall(10, 0, 5)))
        );
    }

    #[test]
    fn stored_lines_are_placed_but_compare_nothing_and_a_clock_not_set_carries_nothing() {
        let mut clock = LiveClock::default();
        let mut stored = line(Some(wall(1, 0, 0)), 0, vec![ReadingFlag::FromStorage]);
        assert!(!clock.stamp(&mut stored));
        assert_eq!(stored.clock, None);
        clock.stamp(&mut line(Some(wall(6, 50, 0)), 1, vec![]));
        let mut stored = line(Some(wall(1, 0, 0)), 2, vec![ReadingFlag::FromStorage]);
        assert!(!clock.stamp(&mut stored));
        assert!(stored.clock.is_some());
        let mut unset = line(Some(wall(0, 0, 0)), 3, vec![ReadingFlag::ClockNotSet]);
        assert!(!clock.stamp(&mut unset));
        assert_eq!(unset.clock, None);
        let mut untimed = line(None, 4, vec![]);
        assert!(!clock.stamp(&mut untimed));
        assert_eq!(untimed.clock, None);
    }
}
