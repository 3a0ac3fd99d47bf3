//! Declarative decoders: text lines and binary frames (serial) and JSON payloads (MQTT),
//! configured from device profiles. Pure functions, no IO: bytes in, a [`Reading`](crate::Reading) or a reason out.

pub mod frame;
pub mod json;
pub mod line;
pub mod stream;

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::reading::{AbsentReason, Quantity};

/// Why a payload did not decode. The message names the field and the problem, never the
/// whole payload (which may hold patient data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload does not have the expected shape.
    #[error("payload does not match the profile: {0}")]
    Mismatch(String),
    /// A field's value is not a number.
    #[error("field `{field}`: {reason}")]
    BadValue {
        /// The field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A timestamp could not be read.
    #[error("timestamp: {0}")]
    BadTimestamp(String),
    /// The payload is larger than allowed.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The device id is longer than [`crate::reading::MAX_DEVICE_ID_BYTES`] (the id itself
    /// is not repeated: it may identify a patient's device).
    #[error("device id of {len} bytes exceeds the limit of {limit} bytes")]
    DeviceIdTooLong {
        /// The id's length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// No field of the profile was present: there is nothing to report.
    #[error("no field of the profile is present in the payload")]
    Empty,
}

/// How one decoded field becomes a [`Quantity`].
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The field name (the quantity's name).
    pub name: String,
    /// Where the value comes from: a regex capture name or a JSON Pointer.
    pub source: String,
    /// The UCUM unit of the raw value (after scaling).
    pub unit: String,
    /// A factor applied to the raw value (e.g. `0.1` for tenths), if any.
    pub scale: Option<Decimal>,
    /// Raw texts that mean "no reading" (e.g. `---`), reported as not-a-number.
    pub no_reading: Vec<String>,
}

impl FieldSpec {
    /// Turns a raw text value into a quantity, applying `no_reading` and `scale`.
    pub fn quantity_from_text(&self, raw: &str) -> Result<Quantity, DecodeError> {
        let raw = raw.trim();
        if self.no_reading.iter().any(|n| n == raw) {
            return Ok(Quantity::absent(
                self.name.clone(),
                AbsentReason::NotANumber,
                self.unit.clone(),
            ));
        }
        let value = Decimal::from_str(raw)
            .or_else(|_| Decimal::from_scientific(raw))
            .map_err(|_| DecodeError::BadValue {
                field: self.name.clone(),
                reason: format!("not a decimal number ({} characters)", raw.len()),
            })?;
        let value = match self.scale {
            Some(scale) => {
                scale_keeping_precision(value, scale).ok_or_else(|| DecodeError::BadValue {
                    field: self.name.clone(),
                    reason: "value out of range after scaling".into(),
                })?
            }
            None => value,
        };
        Ok(Quantity::new(self.name.clone(), value, self.unit.clone()))
    }
}

/// Multiplies by a scale factor; a factor of 0.1 adds one decimal place (tenths), and so on.
pub(crate) fn scale_keeping_precision(value: Decimal, scale: Decimal) -> Option<Decimal> {
    let product = value.checked_mul(scale)?;
    // 123 × 0.1 = 12.3: the product's scale is the sum of both scales, which is right for
    // decimal factors; normalize only trailing zeros the factor itself introduced.
    let extra = scale.normalize().scale();
    let mut out = product.normalize();
    out.rescale(value.scale() + extra);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Measurement;

    fn spec(scale: Option<&str>) -> FieldSpec {
        FieldSpec {
            name: "spo2".into(),
            source: "spo2".into(),
            unit: "%".into(),
            scale: scale.map(|s| Decimal::from_str(s).unwrap()),
            no_reading: vec!["---".into(), "--.-".into()],
        }
    }

    #[test]
    fn no_reading_markers_become_not_a_number() {
        let q = spec(None).quantity_from_text("---").unwrap();
        assert_eq!(q.value, Measurement::Absent(AbsentReason::NotANumber));
    }

    #[test]
    fn precision_of_the_text_is_kept() {
        let q = spec(None).quantity_from_text("97.0").unwrap();
        assert_eq!(q.value.value().unwrap().to_string(), "97.0");
    }

    #[test]
    fn scale_adds_decimal_places() {
        let q = spec(Some("0.1")).quantity_from_text("366").unwrap();
        assert_eq!(q.value.value().unwrap().to_string(), "36.6");
        let q = spec(Some("2")).quantity_from_text("21").unwrap();
        assert_eq!(q.value.value().unwrap().to_string(), "42");
    }

    #[test]
    fn garbage_is_a_bad_value_naming_the_field() {
        let err = spec(None).quantity_from_text("9x").unwrap_err();
        assert!(err.to_string().contains("spo2"), "{err}");
    }
}
