//! What a stored payload is: LZ4-compressed JSON, and the associated data that binds
//! each sealed payload to its row, Device or dead letter.

use super::StoredObservation;

/// The first byte of a compressed payload: an LZ4 block with its length prepended.
/// Uncompressed JSON starts with `{` and is read as is.
const LZ4: u8 = 0x01;

thread_local! {
    /// The LZ4 hash table of the thread's last [`pack`].
    static TABLE: std::cell::RefCell<lz4_flex::block::CompressTable> =
        std::cell::RefCell::new(lz4_flex::block::CompressTable::small());
    /// The compressor's output buffer of the thread's last [`pack`] (at most
    /// [`SCRATCH_MAX`] bytes).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest compressor output buffer a thread keeps between payloads: an Observation
/// or a Device resource needs about 1.4 KiB; a larger payload gets a buffer of its own.
const SCRATCH_MAX: usize = 16 * 1024;

/// Compresses a JSON payload before sealing. FHIR JSON repeats its system URIs and keys
/// within every resource, so LZ4 roughly halves it for a few microseconds: fewer bytes
/// sealed, written to the SD card and counted against the size cap.
///
/// The result has exactly the room for the seal's tag beyond its length, so sealing it in
/// place ([`super::seal::Keyring::seal_owned`]) neither copies nor grows it, and a sealed
/// row waiting for its commit holds no more memory than its bytes.
pub fn pack(json: &[u8]) -> Vec<u8> {
    // Marker, then the uncompressed length (u32, little endian: the layout of
    // `lz4_flex::decompress_size_prepended`), then the block.
    let header = 1 + 4;
    let Ok(len) = u32::try_from(json.len()) else {
        return json.to_vec();
    };
    let bound = lz4_flex::block::get_maximum_output_size(json.len());
    // The compressor writes into the thread's buffer, and the result is copied into an
    // allocation of its own size: the compressor needs room for the worst case (more than
    // twice what FHIR JSON compresses to), which a zeroed allocation per payload gave, and
    // kept until the commit.
    let compress = |out: &mut [u8]| {
        // The compressor's hash table is kept per thread and cleared for each payload: a
        // new one per payload was an 8 KiB zeroed allocation, a fifth of `pack`'s time.
        let block = TABLE.with(|table| {
            let mut table = table.borrow_mut();
            lz4_flex::block::compress_into_with_table(json, out, &mut table)
        });
        block.map(|written| {
            let mut packed = Vec::with_capacity(header + written + super::seal::TAG_LEN);
            packed.push(LZ4);
            packed.extend_from_slice(&len.to_le_bytes());
            packed.extend_from_slice(&out[..written]);
            packed
        })
    };
    let packed = if bound <= SCRATCH_MAX {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            compress(&mut scratch[..bound])
        })
    } else {
        compress(&mut vec![0u8; bound])
    };
    // An error cannot happen (the buffer has the block's maximum size). Stored
    // uncompressed then, like a payload over 4 GiB: `unpack` reads JSON (`{`) as it is.
    packed.unwrap_or_else(|_| json.to_vec())
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
    let json = serde_json::value::RawValue::from_string(text)
        .map_err(|e| format!("stored JSON is invalid: {e}"))?;
    // The text is valid JSON now: its head is read from where the gateway's serializer
    // puts it, or (anything else) parsed.
    let (id, identifier, hold) = match quick_head(json.get()) {
        Some((id, identifier)) => (id.to_string(), identifier, None),
        None => parse_head(json.get()).map_err(|e| format!("stored JSON is invalid: {e}"))?,
    };
    Ok(StoredObservation {
        id,
        identifier,
        hold,
        json,
    })
}

/// An Observation's id, its first identifier as `system|value`, and its clock hold.
type ParsedHead = (String, Option<String>, Option<crate::clock::TimeHold>);

/// The head of Observation `text`, by a full parse.
fn parse_head(text: &str) -> Result<ParsedHead, serde_json::Error> {
    let head: Head = serde_json::from_str(text)?;
    let identifier = head
        .identifier
        .first()
        .map(|i| format!("{}|{}", i.system, i.value));
    Ok((head.id, identifier, head.hold))
}

/// The start of an Observation as the gateway serializes it (`crate::fhir::Observation`'s
/// order: `resourceType`, `id`, then optionally `meta` and `extension`, then `identifier`).
const OBSERVATION_START: &str = r#"{"resourceType":"Observation","id":""#;

/// Before the first identifier's system. Inside a string every `"` is escaped, so this
/// can only be the document's structure; the Observation's `identifier` is its first
/// member holding an array of Identifiers (a Reference's `identifier` is one object).
const IDENTIFIER_START: &str = r#","identifier":[{"system":""#;

