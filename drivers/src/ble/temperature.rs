//! Temperature Measurement (0x2A1C), Health Thermometer service 0x1809 (reference §2.4).
//!
//! The temperature is a FLOAT in °C (`Cel`) or °F (`[degF]`, which FHIR's body
//! temperature profile accepts as it is). The Temperature Type (the body site) is kept in
//! [`TemperatureMeasurement::temperature_type`].
//!
//! Intermediate Temperature (0x2A1E) has the same layout and carries readings still in
//! progress; it decodes to [`IntermediateTemperature`], which cannot become a reading.

use super::reader::Reader;
use super::{
    local_time, quantity, Anomaly, Characteristic, FinalMeasurement, GattDateTime, GattError,
};
use crate::reading::{BodySite, DeviceTime, Measurement, Quantity, ReadingFlag};

const C: Characteristic = Characteristic::TemperatureMeasurement;
const FAHRENHEIT: u8 = 0x01;
const TIME_STAMP: u8 = 0x02;
const TEMPERATURE_TYPE: u8 = 0x04;
const RESERVED: u8 = 0xF8;

/// The temperature unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemperatureUnit {
    /// Degrees Celsius (`Cel`).
    Celsius,
    /// Degrees Fahrenheit (`[degF]`).
    Fahrenheit,
}

impl TemperatureUnit {
    /// The UCUM code.
    pub fn ucum(self) -> &'static str {
        match self {
            TemperatureUnit::Celsius => "Cel",
            TemperatureUnit::Fahrenheit => "[degF]",
        }
    }
}

/// Where the temperature was taken (Temperature Type, also characteristic 0x2A1D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemperatureType {
    /// 1: armpit.
    Armpit,
    /// 2: body (general).
    Body,
    /// 3: ear (usually ear lobe).
    Ear,
    /// 4: finger.
    Finger,
    /// 5: gastro-intestinal tract.
    GastrointestinalTract,
    /// 6: mouth.
    Mouth,
    /// 7: rectum.
    Rectum,
    /// 8: toe.
    Toe,
    /// 9: tympanum (ear drum).
    Tympanum,
    /// 0 or 10..=255: reserved.
    Reserved(u8),
}

impl TemperatureType {
    /// The body site, for the known types.
    pub fn site(self) -> Option<BodySite> {
        Some(match self {
            TemperatureType::Armpit => BodySite::Armpit,
            TemperatureType::Body => BodySite::Body,
            TemperatureType::Ear => BodySite::Ear,
            TemperatureType::Finger => BodySite::Finger,
            TemperatureType::GastrointestinalTract => BodySite::GastrointestinalTract,
            TemperatureType::Mouth => BodySite::Mouth,
            TemperatureType::Rectum => BodySite::Rectum,
            TemperatureType::Toe => BodySite::Toe,
            TemperatureType::Tympanum => BodySite::Tympanum,
            TemperatureType::Reserved(_) => return None,
        })
    }

    /// From the one-byte code.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => TemperatureType::Armpit,
            2 => TemperatureType::Body,
            3 => TemperatureType::Ear,
            4 => TemperatureType::Finger,
            5 => TemperatureType::GastrointestinalTract,
            6 => TemperatureType::Mouth,
            7 => TemperatureType::Rectum,
            8 => TemperatureType::Toe,
            9 => TemperatureType::Tympanum,
            other => TemperatureType::Reserved(other),
        }
    }
}

/// A decoded Temperature Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperatureMeasurement {
    /// The unit.
    pub unit: TemperatureUnit,
    /// The temperature.
    pub temperature: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// The body site, if sent.
    pub temperature_type: Option<TemperatureType>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// A decoded Intermediate Temperature: an in-progress value, never a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateTemperature {
    /// The unit.
    pub unit: TemperatureUnit,
    /// The temperature so far.
    pub temperature: Measurement,
    /// The time stamp, as sent.
    pub timestamp: Option<GattDateTime>,
    /// The body site, if sent.
    pub temperature_type: Option<TemperatureType>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

/// The shared layout of 0x2A1C and 0x2A1E.
fn decode_layout(c: Characteristic, bytes: &[u8]) -> Result<TemperatureMeasurement, GattError> {
    let mut r = Reader::with_flags(c, bytes, 5, &[(TIME_STAMP, 7), (TEMPERATURE_TYPE, 1)])?;
    let unit = if r.has(FAHRENHEIT) {
        TemperatureUnit::Fahrenheit
    } else {
        TemperatureUnit::Celsius
    };
    let temperature = r.float("body_temperature")?;
    let timestamp = r.optional(TIME_STAMP, Reader::timestamp)?;
    let temperature_type = r.optional(TEMPERATURE_TYPE, |r| {
        let t = TemperatureType::from_code(r.u8()?);
        if let TemperatureType::Reserved(code) = t {
            r.note(Anomaly::ReservedCode {
                field: "temperature_type",
                code,
            });
        }
        Ok(t)
    })?;
    Ok(TemperatureMeasurement {
        unit,
        temperature,
        timestamp,
        temperature_type,
        anomalies: r.finish(RESERVED),
    })
}

impl TemperatureMeasurement {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        decode_layout(C, bytes)
    }
}

