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
    /// The built-in GATT decoder, for a device with one measurement characteristic.
    #[serde(default)]
    pub decoder: Option<Spanned<String>>,
    /// The built-in GATT decoders, one per measurement characteristic, for a device with
    /// several (a pulse oximeter's spot-check and continuous); instead of `decoder`.
    #[serde(default)]
    pub decoders: Vec<Spanned<String>>,
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
    /// Binary framing.
    pub frame: Option<Spanned<RawFrame>>,
    /// Requests written at an interval, for devices that answer only when asked.
    pub poll: Option<Spanned<RawPoll>>,
    /// The device sends each line or frame as it measures, stamped by its own clock (a
    /// live stream, not stored records): the time stamp against the receive time is the
    /// device clock's comparison with the gateway's. Needs a time stamp in the framing;
    /// default `false` (time stamps taken as they are).
    pub live_clock: Option<Spanned<bool>>,
}

/// `[serial.poll]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoll {
    /// The request as text (TOML escapes such as `\r\n` allowed).
    pub request: Option<Spanned<String>>,
    /// The request as hex bytes (`"F5 F5"`).
    pub request_hex: Option<Spanned<String>>,
    /// Milliseconds between requests.
    pub interval_ms: Spanned<u64>,
}

/// `[serial.frame]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFrame {
    /// Fixed frame size in bytes.
    pub size: Option<Spanned<i64>>,
    /// Length-prefixed frames: where the length is and what it counts.
    pub length: Option<Spanned<RawLength>>,
    /// Byte patterns every frame matches.
    #[serde(default)]
    pub sync: Vec<Spanned<RawPattern>>,
    /// The checksum.
    pub checksum: Option<Spanned<RawChecksum>>,
    /// Packets of several frames.
    pub packet: Option<Spanned<RawPacket>>,
    /// Status flags.
    #[serde(default)]
    pub flags: Vec<Spanned<RawFlag>>,
    /// Where the date and time are.
    pub timestamp: Option<Spanned<RawFrameTimestamp>>,
}

/// A byte pattern: `{ offset, mask, value }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPattern {
    /// Byte offset (negative: from the end of the frame).
    pub offset: Spanned<i64>,
    /// The bits compared (default `0xFF`).
    pub mask: Option<Spanned<i64>>,
    /// Their value.
    pub value: Spanned<i64>,
}

/// `length = { offset, type, endian, add, max }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLength {
    /// Byte offset of the length field.
    pub offset: Spanned<i64>,
    /// `u8` (default), `u16` or `u32`.
    #[serde(rename = "type")]
    pub ty: Option<Spanned<String>>,
    /// `big` (default) or `little`.
    pub endian: Option<Endianness>,
    /// Added to the length value to get the whole frame's size (default 0).
    pub add: Option<Spanned<i64>>,
    /// Largest frame accepted in bytes (default 256).
    pub max: Option<Spanned<i64>>,
}

/// `checksum = { kind, from, to, at, endian }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChecksum {
    /// The algorithm name.
    pub kind: Spanned<String>,
    /// First covered byte (default 0).
    pub from: Option<Spanned<i64>>,
    /// End of the covered bytes, exclusive (default: where the checksum starts).
    pub to: Option<Spanned<i64>>,
    /// Offset of the checksum (default: the frame's last bytes).
    pub at: Option<Spanned<i64>>,
    /// Byte order of a multi-byte checksum (default `big`).
    pub endian: Option<Endianness>,
}

/// `packet = { frames, start }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPacket {
    /// Frames per packet.
    pub frames: Spanned<i64>,
    /// Patterns marking a packet's first frame.
    pub start: Vec<Spanned<RawPattern>>,
}

/// `flags = [{ offset, mask, value, flag }]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlag {
    /// Byte offset.
    pub offset: Spanned<i64>,
    /// The bits tested.
    pub mask: Spanned<i64>,
    /// Their value when the flag is set (default: `mask`, all tested bits set).
    pub value: Option<Spanned<i64>>,
    /// `no_reading`, `from_storage`, `clock_not_set` or `test_data`.
    pub flag: Spanned<String>,
}

/// `[serial.frame.timestamp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFrameTimestamp {
    /// The century, when the year is split.
    pub century: Option<Spanned<RawLayout>>,
    /// The year.
    pub year: Spanned<RawLayout>,
    /// Added to the year (default 0).
    pub year_base: Option<i64>,
    /// The month.
    pub month: Spanned<RawLayout>,
    /// The day.
    pub day: Spanned<RawLayout>,
    /// The hour.
    pub hour: Spanned<RawLayout>,
    /// The minute.
    pub minute: Spanned<RawLayout>,
    /// The second (default: 0).
    pub second: Option<Spanned<RawLayout>>,
}

/// Where a value is: `{ offset, type, endian, mask, shift }` or `{ bits }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLayout {
    /// Byte offset.
    pub offset: Option<Spanned<i64>>,
    /// Integer type (default `u8`).
    #[serde(rename = "type")]
    pub ty: Option<Spanned<String>>,
    /// Byte order (default `big`).
    pub endian: Option<Endianness>,
    /// Bits kept.
    pub mask: Option<Spanned<i64>>,
    /// Right shift after the mask.
    pub shift: Option<Spanned<i64>>,
    /// Bit ranges concatenated, most significant first (`["0[1:0]", "1[6:0]"]`).
    pub bits: Option<Spanned<Vec<String>>>,
}

/// Byte order.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Endianness {
    /// Most significant byte first.
    Big,
    /// Least significant byte first.
    Little,
}

/// A `no_reading` entry: a text (lines, JSON) or a raw integer (binary frames).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum NoReading {
    /// A text such as `---`.
    Text(String),
    /// A raw integer such as 511.
    Raw(i64),
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
    /// The topic level (0-based) holding the device id, a `+` level of `topic`; used
    /// when the payload has no `device_id`.
    pub device_id_level: Option<Spanned<i64>>,
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
    /// JSON Pointer to an array of readings, when one message carries several; field
    /// and timestamp pointers are then relative to each element.
    pub readings: Option<Spanned<String>>,
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
    /// Texts (lines, JSON) or raw integers (binary frames) meaning "no reading".
    #[serde(default)]
    pub no_reading: Vec<NoReading>,
    /// Regex capture name (serial line; default: `name`).
    pub capture: Option<Spanned<String>>,
    /// Byte offset (serial frame).
    pub offset: Option<Spanned<i64>>,
    /// Integer type (serial frame; default `u8`).
    #[serde(rename = "type")]
    pub ty: Option<Spanned<String>>,
    /// Byte order (serial frame; default `big`).
    pub endian: Option<Endianness>,
    /// Bits kept (serial frame).
    pub mask: Option<Spanned<i64>>,
    /// Right shift after the mask (serial frame).
    pub shift: Option<Spanned<i64>>,
    /// Bit ranges concatenated, most significant first (serial frame).
    pub bits: Option<Spanned<Vec<String>>>,
    /// JSON Pointer (MQTT).
    pub pointer: Option<Spanned<String>>,
    /// Simulator signal (sim; default: `name`).
    pub signal: Option<Spanned<String>>,
}
