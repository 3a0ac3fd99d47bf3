//! Continuous Glucose Monitoring, service 0x181F (reference §2.9): CGM Measurement
//! (0x2AA7), and in [`session`] CGM Feature (0x2AA8), CGM Session Start Time (0x2AAA) and
//! CGM Session Run Time (0x2AAB).
//!
//! - **One record, its size.** A record starts with its Size octet (counting itself and the
//!   E2E-CRC). The flags announce the other fields; a Size equal to their length means no
//!   E2E-CRC, their length + 2 means an E2E-CRC follows; any other Size is rejected. One
//!   notification may carry several records back to back: [`CgmMeasurement::decode_all`]
//!   splits them; [`CgmMeasurement::decode`] reads the first and records what follows as
//!   [`Anomaly::TrailingBytes`].
//! - **E2E-CRC** (CRC-16/MCRF4XX, the CGM specification's CRC-CCITT with seed 0xFFFF, least
//!   significant bit first) covers the record from its Size octet up to the CRC. A CRC that
//!   is present is always verified; when CGM Feature says E2E-CRC is supported, a record
//!   without one is rejected too ([`CgmMeasurement::decode_checked`]). A wrong CRC is a
//!   rejected record ([`GattError::Invalid`], "E2E-CRC mismatch").
//! - **Glucose** is an SFLOAT in mg/dL (`interstitial_glucose`, UCUM `mg/dL`); the optional
//!   trend is (mg/dL)/min (`glucose_trend`, `mg/dL/min`) and the optional quality a percent
//!   (`cgm_quality`, `%`).
//! - **Time.** The record carries only its Time Offset: minutes since the session started.
//!   Its time is Session Start Time (0x2AAA) + Time Offset, set by the driver with
//!   [`CgmMeasurement::in_session`]; without a session start the record has no device
//!   time. The Time Offset is also the record's sequence (the key of Record Access Control
//!   Point fetches, whose CGM filter type 0x01 is the time offset).
//! - **Sensor Status Annunciation**: up to three octets, on the wire in the order Warning,
//!   Cal/Temp, Status (reference §2.9), kept in [`CgmStatus`] with the SIG's bit numbers
//!   (Status bits 0–7, Cal/Temp 8–15, Warning 16–23). Cal/Temp bit 8 "time synchronization
//!   between sensor and collector required" gives `ReadingFlag::ClockNotSet`; every bit
//!   with a meaning becomes a `ReadingFlag::DeviceStatus` naming it, which the gateway
//!   notes on the Observations (never a value change).

pub mod session;

pub use session::{CgmFeature, SessionRunTime, SessionStartTime};

use super::reader::Reader;
use crate::ble::{quantity, Anomaly, Characteristic, FinalMeasurement, GattError};
use crate::reading::{DeviceTime, Measurement, Quantity, ReadingFlag};

const TREND: u8 = 0x01;
const QUALITY: u8 = 0x02;
const RESERVED: u8 = 0x1C;
const WARNING: u8 = 0x20;
const CAL_TEMP: u8 = 0x40;
const STATUS: u8 = 0x80;

/// The CGM specification's E2E-CRC: CRC-16/MCRF4XX.
pub(crate) const E2E_CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MCRF4XX);

/// The E2E-CRC of `bytes`.
pub fn e2e_crc(bytes: &[u8]) -> u16 {
    E2E_CRC.checksum(bytes)
}

/// Checks the little-endian E2E-CRC in the last two octets of `record` against the others.
pub(crate) fn verify_crc(c: Characteristic, record: &[u8]) -> Result<(), GattError> {
    let split = record.len().checked_sub(2).ok_or(GattError::Truncated {
        characteristic: c,
        len: record.len(),
        required: 2,
    })?;
    let (data, sent) = record.split_at(split);
    let sent = u16::from_le_bytes([sent[0], sent[1]]);
    let computed = e2e_crc(data);
    if sent == computed {
        Ok(())
    } else {
        Err(GattError::Invalid {
            characteristic: c,
            reason: format!("E2E-CRC mismatch: sent 0x{sent:04X}, computed 0x{computed:04X}"),
        })
    }
}

