//! A fake captcha provider: a loopback `siteverify` endpoint that knows one
//! good secret and one site key (more with [`ProviderHandle::add_site`]), and answers as reCAPTCHA, hCaptcha and
//! Turnstile do (`{"success": false, "error-codes": [...]}`). The key checks'
//! tests and the demo share it.
//!
//! What it answers, in this order (the providers check the secret first):
//! - no `secret`: `missing-input-secret`; another secret: `invalid-input-secret`;
//! - a `sitekey` that is not its own (hCaptcha's check): `sitekey-secret-mismatch`;
//! - otherwise the response token is refused (`missing-input-response` or
//!   `invalid-input-response`): no token is ever valid here, unless the
//!   [`ProviderMode::AcceptAll`] mode plays a test key that passes everything.
//!
//! The body is read as JSON when the request says `Content-Type:
//! application/json`, as a form otherwise. Every request is counted and kept
//! (method, URI, content type, fields) so tests can see what was sent where.
//! It can also be told to hang, answer 500, or answer an HTML page.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path the fake provider answers on.
pub(crate) const SITEVERIFY_PATH: &str = "/siteverify";

/// How the fake provider answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderMode {
    /// As the providers do: check the secret, the site key, then refuse the token.
    Answer,
    /// `{"success": true}` to anything, as the providers' always-pass test keys do.
    AcceptAll,
    /// Never answer.
    Hang,
    /// `500 Internal Server Error` with an empty body.
    ServerError,
    /// `200` with an HTML page (a captive portal, a wrong `api_url`).
    Html,
}

/// One request as the fake provider received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub content_type: Option<String>,
    /// The body's fields (form or JSON strings); `None` when it could not be read.
    pub fields: Option<BTreeMap<String, String>>,
}

struct Shared {
    /// (secret, site key) of each site the provider knows.
    sites: Mutex<Vec<(String, String)>>,
    mode: Mutex<ProviderMode>,
    seen: Mutex<Vec<SeenRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running fake provider. Cloning shares it; [`ProviderHandle::shutdown`] stops it.
#[derive(Clone)]
pub struct ProviderHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

/// Starts a fake provider on a free loopback port that accepts `secret` with
/// the site key `site_key`.
pub async fn start(secret: &str, site_key: &str) -> std::io::Result<ProviderHandle> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        sites: Mutex::new(vec![(secret.to_owned(), site_key.to_owned())]),
        mode: Mutex::new(ProviderMode::Answer),
        seen: Mutex::new(Vec::new()),
    });
    let cancel = CancellationToken::new();
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    tracing::debug!(%addr, "fake captcha provider listening");
    Ok(ProviderHandle {
        shared,
        addr,
        cancel,
    })
}

impl ProviderHandle {
    /// The `siteverify` URL to put in a stage's `api_url`.
    pub fn siteverify_url(&self) -> String {
        format!("http://{}{SITEVERIFY_PATH}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `secret` a good secret too, for the site key `site_key`.
    pub(crate) fn add_site(&self, secret: &str, site_key: &str) {
        lock(&self.shared.sites).push((secret.to_owned(), site_key.to_owned()));
    }

    pub fn set_mode(&self, mode: ProviderMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.seen).len()
    }

    /// Stops accepting connections.
    pub(crate) fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// Upper bound on a request body: a probe is a few hundred bytes.
const BODY_LIMIT: usize = 64 * 1024;

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let fields = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => parse_fields(content_type.as_deref(), &bytes),
        Err(_) => None,
    };
    lock(&shared.seen).push(SeenRequest {
        method: method.as_str().to_owned(),
        uri: uri.to_string(),
        content_type,
        fields: fields.clone(),
    });
    let mode = *lock(&shared.mode);
    match mode {
        ProviderMode::Hang => std::future::pending().await,
        ProviderMode::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        ProviderMode::Html => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!doctype html><html><body><h1>Welcome</h1></body></html>",
        )
            .into_response(),
        ProviderMode::AcceptAll => verdict(true, &[]),
        ProviderMode::Answer if method != Method::POST || uri.path() != SITEVERIFY_PATH => {
            StatusCode::NOT_FOUND.into_response()
        }
        ProviderMode::Answer => match fields {
            None => verdict(false, &["bad-request"]),
            Some(fields) => verdict(false, &[answer(&shared, &fields)]),
        },
    }
}

/// The one error code a provider gives for these fields.
fn answer(shared: &Shared, fields: &BTreeMap<String, String>) -> &'static str {
    let sites = lock(&shared.sites);
    let secret = match fields.get("secret").map(String::as_str) {
        None | Some("") => return "missing-input-secret",
        Some(secret) => secret,
    };
    let site_keys: Vec<&str> = sites
        .iter()
        .filter(|(good, _)| good == secret)
        .map(|(_, site_key)| site_key.as_str())
        .collect();
    if site_keys.is_empty() {
        return "invalid-input-secret";
    }
    if fields
        .get("sitekey")
        .is_some_and(|site_key| !site_keys.contains(&site_key.as_str()))
    {
        return "sitekey-secret-mismatch";
    }
    match fields.get("response").map(String::as_str) {
        None | Some("") => "missing-input-response",
        Some(_) => "invalid-input-response",
    }
}

fn verdict(success: bool, codes: &[&str]) -> Response {
    let mut body = serde_json::json!({ "success": success });
    if !codes.is_empty() {
        body["error-codes"] = serde_json::json!(codes);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A form or JSON object body as string fields; `None` when it is neither.
fn parse_fields(content_type: Option<&str>, body: &Bytes) -> Option<BTreeMap<String, String>> {
    let is_json = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if is_json {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        Some(
            object
                .iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), text)
                })
                .collect(),
        )
    } else {
        Some(url::form_urlencoded::parse(body).into_owned().collect())
    }
}
