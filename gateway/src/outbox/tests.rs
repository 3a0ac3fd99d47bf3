use std::collections::BTreeMap;

use proptest::prelude::*;

use super::seal::Keyring;
use super::store::{Store, StoredDevice, StoredRow};
use super::*;

const KEY: [u8; 32] = [7; 32];

fn uplinks() -> Vec<String> {
    vec!["fhir".into(), "archive".into()]
}

/// An outbox in `dir` with room to spare: evicting the oldest when full, 1 ms commit
/// window, batches of 100.
pub(super) fn settings_in(dir: &std::path::Path) -> OutboxSettings {
    OutboxSettings {
        path: dir.join("outbox.db"),
        max_bytes: 1 << 30,
        max_age: None,
        when_full: WhenFull::EvictOldest,
        commit_window: Duration::from_millis(1),
        quiet_commit_window: Duration::from_millis(1),
        max_batch_rows: 100,
        pseudonym_key: None,
    }
}

fn insert(store: &mut Store, ring: &Keyring, payload: &[u8]) -> i64 {
    let seq = store.next_seq();
    let sealed = ring.seal(payload, &row_aad(seq, "dev-1")).unwrap();
    store
        .insert(&StoredRow {
            seq,
            created_ms: 0,
            device_id: "dev-1".into(),
            sealed,
        })
        .unwrap();
    seq
}

/// (seq, payload) of every row waiting for `uplink`, oldest first.
fn waiting(store: &mut Store, ring: &Keyring, uplink: &str) -> Vec<(i64, Vec<u8>)> {
    let (rows, _, _) = store.fetch(uplink, 0, usize::MAX >> 1, None).unwrap();
    rows.iter()
        .map(|r| {
            (
                r.seq,
                ring.open(&r.sealed, &row_aad(r.seq, &r.device_id)).unwrap(),
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    /// Append n rows and commit.
    Append(usize),
    /// Deliver the k oldest rows to uplink 0 or 1 and commit.
    Deliver(usize, usize),
    /// Append n rows, then crash before the commit.
    CrashMidAppend(usize),
    /// Close and reopen the database.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..20).prop_map(Op::Append),
        (0usize..2, 0usize..25).prop_map(|(u, k)| Op::Deliver(u, k)),
        (1usize..20).prop_map(Op::CrashMidAppend),
        Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Enqueue, deliver and crash in any order: what was committed is exactly what
    /// waits, per uplink, oldest first; a crash loses only the uncommitted transaction;
    /// a row leaves only when both uplinks have it.
    #[test]
    fn enqueue_ack_crash_sequences_keep_exactly_the_committed_rows(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let ring = Keyring::new(&KEY);
        let names = uplinks();
        let mut store = Store::open(&path, &ring, &names).unwrap();
        // Model: seq → (payload, waiting for uplink 0, waiting for uplink 1).
        let mut model: BTreeMap<i64, (Vec<u8>, bool, bool)> = BTreeMap::new();
        let mut delivered = [0u64; 2];
        let mut counter = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    store.begin().unwrap();
                    for _ in 0..n {
                        counter += 1;
                        let payload = format!("observation {counter}").into_bytes();
                        let seq = insert(&mut store, &ring, &payload);
                        model.insert(seq, (payload, true, true));
                    }
                    store.commit().unwrap();
                }
                Op::Deliver(u, k) => {
                    let rows: Vec<(i64, usize)> = waiting(&mut store, &ring, &names[u])
                        .into_iter()
                        .take(k)
                        .map(|(seq, p)| (seq, p.len() + 16))
                        .collect();
                    store.begin().unwrap();
                    store.delivered(&names[u], &rows).unwrap();
                    store.commit().unwrap();
                    delivered[u] += rows.len() as u64;
                    for (seq, _) in rows {
                        let entry = model.get_mut(&seq).unwrap();
                        if u == 0 { entry.1 = false } else { entry.2 = false }
                        if !entry.1 && !entry.2 {
                            model.remove(&seq);
                        }
                    }
                }
                Op::CrashMidAppend(n) => {
                    store.begin().unwrap();
                    for _ in 0..n {
                        insert(&mut store, &ring, b"never committed");
                    }
                    drop(store); // the process dies: no commit
                    store = Store::open(&path, &ring, &names).unwrap();
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&path, &ring, &names).unwrap();
                }
            }
            for (u, name) in names.iter().enumerate() {
                let expected: Vec<(i64, Vec<u8>)> = model
                    .iter()
                    .filter(|(_, (_, w0, w1))| if u == 0 { *w0 } else { *w1 })
                    .map(|(seq, (p, _, _))| (*seq, p.clone()))
                    .collect();
                prop_assert_eq!(waiting(&mut store, &ring, name), expected);
                prop_assert_eq!(store.status(&names).unwrap().uplinks[u].delivered, delivered[u]);
            }
            // The size cap's count: the sealed bytes of the rows still stored.
            let stored: u64 = model.values().map(|(p, _, _)| p.len() as u64 + 16).sum();
            prop_assert_eq!(store.payload_bytes(), stored);
        }
    }
}

