//! JSON payload decoding (MQTT): fields, device id and timestamp by JSON Pointer (RFC 6901).
//!
//! A payload holds one reading (the field pointers point into the payload), or an array of
//! readings (`readings` points at the array; field and timestamp pointers are then relative
//! to each element, the device id pointer to the whole payload). A payload is all or
//! nothing: if one element does not decode, the whole message is refused with the
//! element's index in the reason.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::{DecodeError, FieldSpec};
use crate::reading::{DeviceIdentity, DeviceTime, Reading};

/// How the payload's timestamp is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// ISO 8601 / RFC 3339 with a zone (`2024-02-15T10:41:03+01:00`); without a zone it is
    /// local wall-clock time.
    Rfc3339,
    /// Seconds since the Unix epoch (UTC).
    EpochSeconds,
    /// Milliseconds since the Unix epoch (UTC).
    EpochMillis,
}

/// A JSON decoder.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// The fields; each `source` is a JSON Pointer.
    pub fields: Vec<FieldSpec>,
    /// JSON Pointer to the device timestamp, if the payload has one.
    pub timestamp: Option<String>,
    /// How the timestamp is written.
    pub timestamp_format: TimestampFormat,
    /// JSON Pointer to the device id, if the payload carries one.
    pub device_id: Option<String>,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// JSON Pointer to an array of readings, when one message carries several.
    pub readings: Option<String>,
}

/// The value `ptr` (a JSON Pointer, RFC 6901) points at in `v`: what
/// [`Value::pointer`] finds, without making a `String` for each token that holds no escape
/// (serde_json makes two; this runs for every field of every message).
pub fn pointer<'v>(v: &'v Value, ptr: &str) -> Option<&'v Value> {
    if ptr.is_empty() {
        return Some(v);
    }
    ptr.strip_prefix('/')?
        .split('/')
        .try_fold(v, |target, token| {
            let token: std::borrow::Cow<'_, str> = if token.contains('~') {
                token.replace("~1", "/").replace("~0", "~").into()
            } else {
                token.into()
            };
            match target {
                Value::Object(map) => map.get(token.as_ref()),
                Value::Array(list) => array_index(&token).and_then(|i| list.get(i)),
                _ => None,
            }
        })
}

/// An array index token: digits without a leading zero (or `0` itself), as
/// [`Value::pointer`] reads it.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The most readings one message may carry (a bound on the work one message causes).
pub const MAX_READINGS_PER_MESSAGE: usize = 1000;

