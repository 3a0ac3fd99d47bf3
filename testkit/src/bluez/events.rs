//! What the simulated BlueZ announces on its own: characteristic values (notifications and
//! indications), connection changes, advertising devices, and a glucose meter's answers on
//! the Record Access Control Point.

use zbus::Connection;

use super::objects::{Characteristic, Device};
use super::{export_device, lock, DeviceKind, Shared};

/// Sets a characteristic's value and announces it (a notification or indication).
async fn emit_value(conn: &Connection, state: &Shared, address: &str, uuid: u16, bytes: Vec<u8>) {
    let path = {
        let mut st = lock(state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        let Some(i) = d.char_index(uuid) else {
            return;
        };
        d.chars[i].value = bytes;
        d.char_path(i)
    };
    if let Ok(iface) = conn
        .object_server()
        .interface::<_, Characteristic>(path.as_str())
        .await
    {
        let _ = iface
            .get()
            .await
            .value_changed(iface.signal_emitter())
            .await;
    }
}

/// Sends the queued measurements whose characteristic is enabled, if connected.
pub(crate) async fn flush(conn: &Connection, state: &Shared, address: &str) {
    loop {
        let next = {
            let mut st = lock(state);
            let Some(d) = st.devices.get_mut(address) else {
                return;
            };
            if !d.connected {
                return;
            }
            let pos = d
                .queued
                .iter()
                .position(|(u, _)| d.char_index(*u).is_some_and(|i| d.chars[i].notifying));
            match pos {
                Some(p) => d.queued.remove(p),
                None => return,
            }
        };
        emit_value(conn, state, address, next.0, next.1).await;
    }
}

/// Connects or disconnects, announcing `Connected` (and `ServicesResolved` on a
/// disconnect).
pub(crate) async fn set_connected(conn: &Connection, state: &Shared, address: &str, up: bool) {
    let path = {
        let mut st = lock(state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        if d.connected == up || !d.exported {
            return;
        }
        d.connected = up;
        if !up {
            d.services_resolved = false;
        }
        d.path()
    };
    if let Ok(iface) = conn
        .object_server()
        .interface::<_, Device>(path.as_str())
        .await
    {
        let emitter = iface.signal_emitter();
        let _ = iface.get().await.connected_changed(emitter).await;
        if !up {
            let _ = iface.get().await.services_resolved_changed(emitter).await;
        }
    }
}

/// Reports advertising devices to discovering clients: new ones through InterfacesAdded,
/// known ones through an RSSI change.
pub(crate) async fn report_advertising(conn: &Connection, state: &Shared) {
    let (new, known): (Vec<String>, Vec<String>) = {
        let st = lock(state);
        let mut new = Vec::new();
        let mut known = Vec::new();
        for (a, d) in &st.devices {
            if d.advertising && st.discovery_reports(&d.uuids) {
                if d.exported {
                    known.push(a.clone());
                } else {
                    new.push(a.clone());
                }
            }
        }
        (new, known)
    };
    let server = conn.object_server();
    for a in new {
        export_device(server, state, &a).await;
    }
    for a in known {
        let path = lock(state).devices.get(&a).map(|d| d.path());
        if let Some(path) = path {
            if let Ok(iface) = server.interface::<_, Device>(path.as_str()).await {
                let _ = iface
                    .get()
                    .await
                    .r_s_s_i_changed(iface.signal_emitter())
                    .await;
            }
        }
    }
}

/// The meter's side of the Record Access Control Point.
/// The characteristic stored records are sent on: CGM Measurement on a CGM, Glucose
/// Measurement otherwise.
pub(crate) fn measurement_of(state: &Shared, address: &str) -> u16 {
    let cgm = lock(state)
        .devices
        .get(address)
        .is_some_and(|d| d.spec.kind == DeviceKind::Cgm);
    if cgm {
        0x2AA7
    } else {
        0x2A18
    }
}

pub(crate) async fn racp(conn: &Connection, state: &Shared, address: &str, request: &[u8]) {
    let records: Option<Vec<Vec<u8>>> = {
        let st = lock(state);
        let Some(d) = st.devices.get(address) else {
            return;
        };
        match request {
            [0x01, 0x01] => Some(d.records.values().cloned().collect()),
            [0x01, 0x03, 0x01, lo, hi] => {
                let from = u16::from_le_bytes([*lo, *hi]);
                Some(d.records.range(from..).map(|(_, r)| r.clone()).collect())
            }
            [0x04, 0x01] => {
                let [lo, hi] = u16::try_from(d.records.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes();
                Some(vec![vec![0x05, 0x00, lo, hi]])
            }
            _ => None,
        }
    };
    if request == [0x04, 0x01] {
        if let Some(count) = records.and_then(|mut r| r.pop()) {
            emit_value(conn, state, address, 0x2A52, count).await;
        }
        return;
    }
    let response = match records {
        None => vec![0x06, 0x00, request.first().copied().unwrap_or(0), 0x02],
        Some(rs) if rs.is_empty() => vec![0x06, 0x00, 0x01, 0x06],
        Some(rs) => {
            let measurement = measurement_of(state, address);
            for r in rs {
                emit_value(conn, state, address, measurement, r).await;
            }
            vec![0x06, 0x00, 0x01, 0x01]
        }
    };
    emit_value(conn, state, address, 0x2A52, response).await;
}