#[test]
fn sequence_numbers_are_never_reused_after_rows_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let ring = Keyring::new(&KEY);
    let names = vec!["fhir".to_string()];
    let mut store = Store::open(&path, &ring, &names).unwrap();
    store.begin().unwrap();
    let a = insert(&mut store, &ring, b"a");
    store.delivered("fhir", &[(a, 17)]).unwrap();
    store.commit().unwrap();
    drop(store);
    // The table is empty now; a reused sequence number would let an old ciphertext (its
    // associated data binds the sequence number) pass for a new row.
    let store = Store::open(&path, &ring, &names).unwrap();
    assert_eq!(store.next_seq(), a + 1);
}

#[test]
fn a_database_with_rows_of_an_unknown_key_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let names = vec!["fhir".to_string()];
    {
        let ring = Keyring::new(&KEY);
        let mut store = Store::open(&path, &ring, &names).unwrap();
        store.begin().unwrap();
        insert(&mut store, &ring, b"row");
        store.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let other = Keyring::new(&[8; 32]);
    let err = Store::open(&path, &other, &names).err().unwrap();
    assert!(matches!(err, OutboxError::WrongKey { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_moved_ciphertext_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let ring = Keyring::new(&KEY);
    let names = vec!["fhir".to_string()];
    let mut store = Store::open(&path, &ring, &names).unwrap();
    store.begin().unwrap();
    let a = insert(&mut store, &ring, b"first");
    let b = insert(&mut store, &ring, b"second");
    store.commit().unwrap();
    let (rows, _, _) = store.fetch("fhir", 0, 10, None).unwrap();
    // Row b's ciphertext presented as row a: authentication fails.
    assert!(ring.open(&rows[1].sealed, &row_aad(a, "dev-1")).is_err());
    assert!(ring.open(&rows[1].sealed, &row_aad(b, "dev-1")).is_ok());
}

#[test]
fn eviction_removes_the_oldest_rows_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let ring = Keyring::new(&KEY);
    let names = vec!["fhir".to_string()];
    let mut store = Store::open(&path, &ring, &names).unwrap();
    store.begin().unwrap();
    for i in 0..10 {
        insert(
            &mut store,
            &ring,
            format!("row {i:02} with some payload").as_bytes(),
        );
    }
    let per_row = store.payload_bytes() / 10;
    let evicted = store.evict(per_row * 4, None).unwrap();
    store.commit().unwrap();
    assert_eq!(evicted, 6);
    let left = waiting(&mut store, &ring, "fhir");
    assert_eq!(left[0].1, b"row 06 with some payload");
    assert_eq!(store.status(&names).unwrap().evicted, 6);
}

#[tokio::test]
async fn an_append_is_acknowledged_only_after_its_commit_and_then_fetchable() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path());
    let ring = Arc::new(Keyring::new(&KEY));
    let (outbox, writer) = Outbox::open(settings.clone(), ring.clone(), vec!["fhir".into()])
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel();
    outbox
        .append(Append {
            device_id: "dev-1".into(),
            device_json: br#"{"resourceType":"Device","id":"dev-1"}"#.to_vec().into(),
            observations: vec![(
                "obs-1".into(),
                br#"{"resourceType":"Observation","id":"obs-1"}"#.to_vec(),
            )],
            ack: Some(tx),
            source_waits: true,
        })
        .await
        .unwrap();
    let committed = rx.await.unwrap();
    assert_eq!(committed.observations, vec!["obs-1".to_string()]);
    // Committed means durable: another connection sees it right away.
    let status = read_status(&settings.path, &["fhir".into()]).unwrap();
    assert_eq!(status.uplinks[0].queued, 1);
    let fetched = outbox.fetch("fhir", 10).await.unwrap();
    assert_eq!(fetched.rows.len(), 1);
    let obs = fetched.rows[0].observation.as_ref().unwrap();
    assert_eq!(obs.id, "obs-1");
    assert_eq!(
        obs.json.get(),
        r#"{"resourceType":"Observation","id":"obs-1"}"#
    );
    assert_eq!(
        fetched.devices["dev-1"].get(),
        r#"{"resourceType":"Device","id":"dev-1"}"#
    );
    outbox
        .delivered("fhir", vec![(fetched.rows[0].seq, fetched.rows[0].len)])
        .await
        .unwrap();
    drop(outbox);
    writer.await.unwrap();
    let status = read_status(&settings.path, &["fhir".into()]).unwrap();
    assert_eq!((status.rows, status.uplinks[0].delivered), (0, 1));
}

