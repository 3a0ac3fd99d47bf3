//! Body Composition Measurement (0x2A9C), Body Composition service 0x181B (reference §2.6).
//!
//! Flags are a `uint16`. Body fat percentage (×0.1 %) is always present; each other field
//! follows in flag-bit order when its bit is set: time stamp, user id, basal metabolism
//! (1 kJ), muscle percentage (×0.1 %), muscle mass, fat free mass, soft lean mass, body
//! water mass (each ×0.005 kg or ×0.01 lb), impedance (×0.1 Ω), weight (×0.005 kg or
//! ×0.01 lb) and height (×0.001 m or ×0.1 in). Scaling is fixed, as for the Weight Scale.
//!
//! `FF FF` in any `uint16` field means "value unavailable": that quantity is absent (not a
//! number). Bit 12, "multiple packet measurement", says the device split one measurement
//! over several indications; each packet is decoded on its own (its fields become the
//! quantities of its own reading) and the flag is kept in
//! [`BodyCompositionMeasurement::multiple_packets`]. Bits 13–15 are reserved.

use rust_decimal::Decimal;

use super::reader::{fixed, not_a_number, Reader};
use super::weight::UnitSystem;
use super::{
    local_time, quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError,
    UserId,
};
use crate::reading::{DeviceTime, Measurement, Quantity};

const C: Characteristic = Characteristic::BodyCompositionMeasurement;
const IMPERIAL: u16 = 1 << 0;
const TIME_STAMP: u16 = 1 << 1;
const USER_ID: u16 = 1 << 2;
const BASAL_METABOLISM: u16 = 1 << 3;
const MUSCLE_PERCENTAGE: u16 = 1 << 4;
const MUSCLE_MASS: u16 = 1 << 5;
const FAT_FREE_MASS: u16 = 1 << 6;
const SOFT_LEAN_MASS: u16 = 1 << 7;
const BODY_WATER_MASS: u16 = 1 << 8;
const IMPEDANCE: u16 = 1 << 9;
const WEIGHT: u16 = 1 << 10;
const HEIGHT: u16 = 1 << 11;
const MULTIPLE_PACKETS: u16 = 1 << 12;
const RESERVED: u16 = 0xE000;
const UNAVAILABLE: u16 = 0xFFFF;

/// The optional fields after body fat, in wire order: flag bit and size.
const OPTIONAL: [(u16, usize); 11] = [
    (TIME_STAMP, 7),
    (USER_ID, 1),
    (BASAL_METABOLISM, 2),
    (MUSCLE_PERCENTAGE, 2),
    (MUSCLE_MASS, 2),
    (FAT_FREE_MASS, 2),
    (SOFT_LEAN_MASS, 2),
    (BODY_WATER_MASS, 2),
    (IMPEDANCE, 2),
    (WEIGHT, 2),
    (HEIGHT, 2),
];

/// A decoded Body Composition Measurement. Masses are in kilograms (SI) or pounds
/// (imperial), height in metres or inches, as [`units`](Self::units) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCompositionMeasurement {
    /// The unit system of masses and height.
    pub units: UnitSystem,
    /// Body fat in percent.
    pub body_fat: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// The user, on multi-user scales.
    pub user_id: Option<UserId>,
    /// Basal metabolism in kilojoules.
    pub basal_metabolism: Option<Measurement>,
    /// Muscle in percent of body weight.
    pub muscle_percentage: Option<Measurement>,
    /// Muscle mass.
    pub muscle_mass: Option<Measurement>,
    /// Fat free mass.
    pub fat_free_mass: Option<Measurement>,
    /// Soft lean mass.
    pub soft_lean_mass: Option<Measurement>,
    /// Body water mass.
    pub body_water_mass: Option<Measurement>,
    /// Impedance in ohms.
    pub impedance: Option<Measurement>,
    /// Weight.
    pub weight: Option<Measurement>,
    /// Height.
    pub height: Option<Measurement>,
    /// Flag bit 12: this packet is one of several that make up one measurement.
    pub multiple_packets: bool,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// A `uint16` field times `10^-decimals` after multiplying by `factor`; `FF FF` is absent.
fn scaled(r: &mut Reader<'_>, factor: u32, decimals: u32) -> Result<Measurement, GattError> {
    let raw = r.u16()?;
    Ok(if raw == UNAVAILABLE {
        not_a_number()
    } else {
        Measurement::Value(fixed(u32::from(raw).saturating_mul(factor), decimals))
    })
}

