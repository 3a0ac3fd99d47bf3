//! The MQTT uplink's unit tests (its end-to-end tests run real brokers: tests/mqtt*.rs).

use super::*;
use crate::net::tls::TlsSettings;

fn settings(tls: bool) -> MqttUplinkSettings {
    MqttUplinkSettings {
        name: "cloud".into(),
        host: "broker.example.org".into(),
        port: 8883,
        tls: tls.then(TlsSettings::default),
        insecure: false,
        client_id: None,
        topic: "iomt/{gateway}/fhir".into(),
        mode: PublishMode::Bundle,
        status_topic: config::DEFAULT_STATUS_TOPIC.into(),
        credentials_file: None,
        ack_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(30),
        batch_size: 10,
        max_message_bytes: config::DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
    }
}

#[test]
fn the_observation_window_is_two_batches_and_at_most_max_window() {
    let uplink = |mode, batch_size| {
        let s = MqttUplinkSettings {
            mode,
            batch_size,
            ..settings(true)
        };
        let u = MqttUplink::new(s, "gateway-pseudonym").unwrap();
        (u.window(), u.max_bundle_bytes())
    };
    assert_eq!(uplink(PublishMode::Observation, 100), (Some(200), None));
    assert_eq!(
        uplink(PublishMode::Observation, 1000),
        (Some(MAX_WINDOW), None)
    );
    assert_eq!(
        uplink(PublishMode::Bundle, 1000),
        (None, Some(config::DEFAULT_MAX_MESSAGE_BYTES))
    );
}

#[test]
fn a_bundle_is_encoded_into_a_buffer_sized_once() {
    let raw = |t: &str| serde_json::value::RawValue::from_string(t.into()).unwrap();
    let devices = std::collections::HashMap::from([(
        "dev-1".to_string(),
        crate::outbox::DeviceJson::from(raw(r#"{"resourceType":"Device","id":"dev-1"}"#)),
    )]);
    let json: Vec<Box<serde_json::value::RawValue>> = (0..50)
        .map(|i| {
            raw(&format!(
                r#"{{"resourceType":"Observation","id":"obs-{i}"}}"#
            ))
        })
        .collect();
    let ids: Vec<String> = (0..50).map(|i| format!("obs-{i}")).collect();
    let identifiers: Vec<String> = (0..50)
        .map(|i| format!("urn:ietf:rfc:3986|urn:uuid:obs-{i}"))
        .collect();
    let items: Vec<crate::uplink::bundle::Item<'_>> = (0..50)
        .map(|i| crate::uplink::bundle::Item {
            row: i,
            id: &ids[i],
            identifier: Some(&identifiers[i]),
            device_id: "dev-1",
            json: &json[i],
        })
        .collect();
    let gateway = raw(r#"{"resourceType":"Device","id":"gw"}"#);
    let built = crate::uplink::bundle::build(
        ("gw", &gateway),
        &devices,
        std::collections::HashMap::new(),
        &items,
    );
    let u = MqttUplink::new(settings(false), "0123456789abcdef0123").unwrap();
    let message = u.messages(&built.bundle).unwrap().remove(0);
    assert_eq!(message, serde_json::to_vec(&built.bundle).unwrap());
    assert!(message.len() <= crate::uplink::bundle::encoded_len(&built.bundle));
    assert!(
        message.capacity() == crate::uplink::bundle::encoded_len(&built.bundle),
        "the buffer grew"
    );
}

#[test]
fn the_topic_carries_the_gateway_pseudonym_and_mqtts_uses_system_roots() {
    let u = MqttUplink::new(settings(true), "0123456789abcdef0123").unwrap();
    assert_eq!(u.topic(), "iomt/0123456789abcdef0123/fhir");
    assert_eq!(u.client_id, "iomt-gateway-0123456789abcdef");
    assert!(matches!(u.transport, rumqttc::Transport::Tls(_)));
}
