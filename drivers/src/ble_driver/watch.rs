//! A watch of BlueZ on the system bus: what btleplug does not report.
//!
//! btleplug reports the adapter's `Powered` changes (`CentralEvent::StateUpdate`) but not
//! bluetoothd leaving or joining the bus, nor the adapter object being removed or added:
//! after `systemctl restart bluetooth` its event stream simply goes quiet, while BlueZ
//! has dropped the client's discovery and notification sessions. This watch opens its own
//! D-Bus connection (libdbus, so it honours `DBUS_SYSTEM_BUS_ADDRESS` as btleplug does)
//! and asks the bus for `NameOwnerChanged` of `org.bluez` only, and for BlueZ's
//! ObjectManager signals, forwarding those about adapters. Nothing is polled: the task
//! sleeps until the bus sends one of these signals.

use std::collections::HashMap;

use dbus::arg::PropMap;
use dbus::channel::MatchingReceiver;
use dbus::message::MatchRule;
use dbus::Path;
use tokio::sync::mpsc;

/// What happened to BlueZ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BluezChange {
    /// `org.bluez` left the bus (bluetoothd stopped or crashed).
    Gone,
    /// `org.bluez` has an owner again.
    Back,
    /// An adapter object appeared (its name: `hci0`).
    AdapterAdded(String),
    /// An adapter object was removed (its name: `hci0`).
    AdapterRemoved(String),
}

/// Why the watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch BlueZ on the system bus: {0}")]
pub(super) struct WatchError(#[from] dbus::Error);

/// The watch; its D-Bus connection closes when dropped.
pub(super) struct BluezWatch {
    changes: mpsc::UnboundedReceiver<BluezChange>,
    task: tokio::task::JoinHandle<()>,
    // Kept so the callbacks (and the match rules) live as long as the watch.
    _conn: std::sync::Arc<dbus::nonblock::SyncConnection>,
}

const ADAPTER1: &str = "org.bluez.Adapter1";

/// The last element of an object path (`/org/bluez/hci0` → `hci0`).
fn leaf(path: &Path<'_>) -> String {
    path.rsplit('/').next().unwrap_or_default().to_string()
}

impl BluezWatch {
    /// Connects to the system bus and subscribes.
    pub(super) async fn start() -> Result<Self, WatchError> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
        let task = tokio::spawn(async move {
            let e = resource.await;
            tracing::warn!(error = %e, "the watch of BlueZ lost its D-Bus connection");
        });
        let (tx, changes) = mpsc::unbounded_channel();
        let names = tx.clone();
        conn.start_receive(
            MatchRule::new_signal("org.freedesktop.DBus", "NameOwnerChanged"),
            Box::new(move |msg, _| {
                if let Ok((name, _old, new)) = msg.read3::<&str, &str, &str>() {
                    if name == "org.bluez" {
                        let change = if new.is_empty() {
                            BluezChange::Gone
                        } else {
                            BluezChange::Back
                        };
                        let _ = names.send(change);
                    }
                }
                true
            }),
        );
        let added = tx.clone();
        conn.start_receive(
            MatchRule::new_signal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded"),
            Box::new(move |msg, _| {
                if let Ok((path, ifaces)) = msg.read2::<Path, HashMap<String, PropMap>>() {
                    if ifaces.contains_key(ADAPTER1) {
                        let _ = added.send(BluezChange::AdapterAdded(leaf(&path)));
                    }
                }
                true
            }),
        );
        conn.start_receive(
            MatchRule::new_signal("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved"),
            Box::new(move |msg, _| {
                if let Ok((path, ifaces)) = msg.read2::<Path, Vec<String>>() {
                    if ifaces.iter().any(|i| i == ADAPTER1) {
                        let _ = tx.send(BluezChange::AdapterRemoved(leaf(&path)));
                    }
                }
                true
            }),
        );
        let subscribe = async {
            conn.add_match_no_cb(
                "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
                 member='NameOwnerChanged',arg0='org.bluez'",
            )
            .await?;
            for member in ["InterfacesAdded", "InterfacesRemoved"] {
                conn.add_match_no_cb(&format!(
                    "type='signal',sender='org.bluez',path='/',\
                     interface='org.freedesktop.DBus.ObjectManager',member='{member}'"
                ))
                .await?;
            }
            Ok::<_, dbus::Error>(())
        };
        if let Err(e) = subscribe.await {
            task.abort();
            return Err(e.into());
        }
        Ok(Self {
            changes,
            task,
            _conn: conn,
        })
    }

    /// The next change; pending forever once the connection is gone.
    pub(super) async fn next(&mut self) -> BluezChange {
        match self.changes.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    /// The changes received so far, oldest first (they tell what happened to a BlueZ
    /// the caller has just found again).
    pub(super) fn drain(&mut self) -> Vec<BluezChange> {
        let mut changes = Vec::new();
        while let Ok(c) = self.changes.try_recv() {
            changes.push(c);
        }
        changes
    }
}

impl Drop for BluezWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch that may be missing (no system bus): then it never reports anything.
pub(super) async fn next(watch: &mut Option<BluezWatch>) -> BluezChange {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
