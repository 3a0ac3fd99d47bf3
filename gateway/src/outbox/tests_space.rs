//! Tests of the outbox's disk use: shrinking after a drained backlog, and eviction warnings.

use super::seal::Keyring;
use super::tests::settings_in;
use super::*;

const KEY: [u8; 32] = [7; 32];

/// Pages of the database file as another connection sees them (read-only).
fn page_count(path: &std::path::Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn after_a_backlog_drains_the_database_gives_its_free_pages_back() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path());
    let ring = Arc::new(Keyring::new(&KEY));
    let (outbox, writer) = Outbox::open(settings.clone(), ring.clone(), vec!["fhir".into()])
        .await
        .unwrap();
    // A backlog of 3,000 rows of 2 KB that do not compress.
    let mut acks = Vec::new();
    for i in 0..3000u32 {
        let mut x = u64::from(i) | 1 << 40;
        let noise: String = (0..250)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:08x}", x as u32)
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        outbox
            .append(Append {
                device_id: "dev-1".into(),
                device_json: br#"{"resourceType":"Device","id":"dev-1"}"#.to_vec().into(),
                observations: vec![(
                    format!("obs-{i}"),
                    format!(r#"{{"resourceType":"Observation","id":"obs-{i}","note":"{noise}"}}"#)
                        .into_bytes(),
                )],
                ack: Some(tx),
                source_waits: true,
            })
            .await
            .unwrap();
        acks.push(rx);
    }
    for rx in acks {
        rx.await.unwrap();
    }
    let full = page_count(&settings.path);
    assert!(full > 1200, "{full} pages");
    // It drains.
    loop {
        let fetched = outbox.fetch("fhir", 500).await.unwrap();
        if fetched.rows.is_empty() {
            break;
        }
        let rows = fetched.rows.iter().map(|r| (r.seq, r.len)).collect();
        outbox.delivered("fhir", rows).await.unwrap();
    }
    let start = std::time::Instant::now();
    // What stays: the live pages and fewer free ones than the shrinking threshold, room
    // the next backlog reuses.
    while page_count(&settings.path) > store::SHRINK_MIN_FREE_PAGES + 64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the database still has {} of its {full} pages after the drain",
            page_count(&settings.path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(outbox);
    writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn evictions_warn_once_per_episode_then_at_most_once_a_minute() {
    let mut e = writer::Evictions::default();
    let mut warnings = e.add(3);
    assert_eq!(warnings, 1, "the episode's first eviction warns");
    // Ten minutes of evictions every 100 ms: one summary a minute.
    for _ in 0..6000 {
        tokio::time::advance(Duration::from_millis(100)).await;
        warnings += e.add(2);
    }
    assert_eq!(warnings, 11);
    // A quiet minute ends the episode: its summary, then a new episode's warning.
    tokio::time::advance(writer::EVICTION_REPORT).await;
    assert_eq!(e.add(1), 2);
    assert_eq!(e.end(), 1);
    assert_eq!(e.end(), 0, "nothing to sum up");
}
