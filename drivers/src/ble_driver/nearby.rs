//! `iomt-gateway scan`'s look around: every device BlueZ reports during a discovery, and,
//! for the devices the caller asks about, the manufacturer and model their Device
//! Information reports (a short connection: connect, read 0x2A29 and 0x2A24, hang up).

use std::time::Duration;

use btleplug::api::{Central, CharPropFlags, Peripheral as _, ScanFilter};
use btleplug::platform::{Manager, Peripheral};
use uuid::Uuid;

use super::{find_adapter, uuid_to_u16};
use crate::ble::{self, GattValue};

/// How long reading one device's Device Information may take.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// A device seen advertising during [`scan_nearby`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nearby {
    /// Its Bluetooth address, upper case.
    pub address: String,
    /// Its advertised local name.
    pub name: Option<String>,
    /// Last signal strength, dBm.
    pub rssi: Option<i16>,
    /// Advertised (or, for a known device, resolved) service UUIDs.
    pub services: Vec<Uuid>,
    /// The Manufacturer Name String its Device Information reports, when it was read.
    pub manufacturer: Option<String>,
    /// The Model Number String its Device Information reports, when it was read.
    pub model: Option<String>,
}

/// Scans for `duration` on the adapter named `adapter` (or the first) and returns every
/// device BlueZ reported, sorted by address. For each device `identify` accepts, it then
/// connects (while still discovering: BlueZ connects only to a device it sees), reads its
/// Device Information manufacturer and model, and disconnects; a device that cannot be
/// read keeps `None` there.
pub async fn scan_nearby(
    adapter: Option<&str>,
    duration: Duration,
    identify: &(dyn Fn(&Nearby) -> bool + Sync),
) -> Result<Vec<Nearby>, btleplug::Error> {
    let manager = Manager::new().await?;
    let adapter = find_adapter(&manager, adapter).await?;
    adapter.start_scan(ScanFilter::default()).await?;
    tokio::time::sleep(duration).await;
    let peripherals = adapter.peripherals().await;
    let mut found = Vec::new();
    for p in peripherals.iter().flatten() {
        let Ok(Some(props)) = p.properties().await else {
            continue;
        };
        let mut nearby = Nearby {
            address: props.address.to_string().to_uppercase(),
            name: props.local_name,
            rssi: props.rssi,
            services: props.services,
            manufacturer: None,
            model: None,
        };
        if identify(&nearby) {
            match tokio::time::timeout(IDENTIFY_TIMEOUT, device_information(p)).await {
                Ok(Ok((manufacturer, model))) => {
                    nearby.manufacturer = manufacturer;
                    nearby.model = model;
                }
                Ok(Err(e)) => {
                    tracing::debug!(device = %nearby.address, error = %e, "Device Information not read")
                }
                Err(_) => {
                    tracing::debug!(device = %nearby.address, "Device Information not read in time")
                }
            }
            if let Err(e) = p.disconnect().await {
                tracing::debug!(device = %nearby.address, error = %e, "disconnecting");
            }
        }
        found.push(nearby);
    }
    if let Err(e) = adapter.stop_scan().await {
        tracing::debug!(error = %e, "stopping discovery");
    }
    peripherals?;
    found.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(found)
}

/// Connects and reads the Manufacturer Name (0x2A29) and Model Number (0x2A24) strings.
async fn device_information(
    p: &Peripheral,
) -> Result<(Option<String>, Option<String>), btleplug::Error> {
    p.connect().await?;
    p.discover_services().await?;
    let (mut manufacturer, mut model) = (None, None);
    for c in p.characteristics() {
        let Some(u @ (0x2A29 | 0x2A24)) = uuid_to_u16(c.uuid) else {
            continue;
        };
        if !c.properties.contains(CharPropFlags::READ) {
            continue;
        }
        let bytes = p.read(&c).await?;
        if let Ok(GattValue::DeviceString(_, s)) = ble::decode(u, &bytes) {
            if u == 0x2A29 {
                manufacturer = s.value;
            } else {
                model = s.value;
            }
        }
    }
    Ok((manufacturer, model))
}
