//! IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) in exact decimal arithmetic.
//!
//! A value is `mantissa × 10^exponent`; the exponent carries the device's precision
//! (`14 F0` is `2.0`, `C8 E0` is `2.00`), so the result is a [`Decimal`] whose scale is
//! `-exponent` (for a negative exponent) and never passes through binary floating point.
//!
//! Special values are recognized by matching the **whole** raw value (exponent 0), as the
//! PHD IG says: NaN, NRes, ±infinity and the reserved value become an [`AbsentReason`].
//!
//! Policy for the reserved mantissas with a non-zero exponent (e.g. SFLOAT `0x17FF`,
//! mantissa 2047 with exponent 1): they are not special values under the exact-match rule,
//! so they decode as the number they spell, and [`Float11073::reserved_mantissa`] is set.
//! Conformant encoders never produce them (the usable mantissa range is ±2045 for SFLOAT
//! and ±8 388 605 for FLOAT), so the measurement decoders record an
//! [`Anomaly::ReservedMantissa`](super::Anomaly::ReservedMantissa) naming the field, which
//! the driver logs; the value is neither dropped nor silently turned into NaN.

use rust_decimal::Decimal;

use crate::reading::{AbsentReason, Measurement};

/// A decoded SFLOAT or FLOAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Float11073 {
    /// The exact value, or the special value's reason.
    pub measurement: Measurement,
    /// The mantissa is one of the special values' mantissas, but the exponent is not 0.
    pub reserved_mantissa: bool,
}

/// The FLOAT's value does not fit a [`Decimal`] (exponent below -28, or a magnitude above
/// about 7.9 × 10^28): no physiological measurement is like that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("FLOAT with exponent {exponent} is outside the exact decimal range")]
pub struct OutOfRange {
    /// The FLOAT's exponent.
    pub exponent: i8,
}

/// The raw 16-bit values of the SFLOAT special values.
pub mod sfloat_special {
    /// Not a number (invalid result).
    pub const NAN: u16 = 0x07FF;
    /// Not at this resolution.
    pub const NRES: u16 = 0x0800;
    /// Positive infinity.
    pub const POSITIVE_INFINITY: u16 = 0x07FE;
    /// Negative infinity.
    pub const NEGATIVE_INFINITY: u16 = 0x0802;
    /// Reserved for future use.
    pub const RESERVED: u16 = 0x0801;
}

/// The raw 32-bit values of the FLOAT special values.
pub mod float_special {
    /// Not a number (invalid result).
    pub const NAN: u32 = 0x007F_FFFF;
    /// Not at this resolution.
    pub const NRES: u32 = 0x0080_0000;
    /// Positive infinity.
    pub const POSITIVE_INFINITY: u32 = 0x007F_FFFE;
    /// Negative infinity.
    pub const NEGATIVE_INFINITY: u32 = 0x0080_0002;
    /// Reserved for future use.
    pub const RESERVED: u32 = 0x0080_0001;
}

/// Decodes an SFLOAT from its raw little-endian 16-bit value. Every raw value decodes.
pub fn sfloat(raw: u16) -> Float11073 {
    let special = match raw {
        sfloat_special::NAN => Some(AbsentReason::NotANumber),
        sfloat_special::NRES => Some(AbsentReason::NotAtThisResolution),
        sfloat_special::POSITIVE_INFINITY => Some(AbsentReason::PositiveInfinity),
        sfloat_special::NEGATIVE_INFINITY => Some(AbsentReason::NegativeInfinity),
        sfloat_special::RESERVED => Some(AbsentReason::Reserved),
        _ => None,
    };
    if let Some(reason) = special {
        return Float11073 {
            measurement: Measurement::Absent(reason),
            reserved_mantissa: false,
        };
    }
    // Sign-extend the 12-bit mantissa and the 4-bit exponent.
    let raw_mantissa = raw & 0x0FFF;
    let mantissa = i64::from(((raw_mantissa << 4) as i16) >> 4);
    let exponent = ((raw as i16) >> 12) as i8;
    // An SFLOAT's exponent is within -8..=7, so `scaled` always has a value; the default
    // is unreachable and only avoids a panic path.
    Float11073 {
        measurement: Measurement::Value(scaled(mantissa, exponent).unwrap_or_default()),
        reserved_mantissa: (0x07FE..=0x0802).contains(&raw_mantissa),
    }
}

