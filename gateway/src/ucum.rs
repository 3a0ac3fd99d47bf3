//! The UCUM units the gateway understands, and exact conversions between them.
//!
//! A full UCUM grammar would accept units the gateway could not convert anyway, so the
//! gateway keeps a curated table of the case-sensitive UCUM codes that medical devices and
//! the FHIR vital-signs profiles use. A unit outside the table is refused when a profile is
//! checked, with a suggestion for the usual mistakes (`mmHg` for `mm[Hg]`, `bpm` for `/min`).

use rust_decimal::prelude::*;
use rust_decimal::Decimal;

/// What a unit measures; conversions only happen within one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// Events per minute (heart rate, respiratory rate).
    Rate,
    /// A fraction in percent.
    Percent,
    /// Pressure.
    Pressure,
    /// Temperature.
    Temperature,
    /// Mass.
    Mass,
    /// Length.
    Length,
    /// Mass per area (BMI).
    MassPerArea,
    /// Mass concentration (glucose in mg/dL).
    MassConcentration,
    /// Molar concentration (glucose in mmol/L).
    MolarConcentration,
    /// Rate of change of a mass concentration (a CGM's glucose trend in mg/dL/min).
    MassConcentrationRate,
    /// Energy (a body composition scale's basal metabolism, in kJ).
    Energy,
    /// Electrical resistance (a body composition scale's impedance, in ohms).
    Resistance,
}

/// How a unit converts to the base unit of its dimension: `base = value * factor + offset`.
#[derive(Debug, Clone, Copy)]
struct Unit {
    code: &'static str,
    dimension: Dimension,
    factor: &'static str,
    offset: &'static str,
}

const fn unit(code: &'static str, dimension: Dimension, factor: &'static str) -> Unit {
    Unit {
        code,
        dimension,
        factor,
        offset: "0",
    }
}

/// The known units. The first unit of each dimension is its base.
const UNITS: &[Unit] = &[
    unit("/min", Dimension::Rate, "1"),
    unit("%", Dimension::Percent, "1"),
    unit("mm[Hg]", Dimension::Pressure, "1"),
    // 1 kPa = 7.500616827 mm[Hg]
    unit("kPa", Dimension::Pressure, "7.500616827"),
    unit("Cel", Dimension::Temperature, "1"),
    // °C = (°F - 32) × 5/9
    Unit {
        code: "[degF]",
        dimension: Dimension::Temperature,
        factor: "0.5555555555555555555555555556",
        offset: "-17.777777777777777777777777778",
    },
    unit("kg", Dimension::Mass, "1"),
    unit("g", Dimension::Mass, "0.001"),
    unit("[lb_av]", Dimension::Mass, "0.45359237"),
    unit("cm", Dimension::Length, "1"),
    unit("m", Dimension::Length, "100"),
    unit("mm", Dimension::Length, "0.1"),
    unit("[in_i]", Dimension::Length, "2.54"),
    unit("kg/m2", Dimension::MassPerArea, "1"),
    unit("mg/dL", Dimension::MassConcentration, "1"),
    // GATT glucose in kg/L: 1 kg/L = 100 000 mg/dL
    unit("kg/L", Dimension::MassConcentration, "100000"),
    unit("mmol/L", Dimension::MolarConcentration, "1"),
    // GATT glucose in mol/L: 1 mol/L = 1000 mmol/L
    unit("mol/L", Dimension::MolarConcentration, "1000"),
    unit("mg/dL/min", Dimension::MassConcentrationRate, "1"),
    unit("kJ", Dimension::Energy, "1"),
    // The thermochemical kilocalorie: 4.184 kJ.
    unit("kcal", Dimension::Energy, "4.184"),
    unit("Ohm", Dimension::Resistance, "1"),
];

