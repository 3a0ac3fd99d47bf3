//! The local status endpoint (axum): `GET /status` (the [`StatusView`] as JSON),
//! `GET /metrics` (the Prometheus text format) and `GET /` (the technician page: one
//! self-contained HTML page, `page.html`, that reads `/status` and refreshes itself).
//! Read-only; nothing else is served.
//!
//! Each request makes the view then: the outbox's counts (a read through its writer),
//! the free disk and the clock. Between requests nothing runs.
//!
//! With `[status] token_file`, every request must carry `Authorization: Bearer <token>`
//! (compared in constant time); without it, 401. The page itself holds no data and is served
//! without it; it asks for the token when `/status` answers 401 (kept in the browser
//! tab's session storage). The token file is read once at start
//! with the checks of every secret file (regular, private, 0600), and a bad one refuses
//! the start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::config::StatusSettings;
use super::view::{Asked, StatusView};
use super::{metrics, Health};
use crate::clock::Clock;
use crate::outbox::{disk, Outbox};
use crate::secret_file::{self, KeyError};

/// Why the status endpoint refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The bearer token's file cannot be used.
    #[error("status.token_file: {0}")]
    Token(#[from] KeyError),
    /// The token file is empty.
    #[error("status.token_file {0} is empty: write a long random token into it")]
    EmptyToken(PathBuf),
}

/// What a request reads.
#[derive(Clone)]
struct Shared {
    health: Health,
    outbox: Outbox,
    uplinks: Vec<String>,
    clock: Option<Arc<Clock>>,
    outbox_dir: PathBuf,
    settings: StatusSettings,
    token: Option<Arc<Vec<u8>>>,
}

/// The endpoint, ready to serve.
pub struct Endpoint {
    shared: Shared,
}

impl Endpoint {
    /// Reads the token file, if any: refuses a bad one.
    pub fn new(
        settings: StatusSettings,
        health: Health,
        outbox: Outbox,
        uplinks: Vec<String>,
        clock: Option<Arc<Clock>>,
        outbox_dir: PathBuf,
    ) -> Result<Self, StatusError> {
        let token = match &settings.token_file {
            None => None,
            Some(path) => {
                let raw = secret_file::read_secret_file(path)?;
                let token = String::from_utf8_lossy(&raw).trim().as_bytes().to_vec();
                if token.is_empty() {
                    return Err(StatusError::EmptyToken(path.clone()));
                }
                Some(Arc::new(token))
            }
        };
        Ok(Self {
            shared: Shared {
                health,
                outbox,
                uplinks,
                clock,
                outbox_dir,
                settings,
                token,
            },
        })
    }

    /// Binds and serves until `stop` fires. A port that cannot be bound is logged at
    /// error and the gateway runs on without the endpoint: the readings matter more.
    pub async fn serve(self, stop: CancellationToken) {
        let addr: SocketAddr = self.shared.settings.listen;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "the status endpoint cannot listen (is another gateway running, or the port taken?); running without it: change [status] listen");
                return;
            }
        };
        tracing::info!(listen = %addr, token = self.shared.token.is_some(), "status endpoint listening");
        let app = Router::new()
            .route("/status", get(status))
            .route("/metrics", get(metrics_text))
            .route("/", get(page))
            .with_state(self.shared);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "the status endpoint stopped");
        }
    }
}

/// Whether `a` equals `b`, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` if the request may be served, else the refusal.
fn refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = shared.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same(g.trim().as_bytes(), token)) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (see [status] token_file)\n",
        )
            .into_response(),
    )
}

async fn make_view(shared: &Shared) -> StatusView {
    let outbox = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        shared.outbox.status(shared.uplinks.clone()),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "status: the outbox's counts cannot be read");
            None
        }
        Err(_) => {
            tracing::warn!("status: the outbox did not answer within 2 s");
            None
        }
    };
    let asked = Asked {
        outbox,
        clock_synchronized: shared.clock.as_ref().map(|c| c.check().synchronized),
        disk_free_bytes: disk::free_bytes(&shared.outbox_dir),
        commit_seconds: Some(shared.outbox.commit_latency()),
    };
    shared
        .health
        .view(chrono::Utc::now(), shared.settings.seen_within, &asked)
}

async fn status(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&shared, &headers) {
        return r;
    }
    axum::Json(make_view(&shared).await).into_response()
}

async fn metrics_text(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&shared, &headers) {
        return r;
    }
    let view = make_view(&shared).await;
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&view),
    )
        .into_response()
}

/// The technician page (no external asset: it works offline on a phone at the kit).
const PAGE: &str = include_str!("page.html");

/// Only the page's own inline script and style, and requests back to the gateway.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}
