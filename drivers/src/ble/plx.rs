//! PLX Spot-Check Measurement (0x2A5E) and PLX Continuous Measurement (0x2A5F), Pulse
//! Oximeter service 0x1822 (reference §2.7).
//!
//! Status bits that say what a reading *is* become reading flags: spot-check flag bit 4
//! "device clock is not set" → `ClockNotSet`; Measurement Status bit 9 "data from
//! measurement storage" → `FromStorage`, bit 10 "data for demonstration" → `DemoData`,
//! bit 11 "data for testing" → `TestData`. All status bits stay available through
//! [`PlxMeasurementStatus`] and [`PlxDeviceStatus`].

use super::reader::Reader;
use super::{
    local_time, quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError,
};
use crate::reading::{DeviceTime, Measurement, Quantity, ReadingFlag};

/// The PLX Measurement Status (16 bits; bits 0-4 reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlxMeasurementStatus(pub u16);

impl PlxMeasurementStatus {
    fn bit(self, n: u16) -> bool {
        self.0 & (1 << n) != 0
    }
    /// Bit 5: measurement ongoing.
    pub fn measurement_ongoing(self) -> bool {
        self.bit(5)
    }
    /// Bit 6: early estimated data.
    pub fn early_estimated(self) -> bool {
        self.bit(6)
    }
    /// Bit 7: validated data.
    pub fn validated(self) -> bool {
        self.bit(7)
    }
    /// Bit 8: fully qualified data.
    pub fn fully_qualified(self) -> bool {
        self.bit(8)
    }
    /// Bit 9: data from measurement storage.
    pub fn from_storage(self) -> bool {
        self.bit(9)
    }
    /// Bit 10: data for demonstration.
    pub fn demonstration(self) -> bool {
        self.bit(10)
    }
    /// Bit 11: data for testing.
    pub fn testing(self) -> bool {
        self.bit(11)
    }
    /// Bit 12: calibration ongoing.
    pub fn calibration_ongoing(self) -> bool {
        self.bit(12)
    }
    /// Bit 13: measurement unavailable.
    pub fn unavailable(self) -> bool {
        self.bit(13)
    }
    /// Bit 14: questionable measurement detected.
    pub fn questionable(self) -> bool {
        self.bit(14)
    }
    /// Bit 15: invalid measurement detected.
    pub fn invalid(self) -> bool {
        self.bit(15)
    }
}

/// The PLX Device and Sensor Status (24 bits; bits 16-23 reserved). Bit `n` is
/// [`PlxDeviceStatus::bit`]`(n)`; the common ones have names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlxDeviceStatus(pub u32);

impl PlxDeviceStatus {
    /// Bit `n` (0 = extended display update ongoing, 1 = equipment malfunction,
    /// 2 = signal processing irregularity, 3 = inadequate signal, 4 = poor signal, 5 = low
    /// perfusion, 6 = erratic signal, 7 = non-pulsatile signal, 8 = questionable pulse,
    /// 9 = signal analysis ongoing, 10 = sensor interference, 11 = sensor unconnected to
    /// user, 12 = unknown sensor connected, 13 = sensor displaced, 14 = sensor
    /// malfunctioning, 15 = sensor disconnected).
    pub fn bit(self, n: u32) -> bool {
        n < 24 && self.0 & (1 << n) != 0
    }
    /// Bit 1: equipment malfunction.
    pub fn equipment_malfunction(self) -> bool {
        self.bit(1)
    }
    /// Bit 5: low perfusion.
    pub fn low_perfusion(self) -> bool {
        self.bit(5)
    }
    /// Bit 15: sensor disconnected.
    pub fn sensor_disconnected(self) -> bool {
        self.bit(15)
    }
}

/// An SpO2 and pulse-rate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpO2Pr {
    /// Oxygen saturation in percent.
    pub spo2: Measurement,
    /// Pulse rate in beats per minute.
    pub pulse_rate: Measurement,
}

/// A decoded PLX Spot-Check Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlxSpotCheckMeasurement {
    /// SpO2 and pulse rate.
    pub value: SpO2Pr,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// Measurement status.
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Device and sensor status.
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse amplitude index in percent.
    pub pulse_amplitude_index: Option<Measurement>,
    /// Flag bit 4: the device says its clock is not set.
    pub clock_not_set: bool,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// A decoded PLX Continuous Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlxContinuousMeasurement {
    /// SpO2 and pulse rate, normal averaging (the reading's values).
    pub normal: SpO2Pr,
    /// Fast-response values.
    pub fast: Option<SpO2Pr>,
    /// Slow-response values.
    pub slow: Option<SpO2Pr>,
    /// Measurement status.
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Device and sensor status.
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse amplitude index in percent.
    pub pulse_amplitude_index: Option<Measurement>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

fn pair(r: &mut Reader<'_>, names: [&'static str; 2]) -> Result<SpO2Pr, GattError> {
    Ok(SpO2Pr {
        spo2: r.sfloat(names[0])?,
        pulse_rate: r.sfloat(names[1])?,
    })
}

