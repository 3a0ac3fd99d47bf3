//! The one table of the GATT characteristics this module decodes.
//!
//! Each entry gives a characteristic's 16-bit UUID, its SIG name, its decoder, the
//! quantities (and UCUM units) its final measurement produces, whether it is a final
//! measurement, the decoder name device profiles use for it (measurement characteristics
//! only) and its fuzz target in `fuzz/`. The [`Characteristic`] enum, [`decode`]'s
//! dispatch and [`fields`] are all made from this table; the gateway's list of GATT
//! decoders is read from it; tests check `device-profiles/README.md`'s table and the fuzz
//! targets against it (`drivers/tests/gatt_registry.rs`).
//!
//! A characteristic whose value is a new type also gets a [`GattValue`] variant (and, if it
//! is final, an arm in [`GattValue::as_final`]): both are below.

use std::fmt;

use super::FinalMeasurement;
use super::{
    BatteryLevel, BloodPressureMeasurement, BodyCompositionMeasurement, CgmFeature, CgmMeasurement,
    CurrentTime, DeviceString, GattDateTime, GattError, GlucoseContext, GlucoseMeasurement,
    HeartRateMeasurement, IntermediateCuffPressure, IntermediateTemperature,
    PlxContinuousMeasurement, PlxSpotCheckMeasurement, SessionRunTime, SessionStartTime,
    TemperatureMeasurement, WeightMeasurement, BATTERY_FIELD,
};

/// One field a decoder produces and the UCUM units it may carry (depending on flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldUnits {
    /// The quantity name.
    pub name: &'static str,
    /// The units it can come in.
    pub units: &'static [&'static str],
}

const fn fu(name: &'static str, units: &'static [&'static str]) -> FieldUnits {
    FieldUnits { name, units }
}

/// A characteristic's decoder: the value's bytes to a [`GattValue`].
pub type DecodeFn = fn(&[u8]) -> Result<GattValue, GattError>;

/// One characteristic of the registry.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The characteristic.
    pub characteristic: Characteristic,
    /// The 16-bit UUID assigned by the Bluetooth SIG.
    pub uuid16: u16,
    /// The SIG name.
    pub name: &'static str,
    /// Decodes a value of this characteristic.
    pub decode: DecodeFn,
    /// The quantity names (and units) its final measurement produces, in the order of the
    /// reading's quantities; empty for a characteristic that produces no reading.
    pub fields: &'static [FieldUnits],
    /// Whether its values are final measurements (they implement [`FinalMeasurement`] and
    /// become readings); intermediate values, contexts, times and strings are not.
    pub final_measurement: bool,
    /// The decoder name device profiles give in `[ble] decoder`; `None` for a
    /// characteristic a profile cannot name (read by the driver on its own, joined to a
    /// measurement, or never a reading).
    pub profile_decoder: Option<&'static str>,
    /// The cargo-fuzz target in `fuzz/` that fuzzes its decoder.
    pub fuzz_target: &'static str,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("characteristic", &self.characteristic)
            .field("uuid16", &format_args!("0x{:04X}", self.uuid16))
            .field("fields", &self.fields)
            .field("final_measurement", &self.final_measurement)
            .field("profile_decoder", &self.profile_decoder)
            .field("fuzz_target", &self.fuzz_target)
            .finish_non_exhaustive()
    }
}

