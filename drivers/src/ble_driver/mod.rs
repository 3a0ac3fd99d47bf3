//! The Bluetooth LE driver: the standard GATT health profiles through btleplug (BlueZ
//! over D-Bus on Linux; libdbus honours `DBUS_SYSTEM_BUS_ADDRESS`).
//!
//! **Finding devices.** One scanner task starts discovery (filtered by the profiles'
//! advertised services, or unfiltered when a profile may recognize its device by name:
//! see `matching.rs`) and watches the adapter's events. A device is taken only when its
//! address is on the configured allow-list (`[[ble.devices]]`) **and** it matches that
//! entry's profile (an advertised service UUID, or the advertised name prefix): a home kit
//! must never pick up the neighbour's scale. Everything else is ignored (logged once at
//! debug). For a device taken, the RSSI of the advertisement that announced it (its
//! discovery, or a change of the value) goes to the health view as
//! [`crate::link::LinkEvent::Advertised`], read from the properties fetched anyway.
//!
//! **One task per device.** The scanner hands "seen" and "disconnected" events to each
//! configured device's task over a small bounded channel (`try_send`: a full channel
//! drops a redundant "seen"), so a device that hangs in a connect never stalls the
//! others. A task keeps one btleplug `Peripheral` for its device for the whole scan, and in
//! each session: opens the notification stream **before** `connect()` (BlueZ re-enables
//! a client's notifications on reconnect, so a device may indicate its measurement before
//! `subscribe()` returns), connects, discovers services, reads Device Information
//! (manufacturer, model, serial number) and Battery Level, subscribes to every
//! measurement characteristic the profile maps (and names, once per connection at info,
//! the health characteristics the device offers that the profile does not map), decodes
//! with [`crate::ble::decode`] and sends [`crate::Reading`]s. Values that arrive through the stream for other characteristics
//! (BlueZ announces every read as a value change) are told apart by UUID and ignored.
//!
//! **Reconnect.** Health devices hang up after sending; the task then waits until the
//! device advertises again. A failed connect (BlueZ replays remembered devices that are
//! asleep) is retried with capped exponential [`Backoff`].
//!
//! **Bluetooth restarts and power cycles.** BlueZ drops this client's discovery and
//! notification sessions (and its connections) when bluetoothd restarts or the adapter is
//! powered off; btleplug's event stream then just goes quiet. The scanner ends its scan
//! (and every device task) when the adapter reports `Powered` false (btleplug's
//! `StateUpdate`) or when a small watch of its own on the system bus (`watch.rs`:
//! `NameOwnerChanged` of `org.bluez`, InterfacesRemoved of the adapter) sees BlueZ go,
//! with a warning naming the cause. It starts again, with new device tasks, as soon as
//! BlueZ and the adapter are back (InterfacesAdded or `NameOwnerChanged` end the wait;
//! only while they are missing does a bounded [`Backoff`] retry), with an info line
//! `BLE scanning resumed`. After a power-off it waits for `Powered` true without
//! touching the adapter: starting discovery would power it on again, against whoever
//! switched it off. Nothing is polled: an idle driver sleeps on D-Bus signals.
//!
//! **Glucose meters** are asked through the Record Access Control Point for the records
//! after the last sequence number fetched (`01 03 01 <seq+1>`, or `01 01` the first
//! time). Each record is sent with [`ReadingSender::send_acked`] and its sequence number is
//! recorded in the [`SequenceStore`] only once the reading is committed to the outbox, so
//! across restarts nothing is fetched twice or skipped. **Continuous glucose monitors**
//! get the same promise, keyed by their time offset within a sensor session (`cgm.rs`).
//!
//! **Logs.** Connections are info lines naming the profile only; addresses, serial
//! numbers and values appear at debug at most. A packet that does not decode is counted
//! and logged at debug (hex bytes); each session ends with an info line giving the
//! number of readings and rejected packets, and the rejections by kind (`truncated: 2`).

mod cgm;
mod clock;
mod device;
pub mod matching;
mod nearby;
mod scanner;
pub mod sequence;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btleplug::api::{Central, Manager as _};
use btleplug::platform::{Adapter, Manager, Peripheral};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::driver::{Driver, DriverError, DriverFuture, ReadingSender};
use crate::reading::DeviceIdentity;

pub use clock::WallClock;
pub use nearby::{scan_nearby, Nearby};
use scanner::{log_change, scan, wait_powered_on, Lost};
pub use sequence::{SequenceError, SequenceStore};
use watch::BluezWatch;

