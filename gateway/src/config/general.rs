//! The sections about the gateway as a whole: `[gateway]`, `[patient]`,
//! `[pseudonymization]`, `[normalize]`, `[devices.<profile-id>]` and `[log]`, with their
//! defaults. `Config::from_raw` validates them.

use std::path::PathBuf;

use serde::Deserialize;

use crate::normalize::OutOfRange;

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// This kit's identifier (pseudonymized before it leaves the device).
    pub id: String,
    /// Directory of device profiles.
    #[serde(default = "default_profiles_dir")]
    pub profiles_dir: PathBuf,
    /// IANA zone for device times without zone; default: the system's zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Capacity of the reading channel between drivers and the pipeline.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
}

fn default_profiles_dir() -> PathBuf {
    PathBuf::from("/usr/share/iomt-gateway/device-profiles")
}
fn default_channel_capacity() -> usize {
    256
}

/// `[patient]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatient {
    /// The patient identifier (e.g. an MRN). Never emitted or logged: only its pseudonym.
    pub id: String,
}

/// `[pseudonymization]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPseudonymization {
    /// Path of the 32-byte key file (mode 0600), shared with the backend's
    /// re-identification service.
    pub key_file: PathBuf,
}

/// `[normalize]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNormalize {
    /// `flag` (keep, marked questionable) or `reject` (drop, counted).
    #[serde(default)]
    pub out_of_range: OutOfRange,
}

/// `[devices.<profile-id>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// IANA zone of this device's clock, when it differs from the gateway's.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter (`info`, `iomt_gateway=debug`...); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (structured fields kept).
    Json,
}