/// Frequent non-UCUM spellings and the UCUM code meant.
const SUGGESTIONS: &[(&str, &str)] = &[
    ("mmhg", "mm[Hg]"),
    ("mm hg", "mm[Hg]"),
    ("bpm", "/min"),
    ("beats/min", "/min"),
    ("1/min", "/min"),
    ("rpm", "/min"),
    ("brpm", "/min"),
    ("breaths/min", "/min"),
    ("c", "Cel"),
    ("°c", "Cel"),
    ("degc", "Cel"),
    ("celsius", "Cel"),
    ("f", "[degF]"),
    ("°f", "[degF]"),
    ("degf", "[degF]"),
    ("lb", "[lb_av]"),
    ("lbs", "[lb_av]"),
    ("in", "[in_i]"),
    ("inch", "[in_i]"),
    ("kg/m^2", "kg/m2"),
    ("kg/m²", "kg/m2"),
    ("mg/dl", "mg/dL"),
    ("mmol/l", "mmol/L"),
    ("kpa", "kPa"),
    ("percent", "%"),
];

fn find(code: &str) -> Option<&'static Unit> {
    UNITS.iter().find(|u| u.code == code)
}

fn dec(s: &str) -> Decimal {
    // The table above holds only valid decimal literals; a unit test checks every one.
    Decimal::from_str(s).unwrap_or(Decimal::ZERO)
}

/// Whether `code` is a UCUM unit the gateway knows.
pub fn is_known(code: &str) -> bool {
    find(code).is_some()
}

/// The dimension of a known unit.
pub fn dimension(code: &str) -> Option<Dimension> {
    find(code).map(|u| u.dimension)
}

/// An explanation of why `code` is not accepted, with the UCUM code probably meant.
pub fn explain_unknown(code: &str) -> String {
    let lower = code.trim().to_lowercase();
    if let Some((_, meant)) = SUGGESTIONS.iter().find(|(wrong, _)| *wrong == lower) {
        return format!("`{code}` is not a UCUM unit code; write `{meant}`");
    }
    if let Some(u) = UNITS.iter().find(|u| u.code.to_lowercase() == lower) {
        return format!(
            "UCUM codes are case-sensitive: write `{}`, not `{code}`",
            u.code
        );
    }
    let known: Vec<_> = UNITS.iter().map(|u| u.code).collect();
    format!(
        "`{code}` is not a UCUM unit the gateway knows; use one of: {}",
        known.join(", ")
    )
}

/// A human-readable rendering of a UCUM code, for `Quantity.unit`.
pub fn display(code: &str) -> &str {
    match code {
        "mm[Hg]" => "mmHg",
        "Cel" => "°C",
        "[degF]" => "°F",
        "[lb_av]" => "lb",
        "[in_i]" => "in",
        "/min" => "/min",
        other => other,
    }
}

/// Why a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// One of the units is not in the table.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// The units measure different things.
    #[error("cannot convert `{from}` to `{to}`: they measure different things")]
    Incompatible {
        /// The source unit.
        from: String,
        /// The target unit.
        to: String,
    },
    /// The result does not fit a decimal.
    #[error("the value is too large to convert from `{from}` to `{to}`")]
    Overflow {
        /// The source unit.
        from: String,
        /// The target unit.
        to: String,
    },
}

/// Converts `value` from unit `from` to unit `to`, keeping the measurement's precision.
///
/// Precision rule: a conversion by a power of ten is exact and moves the decimal point
/// (`0.00100 kg/L` becomes `100 mg/dL`); any other factor keeps as many decimals as the
/// input had, less the factor's order of magnitude (`18.9 kPa` becomes `141.8 mm[Hg]`,
/// `176.4 [lb_av]` becomes `80.01 kg`); a temperature keeps its decimals (`98.6 [degF]`
/// becomes `37.0 Cel`).
pub fn convert(value: Decimal, from: &str, to: &str) -> Result<Decimal, ConversionError> {
    if from == to {
        return Ok(value);
    }
    let f = find(from).ok_or_else(|| ConversionError::UnknownUnit(from.into()))?;
    let t = find(to).ok_or_else(|| ConversionError::UnknownUnit(to.into()))?;
    if f.dimension != t.dimension {
        return Err(ConversionError::Incompatible {
            from: from.into(),
            to: to.into(),
        });
    }
    let overflow = || ConversionError::Overflow {
        from: from.into(),
        to: to.into(),
    };
    // value → base → target
    let base = value
        .checked_mul(dec(f.factor))
        .and_then(|v| v.checked_add(dec(f.offset)))
        .ok_or_else(overflow)?;
    let converted = base
        .checked_sub(dec(t.offset))
        .and_then(|v| v.checked_div(dec(t.factor)))
        .ok_or_else(overflow)?;
    let ratio = dec(f.factor)
        .checked_div(dec(t.factor))
        .ok_or_else(overflow)?;
    // An affine conversion (temperatures) keeps the input's decimals; a pure factor keeps
    // the significant digits by shifting them by the factor's order of magnitude.
    let affine = f.offset != "0" || t.offset != "0";
    let magnitude = if affine { 0 } else { ratio.abs().log10_floor() };
    let decimals = (i64::from(value.scale()) - magnitude).clamp(0, 28) as u32;
    let mut out = converted.round_dp(decimals);
    out.rescale(decimals);
    Ok(out.normalize_sign())
}

