//! Heart Rate Measurement (0x2A37), Heart Rate service 0x180D (reference §2.1).

use rust_decimal::Decimal;

use super::reader::Reader;
use super::{quantity, Anomaly, Characteristic, FinalMeasurement, GattError};
use crate::reading::{Measurement, Quantity};

const C: Characteristic = Characteristic::HeartRateMeasurement;
const FORMAT_U16: u8 = 0x01;
const ENERGY_EXPENDED: u8 = 0x08;
const RR_INTERVALS: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// The strap's skin contact, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SensorContact {
    /// The sensor cannot tell (flag values 0 and 1).
    NotSupported,
    /// Supported, and there is no contact: the heart rate may be meaningless.
    NotDetected,
    /// Supported, and there is contact.
    Detected,
}

/// A decoded Heart Rate Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartRateMeasurement {
    /// Beats per minute.
    pub heart_rate: u16,
    /// Skin contact.
    pub sensor_contact: SensorContact,
    /// Cumulative energy expended in kilojoules (saturates at 65535), if sent.
    pub energy_expended_kj: Option<u16>,
    /// RR intervals in units of 1/1024 s, oldest first.
    pub rr_intervals: Vec<u16>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl HeartRateMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        // The heart rate is a uint8, or a uint16 under FORMAT_U16 (one byte more).
        let mut r = Reader::with_flags(
            C,
            bytes,
            2,
            &[(FORMAT_U16, 1), (ENERGY_EXPENDED, 2), (RR_INTERVALS, 2)],
        )?;
        let heart_rate = if r.has(FORMAT_U16) {
            r.u16()?
        } else {
            u16::from(r.u8()?)
        };
        let sensor_contact = match (r.flags() >> 1) & 0x03 {
            2 => SensorContact::NotDetected,
            3 => SensorContact::Detected,
            _ => SensorContact::NotSupported,
        };
        let energy_expended_kj = r.optional(ENERGY_EXPENDED, Reader::u16)?;
        let mut rr_intervals = Vec::new();
        if r.has(RR_INTERVALS) {
            if r.remaining() % 2 != 0 {
                return Err(GattError::Invalid {
                    characteristic: C,
                    reason: "RR intervals are 2 bytes each, but an odd byte is left over".into(),
                });
            }
            while r.remaining() >= 2 {
                rr_intervals.push(r.u16()?);
            }
        }
        Ok(Self {
            heart_rate,
            sensor_contact,
            energy_expended_kj,
            rr_intervals,
            anomalies: r.finish(RESERVED),
        })
    }

    /// The RR intervals in milliseconds, exactly (`raw × 1000 / 1024`).
    pub fn rr_intervals_ms(&self) -> Vec<Decimal> {
        // 1000/1024 = 0.9765625 exactly.
        let factor = Decimal::new(9_765_625, 7);
        self.rr_intervals
            .iter()
            .map(|rr| Decimal::from(*rr) * factor)
            .collect()
    }
}

impl FinalMeasurement for HeartRateMeasurement {
    fn characteristic(&self) -> Characteristic {
        C
    }

