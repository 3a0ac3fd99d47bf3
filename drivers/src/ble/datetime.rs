//! Date Time (0x2A08), also embedded as the 7-octet "Time Stamp" / "Base Time" of the
//! measurement characteristics.
//!
//! The value is the device's local wall-clock time, with no zone and no DST: it becomes
//! [`DeviceTime::Local`](crate::DeviceTime::Local), and the gateway reads it in the zone
//! configured for the device.
//!
//! Policy:
//! - Year, month or day 0 means "not known" (SIG). Such a time cannot place a measurement,
//!   so an embedded time stamp with an unknown part gives no device time (the gateway uses
//!   its receive time) and the measurement records
//!   [`Anomaly::UnusableTimestamp`](super::Anomaly::UnusableTimestamp).
//! - An impossible value (month 13, February 30, hour 24, minute or second 60+, a year
//!   outside 1582..=9999) is rejected when the Date Time characteristic is read on its
//!   own, and makes an embedded time stamp unusable (same rule as above), so that good
//!   measurement values are not lost because of a bad clock.

use chrono::{NaiveDate, NaiveDateTime};

use super::reader::Reader;
use super::{Characteristic, GattError};

/// A GATT Date Time as sent, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GattDateTime {
    /// Year, 1582..=9999; 0 = not known.
    pub year: u16,
    /// Month, 1..=12; 0 = not known.
    pub month: u8,
    /// Day of the month, 1..=31; 0 = not known.
    pub day: u8,
    /// Hours, 0..=23.
    pub hours: u8,
    /// Minutes, 0..=59.
    pub minutes: u8,
    /// Seconds, 0..=59.
    pub seconds: u8,
}

/// Why a Date Time does not give a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DateTimeProblem {
    /// Year, month or day is 0 ("not known").
    #[error("the date is not known (year, month or day is 0)")]
    Unknown,
    /// A field is outside its range, or the date does not exist.
    #[error("the date or time is impossible")]
    Invalid,
}

impl GattDateTime {
    /// The 7 octets in wire order.
    pub fn from_bytes(b: [u8; 7]) -> Self {
        Self {
            year: u16::from_le_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            hours: b[4],
            minutes: b[5],
            seconds: b[6],
        }
    }

    /// The 7 octets in wire order.
    pub fn to_bytes(self) -> [u8; 7] {
        let [y0, y1] = self.year.to_le_bytes();
        [
            y0,
            y1,
            self.month,
            self.day,
            self.hours,
            self.minutes,
            self.seconds,
        ]
    }

    /// Decodes the Date Time characteristic (0x2A08) read on its own. Unknown parts (0)
    /// are accepted; impossible values are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let c = Characteristic::DateTime;
        let t = Self::from_bytes(Reader::new(c, bytes).bytes7()?);
        if !t.is_possible() {
            return Err(GattError::Invalid {
                characteristic: c,
                reason: "the date or time is impossible (e.g. month 13, February 30, hour 24)"
                    .into(),
            });
        }
        Ok(t)
    }

    /// Whether every known part is in range and a fully known date exists. Unknown parts
    /// (0) are allowed; with an unknown year, February 29 is allowed.
    pub fn is_possible(&self) -> bool {
        let year_ok = self.year == 0 || (1582..=9999).contains(&self.year);
        let month_ok = self.month <= 12;
        let time_ok = self.hours <= 23 && self.minutes <= 59 && self.seconds <= 59;
        if !(year_ok && month_ok && time_ok && self.day <= 31) {
            return false;
        }
        if self.month == 0 || self.day == 0 {
            return true;
        }
        // A leap year stands in for an unknown one, so 29 February passes.
        let year = if self.year == 0 {
            2000
        } else {
            i32::from(self.year)
        };
        NaiveDate::from_ymd_opt(year, u32::from(self.month), u32::from(self.day)).is_some()
    }

    /// The wall-clock time, if the date is fully known and possible.
    pub fn to_naive(&self) -> Result<NaiveDateTime, DateTimeProblem> {
        if !self.is_possible() {
            return Err(DateTimeProblem::Invalid);
        }
        if self.year == 0 || self.month == 0 || self.day == 0 {
            return Err(DateTimeProblem::Unknown);
        }
        NaiveDate::from_ymd_opt(
            i32::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        )
        .and_then(|d| {
            d.and_hms_opt(
                u32::from(self.hours),
                u32::from(self.minutes),
                u32::from(self.seconds),
            )
        })
        .ok_or(DateTimeProblem::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2_07_04_11_0f_33_00_is_17_april_2018_at_15_51() {
        let t = GattDateTime::decode(&[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00]).unwrap();
        assert_eq!(
            t.to_naive().unwrap().to_string(),
            "2018-04-17 15:51:00".to_string()
        );
    }

    #[test]
    fn an_all_zero_date_is_accepted_as_unknown_with_its_time_of_day() {
        let t = GattDateTime::decode(&[0x00, 0x00, 0x00, 0x00, 0x12, 0x1A, 0x20]).unwrap();
        assert_eq!((t.hours, t.minutes, t.seconds), (18, 26, 32));
        assert_eq!(t.to_naive(), Err(DateTimeProblem::Unknown));
    }

    #[test]
    fn a_six_byte_date_time_is_rejected_as_truncated() {
        let err = GattDateTime::decode(&[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33]).unwrap_err();
        assert_eq!(
            err,
            GattError::Truncated {
                characteristic: Characteristic::DateTime,
                len: 6,
                required: 7
            }
        );
        assert!(err.to_string().contains("Date Time (0x2A08)"), "{err}");
    }

    #[test]
    fn impossible_dates_and_times_are_rejected() {
        for bytes in [
            [0xE8, 0x07, 13, 1, 0, 0, 0], // month 13
            [0xE8, 0x07, 2, 30, 0, 0, 0], // 30 February
            [0xE7, 0x07, 2, 29, 0, 0, 0], // 29 February 2023
            [0xE8, 0x07, 1, 1, 24, 0, 0], // hour 24
            [0xE8, 0x07, 1, 1, 0, 60, 0], // minute 60
            [0xE8, 0x07, 1, 1, 0, 0, 60], // leap second
            [0x2D, 0x06, 1, 1, 0, 0, 0],  // year 1581
            [0x10, 0x27, 1, 1, 0, 0, 0],  // year 10000
            [0x00, 0x00, 4, 31, 0, 0, 0], // 31 April, year unknown
        ] {
            assert!(
                matches!(GattDateTime::decode(&bytes), Err(GattError::Invalid { .. })),
                "{bytes:02X?}"
            );
            assert_eq!(
                GattDateTime::from_bytes(bytes).to_naive(),
                Err(DateTimeProblem::Invalid)
            );
        }
    }

    #[test]
    fn a_leap_day_is_possible_in_a_leap_year_and_with_an_unknown_year() {
        assert!(GattDateTime::decode(&[0xE8, 0x07, 2, 29, 0, 0, 0]).is_ok());
        assert!(GattDateTime::decode(&[0x00, 0x00, 2, 29, 0, 0, 0]).is_ok());
    }

    #[test]
    fn bytes_round_trip() {
        let b = [0xDD, 0x07, 0x08, 0x1A, 0x09, 0x0A, 0x14];
        assert_eq!(GattDateTime::from_bytes(b).to_bytes(), b);
        assert_eq!(
            GattDateTime::from_bytes(b).to_naive().unwrap().to_string(),
            "2013-08-26 09:10:20"
        );
    }
}
