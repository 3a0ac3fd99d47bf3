//! Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36), Blood
//! Pressure service 0x1810 (reference §2.2, §2.3).
//!
//! Pressures in kPa stay in kPa (unit `kPa`): the gateway's UCUM conversion turns them
//! into `mm[Hg]` keeping their precision. A decoder trusts the unit flag even when the
//! numbers look like mmHg; plausibility is the gateway's out-of-range rule.
//!
//! Intermediate Cuff Pressure has the same layout; its "systolic" field is the current
//! cuff pressure and diastolic/MAP are unused (ignored, whatever they hold). It decodes
//! to [`IntermediateCuffPressure`], which cannot become a reading.

use super::reader::Reader;
use super::{
    local_time, quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError,
    UserId,
};
use crate::reading::{DeviceTime, Measurement, Quantity, ReadingFlag};

const UNITS_KPA: u8 = 0x01;
const TIME_STAMP: u8 = 0x02;
const PULSE_RATE: u8 = 0x04;
const USER_ID: u8 = 0x08;
const STATUS: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// The unit of the pressures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PressureUnit {
    /// Millimetres of mercury (`mm[Hg]`).
    MmHg,
    /// Kilopascal (`kPa`).
    KPa,
}

impl PressureUnit {
    /// The UCUM code.
    pub fn ucum(self) -> &'static str {
        match self {
            PressureUnit::MmHg => "mm[Hg]",
            PressureUnit::KPa => "kPa",
        }
    }
}

/// The pulse-rate range detection of the Measurement Status (bits 3-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PulseRateRange {
    /// Within range.
    WithinRange,
    /// Exceeds the upper limit.
    ExceedsUpperLimit,
    /// Below the lower limit.
    BelowLowerLimit,
    /// The reserved value 3.
    Reserved,
}

/// The Blood Pressure Measurement Status (16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BloodPressureStatus(pub u16);

impl BloodPressureStatus {
    /// Body movement during measurement.
    pub fn body_movement(self) -> bool {
        self.0 & 0x0001 != 0
    }
    /// The cuff fits too loosely.
    pub fn cuff_too_loose(self) -> bool {
        self.0 & 0x0002 != 0
    }
    /// Irregular pulse detected.
    pub fn irregular_pulse(self) -> bool {
        self.0 & 0x0004 != 0
    }
    /// Pulse-rate range detection.
    pub fn pulse_rate_range(self) -> PulseRateRange {
        match (self.0 >> 3) & 0x03 {
            0 => PulseRateRange::WithinRange,
            1 => PulseRateRange::ExceedsUpperLimit,
            2 => PulseRateRange::BelowLowerLimit,
            _ => PulseRateRange::Reserved,
        }
    }
    /// Improper measurement position.
    pub fn improper_position(self) -> bool {
        self.0 & 0x0020 != 0
    }
}

/// A decoded Blood Pressure Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    /// The unit of systolic, diastolic and mean arterial pressure.
    pub unit: PressureUnit,
    /// Systolic pressure.
    pub systolic: Measurement,
    /// Diastolic pressure.
    pub diastolic: Measurement,
    /// Mean arterial pressure.
    pub mean_arterial: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// Pulse rate in beats per minute.
    pub pulse_rate: Option<Measurement>,
    /// The user, on multi-user cuffs.
    pub user_id: Option<UserId>,
    /// The measurement status.
    pub status: Option<BloodPressureStatus>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// A decoded Intermediate Cuff Pressure: an in-progress value, never a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateCuffPressure {
    /// The unit of the cuff pressure.
    pub unit: PressureUnit,
    /// The current cuff pressure.
    pub cuff_pressure: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// Pulse rate in beats per minute.
    pub pulse_rate: Option<Measurement>,
    /// The user, on multi-user cuffs.
    pub user_id: Option<UserId>,
    /// The measurement status.
    pub status: Option<BloodPressureStatus>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// The shared layout of 0x2A35 and 0x2A36.
