//! Weight Measurement (0x2A9D), Weight Scale service 0x181D (reference §2.5).
//!
//! Fixed scaling, as the SIG specifies (the Weight Scale Feature's resolution only says
//! how precise the device really is): weight ×0.005 kg or ×0.01 lb, BMI ×0.1 kg/m², height
//! ×0.001 m or ×0.1 in. Imperial units stay imperial (`[lb_av]`, `[in_i]`, which the FHIR
//! vital-signs profiles accept); metres become centimetres in the gateway.
//!
//! Flag bit 3 announces BMI **and** height together (4 bytes). A weight of `FF FF` means
//! "measurement unsuccessful": the weight is absent (not a number), and BMI/height must
//! not follow; a value that flags them anyway is rejected as inconsistent.

use rust_decimal::Decimal;

use super::reader::{fixed, not_a_number, Reader};
use super::{
    local_time, quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError,
    UserId,
};
use crate::reading::{DeviceTime, Measurement, Quantity, ReadingFlag};

const C: Characteristic = Characteristic::WeightMeasurement;
const IMPERIAL: u8 = 0x01;
const TIME_STAMP: u8 = 0x02;
const USER_ID: u8 = 0x04;
const BMI_AND_HEIGHT: u8 = 0x08;
const RESERVED: u8 = 0xF0;
const UNSUCCESSFUL: u16 = 0xFFFF;

/// The unit system of weight and height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitSystem {
    /// Kilograms and metres.
    Si,
    /// Pounds and inches.
    Imperial,
}

/// A decoded Weight Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightMeasurement {
    /// The unit system.
    pub units: UnitSystem,
    /// The weight (absent, not a number, when the measurement was unsuccessful).
    pub weight: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// The user, on multi-user scales.
    pub user_id: Option<UserId>,
    /// Body mass index in kg/m².
    pub bmi: Option<Decimal>,
    /// Height in metres (SI) or inches (imperial).
    pub height: Option<Decimal>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl WeightMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::with_flags(
            C,
            bytes,
            3,
            &[(TIME_STAMP, 7), (USER_ID, 1), (BMI_AND_HEIGHT, 4)],
        )?;
        let units = if r.has(IMPERIAL) {
            UnitSystem::Imperial
        } else {
            UnitSystem::Si
        };
        let raw_weight = r.u16()?;
        if raw_weight == UNSUCCESSFUL && r.has(BMI_AND_HEIGHT) {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: "an unsuccessful measurement (weight FF FF) must not carry BMI and height"
                    .into(),
            });
        }
        let weight = match (raw_weight, units) {
            (UNSUCCESSFUL, _) => not_a_number(),
            (w, UnitSystem::Si) => Measurement::Value(fixed(u32::from(w) * 5, 3)),
            (w, UnitSystem::Imperial) => Measurement::Value(fixed(u32::from(w), 2)),
        };
        let timestamp = r.optional(TIME_STAMP, Reader::timestamp)?;
        let user_id = r.optional(USER_ID, Reader::user_id)?;
        let (bmi, height) = r
            .optional(BMI_AND_HEIGHT, |r| {
                let bmi = fixed(u32::from(r.u16()?), 1);
                let raw_height = u32::from(r.u16()?);
                let height = match units {
                    UnitSystem::Si => fixed(raw_height, 3),
                    UnitSystem::Imperial => fixed(raw_height, 1),
                };
                Ok((bmi, height))
            })?
            .unzip();
        Ok(Self {
            units,
            weight,
            timestamp,
            user_id,
            bmi,
            height,
            anomalies: r.finish(RESERVED),
        })
    }
}

impl FinalMeasurement for WeightMeasurement {
    fn characteristic(&self) -> Characteristic {
        C
    }

