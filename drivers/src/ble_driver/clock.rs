//! The device's clock at each connection: reading the Current Time (0x2A2B) against the
//! gateway's clock, and, when the configuration asks for it, setting the device's clock.
//!
//! The comparison is made before any write, so the readings of this connection (stored
//! and new measurements alike, stamped before the connection by the device's old clock)
//! are placed on the gateway's timeline by the offset the device's clock had when it
//! stamped them. After a write, the device's next connection shows (almost) no offset.

use btleplug::api::{CharPropFlags, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::{uuid_from_u16, BleDeviceConfig};
use crate::ble::{self, CurrentTime, GattValue};
use crate::reading::{ClockComparison, DeviceTime};

/// The Current Time characteristic.
const CURRENT_TIME: u16 = 0x2A2B;

/// The zone a device's clock shows: its wall-clock time is the gateway's time in this
/// zone (the zone the gateway reads the device's time stamps in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WallClock {
    /// The gateway's own local zone.
    GatewayLocal,
    /// A named IANA zone.
    Named(chrono_tz::Tz),
}

impl WallClock {
    /// The wall-clock time in this zone at instant `t`.
    pub fn at(self, t: DateTime<Utc>) -> NaiveDateTime {
        match self {
            WallClock::GatewayLocal => t.with_timezone(&chrono::Local).naive_local(),
            WallClock::Named(tz) => t.with_timezone(&tz).naive_local(),
        }
    }
}

/// Reads the device's current time, if it offers a readable Current Time, and compares it
/// with the gateway's clock at the middle of the read. Then, if `cfg.set_clock` is set and
/// the characteristic is writable, writes the gateway's time (once per connection).
/// Failures are logged and leave the connection without a comparison (today's rule).
pub(super) async fn compare_and_set(
    p: &Peripheral,
    cfg: &BleDeviceConfig,
) -> Option<ClockComparison> {
    let c = p
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == uuid_from_u16(CURRENT_TIME))?;
    let mut comparison = None;
    if c.properties.contains(CharPropFlags::READ) {
        let before = Utc::now();
        let read = p.read(&c).await;
        let after = Utc::now();
        let gateway_now = before + (after - before) / 2;
        match read.map(|bytes| ble::decode(CURRENT_TIME, &bytes)) {
            Ok(Ok(GattValue::CurrentTime(t))) => match t.device_now() {
                Ok(device_now) => {
                    comparison = Some(ClockComparison {
                        device_now: DeviceTime::Local(device_now),
                        gateway_now,
                    });
                }
                Err(e) => {
                    tracing::warn!(profile = %cfg.identity.profile, problem = %e, "a BLE device's clock gives no time; its time stamps are taken as they are");
                }
            },
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(profile = %cfg.identity.profile, error = %e, "a BLE device's current time was rejected; its time stamps are taken as they are");
            }
            Err(e) => {
                tracing::debug!(device = %cfg.address, error = %e, "current time read failed");
            }
        }
    }
    let Some(zone) = cfg.set_clock else {
        return comparison;
    };
    let writable = c
        .properties
        .intersects(CharPropFlags::WRITE | CharPropFlags::WRITE_WITHOUT_RESPONSE);
    if !writable {
        tracing::warn!(profile = %cfg.identity.profile, "set_clock is on, but the device's Current Time is not writable; its clock is left as it is");
        return comparison;
    }
    let Some(value) = CurrentTime::encode(zone.at(Utc::now())) else {
        return comparison;
    };
    let kind = if c.properties.contains(CharPropFlags::WRITE) {
        WriteType::WithResponse
    } else {
        WriteType::WithoutResponse
    };
    match p.write(&c, &value, kind).await {
        Ok(()) => {
            tracing::info!(profile = %cfg.identity.profile, "BLE device's clock set to the gateway's time");
        }
        Err(e) => {
            tracing::warn!(profile = %cfg.identity.profile, error = %e, "setting a BLE device's clock failed");
        }
    }
    comparison
}
