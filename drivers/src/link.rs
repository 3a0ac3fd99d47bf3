//! What a driver tells the gateway about its devices' links, for the kit's health view
//! (connected, gone, failing, and for BLE the signal a device advertised at). Reports are plain calls, cheap and never blocking: the
//! gateway keeps the latest state in memory. A driver without links (the simulator, a
//! serial port) does not report; its devices are seen through their readings.

use std::sync::Arc;

use crate::reading::DeviceIdentity;

/// A change of a device's link, or what was heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A session with the device is open (BLE: connected, services discovered).
    Connected,
    /// The session ended (the device hung up, went out of range, or the stack dropped it).
    Disconnected,
    /// A session could not be set up or failed (the detail is in the driver's log).
    Failed,
    /// The device was heard advertising (BLE) at this signal strength: BlueZ's `RSSI`
    /// when it discovered the device or the value changed. Not a link change: a device
    /// is "seen" through its connections and readings.
    Advertised {
        /// The received signal strength, dBm (-127 to 20).
        rssi_dbm: i16,
    },
}

/// The function a [`LinkReporter`] calls.
type ReportFn = dyn Fn(&DeviceIdentity, LinkEvent) + Send + Sync;

/// Where a driver reports its devices' link changes; the default reports nowhere.
#[derive(Clone, Default)]
pub struct LinkReporter(Option<Arc<ReportFn>>);

impl LinkReporter {
    /// A reporter calling `f` on each change. `f` must return at once (no IO, no wait).
    pub fn new(f: impl Fn(&DeviceIdentity, LinkEvent) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Reports a change of `device`'s link.
    pub fn report(&self, device: &DeviceIdentity, event: LinkEvent) {
        if let Some(f) = &self.0 {
            f(device, event);
        }
    }
}

impl std::fmt::Debug for LinkReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LinkReporter")
            .field(&self.0.is_some())
            .finish()
    }
}
