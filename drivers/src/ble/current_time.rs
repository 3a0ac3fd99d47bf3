//! Current Time (0x2A2B) of the Current Time Service (0x1805): the device's clock, now.
//!
//! The value is the Exact Time 256 (a Date Time, the day of the week, fractions of a
//! second in 1/256 s) followed by the Adjust Reason, 10 octets. Like every GATT Date
//! Time it is the device's wall-clock time without a zone: the gateway reads it in the
//! zone configured for the device, the same zone as the device's measurement time stamps,
//! so the offset between the two clocks does not depend on the zone.
//!
//! Policy:
//! - Shorter than 10 octets: [`GattError::Truncated`]. Bytes after the 10th are ignored
//!   ([`Anomaly::TrailingBytes`](super::Anomaly::TrailingBytes)).
//! - An impossible date or time, or a day of the week above 7: [`GattError::Invalid`].
//! - An unknown date (year, month or day 0, a device whose clock was never set) is
//!   accepted: [`CurrentTime::device_now`] then gives no time, and the gateway compares
//!   no clocks for this connection.
//! - The reserved bits 4..=7 of the Adjust Reason are ignored (an anomaly).

use chrono::{Datelike, NaiveDateTime, Timelike};

use super::datetime::{DateTimeProblem, GattDateTime};
use super::reader::Reader;
use super::{Anomaly, Characteristic, GattError};

/// The Adjust Reason bit the gateway sets when it writes the device's clock: "External
/// Reference Time Update" (the gateway's clock is the reference).
pub const ADJUST_EXTERNAL_REFERENCE: u8 = 0x02;

/// The length of a Current Time value in octets.
pub const CURRENT_TIME_LEN: usize = 10;

/// A decoded Current Time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTime {
    /// The date and time, as sent (parts may be 0 = unknown).
    pub date_time: GattDateTime,
    /// Day of the week, 1 = Monday ..= 7 = Sunday; 0 = unknown.
    pub day_of_week: u8,
    /// Fractions of the second, in 1/256 s.
    pub fractions256: u8,
    /// The Adjust Reason bits: 0 manual update, 1 external reference update, 2 change of
    /// time zone, 3 change of DST.
    pub adjust_reason: u8,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl CurrentTime {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::CurrentTime;
        let mut r = Reader::new(C, bytes);
        let date_time = GattDateTime::from_bytes(r.bytes7()?);
        let day_of_week = r.u8()?;
        let fractions256 = r.u8()?;
        let adjust_reason = r.u8()?;
        if !date_time.is_possible() {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: "the date or time is impossible (e.g. month 13, February 30, hour 24)"
                    .into(),
            });
        }
        if day_of_week > 7 {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: "the day of the week is above 7 (reserved)".into(),
            });
        }
        let mut anomalies = r.finish(0);
        if adjust_reason & 0xF0 != 0 {
            anomalies.push(Anomaly::ReservedFlags {
                bits: u32::from(adjust_reason & 0xF0),
            });
        }
        Ok(Self {
            date_time,
            day_of_week,
            fractions256,
            adjust_reason,
            anomalies,
        })
    }

    /// The device's wall-clock time now, with the fractions of the second; an error when
    /// the date is unknown (the clock was never set) or impossible.
    pub fn device_now(&self) -> Result<NaiveDateTime, DateTimeProblem> {
        let t = self.date_time.to_naive()?;
        // Below 10^9 (255/256 of a second), computed without overflow.
        let nanos = u64::from(self.fractions256) * 1_000_000_000 / 256;
        let nanos = u32::try_from(nanos).map_err(|_| DateTimeProblem::Invalid)?;
        t.with_nanosecond(nanos).ok_or(DateTimeProblem::Invalid)
    }

    /// The value that sets a device's clock to `now` (its wall-clock time), with the
    /// Adjust Reason "External Reference Time Update". `None` for a year outside
    /// 1582..=9999, which a Date Time cannot carry.
    pub fn encode(now: NaiveDateTime) -> Option<[u8; CURRENT_TIME_LEN]> {
        let year = u16::try_from(now.year())
            .ok()
            .filter(|y| (1582..=9999).contains(y))?;
        let t = GattDateTime {
            year,
            month: u8::try_from(now.month()).ok()?,
            day: u8::try_from(now.day()).ok()?,
            hours: u8::try_from(now.hour()).ok()?,
            minutes: u8::try_from(now.minute()).ok()?,
            seconds: u8::try_from(now.second().min(59)).ok()?,
        };
        let day_of_week = u8::try_from(now.weekday().number_from_monday()).ok()?;
        // Below 256 by construction (nanoseconds of a leap second are capped).
        let fractions = u64::from(now.nanosecond().min(999_999_999)) * 256 / 1_000_000_000;
        let [y0, y1, mo, d, h, mi, s] = t.to_bytes();
        Some([
            y0,
            y1,
            mo,
            d,
            h,
            mi,
            s,
            day_of_week,
            u8::try_from(fractions).ok()?,
            ADJUST_EXTERNAL_REFERENCE,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8_07_0c_07_0a_1e_00_01_80_02_is_monday_7_december_2024_10_30_and_a_half() {
        let t = CurrentTime::decode(&[0xE8, 0x07, 0x0C, 0x07, 0x0A, 0x1E, 0x00, 0x06, 0x80, 0x02])
            .unwrap();
        assert_eq!(
            t.device_now().unwrap().to_string(),
            "2024-12-07 10:30:00.500"
        );
        assert_eq!((t.day_of_week, t.adjust_reason), (6, 0x02));
        assert!(t.anomalies.is_empty());
    }

    #[test]
    fn a_clock_never_set_decodes_but_gives_no_time() {
        let t = CurrentTime::decode(&[0, 0, 0, 0, 0x00, 0x01, 0x02, 0, 0, 0]).unwrap();
        assert_eq!(t.device_now(), Err(DateTimeProblem::Unknown));
    }

    #[test]
    fn nine_octets_are_truncated_and_impossible_values_invalid() {
        let err = CurrentTime::decode(&[0xE8, 0x07, 1, 1, 0, 0, 0, 1, 0]).unwrap_err();
        assert!(
            matches!(err, GattError::Truncated { required: 10, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Current Time (0x2A2B)"), "{err}");
        for bad in [
            [0xE8, 0x07, 13, 1, 0, 0, 0, 1, 0, 0],
            [0xE8, 0x07, 1, 1, 24, 0, 0, 1, 0, 0],
            [0xE8, 0x07, 1, 1, 0, 0, 0, 8, 0, 0],
        ] {
            assert!(matches!(
                CurrentTime::decode(&bad),
                Err(GattError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn reserved_adjust_bits_and_trailing_bytes_are_anomalies() {
        let t = CurrentTime::decode(&[0xD0, 0x07, 1, 1, 0, 0, 0, 6, 0, 0x11, 0xAA]).unwrap();
        assert_eq!(
            t.anomalies,
            vec![
                Anomaly::TrailingBytes { count: 1 },
                Anomaly::ReservedFlags { bits: 0x10 }
            ]
        );
    }

    #[test]
    fn an_encoded_time_decodes_to_itself_to_the_256th_of_a_second() {
        let now = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_milli_opt(0, 4, 59, 750)
            .unwrap();
        let bytes = CurrentTime::encode(now).unwrap();
        let t = CurrentTime::decode(&bytes).unwrap();
        assert_eq!(t.device_now().unwrap(), now);
        assert_eq!(t.day_of_week, 6, "1 January 2000 was a Saturday");
        assert_eq!(t.adjust_reason, ADJUST_EXTERNAL_REFERENCE);
    }
}
