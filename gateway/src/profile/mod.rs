//! Device profiles: the clinical engineer's declarative description of a device model.
//!
//! A profile (one TOML file in `device-profiles/`) says which device model it is, how to
//! recognize it on its transport, how to decode its data, and how each decoded field maps
//! to FHIR through the built-in [`catalog`](crate::catalog). Parsing is strict: unknown keys,
//! wrong types, unknown vital kinds, non-UCUM units, missing decoders and duplicate fields
//! are errors, each reported as `file:line: problem` with the fix where one is obvious.
//! The format is documented in `device-profiles/README.md`.

mod ble;
mod field;
mod load;
mod mqtt;
mod raw;
mod serial;
mod sim;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use iomt_drivers::decode::json::JsonDecoder;
use iomt_drivers::sim::Signal;
use iomt_drivers::Transport;

pub use ble::{gatt_decoders, normalize_uuid, GattDecoder};
pub use load::{duplicate_ids, files_in, load_all, load_file};
pub use raw::{FlowControl, Parity};
pub use serial::{parse_hex, SerialSpec};

use crate::catalog::{Kind, Loinc, Mdc, Panel};

/// One problem in one profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// The file (or `<embedded>/NAME` for built-in profiles).
    pub file: PathBuf,
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong, and how to fix it where that is clear.
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Every problem found in one or more profile files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileErrors(pub Vec<ProfileError>);

impl fmt::Display for ProfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// How a BLE device is recognized and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleSpec {
    /// Advertised service UUIDs (lowercase, 128-bit form).
    pub services: Vec<String>,
    /// Advertised local-name prefix.
    pub name_prefix: Option<String>,
    /// The built-in decoders, one per measurement characteristic (at least one; the
    /// first is `decoder`, or the first of `decoders`).
    pub decoders: Vec<GattDecoder>,
}

impl BleSpec {
    /// The measurement characteristics the profile maps (16-bit UUIDs).
    pub fn characteristics(&self) -> impl Iterator<Item = u16> + '_ {
        self.decoders.iter().map(|d| d.characteristic)
    }

    /// Whether some decoder of the profile produces field `name`.
    pub fn produces(&self, name: &str) -> bool {
        self.decoders
            .iter()
            .any(|d| d.field_names().any(|f| f == name))
    }
}

/// MQTT subscription and JSON layout.
#[derive(Debug, Clone)]
pub struct MqttSpec {
    /// Topic filter.
    pub topic: String,
    /// The JSON decoder.
    pub json: JsonDecoder,
    /// The topic level (0-based) holding the device id, when the payload has none.
    pub device_id_level: Option<usize>,
}

/// Simulator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSpec {
    /// How readings are stamped.
    pub clock: raw::SimClock,
    /// (field name, signal) pairs.
    pub signals: Vec<(String, Signal)>,
}

pub use raw::SimClock;

/// The transport-specific part of a profile.
#[derive(Debug, Clone)]
pub enum TransportSpec {
    /// Bluetooth LE.
    Ble(BleSpec),
    /// Serial port.
    Serial(SerialSpec),
    /// MQTT.
    Mqtt(MqttSpec),
    /// Simulator.
    Sim(SimSpec),
}

impl TransportSpec {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            TransportSpec::Ble(_) => Transport::Ble,
            TransportSpec::Serial(_) => Transport::Serial,
            TransportSpec::Mqtt(_) => Transport::Mqtt,
            TransportSpec::Sim(_) => Transport::Sim,
        }
    }

    /// The simulator spec, if this is a simulator profile.
    pub fn as_sim(&self) -> Option<&SimSpec> {
        match self {
            TransportSpec::Sim(s) => Some(s),
            _ => None,
        }
    }

    /// The serial spec, if this is a serial profile.
    pub fn as_serial(&self) -> Option<&SerialSpec> {
        match self {
            TransportSpec::Serial(s) => Some(s),
            _ => None,
        }
    }

    /// The BLE spec, if this is a BLE profile.
    pub fn as_ble(&self) -> Option<&BleSpec> {
        match self {
            TransportSpec::Ble(s) => Some(s),
            _ => None,
        }
    }

    /// The MQTT spec, if this is an MQTT profile.
    pub fn as_mqtt(&self) -> Option<&MqttSpec> {
        match self {
            TransportSpec::Mqtt(s) => Some(s),
            _ => None,
        }
    }
}

/// How one field maps to FHIR.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    /// The field name.
    pub name: String,
    /// The catalog kind.
    pub kind: &'static Kind,
    /// LOINC coding (the catalog's unless overridden); `None` for a kind without one.
    pub loinc: Option<OwnedLoinc>,
    /// MDC coding (the catalog's unless overridden).
    pub mdc: Option<OwnedMdc>,
    /// Plausible range, in the catalog unit of the kind (`kind.unit`).
    pub plausible: (f64, f64),
}

/// A LOINC coding owned by a profile (overrides are not `'static`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLoinc {
    /// The code.
    pub code: String,
    /// The display.
    pub display: String,
}

/// An MDC coding owned by a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMdc {
    /// The decimal code.
    pub code: u32,
    /// The reference id (empty for overrides without one).
    pub refid: String,
}

