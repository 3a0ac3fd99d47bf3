//! `[ble]` profiles: the built-in GATT decoders (read from the drivers' registry) and the
//! checks of a BLE profile's recognition rule and fields.

use iomt_drivers::ble::FieldUnits;
use toml::Spanned;

use super::{raw, BleSpec, Check};
use crate::{catalog, ucum};

/// A built-in GATT decoder a profile names: a characteristic of the drivers' registry
/// (`iomt_drivers::ble::registry`) that has a profile decoder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GattDecoder {
    /// The decoder name profiles use.
    pub name: &'static str,
    /// The characteristic it decodes (16-bit UUID).
    pub characteristic: u16,
    /// The fields it produces, with their units.
    pub fields: &'static [FieldUnits],
}

impl GattDecoder {
    /// The names of the fields it produces.
    pub fn field_names(&self) -> impl Iterator<Item = &'static str> {
        self.fields.iter().map(|f| f.name)
    }
}

/// The built-in GATT decoders, read from the drivers' registry: the characteristics a
/// profile may name, and the quantity names their final measurements produce (a
/// profile's fields must be among them).
pub fn gatt_decoders() -> impl Iterator<Item = GattDecoder> {
    iomt_drivers::ble::registry::profile_decoders().map(|(name, e)| GattDecoder {
        name,
        characteristic: e.uuid16,
        fields: e.fields,
    })
}

/// Normalizes a 16-bit (`"1810"`, `"0x1810"`) or 128-bit service UUID to the 128-bit form.
pub fn normalize_uuid(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let short = s.strip_prefix("0x").unwrap_or(&s);
    if short.len() == 4 && short.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!("0000{short}-0000-1000-8000-00805f9b34fb"));
    }
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    (parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, l)| p.len() == l && p.chars().all(|c| c.is_ascii_hexdigit())))
    .then_some(s)
}

pub(super) fn ble_spec(
    b: &Spanned<raw::RawBle>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<BleSpec> {
    let span = b.span();
    let b = b.get_ref();
    let names: Vec<&Spanned<String>> = b.decoder.iter().chain(&b.decoders).collect();
    if names.is_empty() {
        c.at(
            span.clone(),
            "missing key `decoder`: a BLE profile needs `decoder` (or `decoders`, one per measurement characteristic)",
        );
        return None;
    }
    if b.decoder.is_some() && !b.decoders.is_empty() {
        c.at(
            span.clone(),
            "give `decoder` or `decoders`, not both (`decoders` lists every measurement characteristic)",
        );
    }
    let mut decoders: Vec<GattDecoder> = Vec::new();
    for n in &names {
        let name = n.get_ref();
        let Some(decoder) = gatt_decoders().find(|d| d.name == name) else {
            let known: Vec<_> = gatt_decoders().map(|d| d.name).collect();
            c.at(
                n.span(),
                format!(
                    "unknown GATT decoder `{name}`; built-in decoders: {}",
                    known.join(", ")
                ),
            );
            return None;
        };
        if decoders.contains(&decoder) {
            c.at(n.span(), format!("decoder `{name}` is listed twice"));
            continue;
        }
        decoders.push(decoder);
    }
    let decoder_names = decoders
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ");
    let mut services = Vec::new();
    for s in &b.services {
        match normalize_uuid(s.get_ref()) {
            Some(u) => services.push(u),
            None => c.at(
                s.span(),
                format!(
                    "`{}` is not a Bluetooth UUID (16-bit like `1810`, or 128-bit)",
                    s.get_ref()
                ),
            ),
        }
    }
    if b.services.is_empty() && b.name_prefix.is_none() {
        c.at(
            span.clone(),
            "a BLE profile needs a recognition rule: `services` or `name_prefix`",
        );
    }
    use iomt_drivers::ble::{Characteristic as Gatt, BATTERY_FIELD};
    let mut produced: Vec<FieldUnits> = decoders
        .iter()
        .flat_map(|d| d.fields.iter().copied())
        .collect();
    // Every BLE device may report its Battery Level (0x2A19), read at each connection.
    produced.extend(iomt_drivers::ble::fields(Gatt::BatteryLevel));
    for f in fields {
        let f = f.get_ref();
        let n = f.name.get_ref();
        if !produced.iter().any(|d| d.name == n.as_str()) {
            let mut names: Vec<&str> = Vec::new();
            for d in decoders.iter().flat_map(|d| d.field_names()) {
                if !names.contains(&d) {
                    names.push(d);
                }
            }
            c.at(
                f.name.span(),
                format!(
                    "decoder `{decoder_names}` produces no field `{n}`; it produces: {}, and {BATTERY_FIELD} (the Battery Level read at each connection)",
                    names.join(", ")
                ),
            );
            continue;
        }
        if let Some(unit) = &f.unit {
            c.at(
                unit.span(),
                format!(
                    "`unit` does not apply to BLE fields: decoder `{decoder_names}` takes the unit from each packet's flags"
                ),
            );
        }
        // The vital kind must be able to express what the decoder sends (e.g. `glucose`
        // in mol/L needs a molar kind such as `glucose_molar`).
        let units = produced
            .iter()
            .find(|p| p.name == n.as_str())
            .map(|p| p.units)
            .unwrap_or_default();
        if let Some(kind) = catalog::kind(f.vital.get_ref()) {
            let kind_dim = ucum::dimension(kind.unit);
            if !units.is_empty() && !units.iter().any(|u| ucum::dimension(u) == kind_dim) {
                c.at(
                    f.vital.span(),
                    format!(
                        "field `{n}` of decoder `{decoder_names}` comes in {}, which vital `{}` (in `{}`) cannot express",
                        units.join(" or "),
                        kind.key,
                        kind.unit
                    ),
                );
            }
        }
    }
    Some(BleSpec {
        services,
        name_prefix: b.name_prefix.clone(),
        decoders,
    })
}