impl JsonDecoder {
    /// Reads the device id from a payload (for drivers that key devices by it).
    pub fn device_id(&self, payload: &Value) -> Option<String> {
        let v = pointer(payload, self.device_id.as_deref()?)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Parses a payload, enforcing the size limit.
    pub fn parse(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        if payload.len() > self.max_payload {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        serde_json::from_slice(payload).map_err(|e| {
            DecodeError::Mismatch(format!(
                "not JSON ({} at line {} column {})",
                classify(&e),
                e.line(),
                e.column()
            ))
        })
    }

    /// Decodes a parsed payload into its readings from `device`: one, or one per element
    /// of the `readings` array. Refuses the whole payload if any reading does not decode.
    pub fn decode_all(
        &self,
        payload: &Value,
        device: Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Reading>, DecodeError> {
        let Some(ptr) = &self.readings else {
            return Ok(vec![self.decode(payload, device, received_at)?]);
        };
        let items = match pointer(payload, ptr) {
            Some(Value::Array(items)) => items,
            None => {
                return Err(DecodeError::Mismatch(format!(
                    "no readings array at `{ptr}`"
                )))
            }
            Some(other) => {
                return Err(DecodeError::Mismatch(format!(
                    "expected an array of readings at `{ptr}`, found {}",
                    kind(other)
                )))
            }
        };
        if items.is_empty() {
            return Err(DecodeError::Empty);
        }
        if items.len() > MAX_READINGS_PER_MESSAGE {
            return Err(DecodeError::Mismatch(format!(
                "{} readings in one message; at most {MAX_READINGS_PER_MESSAGE} are accepted",
                items.len()
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.decode(item, device.clone(), received_at)
                    .map_err(|e| DecodeError::Mismatch(format!("reading {i}: {e}")))
            })
            .collect()
    }

    /// Decodes a parsed payload (or one element of its readings array) into a reading
    /// from `device`.
    pub fn decode(
        &self,
        payload: &Value,
        device: Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Result<Reading, DecodeError> {
        if !payload.is_object() {
            return Err(DecodeError::Mismatch(
                "the payload is not a JSON object".into(),
            ));
        }
        let mut quantities = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            match pointer(payload, &field.source) {
                None | Some(Value::Null) => {}
                // The number as written (`arbitrary_precision`): no text made.
                Some(Value::Number(n)) => quantities.push(field.quantity_from_text(n.as_str())?),
                Some(Value::String(s)) => quantities.push(field.quantity_from_text(s)?),
                Some(other) => {
                    return Err(DecodeError::BadValue {
                        field: field.name.clone(),
                        reason: format!("expected a number, found {}", kind(other)),
                    })
                }
            }
        }
        if quantities.is_empty() {
            return Err(DecodeError::Empty);
        }
        let device_time = match &self.timestamp {
            None => None,
            Some(ptr) => match pointer(payload, ptr) {
                None | Some(Value::Null) => None,
                Some(v) => Some(self.timestamp(v)?),
            },
        };
        Ok(Reading {
            clock: None,
            device,
            device_time,
            received_at,
            sequence: None,
            quantities,
            flags: Vec::new(),
        })
    }

    fn timestamp(&self, v: &Value) -> Result<DeviceTime, DecodeError> {
        match (self.timestamp_format, v) {
            (TimestampFormat::Rfc3339, Value::String(s)) => {
                if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                    return Ok(DeviceTime::Zoned(t));
                }
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .map(DeviceTime::Local)
                    .map_err(|e| DecodeError::BadTimestamp(format!("not ISO 8601: {e}")))
            }
            (TimestampFormat::EpochSeconds | TimestampFormat::EpochMillis, Value::Number(n)) => {
                let n = n.as_i64().ok_or_else(|| {
                    DecodeError::BadTimestamp("epoch time is not an integer".into())
                })?;
                let t = match self.timestamp_format {
                    TimestampFormat::EpochSeconds => Utc.timestamp_opt(n, 0).single(),
                    _ => Utc.timestamp_millis_opt(n).single(),
                };
                t.map(|t| DeviceTime::Zoned(t.fixed_offset()))
                    .ok_or_else(|| DecodeError::BadTimestamp("epoch time out of range".into()))
            }
            (_, other) => Err(DecodeError::BadTimestamp(format!(
                "unexpected {} for the configured format",
                kind(other)
            ))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "data error",
        Category::Eof => "unexpected end",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Measurement, Transport};

    fn decoder() -> JsonDecoder {
        JsonDecoder {
            fields: vec![
                FieldSpec {
                    name: "hr".into(),
                    source: "/vitals/hr".into(),
                    unit: "/min".into(),
                    scale: None,
                    no_reading: vec![],
                },
                FieldSpec {
                    name: "temp".into(),
                    source: "/vitals/temp".into(),
                    unit: "Cel".into(),
                    scale: None,
                    no_reading: vec![],
                },
            ],
            timestamp: Some("/ts".into()),
            timestamp_format: TimestampFormat::Rfc3339,
            device_id: Some("/id".into()),
            max_payload: 1024,
            readings: None,
        }
    }

    fn device() -> Arc<DeviceIdentity> {
        Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "esp32".into(),
            transport: Transport::Mqtt,
            address: "x".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        })
    }

    #[test]
    fn fields_and_zoned_timestamp_are_read_by_pointer() {
        let d = decoder();
        let v = d
            .parse(br#"{"id":"esp-1","ts":"2024-02-15T10:41:03+01:00","vitals":{"hr":72,"temp":36.60}}"#)
            .unwrap();
        assert_eq!(d.device_id(&v).as_deref(), Some("esp-1"));
        let r = d.decode(&v, device(), Utc::now()).unwrap();
        assert_eq!(r.quantities[1].value.value().unwrap().to_string(), "36.60");
        assert!(matches!(r.device_time, Some(DeviceTime::Zoned(_))));
    }

    #[test]
    fn wrong_types_missing_fields_and_oversize_are_refused() {
        let d = decoder();
        let v = d.parse(br#"{"vitals":{"hr":[1]}}"#).unwrap();
        assert!(matches!(
            d.decode(&v, device(), Utc::now()),
            Err(DecodeError::BadValue { .. })
        ));
        let v = d.parse(br#"{"other":1}"#).unwrap();
        assert_eq!(
            d.decode(&v, device(), Utc::now()).unwrap_err(),
            DecodeError::Empty
        );
        assert!(matches!(
            d.parse(&[b' '; 2000]),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            d.parse(b"{not json"),
            Err(DecodeError::Mismatch(_))
        ));
    }

    #[test]
    fn an_array_of_readings_gives_one_reading_per_element_with_epoch_times() {
        let mut d = decoder();
        d.readings = Some("/batch".into());
        d.timestamp = Some("/t".into());
        d.timestamp_format = TimestampFormat::EpochMillis;
        let v = d
            .parse(br#"{"id":"esp-1","batch":[{"t":1700000000123,"vitals":{"hr":71}},{"t":1700000001123,"vitals":{"hr":72}}]}"#)
            .unwrap();
        let r = d.decode_all(&v, device(), Utc::now()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].quantities[0].value.value().unwrap().to_string(), "72");
        let Some(DeviceTime::Zoned(t)) = r[0].device_time else {
            panic!("no zoned time")
        };
        assert_eq!(t.timestamp_millis(), 1_700_000_000_123);
    }

    #[test]
    fn one_bad_element_refuses_the_whole_message_naming_its_index() {
        let mut d = decoder();
        d.readings = Some("/batch".into());
        let v = d
            .parse(br#"{"batch":[{"vitals":{"hr":71}},{"vitals":{"hr":"fast"}}]}"#)
            .unwrap();
        let err = d.decode_all(&v, device(), Utc::now()).unwrap_err();
        assert!(err.to_string().contains("reading 1"), "{err}");
        let v = d.parse(br#"{"batch":{"hr":1}}"#).unwrap();
        assert!(d.decode_all(&v, device(), Utc::now()).is_err());
    }

    #[test]
    fn string_numbers_are_accepted_and_null_is_absent() {
        let d = decoder();
        let v = d.parse(br#"{"vitals":{"hr":"72","temp":null}}"#).unwrap();
        let r = d.decode(&v, device(), Utc::now()).unwrap();
        assert_eq!(r.quantities.len(), 1);
        assert!(matches!(r.quantities[0].value, Measurement::Value(_)));
    }

    #[test]
    fn pointer_finds_what_serde_jsons_pointer_finds() {
        let v: Value = serde_json::from_str(
            r#"{"a":{"b":[10,{"c":1.50}]},"a/b":1,"m~n":2,"":3,"x":{"":{"":4}},"0":5,"arr":[7,8]}"#,
        )
        .unwrap();
        for ptr in [
            "",
            "/",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/01",
            "/a/b/+1",
            "/a/b/-",
            "/a~1b",
            "/m~0n",
            "/m~n",
            "/x//",
            "/x/",
            "/0",
            "/arr/1",
            "/arr/1/z",
            "a",
            "/nope",
            "/a/b/1/c/d",
            "/~2",
            "/arr/18446744073709551616",
        ] {
            assert_eq!(pointer(&v, ptr), v.pointer(ptr), "pointer `{ptr}`");
        }
        // The number's text is the one written (`arbitrary_precision`).
        let Some(Value::Number(n)) = pointer(&v, "/a/b/1/c") else {
            panic!("a number")
        };
        assert_eq!(n.as_str(), "1.50");
    }
}
