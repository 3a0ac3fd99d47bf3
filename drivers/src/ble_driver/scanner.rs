//! The scanner: discovery on the adapter, one task per configured device fed from the
//! adapter's events, and the end of it all when BlueZ drops this client's sessions
//! (bluetoothd left the bus, the adapter was removed or powered off).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btleplug::api::{Central, CentralEvent, CentralState, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, PeripheralId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::device::DeviceTask;
use super::watch::{self, BluezChange, BluezWatch};
use super::{BleConfig, BleDeviceConfig, DevEvent, SequenceStore};
use crate::backoff::Backoff;
use crate::driver::ReadingSender;
use crate::link::LinkEvent;

/// How long device tasks may take to end their sessions once scanning stops.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// A received signal strength BlueZ reported, if it is one: Bluetooth's range is -127 to
/// 20 dBm (127 means "not available"; BlueZ leaves `RSSI` out rather than report 0).
fn signal(rssi: i16) -> Option<i16> {
    (-127..=20).contains(&rssi).then_some(rssi)
}

/// Why scanning stopped while the driver runs: BlueZ dropped this client's discovery and
/// notification sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lost {
    /// `org.bluez` left the system bus.
    BluezGone,
    /// The adapter object was removed.
    AdapterRemoved,
    /// The adapter was powered off.
    PoweredOff,
}

impl Lost {
    pub(super) fn warn(self) {
        match self {
            Lost::BluezGone => tracing::warn!("BlueZ left the system bus (bluetoothd stopped or restarted): BLE discovery and device sessions are lost; resuming when it returns"),
            Lost::AdapterRemoved => tracing::warn!("the Bluetooth adapter was removed (bluetoothd restarting, or the controller unplugged or reset): BLE discovery and device sessions are lost; resuming when it returns"),
            Lost::PoweredOff => tracing::warn!("the Bluetooth adapter was powered off (bluetoothctl, rfkill or another program): BLE discovery and device sessions are lost; resuming when it is powered on"),
        }
    }

    fn after(self) -> &'static str {
        match self {
            Lost::BluezGone => "bluetoothd left the bus",
            Lost::AdapterRemoved => "the adapter was removed",
            Lost::PoweredOff => "the adapter was powered off",
        }
    }
}

/// Logs what the watch saw while scanning was not running.
pub(super) fn log_change(change: &BluezChange) {
    match change {
        BluezChange::Gone => tracing::warn!(
            "BlueZ left the system bus (bluetoothd stopped or restarted); waiting for it to return"
        ),
        BluezChange::Back => tracing::info!("BlueZ is on the system bus again"),
        BluezChange::AdapterAdded(name) => {
            tracing::info!(adapter = %name, "a Bluetooth adapter appeared")
        }
        BluezChange::AdapterRemoved(name) => {
            tracing::warn!(adapter = %name, "a Bluetooth adapter was removed")
        }
    }
}

/// Waits, without touching the adapter (starting discovery would power it on again),
/// until it is powered on; `false` when the driver stops. Returns early when BlueZ or the
/// adapter goes away (the caller looks for it again).
pub(super) async fn wait_powered_on(
    adapter: &Adapter,
    cancel: &CancellationToken,
    watch: &mut Option<BluezWatch>,
) -> bool {
    // The stream first, then the state: a power-on in between is not missed.
    let Ok(mut events) = adapter.events().await else {
        return true;
    };
    if matches!(adapter.adapter_state().await, Ok(CentralState::PoweredOn)) {
        return true;
    }
    loop {
        tokio::select! {
            () = cancel.cancelled() => return false,
            e = events.next() => match e {
                None | Some(CentralEvent::StateUpdate(CentralState::PoweredOn)) => return true,
                Some(_) => {}
            },
            c = watch::next(watch) => {
                log_change(&c);
                if matches!(c, BluezChange::Gone | BluezChange::AdapterRemoved(_)) {
                    return true;
                }
            }
        }
    }
}

