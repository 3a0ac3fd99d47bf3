//! `[ble]` and `[[ble.devices]]`: the Bluetooth LE driver's settings, its allow-list
//! bound to the BLE profiles' services, and the profiles an advertisement matches
//! (`iomt-gateway scan`).

use std::time::Duration;

use iomt_drivers::ble_driver::matching::{DeviceInfoAgreement, Match, Recognition};
use iomt_drivers::ble_driver::{
    uuid_from_u16, BleConfig, BleDeviceConfig, BleDriver, Nearby, WallClock,
};
use iomt_drivers::Transport;
use serde::Deserialize;

use super::{
    bound, check_reconnect, default_reconnect_initial, default_reconnect_max, identity,
    of_transport, optional_zone, Built, Context, IngestError, Source,
};
use crate::normalize::Zone;
use crate::profile::{Profile, TransportSpec};

/// `[ble]`: the Bluetooth LE driver, on when `[[ble.devices]]` lists a device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBle {
    /// The adapter to use (`hci0`); default: the first one BlueZ reports.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Milliseconds before retrying a failed connect (or a Bluetooth stack not up yet).
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds (the wait doubles up to it).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// The allow-list: only these devices are connected, whatever else advertises.
    #[serde(default)]
    pub devices: Vec<RawBleDevice>,
}

impl Default for RawBle {
    fn default() -> Self {
        Self {
            adapter: None,
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_ms: default_reconnect_max(),
            devices: Vec::new(),
        }
    }
}

/// `[[ble.devices]]`: one allow-listed device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBleDevice {
    /// The Bluetooth address, `AA:BB:CC:DD:EE:FF` (`bluetoothctl devices` lists it).
    pub address: String,
    /// The id of the BLE profile of this device.
    pub profile: String,
    /// IANA zone of this device's clock; default: `[devices.<profile>]`, then `[gateway]`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Set the device's clock to the gateway's time (in the device's zone) at each
    /// connection, after reading it, when the device offers a writable Current Time
    /// (0x2A2B). Off by default: the clock is only read and compared.
    #[serde(default)]
    pub set_clock: bool,
    /// Forward at most one measurement per this many milliseconds within a connection;
    /// the ones in between are dropped and counted (a heart-rate strap notifies about
    /// once a second). 0 (default): forward every one. Glucose records and the battery
    /// level are never dropped.
    #[serde(default)]
    pub min_interval_ms: u64,
}

/// One allow-listed BLE device, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BleDevice {
    /// The address, upper case.
    pub address: String,
    /// The profile id.
    pub profile: String,
    /// The zone of the device's clock, when set for this device.
    pub zone: Option<Zone>,
    /// Set the device's clock at each connection.
    pub set_clock: bool,
    /// At most one measurement per this interval; `None`: every one.
    pub min_interval: Option<Duration>,
}

/// BLE driver settings, validated.
#[derive(Debug, Clone)]
pub struct BleSettings {
    /// The adapter (`hci0`), or the first.
    pub adapter: Option<String>,
    /// The allow-list (at least one device).
    pub devices: Vec<BleDevice>,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl RawBle {
    /// Validates the section, adding each problem to `problems`; the settings when a
    /// device is allow-listed.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<BleSettings> {
        let mut devices = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("ble.devices[{i}]");
            let address = d.address.trim().to_uppercase();
            let valid = address.len() == 17
                && address.split(':').count() == 6
                && address
                    .split(':')
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
            if !valid {
                problems.push(format!(
                    "{key}.address `{}` is not a Bluetooth address like `AA:BB:CC:DD:EE:FF`",
                    d.address
                ));
            }
            if d.profile.trim().is_empty() {
                problems.push(format!("{key}.profile must name a BLE profile id"));
            }
            if self.devices[..i]
                .iter()
                .any(|q| q.address.trim().to_uppercase() == address)
            {
                problems.push(format!(
                    "{key}.address `{}` is configured twice; one address, one device",
                    d.address
                ));
            }
            let zone = optional_zone(&key, &d.time_zone, problems);
            crate::limits::check(
                &format!("{key}.min_interval_ms"),
                d.min_interval_ms,
                &crate::limits::MIN_INTERVAL_MS,
                problems,
            );
            devices.push(BleDevice {
                address,
                profile: d.profile.clone(),
                zone,
                set_clock: d.set_clock,
                min_interval: (d.min_interval_ms > 0)
                    .then(|| Duration::from_millis(d.min_interval_ms)),
            });
        }
        check_reconnect(
            "ble",
            self.reconnect_initial_ms,
            self.reconnect_max_ms,
            problems,
        );
        (!devices.is_empty()).then(|| BleSettings {
            adapter: self.adapter.clone(),
            devices,
            reconnect_initial: Duration::from_millis(self.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        })
    }
}

/// Parses a profile's service UUID: 16-bit (`1810`), 32-bit or 128-bit form.
fn service_uuid(profile: &str, s: &str) -> Result<uuid::Uuid, IngestError> {
    let bad = || IngestError::BadServiceUuid {
        profile: profile.to_string(),
        service: s.to_string(),
    };
    let t = s.trim().trim_start_matches("0x");
    if t.len() <= 4 {
        return u16::from_str_radix(t, 16)
            .map(uuid_from_u16)
            .map_err(|_| bad());
    }
    uuid::Uuid::parse_str(t).map_err(|_| bad())
}

