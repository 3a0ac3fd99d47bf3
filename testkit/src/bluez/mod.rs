//! A simulated BlueZ on a private D-Bus system bus, for end-to-end tests of the BLE
//! driver through the real btleplug/bluez-async/libdbus stack.
//!
//! It behaves as the real BlueZ does toward btleplug (as observed against bluetoothd):
//! `org.bluez` owns `/org/bluez/hci0` (Adapter1) and devices below it (Device1), GATT
//! services, characteristics and their Client Characteristic Configuration descriptors
//! below those (GattService1, GattCharacteristic1, GattDescriptor1, paths named by
//! handle), all announced through `org.freedesktop.DBus.ObjectManager` at `/`. Writing a
//! CCCD directly is `NotPermitted` (notifications go through StartNotify). An unpaired
//! device that has not advertised for ~30 s is removed ([`SimBluez::forget`] stands for
//! that time passing): InterfacesRemoved for it and its GATT objects, its notification
//! sessions gone; advertising again makes it new (InterfacesAdded).
//! Discovery is per D-Bus client; devices appear once discovery runs and they advertise,
//! and only when the client's `SetDiscoveryFilter` UUIDs (if any) include one they
//! advertise ([`SimBluez::advertise_services`]);
//! `Connect` sets `Connected`, exports the GATT objects (once; they stay cached), grows
//! `UUIDs`, sets `ServicesResolved`, then returns; notification sessions survive
//! disconnects; every `ReadValue` emits `PropertiesChanged(Value)`; errors carry BlueZ's
//! names. A glucose meter answers the Record Access Control Point only once indications
//! on 0x2A52 and notifications on 0x2A18 are enabled. A device may keep a clock behind a
//! Current Time Service ([`SimBluez::add_current_time`], `clock.rs`): reads give its time
//! now, writes (when allowed) set it. bluetoothd can be stopped and
//! started again ([`SimBluez::stop_daemon`], [`SimBluez::start_daemon`]) and the adapter
//! powered off and on ([`SimBluez::power`]); both drop every client's discovery and
//! notification sessions (see `lifecycle.rs`).
//!
//! [`PrivateBus`] starts the `dbus-daemon`; [`SimBluez`] serves `org.bluez` on it and is
//! driven by the test (advertise, queue a measurement, hang up).

mod advertising;
mod bus;
mod cgm;
mod clock;
mod events;
mod kind;
mod lifecycle;
mod objects;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use zbus::object_server::ObjectServer;
use zbus::Connection;

pub use bus::{PrivateBus, SetupError};
pub use cgm::{cgm_record, SESSION_START};
pub use kind::{uuid16, DeviceKind};
use objects::{Adapter, Characteristic, Descriptor, Device, Service};