    fn quantities(&self) -> Vec<Quantity> {
        vec![quantity(
            "heart_rate",
            Measurement::Value(Decimal::from(self.heart_rate)),
            "/min",
        )]
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(m: &HeartRateMeasurement) -> Vec<String> {
        m.rr_intervals_ms()
            .iter()
            .map(|d| d.round_dp(1).to_string())
            .collect()
    }

    #[test]
    fn flags_00_give_a_uint8_heart_rate_of_85_without_contact_feature() {
        let m = HeartRateMeasurement::decode(&[0x00, 0x55]).unwrap();
        assert_eq!(m.heart_rate, 85);
        assert_eq!(m.sensor_contact, SensorContact::NotSupported);
        assert_eq!((m.energy_expended_kj, m.rr_intervals.len()), (None, 0));
        assert!(m.anomalies.is_empty());
    }

    #[test]
    fn flags_04_say_contact_is_supported_but_not_detected() {
        let m = HeartRateMeasurement::decode(&[0x04, 0xFF]).unwrap();
        assert_eq!(m.heart_rate, 255);
        assert_eq!(m.sensor_contact, SensorContact::NotDetected);
    }

    #[test]
    fn uint8_rate_with_contact_energy_and_one_rr_interval() {
        let m = HeartRateMeasurement::decode(&[0x1E, 0x55, 0x32, 0x00, 0x21, 0x00]).unwrap();
        assert_eq!(m.heart_rate, 85);
        assert_eq!(m.sensor_contact, SensorContact::Detected);
        assert_eq!(m.energy_expended_kj, Some(50));
        assert_eq!(m.rr_intervals, vec![33]);
        assert_eq!(ms(&m), vec!["32.2"]);
    }

    #[test]
    fn uint16_rate_with_contact_energy_and_three_rr_intervals() {
        let m = HeartRateMeasurement::decode(&[
            0x1F, 0x01, 0x01, 0x32, 0x01, 0x01, 0x00, 0x02, 0x01, 0xFF, 0xFF,
        ])
        .unwrap();
        assert_eq!(m.heart_rate, 257);
        assert_eq!(m.sensor_contact, SensorContact::Detected);
        assert_eq!(m.energy_expended_kj, Some(306));
        assert_eq!(m.rr_intervals, vec![1, 258, 65535]);
        assert_eq!(ms(&m), vec!["1.0", "252.0", "63999.0"]);
    }

    #[test]
    fn uint16_rate_of_75_without_contact_feature_with_two_rr_intervals() {
        let m =
            HeartRateMeasurement::decode(&[0x19, 0x4B, 0x00, 0x38, 0x04, 0x04, 0x04, 0x38, 0x04])
                .unwrap();
        assert_eq!(m.heart_rate, 75);
        assert_eq!(m.sensor_contact, SensorContact::NotSupported);
        assert_eq!(m.energy_expended_kj, Some(1080));
        assert_eq!(m.rr_intervals, vec![1028, 1080]);
        assert_eq!(ms(&m), vec!["1003.9", "1054.7"]);
    }

    #[test]
    fn uint16_with_rr_flagged_but_only_three_bytes_is_truncated() {
        let err = HeartRateMeasurement::decode(&[0x17, 0x01, 0x01]).unwrap_err();
        assert_eq!(
            err,
            GattError::Truncated {
                characteristic: C,
                len: 3,
                required: 5
            }
        );
    }

    #[test]
    fn an_odd_byte_after_the_rr_intervals_is_rejected() {
        let err = HeartRateMeasurement::decode(&[0x10, 0x48, 0x00, 0x04, 0x01]).unwrap_err();
        assert!(matches!(err, GattError::Invalid { .. }), "{err}");
    }

    #[test]
    fn an_empty_value_is_truncated() {
        assert!(matches!(
            HeartRateMeasurement::decode(&[]),
            Err(GattError::Truncated { required: 1, .. })
        ));
    }

    #[test]
    fn reserved_flag_bits_are_ignored_and_recorded() {
        let m = HeartRateMeasurement::decode(&[0xE0, 0x48]).unwrap();
        assert_eq!(m.heart_rate, 72);
        assert_eq!(m.anomalies, vec![Anomaly::ReservedFlags { bits: 0xE0 }]);
    }

    #[test]
    fn bytes_after_the_rate_without_rr_flag_are_trailing() {
        let m = HeartRateMeasurement::decode(&[0x00, 0x48, 0x01]).unwrap();
        assert_eq!(m.anomalies, vec![Anomaly::TrailingBytes { count: 1 }]);
    }

    #[test]
    fn the_reading_has_the_heart_rate_per_minute() {
        let m = HeartRateMeasurement::decode(&[0x00, 0x55]).unwrap();
        let q = m.quantities();
        assert_eq!(q[0].name, "heart_rate");
        assert_eq!(q[0].unit, "/min");
        assert_eq!(q[0].value, Measurement::Value(Decimal::from(85)));
    }
}
