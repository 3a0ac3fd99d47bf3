//! The delivery loop over a real outbox (SQLite in a temp dir) and a scripted uplink, in
//! paused time: every delay below is tokio's virtual time, nothing really sleeps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{run, DeliverySettings, DeliveryStats};
use crate::clock::{Clock, ClockSettings, ClockSource};
use crate::fhir::Bundle;
use crate::outbox::seal::Keyring;
use crate::outbox::{read_dead_letters, read_status, Append, Outbox, OutboxSettings, WhenFull};
use crate::uplink::{DeliveryError, DeliveryFuture, Uplink};

mod bounded;
mod fetch_ahead;
mod heartbeat;
mod window;

const KEY: [u8; 32] = [7; 32];
const UPLINK: &str = "fhir";

/// How the scripted uplink answers one Bundle.
enum Answer {
    /// Acknowledged.
    Ok,
    /// Acknowledged after this long.
    OkAfter(Duration),
    /// Failed.
    Fail(DeliveryError),
    /// No answer, ever.
    Never,
}

/// One request the scripted uplink received.
#[derive(Debug)]
struct Request {
    /// When (virtual time).
    at: Instant,
    /// The ids of the Observations in the Bundle, in order.
    observations: Vec<String>,
}

type Responder = Box<dyn FnMut(&Bundle) -> Answer + Send>;

/// An `Uplink` that answers from a script (or a rule over the Bundle) and reports every
/// request it receives.
struct Scripted {
    answer: Responder,
    requests: mpsc::UnboundedSender<Request>,
}

impl Uplink for Scripted {
    fn name(&self) -> &str {
        UPLINK
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        let answer = (self.answer)(bundle);
        let _ = self.requests.send(Request {
            at: Instant::now(),
            observations: observation_ids(bundle),
        });
        Box::pin(async move {
            match answer {
                Answer::Ok => Ok(()),
                Answer::OkAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(())
                }
                Answer::Fail(e) => Err(e),
                Answer::Never => std::future::pending().await,
            }
        })
    }
}

/// Answers in turn from `script`, then acknowledges everything.
fn script(answers: Vec<Answer>) -> Responder {
    let mut answers = VecDeque::from(answers);
    Box::new(move |_| answers.pop_front().unwrap_or(Answer::Ok))
}

fn observation_ids(bundle: &Bundle<'_>) -> Vec<String> {
    bundle
        .entry
        .iter()
        .filter(|e| e.request.method == "POST")
        .map(|e| e.full_url.trim_start_matches("urn:uuid:").to_string())
        .collect()
}

/// The index of the entry of Observation `id` in `bundle`.
fn entry_of(bundle: &Bundle<'_>, id: &str) -> usize {
    let url = format!("urn:uuid:{id}");
    bundle
        .entry
        .iter()
        .position(|e| e.full_url == url)
        .unwrap_or_else(|| panic!("{id} is not in the Bundle"))
}

fn id(i: usize) -> String {
    format!("obs-{i:02}")
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(id).collect()
}

fn rejected(entries: Vec<(usize, &str)>) -> Answer {
    Answer::Fail(DeliveryError::Rejected {
        entries: entries
            .into_iter()
            .map(|(e, w)| (e, w.to_string()))
            .collect(),
        reason: "HTTP 400 Bad Request: invalid (test)".into(),
    })
}

fn transient(retry_after: Option<Duration>) -> Answer {
    Answer::Fail(DeliveryError::Transient {
        reason: "HTTP 503 Service Unavailable".into(),
        retry_after,
    })
}

/// A real outbox in a temp dir holding `rows` Observations `obs-00`, `obs-01`... of one
/// device, committed.
struct Bed {
    dir: tempfile::TempDir,
    outbox: Outbox,
    writer: JoinHandle<()>,
}

