//! Decoders of the standard Bluetooth LE GATT health characteristics. Pure: bytes in,
//! typed values (and [`Reading`]s) out; no IO and no Bluetooth stack here.
//!
//! Byte layouts follow the Bluetooth SIG's GATT specifications of each service; the test
//! vectors and the traps (reserved bits, trailing bytes, special SFLOAT values) are in
//! each module's tests and in `drivers/tests/ble_roundtrip.rs`. Each decoder returns a typed struct holding everything the characteristic says
//! (flags, status bits, user id, RR intervals, ...). Final measurements implement
//! [`FinalMeasurement`], which turns them into a [`Reading`] whose quantity names are the
//! ones [`fields`] lists (and device profiles map). The characteristics themselves (UUID,
//! name, decoder, fields and units, finality, profile decoder name, fuzz target) are one
//! table, [`registry`].
//!
//! # Policies
//!
//! - **Length first.** Each decoder computes the length its flags require *before*
//!   reading and rejects a shorter value with [`GattError::Truncated`], naming the
//!   characteristic and both lengths. Reads are bounds-checked as well: no input panics
//!   (each decoder has a fuzz target in `fuzz/`).
//! - **Inconsistent values** (a flag combination the specification forbids, an out-of-range
//!   code that leaves nothing to report, e.g. a battery level of 101..=255) are rejected
//!   with [`GattError::Invalid`] and a reason.
//! - **Reserved flag bits** are ignored, never given a meaning: the known fields are read by
//!   the known bits, the length must still cover them, and the decoder records
//!   [`Anomaly::ReservedFlags`]. (Later versions of a service append fields after the
//!   known ones, so the known fields stay correct.)
//! - **Trailing bytes** after the known fields of a fixed-layout characteristic are ignored
//!   (forward compatibility) and recorded as [`Anomaly::TrailingBytes`]. Heart Rate is the
//!   exception: what follows is RR intervals, and an odd byte left over is rejected.
//! - **Special float values** become [`Measurement::Absent`] (see [`float`]); reserved
//!   mantissas with a non-zero exponent keep their value and record
//!   [`Anomaly::ReservedMantissa`].
//! - **Time stamps** are the device's wall-clock time without zone
//!   ([`DeviceTime::Local`]); an unknown or impossible one gives no device time and records
//!   [`Anomaly::UnusableTimestamp`] (see [`datetime`]).
//! - **Intermediate values** (Intermediate Cuff Pressure 0x2A36, Intermediate Temperature
//!   0x2A1E) decode to [`IntermediateCuffPressure`] and [`IntermediateTemperature`], which
//!   do not implement [`FinalMeasurement`]: an in-progress value cannot become a
//!   `Reading`, so it can never become a final Observation. The driver may show it
//!   (progress of an inflation) or log it at `debug`.
//! - **Status bits** that say what a reading *is* become [`ReadingFlag`]s: PLX "device
//!   clock is not set" and Glucose "time fault" → `ClockNotSet`; PLX "from measurement
//!   storage" → `FromStorage`; PLX "data for demonstration" → `DemoData`; PLX "data for
//!   testing" and a glucose control-solution sample → `TestData`. Every other status bit is
//!   kept in the typed struct.
//! - **Anomalies** are facts the driver logs at `warn` (naming the field, never the value);
//!   they never change a value.

pub mod blood_pressure;
pub mod body_composition;
pub mod cgm;
pub mod current_time;
pub mod datetime;
pub mod device_info;
pub mod float;
pub mod glucose;
pub mod heart_rate;
pub mod plx;
mod reader;
pub mod registry;
pub mod temperature;
#[cfg(test)]
mod test_support;
pub mod weight;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use blood_pressure::{BloodPressureMeasurement, IntermediateCuffPressure};
pub use body_composition::BodyCompositionMeasurement;
pub use cgm::{CgmFeature, CgmMeasurement, SessionRunTime, SessionStartTime};
pub use current_time::CurrentTime;
pub use datetime::GattDateTime;
pub use device_info::{BatteryLevel, DeviceString, BATTERY_FIELD};
pub use glucose::{GlucoseContext, GlucoseJoiner, GlucoseMeasurement, GlucoseRecord};
pub use heart_rate::HeartRateMeasurement;
pub use plx::{PlxContinuousMeasurement, PlxSpotCheckMeasurement};
pub use registry::{decode, fields, Characteristic, FieldUnits, GattValue};
pub use temperature::{IntermediateTemperature, TemperatureMeasurement};
pub use weight::WeightMeasurement;

