//! Battery Level (0x2A19) and the Device Information strings (0x2A24..=0x2A29)
//! (reference §2.10, §5 item 17).
//!
//! String policy: a `utf8s` value may or may not be NUL-terminated, so it ends at its
//! first NUL; invalid UTF-8 is replaced by U+FFFD; control characters are removed;
//! surrounding whitespace is trimmed; at most [`MAX_STRING_BYTES`] bytes are read and at
//! most [`MAX_STRING_CHARS`] characters kept. An empty result is no string. These strings
//! are identifying (a serial number): the gateway pseudonymizes them and never uses them as
//! FHIR ids or logs them.

use rust_decimal::Decimal;

use super::reader::Reader;
use super::{quantity, Anomaly, Characteristic, FinalMeasurement, GattError};
use crate::reading::{Measurement, Quantity};

/// The quantity name of the battery charge: a BLE profile maps it (`vital = "battery"`)
/// to have the charge read at each connection reported as an Observation.
pub const BATTERY_FIELD: &str = "battery_level";

/// The most bytes of a Device Information string that are read (the ATT maximum
/// attribute length).
pub const MAX_STRING_BYTES: usize = 512;
/// The most characters of a Device Information string that are kept.
pub const MAX_STRING_CHARS: usize = 64;

/// A decoded Battery Level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatteryLevel {
    /// Charge in percent, 0..=100.
    pub percent: u8,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl BatteryLevel {
    /// Decodes the characteristic's value; 101..=255 are reserved and rejected.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::BatteryLevel;
        let mut r = Reader::new(C, bytes);
        let percent = r.u8()?;
        if percent > 100 {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: "levels above 100 % are reserved".into(),
            });
        }
        Ok(Self {
            percent,
            anomalies: r.finish(0),
        })
    }
}

/// The charge as read at a connection: no time stamp of its own (the gateway's receipt
/// time stands for it).
impl FinalMeasurement for BatteryLevel {
    fn characteristic(&self) -> Characteristic {
        Characteristic::BatteryLevel
    }

    fn quantities(&self) -> Vec<Quantity> {
        vec![quantity(
            BATTERY_FIELD,
            Measurement::Value(Decimal::from(self.percent)),
            "%",
        )]
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

/// A decoded Device Information string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceString {
    /// The sanitized text; `None` when nothing is left.
    pub value: Option<String>,
    /// What the decoder noticed (`StringSanitized` when it changed more than the
    /// terminating NULs and surrounding whitespace).
    pub anomalies: Vec<Anomaly>,
}

impl DeviceString {
    /// Decodes a `utf8s` value. Never fails: any bytes give a (possibly empty) string.
    pub fn decode(bytes: &[u8]) -> Self {
        let bytes = &bytes[..bytes.len().min(MAX_STRING_BYTES)];
        let until_nul = match bytes.iter().position(|b| *b == 0) {
            Some(i) => &bytes[..i],
            None => bytes,
        };
        let text = String::from_utf8_lossy(until_nul);
        let mut sanitized = matches!(text, std::borrow::Cow::Owned(_));
        let cleaned: String = text.chars().filter(|c| !c.is_control()).collect();
        sanitized |= cleaned.len() != text.len();
        let trimmed = cleaned.trim();
        let value: String = trimmed.chars().take(MAX_STRING_CHARS).collect();
        sanitized |= value.len() != trimmed.len();
        let mut anomalies = Vec::new();
        if sanitized {
            anomalies.push(Anomaly::StringSanitized);
        }
        Self {
            value: (!value.is_empty()).then_some(value),
            anomalies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn battery_levels_0_to_100_are_percent() {
        assert_eq!(BatteryLevel::decode(&[0]).unwrap().percent, 0);
        assert_eq!(BatteryLevel::decode(&[100]).unwrap().percent, 100);
    }

    #[test]
    fn battery_levels_above_100_are_reserved() {
        for raw in [101u8, 200, 255] {
            assert!(matches!(
                BatteryLevel::decode(&[raw]),
                Err(GattError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn an_empty_battery_level_is_truncated() {
        assert_eq!(
            BatteryLevel::decode(&[]),
            Err(GattError::Truncated {
                characteristic: Characteristic::BatteryLevel,
                len: 0,
                required: 1
            })
        );
    }

    #[test]
    fn bytes_after_the_battery_level_are_trailing() {
        let b = BatteryLevel::decode(&[80, 1]).unwrap();
        assert_eq!(b.anomalies, vec![Anomaly::TrailingBytes { count: 1 }]);
    }

    #[test]
    fn a_string_ends_at_its_first_nul() {
        let s = DeviceString::decode(b"A&D Medical\0\0\0");
        assert_eq!(s.value.as_deref(), Some("A&D Medical"));
        assert!(s.anomalies.is_empty());
        let s = DeviceString::decode(b"UA-651\0garbage");
        assert_eq!(s.value.as_deref(), Some("UA-651"));
    }

    #[test]
    fn a_string_without_nul_is_taken_whole() {
        assert_eq!(
            DeviceString::decode(b"Nonin Medical, Inc.")
                .value
                .as_deref(),
            Some("Nonin Medical, Inc.")
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_recorded() {
        let s = DeviceString::decode(&[b'S', b'N', 0xFF, 0xFE, b'1']);
        assert_eq!(s.value.as_deref(), Some("SN\u{FFFD}\u{FFFD}1"));
        assert_eq!(s.anomalies, vec![Anomaly::StringSanitized]);
    }

    #[test]
    fn control_characters_are_removed_and_whitespace_trimmed() {
        let s = DeviceString::decode(b"  X4\r\n Smart\x1b ");
        assert_eq!(s.value.as_deref(), Some("X4 Smart"));
        assert_eq!(s.anomalies, vec![Anomaly::StringSanitized]);
    }

    #[test]
    fn empty_and_all_nul_strings_are_no_string() {
        assert_eq!(DeviceString::decode(b"").value, None);
        assert_eq!(DeviceString::decode(&[0, 0, 0]).value, None);
        assert_eq!(DeviceString::decode(b"   ").value, None);
    }

    #[test]
    fn long_strings_are_capped() {
        let long = vec![b'7'; 2000];
        let s = DeviceString::decode(&long);
        assert_eq!(s.value.unwrap().len(), MAX_STRING_CHARS);
        assert_eq!(s.anomalies, vec![Anomaly::StringSanitized]);
    }
}