impl Bed {
    async fn with_rows(rows: usize) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let settings = OutboxSettings {
            path: dir.path().join("outbox.db"),
            max_bytes: 1 << 30,
            max_age: None,
            when_full: WhenFull::EvictOldest,
            commit_window: Duration::from_millis(1),
            quiet_commit_window: Duration::from_millis(1),
            max_batch_rows: 100,
            pseudonym_key: None,
        };
        let ring = Arc::new(Keyring::new(&KEY));
        let (outbox, writer) = Outbox::open(settings, ring, vec![UPLINK.into()])
            .await
            .unwrap();
        let bed = Bed {
            dir,
            outbox,
            writer,
        };
        bed.append(0..rows).await;
        bed
    }

    /// Appends Observations `obs-{range}` and waits for their commit.
    async fn append(&self, range: std::ops::Range<usize>) {
        let mut acks = Vec::new();
        for i in range {
            let (tx, rx) = oneshot::channel();
            let json = format!(
                r#"{{"resourceType":"Observation","id":"{0}","identifier":[{{"system":"urn:ietf:rfc:3986","value":"urn:uuid:{0}"}}]}}"#,
                id(i)
            );
            self.outbox
                .append(Append {
                    device_id: "dev-1".into(),
                    device_json: br#"{"resourceType":"Device","id":"dev-1"}"#.to_vec().into(),
                    observations: vec![(id(i), json.into_bytes())],
                    ack: Some(tx),
                    source_waits: true,
                })
                .await
                .unwrap();
            acks.push(rx);
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    /// Starts the delivery loop over the outbox with `answer` as the uplink: batches of
    /// 100, backoff from 1 s to 60 s, a 2 s drain deadline.
    fn start(&self, answer: Responder) -> Running {
        self.start_with_clock(answer, None)
    }

    /// [`Bed::start`] with the gateway's clock.
    fn start_with_clock(&self, answer: Responder, clock: Option<Arc<Clock>>) -> Running {
        let (tx, requests) = mpsc::unbounded_channel();
        let uplink = Box::new(Scripted {
            answer,
            requests: tx,
        });
        self.start_uplink(uplink, requests, clock)
    }

    /// Starts the delivery loop over the outbox with `uplink`, which reports its requests
    /// to `requests`.
    fn start_uplink(
        &self,
        uplink: Box<dyn Uplink>,
        requests: mpsc::UnboundedReceiver<Request>,
        clock: Option<Arc<Clock>>,
    ) -> Running {
        let cancel = CancellationToken::new();
        let settings = DeliverySettings {
            batch_size: 100,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(2),
            clock,
            health: None,
            heartbeat: None,
        };
        let task = tokio::spawn(run(
            self.outbox.clone(),
            uplink,
            settings,
            crate::normalize::gateway_resource("gateway-pseudonym"),
            cancel.clone(),
        ));
        Running {
            requests,
            cancel,
            task,
        }
    }

    /// Closes the outbox; returns (rows left, delivered, dead-lettered) and the dead
    /// letters' reasons.
    async fn close(self) -> ((u64, u64, u64), Vec<String>) {
        drop(self.outbox);
        self.writer.await.unwrap();
        let path = self.dir.path().join("outbox.db");
        let status = read_status(&path, &[UPLINK.into()]).unwrap();
        let uplink = &status.uplinks[0];
        let letters = read_dead_letters(&path, &Keyring::new(&KEY)).unwrap();
        (
            (status.rows, uplink.delivered, uplink.dead_lettered),
            letters.into_iter().map(|l| l.reason).collect(),
        )
    }
}

/// A delivery loop running as a task.
struct Running {
    requests: mpsc::UnboundedReceiver<Request>,
    cancel: CancellationToken,
    task: JoinHandle<DeliveryStats>,
}

impl Running {
    /// The next `n` requests the uplink receives.
    async fn requests(&mut self, n: usize) -> Vec<Request> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.requests.recv().await.expect("the loop stopped"));
        }
        out
    }

    /// Cancels the loop and waits for it; returns its counters and the requests it made
    /// while stopping.
    async fn stop(mut self) -> (DeliveryStats, Vec<Request>) {
        self.cancel.cancel();
        let stats = self.task.await.unwrap();
        let mut late = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            late.push(r);
        }
        (stats, late)
    }
}