/// Makes the [`Characteristic`] enum, its [`Characteristic::entry`] and [`REGISTRY`] from
/// one list, so that a characteristic cannot exist without its entry.
macro_rules! registry {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident {
            uuid16: $uuid:expr,
            name: $name:expr,
            decode: $decode:expr,
            fields: $fields:expr,
            final_measurement: $final:expr,
            profile_decoder: $profile:expr,
            fuzz_target: $fuzz:expr,
        }
    )*) => {
        /// A GATT characteristic this module decodes (one per [`REGISTRY`] entry).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Characteristic {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Characteristic {
            /// Its entry in the registry.
            pub const fn entry(self) -> &'static Entry {
                match self {
                    $(Characteristic::$variant => {
                        const ENTRY: Entry = Entry {
                            characteristic: Characteristic::$variant,
                            uuid16: $uuid,
                            name: $name,
                            decode: $decode,
                            fields: $fields,
                            final_measurement: $final,
                            profile_decoder: $profile,
                            fuzz_target: $fuzz,
                        };
                        &ENTRY
                    })*
                }
            }
        }

        /// Every characteristic this module decodes, in declaration order.
        pub const REGISTRY: &[Entry] = &[$( *Characteristic::$variant.entry(), )*];
    };
}

const HEART_RATE: &[FieldUnits] = &[fu("heart_rate", &["/min"])];
const BLOOD_PRESSURE: &[FieldUnits] = &[
    fu("systolic", &["mm[Hg]", "kPa"]),
    fu("diastolic", &["mm[Hg]", "kPa"]),
    fu("mean_arterial", &["mm[Hg]", "kPa"]),
    fu("pulse_rate", &["/min"]),
];
const TEMPERATURE: &[FieldUnits] = &[fu("body_temperature", &["Cel", "[degF]"])];
const WEIGHT: &[FieldUnits] = &[
    fu("body_weight", &["kg", "[lb_av]"]),
    fu("bmi", &["kg/m2"]),
    fu("body_height", &["m", "[in_i]"]),
];
const BODY_COMPOSITION: &[FieldUnits] = &[
    fu("body_fat", &["%"]),
    fu("basal_metabolism", &["kJ"]),
    fu("muscle_percentage", &["%"]),
    fu("muscle_mass", &["kg", "[lb_av]"]),
    fu("fat_free_mass", &["kg", "[lb_av]"]),
    fu("soft_lean_mass", &["kg", "[lb_av]"]),
    fu("body_water_mass", &["kg", "[lb_av]"]),
    fu("impedance", &["Ohm"]),
    fu("body_weight", &["kg", "[lb_av]"]),
    fu("body_height", &["m", "[in_i]"]),
];
const PLX: &[FieldUnits] = &[fu("spo2", &["%"]), fu("pulse_rate", &["/min"])];
const GLUCOSE: &[FieldUnits] = &[fu("glucose", &["kg/L", "mol/L"])];
const CGM: &[FieldUnits] = &[
    fu("interstitial_glucose", &["mg/dL"]),
    fu("glucose_trend", &["mg/dL/min"]),
    fu("cgm_quality", &["%"]),
];
const BATTERY: &[FieldUnits] = &[fu(BATTERY_FIELD, &["%"])];