#[tokio::test]
async fn when_full_and_blocking_appends_wait_until_deliveries_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let settings = OutboxSettings {
        max_bytes: 1,
        when_full: WhenFull::Block,
        commit_window: Duration::ZERO,
        quiet_commit_window: Duration::ZERO,
        ..settings_in(dir.path())
    };
    let ring = Arc::new(Keyring::new(&KEY));
    let (outbox, writer) = Outbox::open(settings, ring, vec!["fhir".into()])
        .await
        .unwrap();
    let append = |id: &str| {
        let (tx, rx) = oneshot::channel();
        (
            Append {
                device_id: "dev-1".into(),
                device_json: b"{}".to_vec().into(),
                observations: vec![(id.into(), b"{}".to_vec())],
                ack: Some(tx),
                source_waits: true,
            },
            rx,
        )
    };
    let (first, first_rx) = append("a");
    outbox.append(first).await.unwrap();
    first_rx.await.unwrap();
    // The outbox is now over its 1-byte cap: the next append is not committed...
    let (second, mut second_rx) = append("b");
    outbox.append(second).await.unwrap();
    let fetched = outbox.fetch("fhir", 10).await.unwrap();
    assert_eq!(fetched.rows.len(), 1, "the blocked append was committed");
    assert!(second_rx.try_recv().is_err());
    // ...until the first row is delivered.
    outbox
        .delivered("fhir", vec![(fetched.rows[0].seq, fetched.rows[0].len)])
        .await
        .unwrap();
    let committed = second_rx.await.unwrap();
    assert_eq!(committed.observations, vec!["b".to_string()]);
    drop(outbox);
    writer.await.unwrap();
}

#[test]
fn devices_are_stored_once_and_fetched_with_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Keyring::new(&KEY);
    let mut store = Store::open(&dir.path().join("o.db"), &ring, &["fhir".to_string()]).unwrap();
    store.begin().unwrap();
    let fingerprint = DeviceJsonIn::from(b"{}".to_vec()).fingerprint();
    store
        .put_device(
            &StoredDevice {
                id: "dev-1".into(),
                sealed: ring.seal(b"{}", &device_aad("dev-1")).unwrap(),
            },
            Some(fingerprint),
        )
        .unwrap();
    insert(&mut store, &ring, b"x");
    store.commit().unwrap();
    assert!(store.has_device("dev-1", fingerprint));
    assert!(!store.has_device("dev-1", fingerprint ^ 1));
    let (rows, _, devices) = store.fetch("fhir", 0, 10, None).unwrap();
    assert_eq!((rows.len(), devices.len()), (1, 1));
}