/// The adapter's object path.
pub const ADAPTER_PATH: &str = "/org/bluez/hci0";

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Bluetooth address, `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// Advertised local name.
    pub name: String,
    /// What it is.
    pub kind: DeviceKind,
    /// Battery level it reports.
    pub battery: u8,
}

pub(crate) struct CharState {
    pub uuid: u16,
    pub service: usize,
    pub flags: &'static [&'static str],
    pub notifying: bool,
    pub value: Vec<u8>,
}

pub(crate) struct DevState {
    pub spec: DeviceSpec,
    pub exported: bool,
    pub gatt_exported: bool,
    pub advertising: bool,
    pub connected: bool,
    pub services_resolved: bool,
    pub paired: bool,
    pub rssi: i16,
    /// The signal its advertisements are heard at ([`SimBluez::set_rssi`]); `None`: the
    /// RSSI alternates between -60 and -61 dBm so that each advertisement changes it.
    pub signal: Option<i16>,
    pub uuids: Vec<String>,
    /// The service UUIDs it advertises (its `UUIDs` before a connect).
    pub advertised: Vec<String>,
    pub services: Vec<u16>,
    pub chars: Vec<CharState>,
    pub queued: Vec<(u16, Vec<u8>)>,
    pub records: BTreeMap<u16, Vec<u8>>,
    pub racp_requests: Vec<Vec<u8>>,
    pub connects: u32,
    /// Its clock, when it offers a Current Time Service.
    pub clock: Option<clock::DevClock>,
}

impl DevState {
    fn new(spec: DeviceSpec) -> Self {
        let mut services = Vec::new();
        let mut chars = Vec::new();
        for (si, (svc, cs)) in spec.kind.gatt().into_iter().enumerate() {
            services.push(svc);
            for (uuid, flags) in cs {
                let value = match uuid {
                    0x2A29 => b"Simulated Medical".to_vec(),
                    0x2A24 => format!("{:?}", spec.kind).into_bytes(),
                    0x2A25 => format!("SN-{}", spec.address.replace(':', "")).into_bytes(),
                    0x2A26 => b"FW 1.4.2".to_vec(),
                    0x2A28 => b"SW 2.0".to_vec(),
                    0x2A19 => vec![spec.battery],
                    0x2A38 => vec![0x01],
                    other => cgm::initial(other),
                };
                chars.push(CharState {
                    uuid,
                    service: si,
                    flags,
                    notifying: false,
                    value,
                });
            }
        }
        Self {
            uuids: vec![uuid16(spec.kind.service())],
            advertised: vec![uuid16(spec.kind.service())],
            spec,
            exported: false,
            gatt_exported: false,
            advertising: false,
            connected: false,
            services_resolved: false,
            paired: true,
            rssi: -60,
            signal: None,
            services,
            chars,
            queued: Vec::new(),
            records: BTreeMap::new(),
            racp_requests: Vec::new(),
            connects: 0,
            clock: None,
        }
    }

    pub fn path(&self) -> String {
        device_path(&self.spec.address)
    }

    pub fn service_path(&self, i: usize) -> String {
        format!("{}/service{:04x}", self.path(), 0x10 * (i + 1))
    }

    pub fn char_path(&self, i: usize) -> String {
        let s = self.chars[i].service;
        format!(
            "{}/char{:04x}",
            self.service_path(s),
            0x10 * (s + 1) + 1 + 2 * i
        )
    }

    /// The path of the Client Characteristic Configuration descriptor of characteristic
    /// `i`, if it notifies or indicates (only those have one).
    pub fn cccd_path(&self, i: usize) -> Option<String> {
        let c = &self.chars[i];
        let has = c.flags.contains(&"notify") || c.flags.contains(&"indicate");
        has.then(|| {
            let s = c.service;
            format!(
                "{}/desc{:04x}",
                self.char_path(i),
                0x10 * (s + 1) + 2 + 2 * i
            )
        })
    }

    fn char_index(&self, uuid: u16) -> Option<usize> {
        self.chars.iter().position(|c| c.uuid == uuid)
    }
}

fn device_path(address: &str) -> String {
    format!("{ADAPTER_PATH}/dev_{}", address.replace(':', "_"))
}

#[derive(Default)]
pub(crate) struct State {
    /// D-Bus unique names of the clients that started discovery, with their UUID filter.
    pub discovering: BTreeMap<String, Vec<String>>,
    /// Each client's discovery filter (service UUIDs; empty: all).
    pub filters: BTreeMap<String, Vec<String>>,
    pub devices: BTreeMap<String, DevState>,
    /// The adapter is powered off.
    pub off: bool,
    /// How many times a D-Bus client powered the adapter on while it was off.
    pub client_power_ons: u32,
}

impl State {
    /// Whether some client's discovery would report a device advertising these UUIDs.
    fn discovery_reports(&self, uuids: &[String]) -> bool {
        self.discovering
            .values()
            .any(|f| f.is_empty() || f.iter().any(|u| uuids.contains(&u.to_lowercase())))
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated BlueZ: serves `org.bluez` on a bus until dropped.
pub struct SimBluez {
    rt: tokio::runtime::Runtime,
    /// The connection owning `org.bluez`; `None` while bluetoothd is stopped.
    conn: Mutex<Option<Connection>>,
    /// The bus address, to come back after a stop.
    address: String,
    state: Shared,
}

impl SimBluez {
    /// Connects to the bus at `address`, exports the adapter and the object manager, and
    /// takes the name `org.bluez`.
    pub fn start(address: &str) -> Result<Self, SetupError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| SetupError(format!("runtime: {e}")))?;
        let state: Shared = Arc::default();
        let conn = rt.block_on(serve(address, &state))?;
        Ok(Self {
            rt,
            conn: Mutex::new(Some(conn)),
            address: address.to_string(),
            state,
        })
    }

    /// The connection owning `org.bluez`, if bluetoothd runs.
    fn conn(&self) -> Option<Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds a device (not advertising yet: call [`SimBluez::advertise`]).
    pub fn add_device(&self, spec: DeviceSpec) {
        let mut st = lock(&self.state);
        st.devices.insert(spec.address.clone(), DevState::new(spec));
    }

    /// Stores glucose records (sequence number → Glucose Measurement bytes) on a meter, or
    /// CGM records (time offset → CGM Measurement bytes) on a CGM.
    pub fn store_records(&self, address: &str, records: &[(u16, Vec<u8>)]) {
        let mut st = lock(&self.state);
        if let Some(d) = st.devices.get_mut(address) {
            for (seq, bytes) in records {
                d.records.insert(*seq, bytes.clone());
            }
        }
    }

    /// Queues a measurement (notification/indication of characteristic `uuid`); it is sent
    /// once the device is connected and the client has enabled notifications on it.
    pub fn queue(&self, address: &str, uuid: u16, bytes: &[u8]) {
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(address) {
                d.queued.push((uuid, bytes.to_vec()));
            }
        }
        let Some(conn) = self.conn() else { return };
        let state = self.state.clone();
        let address = address.to_string();
        self.rt
            .block_on(async move { events::flush(&conn, &state, &address).await });
    }

    /// The device starts advertising: it appears to discovering clients (InterfacesAdded
    /// the first time, an RSSI change afterwards) and accepts connections.
    pub fn advertise(&self, address: &str) {
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(address) {
                d.advertising = true;
                d.rssi = match d.signal {
                    Some(dbm) => dbm,
                    None if d.rssi == -60 => -61,
                    None => -60,
                };
            }
        }
        let Some(conn) = self.conn() else { return };
        let state = self.state.clone();
        self.rt
            .block_on(async move { events::report_advertising(&conn, &state).await });
    }

    /// The signal strength (dBm) the device's advertisements are heard at from now on:
    /// its `RSSI` at the next [`SimBluez::advertise`], each of which reports it again
    /// (PropertiesChanged of `RSSI` for a known device). Real BlueZ exposes `RSSI` only
    /// while it hears the device advertise; this simulation keeps the last value.
    pub fn set_rssi(&self, address: &str, dbm: i16) {
        if let Some(d) = lock(&self.state).devices.get_mut(address) {
            d.signal = Some(dbm);
        }
    }

    /// Marks the device paired (the default) or not. BlueZ keeps paired devices; an
    /// unpaired one is removed after ~30 s without advertising ([`SimBluez::forget`]).
    pub fn set_paired(&self, address: &str, paired: bool) {
        if let Some(d) = lock(&self.state).devices.get_mut(address) {
            d.paired = paired;
        }
    }

    /// The ~30 s pass in which an unpaired, disconnected device does not advertise:
    /// BlueZ removes it and its GATT objects (InterfacesRemoved), and the clients'
    /// notification sessions with them. Returns whether it was removed (a paired,
    /// connected, advertising or unknown device stays).
    pub fn forget(&self, address: &str) -> bool {
        let removable = lock(&self.state)
            .devices
            .get(address)
            .is_some_and(|d| d.exported && !d.paired && !d.connected && !d.advertising);
        if let Some(conn) = self.conn().filter(|_| removable) {
            let server = conn.object_server().clone();
            let state = self.state.clone();
            let address = address.to_string();
            self.rt
                .block_on(async move { unexport_device(&server, &state, &address).await });
        }
        removable
    }

    /// The device hangs up by itself and stops advertising.
    pub fn hang_up(&self, address: &str) {
        if let Some(d) = lock(&self.state).devices.get_mut(address) {
            d.advertising = false;
        }
        let Some(conn) = self.conn() else { return };
        let state = self.state.clone();
        let address = address.to_string();
        self.rt
            .block_on(async move { events::set_connected(&conn, &state, &address, false).await });
    }

    /// Whether the device is connected now.
    pub fn is_connected(&self, address: &str) -> bool {
        lock(&self.state)
            .devices
            .get(address)
            .is_some_and(|d| d.connected)
    }

    /// How many times a client connected to the device.
    pub fn connects(&self, address: &str) -> u32 {
        lock(&self.state)
            .devices
            .get(address)
            .map_or(0, |d| d.connects)
    }

    /// Whether notifications are enabled on characteristic `uuid` of the device.
    pub fn is_notifying(&self, address: &str, uuid: u16) -> bool {
        lock(&self.state)
            .devices
            .get(address)
            .and_then(|d| d.char_index(uuid).map(|i| d.chars[i].notifying))
            .unwrap_or(false)
    }

    /// How many queued measurements the device has not sent yet.
    pub fn pending(&self, address: &str) -> usize {
        lock(&self.state)
            .devices
            .get(address)
            .map_or(0, |d| d.queued.len())
    }

    /// The RACP requests the meter received, in order.
    pub fn racp_requests(&self, address: &str) -> Vec<Vec<u8>> {
        lock(&self.state)
            .devices
            .get(address)
            .map(|d| d.racp_requests.clone())
            .unwrap_or_default()
    }

    /// Whether some client is discovering.
    pub fn discovering(&self) -> bool {
        !lock(&self.state).discovering.is_empty()
    }
}

/// Connects to the bus at `address`, exports the object manager and the adapter, then
/// takes the name `org.bluez` (as bluetoothd does when it starts).
async fn serve(address: &str, state: &Shared) -> Result<Connection, SetupError> {
    let build = async {
        zbus::connection::Builder::address(address)?
            .serve_at("/", zbus::fdo::ObjectManager)?
            .serve_at(
                ADAPTER_PATH,
                Adapter {
                    state: state.clone(),
                },
            )?
            .name("org.bluez")?
            .build()
            .await
    };
    build
        .await
        .map_err(|e| SetupError(format!("simulated BlueZ: {e}")))
}

pub(crate) async fn export_device(server: &ObjectServer, state: &Shared, address: &str) {
    let path = {
        let mut st = lock(state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        if d.exported {
            return;
        }
        d.exported = true;
        d.path()
    };
    let _ = server
        .at(
            path,
            Device {
                state: state.clone(),
                address: address.to_string(),
            },
        )
        .await;
}

pub(crate) async fn export_gatt(server: &ObjectServer, state: &Shared, address: &str) {
    let (services, chars, descs) = {
        let mut st = lock(state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        if d.gatt_exported {
            return;
        }
        d.gatt_exported = true;
        let services: Vec<(String, usize)> = (0..d.services.len())
            .map(|i| (d.service_path(i), i))
            .collect();
        let chars: Vec<(String, usize)> = (0..d.chars.len()).map(|i| (d.char_path(i), i)).collect();
        let descs: Vec<(String, usize)> = (0..d.chars.len())
            .filter_map(|i| d.cccd_path(i).map(|p| (p, i)))
            .collect();
        (services, chars, descs)
    };
    for (path, index) in services {
        let _ = server
            .at(
                path,
                Service {
                    state: state.clone(),
                    address: address.to_string(),
                    index,
                },
            )
            .await;
    }
    for (path, index) in chars {
        let _ = server
            .at(
                path,
                Characteristic {
                    state: state.clone(),
                    address: address.to_string(),
                    index,
                },
            )
            .await;
    }
    for (path, index) in descs {
        let _ = server
            .at(
                path,
                Descriptor {
                    state: state.clone(),
                    address: address.to_string(),
                    index,
                },
            )
            .await;
    }
}

/// Removes a device and its GATT objects from the bus (InterfacesRemoved for each,
/// deepest first); it is new to BlueZ when it advertises again.
pub(crate) async fn unexport_device(server: &ObjectServer, state: &Shared, address: &str) {
    let paths = {
        let mut st = lock(state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        let mut paths: Vec<(String, u8)> = Vec::new();
        if d.gatt_exported {
            paths.extend((0..d.chars.len()).filter_map(|i| d.cccd_path(i).map(|p| (p, 3))));
            paths.extend((0..d.chars.len()).map(|i| (d.char_path(i), 2)));
            paths.extend((0..d.services.len()).map(|i| (d.service_path(i), 1)));
        }
        if d.exported {
            paths.push((d.path(), 0));
        }
        d.exported = false;
        d.gatt_exported = false;
        d.connected = false;
        d.services_resolved = false;
        d.uuids.clone_from(&d.advertised);
        for c in &mut d.chars {
            c.notifying = false;
        }
        paths
    };
    for (p, kind) in paths {
        let _ = match kind {
            3 => server.remove::<Descriptor, _>(p).await,
            2 => server.remove::<Characteristic, _>(p).await,
            1 => server.remove::<Service, _>(p).await,
            _ => server.remove::<Device, _>(p).await,
        };
    }
}
