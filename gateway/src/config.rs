//! Gateway configuration: built-in defaults, then one TOML file, then environment
//! variables `IOMT_GATEWAY__SECTION__KEY`, layered with the `config` crate.
//!
//! This is the root: the sections of the gateway as a whole (`[gateway]`, `[patient]`,
//! `[pseudonymization]`, `[normalize]`, `[devices.<profile>]`, `[log]`) and the checks
//! across sections. Each component's section lives next to the component: the ingest
//! transports in `ingest/` (`[sim]`, `[serial]`, `[ble]`, `[mqtt]`), `[outbox]` in
//! `outbox/config.rs`, `[[uplinks]]` in `uplink/config.rs` and each uplink's module.
//!
//! The raw structs reject unknown keys; [`Config::from_raw`] then validates everything and
//! reports every problem at once. `gateway.example.toml` documents every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::clock::{ClockSettings, RawClock};
use crate::health::config::{RawStatus, StatusSettings};
use crate::ingest::ble::{BleSettings, RawBle};
use crate::ingest::mqtt::{MqttSettings, RawMqtt};
use crate::ingest::serial::{RawSerial, SerialSettings};
use crate::ingest::sim::{RawSim, SimSettings};
use crate::ingest::{optional_zone, Source};
use crate::limits;
use crate::normalize::{OutOfRange, Zone};
use crate::outbox::config::RawOutbox;
use crate::outbox::OutboxSettings;
use crate::uplink::config::RawUplink;
pub use crate::uplink::config::{UplinkKind, UplinkSettings};

mod errors;
mod general;
pub use general::{
    LogFormat, RawDevice, RawGateway, RawLog, RawNormalize, RawPatient, RawPseudonymization,
};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/iomt-gateway/gateway.toml";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "IOMT_GATEWAY";

/// Configuration problems, all of them.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}:\n  - {}", source_name.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(), problems.join("\n  - "))]
pub struct ConfigError {
    /// The file, when there is one.
    pub source_name: Option<String>,
    /// Each problem, naming its key.
    pub problems: Vec<String>,
}

/// The whole file as written (a missing section takes its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`
    pub gateway: RawGateway,
    /// `[patient]`
    pub patient: RawPatient,
    /// `[pseudonymization]`
    pub pseudonymization: RawPseudonymization,
    /// `[normalize]`
    #[serde(default)]
    pub normalize: RawNormalize,
    /// `[sim]`
    #[serde(default)]
    pub sim: RawSim,
    /// `[serial]`
    #[serde(default)]
    pub serial: RawSerial,
    /// `[ble]`
    #[serde(default)]
    pub ble: RawBle,
    /// `[mqtt]`
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// `[devices.<profile-id>]`
    #[serde(default)]
    pub devices: BTreeMap<String, RawDevice>,
    /// `[outbox]`
    #[serde(default)]
    pub outbox: RawOutbox,
    /// `[[uplinks]]`
    #[serde(default)]
    pub uplinks: Vec<RawUplink>,
    /// `[log]`
    #[serde(default)]
    pub log: RawLog,
    /// `[clock]`
    #[serde(default)]
    pub clock: RawClock,
    /// `[status]`: the local status endpoint.
    #[serde(default)]
    pub status: RawStatus,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The kit's id.
    pub gateway_id: String,
    /// Profiles directory.
    pub profiles_dir: PathBuf,
    /// Zone for device times without zone.
    pub zone: Zone,
    /// Per-profile zones.
    pub device_zones: BTreeMap<String, Zone>,
    /// Reading channel capacity.
    pub channel_capacity: usize,
    /// The patient id (never logged).
    pub patient_id: String,
    /// The pseudonymization key file.
    pub pseudonym_key_file: PathBuf,
    /// Out-of-range rule.
    pub out_of_range: OutOfRange,
    /// Simulator, when enabled.
    pub sim: Option<SimSettings>,
    /// Serial driver, when ports are configured.
    pub serial: Option<SerialSettings>,
    /// BLE driver, when devices are configured.
    pub ble: Option<BleSettings>,
    /// MQTT driver, when enabled.
    pub mqtt: Option<MqttSettings>,
    /// The outbox.
    pub outbox: OutboxSettings,
    /// The storage key file.
    pub storage_key_file: PathBuf,
    /// Uplinks.
    pub uplinks: Vec<UplinkSettings>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The gateway's own clock.
    pub clock: ClockSettings,
    /// The local status endpoint (`None`: disabled).
    pub status: Option<StatusSettings>,
    /// How long without a delivery before a FHIR uplink sends a heartbeat.
    pub heartbeat: Option<std::time::Duration>,
}

