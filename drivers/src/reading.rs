//! The domain model every driver produces: a [`Reading`] from one device at one moment.
//!
//! A reading knows nothing of FHIR: it carries named quantities with exact decimal values,
//! their UCUM units and precision, the device's own timestamp (if it gave one) and the
//! gateway's receive time. The gateway's normalizer turns it into FHIR Observations.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use rust_decimal::Decimal;

/// How a device reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Bluetooth Low Energy, standard GATT health profiles.
    Ble,
    /// A serial port (RS-232 or USB-serial).
    Serial,
    /// An MQTT broker the device publishes to.
    Mqtt,
    /// The built-in simulator (demo and tests).
    Sim,
}

impl Transport {
    /// The lowercase name used in profiles, config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ble => "ble",
            Transport::Serial => "serial",
            Transport::Mqtt => "mqtt",
            Transport::Sim => "sim",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who measured: the identity of one physical (or simulated) device.
///
/// The longest device id (`DeviceIdentity::address`) a driver accepts, in bytes. Ids
/// come from outside (an MQTT topic level or payload field), and every id the gateway
/// sees is kept for a while (caches, Device resources), so a longer one is refused: its
/// message goes to the dead letters, counted.
pub const MAX_DEVICE_ID_BYTES: usize = 256;

/// `address` and `serial_number` are identifying: the gateway pseudonymizes them before
/// anything leaves the device, and they must never be logged at `info` or above.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The id of the device profile that recognized this device.
    pub profile: String,
    /// The transport the device was reached through.
    pub transport: Transport,
    /// The transport address: a Bluetooth address, a serial port path, an MQTT device id,
    /// or a simulator instance name. Stable for the same device across restarts.
    pub address: String,
    /// The manufacturer's serial number, when the device reports one.
    pub serial_number: Option<String>,
    /// The manufacturer name, when the device reports one (else the profile's).
    pub manufacturer: Option<String>,
    /// The model name or number, when the device reports one (else the profile's).
    pub model: Option<String>,
    /// The firmware, software and hardware revisions the device reports (BLE Device
    /// Information); empty for devices that report none.
    pub revisions: Revisions,
}

/// The revisions a device reports about itself (BLE Device Information 0x2A26, 0x2A28,
/// 0x2A27). Not identifying: they name a product version, not one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Revisions {
    /// Firmware Revision String.
    pub firmware: Option<String>,
    /// Software Revision String.
    pub software: Option<String>,
    /// Hardware Revision String.
    pub hardware: Option<String>,
}

/// The device's clock read against the gateway's at one moment: the PHD IG's coincident
/// time stamp. A BLE driver reads it from the Current Time characteristic at each
/// connection; the serial driver takes it from a live stream's time stamp against its
/// receive time (`serial/clock.rs`); the gateway places the device's time stamps on its
/// own timeline with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockComparison {
    /// The device's time, as its clock showed it.
    pub device_now: DeviceTime,
    /// The gateway's time at that moment.
    pub gateway_now: DateTime<Utc>,
}

/// The device's own measurement time, as the device gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceTime {
    /// A time with a known offset from UTC (ISO 8601 with zone, epoch seconds, ...).
    Zoned(DateTime<FixedOffset>),
    /// A wall-clock time without a zone (a GATT Date Time, most serial devices): the
    /// gateway interprets it in the zone configured for the device.
    Local(NaiveDateTime),
}

/// Why a quantity has no usable value (IEEE 11073 special values and device status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbsentReason {
    /// The device reported "not a number" (SFLOAT 0x07FF): an invalid result.
    NotANumber,
    /// The device reported "not at this resolution" (SFLOAT 0x0800).
    NotAtThisResolution,
    /// The device reported +infinity (SFLOAT 0x07FE).
    PositiveInfinity,
    /// The device reported -infinity (SFLOAT 0x0802).
    NegativeInfinity,
    /// A measurement the device says it does not support.
    Unsupported,
    /// A value reserved for future use (SFLOAT 0x0801, FLOAT 0x00800001): the PHD IG
    /// reports it as an error.
    Reserved,
}

/// The value of one quantity: an exact decimal, or the reason there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measurement {
    /// An exact decimal value; its scale is the precision the device reported
    /// (`2`, `2.0` and `2.00` are different measurements).
    Value(Decimal),
    /// No value, with the device's reason.
    Absent(AbsentReason),
}

impl Measurement {
    /// The value, if there is one.
    pub fn value(&self) -> Option<Decimal> {
        match self {
            Measurement::Value(v) => Some(*v),
            Measurement::Absent(_) => None,
        }
    }
}

/// One named quantity in a reading, e.g. `systolic = 120 mm[Hg]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    /// The field name the decoder gives it; device profiles map names to vital signs.
    pub name: String,
    /// The value, or why there is none.
    pub value: Measurement,
    /// The UCUM code of the unit the value is expressed in (e.g. `mm[Hg]`, `/min`, `Cel`).
    pub unit: String,
    /// Where on the body it was measured, when the device says (a thermometer's
    /// Temperature Type).
    pub site: Option<BodySite>,
}

/// A measurement site on the body, as devices report it (GATT Temperature Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodySite {
    /// Armpit.
    Armpit,
    /// The body in general.
    Body,
    /// Ear (usually the ear lobe).
    Ear,
    /// Finger.
    Finger,
    /// Gastro-intestinal tract.
    GastrointestinalTract,
    /// Mouth.
    Mouth,
    /// Rectum.
    Rectum,
    /// Toe.
    Toe,
    /// Tympanum (ear drum).
    Tympanum,
}

impl Quantity {
    /// A quantity with a value.
    pub fn new(name: impl Into<String>, value: Decimal, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: Measurement::Value(value),
            unit: unit.into(),
            site: None,
        }
    }

    /// A quantity without a value, for the given reason.
    pub fn absent(name: impl Into<String>, reason: AbsentReason, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: Measurement::Absent(reason),
            unit: unit.into(),
            site: None,
        }
    }

    /// The same quantity, measured at `site`.
    pub fn at(mut self, site: Option<BodySite>) -> Self {
        self.site = site;
        self
    }

    /// The number of decimal places the device reported (the PHD IG's precision), if any.
    pub fn precision(&self) -> Option<u32> {
        self.value.value().map(|v| v.scale())
    }
}

/// Facts about a whole reading that the device reported alongside the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadingFlag {
    /// The device says its clock is not set: its timestamp is not trustworthy.
    ClockNotSet,
    /// The reading was replayed from the device's memory, not measured just now.
    FromStorage,
    /// Demonstration or simulated data: never a patient value.
    DemoData,
    /// Test or calibration data (e.g. control solution): never a patient value.
    TestData,
    /// A status the device announced with the reading, by name (a CGM's "calibration
    /// required"): the gateway notes it on the Observations; the value is kept.
    DeviceStatus(&'static str),
}

/// One measurement event from one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device that measured. Shared, since a device sends many readings.
    pub device: Arc<DeviceIdentity>,
    /// The device's own measurement time, if it gave one.
    pub device_time: Option<DeviceTime>,
    /// When the gateway received the reading.
    pub received_at: DateTime<Utc>,
    /// The device's record sequence number, when it numbers its records (glucose meters).
    pub sequence: Option<u64>,
    /// The measured quantities; a blood-pressure reading has systolic, diastolic, and so on.
    pub quantities: Vec<Quantity>,
    /// Status facts about the whole reading.
    pub flags: Vec<ReadingFlag>,
    /// The device's clock compared with the gateway's at this connection, when the device
    /// offers its current time.
    pub clock: Option<ClockComparison>,
}