impl BodyCompositionMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let mut r = Reader::new(C, bytes);
        let flags = r.u16()?;
        let required = OPTIONAL
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .fold(4usize, |len, (_, size)| len.saturating_add(*size));
        if bytes.len() < required {
            return Err(GattError::Truncated {
                characteristic: C,
                len: bytes.len(),
                required,
            });
        }
        let has = |bit: u16| flags & bit != 0;
        let units = if has(IMPERIAL) {
            UnitSystem::Imperial
        } else {
            UnitSystem::Si
        };
        // Mass: 0.005 kg = raw × 5 / 1000; 0.01 lb = raw / 100.
        let (mass_factor, mass_decimals) = match units {
            UnitSystem::Si => (5, 3),
            UnitSystem::Imperial => (1, 2),
        };
        let height_decimals = match units {
            UnitSystem::Si => 3,
            UnitSystem::Imperial => 1,
        };
        let body_fat = scaled(&mut r, 1, 1)?;
        let timestamp = if has(TIME_STAMP) {
            Some(r.timestamp()?)
        } else {
            None
        };
        let user_id = if has(USER_ID) {
            Some(r.user_id()?)
        } else {
            None
        };
        let mut field = |bit: u16, factor: u32, decimals: u32| {
            if has(bit) {
                scaled(&mut r, factor, decimals).map(Some)
            } else {
                Ok(None)
            }
        };
        let basal_metabolism = field(BASAL_METABOLISM, 1, 0)?;
        let muscle_percentage = field(MUSCLE_PERCENTAGE, 1, 1)?;
        let muscle_mass = field(MUSCLE_MASS, mass_factor, mass_decimals)?;
        let fat_free_mass = field(FAT_FREE_MASS, mass_factor, mass_decimals)?;
        let soft_lean_mass = field(SOFT_LEAN_MASS, mass_factor, mass_decimals)?;
        let body_water_mass = field(BODY_WATER_MASS, mass_factor, mass_decimals)?;
        let impedance = field(IMPEDANCE, 1, 1)?;
        let weight = field(WEIGHT, mass_factor, mass_decimals)?;
        let height = field(HEIGHT, 1, height_decimals)?;
        let reserved = flags & RESERVED;
        if reserved != 0 {
            r.note(Anomaly::ReservedFlags {
                bits: u32::from(reserved),
            });
        }
        Ok(Self {
            units,
            body_fat,
            timestamp,
            user_id,
            basal_metabolism,
            muscle_percentage,
            muscle_mass,
            fat_free_mass,
            soft_lean_mass,
            body_water_mass,
            impedance,
            weight,
            height,
            multiple_packets: has(MULTIPLE_PACKETS),
            anomalies: r.finish(0),
        })
    }
}

impl FinalMeasurement for BodyCompositionMeasurement {
    fn characteristic(&self) -> Characteristic {
        C
    }

    fn quantities(&self) -> Vec<Quantity> {
        let (mass, length) = match self.units {
            UnitSystem::Si => ("kg", "m"),
            UnitSystem::Imperial => ("[lb_av]", "[in_i]"),
        };
        let mut q = vec![quantity("body_fat", self.body_fat, "%")];
        let optional = [
            ("basal_metabolism", self.basal_metabolism, "kJ"),
            ("muscle_percentage", self.muscle_percentage, "%"),
            ("muscle_mass", self.muscle_mass, mass),
            ("fat_free_mass", self.fat_free_mass, mass),
            ("soft_lean_mass", self.soft_lean_mass, mass),
            ("body_water_mass", self.body_water_mass, mass),
            ("impedance", self.impedance, "Ohm"),
            ("body_weight", self.weight, mass),
            ("body_height", self.height, length),
        ];
        for (name, m, unit) in optional {
            if let Some(m) = m {
                q.push(quantity(name, m, unit));
            }
        }
        q
    }

