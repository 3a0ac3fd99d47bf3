//! The delivery loop with an uplink that acknowledges each Observation on its own (a
//! window of unacknowledged messages, as the MQTT uplink in observation mode), in paused
//! time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{id, ids, observation_ids, Bed, Request, UPLINK};
use crate::fhir::Bundle;
use crate::uplink::{AckedFuture, DeliveryError, DeliveryFuture, Uplink};

/// What the windowed uplink saw.
#[derive(Debug, Default)]
struct Seen {
    /// Observations sent and not yet acknowledged.
    in_flight: usize,
    /// The most ever in flight at once.
    max_in_flight: usize,
    /// Whether Observations were sent while others still waited for their
    /// acknowledgement.
    overlapped: bool,
    /// Acknowledgements given.
    acked: usize,
    /// After this many acknowledgements, the connection is lost once.
    fail_at: Option<usize>,
}

/// An uplink with a window of `window` that acknowledges one Observation every 10 ms, in
/// order. Through `deliver` (a loop that knows no window) it sends a whole Bundle and
/// waits for every acknowledgement, as a whole-batch uplink does.
struct Windowed {
    window: usize,
    seen: Arc<Mutex<Seen>>,
    requests: mpsc::UnboundedSender<Request>,
}

const ACK_EVERY: Duration = Duration::from_millis(10);

impl Windowed {
    fn record(&self, bundle: &Bundle<'_>) -> usize {
        let observations = observation_ids(bundle);
        let n = observations.len();
        let _ = self.requests.send(Request {
            at: Instant::now(),
            observations,
        });
        let mut seen = self.seen.lock().unwrap();
        seen.overlapped |= seen.in_flight > 0 && n > 0;
        seen.in_flight += n;
        seen.max_in_flight = seen.max_in_flight.max(seen.in_flight);
        n
    }

    /// Waits for the next acknowledgement.
    async fn ack_one(seen: &Mutex<Seen>) -> Result<(), DeliveryError> {
        tokio::time::sleep(ACK_EVERY).await;
        let mut seen = seen.lock().unwrap();
        if seen.fail_at == Some(seen.acked) {
            seen.fail_at = None;
            seen.in_flight = 0;
            return Err(DeliveryError::Transient {
                reason: "connection lost (test)".into(),
                retry_after: None,
            });
        }
        seen.in_flight -= 1;
        seen.acked += 1;
        Ok(())
    }
}

impl Uplink for Windowed {
    fn name(&self) -> &str {
        UPLINK
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        let n = self.record(bundle);
        Box::pin(async move {
            for _ in 0..n {
                Self::ack_one(&self.seen).await?;
            }
            Ok(())
        })
    }

    fn window(&self) -> Option<usize> {
        Some(self.window)
    }

    fn send<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        self.record(bundle);
        Box::pin(std::future::ready(Ok(())))
    }

    fn acked(&mut self) -> AckedFuture<'_> {
        Box::pin(async move {
            if self.seen.lock().unwrap().in_flight == 0 {
                return std::future::pending().await;
            }
            Self::ack_one(&self.seen).await.map(|()| 1)
        })
    }
}

fn windowed(
    bed: &Bed,
    window: usize,
    fail_at: Option<usize>,
) -> (super::Running, Arc<Mutex<Seen>>) {
    let (tx, requests) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Seen {
        fail_at,
        ..Seen::default()
    }));
    let uplink = Box::new(Windowed {
        window,
        seen: seen.clone(),
        requests: tx,
    });
    (bed.start_uplink(uplink, requests, None), seen)
}

/// Receives requests until `total` Observations were sent; returns them in order.
async fn sent(running: &mut super::Running, total: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < total {
        out.extend(running.requests(1).await.remove(0).observations);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_loop_keeps_a_window_of_unacknowledged_observations_full() {
    let bed = Bed::with_rows(300).await;
    let start = Instant::now();
    let (mut running, seen) = windowed(&bed, 40, None);
    // Every Observation once, in order.
    assert_eq!(sent(&mut running, 300).await, ids(0..300));
    // The last rows leave before the whole backlog is acknowledged, and the rows fetched
    // next went out while earlier ones still waited: never more than the window.
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.overlapped,
            "rows were fetched only once every Observation sent was acknowledged"
        );
        assert!(
            seen.max_in_flight <= 40,
            "{} Observations in flight, window 40",
            seen.max_in_flight
        );
        assert!(seen.max_in_flight >= 20, "{seen:?}");
        assert_eq!(seen.acked, 300);
    }
    // The acknowledgements come one by one: the window never waits between them.
    assert!(start.elapsed() < ACK_EVERY * 300 + Duration::from_secs(1));
    assert_eq!(stats_.delivered, 300);
    assert_eq!(stats_.failures, 0);
    assert_eq!(bed.close().await.0, (0, 300, 0));
}

#[tokio::test(start_paused = true)]
async fn after_a_lost_connection_only_the_unacknowledged_observations_go_again() {
    let bed = Bed::with_rows(100).await;
    let (mut running, seen) = windowed(&bed, 40, Some(25));
    // 25 acknowledged, then the connection is lost with the next ones in flight.
    let first = sent(&mut running, 40).await;
    assert_eq!(first, ids(0..40));
    // What follows starts at the first unacknowledged row, each row once from there.
    let mut again = Vec::new();
    while again.len() < 75 {
        again.extend(running.requests(1).await.remove(0).observations);
        // Sends made before the loss noticed it continue the first sequence.
        if again.first() != Some(&id(25)) {
            again.clear();
        }
    }
    assert_eq!(again, ids(25..100));
    let (stats_, late) = running.stop().await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats_.failures, 1);
    assert_eq!(stats_.delivered, 100);
    assert_eq!(seen.lock().unwrap().acked, 100);
    assert_eq!(bed.close().await.0, (0, 100, 0));
}
