//! Device profiles: the clinical engineer's declarative description of a device model.
//!
//! A profile (one TOML file in `device-profiles/`) says which device model it is, how to
//! recognize it on its transport, how to decode its data, and how each decoded field maps
//! to FHIR through the built-in [`catalog`](crate::catalog). Parsing is strict: unknown keys,
//! wrong types, unknown vital kinds, non-UCUM units, missing decoders and duplicate fields
//! are errors, each reported as `file:line: problem` with the fix where one is obvious.
//! The format is documented in `device-profiles/README.md`.

mod raw;
mod serial;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use iomt_drivers::ble::FieldUnits;
use iomt_drivers::decode::json::{JsonDecoder, TimestampFormat as JsonTimestamp};
use iomt_drivers::decode::FieldSpec;
use iomt_drivers::sim::Signal;
use iomt_drivers::Transport;
use rust_decimal::Decimal;
use toml::Spanned;

pub use raw::{FlowControl, Parity};
pub use serial::{parse_hex, SerialSpec};

use crate::catalog::{self, Kind, Loinc, Mdc, Panel};
use crate::ucum;

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

/// How a BLE device is recognized and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleSpec {
    /// Advertised service UUIDs (lowercase, 128-bit form).
    pub services: Vec<String>,
    /// Advertised local-name prefix.
    pub name_prefix: Option<String>,
    /// The built-in decoder.
    pub decoder: GattDecoder,
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

