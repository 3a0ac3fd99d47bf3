//! `[[uplinks]]`: the kinds of uplink, validated and built.
//!
//! Each kind's raw table, its validation and its settings live next to it
//! (`file.rs`, `fhir_http/config.rs`, `mqtt/config.rs`); this module only lists the kinds:
//! [`RawUplink`] picks the table by its `kind` key, [`UplinkKind`] holds the validated
//! settings, and [`UplinkSettings::build`] makes the [`Uplink`] the daemon runs.

use std::time::Duration;

use serde::Deserialize;

use super::fhir_http::config::RawFhirUplink;
use super::fhir_http::{FhirSettings, FhirUplink};
use super::file::{FileUplink, RawFileUplink};
use super::mqtt::config::RawMqttUplink;
use super::mqtt::{MqttUplink, MqttUplinkSettings};
use super::{Uplink, UplinkError};

/// `[[uplinks]]`, by `kind`; each kind's table refuses keys it does not know.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawUplink {
    /// Writes each Bundle as a JSON file.
    File(RawFileUplink),
    /// POSTs transaction Bundles to a FHIR server.
    Fhir(RawFhirUplink),
    /// Publishes pseudonymized FHIR to an MQTT broker at QoS 1.
    Mqtt(RawMqttUplink),
}

impl RawUplink {
    /// Validates the table into the uplink's settings, or says what is wrong.
    pub fn validate(&self) -> Result<UplinkSettings, String> {
        match self {
            RawUplink::File(raw) => raw.validate(),
            RawUplink::Fhir(raw) => raw.validate(),
            RawUplink::Mqtt(raw) => raw.validate(),
        }
    }
}

/// What an uplink is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkKind {
    /// JSON files in a directory.
    File {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// A FHIR server.
    Fhir(Box<FhirSettings>),
    /// An MQTT broker.
    Mqtt(Box<MqttUplinkSettings>),
}

/// An uplink, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// Its unique name.
    pub name: String,
    /// Most Observations per Bundle.
    pub batch_size: usize,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// What it is.
    pub kind: UplinkKind,
}

impl UplinkSettings {
    /// Sets up the uplink for the gateway whose pseudonym is `gateway_pseudonym` (reads
    /// its secret files, prepares its client); it connects on its first delivery.
    pub fn build(&self, gateway_pseudonym: &str) -> Result<Box<dyn Uplink>, UplinkError> {
        Ok(match &self.kind {
            UplinkKind::File { dir } => Box::new(FileUplink::new(&self.name, dir)?),
            UplinkKind::Fhir(settings) => Box::new(FhirUplink::new((**settings).clone())?),
            UplinkKind::Mqtt(settings) => {
                Box::new(MqttUplink::new((**settings).clone(), gateway_pseudonym)?)
            }
        })
    }
}

/// `batch_size`: at least 1, 100 when not set.
pub fn batch_size(configured: Option<usize>) -> Result<usize, String> {
    match configured {
        Some(0) => Err("batch_size must be at least 1".to_string()),
        Some(n) => Ok(n),
        None => Ok(100),
    }
}

/// `max_backoff_secs`: the longest retry delay, at least 1 s, 300 s when not set.
pub fn backoff_max(max_backoff_secs: Option<u64>) -> Duration {
    Duration::from_secs(max_backoff_secs.unwrap_or(300).max(1))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::minimal_with;

    #[test]
    fn each_kind_refuses_the_keys_it_does_not_know() {
        let e = minimal_with("[[uplinks]]\nkind = \"fhir\"\nbase_url = \"https://fhir.example.org\"\ntopic = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("topic"), "{e}");
        let e = minimal_with(
            "[[uplinks]]\nkind = \"file\"\nname = \"f2\"\ndir = \"/tmp\"\nbase_url = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("base_url"), "{e}");
        let e = minimal_with("[[uplinks]]\nkind = \"ftp\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp"), "{e}");
    }

    #[test]
    fn two_uplinks_with_one_name_are_refused() {
        let e = minimal_with("[[uplinks]]\nkind = \"file\"\ndir = \"/tmp/two\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uplinks[1]: the name `file` is used twice"),
            "{e}"
        );
    }
}