/// Decodes a FLOAT from its raw little-endian 32-bit value.
pub fn float(raw: u32) -> Result<Float11073, OutOfRange> {
    let special = match raw {
        float_special::NAN => Some(AbsentReason::NotANumber),
        float_special::NRES => Some(AbsentReason::NotAtThisResolution),
        float_special::POSITIVE_INFINITY => Some(AbsentReason::PositiveInfinity),
        float_special::NEGATIVE_INFINITY => Some(AbsentReason::NegativeInfinity),
        float_special::RESERVED => Some(AbsentReason::Reserved),
        _ => None,
    };
    if let Some(reason) = special {
        return Ok(Float11073 {
            measurement: Measurement::Absent(reason),
            reserved_mantissa: false,
        });
    }
    let raw_mantissa = raw & 0x00FF_FFFF;
    let mantissa = i64::from(((raw_mantissa << 8) as i32) >> 8);
    let exponent = (raw >> 24) as u8 as i8;
    let value = scaled(mantissa, exponent).ok_or(OutOfRange { exponent })?;
    Ok(Float11073 {
        measurement: Measurement::Value(value),
        reserved_mantissa: (0x007F_FFFE..=0x0080_0002).contains(&raw_mantissa),
    })
}

/// `mantissa × 10^exponent` as an exact decimal whose scale is `-exponent` (or 0).
fn scaled(mantissa: i64, exponent: i8) -> Option<Decimal> {
    if exponent <= 0 {
        let scale = u32::from(exponent.unsigned_abs());
        if scale > 28 {
            return None;
        }
        Some(Decimal::new(mantissa, scale))
    } else {
        let mut value = Decimal::from(mantissa);
        for _ in 0..exponent {
            value = value.checked_mul(Decimal::TEN)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::test_support::text;

    fn sf(bytes: [u8; 2]) -> String {
        text(sfloat(u16::from_le_bytes(bytes)).measurement)
    }

    fn fl(bytes: [u8; 4]) -> String {
        text(float(u32::from_le_bytes(bytes)).unwrap().measurement)
    }

    // §1.3 worked examples, one test per row.

    #[test]
    fn sfloat_65_f0_is_10_point_1() {
        assert_eq!(sf([0x65, 0xF0]), "10.1");
    }

    #[test]
    fn sfloat_14_f0_is_2_point_0_keeping_one_decimal() {
        assert_eq!(sf([0x14, 0xF0]), "2.0");
    }

    #[test]
    fn sfloat_c8_e0_is_2_point_00_keeping_two_decimals() {
        assert_eq!(sf([0xC8, 0xE0]), "2.00");
    }

    #[test]
    fn sfloat_02_10_is_20_with_a_positive_exponent() {
        assert_eq!(sf([0x02, 0x10]), "20");
    }

    #[test]
    fn sfloat_2e_0b_is_minus_1234_with_a_sign_extended_mantissa() {
        assert_eq!(sf([0x2E, 0x0B]), "-1234");
    }

    #[test]
    fn sfloat_bd_f0_is_18_point_9_with_a_sign_extended_exponent() {
        assert_eq!(sf([0xBD, 0xF0]), "18.9");
    }

    #[test]
    fn sfloat_8a_00_is_138() {
        assert_eq!(sf([0x8A, 0x00]), "138");
    }

    #[test]
    fn sfloat_64_b0_is_0_point_00100_kilograms_per_litre() {
        assert_eq!(sf([0x64, 0xB0]), "0.00100");
    }

    #[test]
    fn sfloat_37_c0_is_0_point_0055_moles_per_litre() {
        assert_eq!(sf([0x37, 0xC0]), "0.0055");
    }

    #[test]
    fn float_87_d6_12_fe_is_12345_point_67() {
        assert_eq!(fl([0x87, 0xD6, 0x12, 0xFE]), "12345.67");
    }

    #[test]
    fn float_b0_0e_00_fe_is_37_point_60() {
        assert_eq!(fl([0xB0, 0x0E, 0x00, 0xFE]), "37.60");
    }

    #[test]
    fn float_2e_fb_ff_00_is_minus_1234() {
        assert_eq!(fl([0x2E, 0xFB, 0xFF, 0x00]), "-1234");
    }

    #[test]
    fn float_ff_ff_7f_00_is_not_a_number() {
        assert_eq!(fl([0xFF, 0xFF, 0x7F, 0x00]), "NotANumber");
    }

    // §1.2 special values.

    #[test]
    fn sfloat_special_values_map_to_absent_reasons() {
        assert_eq!(sf([0xFF, 0x07]), "NotANumber");
        assert_eq!(sf([0x00, 0x08]), "NotAtThisResolution");
        assert_eq!(sf([0xFE, 0x07]), "PositiveInfinity");
        assert_eq!(sf([0x02, 0x08]), "NegativeInfinity");
        assert_eq!(sf([0x01, 0x08]), "Reserved");
    }

    #[test]
    fn float_special_values_map_to_absent_reasons() {
        assert_eq!(fl([0x00, 0x00, 0x80, 0x00]), "NotAtThisResolution");
        assert_eq!(fl([0xFE, 0xFF, 0x7F, 0x00]), "PositiveInfinity");
        assert_eq!(fl([0x02, 0x00, 0x80, 0x00]), "NegativeInfinity");
        assert_eq!(fl([0x01, 0x00, 0x80, 0x00]), "Reserved");
    }

    #[test]
    fn reserved_mantissas_with_a_non_zero_exponent_are_numbers_marked_reserved() {
        let f = sfloat(0x17FF);
        assert_eq!(f.measurement, Measurement::Value(Decimal::from(20470)));
        assert!(f.reserved_mantissa);
        let f = sfloat(0xF802);
        assert_eq!(f.measurement.value().unwrap().to_string(), "-204.6");
        assert!(f.reserved_mantissa);
        let f = float(0x017F_FFFF).unwrap();
        assert_eq!(f.measurement, Measurement::Value(Decimal::from(83_886_070)));
        assert!(f.reserved_mantissa);
        assert!(!sfloat(0x07FD).reserved_mantissa);
        assert!(!sfloat(0x0803).reserved_mantissa);
    }

    #[test]
    fn every_sfloat_decodes_and_only_the_five_specials_are_absent() {
        let mut absent = 0;
        for raw in 0..=u16::MAX {
            if sfloat(raw).measurement.value().is_none() {
                absent += 1;
            }
        }
        assert_eq!(absent, 5);
    }

    #[test]
    fn every_sfloat_value_keeps_its_exponent_as_precision() {
        for raw in (0..=u16::MAX).step_by(7) {
            let exponent = ((raw as i16) >> 12) as i32;
            if let Measurement::Value(v) = sfloat(raw).measurement {
                assert_eq!(v.scale() as i32, (-exponent).max(0), "{raw:#06x}");
            }
        }
    }

    #[test]
    fn float_exponents_beyond_the_decimal_range_are_errors_not_panics() {
        assert_eq!(float(0x8000_0001), Err(OutOfRange { exponent: -128 }));
        assert_eq!(float(0x7F00_0001), Err(OutOfRange { exponent: 127 }));
        assert!(float(0xE400_0001).is_ok()); // exponent -28
        assert_eq!(
            float(0x1C00_0001).unwrap().measurement.value().unwrap(),
            Decimal::from_i128_with_scale(10_i128.pow(28), 0)
        );
    }
}