/// The Sensor Status Annunciation: the octets sent, in the SIG's bit numbering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CgmStatus {
    /// Status octet (bits 0–7), if sent.
    pub status: Option<u8>,
    /// Cal/Temp octet (bits 8–15), if sent.
    pub cal_temp: Option<u8>,
    /// Warning octet (bits 16–23), if sent.
    pub warning: Option<u8>,
}

/// The names of the 24 annunciation bits (`None`: reserved).
const BIT_NAMES: [Option<&str>; 24] = [
    Some("session stopped"),
    Some("device battery low"),
    Some("sensor type incorrect for device"),
    Some("sensor malfunction"),
    Some("device specific alert"),
    Some("general device fault in the sensor"),
    None,
    None,
    Some("time synchronization between sensor and collector required"),
    Some("calibration not allowed"),
    Some("calibration recommended"),
    Some("calibration required"),
    Some("sensor temperature too high for a valid result"),
    Some("sensor temperature too low for a valid result"),
    None,
    None,
    Some("result lower than the patient low level"),
    Some("result higher than the patient high level"),
    Some("result lower than the hypo level"),
    Some("result higher than the hyper level"),
    Some("rate of decrease exceeded"),
    Some("rate of increase exceeded"),
    Some("result lower than the device can process"),
    Some("result higher than the device can process"),
];

impl CgmStatus {
    /// The 24-bit field (octets not sent count as 0).
    pub fn bits(self) -> u32 {
        u32::from(self.status.unwrap_or(0))
            | u32::from(self.cal_temp.unwrap_or(0)) << 8
            | u32::from(self.warning.unwrap_or(0)) << 16
    }

    /// Whether SIG bit `n` (0..=23) is set.
    pub fn bit(self, n: u32) -> bool {
        n < 24 && self.bits() & (1 << n) != 0
    }

    /// The names of the set bits that have a meaning, in bit order (no values: safe to log).
    pub fn annunciations(self) -> Vec<&'static str> {
        let bits = self.bits();
        BIT_NAMES
            .iter()
            .enumerate()
            .filter(|(n, _)| bits & (1 << n) != 0)
            .filter_map(|(_, name)| *name)
            .collect()
    }

    /// Bit 8: the sensor's time needs synchronizing with the collector.
    pub fn time_sync_required(self) -> bool {
        self.bit(8)
    }
}

