//! The transport-independent part of a `[[field]]`: its vital kind, unit, range and
//! codings, and the keys only some transports use.

use std::ops::Range;
use std::str::FromStr;

use iomt_drivers::decode::FieldSpec;
use rust_decimal::Decimal;

use super::{raw, Check, FieldMapping, OwnedLoinc, OwnedMdc};
use crate::{catalog, ucum};

/// A `[[field]]` key that only some transports use, and where it appears (if it does).
struct TransportOnlyKey {
    key: &'static str,
    allowed: &'static [&'static str],
    span: Option<Range<usize>>,
}

/// The `[[field]]` keys that only some transports use.
fn transport_only_keys(f: &raw::RawField) -> [TransportOnlyKey; 12] {
    let k = |key, allowed, span| TransportOnlyKey { key, allowed, span };
    [
        k("pointer", &["mqtt"], f.pointer.as_ref().map(|s| s.span())),
        k("signal", &["sim"], f.signal.as_ref().map(|s| s.span())),
        k("capture", &["serial"], f.capture.as_ref().map(|s| s.span())),
        k(
            "scale",
            &["serial", "mqtt"],
            f.scale.as_ref().map(|s| s.span()),
        ),
        k(
            "no_reading",
            &["serial", "mqtt"],
            (!f.no_reading.is_empty()).then(|| f.name.span()),
        ),
        k(
            "unit",
            &["serial", "mqtt"],
            f.unit.as_ref().map(|s| s.span()),
        ),
        k("offset", &["serial"], f.offset.as_ref().map(|s| s.span())),
        k("type", &["serial"], f.ty.as_ref().map(|s| s.span())),
        k("endian", &["serial"], f.endian.map(|_| f.name.span())),
        k("mask", &["serial"], f.mask.as_ref().map(|s| s.span())),
        k("shift", &["serial"], f.shift.as_ref().map(|s| s.span())),
        k("bits", &["serial"], f.bits.as_ref().map(|s| s.span())),
    ]
}

pub(super) fn field_mapping(
    f: &raw::RawField,
    transport: &str,
    c: &mut Check<'_>,
) -> Option<FieldMapping> {
    for TransportOnlyKey { key, allowed, span } in transport_only_keys(f) {
        // BLE fields get a more specific message about `unit` from the BLE checks.
        if key == "unit" && transport == "ble" {
            continue;
        }
        if let Some(span) = span {
            if !allowed.contains(&transport) {
                c.at(
                    span,
                    format!(
                        "`{key}` is not used by {transport} profiles (only by {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
    let vital = f.vital.get_ref();
    let Some(kind) = catalog::kind(vital) else {
        c.at(
            f.vital.span(),
            format!(
                "unknown vital kind `{vital}`; known kinds: {}",
                catalog::keys().join(", ")
            ),
        );
        return None;
    };
    if let Some(unit) = &f.unit {
        let u = unit.get_ref();
        if !ucum::is_known(u) {
            c.at(unit.span(), ucum::explain_unknown(u));
        } else if ucum::dimension(u) != ucum::dimension(kind.unit) {
            c.at(
                unit.span(),
                format!(
                    "unit `{u}` cannot express `{}` (emitted in `{}`)",
                    kind.key, kind.unit
                ),
            );
        }
    }
    if let Some(scale) = &f.scale {
        let s = *scale.get_ref();
        if !s.is_finite() || s == 0.0 {
            c.at(scale.span(), "scale must be a finite, non-zero number");
        }
    }
    let mut plausible = kind.plausible;
    if let Some(range) = &f.range {
        match range.get_ref().as_slice() {
            [low, high] if low < high => plausible = (*low, *high),
            _ => c.at(
                range.span(),
                "range must be two numbers `[low, high]` with low < high",
            ),
        }
    }
    let mut loinc: Option<OwnedLoinc> = kind.loinc.map(Into::into);
    if let Some(code) = &f.loinc {
        let re_ok = code.get_ref().split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && a.len() <= 7
                && a.chars().all(|c| c.is_ascii_digit())
                && b.len() == 1
                && b.chars().all(|c| c.is_ascii_digit())
        });
        if !re_ok {
            c.at(
                code.span(),
                format!(
                    "`{}` is not a LOINC code (digits, a dash and a check digit, e.g. `8867-4`)",
                    code.get_ref()
                ),
            );
        }
        let Some(display) = &f.display else {
            c.at(code.span(), "a `loinc` override needs its `display` too");
            return None;
        };
        loinc = Some(OwnedLoinc {
            code: code.get_ref().clone(),
            display: display.get_ref().clone(),
        });
    } else if let Some(display) = &f.display {
        match &mut loinc {
            Some(l) => l.display = display.get_ref().clone(),
            None => c.at(
                display.span(),
                format!(
                    "`{}` has no LOINC coding whose display could be overridden; give `loinc` too",
                    kind.key
                ),
            ),
        }
    }
    let mdc = match &f.mdc {
        Some(code) => Some(OwnedMdc {
            code: *code.get_ref(),
            refid: String::new(),
        }),
        None => kind.mdc.map(Into::into),
    };
    Some(FieldMapping {
        name: f.name.get_ref().clone(),
        kind,
        loinc,
        mdc,
        plausible,
    })
}

/// The field's raw unit: the profile's `unit`, else the kind's catalog unit.
fn raw_unit(f: &raw::RawField) -> String {
    f.unit
        .as_ref()
        .map(|u| u.get_ref().clone())
        .or_else(|| catalog::kind(f.vital.get_ref()).map(|k| k.unit.to_string()))
        .unwrap_or_default()
}

pub(super) fn field_spec(f: &raw::RawField, source: String, no_reading: Vec<String>) -> FieldSpec {
    FieldSpec {
        name: f.name.get_ref().clone(),
        source,
        unit: raw_unit(f),
        scale: f
            .scale
            .as_ref()
            .and_then(|s| Decimal::from_str(&s.get_ref().to_string()).ok()),
        no_reading,
    }
}
