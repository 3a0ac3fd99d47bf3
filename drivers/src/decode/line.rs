//! Text-line decoding: a regular expression with named captures, one capture per field.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use regex::Regex;

use super::{DecodeError, FieldSpec};
use crate::reading::{DeviceIdentity, DeviceTime, Reading};

/// How to read a device timestamp out of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTimestamp {
    /// The names of the captures whose texts, joined with one space, form the timestamp.
    pub captures: Vec<String>,
    /// A `chrono` format string for the joined text (e.g. `%m/%d/%y %H:%M:%S`); a time
    /// without a zone is the device's local wall-clock time.
    pub format: String,
}

/// A compiled line decoder.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    /// The regex applied to each line (without its terminator).
    pub regex: Regex,
    /// The fields, each read from the capture named in its `source`.
    pub fields: Vec<FieldSpec>,
    /// The device timestamp, if the line carries one.
    pub timestamp: Option<LineTimestamp>,
}

impl LineDecoder {
    /// Decodes one line into a reading from `device`.
    pub fn decode(
        &self,
        line: &str,
        device: Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Result<Reading, DecodeError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let caps = self.regex.captures(line).ok_or_else(|| {
            DecodeError::Mismatch(format!(
                "line of {} characters does not match the profile's regex",
                line.len()
            ))
        })?;
        let mut quantities = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            if let Some(m) = caps.name(&field.source) {
                quantities.push(field.quantity_from_text(m.as_str())?);
            }
        }
        if quantities.is_empty() {
            return Err(DecodeError::Empty);
        }
        let device_time = match &self.timestamp {
            None => None,
            Some(ts) => {
                let parts: Option<Vec<&str>> = ts
                    .captures
                    .iter()
                    .map(|c| caps.name(c).map(|m| m.as_str()))
                    .collect();
                match parts {
                    None => None,
                    Some(parts) => {
                        let text = parts.join(" ");
                        let naive =
                            NaiveDateTime::parse_from_str(&text, &ts.format).map_err(|e| {
                                DecodeError::BadTimestamp(format!("{e} (format `{}`)", ts.format))
                            })?;
                        Some(DeviceTime::Local(naive))
                    }
                }
            }
        };
        Ok(Reading {
            device,
            device_time,
            received_at,
            sequence: None,
            quantities,
            flags: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Measurement, Transport};

    fn device() -> Arc<DeviceIdentity> {
        Arc::new(DeviceIdentity {
            profile: "masimo".into(),
            transport: Transport::Serial,
            address: "/dev/ttyUSB0".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        })
    }

    fn field(name: &str, unit: &str) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            source: name.into(),
            unit: unit.into(),
            scale: None,
            no_reading: vec!["---".into()],
        }
    }

    fn masimo() -> LineDecoder {
        LineDecoder {
            regex: Regex::new(r"^(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d) .*SPO2=(?P<spo2>[-\d]+)%? BPM=(?P<bpm>[-\d]+)").unwrap(),
            fields: vec![field("spo2", "%"), field("bpm", "/min")],
            timestamp: Some(LineTimestamp {
                captures: vec!["date".into(), "time".into()],
                format: "%m/%d/%y %H:%M:%S".into(),
            }),
        }
    }

    #[test]
    fn a_masimo_line_decodes_with_its_local_time() {
        let r = masimo()
            .decode(
                "02/15/24 10:41:03 SN=0000012345 SPO2=097% BPM=072 PI=01.23%\r\n",
                device(),
                Utc::now(),
            )
            .unwrap();
        assert_eq!(r.quantities.len(), 2);
        assert_eq!(
            r.quantities[0].value.value().unwrap().to_string(),
            "097".parse::<rust_decimal::Decimal>().unwrap().to_string()
        );
        assert!(matches!(r.device_time, Some(DeviceTime::Local(_))));
    }

    #[test]
    fn dashes_mean_no_reading() {
        let r = masimo()
            .decode(
                "02/15/24 10:41:03 SN=0000012345 SPO2=---% BPM=---",
                device(),
                Utc::now(),
            )
            .unwrap();
        assert!(r
            .quantities
            .iter()
            .all(|q| matches!(q.value, Measurement::Absent(_))));
    }

    #[test]
    fn a_line_that_does_not_match_is_a_mismatch() {
        let err = masimo()
            .decode("garbage", device(), Utc::now())
            .unwrap_err();
        assert!(matches!(err, DecodeError::Mismatch(_)));
    }

    #[test]
    fn an_impossible_date_is_a_bad_timestamp() {
        let err = masimo()
            .decode("13/45/24 10:41:03 SPO2=97 BPM=72", device(), Utc::now())
            .unwrap_err();
        assert!(matches!(err, DecodeError::BadTimestamp(_)), "{err:?}");
    }
}