/// Scans until cancelled (`None`) or until BlueZ drops this client's sessions (why),
/// running one task per configured device. `resumed`: why the previous scan stopped
/// (taken once this one runs).
pub(super) async fn scan(
    config: &BleConfig,
    adapter: &Adapter,
    tx: &ReadingSender,
    cancel: &CancellationToken,
    sequences: &Arc<Mutex<SequenceStore>>,
    watch: &mut Option<BluezWatch>,
    resumed: &mut Option<Lost>,
) -> Result<Option<Lost>, btleplug::Error> {
    let info = adapter.adapter_info().await.unwrap_or_default();
    let id = info.split_whitespace().next().unwrap_or_default();
    let name = id.rsplit('/').next().unwrap_or_default().to_string();
    let mut events = adapter.events().await?;
    // BlueZ reports only devices advertising one of a filter's UUIDs: a device known by
    // its name prefix alone needs an unfiltered discovery (the allow-list still rules).
    let services = super::matching::discovery_services(
        config.devices.iter().map(BleDeviceConfig::recognition),
    );
    adapter.start_scan(ScanFilter { services }).await?;
    match resumed.take() {
        None => tracing::info!(devices = config.devices.len(), "BLE scanning"),
        Some(why) => tracing::info!(
            devices = config.devices.len(),
            after = why.after(),
            "BLE scanning resumed; devices are connected again when they advertise"
        ),
    }

    let tasks_cancel = cancel.child_token();
    let mut tasks = JoinSet::new();
    let mut senders: HashMap<String, mpsc::Sender<DevEvent>> = HashMap::new();
    for d in &config.devices {
        let (etx, erx) = mpsc::channel(4);
        senders.insert(d.address.clone(), etx);
        let task = DeviceTask {
            cfg: d.clone(),
            tx: tx.clone(),
            cancel: tasks_cancel.clone(),
            events: erx,
            backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
            sequences: sequences.clone(),
            clock: None,
            links: config.links.clone(),
        };
        tasks.spawn(task.run());
    }
    let mut known: HashMap<PeripheralId, String> = HashMap::new();
    let mut ignored: HashSet<PeripheralId> = HashSet::new();
    let result = loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break Ok(None),
            e = events.next() => e,
            c = watch::next(watch) => match c {
                BluezChange::Gone => break Ok(Some(Lost::BluezGone)),
                BluezChange::AdapterRemoved(n) if n == name => {
                    break Ok(Some(Lost::AdapterRemoved))
                }
                other => {
                    tracing::debug!(change = ?other, "BlueZ change");
                    continue;
                }
            },
        };
        let Some(event) = event else {
            break Err(btleplug::Error::Other(
                "the adapter's event stream ended".into(),
            ));
        };
        // Discovered and Updated come from an advertisement (InterfacesAdded, an RSSI
        // change); the services change at a connection too, when RSSI may be stale.
        let (id, advertised) = match event {
            CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => (id, true),
            CentralEvent::ServicesAdvertisement { id, .. } => (id, false),
            CentralEvent::DeviceDisconnected(id) => {
                if let Some(s) = known.get(&id).and_then(|a| senders.get(a)) {
                    let _ = s.try_send(DevEvent::Disconnected);
                }
                continue;
            }
            CentralEvent::StateUpdate(CentralState::PoweredOff) => {
                break Ok(Some(Lost::PoweredOff));
            }
            _ => continue,
        };
        let Ok(p) = adapter.peripheral(&id).await else {
            continue;
        };
        let Ok(Some(props)) = p.properties().await else {
            continue;
        };
        let address = props.address.to_string().to_uppercase();
        let Some(cfg) = config.devices.iter().find(|d| d.address == address) else {
            if ignored.insert(id) {
                tracing::debug!(device = %address, "ignoring a device outside the allow-list");
            }
            continue;
        };
        let name = props.local_name.as_deref();
        if !cfg.profile_matches(name, &props.services) {
            if ignored.insert(id) {
                tracing::debug!(device = %address, profile = %cfg.identity.profile, "an allow-listed address does not advertise its profile's services or name; ignored");
            }
            continue;
        }
        ignored.remove(&id);
        if let Some(rssi_dbm) = props.rssi.filter(|_| advertised).and_then(signal) {
            config
                .links
                .report(&cfg.identity, LinkEvent::Advertised { rssi_dbm });
        }
        known.insert(id, address.clone());
        if let Some(s) = senders.get(&address) {
            let _ = s.try_send(DevEvent::Seen(Box::new(p)));
        }
    };
    tasks_cancel.cancel();
    // A task blocked in a D-Bus call to a BlueZ that went away gets its error when the
    // bus notices; do not wait for ever.
    let join = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(TASKS_GRACE, join).await.is_err() {
        tracing::debug!("BLE device tasks did not end in time; aborted");
        tasks.shutdown().await;
    }
    // After a power-off or without BlueZ there is no discovery left to stop.
    if matches!(result, Ok(None) | Err(_)) {
        if let Err(e) = adapter.stop_scan().await {
            tracing::debug!(error = %e, "stopping discovery");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signal_is_taken_only_within_bluetooths_range() {
        assert_eq!(super::signal(-67), Some(-67));
        assert_eq!(super::signal(-127), Some(-127));
        assert_eq!(super::signal(20), Some(20));
        assert_eq!(super::signal(127), None, "not available");
        assert_eq!(super::signal(-128), None);
        assert_eq!(super::signal(i16::MIN), None);
        assert_eq!(super::signal(21), None);
    }
}
