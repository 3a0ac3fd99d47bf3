//! Glucose Measurement (0x2A18) and Glucose Measurement Context (0x2A34), Glucose service
//! 0x1808 (reference §2.8), and [`GlucoseJoiner`], which joins the two by sequence number.
//!
//! - The concentration stays in the unit the flag says: `kg/L` or `mol/L` (the gateway's
//!   UCUM conversion gives mg/dL or mmol/L exactly). The unit flag (bit 2) means something
//!   only when the concentration is present (bit 1).
//! - The device time is Base Time + Time Offset (signed minutes), a local wall-clock time.
//! - A control-solution sample (Type 10 or Sample Location 4) is never a patient value: the
//!   reading carries `ReadingFlag::TestData`. Sensor status bit 11 "time fault" gives
//!   `ReadingFlag::ClockNotSet`. Status bits follow the SIG (bit 5 = result too high, bit 6
//!   = too low), not the swapped order of some public libraries.
//! - The sequence number becomes the reading's sequence (part of the Observation's
//!   identity, and the key of incremental record-access fetches).

use std::collections::VecDeque;

use super::reader::Reader;
use super::{quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError};
use crate::reading::{DeviceTime, Measurement, Quantity, ReadingFlag};

const TIME_OFFSET: u8 = 0x01;
const CONCENTRATION: u8 = 0x02;
const MOL_PER_L: u8 = 0x04;
const STATUS: u8 = 0x08;
const CONTEXT_FOLLOWS: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// The concentration unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlucoseUnit {
    /// Kilograms per litre (`kg/L`; 0.00100 kg/L = 100 mg/dL).
    KgPerL,
    /// Moles per litre (`mol/L`; 0.0055 mol/L = 5.5 mmol/L).
    MolPerL,
}

impl GlucoseUnit {
    /// The UCUM code.
    pub fn ucum(self) -> &'static str {
        match self {
            GlucoseUnit::KgPerL => "kg/L",
            GlucoseUnit::MolPerL => "mol/L",
        }
    }
}

/// The sample type (low nibble of the Type-Sample Location byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// 1.
    CapillaryWholeBlood,
    /// 2.
    CapillaryPlasma,
    /// 3.
    VenousWholeBlood,
    /// 4.
    VenousPlasma,
    /// 5.
    ArterialWholeBlood,
    /// 6.
    ArterialPlasma,
    /// 7.
    UndeterminedWholeBlood,
    /// 8.
    UndeterminedPlasma,
    /// 9: interstitial fluid.
    InterstitialFluid,
    /// 10: control solution (never a patient value).
    ControlSolution,
    /// 0, 11..=15.
    Reserved(u8),
}

impl SampleType {
    /// From the nibble.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => SampleType::CapillaryWholeBlood,
            2 => SampleType::CapillaryPlasma,
            3 => SampleType::VenousWholeBlood,
            4 => SampleType::VenousPlasma,
            5 => SampleType::ArterialWholeBlood,
            6 => SampleType::ArterialPlasma,
            7 => SampleType::UndeterminedWholeBlood,
            8 => SampleType::UndeterminedPlasma,
            9 => SampleType::InterstitialFluid,
            10 => SampleType::ControlSolution,
            other => SampleType::Reserved(other),
        }
    }
}

/// The sample location (high nibble of the Type-Sample Location byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleLocation {
    /// 1.
    Finger,
    /// 2: alternate site test.
    AlternateSite,
    /// 3.
    Earlobe,
    /// 4: control solution (never a patient value).
    ControlSolution,
    /// 15.
    NotAvailable,
    /// 0, 5..=14.
    Reserved(u8),
}

impl SampleLocation {
    /// From the nibble.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => SampleLocation::Finger,
            2 => SampleLocation::AlternateSite,
            3 => SampleLocation::Earlobe,
            4 => SampleLocation::ControlSolution,
            15 => SampleLocation::NotAvailable,
            other => SampleLocation::Reserved(other),
        }
    }
}

/// The Sensor Status Annunciation (16 bits, SIG bit order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GlucoseStatus(pub u16);