#[tokio::test]
async fn refused_messages_are_kept_sealed_listable_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path());
    let ring = Arc::new(Keyring::new(&KEY));
    let (outbox, writer) = Outbox::open(settings.clone(), ring.clone(), vec!["fhir".into()])
        .await
        .unwrap();
    for i in 0..5u8 {
        let payload = if i == 4 {
            vec![0xff, 0x00, i]
        } else {
            format!("{{\"secret-mrn\":{i}").into_bytes()
        };
        let rejected = iomt_drivers::Rejected {
            transport: iomt_drivers::Transport::Mqtt,
            source: format!("devices/esp-{i}/vitals"),
            reason: format!("reason {i}"),
            size: payload.len(),
            payload,
            received_at: chrono::Utc::now(),
        };
        outbox.ingest_dead_letter(&rejected, 3).await.unwrap();
    }
    drop(outbox);
    writer.await.unwrap();
    let letters = read_ingest_dead_letters(&settings.path, &ring).unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, ["reason 2", "reason 3", "reason 4"]);
    assert_eq!(letters[0].source, "devices/esp-2/vitals");
    assert_eq!(letters[0].payload, "{\"secret-mrn\":2");
    assert_eq!(letters[2].payload, "hex:ff0004");
    // Sealed at rest: neither topic nor payload is in the file in clear.
    let raw = std::fs::read(&settings.path).unwrap();
    let wal = std::fs::read(dir.path().join("outbox.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("secret-mrn") && !text.contains("esp-2"));
    }
    // A wrong key does not open them.
    let other = Keyring::new(&[9; 32]);
    let letters = read_ingest_dead_letters(&settings.path, &other).unwrap();
    assert!(letters[0].source.starts_with('<'), "{}", letters[0].source);
}

#[tokio::test(start_paused = true)]
async fn readings_nobody_waits_for_share_a_commit_and_a_waiting_source_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = OutboxSettings {
        commit_window: Duration::from_millis(20),
        quiet_commit_window: Duration::from_secs(2),
        ..settings_in(dir.path())
    };
    let ring = Arc::new(Keyring::new(&KEY));
    let (outbox, writer) = Outbox::open(settings, ring, vec!["fhir".into()])
        .await
        .unwrap();
    let append = |id: &str, source_waits: bool| {
        let (tx, rx) = oneshot::channel();
        (
            Append {
                device_id: "dev-1".into(),
                device_json: b"{}".to_vec().into(),
                observations: vec![(id.into(), b"{}".to_vec())],
                ack: Some(tx),
                source_waits,
            },
            rx,
        )
    };

    // One reading a half second, nobody waiting: the three share one commit.
    let mut acks = Vec::new();
    for i in 0..3 {
        let (a, rx) = append(&format!("quiet-{i}"), false);
        outbox.append(a).await.unwrap();
        acks.push(rx);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for rx in acks {
        rx.await.unwrap();
    }
    assert_eq!(outbox.transactions(), 1);

    // A source that waits (an MQTT PUBACK) is answered within the short window.
    let start = tokio::time::Instant::now();
    let (a, rx) = append("waited-for", true);
    outbox.append(a).await.unwrap();
    rx.await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(outbox.transactions(), 2);

    drop(outbox);
    writer.await.unwrap();
}

