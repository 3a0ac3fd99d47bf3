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

/// A driver's configuration for a broker on 127.0.0.1:`port` (reconnects after 10 ms).
fn config(port: u16, subscriptions: Vec<Subscription>, rejects: RejectSender) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        client_id: "gw".into(),
        credentials: None,
        keep_alive: Duration::from_secs(30),
        max_payload: 1024,
        max_in_flight: 16,
        reconnect_initial: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(10),
        subscriptions,
        rejects,
    }
}

#[test]
fn a_driver_without_subscriptions_is_refused() {
    let (rejects, _rx) = crate::reject_channel(1);
    assert!(matches!(
        MqttDriver::new(config(1883, Vec::new(), rejects)),
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

/// The bytes a broker reads from the gateway after its CONNECT: an event loop connected
/// to a listener on 127.0.0.1 that answers the CONNECT with a CONNACK (the edge of the
/// test: the PUBACKs' bytes are what is checked).
async fn connected() -> (AsyncClient, rumqttc::EventLoop, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut o = MqttOptions::new("t", "127.0.0.1", port);
    o.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(o, 8);
    let broker = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        assert_eq!(read_packet(&mut stream).await.0 >> 4, 1, "CONNECT");
        stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        stream
    });
    let connack = eventloop.poll().await.unwrap();
    assert!(
        matches!(connack, Event::Incoming(Packet::ConnAck(_))),
        "{connack:?}"
    );
    (client, eventloop, broker.await.unwrap())
}

#[tokio::test]
async fn ready_pubacks_are_written_together_in_order_and_a_reconnect_after_a_failed_commit_waits_for_them(
) {
    use tokio::io::AsyncReadExt;
    let (client, mut eventloop, mut broker) = connected().await;
    let mut acks = acks::Acks::new(Duration::from_millis(100), Duration::from_secs(1));
    acks.pending.push_back(pending(1, false));
    acks.pending.push_back(pending(2, true));
    acks.pending.push_back(pending(3, true));
    acks.next_committed().await;
    assert!(acks.resyncing(), "new messages are no longer taken");
    assert_eq!(
        acks.resync_due(),
        None,
        "messages 2 and 3 are not settled yet"
    );
    acks.next_committed().await;
    acks.next_committed().await;
    assert_eq!(acks.outstanding(), 2, "the PUBACKs of 2 and 3 are owed");
    assert_eq!(
        acks.resync_due(),
        None,
        "the PUBACKs of 2 and 3 are not written"
    );
    acks.write(&mut eventloop, &client).await.unwrap();
    assert_eq!(acks.outstanding(), 0);
    // PUBACK 2 then PUBACK 3, and nothing for 1 (its commit failed).
    let mut bytes = [0u8; 8];
    broker.read_exact(&mut bytes).await.unwrap();
    assert_eq!(bytes, [0x40, 0x02, 0x00, 0x02, 0x40, 0x02, 0x00, 0x03]);
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
    // Without a connection the PUBACK waits for the next one.
    eventloop.clean();
    acks.connection_gone(&mut eventloop);
    acks.write(&mut eventloop, &client).await.unwrap();
    assert_eq!(acks.outstanding(), 1);
    assert_eq!(acks.resync_due(), None);
}

#[test]
fn an_oversized_message_up_to_64_mib_is_read_to_be_dead_lettered() {
    assert_eq!(read_limit(65536), 64 << 20);
    assert_eq!(read_limit(16 << 20), 128 << 20);
    assert!(read_limit(usize::MAX) >= OVERSIZED_READ_LIMIT);
}

/// Reads one MQTT packet: its first byte and its body.
async fn read_packet(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let first = stream.read_u8().await.unwrap();
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = stream.read_u8().await.unwrap();
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    (first, body)
}

/// A QoS 1 PUBLISH of a heart rate on `iomt/dev-1/vitals`.
fn heart_rate(pkid: u16, bpm: u32) -> Vec<u8> {
    let topic = b"iomt/dev-1/vitals";
    let payload = format!(r#"{{"heart_rate":{bpm}}}"#).into_bytes();
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(&payload);
    let mut packet = vec![0x32, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    packet
}

/// Answers one connection as a broker would (CONNACK, then SUBACK to the SUBSCRIBE) and
/// then writes `then`.
async fn serve(listener: &tokio::net::TcpListener, then: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let (mut stream, _) = listener.accept().await.unwrap();
    assert_eq!(read_packet(&mut stream).await.0 >> 4, 1, "CONNECT");
    stream.write_all(&[0x20, 0x02, 0x01, 0x00]).await.unwrap();
    let (first, body) = read_packet(&mut stream).await;
    assert_eq!(first, 0x82, "SUBSCRIBE");
    stream
        .write_all(&[0x90, 0x03, body[0], body[1], 0x01])
        .await
        .unwrap();
    stream.write_all(then).await.unwrap();
    stream
}

#[tokio::test]
async fn messages_read_from_a_connection_that_then_fails_are_left_to_the_broker() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (rejects, _rejected) = crate::reject_channel(16);
    let vitals = vec![Subscription {
        profile: "vitals".into(),
        manufacturer: "Any".into(),
        model: "JSON".into(),
        filter: "iomt/+/vitals".into(),
        decoder: crate::decode::json::JsonDecoder {
            fields: vec![crate::decode::FieldSpec {
                name: "heart_rate".into(),
                source: "/heart_rate".into(),
                unit: "/min".into(),
                scale: None,
                no_reading: Vec::new(),
            }],
            timestamp: None,
            timestamp_format: crate::decode::json::TimestampFormat::Rfc3339,
            device_id: None,
            max_payload: 1024,
            readings: None,
        },
        device_id_level: Some(1),
    }];
    let config = config(listener.local_addr().unwrap().port(), vitals, rejects);
    let (tx, mut rx) = crate::reading_channel(16);
    let cancel = CancellationToken::new();
    let driver = tokio::spawn(run(config, tx, cancel.clone()));
    // Three messages and a packet of the reserved type 0 in one write: rumqttc reads
    // the three, then fails on the fourth, and the connection is dropped.
    let mut first = [heart_rate(1, 61), heart_rate(2, 62), heart_rate(3, 63)].concat();
    first.extend_from_slice(&[0x00, 0x00]);
    let _dead = serve(&listener, &first).await;
    // The broker sends them again to the next connection, with one more.
    let again = [
        heart_rate(1, 61),
        heart_rate(2, 62),
        heart_rate(3, 63),
        heart_rate(4, 64),
    ]
    .concat();
    let _live = serve(&listener, &again).await;
    // Their commits neither succeed nor fail here: the envelopes are kept.
    let mut envelopes = Vec::new();
    let mut bpm = Vec::new();
    while bpm.len() < 4 {
        let envelope = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("four readings within 10 s")
            .expect("the driver runs");
        match &envelope.reading.quantities[0].value {
            crate::reading::Measurement::Value(v) => bpm.push(v.to_string()),
            other => panic!("{other:?}"),
        }
        envelopes.push(envelope);
    }
    // Each message once: those read from the failed connection were not taken too.
    assert_eq!(bpm, ["61", "62", "63", "64"]);
    // Failed commits now: the driver's drain at shutdown has nothing left to wait for.
    drop(envelopes);
    cancel.cancel();
    let _ = driver.await;
}