impl From<Loinc> for OwnedLoinc {
    fn from(l: Loinc) -> Self {
        Self {
            code: l.code.into(),
            display: l.display.into(),
        }
    }
}

impl From<Mdc> for OwnedMdc {
    fn from(m: Mdc) -> Self {
        Self {
            code: m.code,
            refid: m.refid.into(),
        }
    }
}

/// A validated device profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Transport part.
    pub transport: TransportSpec,
    /// Field mappings, in file order.
    pub fields: Vec<FieldMapping>,
}

impl Profile {
    /// The mapping of a field, by name.
    pub fn field(&self, name: &str) -> Option<&FieldMapping> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Byte offset → 1-based line.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Collects errors while validating one file.
struct Check<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ProfileError>,
}

impl Check<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(ProfileError {
            file: self.file.to_path_buf(),
            line: line_of(self.text, span.start),
            message: message.into(),
        });
    }
}

/// Parses and validates one profile from its text; `file` names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<Profile, ProfileErrors> {
    let raw: raw::RawProfile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        ProfileErrors(vec![ProfileError {
            file: file.to_path_buf(),
            line,
            message: plain_words(e.message().trim()),
        }])
    })?;
    let mut check = Check {
        file,
        text,
        errors: Vec::new(),
    };
    let profile = validate(raw, &mut check);
    match profile {
        Some(p) if check.errors.is_empty() => Ok(p),
        _ => Err(ProfileErrors(check.errors)),
    }
}

/// Rewords the TOML parser's messages for people who write profiles, not Rust: profile
/// keys are "keys" (a `[[field]]` is something else), and types have plain names.
fn plain_words(message: &str) -> String {
    let mut m = message
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected one of", "expected one of the keys");
    for (rust, plain) in [
        ("expected u32", "expected a whole number"),
        ("expected u8", "expected a small whole number"),
        ("expected usize", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list `[...]`"),
        ("expected a string", "expected a text in quotes"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

fn validate(raw: raw::RawProfile, c: &mut Check<'_>) -> Option<Profile> {
    let id = raw.id.get_ref();
    if id.is_empty()
        || !id
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
    {
        c.at(
            raw.id.span(),
            format!("profile id `{id}` must be lowercase letters, digits and dashes"),
        );
    }

    let mut transports = Vec::new();
    if let Some(b) = &raw.ble {
        transports.push(("ble", b.span()));
    }
    if let Some(s) = &raw.serial {
        transports.push(("serial", s.span()));
    }
    if let Some(m) = &raw.mqtt {
        transports.push(("mqtt", m.span()));
    }
    if let Some(s) = &raw.sim {
        transports.push(("sim", s.span()));
    }
    transports.sort_by_key(|(_, span)| span.start);
    let transport = match transports.as_slice() {
        [] => {
            c.at(0..0, "the profile has no transport: add one of the tables [ble], [serial], [mqtt] or [sim]");
            return None;
        }
        [(_, _)] => transports[0].0,
        [_, (name, span), ..] => {
            c.at(span.clone(), format!("a profile describes one transport, but [{name}] is the second one; split it into two profiles"));
            return None;
        }
    };

    if raw.fields.is_empty() {
        c.at(
            raw.id.span(),
            "the profile maps no fields: add at least one [[field]] table",
        );
    }

    // Fields common part.
    let mut mappings = Vec::new();
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for f in &raw.fields {
        let name = f.get_ref().name.get_ref();
        let line = line_of(c.text, f.get_ref().name.span().start);
        if let Some(first) = first_seen.get(name) {
            c.at(f.get_ref().name.span(), format!("duplicate field `{name}` (first defined at line {first}); each field name may appear once"));
            continue;
        }
        first_seen.insert(name.clone(), line);
        if let Some(m) = field::field_mapping(f.get_ref(), transport, c) {
            mappings.push(m);
        }
    }

    // Panels need their core components.
    let has = |key: &str| mappings.iter().any(|m: &FieldMapping| m.kind.key == key);
    if mappings
        .iter()
        .any(|m| m.kind.panel == Some(Panel::BloodPressure))
        && !(has("systolic") && has("diastolic"))
    {
        let span = raw.fields.first().map(|f| f.span()).unwrap_or(0..0);
        c.at(span, "a blood-pressure profile must map both `systolic` and `diastolic` (the 85354-9 panel needs both components)");
    }

    let spec = match transport {
        "ble" => raw
            .ble
            .as_ref()
            .and_then(|b| ble::ble_spec(b, &raw.fields, c))
            .map(TransportSpec::Ble),
        "serial" => raw
            .serial
            .as_ref()
            .and_then(|s| serial::serial_spec(s, &raw.fields, c))
            .map(TransportSpec::Serial),
        "mqtt" => raw
            .mqtt
            .as_ref()
            .and_then(|m| mqtt::mqtt_spec(m, &raw.fields, c))
            .map(TransportSpec::Mqtt),
        _ => raw
            .sim
            .as_ref()
            .and_then(|s| sim::sim_spec(s, &raw.fields, c))
            .map(TransportSpec::Sim),
    }?;

    Some(Profile {
        id: id.clone(),
        name: raw.name,
        manufacturer: raw.manufacturer,
        model: raw.model,
        source: c.file.to_path_buf(),
        transport: spec,
        fields: mappings,
    })
}

#[cfg(test)]
mod tests;
