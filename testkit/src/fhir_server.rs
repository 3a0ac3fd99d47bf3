//! A FHIR server for tests: real HTTP on 127.0.0.1, FHIR transaction semantics.
//!
//! - `POST {base}` with a transaction Bundle: all entries or none. A Device `PUT` stores the
//!   resource under its id. An Observation `POST` with `ifNoneExist: identifier=S|V` is a
//!   conditional create: it creates only when no Observation has that identifier
//!   (`201 Created`), else it answers `200 OK` and creates nothing. A `POST` without
//!   `ifNoneExist` always creates, and a second create of the same identifier is counted
//!   as a duplicate (the gateway must never cause one).
//! - A `fullUrl` that appears twice in one transaction fails it with `400`, naming the
//!   second entry (or not, in [`Rejections::Unnamed`]), as real servers refuse it.
//! - A configurable rule rejects entries (poison): the whole transaction fails with `400`
//!   and an OperationOutcome whose issues name the entries (`Bundle.entry[i]`), or, in
//!   [`Rejections::Unnamed`], name none (as many real servers answer).
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

/// What a `400` for invalid entries says about them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Rejections {
    /// Each issue names its entry (`expression: ["Bundle.entry[i].resource"]`).
    #[default]
    Named,
    /// The issues carry the reasons but no `expression` and no `location`: the client
    /// cannot tell which entries are at fault.
    Unnamed,
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
    /// TLS handshakes that failed (e.g. no client certificate where one is required).
    pub tls_failures: u64,
}

struct Inner {
    store: Store,
    /// Keep whole Observations (true) or only their identifiers (benchmarks).
    keep_resources: bool,
    mode: Mode,
    poison: Option<PoisonRule>,
    rejections: Rejections,
    token: Option<String>,
    oauth: crate::oauth::OAuthState,
    /// The base URL clients use (for the token URL in SMART discovery and `aud`).
    base: String,
}

/// Shared state; survives [`FhirServer::stop`] and a restart.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn new() -> Self {
        Shared(Arc::new(Mutex::new(Inner {
            store: Store::default(),
            keep_resources: true,
            mode: Mode::Normal,
            poison: None,
            rejections: Rejections::Named,
            token: None,
            oauth: Default::default(),
            base: String::new(),
        })))
    }

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
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Accepts TLS connections and serves `app` on each, until `stop` fires.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    mut stop: oneshot::Receiver<()>,
    shared: Shared,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(stream) => {
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                }
                Err(_) => shared.lock().store.tls_failures += 1,
            }
        });
    }
}

async fn smart_configuration(AxumState(shared): AxumState<Shared>) -> Response {
    let base = shared.lock().base.clone();
    let body = json!({
        "token_endpoint": format!("{base}/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/Observation.write", "system/Device.write"],
    });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

async fn token(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    let mut inner = shared.lock();
    let token_url = format!("{}/token", inner.base);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let (status, body) = inner.oauth.token(&form, authorization, &token_url);
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body.to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// A transaction Bundle as received; resources stay JSON text until needed.
#[derive(serde::Deserialize)]
struct InBundle {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    entry: Vec<InEntry>,
}

#[derive(serde::Deserialize)]
struct InEntry {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    resource: Box<serde_json::value::RawValue>,
    request: InRequest,
}

#[derive(serde::Deserialize)]
struct InRequest {
    method: String,
    #[serde(rename = "ifNoneExist")]
    if_none_exist: Option<String>,
}

/// What the server needs of a resource; serde skips the rest.
#[derive(Default)]
struct Head {
    resource_type: String,
    id: Option<String>,
    /// The first identifier as `system|value`.
    identifier: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Ident {
            system: Option<String>,
            value: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "resourceType", default)]
            resource_type: String,
            id: Option<String>,
            #[serde(default)]
            identifier: Vec<Ident>,
        }
        let raw = Raw::deserialize(d)?;
        let identifier = raw
            .identifier
            .into_iter()
            .next()
            .and_then(|i| Some(format!("{}|{}", i.system?, i.value?)));
        Ok(Head {
            resource_type: raw.resource_type,
            id: raw.id,
            identifier,
        })
    }
}

