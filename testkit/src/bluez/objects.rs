//! The D-Bus objects of the simulated BlueZ. Each object is a thin view on the shared
//! state; changes are announced with `PropertiesChanged` on the object itself.

use std::collections::HashMap;

use zbus::message::Header;
use zbus::object_server::{ObjectServer, SignalEmitter};
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::{interface, Connection};

use super::events::{flush, racp, report_advertising, set_connected};
use super::{export_gatt, lock, unexport_device, uuid16, Shared, ADAPTER_PATH};

/// BlueZ's error names (`org.bluez.Error.*`).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
pub enum BluezError {
    /// A transport error of zbus itself.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `org.bluez.Error.Failed`.
    Failed(String),
    /// `org.bluez.Error.NotSupported`.
    NotSupported(String),
    /// `org.bluez.Error.NotPermitted`.
    NotPermitted(String),
    /// `org.bluez.Error.DoesNotExist`.
    DoesNotExist(String),
    /// `org.bluez.Error.NotReady` (the adapter is powered off).
    NotReady(String),
}

type Result<T> = std::result::Result<T, BluezError>;

pub(crate) struct Adapter {
    pub state: Shared,
}

#[interface(name = "org.bluez.Adapter1")]
impl Adapter {
    async fn start_discovery(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<()> {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        {
            let mut st = lock(&self.state);
            if st.off {
                return Err(BluezError::NotReady("Resource Not Ready".into()));
            }
            let filter = st.filters.get(&sender).cloned().unwrap_or_default();
            st.discovering.insert(sender, filter);
        }
        self.discovering_changed(&emitter).await?;
        // Devices appear some time after discovery starts.
        let conn = conn.clone();
        let state = self.state.clone();
        tokio::spawn(async move { report_advertising(&conn, &state).await });
        Ok(())
    }

    async fn stop_discovery(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<()> {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if lock(&self.state).discovering.remove(&sender).is_none() {
            return Err(BluezError::Failed("No discovery started".into()));
        }
        self.discovering_changed(&emitter).await?;
        Ok(())
    }

    async fn set_discovery_filter(
        &self,
        filter: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<()> {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let uuids: Vec<String> = filter
            .get("UUIDs")
            .and_then(|v| Vec::<String>::try_from(v.try_clone().ok()?).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.to_lowercase())
            .collect();
        let mut st = lock(&self.state);
        if let Some(f) = st.discovering.get_mut(&sender) {
            f.clone_from(&uuids);
        }
        st.filters.insert(sender, uuids);
        Ok(())
    }

    async fn remove_device(
        &self,
        device: ObjectPath<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        let address = lock(&self.state)
            .devices
            .iter()
            .find(|(_, d)| d.exported && d.path() == device.as_str())
            .map(|(a, _)| a.clone());
        let Some(address) = address else {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        };
        unexport_device(server, &self.state, &address).await;
        Ok(())
    }

    #[zbus(property)]
    fn address(&self) -> String {
        "00:1A:7D:DA:71:13".into()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> String {
        "sim-gateway".into()
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        "sim-gateway".into()
    }
    #[zbus(property)]
    fn powered(&self) -> bool {
        !lock(&self.state).off
    }
    /// bluez-async powers the adapter on before each discovery: a client may power on an
    /// adapter that is off (counted). Powering off goes through [`super::SimBluez::power`].
    #[zbus(property)]
    fn set_powered(&mut self, on: bool) {
        let mut st = lock(&self.state);
        if on && st.off {
            st.off = false;
            st.client_power_ons += 1;
        }
    }
    #[zbus(property)]
    fn discovering(&self) -> bool {
        !lock(&self.state).discovering.is_empty()
    }
    #[zbus(property)]
    fn modalias(&self) -> String {
        "usb:v1D6Bp0246d0548".into()
    }
    #[zbus(property)]
    fn roles(&self) -> Vec<String> {
        vec!["central".into(), "peripheral".into()]
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        Vec::new()
    }
}

pub(crate) struct Device {
    pub state: Shared,
    pub address: String,
}

impl Device {
    fn get<T>(&self, f: impl FnOnce(&super::DevState) -> T, default: T) -> T {
        lock(&self.state)
            .devices
            .get(&self.address)
            .map_or(default, f)
    }
}

#[interface(name = "org.bluez.Device1")]
impl Device {
    async fn connect(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        if lock(&self.state).off {
            return Err(BluezError::NotReady("Resource Not Ready".into()));
        }
        if !self.get(|d| d.advertising, false) {
            return Err(BluezError::Failed(
                "Software caused connection abort".into(),
            ));
        }
        if self.get(|d| d.connected, false) {
            return Ok(());
        }
        set_connected(conn, &self.state, &self.address, true).await;
        export_gatt(server, &self.state, &self.address).await;
        let path = self.get(|d| d.path(), String::new());
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(&self.address) {
                for s in d.services.clone() {
                    let u = uuid16(s);
                    if !d.uuids.contains(&u) {
                        d.uuids.push(u);
                    }
                }
                d.services_resolved = true;
                d.connects += 1;
            }
        }
        if let Ok(iface) = server.interface::<_, Device>(path.as_str()).await {
            let emitter = iface.signal_emitter();
            iface.get().await.u_u_i_ds_changed(emitter).await?;
            iface.get().await.services_resolved_changed(emitter).await?;
        }
        // A reconnecting device sends what it holds as soon as the link is up: the
        // notification sessions of this client survive disconnects.
        let conn = conn.clone();
        let state = self.state.clone();
        let address = self.address.clone();
        tokio::spawn(async move { flush(&conn, &state, &address).await });
        Ok(())
    }

    async fn disconnect(&self, #[zbus(connection)] conn: &Connection) -> Result<()> {
        set_connected(conn, &self.state, &self.address, false).await;
        Ok(())
    }

    #[zbus(property)]
    fn address(&self) -> String {
        self.address.clone()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> String {
        self.get(|d| d.spec.name.clone(), String::new())
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        self.get(|d| d.spec.name.clone(), String::new())
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        self.get(|d| d.uuids.clone(), Vec::new())
    }
    #[zbus(property, name = "RSSI")]
    fn rssi(&self) -> i16 {
        self.get(|d| d.rssi, 0)
    }
    #[zbus(property)]
    fn connected(&self) -> bool {
        self.get(|d| d.connected, false)
    }
    #[zbus(property)]
    fn services_resolved(&self) -> bool {
        self.get(|d| d.services_resolved, false)
    }
    #[zbus(property)]
    fn paired(&self) -> bool {
        self.get(|d| d.paired, false)
    }
    #[zbus(property)]
    fn bonded(&self) -> bool {
        self.get(|d| d.paired, false)
    }
    #[zbus(property)]
    fn trusted(&self) -> bool {
        self.get(|d| d.paired, false)
    }
    #[zbus(property)]
    fn blocked(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn legacy_pairing(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn adapter(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(ADAPTER_PATH).unwrap_or_default()
    }
}

pub(crate) struct Service {
    pub state: Shared,
    pub address: String,
    pub index: usize,
}

#[interface(name = "org.bluez.GattService1")]
impl Service {
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        let st = lock(&self.state);
        st.devices
            .get(&self.address)
            .map(|d| uuid16(d.services[self.index]))
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn primary(&self) -> bool {
        true
    }
    #[zbus(property)]
    fn device(&self) -> OwnedObjectPath {
        let st = lock(&self.state);
        st.devices
            .get(&self.address)
            .and_then(|d| OwnedObjectPath::try_from(d.path()).ok())
            .unwrap_or_default()
    }
}

pub(crate) struct Characteristic {
    pub state: Shared,
    pub address: String,
    pub index: usize,
}

impl Characteristic {
    fn get<T>(&self, f: impl FnOnce(&super::CharState, bool) -> T, default: T) -> T {
        let st = lock(&self.state);
        match st.devices.get(&self.address) {
            Some(d) => f(&d.chars[self.index], d.connected),
            None => default,
        }
    }
}

#[interface(name = "org.bluez.GattCharacteristic1")]
impl Characteristic {
    async fn read_value(
        &self,
        _options: HashMap<String, OwnedValue>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Vec<u8>> {
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(&self.address) {
                super::clock::refresh(d.clock.as_ref(), &mut d.chars[self.index]);
            }
        }
        let (connected, readable, value) = self.get(
            |c, conn| (conn, c.flags.contains(&"read"), c.value.clone()),
            (false, false, Vec::new()),
        );
        if !connected {
            return Err(BluezError::Failed("Not connected".into()));
        }
        if !readable {
            return Err(BluezError::NotPermitted("Read not permitted".into()));
        }
        // BlueZ announces every read as a value change, changed or not.
        self.value_changed(&emitter).await?;
        Ok(value)
    }

    async fn write_value(
        &self,
        value: Vec<u8>,
        _options: HashMap<String, OwnedValue>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (connected, writable, uuid) = self.get(
            |c, conn| (conn, c.flags.contains(&"write"), c.uuid),
            (false, false, 0),
        );
        if !connected {
            return Err(BluezError::Failed("Not connected".into()));
        }
        if !writable {
            return Err(BluezError::NotPermitted("Write not permitted".into()));
        }
        if uuid == 0x2A2B {
            let mut st = lock(&self.state);
            let set = st
                .devices
                .get_mut(&self.address)
                .and_then(|d| d.clock.as_mut())
                .is_some_and(|c| c.set(&value));
            if !set {
                return Err(BluezError::Failed(
                    "Operation failed with ATT error: 0x80".into(),
                ));
            }
            return Ok(());
        }
        if uuid == 0x2A52 {
            let ready = {
                let st = lock(&self.state);
                st.devices.get(&self.address).is_some_and(|d| {
                    d.chars
                        .iter()
                        .filter(|c| matches!(c.uuid, 0x2A52 | 0x2A18 | 0x2AA7))
                        .all(|c| c.notifying)
                })
            };
            if !ready {
                return Err(BluezError::Failed(
                    "Operation failed with ATT error: 0xfd".into(),
                ));
            }
            {
                let mut st = lock(&self.state);
                if let Some(d) = st.devices.get_mut(&self.address) {
                    d.racp_requests.push(value.clone());
                }
            }
            let conn = conn.clone();
            let state = self.state.clone();
            let address = self.address.clone();
            tokio::spawn(async move { racp(&conn, &state, &address, &value).await });
        }
        Ok(())
    }

    async fn start_notify(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<()> {
        let can = self.get(
            |c, _| c.flags.contains(&"notify") || c.flags.contains(&"indicate"),
            false,
        );
        if !can {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(&self.address) {
                d.chars[self.index].notifying = true;
            }
        }
        self.notifying_changed(&emitter).await?;
        let conn = conn.clone();
        let state = self.state.clone();
        let address = self.address.clone();
        tokio::spawn(async move { flush(&conn, &state, &address).await });
        Ok(())
    }

    async fn stop_notify(&self, #[zbus(signal_emitter)] emitter: SignalEmitter<'_>) -> Result<()> {
        {
            let mut st = lock(&self.state);
            if let Some(d) = st.devices.get_mut(&self.address) {
                d.chars[self.index].notifying = false;
            }
        }
        self.notifying_changed(&emitter).await?;
        Ok(())
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.get(|c, _| uuid16(c.uuid), String::new())
    }
    #[zbus(property)]
    fn service(&self) -> OwnedObjectPath {
        let st = lock(&self.state);
        st.devices
            .get(&self.address)
            .and_then(|d| {
                OwnedObjectPath::try_from(d.service_path(d.chars[self.index].service)).ok()
            })
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        self.get(
            |c, _| c.flags.iter().map(|f| f.to_string()).collect(),
            Vec::new(),
        )
    }
    #[zbus(property)]
    fn notifying(&self) -> bool {
        self.get(|c, _| c.notifying, false)
    }
    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        self.get(|c, _| c.value.clone(), Vec::new())
    }
}

/// A Client Characteristic Configuration descriptor (0x2902) of characteristic `index`.
pub(crate) struct Descriptor {
    pub state: Shared,
    pub address: String,
    pub index: usize,
}

impl Descriptor {
    /// The CCCD value for this client: 01 00 (notifying), 02 00 (indicating) or 00 00.
    fn cccd(&self) -> Option<(bool, Vec<u8>)> {
        let st = lock(&self.state);
        let d = st.devices.get(&self.address)?;
        let c = &d.chars[self.index];
        let bits: u8 = match (c.notifying, c.flags.contains(&"indicate")) {
            (false, _) => 0,
            (true, true) => 2,
            (true, false) => 1,
        };
        Some((d.connected, vec![bits, 0]))
    }
}

#[interface(name = "org.bluez.GattDescriptor1")]
impl Descriptor {
    async fn read_value(
        &self,
        _options: HashMap<String, OwnedValue>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Vec<u8>> {
        match self.cccd() {
            Some((true, value)) => {
                self.value_changed(&emitter).await?;
                Ok(value)
            }
            _ => Err(BluezError::Failed("Not connected".into())),
        }
    }

    /// BlueZ refuses direct CCCD writes: StartNotify/StopNotify manage it.
    async fn write_value(
        &self,
        _value: Vec<u8>,
        _options: HashMap<String, OwnedValue>,
    ) -> Result<()> {
        Err(BluezError::NotPermitted("Write not permitted".into()))
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        uuid16(0x2902)
    }
    #[zbus(property)]
    fn characteristic(&self) -> OwnedObjectPath {
        let st = lock(&self.state);
        st.devices
            .get(&self.address)
            .and_then(|d| OwnedObjectPath::try_from(d.char_path(self.index)).ok())
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        self.cccd().map(|(_, v)| v).unwrap_or_default()
    }
    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        vec!["read".into(), "write".into()]
    }
}