    fn device_time(&self) -> Option<DeviceTime> {
        local_time(self.timestamp.as_ref())
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

impl BodyCompositionMeasurement {
    /// Body fat in percent, if the device had it.
    pub fn body_fat_percent(&self) -> Option<Decimal> {
        self.body_fat.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::test_support::local;
    use crate::reading::AbsentReason;

    fn v(m: Option<Measurement>) -> String {
        m.and_then(|m| m.value())
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn body_fat_alone_is_four_bytes() {
        let m = BodyCompositionMeasurement::decode(&[0x00, 0x00, 0xD6, 0x00]).unwrap();
        assert_eq!(m.body_fat_percent().unwrap().to_string(), "21.4");
        assert_eq!(m.quantities().len(), 1);
        assert_eq!(m.quantities()[0].unit, "%");
    }

    #[test]
    fn every_field_in_flag_bit_order_si() {
        let m = BodyCompositionMeasurement::decode(&[
            0xFE, 0x0F, // flags: bits 1..=11
            0xD6, 0x00, // body fat 21.4 %
            0xE7, 0x07, 0x0C, 0x19, 0x0E, 0x1E, 0x2D, // 2023-12-25 14:30:45
            0x02, // user 2
            0x80, 0x1C, // basal metabolism 7296 kJ
            0xB6, 0x01, // muscle 43.8 %
            0x20, 0x1A, // muscle mass 6688 × 0.005 = 33.440 kg
            0x40, 0x2B, // fat free mass 11072 × 0.005 = 55.360 kg
            0x30, 0x27, // soft lean mass 10032 × 0.005 = 50.160 kg
            0x70, 0x1F, // body water mass 8048 × 0.005 = 40.240 kg
            0x88, 0x13, // impedance 500.0 Ω
            0xB0, 0x36, // weight 70.000 kg
            0xD6, 0x06, // height 1.750 m
        ])
        .unwrap();
        assert_eq!(m.units, UnitSystem::Si);
        assert_eq!(m.device_time(), local(2023, 12, 25, 14, 30, 45));
        assert_eq!(m.user_id, Some(UserId::Known(2)));
        assert_eq!(v(m.basal_metabolism), "7296");
        assert_eq!(v(m.muscle_percentage), "43.8");
        assert_eq!(v(m.muscle_mass), "33.440");
        assert_eq!(v(m.fat_free_mass), "55.360");
        assert_eq!(v(m.soft_lean_mass), "50.160");
        assert_eq!(v(m.body_water_mass), "40.240");
        assert_eq!(v(m.impedance), "500.0");
        assert_eq!(v(m.weight), "70.000");
        assert_eq!(v(m.height), "1.750");
        assert!(!m.multiple_packets);
        assert!(m.anomalies.is_empty(), "{:?}", m.anomalies);
        let units: Vec<_> = m.quantities().into_iter().map(|q| q.unit).collect();
        assert_eq!(
            units,
            ["%", "kJ", "%", "kg", "kg", "kg", "kg", "Ohm", "kg", "m"]
        );
    }

    #[test]
    fn imperial_masses_are_pounds_and_height_inches() {
        let m = BodyCompositionMeasurement::decode(&[
            0x21, 0x0C, // imperial, muscle mass, weight, height
            0xD6, 0x00, 0x4C, 0x1D, // muscle mass 75.00 lb
            0x54, 0x3D, // weight 157.00 lb
            0xBC, 0x02, // height 70.0 in
        ])
        .unwrap();
        assert_eq!(
            (v(m.muscle_mass), v(m.weight), v(m.height)),
            ("75.00".into(), "157.00".into(), "70.0".into())
        );
        let units: Vec<_> = m.quantities().into_iter().map(|q| q.unit).collect();
        assert_eq!(units, ["%", "[lb_av]", "[lb_av]", "[in_i]"]);
    }

    #[test]
    fn ff_ff_is_unavailable() {
        let m = BodyCompositionMeasurement::decode(&[0x00, 0x04, 0xFF, 0xFF, 0xB0, 0x36]).unwrap();
        assert_eq!(m.body_fat, Measurement::Absent(AbsentReason::NotANumber));
        assert_eq!(v(m.weight), "70.000");
    }

    #[test]
    fn flags_announcing_more_than_sent_are_truncated() {
        assert_eq!(
            BodyCompositionMeasurement::decode(&[0x00, 0x0C, 0xD6, 0x00, 0xB0, 0x36]),
            Err(GattError::Truncated {
                characteristic: C,
                len: 6,
                required: 8
            })
        );
        assert!(matches!(
            BodyCompositionMeasurement::decode(&[0x00]),
            Err(GattError::Truncated { .. })
        ));
    }

    #[test]
    fn multiple_packets_is_kept_and_reserved_bits_are_noted() {
        let m = BodyCompositionMeasurement::decode(&[0x00, 0x30, 0xD6, 0x00, 0x01]).unwrap();
        assert!(m.multiple_packets);
        assert_eq!(
            m.anomalies,
            vec![
                Anomaly::ReservedFlags { bits: 0x2000 },
                Anomaly::TrailingBytes { count: 1 }
            ]
        );
    }
}