impl IntermediateTemperature {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let m = decode_layout(Characteristic::IntermediateTemperature, bytes)?;
        Ok(Self {
            unit: m.unit,
            temperature: m.temperature,
            timestamp: m.timestamp,
            temperature_type: m.temperature_type,
            anomalies: m.anomalies,
        })
    }
}

impl FinalMeasurement for TemperatureMeasurement {
    fn characteristic(&self) -> Characteristic {
        C
    }

    fn quantities(&self) -> Vec<Quantity> {
        vec![
            quantity("body_temperature", self.temperature, self.unit.ucum())
                .at(self.temperature_type.and_then(TemperatureType::site)),
        ]
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

    fn value(m: &TemperatureMeasurement) -> String {
        m.temperature
            .value()
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    const FINGER: [u8; 13] = [
        0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04,
    ];

    #[test]
    fn celsius_37_point_60_with_time_stamp_taken_at_the_finger() {
        let m = TemperatureMeasurement::decode(&FINGER).unwrap();
        assert_eq!(m.unit, TemperatureUnit::Celsius);
        assert_eq!(value(&m), "37.60");
        assert_eq!(m.device_time(), local(2012, 12, 5, 11, 50, 27));
        assert_eq!(m.temperature_type, Some(TemperatureType::Finger));
        assert!(m.anomalies.is_empty());
    }

    #[test]
    fn the_same_value_without_its_flagged_type_byte_is_truncated() {
        assert_eq!(
            TemperatureMeasurement::decode(&FINGER[..12]),
            Err(GattError::Truncated {
                characteristic: C,
                len: 12,
                required: 13
            })
        );
    }

    #[test]
    fn celsius_36_point_97_in_the_armpit() {
        let m = TemperatureMeasurement::decode(&[
            0x06, 0x71, 0x0E, 0x00, 0xFE, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D, 0x01,
        ])
        .unwrap();
        assert_eq!(value(&m), "36.97");
        assert_eq!(m.device_time(), local(2020, 5, 21, 10, 30, 45));
        assert_eq!(m.temperature_type, Some(TemperatureType::Armpit));
    }

    #[test]
    fn the_minimal_form_is_25_point_00_celsius() {
        let m = TemperatureMeasurement::decode(&[0x00, 0xC4, 0x09, 0x00, 0xFE]).unwrap();
        assert_eq!(value(&m), "25.00");
        assert_eq!((m.timestamp, m.temperature_type), (None, None));
    }

    #[test]
    fn a_nan_float_is_an_absent_temperature() {
        let m = TemperatureMeasurement::decode(&[0x00, 0xFF, 0xFF, 0x7F, 0x00]).unwrap();
        assert_eq!(m.temperature, Measurement::Absent(AbsentReason::NotANumber));
        assert_eq!(
            m.quantities()[0].value,
            Measurement::Absent(AbsentReason::NotANumber)
        );
    }

    #[test]
    fn reserved_flag_bit_3_is_ignored_and_recorded() {
        let m = TemperatureMeasurement::decode(&[0x08, 0xC4, 0x09, 0x00, 0xFE]).unwrap();
        assert_eq!(value(&m), "25.00");
        assert_eq!(m.anomalies, vec![Anomaly::ReservedFlags { bits: 0x08 }]);
    }

    #[test]
    fn flags_alone_are_truncated() {
        assert_eq!(
            TemperatureMeasurement::decode(&[0x07]),
            Err(GattError::Truncated {
                characteristic: C,
                len: 1,
                required: 13
            })
        );
    }

    #[test]
    fn fahrenheit_98_point_6_is_kept_in_deg_f() {
        let m = TemperatureMeasurement::decode(&[0x01, 0xDA, 0x03, 0x00, 0xFF]).unwrap();
        assert_eq!(m.unit, TemperatureUnit::Fahrenheit);
        assert_eq!(value(&m), "98.6");
        assert_eq!(m.quantities()[0].unit, "[degF]");
    }

    #[test]
    fn a_reserved_temperature_type_is_kept_and_recorded() {
        let m = TemperatureMeasurement::decode(&[0x04, 0xC4, 0x09, 0x00, 0xFE, 0x0A]).unwrap();
        assert_eq!(m.temperature_type, Some(TemperatureType::Reserved(10)));
        assert_eq!(
            m.anomalies,
            vec![Anomaly::ReservedCode {
                field: "temperature_type",
                code: 10
            }]
        );
    }

    #[test]
    fn intermediate_temperature_has_the_same_layout_and_names_its_own_characteristic() {
        let m = IntermediateTemperature::decode(&FINGER).unwrap();
        assert_eq!(m.temperature.value().unwrap().to_string(), "37.60");
        assert_eq!(m.temperature_type, Some(TemperatureType::Finger));
        let err = IntermediateTemperature::decode(&FINGER[..12]).unwrap_err();
        assert!(
            err.to_string()
                .contains("Intermediate Temperature (0x2A1E)"),
            "{err}"
        );
    }

    #[test]
    fn a_float_exponent_outside_the_decimal_range_is_invalid() {
        let err = TemperatureMeasurement::decode(&[0x00, 0x01, 0x00, 0x00, 0x80]).unwrap_err();
        assert!(
            matches!(&err, GattError::Invalid { reason, .. } if reason.contains("body_temperature")),
            "{err}"
        );
    }
}
