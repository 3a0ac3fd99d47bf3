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

mod context;
mod joiner;

pub use context::{GlucoseContext, Meal, MedicationUnit};
pub use joiner::{GlucoseJoiner, GlucoseRecord, OrphanContext};

use super::reader::Reader;
use crate::ble::{quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError};
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

#[cfg(test)]
mod tests;
