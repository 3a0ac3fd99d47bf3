//! `[[uplinks]]`: the kinds of uplink, validated and built.
//!
//! Each kind's raw table, its validation and its settings live next to it
//! (`file.rs`, `fhir_http/config.rs`, `mqtt/config.rs`); this module only lists the kinds:
//! [`RawUplink`] picks the table by its `kind` key, [`UplinkKind`] holds the validated
//! settings, and [`UplinkSettings::build`] makes the [`Uplink`] the daemon runs.

use std::path::PathBuf;

use serde::Deserialize;

use super::fhir_http::config::RawFhirUplink;
use super::fhir_http::{FhirSettings, FhirUplink};
use super::file::{FileUplink, RawFileUplink};
use super::mqtt::config::RawMqttUplink;
use super::mqtt::{MqttUplink, MqttUplinkSettings};
use super::{Settings, Uplink, UplinkError};

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
            RawUplink::File(raw) => Ok(raw.validate()?.map_kind(|dir| UplinkKind::File { dir })),
            RawUplink::Fhir(raw) => Ok(raw.validate()?.map_kind(|s| UplinkKind::Fhir(Box::new(s)))),
            RawUplink::Mqtt(raw) => Ok(raw.validate()?.map_kind(|s| UplinkKind::Mqtt(Box::new(s)))),
        }
    }
}

/// What an uplink is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkKind {
    /// JSON files in a directory.
    File {
        /// The directory.
        dir: PathBuf,
    },
    /// A FHIR server.
    Fhir(Box<FhirSettings>),
    /// An MQTT broker.
    Mqtt(Box<MqttUplinkSettings>),
}

/// An uplink, validated.
pub type UplinkSettings = Settings<UplinkKind>;

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