/// Builds the BLE driver's allow-list: each configured address with its profile's
/// advertised services, name prefix and measurement characteristics.
pub fn ble_devices(
    ctx: &Context<'_>,
    settings: &BleSettings,
) -> Result<Vec<BleDeviceConfig>, IngestError> {
    let loaded = of_transport(ctx.profiles, TransportSpec::as_ble);
    let mut devices = Vec::new();
    for d in &settings.devices {
        let (profile, spec) =
            bound(&loaded, &d.profile, "BLE").map_err(|hint| IngestError::UnknownBleProfile {
                address: d.address.clone(),
                profile: d.profile.clone(),
                hint,
            })?;
        let services = spec
            .services
            .iter()
            .map(|s| service_uuid(&profile.id, s))
            .collect::<Result<Vec<_>, _>>()?;
        devices.push(BleDeviceConfig {
            address: d.address.clone(),
            identity: identity(profile, Transport::Ble, d.address.clone(), None),
            services,
            name_prefix: spec.name_prefix.clone(),
            measurements: spec.characteristics().collect(),
            min_interval: d.min_interval,
            battery: profile.field(iomt_drivers::ble::BATTERY_FIELD).is_some(),
            set_clock: d.set_clock.then(|| {
                match d.zone.unwrap_or_else(|| ctx.zone_for(&profile.id)) {
                    Zone::GatewayLocal => WallClock::GatewayLocal,
                    Zone::Named(tz) => WallClock::Named(tz),
                }
            }),
        });
    }
    Ok(devices)
}

/// A loaded BLE profile an advertisement matches, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileMatch {
    /// The profile id.
    pub id: String,
    /// How it matched (name prefix, service).
    pub how: Match,
}

/// The loaded BLE profiles a device seen nearby matches, by the driver's own rule
/// ([`Recognition::matches`]: an advertised service in common, or the profile's name
/// prefix), best first ([`Match::rank`]: its Device Information, when read, agreeing
/// with the profile's manufacturer and model, then name prefix, then service; ties by id).
pub fn matching_ble_profiles(profiles: &[Profile], device: &Nearby) -> Vec<ProfileMatch> {
    let mut found: Vec<ProfileMatch> = profiles
        .iter()
        .filter_map(|p| {
            let spec = p.transport.as_ble()?;
            let own: Vec<uuid::Uuid> = spec
                .services
                .iter()
                .filter_map(|s| service_uuid(&p.id, s).ok())
                .collect();
            let rule = Recognition {
                services: &own,
                name_prefix: spec.name_prefix.as_deref(),
            };
            let mut how = rule.matches(device.name.as_deref(), &device.services)?;
            how.device_info = DeviceInfoAgreement::of(
                &p.manufacturer,
                &p.model,
                device.manufacturer.as_deref(),
                device.model.as_deref(),
            );
            Some(ProfileMatch {
                id: p.id.clone(),
                how,
            })
        })
        .collect();
    found.sort_by(|a, b| b.how.rank().cmp(&a.how.rank()).then(a.id.cmp(&b.id)));
    found
}

impl Source for BleSettings {
    fn build(&self, ctx: &Context<'_>) -> Result<Built, IngestError> {
        let devices = ble_devices(ctx, self)?;
        if let Some(health) = ctx.health {
            for d in &devices {
                health.device_configured(&d.identity);
            }
        }
        let address_zones = self
            .devices
            .iter()
            .filter_map(|d| Some((format!("{}:{}", Transport::Ble, d.address), d.zone?)))
            .collect();
        let driver = BleDriver::new(BleConfig {
            adapter: self.adapter.clone(),
            devices,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
            // The glucose sequence file lives next to the outbox: both are the kit's state.
            sequence_file: ctx.state_dir.join("ble-glucose-sequences.json"),
            links: ctx.health.map(|h| h.link_reporter()).unwrap_or_default(),
        })?;
        Ok(Built {
            driver: Box::new(driver),
            address_zones,
            rejects: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_problems, minimal_with, MINIMAL};
    use crate::normalize::Zone;

    #[test]
    fn ble_devices_are_validated_naming_each_key() {
        let text = format!(
            "{MINIMAL}\n[[ble.devices]]\naddress = \"AA:BB:CC\"\nprofile = \"cuff\"\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\ntime_zone = \"Mars/Olympus\"\n[[ble.devices]]\naddress = \"AA:BB:CC:DD:EE:FF\"\nprofile = \"cuff\"\n"
        );
        assert_problems(
            &text,
            &[
                "ble.devices[0].address `AA:BB:CC`",
                "ble.devices[1].time_zone",
                "ble.devices[2].address `AA:BB:CC:DD:EE:FF` is configured twice",
            ],
        );
    }

    #[test]
    fn a_ble_device_binds_an_address_to_a_profile_with_its_zone() {
        let c = minimal_with(
            "[ble]\nadapter = \"hci1\"\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\ntime_zone = \"UTC\"\n",
        )
        .unwrap();
        let ble = c.ble.unwrap();
        assert_eq!(ble.adapter.as_deref(), Some("hci1"));
        assert_eq!(ble.devices[0].address, "AA:BB:CC:DD:EE:FF");
        assert_eq!(ble.devices[0].zone, Some(Zone::Named(chrono_tz::UTC)));
        assert!(!ble.devices[0].set_clock, "clock setting is opt-in");
    }

    #[test]
    fn set_clock_is_a_boolean_per_device() {
        let c = minimal_with(
            "[ble]\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\nset_clock = true\n",
        )
        .unwrap();
        assert!(c.ble.unwrap().devices[0].set_clock);
        assert_problems(
            &format!("{MINIMAL}\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\nmin_interval_ms = 86400001\n"),
            &["ble.devices[0].min_interval_ms"],
        );
        let err = minimal_with(
            "[ble]\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\nset_clock = \"sometimes\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("set_clock"), "{err}");
    }
}