registry! {
    /// Heart Rate Measurement, 0x2A37.
    HeartRateMeasurement {
        uuid16: 0x2A37,
        name: "Heart Rate Measurement",
        decode: |b| Ok(GattValue::HeartRate(HeartRateMeasurement::decode(b)?)),
        fields: HEART_RATE,
        final_measurement: true,
        profile_decoder: Some("heart_rate_measurement"),
        fuzz_target: "ble_heart_rate",
    }
    /// Blood Pressure Measurement, 0x2A35.
    BloodPressureMeasurement {
        uuid16: 0x2A35,
        name: "Blood Pressure Measurement",
        decode: |b| Ok(GattValue::BloodPressure(BloodPressureMeasurement::decode(b)?)),
        fields: BLOOD_PRESSURE,
        final_measurement: true,
        profile_decoder: Some("blood_pressure_measurement"),
        fuzz_target: "ble_blood_pressure",
    }
    /// Intermediate Cuff Pressure, 0x2A36.
    IntermediateCuffPressure {
        uuid16: 0x2A36,
        name: "Intermediate Cuff Pressure",
        decode: |b| {
            Ok(GattValue::IntermediateCuffPressure(IntermediateCuffPressure::decode(b)?))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_intermediate_cuff_pressure",
    }
    /// Temperature Measurement, 0x2A1C.
    TemperatureMeasurement {
        uuid16: 0x2A1C,
        name: "Temperature Measurement",
        decode: |b| Ok(GattValue::Temperature(TemperatureMeasurement::decode(b)?)),
        fields: TEMPERATURE,
        final_measurement: true,
        profile_decoder: Some("temperature_measurement"),
        fuzz_target: "ble_temperature",
    }
    /// Intermediate Temperature, 0x2A1E.
    IntermediateTemperature {
        uuid16: 0x2A1E,
        name: "Intermediate Temperature",
        decode: |b| Ok(GattValue::IntermediateTemperature(IntermediateTemperature::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_intermediate_temperature",
    }
    /// Weight Measurement, 0x2A9D.
    WeightMeasurement {
        uuid16: 0x2A9D,
        name: "Weight Measurement",
        decode: |b| Ok(GattValue::Weight(WeightMeasurement::decode(b)?)),
        fields: WEIGHT,
        final_measurement: true,
        profile_decoder: Some("weight_measurement"),
        fuzz_target: "ble_weight",
    }
    /// Body Composition Measurement, 0x2A9C.
    BodyCompositionMeasurement {
        uuid16: 0x2A9C,
        name: "Body Composition Measurement",
        decode: |b| Ok(GattValue::BodyComposition(BodyCompositionMeasurement::decode(b)?)),
        fields: BODY_COMPOSITION,
        final_measurement: true,
        profile_decoder: Some("body_composition_measurement"),
        fuzz_target: "ble_body_composition",
    }
    /// PLX Spot-Check Measurement, 0x2A5E.
    PlxSpotCheckMeasurement {
        uuid16: 0x2A5E,
        name: "PLX Spot-Check Measurement",
        decode: |b| Ok(GattValue::PlxSpotCheck(PlxSpotCheckMeasurement::decode(b)?)),
        fields: PLX,
        final_measurement: true,
        profile_decoder: Some("plx_spot_check_measurement"),
        fuzz_target: "ble_plx_spot_check",
    }
    /// PLX Continuous Measurement, 0x2A5F.
    PlxContinuousMeasurement {
        uuid16: 0x2A5F,
        name: "PLX Continuous Measurement",
        decode: |b| Ok(GattValue::PlxContinuous(PlxContinuousMeasurement::decode(b)?)),
        fields: PLX,
        final_measurement: true,
        profile_decoder: Some("plx_continuous_measurement"),
        fuzz_target: "ble_plx_continuous",
    }
    /// Glucose Measurement, 0x2A18.
    GlucoseMeasurement {
        uuid16: 0x2A18,
        name: "Glucose Measurement",
        decode: |b| Ok(GattValue::Glucose(GlucoseMeasurement::decode(b)?)),
        fields: GLUCOSE,
        final_measurement: true,
        profile_decoder: Some("glucose_measurement"),
        fuzz_target: "ble_glucose",
    }
    /// Glucose Measurement Context, 0x2A34.
    GlucoseMeasurementContext {
        uuid16: 0x2A34,
        name: "Glucose Measurement Context",
        decode: |b| Ok(GattValue::GlucoseContext(GlucoseContext::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_glucose_context",
    }
    /// CGM Measurement, 0x2AA7 (Continuous Glucose Monitoring 0x181F).
    CgmMeasurement {
        uuid16: 0x2AA7,
        name: "CGM Measurement",
        decode: |b| Ok(GattValue::Cgm(CgmMeasurement::decode(b)?)),
        fields: CGM,
        final_measurement: true,
        profile_decoder: Some("cgm_measurement"),
        fuzz_target: "ble_cgm",
    }
    /// CGM Feature, 0x2AA8: says whether CGM values carry an E2E-CRC.
    CgmFeature {
        uuid16: 0x2AA8,
        name: "CGM Feature",
        decode: |b| Ok(GattValue::CgmFeature(CgmFeature::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_cgm_session",
    }
    /// CGM Session Start Time, 0x2AAA: the time CGM time offsets count from.
    CgmSessionStartTime {
        uuid16: 0x2AAA,
        name: "CGM Session Start Time",
        decode: |b| Ok(GattValue::CgmSessionStart(SessionStartTime::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_cgm_session",
    }
    /// CGM Session Run Time, 0x2AAB.
    CgmSessionRunTime {
        uuid16: 0x2AAB,
        name: "CGM Session Run Time",
        decode: |b| Ok(GattValue::CgmSessionRunTime(SessionRunTime::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_cgm_session",
    }
    /// Battery Level, 0x2A19.
    BatteryLevel {
        uuid16: 0x2A19,
        name: "Battery Level",
        decode: |b| Ok(GattValue::Battery(BatteryLevel::decode(b)?)),
        fields: BATTERY,
        final_measurement: true,
        profile_decoder: None,
        fuzz_target: "ble_battery_level",
    }
    /// Date Time, 0x2A08.
    DateTime {
        uuid16: 0x2A08,
        name: "Date Time",
        decode: |b| Ok(GattValue::DateTime(GattDateTime::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_date_time",
    }
    /// Current Time, 0x2A2B (Current Time Service 0x1805): the device's clock, read at
    /// each connection to compare it with the gateway's.
    CurrentTime {
        uuid16: 0x2A2B,
        name: "Current Time",
        decode: |b| Ok(GattValue::CurrentTime(CurrentTime::decode(b)?)),
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_current_time",
    }
    /// Manufacturer Name String, 0x2A29.
    ManufacturerNameString {
        uuid16: 0x2A29,
        name: "Manufacturer Name String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::ManufacturerNameString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
    /// Model Number String, 0x2A24.
    ModelNumberString {
        uuid16: 0x2A24,
        name: "Model Number String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::ModelNumberString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
    /// Serial Number String, 0x2A25.
    SerialNumberString {
        uuid16: 0x2A25,
        name: "Serial Number String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::SerialNumberString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
    /// Firmware Revision String, 0x2A26.
    FirmwareRevisionString {
        uuid16: 0x2A26,
        name: "Firmware Revision String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::FirmwareRevisionString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
    /// Hardware Revision String, 0x2A27.
    HardwareRevisionString {
        uuid16: 0x2A27,
        name: "Hardware Revision String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::HardwareRevisionString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
    /// Software Revision String, 0x2A28.
    SoftwareRevisionString {
        uuid16: 0x2A28,
        name: "Software Revision String",
        decode: |b| {
            Ok(GattValue::DeviceString(Characteristic::SoftwareRevisionString, DeviceString::decode(b)))
        },
        fields: &[],
        final_measurement: false,
        profile_decoder: None,
        fuzz_target: "ble_device_information",
    }
}

impl Characteristic {
    /// Every characteristic this module decodes.
    pub const ALL: [Characteristic; REGISTRY.len()] = {
        let mut all = [Characteristic::HeartRateMeasurement; REGISTRY.len()];
        let mut i = 0;
        while i < REGISTRY.len() {
            all[i] = REGISTRY[i].characteristic;
            i += 1;
        }
        all
    };

    /// The 16-bit UUID assigned by the Bluetooth SIG.
    pub fn uuid16(self) -> u16 {
        self.entry().uuid16
    }

    /// The characteristic with this 16-bit UUID, if this module decodes it.
    pub fn from_uuid16(uuid: u16) -> Option<Self> {
        REGISTRY
            .iter()
            .find(|e| e.uuid16 == uuid)
            .map(|e| e.characteristic)
    }

    /// The SIG name.
    pub fn name(self) -> &'static str {
        self.entry().name
    }
}

impl fmt::Display for Characteristic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04X})", self.name(), self.uuid16())
    }
}

/// The quantity names (and units) a characteristic's final measurement produces; empty
/// for characteristics that produce no reading.
pub fn fields(characteristic: Characteristic) -> &'static [FieldUnits] {
    characteristic.entry().fields
}

/// The characteristics device profiles may name as their decoder, with that name.
pub fn profile_decoders() -> impl Iterator<Item = (&'static str, &'static Entry)> {
    REGISTRY
        .iter()
        .filter_map(|e| e.profile_decoder.map(|name| (name, e)))
}

/// Decodes the value of the characteristic with 16-bit UUID `uuid`.
pub fn decode(uuid: u16, bytes: &[u8]) -> Result<GattValue, GattError> {
    let c = Characteristic::from_uuid16(uuid).ok_or(GattError::Unknown(uuid))?;
    (c.entry().decode)(bytes)
}

/// Any decoded GATT value.
#[derive(Debug, Clone, PartialEq)]
pub enum GattValue {
    /// 0x2A37.
    HeartRate(HeartRateMeasurement),
    /// 0x2A35.
    BloodPressure(BloodPressureMeasurement),
    /// 0x2A36: in progress, never a reading.
    IntermediateCuffPressure(IntermediateCuffPressure),
    /// 0x2A1C.
    Temperature(TemperatureMeasurement),
    /// 0x2A1E: in progress, never a reading.
    IntermediateTemperature(IntermediateTemperature),
    /// 0x2A9D.
    Weight(WeightMeasurement),
    /// 0x2A9C.
    BodyComposition(BodyCompositionMeasurement),
    /// 0x2A5E.
    PlxSpotCheck(PlxSpotCheckMeasurement),
    /// 0x2A5F.
    PlxContinuous(PlxContinuousMeasurement),
    /// 0x2A18.
    Glucose(GlucoseMeasurement),
    /// 0x2A34: joined to its measurement by [`GlucoseJoiner`](super::GlucoseJoiner).
    GlucoseContext(GlucoseContext),
    /// 0x2AA7: one CGM record.
    Cgm(CgmMeasurement),
    /// 0x2AA8.
    CgmFeature(CgmFeature),
    /// 0x2AAA.
    CgmSessionStart(SessionStartTime),
    /// 0x2AAB.
    CgmSessionRunTime(SessionRunTime),
    /// 0x2A19.
    Battery(BatteryLevel),
    /// 0x2A08.
    DateTime(GattDateTime),
    /// 0x2A2B: the device's clock now.
    CurrentTime(CurrentTime),
    /// A Device Information string (0x2A24..=0x2A29).
    DeviceString(Characteristic, DeviceString),
}

impl GattValue {
    /// The final measurement inside, if this value is one.
    pub fn as_final(&self) -> Option<&dyn FinalMeasurement> {
        match self {
            GattValue::HeartRate(m) => Some(m),
            GattValue::BloodPressure(m) => Some(m),
            GattValue::Temperature(m) => Some(m),
            GattValue::Weight(m) => Some(m),
            GattValue::BodyComposition(m) => Some(m),
            GattValue::PlxSpotCheck(m) => Some(m),
            GattValue::PlxContinuous(m) => Some(m),
            GattValue::Glucose(m) => Some(m),
            GattValue::Cgm(m) => Some(m),
            GattValue::Battery(m) => Some(m),
            GattValue::IntermediateCuffPressure(_)
            | GattValue::IntermediateTemperature(_)
            | GattValue::GlucoseContext(_)
            | GattValue::CgmFeature(_)
            | GattValue::CgmSessionStart(_)
            | GattValue::CgmSessionRunTime(_)
            | GattValue::DateTime(_)
            | GattValue::CurrentTime(_)
            | GattValue::DeviceString(..) => None,
        }
    }
}

#[cfg(test)]
mod tests;
