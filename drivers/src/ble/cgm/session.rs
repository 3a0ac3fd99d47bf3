//! CGM Feature (0x2AA8), CGM Session Start Time (0x2AAA) and CGM Session Run Time
//! (0x2AAB).
//!
//! - **CGM Feature**: 24 feature bits, the Type-Sample Location octet, and an E2E-CRC that
//!   is always there (0xFFFF when the device does not support E2E-CRC, and then not
//!   checked). Bit 12 "E2E-CRC supported" makes every CGM characteristic carry a CRC.
//! - **Session Start Time**: a Date Time, the Time Zone (signed quarter hours, -48..=56,
//!   -128 unknown) and the DST Offset (0 standard, 2 = +0.5 h, 4 = +1 h, 8 = +2 h, 255
//!   unknown), then an optional E2E-CRC. With zone and DST
//!   known, a time in the session is zoned (UTC offset = zone + DST); otherwise it is the
//!   device's wall-clock time and the gateway applies the device's configured zone.
//! - **Session Run Time**: the expected run time in hours, then an optional E2E-CRC.
//!
//! A present E2E-CRC is always verified; a wrong one rejects the value.

use chrono::{Duration, FixedOffset};

use super::verify_crc;
use crate::ble::reader::Reader;
use crate::ble::{Anomaly, Characteristic, GattDateTime, GattError};
use crate::reading::DeviceTime;

/// Splits off and verifies an optional E2E-CRC: a value of `len` octets has none, one of
/// `len + 2` has one; any other length is rejected.
fn body_of(c: Characteristic, bytes: &[u8], len: usize) -> Result<(&[u8], bool), GattError> {
    if bytes.len() == len {
        Ok((bytes, false))
    } else if bytes.len() == len + 2 {
        verify_crc(c, bytes)?;
        Ok((&bytes[..len], true))
    } else if bytes.len() < len {
        Err(GattError::Truncated {
            characteristic: c,
            len: bytes.len(),
            required: len,
        })
    } else {
        Err(GattError::Invalid {
            characteristic: c,
            reason: format!(
                "{} octets: neither {len} nor {} with an E2E-CRC",
                bytes.len(),
                len + 2
            ),
        })
    }
}

/// A decoded CGM Feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgmFeature {
    /// The 24 feature bits.
    pub features: u32,
    /// The Type-Sample Location octet (type in the low nibble).
    pub type_location: u8,
}

impl CgmFeature {
    /// Bit 12 of the features.
    const E2E_CRC_SUPPORTED: u32 = 1 << 12;

    /// Decodes the characteristic's value; its E2E-CRC is verified when bit 12 says the
    /// device supports E2E-CRC.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::CgmFeature;
        let mut r = Reader::new(C, bytes);
        let features = r.u24()?;
        let type_location = r.u8()?;
        let _crc = r.u16()?;
        if features & Self::E2E_CRC_SUPPORTED != 0 {
            verify_crc(C, &bytes[..6])?;
        }
        Ok(Self {
            features,
            type_location,
        })
    }

    /// Whether the device protects its CGM values with an E2E-CRC (then every CGM
    /// Measurement must carry one).
    pub fn e2e_crc_supported(self) -> bool {
        self.features & Self::E2E_CRC_SUPPORTED != 0
    }
}

/// A decoded CGM Session Start Time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStartTime {
    /// The session's start, device wall-clock time.
    pub start: GattDateTime,
    /// The time zone in minutes east of UTC, if known and in range.
    pub zone_minutes: Option<i32>,
    /// The daylight saving offset in minutes, if known.
    pub dst_minutes: Option<i32>,
    /// Whether an E2E-CRC was sent (it was verified).
    pub e2e_crc: bool,
    /// What the decoder noticed.
    pub anomalies: Vec<Anomaly>,
}

impl SessionStartTime {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::CgmSessionStartTime;
        let (body, e2e_crc) = body_of(C, bytes, 9)?;
        let mut r = Reader::new(C, body);
        let start = r.timestamp()?;
        let zone_raw = r.u8()?;
        let zone = i8::from_le_bytes([zone_raw]);
        let dst = r.u8()?;
        let zone_minutes = match zone {
            -48..=56 => Some(i32::from(zone) * 15),
            -128 => None,
            _ => {
                r.note(Anomaly::ReservedCode {
                    field: "time_zone",
                    code: zone_raw,
                });
                None
            }
        };
        let dst_minutes = match dst {
            0 => Some(0),
            2 => Some(30),
            4 => Some(60),
            8 => Some(120),
            255 => None,
            other => {
                r.note(Anomaly::ReservedCode {
                    field: "dst_offset",
                    code: other,
                });
                None
            }
        };
        Ok(Self {
            start,
            zone_minutes,
            dst_minutes,
            e2e_crc,
            anomalies: r.finish(0),
        })
    }

    /// The time `offset_minutes` after the session's start: zoned when the zone and DST
    /// offset are known, the device's wall-clock time otherwise; none when the start is
    /// not a usable time.
    pub fn time_at(&self, offset_minutes: u16) -> Option<DeviceTime> {
        let local = self
            .start
            .to_naive()
            .ok()?
            .checked_add_signed(Duration::minutes(i64::from(offset_minutes)))?;
        match (self.zone_minutes, self.dst_minutes) {
            (Some(zone), Some(dst)) => {
                let offset = FixedOffset::east_opt(zone.checked_add(dst)?.checked_mul(60)?)?;
                local
                    .and_local_timezone(offset)
                    .single()
                    .map(DeviceTime::Zoned)
            }
            _ => Some(DeviceTime::Local(local)),
        }
    }
}

/// A decoded CGM Session Run Time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRunTime {
    /// The expected run time of the session, hours.
    pub hours: u16,
    /// Whether an E2E-CRC was sent (it was verified).
    pub e2e_crc: bool,
}

impl SessionRunTime {
    /// Decodes the characteristic's value.
    pub fn decode(bytes: &[u8]) -> Result<Self, GattError> {
        const C: Characteristic = Characteristic::CgmSessionRunTime;
        let (body, e2e_crc) = body_of(C, bytes, 2)?;
        let hours = Reader::new(C, body).u16()?;
        Ok(Self { hours, e2e_crc })
    }
}