/// A decoded CGM Measurement record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgmMeasurement {
    /// The glucose concentration, mg/dL.
    pub glucose: Measurement,
    /// Minutes since the session started.
    pub time_offset_minutes: u16,
    /// The Sensor Status Annunciation (all `None` when no octet was sent).
    pub status: CgmStatus,
    /// The trend, (mg/dL)/min, if sent.
    pub trend: Option<Measurement>,
    /// The quality, percent, if sent.
    pub quality: Option<Measurement>,
    /// The E2E-CRC, if the record carried one (it was verified).
    pub e2e_crc: Option<u16>,
    /// The session's start (from 0x2AAA), set by the driver; not part of the record.
    pub session_start: Option<SessionStartTime>,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl CgmMeasurement {
    /// Decodes the first record of a notification; a present E2E-CRC is verified.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        let (mut m, rest) = Self::decode_one(bytes, false)?;
        if !rest.is_empty() {
            m.anomalies
                .push(Anomaly::TrailingBytes { count: rest.len() });
        }
        Ok(m)
    }

    /// Decodes the first record; with `crc_required` (CGM Feature says E2E-CRC is
    /// supported) a record without an E2E-CRC is rejected.
    pub fn decode_checked(bytes: &[u8], crc_required: bool) -> Result<Self, GattError> {
        let (mut m, rest) = Self::decode_one(bytes, crc_required)?;
        if !rest.is_empty() {
            m.anomalies
                .push(Anomaly::TrailingBytes { count: rest.len() });
        }
        Ok(m)
    }

    /// Decodes every record of a notification, in order; the first bad record rejects it.
    pub fn decode_all(bytes: &[u8], crc_required: bool) -> Result<Vec<Self>, GattError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (m, next) = Self::decode_one(rest, crc_required)?;
            out.push(m);
            rest = next;
        }
        Ok(out)
    }

    fn decode_one(bytes: &[u8], crc_required: bool) -> Result<(Self, &[u8]), GattError> {
        const C: Characteristic = Characteristic::CgmMeasurement;
        let size = usize::from(*bytes.first().ok_or(GattError::Truncated {
            characteristic: C,
            len: 0,
            required: 6,
        })?);
        if size < 6 {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: format!("Size field {size} is below the minimum of 6"),
            });
        }
        let record = bytes.get(..size).ok_or(GattError::Truncated {
            characteristic: C,
            len: bytes.len(),
            required: size,
        })?;
        let rest = &bytes[size..];
        let flags = record.get(1).copied().unwrap_or(0);
        let fields = [
            (TREND, 2),
            (QUALITY, 2),
            (WARNING, 1),
            (CAL_TEMP, 1),
            (STATUS, 1),
        ]
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .fold(6usize, |len, (_, n)| len + n);
        let has_crc = if size == fields {
            false
        } else if size == fields + 2 {
            true
        } else {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: format!(
                    "Size field {size} fits neither the {fields} octets the flags announce nor {} with an E2E-CRC",
                    fields + 2
                ),
            });
        };
        if has_crc {
            verify_crc(C, record)?;
        } else if crc_required {
            return Err(GattError::Invalid {
                characteristic: C,
                reason: "no E2E-CRC, but CGM Feature says E2E-CRC is supported".into(),
            });
        }
        let body = &record[1..fields];
        let mut r = Reader::with_flags(C, body, 5, &[])?;
        let glucose = r.sfloat("interstitial_glucose")?;
        let time_offset_minutes = r.u16()?;
        let warning = r.optional(WARNING, Reader::u8)?;
        let cal_temp = r.optional(CAL_TEMP, Reader::u8)?;
        let status = r.optional(STATUS, Reader::u8)?;
        let trend = r.optional(TREND, |r| r.sfloat("glucose_trend"))?;
        let quality = r.optional(QUALITY, |r| r.sfloat("cgm_quality"))?;
        let e2e_crc = has_crc.then(|| u16::from_le_bytes([record[size - 2], record[size - 1]]));
        let m = Self {
            glucose,
            time_offset_minutes,
            status: CgmStatus {
                status,
                cal_temp,
                warning,
            },
            trend,
            quality,
            e2e_crc,
            session_start: None,
            anomalies: r.finish(RESERVED),
        };
        Ok((m, rest))
    }

    /// The record placed in its session: its device time becomes the session's start plus
    /// its time offset.
    pub fn in_session(mut self, start: &SessionStartTime) -> Self {
        self.session_start = Some(start.clone());
        self
    }
}

impl FinalMeasurement for CgmMeasurement {
    fn characteristic(&self) -> Characteristic {
        Characteristic::CgmMeasurement
    }

    fn quantities(&self) -> Vec<Quantity> {
        let mut q = vec![quantity("interstitial_glucose", self.glucose, "mg/dL")];
        if let Some(t) = self.trend {
            q.push(quantity("glucose_trend", t, "mg/dL/min"));
        }
        if let Some(p) = self.quality {
            q.push(quantity("cgm_quality", p, "%"));
        }
        q
    }

    fn device_time(&self) -> Option<DeviceTime> {
        self.session_start
            .as_ref()?
            .time_at(self.time_offset_minutes)
    }

    fn flags(&self) -> Vec<ReadingFlag> {
        let mut flags = Vec::new();
        if self.status.time_sync_required() {
            flags.push(ReadingFlag::ClockNotSet);
        }
        flags.extend(
            self.status
                .annunciations()
                .into_iter()
                .map(ReadingFlag::DeviceStatus),
        );
        flags
    }

    fn sequence(&self) -> Option<u64> {
        Some(u64::from(self.time_offset_minutes))
    }

    fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }
}

#[cfg(test)]
mod tests;
