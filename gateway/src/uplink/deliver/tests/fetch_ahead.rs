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

#[tokio::test(start_paused = true)]
async fn rows_committed_after_a_short_batch_was_fetched_ahead_are_sent_without_another_commit() {
    // 150 rows in batches of 100: while the first batch is on its way (the server takes
    // 10 s), the 50 after it are fetched ahead. Rows 150..160 commit after that read and
    // before the loop looks at the commit notification again, which it then takes: the
    // short batch fetched ahead must not make the loop wait for a commit that has already
    // happened (it once did, until the next reading came).
    let bed = Bed::with_rows(150).await;
    let before = bed.outbox.transactions();
    let mut running = bed.start(script(vec![Answer::OkAfter(Duration::from_secs(10))]));
    assert_eq!(running.requests(1).await[0].observations, ids(0..100));
    // The first fetch, then the one ahead: the writer runs one transaction at a time, so
    // what commits from now on was not in it.
    transactions_started(&bed, before + 2).await;
    bed.append(150..160).await;
    let sent = tokio::time::timeout(Duration::from_secs(60), running.requests(2))
        .await
        .expect("rows 150..160 were not sent within a minute of their commit");
    assert_eq!(sent[0].observations, ids(100..150));
    assert_eq!(sent[1].observations, ids(150..160));
    let (_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(bed.close().await.0, (0, 160, 0));
}

#[tokio::test(start_paused = true)]
async fn rows_committed_after_an_empty_batch_was_fetched_ahead_are_sent_without_another_commit() {
    // Exactly one full batch: the fetch ahead finds nothing. Rows 100..110 commit after
    // that read and before the loop looks at the commit notification again. The empty
    // batch fetched ahead must not end the pass as idle, waiting for a commit that has
    // already happened (it once did: the end of a burst stayed in the outbox until the
    // next reading came).
    let bed = Bed::with_rows(100).await;
    let before = bed.outbox.transactions();
    let mut running = bed.start(script(vec![Answer::OkAfter(Duration::from_secs(10))]));
    assert_eq!(running.requests(1).await[0].observations, ids(0..100));
    transactions_started(&bed, before + 2).await;
    bed.append(100..110).await;
    let sent = tokio::time::timeout(Duration::from_secs(60), running.requests(1))
        .await
        .expect("rows 100..110 were not sent within a minute of their commit");
    assert_eq!(sent[0].observations, ids(100..110));
    let (_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(bed.close().await.0, (0, 110, 0));
}