impl Config {
    /// Loads `path` (TOML) with environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError {
                source_name: Some(path.display().to_string()),
                problems: vec![format!(
                    "the file does not exist; copy gateway.example.toml to {} and edit it, or pass --config FILE",
                    path.display()
                )],
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: Some(path.display().to_string()),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::build(&text, Some(path.display().to_string()))
    }

    /// Loads a TOML text (the demo's embedded default) with environment overrides.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Self, ConfigError> {
        Self::build(text, Some(name.into()))
    }

    /// Layers the TOML `text` and the environment. Errors never quote a value
    /// (`errors.rs`): a mistyped patient id must not reach the journal.
    fn build(text: &str, name: Option<String>) -> Result<Self, ConfigError> {
        if let Some(problem) = errors::syntax_problem(text) {
            return Err(ConfigError {
                source_name: name,
                problems: vec![problem],
            });
        }
        let source = config::File::from_str(text, config::FileFormat::Toml);
        let fail = |e: config::ConfigError| ConfigError {
            source_name: name.clone(),
            problems: vec![errors::describe(&e, Some(text))],
        };
        let raw: RawConfig = config::Config::builder()
            .add_source(source)
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("sim.profiles")
                    .with_list_parse_key("mqtt.profiles"),
            )
            .build()
            .map_err(fail)?
            .try_deserialize()
            .map_err(fail)?;
        Self::from_raw(raw).map_err(|problems| ConfigError {
            source_name: name,
            problems,
        })
    }

    /// Validates raw settings, collecting every problem: the root's, then each
    /// section's, then the uplinks' names across `[[uplinks]]`.
    pub fn from_raw(raw: RawConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if raw.gateway.id.trim().is_empty() {
            problems.push("gateway.id must not be empty".into());
        }
        if raw.patient.id.trim().is_empty() {
            problems.push("patient.id must not be empty".into());
        }
        limits::check(
            "gateway.channel_capacity",
            raw.gateway.channel_capacity,
            &limits::CHANNEL_CAPACITY,
            &mut problems,
        );
        let zone = optional_zone("gateway", &raw.gateway.time_zone, &mut problems)
            .unwrap_or(Zone::GatewayLocal);
        let mut device_zones = BTreeMap::new();
        for (profile, dev) in &raw.devices {
            let key = format!("devices.{profile}");
            if let Some(zone) = optional_zone(&key, &dev.time_zone, &mut problems) {
                device_zones.insert(profile.clone(), zone);
            }
        }
        let sim = raw.sim.validate(&mut problems);
        let serial = raw.serial.validate(&mut problems);
        let ble = raw.ble.validate(&mut problems);
        let mqtt = raw.mqtt.validate(&mut problems);
        let outbox = raw.outbox.validate(&mut problems);
        let clock = raw.clock.validate(&mut problems);
        let status = raw.status.validate(&mut problems);
        let heartbeat = raw.status.heartbeat(&mut problems);
        if raw.uplinks.is_empty() {
            problems.push("no uplink configured: add an [[uplinks]] table (kind = \"fhir\" for a FHIR server, kind = \"file\" for a directory)".into());
        }
        let mut uplinks = Vec::new();
        for (i, u) in raw.uplinks.iter().enumerate() {
            match u.validate() {
                Ok(u) => {
                    if uplinks.iter().any(|o: &UplinkSettings| o.name == u.name) {
                        problems.push(format!("uplinks[{i}]: the name `{}` is used twice; give each uplink a unique `name`", u.name));
                    }
                    uplinks.push(u);
                }
                Err(e) => problems.push(format!("uplinks[{i}]: {e}")),
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            problems.push(format!(
                "log.level `{}` is not a valid filter: {e}",
                raw.log.level
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            gateway_id: raw.gateway.id,
            profiles_dir: raw.gateway.profiles_dir,
            zone,
            device_zones,
            channel_capacity: raw.gateway.channel_capacity,
            patient_id: raw.patient.id,
            pseudonym_key_file: raw.pseudonymization.key_file,
            out_of_range: raw.normalize.out_of_range,
            sim,
            serial,
            ble,
            mqtt,
            outbox,
            storage_key_file: raw.outbox.key_file,
            uplinks,
            log_level: raw.log.level,
            log_format: raw.log.format,
            clock,
            status,
            heartbeat,
        })
    }

    /// The names of the configured uplinks.
    pub fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.name.clone()).collect()
    }

    /// The zone for a profile's devices.
    pub fn zone_for(&self, profile: &str) -> Zone {
        self.device_zones.get(profile).copied().unwrap_or(self.zone)
    }

    /// The configured ingest transports, in the order their drivers start.
    pub fn sources(&self) -> Vec<&dyn Source> {
        let sim = self.sim.as_ref().map(|s| s as &dyn Source);
        let serial = self.serial.as_ref().map(|s| s as &dyn Source);
        let ble = self.ble.as_ref().map(|s| s as &dyn Source);
        let mqtt = self.mqtt.as_ref().map(|s| s as &dyn Source);
        [sim, serial, ble, mqtt].into_iter().flatten().collect()
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