impl GlucoseStatus {
    fn bit(self, n: u16) -> bool {
        self.0 & (1 << n) != 0
    }
    /// Bit 0: device battery low.
    pub fn battery_low(self) -> bool {
        self.bit(0)
    }
    /// Bit 1: sensor malfunction.
    pub fn sensor_malfunction(self) -> bool {
        self.bit(1)
    }
    /// Bit 2: sample size insufficient.
    pub fn sample_size_insufficient(self) -> bool {
        self.bit(2)
    }
    /// Bit 3: strip insertion error.
    pub fn strip_insertion_error(self) -> bool {
        self.bit(3)
    }
    /// Bit 4: strip type incorrect.
    pub fn strip_type_incorrect(self) -> bool {
        self.bit(4)
    }
    /// Bit 5: result higher than the device can process.
    pub fn result_too_high(self) -> bool {
        self.bit(5)
    }
    /// Bit 6: result lower than the device can process.
    pub fn result_too_low(self) -> bool {
        self.bit(6)
    }
    /// Bit 7: sensor temperature too high.
    pub fn temperature_too_high(self) -> bool {
        self.bit(7)
    }
    /// Bit 8: sensor temperature too low.
    pub fn temperature_too_low(self) -> bool {
        self.bit(8)
    }
    /// Bit 9: read interrupted (strip pulled too soon).
    pub fn read_interrupted(self) -> bool {
        self.bit(9)
    }
    /// Bit 10: general device fault.
    pub fn general_device_fault(self) -> bool {
        self.bit(10)
    }
    /// Bit 11: time fault (the device's clock is not trustworthy).
    pub fn time_fault(self) -> bool {
        self.bit(11)
    }
}

/// A concentration with its unit and sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concentration {
    /// The value.
    pub value: Measurement,
    /// Its unit.
    pub unit: GlucoseUnit,
    /// The sample type.
    pub sample_type: SampleType,
    /// The sample location.
    pub location: SampleLocation,
}

/// A decoded Glucose Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    /// The record's sequence number.
    pub sequence: u16,
    /// The base time, as sent.
    pub base_time: GattDateTime,
    /// Minutes to add to the base time, if sent.
    pub time_offset_minutes: Option<i16>,
    /// The concentration, if sent.
    pub concentration: Option<Concentration>,
    /// The sensor status annunciation, if sent.
    pub status: Option<GlucoseStatus>,
    /// A Glucose Measurement Context with the same sequence number follows.
    pub context_follows: bool,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl GlucoseMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::GlucoseMeasurement;
        let mut r = Reader::with_flags(
            C,
            bytes,
            10,
            &[(TIME_OFFSET, 2), (CONCENTRATION, 3), (STATUS, 2)],
        )?;
        let sequence = r.u16()?;
        let base_time = r.timestamp()?;
        let time_offset_minutes = r.optional(TIME_OFFSET, Reader::i16)?;
        let concentration = r.optional(CONCENTRATION, |r| {
            let value = r.sfloat("glucose")?;
            let type_location = r.u8()?;
            let sample_type = SampleType::from_code(type_location & 0x0F);
            let location = SampleLocation::from_code(type_location >> 4);
            if let SampleType::Reserved(code) = sample_type {
                r.note(Anomaly::ReservedCode {
                    field: "sample_type",
                    code,
                });
            }
            if let SampleLocation::Reserved(code) = location {
                r.note(Anomaly::ReservedCode {
                    field: "sample_location",
                    code,
                });
            }
            Ok(Concentration {
                value,
                unit: if r.has(MOL_PER_L) {
                    GlucoseUnit::MolPerL
                } else {
                    GlucoseUnit::KgPerL
                },
                sample_type,
                location,
            })
        })?;
        let status = r.optional(STATUS, |r| r.u16().map(GlucoseStatus))?;
        Ok(Self {
            sequence,
            base_time,
            time_offset_minutes,
            concentration,
            status,
            context_follows: r.has(CONTEXT_FOLLOWS),
            anomalies: r.finish(RESERVED),
        })
    }

    /// Whether the sample is control solution (by type or by location).
    pub fn is_control_solution(&self) -> bool {
        self.concentration.is_some_and(|c| {
            c.sample_type == SampleType::ControlSolution
                || c.location == SampleLocation::ControlSolution
        })
    }
}

impl FinalMeasurement for GlucoseMeasurement {
    fn characteristic(&self) -> Characteristic {
        Characteristic::GlucoseMeasurement
    }

    fn quantities(&self) -> Vec<Quantity> {
        self.concentration
            .map(|c| vec![quantity("glucose", c.value, c.unit.ucum())])
            .unwrap_or_default()
    }

    fn device_time(&self) -> Option<DeviceTime> {
        let base = self.base_time.to_naive().ok()?;
        let offset = chrono::Duration::minutes(i64::from(self.time_offset_minutes.unwrap_or(0)));
        base.checked_add_signed(offset).map(DeviceTime::Local)
    }

