//! The `[status]` section: the local status endpoint (`/status`, `/metrics`).
//!
//! Enabled by default on the loopback address: a listening socket costs nothing at rest
//! (no task wakes until a request comes), and `iomt-gateway status` needs it. Beyond
//! loopback (a technician's laptop on the kit's LAN, a Prometheus server) only with a
//! bearer token read from a 0600 file; refused at start otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The default address: loopback, a port of Prometheus' exporter range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// `[status]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Serve the status endpoint (default true).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The address and port to listen on (default `127.0.0.1:9464`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file (mode 0600) holding the bearer token every request must carry; required
    /// when `listen` is not a loopback address.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A device heard from within this many seconds is "seen" (default 600).
    #[serde(default = "default_seen_within")]
    pub seen_within_secs: u64,
    /// After this many seconds without a delivery, every uplink sends a heartbeat (a FHIR
    /// uplink: the gateway's Device and its devices' state; an MQTT uplink: its retained
    /// status message); also a few seconds after a device's state changes. 0: never
    /// (default 900). Independent of `enabled`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
}

fn default_heartbeat() -> u64 {
    900
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}

/// The default of `seen_within_secs`.
pub const DEFAULT_SEEN_WITHIN_SECS: u64 = 600;

fn default_seen_within() -> u64 {
    DEFAULT_SEEN_WITHIN_SECS
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            token_file: None,
            seen_within_secs: default_seen_within(),
            heartbeat_interval_secs: default_heartbeat(),
        }
    }
}

/// The validated `[status]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The bearer token's file, if requests must carry one.
    pub token_file: Option<PathBuf>,
    /// How recently a device must have been heard from to be "seen".
    pub seen_within: Duration,
}

/// The longest `seen_within_secs` (30 days).
const MAX_SEEN_WITHIN: u64 = 30 * 24 * 3600;

impl RawStatus {
    /// The heartbeat interval (`None`: never), checked.
    pub fn heartbeat(&self, problems: &mut Vec<String>) -> Option<Duration> {
        if self.heartbeat_interval_secs > MAX_SEEN_WITHIN {
            problems.push(format!(
                "status.heartbeat_interval_secs must be between 0 (never) and {MAX_SEEN_WITHIN}"
            ));
        }
        (self.heartbeat_interval_secs > 0)
            .then(|| Duration::from_secs(self.heartbeat_interval_secs))
    }

    /// Validates; `None` when disabled or invalid (the problems are pushed).
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<StatusSettings> {
        if !(1..=MAX_SEEN_WITHIN).contains(&self.seen_within_secs) {
            problems.push(format!(
                "status.seen_within_secs must be between 1 and {MAX_SEEN_WITHIN}"
            ));
        }
        let listen: Option<SocketAddr> = match self.listen.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "status.listen `{}` is not an IP address and port (such as {DEFAULT_LISTEN})",
                    self.listen
                ));
                None
            }
        };
        let listen = listen?;
        if !self.enabled {
            return None;
        }
        if !listen.ip().is_loopback() && self.token_file.is_none() {
            problems.push(format!(
                "status.listen {listen} is not a loopback address: set status.token_file to a file (mode 0600) holding a bearer token, or listen on {DEFAULT_LISTEN}"
            ));
            return None;
        }
        Some(StatusSettings {
            listen,
            token_file: self.token_file.clone(),
            seen_within: Duration::from_secs(self.seen_within_secs),
        })
    }
}
