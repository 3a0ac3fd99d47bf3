//! Test doubles that speak the real protocols, for iomt-gateway's tests and benchmarks.
//! They stand only at the true edge of the machine (the cloud); everything on this side
//! of it is the real thing. `mosquitto.rs` runs the real broker (`/usr/sbin/mosquitto`)
//! and MQTT clients for tests. `canned.rs` is an HTTP server that answers every request
//! the same way (a redirect, a discovery document) and records what it was sent.

pub mod bluez;
pub mod canned;
pub mod fhir_server;
pub mod mosquitto;
pub mod oauth;
pub mod tls;

pub use canned::{Canned, CannedServer};
pub use fhir_server::{FhirServer, Mode};
pub use mosquitto::{Collector, Mosquitto};