use crate::reading::{DeviceIdentity, DeviceTime, Measurement, Quantity, Reading, ReadingFlag};

/// Why a GATT value was rejected. The message names the characteristic and the reason,
/// never the measured values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GattError {
    /// The value is shorter than its flags require.
    #[error("{characteristic}: truncated: {len} byte(s), but the fields its flags announce need {required}")]
    Truncated {
        /// The characteristic.
        characteristic: Characteristic,
        /// The length received.
        len: usize,
        /// The length the flags require.
        required: usize,
    },
    /// The value is malformed or contradicts the specification.
    #[error("{characteristic}: {reason}")]
    Invalid {
        /// The characteristic.
        characteristic: Characteristic,
        /// What is wrong.
        reason: String,
    },
    /// No decoder exists for this characteristic.
    #[error("characteristic 0x{0:04X} has no built-in decoder")]
    Unknown(u16),
}

impl GattError {
    /// The kind of rejection, for counts in logs: `truncated`, `invalid`, `no decoder`.
    pub fn kind(&self) -> &'static str {
        match self {
            GattError::Truncated { .. } => "truncated",
            GattError::Invalid { .. } => "invalid",
            GattError::Unknown(_) => "no decoder",
        }
    }
}

/// Something unusual the decoder noticed in a value it accepted. Anomalies never change
/// a value; the driver logs them at `warn` (field names only, never values).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// Reserved (RFU) flag bits were set; they were ignored.
    ReservedFlags {
        /// The reserved bits that were set.
        bits: u32,
    },
    /// Bytes followed the known fields; they were ignored.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// An SFLOAT/FLOAT used a special value's mantissa with a non-zero exponent.
    ReservedMantissa {
        /// The field.
        field: &'static str,
    },
    /// The time stamp gives no usable time (unknown or impossible date).
    UnusableTimestamp {
        /// Why.
        problem: datetime::DateTimeProblem,
    },
    /// A coded field (temperature type, glucose sample type or location) holds a reserved
    /// code; it is kept as `Reserved(code)`.
    ReservedCode {
        /// The field.
        field: &'static str,
        /// The code.
        code: u8,
    },
    /// A string was cut, had invalid UTF-8 replaced, or had control characters removed.
    StringSanitized,
}

/// A measurement that is final: it becomes a [`Reading`].
pub trait FinalMeasurement {
    /// The characteristic it came from.
    fn characteristic(&self) -> Characteristic;
    /// The named quantities (names as listed by [`fields`]).
    fn quantities(&self) -> Vec<Quantity>;
    /// The device's measurement time, if usable (none for a characteristic without a
    /// time stamp).
    fn device_time(&self) -> Option<DeviceTime> {
        None
    }
    /// Status facts about the whole reading (none for a characteristic without status).
    fn flags(&self) -> Vec<ReadingFlag> {
        Vec::new()
    }
    /// The device's record number, if it numbers records.
    fn sequence(&self) -> Option<u64> {
        None
    }
    /// What the decoder noticed.
    fn anomalies(&self) -> &[Anomaly];

    /// The reading for the gateway.
    fn to_reading(&self, device: Arc<DeviceIdentity>, received_at: DateTime<Utc>) -> Reading {
        Reading {
            clock: None,
            device,
            device_time: self.device_time(),
            received_at,
            sequence: self.sequence(),
            quantities: self.quantities(),
            flags: self.flags(),
        }
    }
}