fn outcome(issues: Vec<(usize, String)>) -> Value {
    rejection(issues, Rejections::Named)
}

/// An OperationOutcome with an issue per invalid entry, naming it or not.
fn rejection(issues: Vec<(usize, String)>, rejections: Rejections) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.into_iter().map(|(i, why)| match rejections {
            Rejections::Named => json!({
                "severity": "error",
                "code": "invalid",
                "diagnostics": why,
                "expression": [format!("Bundle.entry[{i}].resource")],
            }),
            Rejections::Unnamed => json!({"severity": "error", "code": "invalid", "diagnostics": why}),
        }).collect::<Vec<_>>()
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
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let static_ok = inner
        .token
        .as_ref()
        .is_none_or(|t| authorization == Some(format!("Bearer {t}").as_str()));
    let oauth_ok = inner.oauth.config.is_none() || inner.oauth.accepts(authorization);
    if !(static_ok && oauth_ok) {
        inner.store.unauthorized += 1;
        return fhir(StatusCode::UNAUTHORIZED, outcome(vec![]));
    }
    if let Mode::Unavailable { retry_after_secs } = inner.mode {
        inner.store.unavailable += 1;
        let mut r = fhir(StatusCode::SERVICE_UNAVAILABLE, outcome(vec![]));
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after_secs));
        return r;
    }
    let bundle: InBundle = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            inner.store.rejected += 1;
            return fhir(
                StatusCode::BAD_REQUEST,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "structure", "diagnostics": e.to_string()}]}),
            );
        }
    };
    if bundle.resource_type != "Bundle" || bundle.kind != "transaction" {
        inner.store.rejected += 1;
        return fhir(
            StatusCode::BAD_REQUEST,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "expected a transaction Bundle"}]}),
        );
    }
    // Validate everything first: a transaction is all or nothing.
    let mut issues = Vec::new();
    let mut heads = Vec::with_capacity(bundle.entry.len());
    let mut full_urls = std::collections::HashSet::new();
    for (i, e) in bundle.entry.iter().enumerate() {
        // As real servers do (HAPI: "multiple resources with ID"), a fullUrl twice in
        // one transaction fails it.
        if let Some(url) = &e.full_url {
            if !full_urls.insert(url.as_str()) {
                issues.push((i, format!("fullUrl {url} is not unique in the Bundle")));
            }
        }
        let head: Head = match serde_json::from_str(e.resource.get()) {
            Ok(h) => h,
            Err(err) => {
                issues.push((i, format!("invalid resource: {err}")));
                heads.push(Head::default());
                continue;
            }
        };
        match (head.resource_type.as_str(), e.request.method.as_str()) {
            ("Device", "PUT") if head.id.is_some() => {}
            ("Observation", "POST") => {
                if head.identifier.is_none() {
                    issues.push((i, "Observation without identifier".to_string()));
                } else if let Some(rule) = inner.poison {
                    let full: Value = serde_json::from_str(e.resource.get()).unwrap_or(Value::Null);
                    if let Some(why) = rule(&full) {
                        issues.push((i, why));
                    }
                }
            }
            _ => issues.push((i, "unsupported entry".to_string())),
        }
        heads.push(head);
    }
    if !issues.is_empty() {
        inner.store.rejected += 1;
        return fhir(StatusCode::BAD_REQUEST, rejection(issues, inner.rejections));
    }
    let mut responses = Vec::with_capacity(bundle.entry.len());
    for (e, head) in bundle.entry.iter().zip(heads) {
        if head.resource_type == "Device" {
            let id = head.id.unwrap_or_default();
            let resource: Value = serde_json::from_str(e.resource.get()).unwrap_or(Value::Null);
            let existed = inner.store.devices.insert(id.clone(), resource).is_some();
            responses.push(json!({"response": {"status": if existed { "200 OK" } else { "201 Created" }, "location": format!("Device/{id}")}}));
            continue;
        }
        let key = head.identifier.unwrap_or_default();
        let exists = inner.store.by_identifier.contains_key(&key);
        if exists
            && e.request
                .if_none_exist
                .as_deref()
                .is_some_and(|c| c == format!("identifier={key}"))
        {
            inner.store.conditional_hits += 1;
            responses.push(json!({"response": {"status": "200 OK"}}));
            continue;
        }
        if exists {
            inner.store.duplicate_creates += 1;
        }
        let index = inner.store.observations.len();
        let kept = if inner.keep_resources {
            serde_json::from_str(e.resource.get()).unwrap_or(Value::Null)
        } else {
            let (system, value) = key.split_once('|').unwrap_or_default();
            json!({"identifier": [{"system": system, "value": value}]})
        };
        inner.store.observations.push(kept);
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
        Self::serve(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            Shared::new(),
            None,
        )
        .await
    }

    /// Starts a server speaking HTTPS with `tls` (see [`crate::tls::server_config`]).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::serve(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            Shared::new(),
            Some(tls),
        )
        .await
    }

    async fn serve(
        addr: SocketAddr,
        shared: Shared,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        shared.lock().base = match tls {
            None => format!("http://{addr}"),
            Some(_) => format!("https://localhost:{}", addr.port()),
        };
        let app = Router::new()
            .route("/", post(transaction))
            .route("/fhir", post(transaction))
            .route(
                "/fhir/.well-known/smart-configuration",
                axum::routing::get(smart_configuration),
            )
            .route("/token", post(token))
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = match tls.clone() {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            }),
            Some(config) => tokio::spawn(serve_tls(listener, app, config, stop_rx, shared.clone())),
        };
        Ok(Self {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
            tls,
        })
    }

    /// The base URL to configure in the gateway.
    pub fn base_url(&self) -> String {
        match self.tls {
            None => format!("http://{}/fhir", self.addr),
            Some(_) => format!("https://localhost:{}/fhir", self.addr.port()),
        }
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
        let again = Self::serve(self.addr, self.shared.clone(), self.tls.clone()).await?;
        *self = again;
        Ok(())
    }

    /// Keeps only each Observation's identifier instead of the whole resource (for
    /// benchmarks, so the server's memory does not dominate the measurement).
    pub fn keep_resources(&self, keep: bool) {
        self.shared.lock().keep_resources = keep;
    }

    /// Changes how the server answers.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Rejects Observations for which `rule` returns a reason.
    pub fn set_poison(&self, rule: Option<PoisonRule>) {
        self.shared.lock().poison = rule;
    }

    /// Whether a rejection names the invalid entries (the default) or not.
    pub fn set_rejections(&self, rejections: Rejections) {
        self.shared.lock().rejections = rejections;
    }

    /// Turns the authorization server on: the FHIR endpoint then accepts only the access
    /// tokens it issued (and not after they expire).
    pub fn enable_oauth(&self, config: crate::oauth::OAuthConfig) {
        self.shared.lock().oauth.config = Some(config);
    }

    /// Forgets every issued token (the next FHIR request with one gets a 401).
    pub fn revoke_tokens(&self) {
        self.shared.lock().oauth.issued.clear();
    }

    /// Runs `f` on the authorization server's state.
    pub fn with_oauth<T>(&self, f: impl FnOnce(&crate::oauth::OAuthState) -> T) -> T {
        f(&self.shared.lock().oauth)
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.shared.lock().base)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_rejection_keeps_the_reasons_and_names_no_entry() {
        let issues = || vec![(3, "bad unit".to_string())];
        let named = rejection(issues(), Rejections::Named);
        assert_eq!(
            named["issue"][0]["expression"][0],
            "Bundle.entry[3].resource"
        );
        let unnamed = rejection(issues(), Rejections::Unnamed);
        assert_eq!(unnamed["issue"][0]["diagnostics"], "bad unit");
        let issue = unnamed["issue"][0].as_object().unwrap();
        assert!(!issue.contains_key("expression") && !issue.contains_key("location"));
    }
}