fn status_flags(status: Option<PlxMeasurementStatus>, flags: &mut Vec<ReadingFlag>) {
    if let Some(s) = status {
        if s.from_storage() {
            flags.push(ReadingFlag::FromStorage);
        }
        if s.demonstration() {
            flags.push(ReadingFlag::DemoData);
        }
        if s.testing() {
            flags.push(ReadingFlag::TestData);
        }
    }
}

fn spo2_pr_quantities(v: &SpO2Pr) -> Vec<Quantity> {
    vec![
        quantity("spo2", v.spo2, "%"),
        quantity("pulse_rate", v.pulse_rate, "/min"),
    ]
}

impl PlxSpotCheckMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::PlxSpotCheckMeasurement;
        let mut r = Reader::with_flags(C, bytes, 5, &[(0x01, 7), (0x02, 2), (0x04, 3), (0x08, 2)])?;
        let value = pair(&mut r, ["spo2", "pulse_rate"])?;
        let timestamp = r.optional(0x01, Reader::timestamp)?;
        let measurement_status = r.optional(0x02, |r| r.u16().map(PlxMeasurementStatus))?;
        let device_status = r.optional(0x04, |r| r.u24().map(PlxDeviceStatus))?;
        let pulse_amplitude_index = r.optional(0x08, |r| r.sfloat("pulse_amplitude_index"))?;
        Ok(Self {
            value,
            timestamp,
            measurement_status,
            device_status,
            pulse_amplitude_index,
            clock_not_set: r.has(0x10),
            anomalies: r.finish(0xE0),
        })
    }
}

impl PlxContinuousMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::PlxContinuousMeasurement;
        let mut r = Reader::with_flags(
            C,
            bytes,
            5,
            &[(0x01, 4), (0x02, 4), (0x04, 2), (0x08, 3), (0x10, 2)],
        )?;
        let normal = pair(&mut r, ["spo2", "pulse_rate"])?;
        let fast = r.optional(0x01, |r| pair(r, ["spo2_fast", "pulse_rate_fast"]))?;
        let slow = r.optional(0x02, |r| pair(r, ["spo2_slow", "pulse_rate_slow"]))?;
        let measurement_status = r.optional(0x04, |r| r.u16().map(PlxMeasurementStatus))?;
        let device_status = r.optional(0x08, |r| r.u24().map(PlxDeviceStatus))?;
        let pulse_amplitude_index = r.optional(0x10, |r| r.sfloat("pulse_amplitude_index"))?;
        Ok(Self {
            normal,
            fast,
            slow,
            measurement_status,
            device_status,
            pulse_amplitude_index,
            anomalies: r.finish(0xE0),
        })
    }
}

impl FinalMeasurement for PlxSpotCheckMeasurement {
    fn characteristic(&self) -> Characteristic {
        Characteristic::PlxSpotCheckMeasurement
    }

    fn quantities(&self) -> Vec<Quantity> {
        spo2_pr_quantities(&self.value)
    }

    fn device_time(&self) -> Option<DeviceTime> {
        local_time(self.timestamp.as_ref())
    }

