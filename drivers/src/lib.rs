//! Device transports and decoders for iomt-gateway.
//!
//! A driver finds its devices, reads bytes, decodes them into [`Reading`]s and sends them
//! on a bounded channel. Drivers know nothing of FHIR, storage or uplinks: that is the
//! gateway's job. See `ARCHITECTURE.md` at the repository root.

#![warn(missing_docs)]

pub mod backoff;
pub mod ble;
#[cfg(feature = "bluetooth")]
pub mod ble_driver;
pub mod decode;
pub mod driver;
pub mod link;
pub mod mqtt;
pub mod net;
pub mod reading;
pub mod serial;
pub mod sim;

pub use driver::{
    reading_channel, reject_channel, ChannelClosed, CommitReceiver, Committed, Driver, DriverError,
    Envelope, ReadingReceiver, ReadingSender, RejectEnvelope, RejectReceiver, RejectSender,
    Rejected,
};
pub use reading::{
    AbsentReason, BodySite, ClockComparison, DeviceIdentity, DeviceTime, Measurement, Quantity,
    Reading, ReadingFlag, Revisions, Transport,
};
