//! Ingest transports: one module per driver the gateway can run (`sim`, `serial`, `ble`,
//! `mqtt`). Each holds its configuration section as written (serde, unknown keys
//! refused), its validation into settings, and the binding of the configured devices or
//! ports to the loaded profiles; its settings then build the driver ([`Source::build`]),
//! so the daemon starts drivers without knowing each kind.

pub mod ble;
pub mod mqtt;
pub mod serial;
pub mod sim;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use iomt_drivers::{DeviceIdentity, Driver, RejectReceiver, Transport};

use crate::limits;
use crate::normalize::Zone;
use crate::profile::{Profile, TransportSpec};

/// Why a configured transport cannot start with the loaded profiles.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// `[mqtt] profiles` names a profile that is not a loaded MQTT profile.
    #[error("mqtt.profiles names `{0}`, which is not a loaded MQTT profile")]
    UnknownMqttProfile(String),
    /// The MQTT driver is enabled but there is nothing to subscribe to.
    #[error(
        "the MQTT driver is enabled but no MQTT profile is loaded (check gateway.profiles_dir)"
    )]
    NoMqttProfile,
    /// The MQTT credentials file cannot be used.
    #[error("mqtt.credentials_file: {0}")]
    MqttCredentials(String),
    /// TLS to the MQTT broker cannot be set up (CA or client certificate files).
    #[error("mqtt: {0}")]
    MqttTls(String),
    /// A serial port names a profile that is not loaded or not a serial profile.
    #[error("serial port `{path}`: profile `{profile}` is not a loaded serial profile{hint}")]
    UnknownSerialProfile {
        /// The port path.
        path: String,
        /// The profile id it names.
        profile: String,
        /// The loaded serial profiles, for the message.
        hint: String,
    },
    /// A serial port says `live_clock = true`, but its profile reads no device time stamp.
    #[error("serial port `{path}`: live_clock = true, but profile `{profile}` reads no time stamp from the device; remove live_clock or declare the time stamp in the profile")]
    LiveClockWithoutTimeStamp {
        /// The port path.
        path: String,
        /// The profile id it names.
        profile: String,
    },
    /// A BLE device names a profile that is not loaded or not a BLE profile.
    #[error("ble device `{address}`: profile `{profile}` is not a loaded BLE profile{hint}")]
    UnknownBleProfile {
        /// The device address.
        address: String,
        /// The profile id it names.
        profile: String,
        /// The loaded BLE profiles, for the message.
        hint: String,
    },
    /// A BLE profile's service UUID is not a UUID.
    #[error("profile `{profile}`: advertised service `{service}` is not a UUID")]
    BadServiceUuid {
        /// The profile id.
        profile: String,
        /// The service as written.
        service: String,
    },
    /// The simulator names a profile that is not loaded or not a sim profile.
    #[error("sim.profiles names `{0}`, which is not a loaded simulator profile")]
    UnknownSimProfile(String),
    /// The simulator has no profile to run.
    #[error("the simulator is enabled but no simulator profile is loaded")]
    NoSimProfile,
    /// A driver refused its configuration.
    #[error(transparent)]
    Driver(#[from] iomt_drivers::DriverError),
}

/// What a transport needs from the rest of the gateway to build its driver.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The kit's health model: drivers report their devices' links into it, and the
    /// configured devices are listed in it (`None`: nothing is reported).
    pub health: Option<&'a crate::health::Health>,
    /// The loaded profiles.
    pub profiles: &'a [Arc<Profile>],
    /// The gateway's zone for device times without zone.
    pub zone: Zone,
    /// Per-profile zones (`[devices.<profile>]`).
    pub device_zones: &'a BTreeMap<String, Zone>,
    /// The directory of the kit's state next to the outbox (the BLE driver keeps its
    /// glucose sequence numbers there).
    pub state_dir: &'a Path,
}

impl Context<'_> {
    /// The zone for a profile's devices.
    pub fn zone_for(&self, profile: &str) -> Zone {
        self.device_zones.get(profile).copied().unwrap_or(self.zone)
    }
}

