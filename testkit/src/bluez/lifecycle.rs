//! bluetoothd stopping and starting again (`systemctl restart bluetooth`), and the
//! adapter powered off and on by another client (`bluetoothctl power off`, rfkill): what
//! the real BlueZ does to its clients then.
//!
//! **Stop.** bluetoothd removes its objects (InterfacesRemoved for every device, its GATT
//! objects and the adapter, from `/`) and leaves the bus (`NameOwnerChanged` for
//! `org.bluez` with no new owner). Every client's discovery and notification sessions
//! die with it; connections drop. **Start.** A fresh instance takes the name, then
//! registers its adapter, powered on (InterfacesAdded); devices reappear only when they
//! advertise while a client discovers (they are new to it: InterfacesAdded).
//!
//! **Power off.** Connected devices disconnect (`Connected` false), every client's
//! notification sessions end (`Notifying` false), discovery stops for every client
//! (`Discovering` false), then `Powered` false. While off, `StartDiscovery` and `Connect`
//! fail with `org.bluez.Error.NotReady`. Devices stay known. **Power on:** `Powered`
//! true; nothing a client had is restored.

use super::objects::{Adapter, Characteristic};
use super::{events, lock, unexport_device, SetupError, SimBluez, ADAPTER_PATH};

impl SimBluez {
    /// bluetoothd stops: its objects are removed and it leaves the bus, dropping every
    /// client's discovery and notification sessions. Nothing happens if it is stopped.
    pub fn stop_daemon(&self) {
        let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let state = self.state.clone();
        self.rt.block_on(async move {
            let addresses: Vec<String> = {
                let mut st = lock(&state);
                st.discovering.clear();
                st.filters.clear();
                st.devices.keys().cloned().collect()
            };
            let server = conn.object_server();
            for a in addresses {
                unexport_device(server, &state, &a).await;
            }
            let _ = server.remove::<Adapter, _>(ADAPTER_PATH).await;
            let _ = conn.release_name("org.bluez").await;
            let _ = conn.close().await;
        });
    }

    /// A fresh bluetoothd takes `org.bluez`, then registers its adapter, powered on
    /// (InterfacesAdded), as the real one does once the kernel has listed the controllers.
    pub fn start_daemon(&self) -> Result<(), SetupError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        lock(&self.state).off = false;
        let state = self.state.clone();
        let conn = self.rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.address.as_str())?
                .serve_at("/", zbus::fdo::ObjectManager)?
                .name("org.bluez")?
                .build()
                .await?;
            conn.object_server()
                .at(ADAPTER_PATH, Adapter { state })
                .await?;
            Ok::<_, zbus::Error>(conn)
        });
        *slot = Some(conn.map_err(|e| SetupError(format!("simulated BlueZ: {e}")))?);
        Ok(())
    }

    /// Whether bluetoothd runs (owns `org.bluez`).
    pub fn daemon_running(&self) -> bool {
        self.conn().is_some()
    }

    /// Another client powers the adapter off (`on` false: connections, notification
    /// sessions and discovery end, see the module doc) or on.
    pub fn power(&self, on: bool) {
        let Some(conn) = self.conn() else {
            return;
        };
        let state = self.state.clone();
        self.rt.block_on(async move {
            let (connected, notifying) = {
                let mut st = lock(&state);
                if st.off != on {
                    return;
                }
                st.off = !on;
                let mut connected = Vec::new();
                let mut notifying = Vec::new();
                if !on {
                    st.discovering.clear();
                    for (a, d) in st.devices.iter_mut() {
                        if d.connected {
                            connected.push(a.clone());
                        }
                        for i in 0..d.chars.len() {
                            if d.chars[i].notifying {
                                d.chars[i].notifying = false;
                                notifying.push(d.char_path(i));
                            }
                        }
                    }
                }
                (connected, notifying)
            };
            for a in connected {
                events::set_connected(&conn, &state, &a, false).await;
            }
            let server = conn.object_server();
            for path in notifying {
                if let Ok(iface) = server.interface::<_, Characteristic>(path.as_str()).await {
                    let _ = iface
                        .get()
                        .await
                        .notifying_changed(iface.signal_emitter())
                        .await;
                }
            }
            if let Ok(iface) = server.interface::<_, Adapter>(ADAPTER_PATH).await {
                let emitter = iface.signal_emitter();
                let adapter = iface.get().await;
                if !on {
                    let _ = adapter.discovering_changed(emitter).await;
                }
                let _ = adapter.powered_changed(emitter).await;
            }
        });
    }

    /// Whether the adapter is powered.
    pub fn powered(&self) -> bool {
        self.daemon_running() && !lock(&self.state).off
    }

    /// How many times a D-Bus client powered the adapter on while it was off.
    pub fn client_power_ons(&self) -> u32 {
        lock(&self.state).client_power_ons
    }
}
