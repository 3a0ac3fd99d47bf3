//! The delivery loop with an uplink whose Bundles are bounded in bytes (the MQTT uplink
//! in bundle mode, `max_message_bytes`), in paused time.

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ids, observation_ids, script, stats, transient, Bed, Request, Responder, UPLINK};
use crate::fhir::Bundle;
use crate::uplink::{DeliveryFuture, Uplink};

/// Bundles of at most this many bytes of JSON: about fifteen of the test's Observations.
const MAX: usize = 4096;

/// An uplink that takes Bundles of at most [`MAX`] bytes, answers from a script and
/// reports each request with the length of the Bundle's JSON.
struct Bounded {
    answer: Responder,
    requests: mpsc::UnboundedSender<(Request, usize)>,
}

impl Uplink for Bounded {
    fn name(&self) -> &str {
        UPLINK
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        let answer = (self.answer)(bundle);
        let json = serde_json::to_vec(bundle).unwrap();
        let _ = self.requests.send((
            Request {
                at: Instant::now(),
                observations: observation_ids(bundle),
            },
            json.len(),
        ));
        Box::pin(async move {
            match answer {
                super::Answer::Ok => Ok(()),
                super::Answer::Fail(e) => Err(e),
                _ => unreachable!("not scripted here"),
            }
        })
    }

    fn max_bundle_bytes(&self) -> Option<usize> {
        Some(MAX)
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_too_large_for_one_message_goes_in_bundles_within_the_bound_in_order() {
    let bed = Bed::with_rows(250).await;
    let (tx, mut requests) = mpsc::unbounded_channel();
    // The fourth Bundle fails once: the rows from its first one go again, none lost.
    let answers = script(vec![
        super::Answer::Ok,
        super::Answer::Ok,
        super::Answer::Ok,
        transient(None),
    ]);
    let uplink = Box::new(Bounded {
        answer: answers,
        requests: tx,
    });
    let (_unused_tx, unused) = mpsc::unbounded_channel();
    let running = bed.start_uplink(uplink, unused, None);
    let mut delivered: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut failed_once = None;
    let mut n = 0;
    while delivered.len() < 250 {
        let (request, bytes) = requests.recv().await.expect("the loop stopped");
        assert!(bytes <= MAX, "Bundle {n}: {bytes} bytes, over {MAX}");
        assert!(!request.observations.is_empty());
        if n == 3 {
            failed_once = Some(request.observations);
        } else {
            sizes.push(request.observations.len());
            delivered.extend(request.observations);
        }
        n += 1;
    }
    // Every row once, in order, the failed Bundle's rows included (sent again).
    assert_eq!(delivered, ids(0..250));
    let failed = failed_once.expect("the fourth Bundle failed");
    let before: usize = sizes[..3].iter().sum();
    assert_eq!(
        failed[0], delivered[before],
        "the failed Bundle's rows went again first"
    );
    // Each Bundle near the bound: the first fetch (a batch of 100) learns how many rows
    // fit, and later fetches ask for about that many, so no Bundle but the last is cut
    // short by the end of a fetch after the first batch.
    let full = sizes[0];
    assert!(full > 5 && full < 100, "{sizes:?}");
    let after_first_batch = sizes.iter().scan(0, |seen, &s| {
        *seen += s;
        Some((*seen, s))
    });
    let short: Vec<usize> = after_first_batch
        .filter(|(seen, s)| *seen > 100 && *seen < 250 && *s + 1 < full)
        .map(|(_, s)| s)
        .collect();
    assert!(
        short.is_empty(),
        "Bundles cut short: {short:?} in {sizes:?}"
    );
    let (stats_, _) = running.stop().await;
    assert_eq!(stats_, stats(sizes.len() as u64, 250, 0, 1));
    assert_eq!(bed.close().await.0, (0, 250, 0));
}