/// The id and the first identifier (`system|value`) of valid JSON `text` serialized from
/// an Observation by the gateway, read where the serializer writes them, without parsing
/// the rest (a full parse of each row was about 5 % of the daemon's CPU under load).
/// `None` when the text is not laid out that way, holds an escape where they are read,
/// or carries a clock hold: the caller then parses it.
fn quick_head(text: &str) -> Option<(&str, Option<String>)> {
    let (id, rest) = text.strip_prefix(OBSERVATION_START)?.split_once('"')?;
    if id.contains('\\') || text.contains(crate::clock::HOLD_MEMBER) {
        return None;
    }
    let (_, identifier) = rest.split_once(IDENTIFIER_START)?;
    let (system, identifier) = identifier.split_once('"')?;
    let (value, _) = identifier.strip_prefix(r#","value":""#)?.split_once('"')?;
    if system.contains('\\') || value.contains('\\') {
        return None;
    }
    Some((id, Some(format!("{system}|{value}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::seal::TAG_LEN;

    #[test]
    fn payloads_of_any_size_in_any_order_unpack_to_themselves() {
        // Past the thread's buffer, within it, and a short one after a long one (the
        // buffer then holds the long one's bytes beyond the short one's block).
        let long: Vec<u8> = (0..40_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let medium = br#"{"a":"0123456789","b":"0123456789","c":"abcdefghijklmnop"}"#.repeat(50);
        let short = br#"{"a":1}"#;
        for json in [&long[..], &medium[..], &short[..], &long[..], &short[..]] {
            let packed = pack(json);
            assert_eq!(unpack(&packed).unwrap(), json.to_vec());
            assert!(packed.capacity() - packed.len() >= TAG_LEN);
        }
    }

    #[test]
    fn a_packed_payload_unpacks_to_the_same_json_and_leaves_room_for_the_tag() {
        let json = br#"{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"},{"system":"http://loinc.org","code":"8867-4"}]}}"#;
        let packed = pack(json);
        assert_eq!(packed[0], LZ4);
        assert!(packed.len() < json.len(), "repetitive JSON is compressed");
        assert!(packed.capacity() - packed.len() >= TAG_LEN);
        assert!(
            packed.capacity() <= packed.len() + 2 * TAG_LEN,
            "a packed payload holds no worst-case room: {} for {}",
            packed.capacity(),
            packed.len()
        );
        assert_eq!(unpack(&packed).unwrap(), json.to_vec());
        // The layout is lz4_flex's size-prepended block after the marker.
        assert_eq!(
            lz4_flex::decompress_size_prepended(&packed[1..]).unwrap(),
            json.to_vec()
        );
        assert_eq!(unpack(b"{}").unwrap(), b"{}".to_vec());
        assert_eq!(unpack(&pack(b"")).unwrap(), Vec::<u8>::new());
    }

    /// What a full parse reads of `text`.
    fn parsed(text: &str) -> ParsedHead {
        parse_head(text).unwrap()
    }

    #[test]
    fn the_head_read_where_the_serializer_writes_it_is_what_a_full_parse_reads() {
        // Every golden Observation, serialized as the pipeline stores it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let mut quick = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let golden: Vec<crate::fhir::Observation> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for o in golden {
                let text = serde_json::to_string(&o).unwrap();
                let (id, identifier, hold) = parsed(&text);
                let (qid, qidentifier) = quick_head(&text).expect("the serializer's layout");
                assert_eq!((qid, &qidentifier), (id.as_str(), &identifier), "{path:?}");
                assert!(hold.is_none());
                let stored = observation_from(text.clone().into_bytes()).unwrap();
                assert_eq!((stored.id, stored.identifier), (id, identifier));
                assert_eq!(stored.json.get(), text);
                quick += 1;
            }
        }
        assert!(quick > 30, "{quick} golden Observations");
        // Not read quickly, so parsed: a clock hold (the pipeline adds it to the
        // Observation's members, which serde_json then writes in key order), an escape,
        // another layout, no identifier.
        let held = r#"{"resourceType":"Observation","id":"a","identifier":[{"system":"s","value":"v"}],"iomtGatewayTimeHold":{"boot":"b","boottime_ms":1,"wall_ms":2}}"#;
        let escaped = r#"{"resourceType":"Observation","id":"a","identifier":[{"system":"s","value":"v\"w"}]}"#;
        let other =
            r#"{"id":"a","resourceType":"Observation","identifier":[{"system":"s","value":"v"}]}"#;
        let bare = r#"{"resourceType":"Observation","id":"a"}"#;
        for text in [held, escaped, other, bare] {
            assert_eq!(quick_head(text), None, "{text}");
            let stored = observation_from(text.as_bytes().to_vec()).unwrap();
            assert_eq!((stored.id, stored.identifier, stored.hold), parsed(text));
        }
        assert!(observation_from(held.as_bytes().to_vec())
            .unwrap()
            .hold
            .is_some());
        assert!(observation_from(br#"{"resourceType":"Observation","id":"a""#.to_vec()).is_err());
    }
}