    fn quantities(&self) -> Vec<Quantity> {
        let (mass, length) = match self.units {
            UnitSystem::Si => ("kg", "m"),
            UnitSystem::Imperial => ("[lb_av]", "[in_i]"),
        };
        let mut q = vec![quantity("body_weight", self.weight, mass)];
        if let Some(bmi) = self.bmi {
            q.push(quantity("bmi", Measurement::Value(bmi), "kg/m2"));
        }
        if let Some(h) = self.height {
            q.push(quantity("body_height", Measurement::Value(h), length));
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
    use crate::ble::test_support::local;
    use crate::reading::AbsentReason;

    fn w(m: &WeightMeasurement) -> String {
        m.weight.value().map(|v| v.to_string()).unwrap_or_default()
    }

    #[test]
    fn b0_36_is_70_point_000_kilograms() {
        let m = WeightMeasurement::decode(&[0x00, 0xB0, 0x36]).unwrap();
        assert_eq!((m.units, w(&m)), (UnitSystem::Si, "70.000".to_string()));
        assert_eq!(m.quantities()[0].unit, "kg");
    }

    #[test]
    fn imperial_54_3d_is_157_point_00_pounds() {
        let m = WeightMeasurement::decode(&[0x01, 0x54, 0x3D]).unwrap();
        assert_eq!(
            (m.units, w(&m)),
            (UnitSystem::Imperial, "157.00".to_string())
        );
        assert_eq!(m.quantities()[0].unit, "[lb_av]");
    }

    #[test]
    fn seventy_kilograms_at_christmas_2023() {
        let m = WeightMeasurement::decode(&[
            0x02, 0xB0, 0x36, 0xE7, 0x07, 0x0C, 0x19, 0x0E, 0x1E, 0x2D,
        ])
        .unwrap();
        assert_eq!(w(&m), "70.000");
        assert_eq!(m.device_time(), local(2023, 12, 25, 14, 30, 45));
    }

    #[test]
    fn bit_3_carries_bmi_and_height_together() {
        let m = WeightMeasurement::decode(&[0x08, 0xB0, 0x36, 0xE5, 0x00, 0xD6, 0x06]).unwrap();
        assert_eq!(w(&m), "70.000");
        assert_eq!(m.bmi.unwrap().to_string(), "22.9");
        assert_eq!(m.height.unwrap().to_string(), "1.750");
        let names: Vec<_> = m
            .quantities()
            .into_iter()
            .map(|q| (q.name, q.unit))
            .collect();
        assert_eq!(
            names,
            [
                ("body_weight".to_string(), "kg".to_string()),
                ("bmi".into(), "kg/m2".into()),
                ("body_height".into(), "m".into())
            ]
        );
    }

    #[test]
    fn imperial_bmi_and_height_are_in_inches() {
        let m = WeightMeasurement::decode(&[0x09, 0x54, 0x3D, 0xE5, 0x00, 0xBC, 0x02]).unwrap();
        assert_eq!(w(&m), "157.00");
        assert_eq!(m.height.unwrap().to_string(), "70.0");
        assert_eq!(m.quantities()[2].unit, "[in_i]");
    }

    #[test]
    fn ff_ff_is_an_unsuccessful_measurement_without_a_value() {
        let m = WeightMeasurement::decode(&[0x00, 0xFF, 0xFF]).unwrap();
        assert_eq!(m.weight, Measurement::Absent(AbsentReason::NotANumber));
        assert_eq!(m.quantities().len(), 1);
    }

    #[test]
    fn an_unsuccessful_measurement_with_bmi_and_height_is_inconsistent() {
        let err =
            WeightMeasurement::decode(&[0x08, 0xFF, 0xFF, 0xE5, 0x00, 0xD6, 0x06]).unwrap_err();
        assert!(matches!(err, GattError::Invalid { .. }), "{err}");
    }

    #[test]
    fn bmi_without_height_under_bit_3_is_truncated() {
        assert_eq!(
            WeightMeasurement::decode(&[0x0C, 0xB0, 0x36, 0x05, 0xF5, 0x00]),
            Err(GattError::Truncated {
                characteristic: C,
                len: 6,
                required: 8
            })
        );
    }

    #[test]
    fn reserved_bit_4_is_not_height_present() {
        let m = WeightMeasurement::decode(&[0x10, 0xB0, 0x36, 0xD6, 0x06]).unwrap();
        assert_eq!(m.height, None);
        assert_eq!(
            m.anomalies,
            vec![
                Anomaly::ReservedFlags { bits: 0x10 },
                Anomaly::TrailingBytes { count: 2 }
            ]
        );
    }

    #[test]
    fn user_id_is_read_between_time_stamp_and_bmi() {
        let m = WeightMeasurement::decode(&[
            0x0E, 0xB0, 0x36, 0xE7, 0x07, 0x0C, 0x19, 0x0E, 0x1E, 0x2D, 0x02, 0xE5, 0x00, 0xD6,
            0x06,
        ])
        .unwrap();
        assert_eq!(m.user_id, Some(UserId::Known(2)));
        assert_eq!(m.bmi.unwrap().to_string(), "22.9");
    }
}