/// The Bluetooth SIG base UUID's tail: `0000xxxx-0000-1000-8000-00805f9b34fb`.
const BASE_TAIL: u128 = 0x0000_0000_0000_1000_8000_0080_5f9b_34fb;

/// The 128-bit UUID of a 16-bit SIG UUID.
pub fn uuid_from_u16(u: u16) -> Uuid {
    Uuid::from_u128(BASE_TAIL | (u128::from(u) << 96))
}

/// The 16-bit form of a SIG UUID, if it is one.
pub fn uuid_to_u16(u: Uuid) -> Option<u16> {
    let v = u.as_u128();
    (v & !(0xFFFF_FFFFu128 << 96) == BASE_TAIL && v >> 112 == 0).then_some((v >> 96) as u16)
}

/// One allow-listed device.
#[derive(Debug, Clone)]
pub struct BleDeviceConfig {
    /// Its Bluetooth address, upper case `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// The identity its readings carry (profile, transport BLE, address); the Device
    /// Information strings it reports fill in manufacturer, model and serial number.
    pub identity: Arc<DeviceIdentity>,
    /// The profile's advertised service UUIDs.
    pub services: Vec<Uuid>,
    /// The profile's advertised name prefix.
    pub name_prefix: Option<String>,
    /// The measurement characteristics the profile's decoders map (16-bit UUIDs): each
    /// is subscribed; other health characteristics the device offers are named once per
    /// connection at info and their values ignored.
    pub measurements: Vec<u16>,
    /// Forward at most one measurement per this interval within a connection (the others
    /// are dropped and counted); `None`: every one. Glucose records and the battery level
    /// are never dropped.
    pub min_interval: Option<Duration>,
    /// Report the Battery Level read at each connection as a reading (its profile maps
    /// the `battery_level` field).
    pub battery: bool,
    /// Set the device's clock (its Current Time, when writable) to the gateway's time in
    /// this zone at each connection, after reading it; `None`: never write it.
    pub set_clock: Option<WallClock>,
}

impl BleDeviceConfig {
    /// This entry's profile's recognition rule.
    pub fn recognition(&self) -> matching::Recognition<'_> {
        matching::Recognition {
            services: &self.services,
            name_prefix: self.name_prefix.as_deref(),
        }
    }

    /// Whether an advertisement (name, service UUIDs) matches this entry's profile
    /// ([`matching::Recognition::matches`]).
    pub fn profile_matches(&self, name: Option<&str>, services: &[Uuid]) -> bool {
        self.recognition().matches(name, services).is_some()
    }

    fn is_glucose(&self) -> bool {
        self.measurements.contains(&0x2A18)
    }

    fn is_cgm(&self) -> bool {
        self.measurements.contains(&cgm::MEASUREMENT)
    }
}

/// The BLE driver's configuration.
#[derive(Debug, Clone)]
pub struct BleConfig {
    /// The adapter to use (`hci0`); `None`: the first one.
    pub adapter: Option<String>,
    /// The allow-list: only these devices are connected.
    pub devices: Vec<BleDeviceConfig>,
    /// First delay before retrying a failed connect (or a missing Bluetooth stack).
    pub reconnect_initial: Duration,
    /// Longest delay between two attempts.
    pub reconnect_max: Duration,
    /// The file keeping the last glucose record fetched from each meter.
    pub sequence_file: PathBuf,
    /// Where each device's connections and hang-ups are reported.
    pub links: crate::link::LinkReporter,
}

/// The BLE driver.
#[derive(Debug)]
pub struct BleDriver {
    config: BleConfig,
    sequences: Arc<Mutex<SequenceStore>>,
}

impl BleDriver {
    /// Checks the configuration and opens the glucose sequence file.
    pub fn new(config: BleConfig) -> Result<Self, DriverError> {
        let err = |reason: String| DriverError::Config {
            driver: "ble".into(),
            reason,
        };
        if config.devices.is_empty() {
            return Err(err("no device is configured: add [[ble.devices]]".into()));
        }
        let sequences =
            SequenceStore::open(&config.sequence_file).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            config,
            sequences: Arc::new(Mutex::new(sequences)),
        })
    }
}

impl Driver for BleDriver {
    fn name(&self) -> &str {
        "ble"
    }

    fn run(self: Box<Self>, tx: ReadingSender, cancel: CancellationToken) -> DriverFuture {
        Box::pin(run(*self, tx, cancel))
    }
}

/// What the scanner tells a device task.
#[derive(Debug)]
enum DevEvent {
    /// The device advertises (and matches): a connect may succeed now.
    Seen(Box<Peripheral>),
    /// BlueZ reports the device disconnected.
    Disconnected,
}

