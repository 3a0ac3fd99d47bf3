//! The subset of FHIR R4 the gateway emits: Observation, Device and transaction Bundle.
//!
//! Typed structs rather than free-form JSON, so a field cannot be misspelled. Decimal
//! values are carried as [`serde_json::Number`] built from their exact text, so the
//! precision a device reported (`2.00` vs `2`) survives into the JSON.

use serde::{Deserialize, Serialize};

/// UCUM's system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// LOINC's system URI.
pub const LOINC: &str = "http://loinc.org";
/// IEEE 11073-10101 (MDC) system URI.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// Observation category code system.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The PHD IG's observation category code system.
pub const PHD_CATEGORY: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories";
/// Data-absent-reason code system.
pub const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// Measurement-status code system (IEEE 11073 measurement status, used by the PHD IG).
pub const MEASUREMENT_STATUS: &str = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status";
/// The extension that references the gateway (PHG) from an Observation.
pub const GATEWAY_DEVICE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
/// v3 ActReason, for the `HTEST` security label on demo and test data.
pub const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The PHD IG extension by which a measurement references its Coincident Time Stamp
/// Observation.
pub const COINCIDENT_TIME_STAMP_REFERENCE: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference";
/// The PHD IG profile of the Coincident Time Stamp Observation.
pub const COINCIDENT_TIME_STAMP_PROFILE: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation";
/// The identifier system of URNs (`urn:uuid:...`).
pub const URN_SYSTEM: &str = "urn:ietf:rfc:3986";

/// A Coding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coding {
    /// Code system URI.
    pub system: String,
    /// The code.
    pub code: String,
    /// Human-readable display.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    /// A coding with a display.
    pub fn new(system: &str, code: impl Into<String>, display: impl Into<String>) -> Self {
        Self {
            system: system.into(),
            code: code.into(),
            display: Some(display.into()),
        }
    }
}

/// A CodeableConcept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeableConcept {
    /// Codings.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub coding: Vec<Coding>,
    /// Plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A Quantity with a UCUM unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    /// The exact decimal value.
    pub value: serde_json::Number,
    /// Human-readable unit.
    pub unit: String,
    /// Always [`UCUM`].
    pub system: String,
    /// UCUM code.
    pub code: String,
}

/// A Reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Literal reference (`Device/abc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Logical reference by identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
}

impl Reference {
    /// A literal reference.
    pub fn to(reference: impl Into<String>) -> Self {
        Self {
            reference: Some(reference.into()),
            identifier: None,
        }
    }
}

/// An Identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    /// The namespace.
    pub system: String,
    /// The value.
    pub value: String,
}

/// An Extension holding a Reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// The extension URL.
    pub url: String,
    /// The value.
    pub value_reference: Reference,
}

/// Resource metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Profiles the resource claims.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub profile: Vec<String>,
    /// Security labels (e.g. `HTEST` for demo data).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub security: Vec<Coding>,
}

impl Meta {
    /// Whether there is nothing to say.
    pub fn is_empty(&self) -> bool {
        self.profile.is_empty() && self.security.is_empty()
    }
}

/// An Observation component (a panel member such as systolic pressure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// What it is.
    pub code: CodeableConcept,
    /// Its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
    /// Flags such as an implausible value.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub interpretation: Vec<CodeableConcept>,
}

/// An Observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Always `Observation`.
    pub resource_type: String,
    /// Logical id: the deterministic identifier's UUID.
    pub id: String,
    /// Profiles and security labels (left out when empty: FHIR JSON forbids `{}`).
    #[serde(skip_serializing_if = "Meta::is_empty", default)]
    pub meta: Meta,
    /// Extensions (the gateway device).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub extension: Vec<Extension>,
    /// The deterministic identifier.
    pub identifier: Vec<Identifier>,
    /// Always `final` for device measurements.
    pub status: String,
    /// Categories.
    pub category: Vec<CodeableConcept>,
    /// What was measured.
    pub code: CodeableConcept,
    /// The patient.
    pub subject: Reference,
    /// When it was measured (UTC).
    pub effective_date_time: String,
    /// When the gateway made it available (UTC).
    pub issued: String,
    /// The value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
    /// The value when it is a time (the Coincident Time Stamp Observation's device time).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value_date_time: Option<String>,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
    /// Flags such as an implausible value.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub interpretation: Vec<CodeableConcept>,
    /// Notes for the clinician (the device's status annunciations).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub note: Vec<Annotation>,
    /// Where on the body it was measured, when the device said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_site: Option<CodeableConcept>,
    /// The measuring device.
    pub device: Reference,
    /// Panel components.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub component: Vec<Component>,
}

/// An Annotation (text only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// The note.
    pub text: String,
}

/// A Device name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceName {
    /// The name.
    pub name: String,
    /// `model-name`, `manufacturer-name`, `user-friendly-name`...
    #[serde(rename = "type")]
    pub kind: String,
}

/// A Device version entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceVersion {
    /// What kind of version (an MDC code: firmware, software, hardware revision).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<CodeableConcept>,
    /// The version text.
    pub value: String,
}

/// A Device (a measuring device, or the gateway itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Always `Device`.
    pub resource_type: String,
    /// Logical id (deterministic).
    pub id: String,
    /// Identifiers (pseudonymous).
    pub identifier: Vec<Identifier>,
    /// Manufacturer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Names.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub device_name: Vec<DeviceName>,
    /// Model number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    /// Software versions.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub version: Vec<DeviceVersion>,
    /// Properties (the gateway's time synchronization, as the PHD IG's PhgDevice has it).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub property: Vec<DeviceProperty>,
    /// `active` when a heartbeat reports the device's state (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// The device's link as a heartbeat reports it (device-status-reason: `online`,
    /// `standby`, `offline`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub status_reason: Vec<CodeableConcept>,
    /// Extensions (a heartbeat's last-seen time).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub extension: Vec<DateTimeExtension>,
}

/// An extension holding a dateTime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DateTimeExtension {
    /// The extension URL.
    pub url: String,
    /// The value (RFC 3339, with its zone).
    pub value_date_time: String,
}

/// A Device property: a coded type and coded values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperty {
    /// What the property is.
    #[serde(rename = "type")]
    pub kind: CodeableConcept,
    /// Its coded values.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub value_code: Vec<CodeableConcept>,
}

/// A transaction request in a Bundle entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRequest {
    /// `POST` or `PUT`.
    pub method: String,
    /// `Observation` or `Device/<id>`.
    pub url: String,
    /// Conditional create: a search that must find nothing for the create to happen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_none_exist: Option<String>,
}

/// A Bundle entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry<'a> {
    /// The entry's full URL.
    pub full_url: String,
    /// The resource, as JSON text (kept as stored: never re-parsed on the way out), most
    /// often borrowed from the rows it comes from rather than copied.
    pub resource: std::borrow::Cow<'a, serde_json::value::RawValue>,
    /// The request.
    pub request: BundleRequest,
}

/// A transaction Bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle<'a> {
    /// Always `Bundle`.
    pub resource_type: String,
    /// Always `transaction`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entries.
    pub entry: Vec<BundleEntry<'a>>,
}
