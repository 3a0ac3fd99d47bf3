//! What a device shows before and at a connection: the service UUIDs it advertises and
//! the Device Information strings it reports.

use super::{lock, SimBluez};

impl SimBluez {
    /// Sets the service UUIDs the device advertises (by default its kind's primary
    /// service), lower-case 128-bit: many cuffs advertise only a vendor service until
    /// paired. A discovery filtered by service UUIDs (`SetDiscoveryFilter`) reports the
    /// device only when one of these is in the filter, as BlueZ does. Call before the
    /// device is first reported.
    pub fn advertise_services(&self, address: &str, uuids: &[&str]) {
        if let Some(d) = lock(&self.state).devices.get_mut(address) {
            d.advertised = uuids.iter().map(|u| u.to_lowercase()).collect();
            if !d.connected {
                d.uuids.clone_from(&d.advertised);
            }
        }
    }

    /// Sets the Manufacturer Name (0x2A29) and Model Number (0x2A24) the device reports
    /// in its Device Information (by default "Simulated Medical" and its kind).
    pub fn set_device_information(&self, address: &str, manufacturer: &str, model: &str) {
        if let Some(d) = lock(&self.state).devices.get_mut(address) {
            for c in &mut d.chars {
                match c.uuid {
                    0x2A29 => c.value = manufacturer.as_bytes().to_vec(),
                    0x2A24 => c.value = model.as_bytes().to_vec(),
                    _ => {}
                }
            }
        }
    }
}