    fn flags(&self) -> Vec<ReadingFlag> {
        let mut flags = Vec::new();
        if self.clock_not_set {
            flags.push(ReadingFlag::ClockNotSet);
        }
        status_flags(self.measurement_status, &mut flags);
        flags
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

impl FinalMeasurement for PlxContinuousMeasurement {
    fn characteristic(&self) -> Characteristic {
        Characteristic::PlxContinuousMeasurement
    }

    fn quantities(&self) -> Vec<Quantity> {
        spo2_pr_quantities(&self.normal)
    }

    fn flags(&self) -> Vec<ReadingFlag> {
        let mut flags = Vec::new();
        status_flags(self.measurement_status, &mut flags);
        flags
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
    fn continuous_spo2_100_and_pulse_90_with_exponent_0() {
        let m = PlxContinuousMeasurement::decode(&[0x00, 0x64, 0x00, 0x5A, 0x00]).unwrap();
        assert_eq!(
            (text(m.normal.spo2), text(m.normal.pulse_rate)),
            ("100".into(), "90".into())
        );
        assert_eq!((m.fast, m.slow, m.measurement_status), (None, None, None));
        assert!(m.flags().is_empty());
    }

    #[test]
    fn continuous_with_status_ongoing_device_status_and_pai_8_point_7() {
        let m = PlxContinuousMeasurement::decode(&[
            0x1C, 0x5F, 0x00, 0x5A, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x57, 0xF0,
        ])
        .unwrap();
        assert_eq!(
            (text(m.normal.spo2), text(m.normal.pulse_rate)),
            ("95".into(), "90".into())
        );
        assert!(m.measurement_status.unwrap().measurement_ongoing());
        assert_eq!(m.device_status, Some(PlxDeviceStatus(0)));
        assert_eq!(text(m.pulse_amplitude_index.unwrap()), "8.7");
    }

    #[test]
    fn continuous_with_every_field_keeps_each_precision() {
        let m = PlxContinuousMeasurement::decode(&[
            0x1F, 0xDE, 0xF3, 0xCA, 0xF3, 0xCA, 0xF3, 0x5A, 0xF5, 0xD4, 0xF3, 0xB2, 0xF2, 0x20,
            0x01, 0x00, 0x00, 0x00, 0x7A, 0xE3,
        ])
        .unwrap();
        assert_eq!(
            (text(m.normal.spo2), text(m.normal.pulse_rate)),
            ("99.0".into(), "97.0".into())
        );
        let fast = m.fast.unwrap();
        assert_eq!(
            (text(fast.spo2), text(fast.pulse_rate)),
            ("97.0".into(), "137.0".into())
        );
        let slow = m.slow.unwrap();
        assert_eq!(
            (text(slow.spo2), text(slow.pulse_rate)),
            ("98.0".into(), "69.0".into())
        );
        let s = m.measurement_status.unwrap();
        assert!(s.measurement_ongoing() && s.fully_qualified());
        assert_eq!(m.device_status, Some(PlxDeviceStatus(0)));
        assert_eq!(text(m.pulse_amplitude_index.unwrap()), "8.90");
        assert!(m.anomalies.is_empty());
    }

    #[test]
    fn spot_check_with_time_questionable_status_malfunction_and_low_perfusion() {
        let m = PlxSpotCheckMeasurement::decode(&[
            0x0F, 0xAC, 0xF3, 0xBE, 0xF5, 0xE8, 0x07, 0x0B, 0x1D, 0x17, 0x08, 0x39, 0x20, 0x40,
            0x22, 0x00, 0x00, 0x66, 0xE3,
        ])
        .unwrap();
        assert_eq!(
            (text(m.value.spo2), text(m.value.pulse_rate)),
            ("94.0".into(), "147.0".into())
        );
        assert_eq!(m.device_time(), local(2024, 11, 29, 23, 8, 57));
        let s = m.measurement_status.unwrap();
        assert_eq!(s.0, 0x4020);
        assert!(s.measurement_ongoing() && s.questionable() && !s.invalid());
        let d = m.device_status.unwrap();
        assert!(d.equipment_malfunction() && d.low_perfusion() && !d.sensor_disconnected());
        assert_eq!(text(m.pulse_amplitude_index.unwrap()), "8.70");
        assert!(!m.clock_not_set);
        assert!(m.flags().is_empty());
    }

    #[test]
    fn spot_check_with_nan_spo2_is_absent() {
        let m = PlxSpotCheckMeasurement::decode(&[0x00, 0xFF, 0x07, 0x48, 0x00]).unwrap();
        assert_eq!(m.value.spo2, Measurement::Absent(AbsentReason::NotANumber));
        assert_eq!(text(m.value.pulse_rate), "72");
    }

    #[test]
    fn clock_not_set_storage_demo_and_test_bits_become_reading_flags() {
        // flags: status present + clock not set; status bits 9, 10, 11.
        let m =
            PlxSpotCheckMeasurement::decode(&[0x12, 0x61, 0x00, 0x48, 0x00, 0x00, 0x0E]).unwrap();
        assert_eq!(
            m.flags(),
            vec![
                ReadingFlag::ClockNotSet,
                ReadingFlag::FromStorage,
                ReadingFlag::DemoData,
                ReadingFlag::TestData
            ]
        );
        let c =
            PlxContinuousMeasurement::decode(&[0x04, 0x61, 0x00, 0x48, 0x00, 0x00, 0x02]).unwrap();
        assert_eq!(c.flags(), vec![ReadingFlag::FromStorage]);
    }

    #[test]
    fn a_spot_check_missing_its_flagged_device_status_is_truncated() {
        assert_eq!(
            PlxSpotCheckMeasurement::decode(&[0x04, 0x61, 0x00, 0x48, 0x00, 0x00, 0x00]),
            Err(GattError::Truncated {
                characteristic: Characteristic::PlxSpotCheckMeasurement,
                len: 7,
                required: 8
            })
        );
    }

    #[test]
    fn a_continuous_value_missing_its_slow_pair_is_truncated() {
        assert_eq!(
            PlxContinuousMeasurement::decode(&[
                0x03, 0x61, 0x00, 0x48, 0x00, 0x61, 0x00, 0x48, 0x00
            ]),
            Err(GattError::Truncated {
                characteristic: Characteristic::PlxContinuousMeasurement,
                len: 9,
                required: 13
            })
        );
    }

    #[test]
    fn reserved_flag_bits_are_ignored_and_recorded() {
        let m = PlxSpotCheckMeasurement::decode(&[0xE0, 0x61, 0x00, 0x48, 0x00]).unwrap();
        assert_eq!(m.anomalies, vec![Anomaly::ReservedFlags { bits: 0xE0 }]);
        let c = PlxContinuousMeasurement::decode(&[0x20, 0x61, 0x00, 0x48, 0x00, 0x01]).unwrap();
        assert_eq!(
            c.anomalies,
            vec![
                Anomaly::ReservedFlags { bits: 0x20 },
                Anomaly::TrailingBytes { count: 1 }
            ]
        );
    }
}