/// Reads and validates one profile file.
pub fn load_file(path: &Path) -> Result<Profile, ProfileErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProfileErrors(vec![ProfileError {
            file: path.to_path_buf(),
            line: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// The profile files a path stands for: the file itself, or every `*.toml` in a directory
/// (sorted, not recursive).
pub fn files_in(path: &Path) -> Result<Vec<PathBuf>, ProfileErrors> {
    let fail = |message: String| {
        ProfileErrors(vec![ProfileError {
            file: path.to_path_buf(),
            line: 1,
            message,
        }])
    };
    if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(|e| fail(format!("cannot list the directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        Ok(files)
    } else if path.exists() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(fail("no such file or directory".into()))
    }
}

/// Loads every profile under `paths`, checking ids are unique across them. Returns all
/// problems at once.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Profile>, ProfileErrors> {
    let mut profiles = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match files_in(path) {
            Ok(files) => {
                for f in files {
                    match load_file(&f) {
                        Ok(p) => profiles.push(p),
                        Err(ProfileErrors(mut e)) => errors.append(&mut e),
                    }
                }
            }
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    errors.extend(duplicate_ids(&profiles));
    if errors.is_empty() {
        Ok(profiles)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// Errors for profiles sharing an id.
pub fn duplicate_ids(profiles: &[Profile]) -> Vec<ProfileError> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    let mut errors = Vec::new();
    for p in profiles {
        if let Some(first) = seen.insert(&p.id, &p.source) {
            errors.push(ProfileError {
                file: p.source.clone(),
                line: 1,
                message: format!(
                    "profile id `{}` is already used by {}",
                    p.id,
                    first.display()
                ),
            });
        }
    }
    errors
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
        if let Some(m) = field_mapping(f.get_ref(), transport, c) {
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
            .and_then(|b| ble_spec(b, &raw.fields, c))
            .map(TransportSpec::Ble),
        "serial" => raw
            .serial
            .as_ref()
            .and_then(|s| serial::serial_spec(s, &raw.fields, c))
            .map(TransportSpec::Serial),
        "mqtt" => raw
            .mqtt
            .as_ref()
            .and_then(|m| mqtt_spec(m, &raw.fields, c))
            .map(TransportSpec::Mqtt),
        _ => raw
            .sim
            .as_ref()
            .and_then(|s| sim_spec(s, &raw.fields, c))
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

fn field_mapping(f: &raw::RawField, transport: &str, c: &mut Check<'_>) -> Option<FieldMapping> {
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

fn field_spec(f: &raw::RawField, source: String, no_reading: Vec<String>) -> FieldSpec {
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

fn ble_spec(
    b: &Spanned<raw::RawBle>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<BleSpec> {
    let b = b.get_ref();
    let name = b.decoder.get_ref();
    let Some(decoder) = gatt_decoders().find(|d| d.name == name) else {
        let known: Vec<_> = gatt_decoders().map(|d| d.name).collect();
        c.at(
            b.decoder.span(),
            format!(
                "unknown GATT decoder `{name}`; built-in decoders: {}",
                known.join(", ")
            ),
        );
        return None;
    };
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
            b.decoder.span(),
            "a BLE profile needs a recognition rule: `services` or `name_prefix`",
        );
    }
    use iomt_drivers::ble::{Characteristic as Gatt, BATTERY_FIELD};
    let mut produced = decoder.fields.to_vec();
    // Every BLE device may report its Battery Level (0x2A19), read at each connection.
    produced.extend(iomt_drivers::ble::fields(Gatt::BatteryLevel));
    for f in fields {
        let f = f.get_ref();
        let n = f.name.get_ref();
        if !decoder.field_names().any(|d| d == n) && n != BATTERY_FIELD {
            c.at(
                f.name.span(),
                format!(
                    "decoder `{}` produces no field `{n}`; it produces: {}, and {BATTERY_FIELD} (the Battery Level read at each connection)",
                    decoder.name,
                    decoder.field_names().collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        }
        if let Some(unit) = &f.unit {
            c.at(
                unit.span(),
                format!(
                    "`unit` does not apply to BLE fields: decoder `{}` takes the unit from each packet's flags",
                    decoder.name
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
                        "field `{n}` of decoder `{}` comes in {}, which vital `{}` (in `{}`) cannot express",
                        decoder.name,
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
        decoder,
    })
}

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` only last.
fn topic_filter_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        return Some("the topic filter is empty");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Some("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Some("`+` must be a whole level");
        }
    }
    None
}

fn pointer_ok(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

fn mqtt_spec(
    m: &Spanned<raw::RawMqtt>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<MqttSpec> {
    let span = m.span();
    let m = m.get_ref();
    if let Some(problem) = topic_filter_problem(m.topic.get_ref()) {
        c.at(
            m.topic.span(),
            format!("invalid MQTT topic filter: {problem}"),
        );
    }
    let Some(json) = &m.json else {
        c.at(
            span,
            "the MQTT profile has no decoder: add a [mqtt.json] table",
        );
        return None;
    };
    let json = json.get_ref();
    let mut device_id_level = None;
    if let Some(level) = &m.device_id_level {
        let levels: Vec<&str> = m.topic.get_ref().split('/').collect();
        match usize::try_from(*level.get_ref()) {
            Ok(l) if levels.get(l) == Some(&"+") => device_id_level = Some(l),
            _ => c.at(
                level.span(),
                format!(
                    "device_id_level must be the 0-based index of a `+` level of the topic filter `{}`",
                    m.topic.get_ref()
                ),
            ),
        }
    }
    if json.max_payload.as_ref().is_some_and(|m| *m.get_ref() == 0) {
        if let Some(m) = &json.max_payload {
            c.at(m.span(), "max_payload must be at least 1 byte");
        }
    }
    for p in [&json.device_id, &json.timestamp, &json.readings]
        .into_iter()
        .flatten()
    {
        if !pointer_ok(p.get_ref()) {
            c.at(
                p.span(),
                format!(
                    "`{}` is not a JSON Pointer; write it like `/vitals/spo2`",
                    p.get_ref()
                ),
            );
        }
    }
    let mut specs = Vec::new();
    for f in fields {
        let f = f.get_ref();
        match &f.pointer {
            None => c.at(
                f.name.span(),
                format!(
                    "field `{}` needs a `pointer` to its value in the JSON payload",
                    f.name.get_ref()
                ),
            ),
            Some(p) if !pointer_ok(p.get_ref()) => c.at(
                p.span(),
                format!(
                    "`{}` is not a JSON Pointer; write it like `/vitals/spo2`",
                    p.get_ref()
                ),
            ),
            Some(p) => {
                let no_reading = serial::text_no_reading(f, "a JSON payload", c);
                specs.push(field_spec(f, p.get_ref().clone(), no_reading))
            }
        }
    }
    Some(MqttSpec {
        topic: m.topic.get_ref().clone(),
        json: JsonDecoder {
            fields: specs,
            timestamp: json.timestamp.as_ref().map(|t| t.get_ref().clone()),
            timestamp_format: match json
                .timestamp_format
                .unwrap_or(raw::TimestampFormat::Rfc3339)
            {
                raw::TimestampFormat::Rfc3339 => JsonTimestamp::Rfc3339,
                raw::TimestampFormat::EpochS => JsonTimestamp::EpochSeconds,
                raw::TimestampFormat::EpochMs => JsonTimestamp::EpochMillis,
            },
            device_id: json.device_id.as_ref().map(|d| d.get_ref().clone()),
            max_payload: json
                .max_payload
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(65536),
            readings: json.readings.as_ref().map(|r| r.get_ref().clone()),
        },
        device_id_level,
    })
}

fn sim_spec(
    s: &Spanned<raw::RawSim>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<SimSpec> {
    let mut signals = Vec::new();
    for f in fields {
        let f = f.get_ref();
        let (text, span) = match &f.signal {
            Some(s) => (s.get_ref().clone(), s.span()),
            None => (f.name.get_ref().clone(), f.name.span()),
        };
        match Signal::from_str(&text) {
            Ok(sig) => {
                let kind_unit = catalog::kind(f.vital.get_ref()).map(|k| k.unit);
                if kind_unit.is_some_and(|u| ucum::dimension(u) != ucum::dimension(sig.unit())) {
                    c.at(
                        span,
                        format!(
                            "simulator signal `{text}` (in `{}`) cannot feed vital `{}`",
                            sig.unit(),
                            f.vital.get_ref()
                        ),
                    );
                }
                signals.push((f.name.get_ref().clone(), sig));
            }
            Err(e) => c.at(
                span,
                format!("{e} (set `signal` when the field name is not a signal)"),
            ),
        }
    }
    Some(SimSpec {
        clock: s.get_ref().clock.unwrap_or(SimClock::Zoned),
        signals,
    })
}

#[cfg(test)]
mod tests;