/// A driver ready to run, with what the rest of the gateway must know about it.
pub struct Built {
    /// The driver.
    pub driver: Box<dyn Driver>,
    /// Zones set per port or device, keyed `transport:address`.
    pub address_zones: Vec<(String, Zone)>,
    /// The channel of refused messages and how many the dead letters keep, when the
    /// driver refuses messages.
    pub rejects: Option<(RejectReceiver, usize)>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("driver", &self.driver.name())
            .field("address_zones", &self.address_zones)
            .field("rejects", &self.rejects.as_ref().map(|(_, limit)| limit))
            .finish()
    }
}

/// A configured transport's validated settings.
pub trait Source {
    /// Binds the configured devices or ports to the loaded profiles and builds the driver.
    fn build(&self, ctx: &Context<'_>) -> Result<Built, IngestError>;
}

/// The loaded profiles of one transport with their transport specs (`spec` is one of
/// [`TransportSpec::as_sim`], `as_serial`, `as_ble`, `as_mqtt`).
fn of_transport<T>(
    profiles: &[Arc<Profile>],
    spec: fn(&TransportSpec) -> Option<&T>,
) -> Vec<(&Profile, &T)> {
    profiles
        .iter()
        .filter_map(|p| spec(&p.transport).map(|s| (p.as_ref(), s)))
        .collect()
}

/// The profiles a driver section selects by id (all of them when `wanted` is empty), or
/// the first wanted id that is not among them.
fn select<'a, T>(
    loaded: Vec<(&'a Profile, &'a T)>,
    wanted: &[String],
) -> Result<Vec<(&'a Profile, &'a T)>, String> {
    if let Some(missing) = wanted
        .iter()
        .find(|w| !loaded.iter().any(|(p, _)| &p.id == *w))
    {
        return Err(missing.clone());
    }
    Ok(loaded
        .into_iter()
        .filter(|(p, _)| wanted.is_empty() || wanted.contains(&p.id))
        .collect())
}

/// The profile `id` a configured port or device is bound to, or, when no loaded
/// `transport` profile has that id, the end of the error message listing those loaded.
fn bound<'a, T>(
    loaded: &[(&'a Profile, &'a T)],
    id: &str,
    transport: &str,
) -> Result<(&'a Profile, &'a T), String> {
    if let Some(found) = loaded.iter().find(|(p, _)| p.id == id) {
        return Ok(*found);
    }
    let known: Vec<&str> = loaded.iter().map(|(p, _)| p.id.as_str()).collect();
    Err(if known.is_empty() {
        format!("; no {transport} profile is loaded")
    } else {
        format!("; loaded {transport} profiles: {}", known.join(", "))
    })
}

/// The identity of a device read with `profile` at `address`.
fn identity(
    profile: &Profile,
    transport: Transport,
    address: String,
    serial_number: Option<String>,
) -> Arc<DeviceIdentity> {
    Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: profile.id.clone(),
        transport,
        address,
        serial_number,
        manufacturer: Some(profile.manufacturer.clone()),
        model: Some(profile.model.clone()),
    })
}

/// The zone `{key}.time_zone` names, if set; a name that is not a zone is a problem.
pub fn optional_zone(key: &str, name: &Option<String>, problems: &mut Vec<String>) -> Option<Zone> {
    let name = name.as_ref()?;
    name.parse::<chrono_tz::Tz>()
        .map(Zone::Named)
        .map_err(|_| {
            problems.push(format!(
                "{key}.time_zone: `{name}` is not an IANA time zone name (e.g. `Europe/Berlin`, `UTC`)"
            ))
        })
        .ok()
}

/// Checks a driver section's reconnect delays: the first at least 1 ms, the longest at
/// least the first, both within [`limits`].
fn check_reconnect(section: &str, initial_ms: u64, max_ms: u64, problems: &mut Vec<String>) {
    limits::check(
        &format!("{section}.reconnect_initial_ms"),
        initial_ms,
        &limits::RECONNECT_INITIAL_MS,
        problems,
    );
    if !(initial_ms..=limits::RECONNECT_MAX_MS).contains(&max_ms) {
        problems.push(format!(
            "{section}.reconnect_max_ms = {max_ms} is out of range: it must be between {section}.reconnect_initial_ms ({initial_ms}) and {}",
            limits::RECONNECT_MAX_MS
        ));
    }
}

/// Default of every `reconnect_initial_ms`: 500 ms.
fn default_reconnect_initial() -> u64 {
    500
}

/// Default of every `reconnect_max_ms`: 30 s.
fn default_reconnect_max() -> u64 {
    30_000
}