/// Finds the adapter named `name` (`hci0`), or the first one.
pub async fn find_adapter(
    manager: &Manager,
    name: Option<&str>,
) -> Result<Adapter, btleplug::Error> {
    for adapter in manager.adapters().await? {
        let info = adapter.adapter_info().await.unwrap_or_default();
        let id = info.split_whitespace().next().unwrap_or_default();
        if name.is_none_or(|n| id == n || id.ends_with(&format!("/{n}"))) {
            return Ok(adapter);
        }
    }
    Err(btleplug::Error::DeviceNotFound)
}

async fn run(
    driver: BleDriver,
    tx: ReadingSender,
    cancel: CancellationToken,
) -> Result<(), DriverError> {
    let config = driver.config;
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    // One D-Bus connection for the whole run (each Manager opens one).
    let mut manager: Option<Manager> = None;
    let mut watch: Option<BluezWatch> = None;
    // Why scanning last stopped, for the line that says it resumed.
    let mut lost: Option<Lost> = None;
    loop {
        if manager.is_none() {
            match Manager::new().await {
                Ok(m) => manager = Some(m),
                Err(e) => tracing::warn!(error = %e, "cannot reach the system D-Bus"),
            }
        }
        if watch.is_none() && manager.is_some() {
            match BluezWatch::start().await {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::warn!(error = %e, "bluetoothd restarts will not be noticed"),
            }
        }
        if let Some(m) = &manager {
            let adapter = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                a = find_adapter(m, config.adapter.as_deref()) => a,
            };
            match adapter {
                Ok(adapter) => {
                    // What happened while BlueZ was away, in order.
                    if let Some(w) = &mut watch {
                        w.drain().iter().for_each(log_change);
                    }
                    let sequences = &driver.sequences;
                    match scan(
                        &config, &adapter, &tx, &cancel, sequences, &mut watch, &mut lost,
                    )
                    .await
                    {
                        Ok(None) => return Ok(()),
                        Ok(Some(why)) => {
                            why.warn();
                            backoff.succeed();
                            lost = Some(why);
                            if why == Lost::PoweredOff
                                && !wait_powered_on(&adapter, &cancel, &mut watch).await
                            {
                                return Ok(());
                            }
                            continue;
                        }
                        Err(e) if backoff.failures() == 0 => {
                            tracing::warn!(error = %e, "BLE scanning failed; retrying");
                        }
                        Err(e) => tracing::debug!(error = %e, "BLE scanning failed again"),
                    }
                }
                Err(e) => {
                    if backoff.failures() == 0 {
                        tracing::warn!(error = %e, "no Bluetooth adapter (is bluetoothd running?); retrying");
                    } else {
                        tracing::debug!(error = %e, "no Bluetooth adapter yet");
                    }
                }
            }
        }
        // A bounded backoff while BlueZ or its adapter is missing; BlueZ coming back (or
        // an adapter appearing) ends the wait at once.
        let delay = backoff.fail();
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
            c = watch::next(&mut watch) => log_change(&c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Transport;

    fn cfg() -> BleDeviceConfig {
        BleDeviceConfig {
            address: "AA:BB:CC:DD:EE:01".into(),
            identity: Arc::new(DeviceIdentity {
                revisions: Default::default(),
                profile: "cuff".into(),
                transport: Transport::Ble,
                address: "AA:BB:CC:DD:EE:01".into(),
                serial_number: None,
                manufacturer: None,
                model: None,
            }),
            services: vec![uuid_from_u16(0x1810)],
            name_prefix: Some("A&D_UA-651".into()),
            measurements: vec![0x2A35],
            min_interval: None,
            battery: false,
            set_clock: None,
        }
    }

    #[test]
    fn sig_uuids_convert_between_16_and_128_bits() {
        let u = uuid_from_u16(0x2A35);
        assert_eq!(u.to_string(), "00002a35-0000-1000-8000-00805f9b34fb");
        assert_eq!(uuid_to_u16(u), Some(0x2A35));
        assert_eq!(uuid_to_u16(Uuid::from_u128(1)), None);
    }

    #[test]
    fn a_device_matches_its_profile_by_service_or_by_name_prefix() {
        let c = cfg();
        assert!(c.profile_matches(None, &[uuid_from_u16(0x1810)]));
        assert!(c.profile_matches(Some("A&D_UA-651BLE"), &[]));
        assert!(!c.profile_matches(Some("Scale"), &[uuid_from_u16(0x181D)]));
    }
}
