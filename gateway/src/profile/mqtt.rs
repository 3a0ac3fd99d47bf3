//! `[mqtt]` profiles: the topic filter, `device_id_level` and `[mqtt.json]` pointers,
//! validated into the MQTT driver's `JsonDecoder`.

use iomt_drivers::decode::json::{JsonDecoder, TimestampFormat as JsonTimestamp};
use toml::Spanned;

use super::field::field_spec;
use super::{raw, serial, Check, MqttSpec};

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` only last.
fn topic_filter_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        return Some("the topic filter is empty");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Some("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Some("`+` must be a whole level");
        }
    }
    None
}

fn pointer_ok(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

pub(super) fn mqtt_spec(
    m: &Spanned<raw::RawMqtt>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<MqttSpec> {
    let span = m.span();
    let m = m.get_ref();
    if let Some(problem) = topic_filter_problem(m.topic.get_ref()) {
        c.at(
            m.topic.span(),
            format!("invalid MQTT topic filter: {problem}"),
        );
    }
    let Some(json) = &m.json else {
        c.at(
            span,
            "the MQTT profile has no decoder: add a [mqtt.json] table",
        );
        return None;
    };
    let json = json.get_ref();
    let mut device_id_level = None;
    if let Some(level) = &m.device_id_level {
        let levels: Vec<&str> = m.topic.get_ref().split('/').collect();
        match usize::try_from(*level.get_ref()) {
            Ok(l) if levels.get(l) == Some(&"+") => device_id_level = Some(l),
            _ => c.at(
                level.span(),
                format!(
                    "device_id_level must be the 0-based index of a `+` level of the topic filter `{}`",
                    m.topic.get_ref()
                ),
            ),
        }
    }
    if json.max_payload.as_ref().is_some_and(|m| *m.get_ref() == 0) {
        if let Some(m) = &json.max_payload {
            c.at(m.span(), "max_payload must be at least 1 byte");
        }
    }
    for p in [&json.device_id, &json.timestamp, &json.readings]
        .into_iter()
        .flatten()
    {
        if !pointer_ok(p.get_ref()) {
            c.at(
                p.span(),
                format!(
                    "`{}` is not a JSON Pointer; write it like `/vitals/spo2`",
                    p.get_ref()
                ),
            );
        }
    }
    let mut specs = Vec::new();
    for f in fields {
        let f = f.get_ref();
        match &f.pointer {
            None => c.at(
                f.name.span(),
                format!(
                    "field `{}` needs a `pointer` to its value in the JSON payload",
                    f.name.get_ref()
                ),
            ),
            Some(p) if !pointer_ok(p.get_ref()) => c.at(
                p.span(),
                format!(
                    "`{}` is not a JSON Pointer; write it like `/vitals/spo2`",
                    p.get_ref()
                ),
            ),
            Some(p) => {
                let no_reading = serial::text_no_reading(f, "a JSON payload", c);
                specs.push(field_spec(f, p.get_ref().clone(), no_reading))
            }
        }
    }
    Some(MqttSpec {
        topic: m.topic.get_ref().clone(),
        json: JsonDecoder {
            fields: specs,
            timestamp: json.timestamp.as_ref().map(|t| t.get_ref().clone()),
            timestamp_format: match json
                .timestamp_format
                .unwrap_or(raw::TimestampFormat::Rfc3339)
            {
                raw::TimestampFormat::Rfc3339 => JsonTimestamp::Rfc3339,
                raw::TimestampFormat::EpochS => JsonTimestamp::EpochSeconds,
                raw::TimestampFormat::EpochMs => JsonTimestamp::EpochMillis,
            },
            device_id: json.device_id.as_ref().map(|d| d.get_ref().clone()),
            max_payload: json
                .max_payload
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(65536),
            readings: json.readings.as_ref().map(|r| r.get_ref().clone()),
        },
        device_id_level,
    })
}
