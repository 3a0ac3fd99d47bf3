//! The profile file format as written: strict serde structs (unknown keys are errors),
//! with source spans kept on every value that semantic validation may complain about.
//! `device-profiles/README.md` documents every key.

use serde::Deserialize;
use toml::Spanned;

/// A whole profile file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    /// Unique profile id: lowercase letters, digits and dashes.
    pub id: Spanned<String>,
    /// Human-readable name (the FHIR Device resource's model name).
    pub name: String,
    /// Manufacturer (goes into the FHIR Device resource).
    pub manufacturer: String,
    /// Model name or number (goes into the FHIR Device resource).
    pub model: String,
    /// Free text for the clinical engineer; never emitted.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    /// Bluetooth LE recognition and decoder.
    pub ble: Option<Spanned<RawBle>>,
    /// Serial port settings and framing.
    pub serial: Option<Spanned<RawSerial>>,
    /// MQTT topic and JSON layout.
    pub mqtt: Option<Spanned<RawMqtt>>,
    /// Simulator settings.
    pub sim: Option<Spanned<RawSim>>,
    /// The fields the device reports and how each maps to FHIR.
    #[serde(default, rename = "field")]
    pub fields: Vec<Spanned<RawField>>,
}

/// `[ble]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBle {
    /// Advertised service UUIDs that identify the device (16-bit `"1810"` or 128-bit).
    #[serde(default)]
    pub services: Vec<Spanned<String>>,
    /// A prefix of the advertised local name.
    pub name_prefix: Option<String>,
    /// The built-in GATT decoder.
    pub decoder: Spanned<String>,
}

/// `[serial]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    /// Baud rate.
    pub baud: Spanned<u32>,
    /// Data bits (5 to 8); default 8.
    pub data_bits: Option<Spanned<u8>>,
    /// `none`, `odd` or `even`; default `none`.
    pub parity: Option<Parity>,
    /// 1 or 2; default 1.
    pub stop_bits: Option<Spanned<u8>>,
    /// `none`, `software` or `hardware`; default `none`.
    pub flow_control: Option<FlowControl>,
    /// Line-oriented text framing.
    pub line: Option<Spanned<RawLine>>,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// `[serial.line]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLine {
    /// A regex with one named capture per field.
    pub regex: Spanned<String>,
    /// Line terminator: `"\n"` (default), `"\r\n"` or `"\r"`.
    pub terminator: Option<Spanned<String>>,
    /// Longest line accepted, in bytes (default 1024).
    pub max_length: Option<Spanned<usize>>,
    /// Capture names forming the device timestamp, joined with a space.
    #[serde(default)]
    pub timestamp_captures: Vec<Spanned<String>>,
    /// chrono format of the joined timestamp text.
    pub timestamp_format: Option<Spanned<String>>,
}

/// `[mqtt]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    /// The MQTT topic filter to subscribe to.
    pub topic: Spanned<String>,
    /// JSON payload layout.
    pub json: Option<Spanned<RawJson>>,
}

/// `[mqtt.json]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJson {
    /// JSON Pointer to the device id.
    pub device_id: Option<Spanned<String>>,
    /// JSON Pointer to the timestamp.
    pub timestamp: Option<Spanned<String>>,
    /// `rfc3339` (default), `epoch_s` or `epoch_ms`.
    pub timestamp_format: Option<TimestampFormat>,
    /// Largest payload accepted in bytes (default 65536).
    pub max_payload: Option<Spanned<usize>>,
}

/// How an MQTT payload writes its timestamp.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// ISO 8601 / RFC 3339.
    Rfc3339,
    /// Unix seconds.
    EpochS,
    /// Unix milliseconds.
    EpochMs,
}

/// `[sim]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSim {
    /// `zoned`, `local` or `none` (default `zoned`).
    pub clock: Option<SimClock>,
}

/// How a simulated device stamps its readings.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SimClock {
    /// With a UTC offset.
    Zoned,
    /// Local wall-clock time without zone.
    Local,
    /// No device time.
    None,
}

/// `[[field]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawField {
    /// The field name the decoder produces.
    pub name: Spanned<String>,
    /// The catalog kind.
    pub vital: Spanned<String>,
    /// UCUM unit of the device's values.
    pub unit: Option<Spanned<String>>,
    /// Factor applied to raw values.
    pub scale: Option<Spanned<f64>>,
    /// Plausible range override `[low, high]`, in the catalog unit of the vital kind.
    pub range: Option<Spanned<Vec<f64>>>,
    /// LOINC code override.
    pub loinc: Option<Spanned<String>>,
    /// LOINC display override (with `loinc`).
    pub display: Option<Spanned<String>>,
    /// MDC code override.
    pub mdc: Option<Spanned<u32>>,
    /// Texts meaning "no reading" (serial, MQTT).
    #[serde(default)]
    pub no_reading: Vec<String>,
    /// Regex capture name (serial line; default: `name`).
    pub capture: Option<Spanned<String>>,
    /// JSON Pointer (MQTT).
    pub pointer: Option<Spanned<String>>,
    /// Simulator signal (sim; default: `name`).
    pub signal: Option<Spanned<String>>,
}