fn decode_layout(
    c: Characteristic,
    bytes: &[u8],
    field_names: [&'static str; 3],
) -> Result<BloodPressureMeasurement, GattError> {
    let mut r = Reader::with_flags(
        c,
        bytes,
        7,
        &[(TIME_STAMP, 7), (PULSE_RATE, 2), (USER_ID, 1), (STATUS, 2)],
    )?;
    let unit = if r.has(UNITS_KPA) {
        PressureUnit::KPa
    } else {
        PressureUnit::MmHg
    };
    let systolic = r.sfloat(field_names[0])?;
    let diastolic = r.sfloat(field_names[1])?;
    let mean_arterial = r.sfloat(field_names[2])?;
    let timestamp = r.optional(TIME_STAMP, Reader::timestamp)?;
    let pulse_rate = r.optional(PULSE_RATE, |r| r.sfloat("pulse_rate"))?;
    let user_id = r.optional(USER_ID, Reader::user_id)?;
    let status = r.optional(STATUS, |r| r.u16().map(BloodPressureStatus))?;
    Ok(BloodPressureMeasurement {
        unit,
        systolic,
        diastolic,
        mean_arterial,
        timestamp,
        pulse_rate,
        user_id,
        status,
        anomalies: r.finish(RESERVED),
    })
}

impl BloodPressureMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        decode_layout(
            Characteristic::BloodPressureMeasurement,
            bytes,
            ["systolic", "diastolic", "mean_arterial"],
        )
    }
}

impl IntermediateCuffPressure {
    /// Decodes the characteristic's value; the unused diastolic and MAP fields are read
    /// past and ignored (no anomaly is recorded for them, whatever they hold).
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let m = decode_layout(
            Characteristic::IntermediateCuffPressure,
            bytes,
            ["cuff_pressure", "unused", "unused"],
        )?;
        let anomalies = m
            .anomalies
            .into_iter()
            .filter(|a| *a != Anomaly::ReservedMantissa { field: "unused" })
            .collect();
        Ok(Self {
            unit: m.unit,
            cuff_pressure: m.systolic,
            timestamp: m.timestamp,
            pulse_rate: m.pulse_rate,
            user_id: m.user_id,
            status: m.status,
            anomalies,
        })
    }
}

impl FinalMeasurement for BloodPressureMeasurement {
    fn characteristic(&self) -> Characteristic {
        Characteristic::BloodPressureMeasurement
    }

    fn quantities(&self) -> Vec<Quantity> {
        let unit = self.unit.ucum();
        let mut q = vec![
            quantity("systolic", self.systolic, unit),
            quantity("diastolic", self.diastolic, unit),
            quantity("mean_arterial", self.mean_arterial, unit),
        ];
        if let Some(p) = self.pulse_rate {
            q.push(quantity("pulse_rate", p, "/min"));
        }
        q
    }

    fn device_time(&self) -> Option<DeviceTime> {
        local_time(self.timestamp.as_ref())
    }