    fn flags(&self) -> Vec<ReadingFlag> {
        let mut flags = Vec::new();
        if self.status.is_some_and(|s| s.time_fault()) {
            flags.push(ReadingFlag::ClockNotSet);
        }
        if self.is_control_solution() {
            flags.push(ReadingFlag::TestData);
        }
        flags
    }

    fn sequence(&self) -> Option<u64> {
        Some(u64::from(self.sequence))
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

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

/// A glucose record: the measurement with its context, when one arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseRecord {
    /// The measurement.
    pub measurement: GlucoseMeasurement,
    /// Its context.
    pub context: Option<GlucoseContext>,
}

/// A context whose measurement is not waiting (never announced, or already given up on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Glucose Measurement Context (0x2A34) for sequence number {sequence} has no waiting measurement")]
pub struct OrphanContext {
    /// The context's sequence number.
    pub sequence: u16,
}

/// Joins Glucose Measurements to the contexts that follow them, by sequence number.
///
/// Pure and bounded: at most `capacity` measurements wait for their context. When a
/// measurement announcing a context arrives and the joiner is full, the oldest waiting one
/// is released without context. The driver calls [`GlucoseJoiner::flush`] when the record
/// transfer ends (the Record Access Control Point's response) or its context timeout
/// passes, so a context that never comes cannot hold a record back.
#[derive(Debug, Clone)]
pub struct GlucoseJoiner {
    waiting: VecDeque<GlucoseMeasurement>,
    capacity: usize,
}

impl GlucoseJoiner {
    /// A joiner holding at most `capacity` (at least 1) measurements.
    pub fn new(capacity: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a measurement; returns the records complete now (the measurement itself when
    /// no context follows, and any waiting one evicted to stay within capacity).
    pub fn measurement(&mut self, m: GlucoseMeasurement) -> Vec<GlucoseRecord> {
        let mut done = Vec::new();
        if !m.context_follows {
            done.push(GlucoseRecord {
                measurement: m,
                context: None,
            });
            return done;
        }
        // A repeated sequence number replaces the earlier one, which is released as is.
        if let Some(pos) = self.waiting.iter().position(|w| w.sequence == m.sequence) {
            if let Some(old) = self.waiting.remove(pos) {
                done.push(GlucoseRecord {
                    measurement: old,
                    context: None,
                });
            }
        }
        while self.waiting.len() >= self.capacity {
            match self.waiting.pop_front() {
                Some(old) => done.push(GlucoseRecord {
                    measurement: old,
                    context: None,
                }),
                None => break,
            }
        }
        self.waiting.push_back(m);
        done
    }

    /// Takes a context; returns the joined record, or an error if no measurement with its
    /// sequence number is waiting.
    pub fn context(&mut self, c: GlucoseContext) -> Result<GlucoseRecord, OrphanContext> {
        let pos = self
            .waiting
            .iter()
            .position(|w| w.sequence == c.sequence)
            .ok_or(OrphanContext {
                sequence: c.sequence,
            })?;
        let measurement = self.waiting.remove(pos).ok_or(OrphanContext {
            sequence: c.sequence,
        })?;
        Ok(GlucoseRecord {
            measurement,
            context: Some(c),
        })
    }

    /// Releases every waiting measurement without context, oldest first.
    pub fn flush(&mut self) -> Vec<GlucoseRecord> {
        self.waiting
            .drain(..)
            .map(|measurement| GlucoseRecord {
                measurement,
                context: None,
            })
            .collect()
    }

    /// How many measurements wait for their context.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::test_support::local;

    fn value(m: &GlucoseMeasurement) -> String {
        m.concentration.unwrap().value.value().unwrap().to_string()
    }

    #[test]
    fn negative_time_offset_status_and_context_follows() {
        let m = GlucoseMeasurement::decode(&[
            0x1B, 0x01, 0x00, 0xE3, 0x07, 0x02, 0x1B, 0x0B, 0x0A, 0x1E, 0xFB, 0xFF, 0x1E, 0x00,
            0x12, 0x05, 0x01,
        ])
        .unwrap();
        assert_eq!(m.sequence, 1);
        assert_eq!(m.time_offset_minutes, Some(-5));
        assert_eq!(m.device_time(), local(2019, 2, 27, 11, 5, 30));
        let c = m.concentration.unwrap();
        assert_eq!(value(&m), "30");
        assert_eq!(c.unit, GlucoseUnit::KgPerL);
        assert_eq!(c.sample_type, SampleType::CapillaryPlasma);
        assert_eq!(c.location, SampleLocation::Finger);
        let s = m.status.unwrap();
        assert_eq!(s.0, 0x0105);
        assert!(s.battery_low() && s.sample_size_insufficient() && s.temperature_too_low());
        assert!(!s.general_device_fault() && !s.result_too_high());
        assert!(m.context_follows);
        assert_eq!(m.sequence(), Some(1));
    }

    #[test]
    fn a_measurement_missing_its_flagged_time_offset_is_truncated() {
        assert_eq!(
            GlucoseMeasurement::decode(&[
                0x1B, 0x00, 0x00, 0xE2, 0x07, 0x04, 0x1A, 0x0B, 0x09, 0x1E, 0x1E, 0x00, 0x12, 0x05,
                0x01
            ]),
            Err(GattError::Truncated {
                characteristic: Characteristic::GlucoseMeasurement,
                len: 15,
                required: 17
            })
        );
    }

    #[test]
    fn a_measurement_without_concentration_has_no_quantity() {
        let m = GlucoseMeasurement::decode(&[
            0x00, 0x01, 0x00, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D,
        ])
        .unwrap();
        assert_eq!(m.sequence, 1);
        assert_eq!(m.device_time(), local(2020, 5, 21, 10, 30, 45));
        assert!(m.quantities().is_empty());
    }

    #[test]
    fn mol_per_litre_flag_with_venous_plasma_and_context_follows() {
        let m = GlucoseMeasurement::decode(&[
            0x1F, 0x02, 0x00, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D, 0x00, 0x00, 0x51, 0x00,
            0x14, 0x06, 0x00,
        ])
        .unwrap();
        assert_eq!(m.sequence, 2);
        assert_eq!(m.time_offset_minutes, Some(0));
        let c = m.concentration.unwrap();
        assert_eq!(value(&m), "81");
        assert_eq!(c.unit, GlucoseUnit::MolPerL);
        assert_eq!(c.sample_type, SampleType::VenousPlasma);
        assert_eq!(c.location, SampleLocation::Finger);
        assert_eq!(m.status, Some(GlucoseStatus(0x0006)));
        assert!(m.context_follows);
    }

    #[test]
    fn one_hundred_milligrams_per_decilitre_arrive_as_0_point_00100_kg_per_litre() {
        let m = GlucoseMeasurement::decode(&[
            0x03, 0x05, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x00, 0x64, 0xB0,
            0x11,
        ])
        .unwrap();
        assert_eq!(m.sequence, 5);
        assert_eq!(m.device_time(), local(2024, 3, 15, 8, 30, 0));
        assert_eq!(value(&m), "0.00100");
        let c = m.concentration.unwrap();
        assert_eq!(c.sample_type, SampleType::CapillaryWholeBlood);
        assert_eq!(c.location, SampleLocation::Finger);
        let q = m.quantities();
        assert_eq!(
            (q[0].name.as_str(), q[0].unit.as_str()),
            ("glucose", "kg/L")
        );
    }

    #[test]
    fn five_point_five_millimoles_arrive_as_0_point_0055_mol_per_litre() {
        let m = GlucoseMeasurement::decode(&[
            0x06, 0x06, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x37, 0xC0, 0x11,
        ])
        .unwrap();
        assert_eq!(m.sequence, 6);
        assert_eq!(value(&m), "0.0055");
        assert_eq!(m.quantities()[0].unit, "mol/L");
        assert_eq!(m.time_offset_minutes, None);
    }

    #[test]
    fn control_solution_by_type_or_location_is_test_data() {
        // type 10, location 1
        let m = GlucoseMeasurement::decode(&[
            0x02, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x1A,
        ])
        .unwrap();
        assert_eq!(m.flags(), vec![ReadingFlag::TestData]);
        // type 1, location 4
        let m = GlucoseMeasurement::decode(&[
            0x02, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x41,
        ])
        .unwrap();
        assert_eq!(m.flags(), vec![ReadingFlag::TestData]);
    }

    #[test]
    fn a_time_fault_means_the_clock_is_not_trusted() {
        let m = GlucoseMeasurement::decode(&[
            0x08, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x08,
        ])
        .unwrap();
        assert!(m.status.unwrap().time_fault());
        assert_eq!(m.flags(), vec![ReadingFlag::ClockNotSet]);
    }

    #[test]
    fn result_high_is_bit_5_and_low_is_bit_6_as_the_sig_says() {
        assert!(GlucoseStatus(0x0020).result_too_high());
        assert!(!GlucoseStatus(0x0020).result_too_low());
        assert!(GlucoseStatus(0x0040).result_too_low());
    }

    #[test]
    fn reserved_sample_codes_and_flag_bits_are_recorded() {
        let m = GlucoseMeasurement::decode(&[
            0x22, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x50,
        ])
        .unwrap();
        assert_eq!(
            m.anomalies,
            vec![
                Anomaly::ReservedCode {
                    field: "sample_type",
                    code: 0
                },
                Anomaly::ReservedCode {
                    field: "sample_location",
                    code: 5
                },
                Anomaly::ReservedFlags { bits: 0x20 }
            ]
        );
    }

    fn context(seq: u16) -> GlucoseContext {
        // meal postprandial, HbA1c 6.3 %
        let [a, b] = seq.to_le_bytes();
        GlucoseContext::decode(&[0x42, a, b, 0x02, 0x3F, 0xF0]).unwrap()
    }

    fn measurement(seq: u16, follows: bool) -> GlucoseMeasurement {
        let [a, b] = seq.to_le_bytes();
        let flags = if follows { 0x12 } else { 0x02 };
        GlucoseMeasurement::decode(&[
            flags, a, b, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x11,
        ])
        .unwrap()
    }

    #[test]
    fn a_context_decodes_every_field_in_bit_order() {
        let c = GlucoseContext::decode(&[
            0xDF, 0x09, 0x00, 0x00, 0x01, 0x32, 0xD0, 0x02, 0x11, 0x2C, 0x01, 0x50, 0x01, 0x64,
            0xA0, 0x3F, 0xF0,
        ])
        .unwrap();
        assert_eq!(c.sequence, 9);
        assert_eq!(c.extended_flags, Some(0));
        let (id, carbs) = c.carbohydrate.unwrap();
        assert_eq!(
            (id, carbs.value().unwrap().to_string()),
            (1, "0.050".into())
        );
        assert_eq!(c.meal, Some(Meal::Postprandial));
        assert_eq!(c.tester_health, Some((1, 1)));
        assert_eq!(c.exercise, Some((300, 80)));
        let (id, amount, unit) = c.medication.unwrap();
        assert_eq!(
            (id, amount.value().unwrap().to_string(), unit),
            (1, "0.000100".into(), MedicationUnit::Kilograms)
        );
        assert_eq!(c.hba1c.unwrap().value().unwrap().to_string(), "6.3");
        assert!(c.anomalies.is_empty());
    }

    #[test]
    fn a_context_shorter_than_its_flags_is_truncated() {
        assert!(matches!(
            GlucoseContext::decode(&[0x40, 0x01, 0x00, 0x3F]),
            Err(GattError::Truncated {
                required: 5,
                len: 4,
                ..
            })
        ));
    }

    #[test]
    fn the_joiner_pairs_a_measurement_with_its_context_by_sequence_number() {
        let mut j = GlucoseJoiner::new(4);
        assert!(j.measurement(measurement(7, true)).is_empty());
        assert!(j.measurement(measurement(8, true)).is_empty());
        let r = j.context(context(8)).unwrap();
        assert_eq!(r.measurement.sequence, 8);
        assert_eq!(r.context.unwrap().meal, Some(Meal::Postprandial));
        assert_eq!(j.waiting(), 1);
    }

    #[test]
    fn a_measurement_without_announced_context_is_complete_at_once() {
        let mut j = GlucoseJoiner::new(4);
        let done = j.measurement(measurement(3, false));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].context, None);
        assert_eq!(j.waiting(), 0);
    }

    #[test]
    fn a_context_without_its_measurement_is_an_orphan() {
        let mut j = GlucoseJoiner::new(4);
        assert_eq!(j.context(context(5)), Err(OrphanContext { sequence: 5 }));
    }

    #[test]
    fn the_joiner_is_bounded_and_releases_the_oldest_without_context() {
        let mut j = GlucoseJoiner::new(2);
        j.measurement(measurement(1, true));
        j.measurement(measurement(2, true));
        let done = j.measurement(measurement(3, true));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].measurement.sequence, 1);
        assert_eq!(j.waiting(), 2);
        let rest = j.flush();
        assert_eq!(
            rest.iter()
                .map(|r| r.measurement.sequence)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(j.waiting(), 0);
    }

    #[test]
    fn a_repeated_sequence_number_releases_the_earlier_measurement() {
        let mut j = GlucoseJoiner::new(4);
        j.measurement(measurement(1, true));
        let done = j.measurement(measurement(1, true));
        assert_eq!(done.len(), 1);
        assert_eq!(j.waiting(), 1);
    }
}
