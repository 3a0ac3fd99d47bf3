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

/// A message that waits for one reading's commit; `ok`: it commits.
fn pending(pkid: u16, ok: bool) -> acks::Pending {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ok {
        let _ = tx.send(crate::driver::Committed::default());
    }
    let mut publish = Publish::new("iomt/a/vitals", QoS::AtLeastOnce, Vec::new());
    publish.pkid = pkid;
    acks::Pending {
        ack: acks::Ack::of(&publish),
        wait: acks::Wait::Readings(vec![rx]),
        failed: false,
    }
}

#[tokio::test]
async fn after_a_failed_commit_the_reconnect_waits_until_every_puback_is_written() {
    let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1883), 8);
    let mut acks = acks::Acks::new(Duration::from_millis(100), Duration::from_secs(1));
    acks.pending.push_back(pending(1, false));
    acks.pending.push_back(pending(2, true));
    acks.next_committed().await;
    assert!(acks.resyncing(), "new messages are no longer taken");
    assert_eq!(acks.resync_due(), None, "message 2 is not settled yet");
    acks.next_committed().await;
    assert_eq!(
        acks.resync_due(),
        None,
        "the PUBACK of 2 is not handed over"
    );
    acks.flush(&client);
    assert_eq!(acks.resync_due(), None, "the PUBACK of 2 is not written");
    acks.written();
    assert_eq!(acks.resync_due(), Some(Duration::from_millis(100)));
    assert!(!acks.resyncing());
    // Failing again waits longer; a commit ends the episode.
    acks.pending.push_back(pending(1, false));
    acks.next_committed().await;
    assert_eq!(acks.resync_due(), Some(Duration::from_millis(200)));
    acks.pending.push_back(pending(1, true));
    acks.next_committed().await;
    acks.pending.push_back(pending(3, false));
    acks.next_committed().await;
    acks.flush(&client);
    acks.disconnected();
    assert_eq!(acks.resync_due(), Some(Duration::from_millis(100)));
}

#[test]
fn an_oversized_message_up_to_64_mib_is_read_to_be_dead_lettered() {
    assert_eq!(read_limit(65536), 64 << 20);
    assert_eq!(read_limit(16 << 20), 128 << 20);
    assert!(read_limit(usize::MAX) >= OVERSIZED_READ_LIMIT);
}