#[test]
fn after_a_rotation_only_queued_rows_keep_the_retired_key_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key_file = dir.path().join("storage.key");
    crate::secret_file::write_new_key_file(&key_file, &[3; 32]).unwrap();
    let names = vec!["fhir".to_string()];
    let old = Keyring::load(&key_file).unwrap();
    let old_id = format!("{:08x}", old.current().id);
    {
        // Under the old key: a Device, a dead letter, a refused message, a queued row.
        let mut store = Store::open(&path, &old, &names).unwrap();
        store.begin().unwrap();
        store
            .put_device(
                &StoredDevice {
                    id: "dev-1".into(),
                    sealed: old.seal(b"{}", &device_aad("dev-1")).unwrap(),
                },
                None,
            )
            .unwrap();
        let rejected = insert(&mut store, &old, b"rejected");
        let reason = old
            .seal(b"bad unit", &reason_aad("fhir", rejected))
            .unwrap();
        store
            .dead_letter(&old, "fhir", rejected, 0, &reason)
            .unwrap();
        store
            .ingest_dead_letter(&old, 0, "mqtt", 3, b"abc", 10)
            .unwrap();
        insert(&mut store, &old, b"queued");
        store.commit().unwrap();
        let status = store.status(&names).unwrap();
        assert_eq!(
            status.keys_in_use,
            [(old_id.clone(), 4)],
            "every sealed table counts"
        );
    }
    crate::secret_file::rotate_key_file(&key_file, &[4; 32]).unwrap();
    let ring = Keyring::load(&key_file).unwrap();
    let new_id = format!("{:08x}", ring.current().id);
    let mut store = Store::open(&path, &ring, &names).unwrap();
    // Opening sealed what is kept for good again under the new key.
    let mut in_use = store.status(&names).unwrap().keys_in_use;
    in_use.sort();
    let mut expected = vec![(old_id.clone(), 1), (new_id.clone(), 3)];
    expected.sort();
    assert_eq!(in_use, expected);
    let (rows, _, _) = store.fetch("fhir", 0, 10, None).unwrap();
    store.begin().unwrap();
    store.delivered("fhir", &[(rows[0].seq, 0)]).unwrap();
    store.commit().unwrap();
    assert_eq!(store.status(&names).unwrap().keys_in_use, [(new_id, 3)]);
    drop(store);
    // The retired key is no longer needed: without it the outbox opens, and its dead
    // letters and refused messages still open.
    std::fs::remove_file(crate::secret_file::retired_path(&key_file)).unwrap();
    let ring = Keyring::load(&key_file).unwrap();
    drop(Store::open(&path, &ring, &names).unwrap());
    let letters = read_dead_letters(&path, &ring).unwrap();
    assert_eq!(letters[0].reason, "bad unit");
    let refused = store::read_only_ingest_dead_letters(&path).unwrap();
    let opened = ring.open(&refused[0].sealed, &store::ingest_aad(refused[0].id));
    assert_eq!(opened.unwrap(), b"abc");
}

#[test]
fn an_older_dead_letter_whose_reason_was_sealed_under_another_key_opens_after_the_next_start() {
    // Older gateways recorded the row's key on a dead letter while sealing its reason
    // under the current key: after a rotation the reason did not open.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key_file = dir.path().join("storage.key");
    crate::secret_file::write_new_key_file(&key_file, &[5; 32]).unwrap();
    let names = vec!["fhir".to_string()];
    let old = Keyring::load(&key_file).unwrap();
    drop(Store::open(&path, &old, &names).unwrap());
    crate::secret_file::rotate_key_file(&key_file, &[6; 32]).unwrap();
    let ring = Keyring::load(&key_file).unwrap();
    let payload = old.seal(b"row", &row_aad(1, "dev-1")).unwrap();
    let reason = ring.seal(b"bad code", &reason_aad("fhir", 1)).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO dead_letters (uplink, seq, at_ms, device_id, key_id, nonce, sealed, reason_nonce, reason_sealed) VALUES ('fhir', 1, 0, 'dev-1', ?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            old.current().id as i64,
            payload.nonce.as_slice(),
            payload.ciphertext,
            reason.nonce.as_slice(),
            reason.ciphertext
        ],
    )
    .unwrap();
    drop(conn);
    assert!(read_dead_letters(&path, &ring).unwrap()[0]
        .reason
        .starts_with('<'));
    drop(Store::open(&path, &ring, &names).unwrap());
    assert_eq!(
        read_dead_letters(&path, &ring).unwrap()[0].reason,
        "bad code"
    );
    let status = read_status(&path, &names).unwrap();
    let current = format!("{:08x}", ring.current().id);
    assert_eq!(status.keys_in_use, [(current, 1)]);
}
