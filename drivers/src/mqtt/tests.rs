use super::*;

#[test]
fn plus_matches_exactly_one_level_and_hash_the_rest() {
    assert!(topic_matches("devices/+/vitals", "devices/esp-1/vitals"));
    assert!(!topic_matches("devices/+/vitals", "devices/esp-1/x/vitals"));
    assert!(!topic_matches("devices/+/vitals", "devices/esp-1"));
    assert!(topic_matches("devices/#", "devices/esp-1/vitals"));
    assert!(topic_matches("devices/#", "devices"));
    assert!(topic_matches("a/b", "a/b"));
    assert!(!topic_matches("a/b", "a/b/c"));
    assert!(!topic_matches("a/b/c", "a/b"));
}

#[test]
fn wildcards_at_the_first_level_do_not_match_system_topics() {
    assert!(!topic_matches("#", "$SYS/broker/uptime"));
    assert!(!topic_matches("+/broker/uptime", "$SYS/broker/uptime"));
    assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
}

#[test]
fn the_protocol_limit_leaves_room_above_the_payload_limit() {
    assert_eq!(protocol_limit(65536), 1 << 20);
    assert_eq!(protocol_limit(1 << 20), 8 << 20);
    assert!(protocol_limit(usize::MAX) >= 1 << 20);
}

#[test]
fn credentials_never_print_the_password() {
    let c = Credentials {
        username: "gateway".into(),
        password: "s3cret".into(),
    };
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn a_driver_without_subscriptions_is_refused() {
    let (rejects, _rx) = crate::reject_channel(1);
    let config = MqttConfig {
        host: "127.0.0.1".into(),
        port: 1883,
        tls: None,
        client_id: "gw".into(),
        credentials: None,
        keep_alive: Duration::from_secs(30),
        max_payload: 1024,
        max_in_flight: 16,
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(5),
        subscriptions: Vec::new(),
        rejects,
    };
    assert!(matches!(
        MqttDriver::new(config),
        Err(DriverError::Config { .. })
    ));
}
