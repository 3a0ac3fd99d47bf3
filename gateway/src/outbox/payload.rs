//! What a stored payload is: LZ4-compressed JSON, and the associated data that binds
//! each sealed payload to its row, Device or dead letter.

use super::StoredObservation;

/// The first byte of a compressed payload: an LZ4 block with its length prepended.
/// Uncompressed JSON starts with `{` and is read as is.
const LZ4: u8 = 0x01;

/// Compresses a JSON payload before sealing. FHIR JSON repeats its system URIs and keys
/// within every resource, so LZ4 roughly halves it for a few microseconds: fewer bytes
/// sealed, written to the SD card and counted against the size cap.
pub fn pack(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() / 2 + 8);
    out.push(LZ4);
    out.extend_from_slice(&lz4_flex::compress_prepend_size(json));
    out
}

/// Reverses [`pack`] (opened payloads are authenticated, so only our own data arrives here).
pub fn unpack(payload: &[u8]) -> Result<Vec<u8>, String> {
    match payload.first() {
        Some(&LZ4) => lz4_flex::decompress_size_prepended(&payload[1..])
            .map_err(|e| format!("cannot decompress a stored payload: {e}")),
        _ => Ok(payload.to_vec()),
    }
}

/// The associated data of a row.
pub fn row_aad(seq: i64, device_id: &str) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/row\0".to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(device_id.as_bytes());
    aad
}

/// The associated data of a Device resource.
pub fn device_aad(id: &str) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/device\0".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The associated data of a dead letter's reason.
pub fn reason_aad(uplink: &str, seq: i64) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/reason\0".to_vec();
    aad.extend_from_slice(uplink.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// The fields of an Observation a Bundle entry needs; serde skips the rest of the text.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(default)]
    identifier: Vec<crate::fhir::Identifier>,
    /// Set on readings received while the clock was not synchronized (`clock::hold`).
    #[serde(default, rename = "iomtGatewayTimeHold")]
    hold: Option<crate::clock::TimeHold>,
}

pub(super) fn observation_from(json: Vec<u8>) -> Result<StoredObservation, String> {
    let text = String::from_utf8(json).map_err(|_| "stored JSON is not UTF-8".to_string())?;
    let head: Head =
        serde_json::from_str(&text).map_err(|e| format!("stored JSON is invalid: {e}"))?;
    let json = serde_json::value::RawValue::from_string(text)
        .map_err(|e| format!("stored JSON is invalid: {e}"))?;
    Ok(StoredObservation {
        id: head.id,
        identifier: head
            .identifier
            .first()
            .map(|i| format!("{}|{}", i.system, i.value)),
        hold: head.hold,
        json,
    })
}