/// Who measured, on multi-user devices (BP cuffs, scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserId {
    /// A user index the device assigned.
    Known(u8),
    /// 0xFF: the device does not know the user (e.g. a guest measurement).
    Unknown,
}

impl UserId {
    fn from_raw(raw: u8) -> Self {
        if raw == 0xFF {
            UserId::Unknown
        } else {
            UserId::Known(raw)
        }
    }
}

/// The device time of an optional embedded time stamp.
fn local_time(t: Option<&GattDateTime>) -> Option<DeviceTime> {
    t.and_then(|t| t.to_naive().ok()).map(DeviceTime::Local)
}

/// A quantity from a measurement, value or absent.
fn quantity(name: &str, m: Measurement, unit: &str) -> Quantity {
    Quantity {
        name: name.into(),
        value: m,
        unit: unit.into(),
        site: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_characteristic_round_trips_through_its_uuid() {
        for c in Characteristic::ALL {
            assert_eq!(Characteristic::from_uuid16(c.uuid16()), Some(c));
        }
        assert_eq!(Characteristic::from_uuid16(0x2A00), None);
    }

    #[test]
    fn an_unknown_characteristic_is_a_typed_error() {
        assert_eq!(decode(0x1234, &[0]), Err(GattError::Unknown(0x1234)));
    }

    #[test]
    fn errors_name_the_characteristic_and_the_lengths() {
        let err = decode(0x2A35, &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Blood Pressure Measurement (0x2A35)") && text.contains("6 byte(s)"),
            "{text}"
        );
    }

    #[test]
    fn intermediate_cuff_pressure_is_never_a_final_measurement() {
        let v = decode(0x2A36, &[0x00, 0xD7, 0xF0, 0x00, 0x00, 0x00, 0x00]).unwrap();
        assert!(matches!(v, GattValue::IntermediateCuffPressure(_)));
        assert!(v.as_final().is_none());
    }

    #[test]
    fn intermediate_temperature_is_never_a_final_measurement() {
        let v = decode(0x2A1E, &[0x00, 0xC4, 0x09, 0x00, 0xFE]).unwrap();
        assert!(matches!(v, GattValue::IntermediateTemperature(_)));
        assert!(v.as_final().is_none());
    }

    #[test]
    fn the_quantities_of_each_final_measurement_are_the_listed_fields() {
        let samples: [(u16, &[u8]); 7] = [
            (0x2A37, &[0x1E, 0x55, 0x32, 0x00, 0x21, 0x00]),
            (
                0x2A35,
                &[
                    0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29,
                    0x3B, 0x3C, 0x00, 0x01, 0x27, 0x00,
                ],
            ),
            (
                0x2A1C,
                &[
                    0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04,
                ],
            ),
            (0x2A9D, &[0x08, 0xB0, 0x36, 0xE5, 0x00, 0xD6, 0x06]),
            (
                0x2A5E,
                &[
                    0x0F, 0xAC, 0xF3, 0xBE, 0xF5, 0xE8, 0x07, 0x0B, 0x1D, 0x17, 0x08, 0x39, 0x20,
                    0x40, 0x22, 0x00, 0x00, 0x66, 0xE3,
                ],
            ),
            (0x2A5F, &[0x00, 0x64, 0x00, 0x5A, 0x00]),
            (
                0x2A18,
                &[
                    0x03, 0x05, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x00, 0x64,
                    0xB0, 0x11,
                ],
            ),
        ];
        for (uuid, bytes) in samples {
            let v = decode(uuid, bytes).unwrap();
            let m = v.as_final().unwrap();
            let listed = fields(m.characteristic());
            let names: Vec<String> = m.quantities().into_iter().map(|q| q.name).collect();
            assert_eq!(
                names,
                listed
                    .iter()
                    .map(|f| f.name.to_string())
                    .collect::<Vec<_>>(),
                "{uuid:#06x}"
            );
            for q in m.quantities() {
                let f = listed.iter().find(|f| f.name == q.name).unwrap();
                assert!(f.units.contains(&q.unit.as_str()), "{uuid:#06x} {}", q.unit);
            }
        }
    }
}
