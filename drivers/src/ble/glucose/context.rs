//! Glucose Measurement Context (0x2A34): what was going on when a sample was taken.

use crate::ble::reader::Reader;
use crate::ble::{Anomaly, Characteristic, GattError};
use crate::reading::Measurement;

/// Meal context (1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Meal {
    /// 1: before a meal.
    Preprandial,
    /// 2: after a meal.
    Postprandial,
    /// 3: fasting.
    Fasting,
    /// 4: casual (snacks, drinks).
    Casual,
    /// 5: bedtime.
    Bedtime,
    /// Any other code.
    Reserved(u8),
}

impl Meal {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Meal::Preprandial,
            2 => Meal::Postprandial,
            3 => Meal::Fasting,
            4 => Meal::Casual,
            5 => Meal::Bedtime,
            other => Meal::Reserved(other),
        }
    }
}

/// The unit of a medication amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MedicationUnit {
    /// Kilograms (`kg`).
    Kilograms,
    /// Litres (`L`).
    Litres,
}

/// A decoded Glucose Measurement Context. Codes are kept raw where the SIG tables are
/// long (carbohydrate id, tester, health, medication id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseContext {
    /// The sequence number of the measurement it belongs to.
    pub sequence: u16,
    /// Extended flags, if sent (all reserved).
    pub extended_flags: Option<u8>,
    /// Carbohydrate id and amount in kilograms.
    pub carbohydrate: Option<(u8, Measurement)>,
    /// Meal.
    pub meal: Option<Meal>,
    /// Tester (low nibble) and health (high nibble) codes.
    pub tester_health: Option<(u8, u8)>,
    /// Exercise duration in seconds and intensity in percent.
    pub exercise: Option<(u16, u8)>,
    /// Medication id, amount and unit.
    pub medication: Option<(u8, Measurement, MedicationUnit)>,
    /// HbA1c in percent.
    pub hba1c: Option<Measurement>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl GlucoseContext {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::GlucoseMeasurementContext;
        let mut r = Reader::with_flags(
            C,
            bytes,
            3,
            &[
                (0x80, 1),
                (0x01, 3),
                (0x02, 1),
                (0x04, 1),
                (0x08, 3),
                (0x10, 3),
                (0x40, 2),
            ],
        )?;
        let sequence = r.u16()?;
        let extended_flags = r.optional(0x80, Reader::u8)?;
        if let Some(ext) = extended_flags.filter(|e| *e != 0) {
            r.note(Anomaly::ReservedFlags {
                bits: u32::from(ext) << 8,
            });
        }
        let carbohydrate = r.optional(0x01, |r| Ok((r.u8()?, r.sfloat("carbohydrate")?)))?;
        let meal = r.optional(0x02, |r| r.u8().map(Meal::from_code))?;
        let tester_health = r.optional(0x04, |r| r.u8().map(|b| (b & 0x0F, b >> 4)))?;
        let exercise = r.optional(0x08, |r| Ok((r.u16()?, r.u8()?)))?;
        let medication = r.optional(0x10, |r| {
            let id = r.u8()?;
            let amount = r.sfloat("medication")?;
            let unit = if r.has(0x20) {
                MedicationUnit::Litres
            } else {
                MedicationUnit::Kilograms
            };
            Ok((id, amount, unit))
        })?;
        let hba1c = r.optional(0x40, |r| r.sfloat("hba1c"))?;
        Ok(Self {
            sequence,
            extended_flags,
            carbohydrate,
            meal,
            tester_health,
            exercise,
            medication,
            hba1c,
            anomalies: r.finish(0),
        })
    }
}