    fn flags(&self) -> Vec<ReadingFlag> {
        Vec::new()
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::test_support::{local, text};
    use crate::reading::AbsentReason;

    #[test]
    fn mmhg_with_unknown_year_pulse_user_and_four_status_bits() {
        let m = BloodPressureMeasurement::decode(&[
            0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B,
            0x3C, 0x00, 0x01, 0x27, 0x00,
        ])
        .unwrap();
        assert_eq!(m.unit, PressureUnit::MmHg);
        assert_eq!(
            [m.systolic, m.diastolic, m.mean_arterial].map(text),
            ["138", "88", "120"]
        );
        let t = m.timestamp.unwrap();
        assert_eq!((t.year, t.month, t.day), (0, 4, 17));
        assert_eq!((t.hours, t.minutes, t.seconds), (20, 41, 59));
        // Year unknown: no device time, and the decoder says why.
        assert_eq!(m.device_time(), None);
        assert!(matches!(
            m.anomalies[..],
            [Anomaly::UnusableTimestamp { .. }]
        ));
        assert_eq!(text(m.pulse_rate.unwrap()), "60");
        assert_eq!(m.user_id, Some(UserId::Known(1)));
        let s = m.status.unwrap();
        assert!(s.body_movement() && s.cuff_too_loose() && s.irregular_pulse());
        assert!(s.improper_position());
        assert_eq!(s.pulse_rate_range(), PulseRateRange::WithinRange);
    }

    #[test]
    fn kpa_with_pulse_and_status_cuff_loose_and_pulse_below_range() {
        let m = BloodPressureMeasurement::decode(&[
            0x15, 0xBD, 0xF0, 0x0B, 0x00, 0x9F, 0xF0, 0x3C, 0x00, 0x12, 0x00,
        ])
        .unwrap();
        assert_eq!(m.unit, PressureUnit::KPa);
        assert_eq!(
            [m.systolic, m.diastolic, m.mean_arterial].map(text),
            ["18.9", "11", "15.9"]
        );
        assert_eq!(text(m.pulse_rate.unwrap()), "60");
        let s = m.status.unwrap();
        assert!(s.cuff_too_loose() && !s.body_movement() && !s.irregular_pulse());
        assert_eq!(s.pulse_rate_range(), PulseRateRange::BelowLowerLimit);
        let q = m.quantities();
        assert!(q[..3].iter().all(|q| q.unit == "kPa"));
        assert_eq!(q[3].unit, "/min");
    }

    #[test]
    fn the_minimal_seven_byte_form_decodes() {
        let m =
            BloodPressureMeasurement::decode(&[0x00, 0xBD, 0xF0, 0x0B, 0x00, 0x9F, 0xF0]).unwrap();
        assert_eq!(m.unit, PressureUnit::MmHg);
        assert_eq!(
            [m.systolic, m.diastolic, m.mean_arterial].map(text),
            ["18.9", "11", "15.9"]
        );
        assert_eq!(
            (m.timestamp, m.pulse_rate, m.user_id, m.status),
            (None, None, None, None)
        );
        assert_eq!(m.quantities().len(), 3);
    }

    #[test]
    fn six_bytes_are_too_short() {
        assert_eq!(
            BloodPressureMeasurement::decode(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06]),
            Err(GattError::Truncated {
                characteristic: Characteristic::BloodPressureMeasurement,
                len: 6,
                required: 7
            })
        );
    }

    #[test]
    fn a_flagged_time_stamp_that_does_not_follow_is_truncated() {
        assert_eq!(
            BloodPressureMeasurement::decode(&[0x03, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]),
            Err(GattError::Truncated {
                characteristic: Characteristic::BloodPressureMeasurement,
                len: 7,
                required: 14
            })
        );
    }

    #[test]
    fn the_unit_flag_is_trusted_even_when_values_look_like_mmhg() {
        let m = BloodPressureMeasurement::decode(&[
            0x1F, 0x79, 0x00, 0x51, 0x00, 0x6A, 0x00, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D,
            0x48, 0x00, 0x01, 0x06, 0x00,
        ])
        .unwrap();
        assert_eq!(m.unit, PressureUnit::KPa);
        assert_eq!(
            [m.systolic, m.diastolic, m.mean_arterial].map(text),
            ["121", "81", "106"]
        );
        assert_eq!(m.device_time(), local(2020, 5, 21, 10, 30, 45));
        assert_eq!(text(m.pulse_rate.unwrap()), "72");
        assert_eq!(m.user_id, Some(UserId::Known(1)));
        assert_eq!(m.status, Some(BloodPressureStatus(0x0006)));
        assert!(m.anomalies.is_empty());
    }

    #[test]
    fn the_ua_651ble_comment_values_decode_with_sign_extension() {
        // 128 mmHg = 80 00, 17.6 kPa = B0 F0, 2013-08-26 09:10:20.
        let m = BloodPressureMeasurement::decode(&[
            0x03, 0xB0, 0xF0, 0x80, 0x00, 0x80, 0x00, 0xDD, 0x07, 0x08, 0x1A, 0x09, 0x0A, 0x14,
        ])
        .unwrap();
        assert_eq!(text(m.systolic), "17.6");
        assert_eq!(text(m.diastolic), "128");
        assert_eq!(m.device_time(), local(2013, 8, 26, 9, 10, 20));
    }

