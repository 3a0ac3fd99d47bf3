//! The FHIR Device resources (the measuring device and the gateway itself), named only by
//! their pseudonyms, and the identifier systems of the pseudonyms.

use crate::fhir::{self, Identifier};
use iomt_drivers::DeviceIdentity;

use crate::profile::Profile;

/// The FHIR Device id for a pseudonym: a UUID made from the pseudonym's 128 bits, so the
/// Bundle can name the entry `urn:uuid:<id>` and the server stores it under the same id.
pub fn device_resource_id(pseudonym: &str) -> String {
    let mut bytes = [0u8; 16];
    let decoded = hex::decode(pseudonym).unwrap_or_default();
    for (b, d) in bytes.iter_mut().zip(decoded) {
        *b = d;
    }
    uuid_text(bytes)
}

/// Formats 16 bytes as a version-8 (RFC 9562) UUID: the `uuid` crate sets the version
/// and variant bits and writes the lowercase hyphenated text into one buffer.
pub(super) fn uuid_text(b: [u8; 16]) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Builder::from_custom_bytes(b)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// The FHIR Device for a measuring device. It carries only the pseudonym and what names
/// the product: the manufacturer, model and firmware/software/hardware revisions the device
/// reported about itself (BLE Device Information), else the profile's manufacturer and
/// model; never the serial number, system id or transport address.
pub fn device_resource(
    profile: &Profile,
    identity: &DeviceIdentity,
    device_pseudonym: &str,
) -> fhir::Device {
    let model = identity
        .model
        .clone()
        .unwrap_or_else(|| profile.model.clone());
    let revisions = [
        (
            &identity.revisions.hardware,
            "531974",
            "MDC_ID_PROD_SPEC_HW",
        ),
        (
            &identity.revisions.software,
            "531975",
            "MDC_ID_PROD_SPEC_SW",
        ),
        (
            &identity.revisions.firmware,
            "531976",
            "MDC_ID_PROD_SPEC_FW",
        ),
    ];
    fhir::Device {
        resource_type: "Device".into(),
        id: device_resource_id(device_pseudonym),
        identifier: vec![Identifier {
            system: DEVICE_PSEUDONYM_SYSTEM.into(),
            value: device_pseudonym.into(),
        }],
        manufacturer: Some(
            identity
                .manufacturer
                .clone()
                .unwrap_or_else(|| profile.manufacturer.clone()),
        ),
        device_name: vec![fhir::DeviceName {
            name: identity
                .model
                .clone()
                .unwrap_or_else(|| profile.name.clone()),
            kind: "model-name".into(),
        }],
        model_number: Some(model),
        version: revisions
            .into_iter()
            .filter_map(|(value, code, refid)| {
                Some(fhir::DeviceVersion {
                    kind: Some(fhir::CodeableConcept {
                        coding: vec![fhir::Coding::new(fhir::MDC, code, refid)],
                        text: None,
                    }),
                    value: value.clone()?,
                })
            })
            .collect(),
        property: Vec::new(),
        status: None,
        status_reason: Vec::new(),
        extension: Vec::new(),
    }
}

/// The FHIR Device for the gateway itself (the PHD IG's PHG), with its clock reported
/// synchronized (see [`set_clock_synchronized`]).
pub fn gateway_resource(gateway_pseudonym: &str) -> fhir::Device {
    let mut device = fhir::Device {
        resource_type: "Device".into(),
        id: device_resource_id(gateway_pseudonym),
        identifier: vec![Identifier {
            system: GATEWAY_PSEUDONYM_SYSTEM.into(),
            value: gateway_pseudonym.into(),
        }],
        manufacturer: Some("iomt-gateway project".into()),
        device_name: vec![fhir::DeviceName {
            name: "iomt-gateway".into(),
            kind: "model-name".into(),
        }],
        model_number: None,
        version: vec![fhir::DeviceVersion {
            kind: None,
            value: env!("CARGO_PKG_VERSION").into(),
        }],
        property: Vec::new(),
        status: None,
        status_reason: Vec::new(),
        extension: Vec::new(),
    };
    set_clock_synchronized(&mut device, true);
    device
}

/// Reports the gateway's clock in its Device as the PHD IG's PhgDevice profile does: the
/// time synchronization property (MDC_TIME_SYNC_PROTOCOL, 68220) says NTPv4 while the
/// system clock is synchronized (the kernel's status, set by the kit's time daemon) and
/// MDC_TIME_SYNC_NONE while it is not, and the clock bit `mds-time-state-abs-time-synced`
/// (ASN1ToHL7 68219.8) says Y or N. Replaces those two properties; others stay.
pub fn set_clock_synchronized(device: &mut fhir::Device, synchronized: bool) {
    let concept = |system: &str, code: &str, display: &str, text: &str| fhir::CodeableConcept {
        coding: vec![fhir::Coding::new(system, code, display)],
        text: Some(text.into()),
    };
    let (method, method_display, method_text) = if synchronized {
        (
            "532226",
            "MDC_TIME_SYNC_NTPV4",
            "NTP (the system clock, set by the kit's time daemon)",
        )
    } else {
        ("532224", "MDC_TIME_SYNC_NONE", "not synchronized")
    };
    let (yes_no, yes_no_display) = if synchronized {
        ("Y", "Yes")
    } else {
        ("N", "No")
    };
    device.property.retain(|p| {
        !p.kind.coding.iter().any(|c| {
            (c.system == fhir::MDC && c.code == "68220")
                || (c.system == ASN1_TO_HL7 && c.code == "68219.8")
        })
    });
    device.property.extend([
        fhir::DeviceProperty {
            kind: concept(
                fhir::MDC,
                "68220",
                "MDC_TIME_SYNC_PROTOCOL",
                "Time synchronization protocol",
            ),
            value_code: vec![concept(fhir::MDC, method, method_display, method_text)],
        },
        fhir::DeviceProperty {
            kind: concept(
                ASN1_TO_HL7,
                "68219.8",
                "mds-time-state-abs-time-synced",
                "The absolute time has been synchronized",
            ),
            value_code: vec![concept(V2_YES_NO, yes_no, yes_no_display, yes_no_display)],
        },
    ]);
}

/// The PHD IG's code system of IEEE 11073 bit fields.
pub const ASN1_TO_HL7: &str = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7";
/// HL7 v2 table 0136 (yes/no).
pub const V2_YES_NO: &str = "http://terminology.hl7.org/CodeSystem/v2-0136";

/// Identifier system of device pseudonyms.
pub const DEVICE_PSEUDONYM_SYSTEM: &str = "urn:iomt-gateway:device-pseudonym";
/// Identifier system of gateway pseudonyms.
pub const GATEWAY_PSEUDONYM_SYSTEM: &str = "urn:iomt-gateway:gateway-pseudonym";
/// Identifier system of patient pseudonyms.
pub const PATIENT_PSEUDONYM_SYSTEM: &str = "urn:iomt-gateway:patient-pseudonym";
