//! The batch fetched ahead and the rows committed after it was read, in paused time.

use std::time::Duration;

use super::{ids, script, Answer, Bed};

/// Waits (in real time: the outbox's transactions run on a blocking thread) until the
/// writer has started `n` transactions.
async fn transactions_started(bed: &Bed, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bed.outbox.transactions() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer started {} transactions, not {n}",
            bed.outbox.transactions()
        );
        tokio::task::yield_now().await;
    }
}

/// `rows` rows waiting, sent in batches of 100 while the server takes 10 s for the first:
/// once the batch after the first has been fetched ahead, the rows `appended` commit, and
/// the loop looks at the commit notification only after that. Returns the Observation ids
/// of the next `bundles` Bundles, which must come within a minute (the loop must not wait
/// for a commit that has already happened); checks that every row was delivered.
async fn sent_after_commits_behind_the_fetch_ahead(
    rows: usize,
    appended: std::ops::Range<usize>,
    bundles: usize,
) -> Vec<Vec<String>> {
    let bed = Bed::with_rows(rows).await;
    let before = bed.outbox.transactions();
    let mut running = bed.start(script(vec![Answer::OkAfter(Duration::from_secs(10))]));
    assert_eq!(running.requests(1).await[0].observations, ids(0..100));
    // The first fetch, then the one ahead: the writer runs one transaction at a time, so
    // what commits from now on was not in it.
    transactions_started(&bed, before + 2).await;
    let total = appended.end as u64;
    bed.append(appended).await;
    let sent = tokio::time::timeout(Duration::from_secs(60), running.requests(bundles))
        .await
        .expect("the rows committed behind the fetch ahead were not sent within a minute");
    let (_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(bed.close().await.0, (0, total, 0));
    sent.into_iter().map(|r| r.observations).collect()
}

#[tokio::test(start_paused = true)]
async fn rows_committed_after_a_short_batch_was_fetched_ahead_are_sent_without_another_commit() {
    // 150 rows: the 50 after the first batch are fetched ahead, and rows 150..160 commit
    // after that read. The short batch fetched ahead must not make the loop wait for a
    // commit that has already happened (it once did, until the next reading came).
    let sent = sent_after_commits_behind_the_fetch_ahead(150, 150..160, 2).await;
    assert_eq!(sent, [ids(100..150), ids(150..160)]);
}

#[tokio::test(start_paused = true)]
async fn rows_committed_after_an_empty_batch_was_fetched_ahead_are_sent_without_another_commit() {
    // Exactly one full batch: the fetch ahead finds nothing, and rows 100..110 commit
    // after that read. The empty batch fetched ahead must not end the pass as idle (it
    // once did: the end of a burst stayed in the outbox until the next reading came).
    let sent = sent_after_commits_behind_the_fetch_ahead(100, 100..110, 1).await;
    assert_eq!(sent, [ids(100..110)]);
}