    #[test]
    fn user_ff_is_the_unknown_user() {
        let m = BloodPressureMeasurement::decode(&[0x08, 0x80, 0x00, 0x50, 0x00, 0x60, 0x00, 0xFF])
            .unwrap();
        assert_eq!(m.user_id, Some(UserId::Unknown));
    }

    #[test]
    fn nan_pressures_are_absent_values() {
        let m =
            BloodPressureMeasurement::decode(&[0x00, 0xFF, 0x07, 0x00, 0x08, 0xFE, 0x07]).unwrap();
        assert_eq!(m.systolic, Measurement::Absent(AbsentReason::NotANumber));
        assert_eq!(
            m.diastolic,
            Measurement::Absent(AbsentReason::NotAtThisResolution)
        );
        assert_eq!(
            m.mean_arterial,
            Measurement::Absent(AbsentReason::PositiveInfinity)
        );
    }

    #[test]
    fn a_reserved_mantissa_keeps_its_value_and_names_the_field() {
        let m =
            BloodPressureMeasurement::decode(&[0x00, 0xFF, 0xF7, 0x50, 0x00, 0x60, 0x00]).unwrap();
        assert_eq!(text(m.systolic), "204.7");
        assert_eq!(
            m.anomalies,
            vec![Anomaly::ReservedMantissa { field: "systolic" }]
        );
    }

    #[test]
    fn reserved_flags_and_trailing_bytes_are_ignored_and_recorded() {
        let m = BloodPressureMeasurement::decode(&[0x80, 0x80, 0x00, 0x50, 0x00, 0x60, 0x00, 0xAA])
            .unwrap();
        assert_eq!(text(m.systolic), "128");
        assert_eq!(
            m.anomalies,
            vec![
                Anomaly::ReservedFlags { bits: 0x80 },
                Anomaly::TrailingBytes { count: 1 }
            ]
        );
    }

    #[test]
    fn intermediate_cuff_pressure_of_4_mmhg_with_pulse_user_and_status() {
        let m = IntermediateCuffPressure::decode(&[
            0x1E, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B,
            0x3C, 0x00, 0x01, 0x27, 0x00,
        ])
        .unwrap();
        assert_eq!(m.unit, PressureUnit::MmHg);
        assert_eq!(text(m.cuff_pressure), "4");
        assert_eq!(text(m.pulse_rate.unwrap()), "60");
        assert_eq!(m.user_id, Some(UserId::Known(1)));
        assert_eq!(m.status, Some(BloodPressureStatus(0x27)));
    }

    #[test]
    fn intermediate_cuff_pressure_of_11_point_1_kpa() {
        let m = IntermediateCuffPressure::decode(&[
            0x15, 0x6F, 0xF0, 0x00, 0x00, 0x00, 0x00, 0x3C, 0x00, 0x12, 0x00,
        ])
        .unwrap();
        assert_eq!(m.unit, PressureUnit::KPa);
        assert_eq!(text(m.cuff_pressure), "11.1");
    }

    #[test]
    fn intermediate_cuff_pressure_of_21_point_5_mmhg() {
        let m =
            IntermediateCuffPressure::decode(&[0x00, 0xD7, 0xF0, 0x00, 0x00, 0x00, 0x00]).unwrap();
        assert_eq!(text(m.cuff_pressure), "21.5");
    }

    #[test]
    fn intermediate_cuff_pressure_ignores_whatever_fills_the_unused_fields() {
        let m =
            IntermediateCuffPressure::decode(&[0x00, 0xD7, 0xF0, 0xFF, 0x07, 0xFF, 0xF7]).unwrap();
        assert_eq!(text(m.cuff_pressure), "21.5");
        assert!(m.anomalies.is_empty());
    }
}
