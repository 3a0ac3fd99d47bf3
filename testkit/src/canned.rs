//! An HTTP server for tests that answers every request with the same canned response
//! and records what it was sent: a FHIR server that redirects, a SMART discovery
//! document naming some token endpoint, or an HTTP proxy (`http_proxy=`) standing for
//! "the network beyond this machine", which sees every plain-http request a client
//! would have sent to another host (the request target is then the absolute URL).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::oneshot;

/// The response given to every request.
#[derive(Debug, Clone)]
pub struct Canned {
    /// Its status.
    pub status: u16,
    /// Its headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Canned {
    /// A redirect with `status` (301, 302, 303, 307, 308) to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self {
            status,
            headers: vec![("location".into(), location.into())],
            body: String::new(),
        }
    }

    /// A `200` with a JSON body.
    pub fn json(body: &serde_json::Value) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The request target as sent: a path, or an absolute URL through a proxy.
    pub target: String,
    /// Whether it carried an `Authorization` header.
    pub authorization: bool,
    /// Its body.
    pub body: Vec<u8>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<(Canned, Vec<Seen>)>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (Canned, Vec<Seen>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running canned server on 127.0.0.1 (stopped on drop).
pub struct CannedServer {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
}

async fn answer(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock();
    inner.1.push(Seen {
        method: method.to_string(),
        target: uri.to_string(),
        authorization: headers.contains_key("authorization"),
        body: body.to_vec(),
    });
    let canned = inner.0.clone();
    drop(inner);
    let mut r = (
        StatusCode::from_u16(canned.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        canned.body,
    )
        .into_response();
    for (name, value) in &canned.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

impl CannedServer {
    /// Starts answering every request with `canned`.
    pub async fn start(canned: Canned) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared(Arc::new(Mutex::new((canned, Vec::new()))));
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:port` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().1.clone()
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
