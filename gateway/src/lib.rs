//! iomt-gateway: an edge gateway that turns readings from medical devices (BLE, serial,
//! MQTT, simulated) into HL7 FHIR R4 Observations and forwards them.
//!
//! The crate is a library (everything testable) plus the `iomt-gateway` binary (the CLI).
//! `ARCHITECTURE.md` at the repository root is the map.

#![warn(missing_docs)]

pub mod cache;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fhir;
pub mod health;
pub mod ingest;
pub mod limits;
pub mod net;
pub mod normalize;
pub mod outbox;
pub mod pipeline;
pub mod probe;
pub mod profile;
pub mod pseudonym;
pub mod secret_file;
pub mod smart;
pub mod ucum;
pub mod uplink;
