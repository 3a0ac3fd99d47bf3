//! The outbox when the system's random source fails: a reading that cannot be sealed is
//! not stored and not acknowledged, and the writer goes on.

use std::sync::atomic::{AtomicBool, Ordering};

use super::seal::Keyring;
use super::tests::settings_in;
use super::*;

const KEY: [u8; 32] = [7; 32];

/// An append of one Observation `id` of device `dev-1`, whose source waits for its
/// acknowledgement.
fn append(id: &str) -> (Append, oneshot::Receiver<Committed>) {
    let (tx, rx) = oneshot::channel();
    let json = format!(r#"{{"resourceType":"Observation","id":"{id}"}}"#);
    (
        Append {
            device_id: "dev-1".into(),
            device_json: br#"{"resourceType":"Device","id":"dev-1"}"#.to_vec().into(),
            observations: vec![(id.into(), json.into_bytes())],
            ack: Some(tx),
            source_waits: true,
        },
        rx,
    )
}

#[tokio::test]
async fn a_reading_that_cannot_be_sealed_is_neither_stored_nor_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let ring = Arc::new(Keyring::failing_when(&KEY, failing.clone()));
    let (outbox, writer) = Outbox::open(settings_in(dir.path()), ring, vec!["fhir".into()])
        .await
        .unwrap();
    let (first, first_ack) = append("a");
    outbox.append(first).await.unwrap();
    assert_eq!(first_ack.await.unwrap().observations, vec!["a".to_string()]);

    failing.store(true, Ordering::Relaxed);
    let (second, second_ack) = append("b");
    outbox.append(second).await.unwrap();
    // Not acknowledged: the acknowledgement is dropped, so the source (an MQTT PUBACK, a
    // glucose meter's record) is not told it is stored, and can send it again.
    assert!(
        second_ack.await.is_err(),
        "an unsealed reading was acknowledged"
    );

    // The writer goes on once the random source works again.
    failing.store(false, Ordering::Relaxed);
    let (third, third_ack) = append("c");
    outbox.append(third).await.unwrap();
    assert_eq!(third_ack.await.unwrap().observations, vec!["c".to_string()]);
    let fetched = outbox.fetch("fhir", 10).await.unwrap();
    let ids: Vec<String> = fetched
        .rows
        .iter()
        .map(|r| r.observation.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids, ["a", "c"], "only the sealed readings are stored");
    drop(outbox);
    writer.await.unwrap();
}