/// Small helpers on [`Decimal`] the converter needs.
trait DecimalExt {
    fn log10_floor(&self) -> i64;
    fn normalize_sign(self) -> Self;
}

impl DecimalExt for Decimal {
    /// floor(log10(self)) for a positive decimal.
    fn log10_floor(&self) -> i64 {
        if self.is_zero() {
            return 0;
        }
        let digits = self.trunc().to_string().trim_start_matches('-').len() as i64;
        if self.trunc().is_zero() {
            // 0.00123 → -3: count leading zeros after the point.
            let frac = self.to_string();
            let after = frac.split('.').nth(1).unwrap_or("");
            -(after.chars().take_while(|c| *c == '0').count() as i64 + 1)
        } else {
            digits - 1
        }
    }

    /// Turns `-0.0` into `0.0`.
    fn normalize_sign(mut self) -> Self {
        if self.is_zero() {
            self.set_sign_positive(true);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn every_table_entry_is_a_valid_decimal() {
        for u in UNITS {
            assert!(Decimal::from_str(u.factor).is_ok(), "{}", u.code);
            assert!(Decimal::from_str(u.offset).is_ok(), "{}", u.code);
        }
        for (_, meant) in SUGGESTIONS {
            assert!(is_known(meant), "suggestion {meant} must be known");
        }
    }

    #[test]
    fn glucose_kg_per_litre_becomes_mg_per_decilitre_exactly() {
        assert_eq!(
            convert(d("0.00100"), "kg/L", "mg/dL").unwrap().to_string(),
            "100"
        );
        assert_eq!(
            convert(d("0.0055"), "mol/L", "mmol/L").unwrap().to_string(),
            "5.5"
        );
    }

    #[test]
    fn kilopascal_becomes_millimetres_of_mercury_keeping_precision() {
        assert_eq!(
            convert(d("18.9"), "kPa", "mm[Hg]").unwrap().to_string(),
            "141.8"
        );
        assert_eq!(
            convert(d("16"), "kPa", "mm[Hg]").unwrap().to_string(),
            "120"
        );
    }

    #[test]
    fn fahrenheit_becomes_celsius() {
        assert_eq!(
            convert(d("98.6"), "[degF]", "Cel").unwrap().to_string(),
            "37.0"
        );
        assert_eq!(
            convert(d("37.0"), "Cel", "[degF]").unwrap().to_string(),
            "98.6"
        );
    }

    #[test]
    fn metres_become_centimetres_and_pounds_become_kilograms() {
        assert_eq!(convert(d("1.75"), "m", "cm").unwrap().to_string(), "175");
        assert_eq!(
            convert(d("176.4"), "[lb_av]", "kg").unwrap().to_string(),
            "80.01"
        );
    }

    #[test]
    fn incompatible_and_unknown_units_are_errors() {
        assert!(matches!(
            convert(d("1"), "kg", "cm"),
            Err(ConversionError::Incompatible { .. })
        ));
        assert!(matches!(
            convert(d("1"), "mg/dL", "mmol/L"),
            Err(ConversionError::Incompatible { .. })
        ));
        assert!(matches!(
            convert(d("1"), "mmHg", "kPa"),
            Err(ConversionError::UnknownUnit(_))
        ));
    }

    #[test]
    fn common_mistakes_get_a_suggestion() {
        assert!(explain_unknown("mmHg").contains("`mm[Hg]`"));
        assert!(explain_unknown("bpm").contains("`/min`"));
        assert!(explain_unknown("KG").contains("case-sensitive"));
        assert!(explain_unknown("furlong").contains("one of"));
    }
}
