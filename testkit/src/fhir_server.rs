//! A FHIR server for tests: real HTTP on 127.0.0.1, FHIR transaction semantics.
//!
//! - `POST {base}` with a transaction Bundle: all entries or none. A Device `PUT` stores the
//!   resource under its id. An Observation `POST` with `ifNoneExist: identifier=S|V` is a
//!   conditional create: it creates only when no Observation has that identifier
//!   (`201 Created`), else it answers `200 OK` and creates nothing. A `POST` without
//!   `ifNoneExist` always creates, and a second create of the same identifier is counted
//!   as a duplicate (the gateway must never cause one).
//! - A configurable rule rejects entries (poison): the whole transaction fails with `400`
//!   and an OperationOutcome whose issues name the entries (`Bundle.entry[i]`).
//! - Modes: answer normally, answer `503` with `Retry-After`, or require a bearer token.
//! - [`FhirServer::stop`] closes the listener, so connections are refused until it is
//!   started again on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A rule that rejects an Observation with a reason.
pub type PoisonRule = fn(&Value) -> Option<String>;

/// How the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Process transactions.
    Normal,
    /// Answer 503 with this Retry-After (seconds).
    Unavailable {
        /// The Retry-After value.
        retry_after_secs: u64,
    },
}

/// What the server has seen and stored.
#[derive(Debug, Default)]
pub struct Store {
    /// Observations in creation order.
    pub observations: Vec<Value>,
    /// identifier (`system|value`) → index into `observations`.
    pub by_identifier: HashMap<String, usize>,
    /// Devices by id.
    pub devices: HashMap<String, Value>,
    /// Creates of an identifier that already existed (must stay 0).
    pub duplicate_creates: u64,
    /// Conditional creates that found an existing Observation (retries).
    pub conditional_hits: u64,
    /// Transaction requests received.
    pub requests: u64,
    /// Transactions rejected with 400.
    pub rejected: u64,
    /// Requests answered 503.
    pub unavailable: u64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: u64,
}

struct Inner {
    store: Store,
    mode: Mode,
    poison: Option<PoisonRule>,
    token: Option<String>,
}

/// Shared state; survives [`FhirServer::stop`] and a restart.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running server.
pub struct FhirServer {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn identifier_key(obs: &Value) -> Option<String> {
    let i = &obs["identifier"][0];
    Some(format!(
        "{}|{}",
        i["system"].as_str()?,
        i["value"].as_str()?
    ))
}

fn outcome(issues: Vec<(usize, String)>) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.into_iter().map(|(i, why)| json!({
            "severity": "error",
            "code": "invalid",
            "diagnostics": why,
            "expression": [format!("Bundle.entry[{i}].resource")],
        })).collect::<Vec<_>>()
    })
}

fn fhir(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/fhir+json"),
    );
    r
}

async fn transaction(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock();
    inner.store.requests += 1;
    if let Some(token) = &inner.token {
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}"));
        if !ok {
            inner.store.unauthorized += 1;
            return fhir(StatusCode::UNAUTHORIZED, outcome(vec![]));
        }
    }
    if let Mode::Unavailable { retry_after_secs } = inner.mode {
        inner.store.unavailable += 1;
        let mut r = fhir(StatusCode::SERVICE_UNAVAILABLE, outcome(vec![]));
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after_secs));
        return r;
    }
    let bundle: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            inner.store.rejected += 1;
            return fhir(
                StatusCode::BAD_REQUEST,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "structure", "diagnostics": e.to_string()}]}),
            );
        }
    };
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
        inner.store.rejected += 1;
        return fhir(
            StatusCode::BAD_REQUEST,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "expected a transaction Bundle"}]}),
        );
    }
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    // Validate everything first: a transaction is all or nothing.
    let mut issues = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let r = &e["resource"];
        match (r["resourceType"].as_str(), e["request"]["method"].as_str()) {
            (Some("Device"), Some("PUT")) if r["id"].is_string() => {}
            (Some("Observation"), Some("POST")) => {
                if identifier_key(r).is_none() {
                    issues.push((i, "Observation without identifier".to_string()));
                } else if let Some(why) = inner.poison.and_then(|rule| rule(r)) {
                    issues.push((i, why));
                }
            }
            _ => issues.push((i, "unsupported entry".to_string())),
        }
    }
    if !issues.is_empty() {
        inner.store.rejected += 1;
        return fhir(StatusCode::BAD_REQUEST, outcome(issues));
    }
    let mut responses = Vec::with_capacity(entries.len());
    for e in &entries {
        let r = &e["resource"];
        if r["resourceType"] == "Device" {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let existed = inner.store.devices.insert(id.clone(), r.clone()).is_some();
            responses.push(json!({"response": {"status": if existed { "200 OK" } else { "201 Created" }, "location": format!("Device/{id}")}}));
            continue;
        }
        let key = identifier_key(r).unwrap_or_default();
        let conditional = e["request"]["ifNoneExist"].as_str();
        let exists = inner.store.by_identifier.contains_key(&key);
        if exists && conditional.is_some_and(|c| c == format!("identifier={key}")) {
            inner.store.conditional_hits += 1;
            responses.push(json!({"response": {"status": "200 OK"}}));
            continue;
        }
        if exists {
            inner.store.duplicate_creates += 1;
        }
        let index = inner.store.observations.len();
        inner.store.observations.push(r.clone());
        inner.store.by_identifier.insert(key, index);
        responses.push(json!({"response": {"status": "201 Created", "location": format!("Observation/{index}")}}));
    }
    fhir(
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "transaction-response", "entry": responses}),
    )
}

impl FhirServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let shared = Shared(Arc::new(Mutex::new(Inner {
            store: Store::default(),
            mode: Mode::Normal,
            poison: None,
            token: None,
        })));
        Self::serve(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            shared,
        )
        .await
    }

    async fn serve(addr: SocketAddr, shared: Shared) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/", post(transaction))
            .route("/fhir", post(transaction))
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The base URL to configure in the gateway.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening (connections are refused); the stored data is kept.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Listens again on the same port, with the same data.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let again = Self::serve(self.addr, self.shared.clone()).await?;
        *self = again;
        Ok(())
    }

    /// Changes how the server answers.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Rejects Observations for which `rule` returns a reason.
    pub fn set_poison(&self, rule: Option<PoisonRule>) {
        self.shared.lock().poison = rule;
    }

    /// Requires `Authorization: Bearer <token>`.
    pub fn require_token(&self, token: Option<&str>) {
        self.shared.lock().token = token.map(str::to_string);
    }

    /// Runs `f` on the stored data.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.shared.lock().store)
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