fn stats(bundles: u64, delivered: u64, dead_lettered: u64, failures: u64) -> DeliveryStats {
    DeliveryStats {
        bundles,
        delivered,
        dead_lettered,
        failures,
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivered_batch_leaves_the_outbox() {
    let bed = Bed::with_rows(5).await;
    let mut running = bed.start(script(vec![]));
    let sent = running.requests(1).await;
    assert_eq!(sent[0].observations, ids(0..5));
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(1, 5, 0, 0));
    let (counts, letters) = bed.close().await;
    assert_eq!(counts, (0, 5, 0));
    assert!(letters.is_empty());
}

#[tokio::test(start_paused = true)]
async fn rows_committed_while_the_loop_waits_wake_it() {
    let bed = Bed::with_rows(0).await;
    let mut running = bed.start(script(vec![]));
    for i in 0..3 {
        bed.append(i..i + 1).await;
        let sent = running.requests(1).await;
        assert_eq!(sent[0].observations, [id(i)]);
    }
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(3, 3, 0, 0));
    assert_eq!(bed.close().await.0, (0, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn named_rejections_land_in_the_dead_letters_and_the_rest_is_delivered_once() {
    let bed = Bed::with_rows(6).await;
    let mut first = true;
    let mut running = bed.start(Box::new(move |bundle: &Bundle<'_>| {
        if !std::mem::take(&mut first) {
            return Answer::Ok;
        }
        rejected(vec![
            (entry_of(bundle, "obs-01"), "bad unit"),
            (entry_of(bundle, "obs-04"), "bad code"),
        ])
    }));
    let sent = running.requests(2).await;
    assert_eq!(sent[0].observations, ids(0..6));
    assert_eq!(
        sent[1].observations,
        ["obs-00", "obs-02", "obs-03", "obs-05"]
    );
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(1, 4, 2, 0));
    let (counts, letters) = bed.close().await;
    assert_eq!(counts, (0, 4, 2));
    assert_eq!(letters, ["bad unit", "bad code"]);
}

#[tokio::test(start_paused = true)]
async fn an_unnamed_rejection_is_bisected_until_the_poison_row_among_sixteen_is_alone() {
    let bed = Bed::with_rows(16).await;
    // Refuses any Bundle holding obs-05, without saying which entry is at fault.
    let mut running = bed.start(Box::new(|bundle: &Bundle<'_>| {
        if observation_ids(bundle).iter().any(|i| i == "obs-05") {
            rejected(vec![])
        } else {
            Answer::Ok
        }
    }));
    // Halves, the first one first, until obs-05 is alone.
    let expected = [0..16, 0..8, 0..4, 4..8, 4..6, 4..5, 5..6, 6..8, 8..16];
    let sent = running.requests(expected.len()).await;
    let sent: Vec<Vec<String>> = sent.into_iter().map(|r| r.observations).collect();
    assert_eq!(sent, expected.map(ids));
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(4, 15, 1, 0));
    let (counts, letters) = bed.close().await;
    assert_eq!(counts, (0, 15, 1));
    assert_eq!(letters, ["HTTP 400 Bad Request: invalid (test)"]);
}

