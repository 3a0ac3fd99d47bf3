//! A TCP proxy between an MQTT client and its broker that reads the MQTT 3.1.1 packets
//! going through it and counts the QoS 1 messages the broker has sent and the client has
//! not acknowledged yet: the broker's in-flight window as the wire shows it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw.
#[derive(Default)]
pub struct Window {
    /// Packet ids of QoS 1 PUBLISHes sent by the broker on the current connection and not
    /// yet PUBACKed by the client.
    open: Mutex<HashSet<u16>>,
    /// The most messages that were open at once.
    peak: AtomicUsize,
    /// QoS 1 PUBLISHes the broker sent (all connections).
    published: AtomicUsize,
    /// SUBACKs the broker sent (all connections).
    subacks: AtomicUsize,
    /// PUBACKs the client sent (all connections).
    acks: AtomicUsize,
}

impl Window {
    /// The most unacknowledged messages the broker had out at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// QoS 1 messages the broker sent.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Whether the broker has acknowledged a subscription.
    pub fn subscribed(&self) -> bool {
        self.subacks.load(Ordering::SeqCst) > 0
    }

    /// PUBACKs the client sent.
    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::SeqCst)
    }

    fn sent(&self, pkid: u16) {
        self.published.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            open.insert(pkid);
            self.peak.fetch_max(open.len(), Ordering::SeqCst);
        }
    }

    fn acked(&self, pkid: u16) {
        self.acks.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            open.remove(&pkid);
        }
    }

    fn reset(&self) {
        if let Ok(mut open) = self.open.lock() {
            open.clear();
        }
    }
}

/// Starts the proxy on a free 127.0.0.1 port forwarding to `broker_port`; returns its port
/// and the window it watches. Runs on the current tokio runtime until it is dropped.
pub async fn start(broker_port: u16) -> (u16, Arc<Window>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let window = Arc::new(Window::default());
    let w = window.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                continue;
            };
            // One connection at a time is what an MQTT client has.
            w.reset();
            let (cr, cw) = client.into_split();
            let (br, bw) = broker.into_split();
            let down = w.clone();
            let up = w.clone();
            tokio::spawn(async move {
                let _ = pump(br, cw, |kind, flags, body| {
                    if kind == 9 {
                        down.subacks.fetch_add(1, Ordering::SeqCst);
                    }
                    if kind == 3 && (flags >> 1) & 3 == 1 {
                        if let Some(pkid) = publish_pkid(body) {
                            down.sent(pkid);
                        }
                    }
                })
                .await;
            });
            tokio::spawn(async move {
                let _ = pump(cr, bw, |kind, _, body| {
                    if kind == 4 && body.len() >= 2 {
                        up.acked(u16::from_be_bytes([body[0], body[1]]));
                    }
                })
                .await;
            });
        }
    });
    (port, window)
}

/// The packet id of a QoS 1 PUBLISH's variable header.
fn publish_pkid(body: &[u8]) -> Option<u16> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let at = 2 + len;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}

/// Copies MQTT packets from `from` to `to`, calling `seen(type, flags, body)` for each
/// before forwarding it.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut seen: impl FnMut(u8, u8, &[u8]),
) -> std::io::Result<()> {
    loop {
        let first = from.read_u8().await?;
        let mut header = vec![first];
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = from.read_u8().await?;
            header.push(b);
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        from.read_exact(&mut body).await?;
        seen(first >> 4, first & 0x0f, &body);
        to.write_all(&header).await?;
        to.write_all(&body).await?;
    }
}
