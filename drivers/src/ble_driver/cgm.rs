//! A continuous glucose monitor's session state: at each connection the driver reads CGM
//! Feature (0x2AA8: does every value carry an E2E-CRC?) and CGM Session Start Time
//! (0x2AAA: the time the records' time offsets count from).
//!
//! **Time rule.** A record's time is the session start + its time offset (minutes); zoned
//! when the session start gives its time zone and DST offset, else the device's
//! wall-clock time read in the device's configured zone. A CGM without a readable session
//! start gives records without a device time (the receive time is used), with a warning.
//!
//! **Fetched exactly once.** Stored records are asked for through the Record Access
//! Control Point with the CGM filter type 0x01, the time offset (`01 03 01 <offset+1>`,
//! or `01 01` the first time). The last time offset committed is kept in the
//! [`SequenceStore`](super::SequenceStore) under a key of the address and the session's
//! start: a new sensor session (offsets start again at 0) is a new key, so its records
//! are all fetched; across gateway restarts within one session nothing is fetched twice.
//!
//! **Sensor status annunciations** are logged at warn, by name (never a value), when the
//! set of annunciations changes, and travel with the record as `ReadingFlag::DeviceStatus`
//! (a `note` on its Observation); the values are sent as they are, except that "time
//! synchronization required" marks the clock as not set.

use btleplug::api::{CharPropFlags, Peripheral as _};
use btleplug::platform::Peripheral;

use super::{uuid_from_u16, BleDeviceConfig};
use crate::ble::cgm::CgmStatus;
use crate::ble::{self, CgmMeasurement, GattError, GattValue, SessionStartTime};

/// CGM Measurement.
pub(super) const MEASUREMENT: u16 = 0x2AA7;
const FEATURE: u16 = 0x2AA8;
const SESSION_START: u16 = 0x2AAA;

/// One connection's CGM state.
pub(super) struct Cgm {
    /// CGM Feature says E2E-CRC: a record without one is rejected.
    crc_required: bool,
    /// The session's start, if the device gave a usable one.
    start: Option<SessionStartTime>,
    /// The sequence store's key of this sensor session.
    pub(super) key: String,
    /// The annunciations last logged.
    last_annunciations: Vec<&'static str>,
}

impl Cgm {
    /// Reads CGM Feature and CGM Session Start Time.
    pub(super) async fn read(p: &Peripheral, cfg: &BleDeviceConfig) -> Self {
        let crc_required = match read_value(p, cfg, FEATURE).await {
            Some(GattValue::CgmFeature(f)) => f.e2e_crc_supported(),
            _ => false,
        };
        let (start, raw) = match read_raw(p, cfg, SESSION_START).await {
            Some(bytes) => match SessionStartTime::decode(&bytes) {
                Ok(s) if s.start.to_naive().is_ok() => (Some(s), bytes),
                Ok(_) => (None, bytes),
                Err(e) => {
                    tracing::warn!(profile = %cfg.identity.profile, error = %e, "a CGM's session start time was rejected");
                    (None, Vec::new())
                }
            },
            None => (None, Vec::new()),
        };
        if start.is_none() {
            tracing::warn!(profile = %cfg.identity.profile, "a CGM gives no usable session start time; its records are stamped with the receive time");
        }
        // The session start's own bytes (without the CRC) tell sessions apart.
        let session = hex::encode(raw.get(..9).unwrap_or(&[]));
        Self {
            crc_required,
            start,
            key: format!("{} cgm {session}", cfg.address),
            last_annunciations: Vec::new(),
        }
    }

    /// The records of one notification, placed in the session.
    pub(super) fn records(&self, value: &[u8]) -> Result<Vec<CgmMeasurement>, GattError> {
        let records = CgmMeasurement::decode_all(value, self.crc_required)?;
        Ok(match &self.start {
            Some(s) => records.into_iter().map(|m| m.in_session(s)).collect(),
            None => records,
        })
    }

    /// Logs the annunciations of a record when they differ from the last ones logged.
    pub(super) fn note_status(&mut self, status: CgmStatus, cfg: &BleDeviceConfig) {
        let now = status.annunciations();
        if now != self.last_annunciations {
            if !now.is_empty() {
                tracing::warn!(profile = %cfg.identity.profile, annunciations = %now.join(", "), "CGM sensor status annunciation");
            }
            self.last_annunciations = now;
        }
    }
}

async fn read_raw(p: &Peripheral, cfg: &BleDeviceConfig, u: u16) -> Option<Vec<u8>> {
    let c = p
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == uuid_from_u16(u) && c.properties.contains(CharPropFlags::READ))?;
    match p.read(&c).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::debug!(device = %cfg.address, characteristic = format!("0x{u:04X}"), error = %e, "read failed");
            None
        }
    }
}

async fn read_value(p: &Peripheral, cfg: &BleDeviceConfig, u: u16) -> Option<GattValue> {
    let bytes = read_raw(p, cfg, u).await?;
    match ble::decode(u, &bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(profile = %cfg.identity.profile, error = %e, "a CGM characteristic was rejected");
            None
        }
    }
}