#[tokio::test(start_paused = true)]
async fn a_backlog_drains_in_order_and_a_failure_in_the_middle_loses_and_repeats_nothing() {
    // Batches of 100: the second batch is fetched while the first is on its way, and the
    // third while the second is; the second fails once, so the third's early fetch is
    // dropped and the loop starts again from the oldest row left.
    let bed = Bed::with_rows(250).await;
    let mut running = bed.start(script(vec![Answer::Ok, transient(None)]));
    let sent = running.requests(4).await;
    let batches: Vec<Vec<String>> = sent.iter().map(|r| r.observations.clone()).collect();
    assert_eq!(
        batches,
        [ids(0..100), ids(100..200), ids(100..200), ids(200..250)]
    );
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(3, 250, 0, 1));
    assert_eq!(bed.close().await.0, (0, 250, 0));
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_the_same_rows_at_the_backoff_times() {
    let bed = Bed::with_rows(3).await;
    let mut running = bed.start(script(vec![
        transient(Some(Duration::from_secs(30))),
        transient(None),
        transient(None),
        Answer::Ok,
    ]));
    let sent = running.requests(4).await;
    assert!(sent.iter().all(|r| r.observations == ids(0..3)), "{sent:?}");
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1].at - w[0].at).collect();
    let slack = Duration::from_millis(10);
    let within = |gap: Duration, low: u64, high: u64| {
        gap >= Duration::from_secs(low) && gap <= Duration::from_secs(high) + slack
    };
    // Never earlier than the server's Retry-After; then 2 s and 4 s with jitter (half to
    // all of the delay).
    assert!(within(gaps[0], 30, 30), "{gaps:?}");
    assert!(within(gaps[1], 1, 2), "{gaps:?}");
    assert!(within(gaps[2], 2, 4), "{gaps:?}");
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(1, 3, 0, 3));
    assert_eq!(bed.close().await.0, (0, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn at_the_drain_deadline_a_request_that_never_answers_is_abandoned_and_its_rows_stay() {
    let bed = Bed::with_rows(4).await;
    let mut running = bed.start(script(vec![Answer::Never]));
    running.requests(1).await;
    let cancelled = Instant::now();
    let (stats_, late) = running.stop().await;
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2010),
        "{took:?}"
    );
    assert!(late.is_empty(), "no last pass after the deadline: {late:?}");
    assert_eq!((stats_.bundles, stats_.delivered), (0, 0));
    assert_eq!(bed.close().await.0, (4, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_arrives_before_the_drain_deadline_is_still_marked_delivered() {
    let bed = Bed::with_rows(4).await;
    let mut running = bed.start(script(vec![Answer::OkAfter(Duration::from_secs(1))]));
    running.requests(1).await;
    let cancelled = Instant::now();
    let (stats_, late) = running.stop().await;
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_, stats(1, 4, 0, 0));
    assert_eq!(bed.close().await.0, (0, 4, 0));
}

#[tokio::test]
async fn the_same_observation_stored_twice_is_sent_once_and_both_rows_leave_the_outbox() {
    use crate::uplink::fhir_http::{FhirSettings, FhirUplink};
    // The test FHIR server refuses a transaction with a fullUrl twice, as real ones do.
    let server = iomt_testkit::FhirServer::start().await.unwrap();
    // obs-01 and obs-00 are stored twice (a source sent them again after a crash
    // between the commit and its acknowledgement): five rows, three Observations.
    let bed = Bed::with_rows(3).await;
    bed.append(1..2).await;
    bed.append(0..1).await;
    let uplink = FhirUplink::new(FhirSettings {
        name: UPLINK.into(),
        base_url: server.base_url(),
        auth: Default::default(),
        timeout: Duration::from_secs(5),
        ca_file: None,
        client_identity: None,
        insecure: false,
        allow_insecure: false,
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        bed.outbox.clone(),
        Box::new(uplink),
        DeliverySettings {
            batch_size: 100,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            drain_deadline: Duration::from_secs(5),
            clock: None,
            health: None,
            heartbeat: None,
        },
        crate::normalize::gateway_resource("gateway-pseudonym"),
        cancel.clone(),
    ));
    let mut outcome = bed.outbox.status(vec![UPLINK.into()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while outcome.uplinks[0].delivered + outcome.uplinks[0].dead_lettered < 5 {
        assert!(Instant::now() < deadline, "rows still queued: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        outcome = bed.outbox.status(vec![UPLINK.into()]).await.unwrap();
    }
    cancel.cancel();
    assert_eq!(task.await.unwrap(), stats(1, 5, 0, 0));
    let (counts, reasons) = bed.close().await;
    assert_eq!(counts, (0, 5, 0), "{reasons:?}");
    server.with_store(|s| {
        let ids: Vec<&str> = s
            .observations
            .iter()
            .filter_map(|o| o["id"].as_str())
            .collect();
        assert_eq!(ids, ["obs-00", "obs-01", "obs-02"]);
        assert_eq!((s.requests, s.rejected, s.duplicate_creates), (1, 0, 0));
    });
}

/// Appends Observation `obs-{i}` as received while the clock was not synchronized now.
async fn append_held(bed: &Bed, i: usize, clock: &Clock) {
    let hold = clock.hold(clock.check(), 0).expect("unsynchronized");
    let json = format!(
        r#"{{"resourceType":"Observation","id":"{0}","identifier":[{{"system":"urn:ietf:rfc:3986","value":"urn:uuid:{0}"}}],"effectiveDateTime":"1970-01-01T00:00:00Z","issued":"1970-01-01T00:00:00Z","iomtGatewayTimeHold":{1}}}"#,
        id(i),
        serde_json::to_string(&hold).unwrap()
    );
    let (tx, rx) = oneshot::channel();
    bed.outbox
        .append(Append {
            device_id: "dev-1".into(),
            device_json: br#"{"resourceType":"Device","id":"dev-1"}"#.to_vec().into(),
            observations: vec![(id(i), json.into_bytes())],
            ack: Some(tx),
            source_waits: true,
        })
        .await
        .unwrap();
    rx.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn rows_held_for_the_clock_wait_without_a_fetch_per_commit_and_go_out_once_it_is_synchronized(
) {
    let bed = Bed::with_rows(2).await;
    let status = bed.dir.path().join("clock");
    std::fs::write(&status, "unsynchronized").unwrap();
    let clock = Clock::new(ClockSettings {
        source: ClockSource::StatusFile(status.clone()),
        wait: Duration::from_secs(3600),
    });
    append_held(&bed, 2, &clock).await;
    let mut running = bed.start_with_clock(script(vec![]), Some(clock.clone()));
    // The rows from before go out; the held one waits.
    assert_eq!(running.requests(1).await[0].observations, ids(0..2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = bed.outbox.transactions();
    for i in 3..6 {
        append_held(&bed, i, &clock).await;
    }
    // Ten minutes with rows held: no request, and no fetch for the commits (each append
    // is one transaction of its own here).
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(running.requests.try_recv().is_err());
    assert_eq!(bed.outbox.transactions() - before, 3);
    // The clock is synchronized (a reading noticed it): the held rows go out.
    std::fs::write(&status, "synchronized").unwrap();
    clock.check();
    assert_eq!(running.requests(1).await[0].observations, ids(2..6));
    let (stats_, _) = running.stop().await;
    assert_eq!(stats_, stats(2, 6, 0, 0));
    let (counts, _) = bed.close().await;
    assert_eq!(counts, (0, 6, 0));
}
