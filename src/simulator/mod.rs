//! An in-memory authentik that answers the Captcha Stage API as the real one
//! does (recorded from 2025.12.4), served on a loopback port. The demo, the
//! tests and the benchmarks share it.
//!
//! - `store`: the data and the write semantics (validation, coercion,
//!   trimming, write-only `private_key`, PUT keeping omitted fields).
//! - [`routes`]: the HTTP behaviour (routing with the required trailing slash,
//!   406 before auth, 403 without `WWW-Authenticate`, 415, pagination).
//! - [`fault`]: injected faults and request counts; some (`LostAnswer`,
//!   `HangAfterProcessing`, `Truncated`) make the write and then lose its answer.
//! - [`provider`]: a fake captcha provider's `siteverify`, for key checks.
//!
//! Served by hyper's HTTP/1 connection driver around an axum router rather than
//! `axum::serve`, because a [`FaultKind::Reset`] must close the connection
//! without any answer, which only the connection level can do.
//!
//! The state sits behind a `std::sync::Mutex`, not a tokio one: no `.await`
//! happens while it is held.

mod events;
pub(crate) mod fault;
pub mod provider;
pub(crate) mod routes;
mod store;

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use events::Actor;
pub use fault::{Fault, FaultKind, LatencyProfile, RequestCounts};

use crate::kinds::captcha::{FIELDS, LiveStage, StageFields};
use crate::kinds::field;
use events::{Change, EventLog, ModelRef};
use store::{CaptchaRecord, FlowBinding, FlowRecord, OtherRecord, Store};

/// How the simulator starts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub addr: SocketAddr,
    /// The version `/admin/version/` reports; decides `request_content_type`.
    pub version: String,
    /// The one bearer token accepted.
    pub token: String,
    /// Added before every answer.
    pub latency: Duration,
    pub default_page_size: usize,
    pub max_page_size: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            version: "2025.12.4".to_owned(),
            token: "simulator-token".to_owned(),
            latency: Duration::ZERO,
            default_page_size: 20,
            max_page_size: 100,
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    counts: Mutex<RequestCounts>,
    faults: Mutex<Vec<Fault>>,
    latency: Mutex<LatencyProfile>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the data half-written in a
    // way that matters to a simulator; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running simulator. Cloning shares it.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

/// Starts serving on `config.addr` (port 0 picks a free one).
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        store: Mutex::new(Store {
            version: config.version,
            token: config.token,
            default_page_size: config.default_page_size.max(1),
            max_page_size: config.max_page_size.max(1),
            captcha: Vec::new(),
            others: Vec::new(),
            flows: Vec::new(),
            bindings: Vec::new(),
            events: EventLog::default(),
        }),
        counts: Mutex::new(RequestCounts::default()),
        faults: Mutex::new(Vec::new()),
        latency: Mutex::new(LatencyProfile::uniform(config.latency)),
    });
    let cancel = CancellationToken::new();
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    tokio::spawn(accept_loop(listener, router, cancel.clone()));
    tracing::debug!(%addr, "simulator listening");
    Ok(SimHandle {
        shared,
        addr,
        cancel,
    })
}

impl SimHandle {
    /// The install's root, e.g. `http://127.0.0.1:PORT` (no `/api/v3`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a captcha stage directly (no request counted).
    pub fn seed_captcha(&self, fields: StageFields, private_key: &str) -> Uuid {
        let uuid = Uuid::new_v4();
        let mut fields = fields.normalized();
        field::fill_absent(&FIELDS, &mut fields);
        lock(&self.shared.store).captcha.push(CaptchaRecord {
            uuid,
            fields,
            private_key: private_key.trim().to_owned(),
        });
        uuid
    }

    /// Adds a stage of another type holding `name` (e.g. component
    /// `ak-stage-identification-form`).
    pub fn seed_other_stage(&self, name: &str, component: &str) -> Uuid {
        self.seed_stage_of_type(name, component, None)
    }

    /// Adds an identification stage that embeds the captcha stage `captcha`
    /// (its `captcha_stage`): `used_by` lists it (`set_null`), and deleting
    /// the captcha sets it to null.
    pub fn seed_identification_stage(&self, name: &str, captcha: Option<Uuid>) -> Uuid {
        self.seed_stage_of_type(name, store::IDENTIFICATION_COMPONENT, captcha)
    }

    fn seed_stage_of_type(&self, name: &str, component: &str, captcha: Option<Uuid>) -> Uuid {
        let uuid = Uuid::new_v4();
        lock(&self.shared.store).others.push(OtherRecord {
            uuid,
            name: name.trim().to_owned(),
            component: component.to_owned(),
            captcha_stage: captcha,
            // authentik's default identification stage identifies by both.
            user_fields: if component == store::IDENTIFICATION_COMPONENT {
                vec!["email".into(), "username".into()]
            } else {
                Vec::new()
            },
        });
        uuid
    }

    /// Adds a flow (name and slug `slug`). Returns its uuid.
    pub fn seed_flow(&self, slug: &str, title: &str) -> Uuid {
        let uuid = Uuid::new_v4();
        lock(&self.shared.store).flows.push(FlowRecord {
            uuid,
            ptr: Uuid::new_v4(),
            name: slug.to_owned(),
            slug: slug.to_owned(),
            title: title.to_owned(),
        });
        uuid
    }

    /// Binds a stage into `flow` at `order`: fills the stage's `flow_set` and
    /// `used_by`. Returns the binding's uuid.
    pub fn bind(&self, flow: Uuid, stage: Uuid, order: i64) -> Uuid {
        let binding = FlowBinding::new(flow, stage, order);
        let binding_uuid = binding.binding_uuid;
        lock(&self.shared.store).bindings.push(binding);
        binding_uuid
    }

    /// Binds a captcha stage to a new flow (`slug`) at `order`. Returns the
    /// flow's uuid.
    pub fn seed_flow_binding(&self, stage: Uuid, slug: &str, title: &str, order: i64) -> Uuid {
        let flow = self.seed_flow(slug, title);
        self.bind(flow, stage, order);
        flow
    }

    /// The bindings of `flow`, as `(stage, order)`.
    pub fn bindings_of_flow(&self, flow: Uuid) -> Vec<(Uuid, i64)> {
        lock(&self.shared.store)
            .bindings
            .iter()
            .filter(|b| b.flow == flow)
            .map(|b| (b.stage, b.order))
            .collect()
    }

    /// Every binding of `stage`, as `(binding, flow, order)`.
    pub fn bindings_of_stage(&self, stage: Uuid) -> Vec<(Uuid, Uuid, i64)> {
        lock(&self.shared.store)
            .bindings
            .iter()
            .filter(|b| b.stage == stage)
            .map(|b| (b.binding_uuid, b.flow, b.order))
            .collect()
    }

    /// Removes a binding out of band, as someone in the UI would.
    pub fn unbind(&self, binding: Uuid) -> bool {
        let mut store = lock(&self.shared.store);
        let before = store.bindings.len();
        store.bindings.retain(|b| b.binding_uuid != binding);
        before != store.bindings.len()
    }

    /// An unbind in authentik's UI by `actor`, logged as `model_deleted` of
    /// the binding.
    pub fn unbind_as(&self, actor: &Actor, binding: Uuid) -> bool {
        let mut store = lock(&self.shared.store);
        let Some(order) = store
            .bindings
            .iter()
            .find(|b| b.binding_uuid == binding)
            .map(|b| b.order)
        else {
            return false;
        };
        store.bindings.retain(|b| b.binding_uuid != binding);
        let model = ModelRef::flow_stage_binding(binding, &format!("Flow-stage binding #{order}"));
        store.events.record_ui(actor, Change::Deleted, model);
        true
    }

    /// Moves a binding to another order out of band.
    pub fn set_binding_order(&self, binding: Uuid, order: i64) {
        let mut store = lock(&self.shared.store);
        if let Some(b) = store
            .bindings
            .iter_mut()
            .find(|b| b.binding_uuid == binding)
        {
            b.order = order;
        }
    }

    /// Sets an identification stage's `captcha_stage` out of band.
    pub fn embed(&self, identification_stage: Uuid, captcha: Option<Uuid>) {
        let mut store = lock(&self.shared.store);
        if let Some(o) = store
            .others
            .iter_mut()
            .find(|o| o.uuid == identification_stage)
        {
            o.captcha_stage = captcha;
        }
    }

    /// An identification stage's `user_fields`; `None` if no such stage.
    pub fn user_fields_of(&self, identification_stage: Uuid) -> Option<Vec<String>> {
        lock(&self.shared.store)
            .others
            .iter()
            .find(|o| o.uuid == identification_stage)
            .map(|o| o.user_fields.clone())
    }

    /// An identification stage's `captcha_stage`; `None` if no such stage.
    pub fn captcha_of_identification_stage(&self, uuid: Uuid) -> Option<Option<Uuid>> {
        lock(&self.shared.store)
            .others
            .iter()
            .find(|o| o.uuid == uuid)
            .map(|o| o.captcha_stage)
    }

    /// Every captcha stage as a client of this version reads it.
    pub fn captcha_stages(&self) -> Vec<LiveStage> {
        lock(&self.shared.store).live_stages()
    }

    /// The private key last written to a stage (tests only).
    pub fn private_key_of(&self, uuid: Uuid) -> Option<String> {
        lock(&self.shared.store)
            .find(uuid)
            .map(|r| r.private_key.clone())
    }

    /// An out-of-band edit, as someone in the UI would make it.
    pub fn edit(&self, uuid: Uuid, f: impl FnOnce(&mut StageFields)) {
        let mut store = lock(&self.shared.store);
        if let Some(rec) = store.captcha.iter_mut().find(|r| r.uuid == uuid) {
            f(&mut rec.fields);
            field::fill_absent(&FIELDS, &mut rec.fields);
        }
    }

    /// Removes a stage out of band.
    pub fn delete(&self, uuid: Uuid) -> bool {
        lock(&self.shared.store).delete(uuid)
    }

    /// An edit in authentik's UI by `actor`: the change, and the event
    /// authentik logs for it (`model_updated` with the user, address, user
    /// agent and time). [`SimHandle::edit`] changes a stage and logs nothing,
    /// as if the event had expired.
    pub fn edit_as(&self, actor: &Actor, uuid: Uuid, f: impl FnOnce(&mut StageFields)) {
        let mut store = lock(&self.shared.store);
        let Some(rec) = store.captcha.iter_mut().find(|r| r.uuid == uuid) else {
            return;
        };
        f(&mut rec.fields);
        field::fill_absent(&FIELDS, &mut rec.fields);
        let model = ModelRef::captcha_stage(uuid, &rec.fields.name);
        store.events.record_ui(actor, Change::Updated, model);
    }

    /// A delete in authentik's UI by `actor`, logged as `model_deleted`.
    pub fn delete_as(&self, actor: &Actor, uuid: Uuid) -> bool {
        let mut store = lock(&self.shared.store);
        let Some(name) = store.find(uuid).map(|r| r.fields.name.clone()) else {
            return false;
        };
        store.delete(uuid);
        let model = ModelRef::captcha_stage(uuid, &name);
        store.events.record_ui(actor, Change::Deleted, model);
        true
    }

    /// Whether the token may read the event log; when not, `events/events/`
    /// answers 403 as authentik does for a token without `view_event`.
    pub fn set_event_log_readable(&self, readable: bool) {
        lock(&self.shared.store).events.readable = readable;
    }

    /// Forgets every event, as authentik does when they expire.
    pub fn expire_events(&self) {
        lock(&self.shared.store).events.clear();
    }

    /// How many events the log holds.
    pub fn event_count(&self) -> usize {
        lock(&self.shared.store).events.len()
    }

    pub fn request_counts(&self) -> RequestCounts {
        lock(&self.shared.counts).clone()
    }

    pub fn reset_counts(&self) {
        *lock(&self.shared.counts) = RequestCounts::default();
    }

    /// Queues a fault; faults hit matching requests in queue order.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// The same latency before every answer.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.shared.latency) = LatencyProfile::uniform(d);
    }

    /// A latency per kind of request, e.g. a real server's.
    pub fn set_latency_profile(&self, profile: LatencyProfile) {
        *lock(&self.shared.latency) = profile;
    }

    pub fn set_version(&self, v: &str) {
        lock(&self.shared.store).version = v.to_owned();
    }

    /// Stops accepting and drops open connections.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// The address a request came from.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// Marks a response the connection driver must replace by closing the socket.
#[derive(Clone, Copy)]
struct ResetConnection;

async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    // The client's address, for the events writes log.
                    req.extensions_mut().insert(Peer(peer));
                    async move {
                        let response = match hyper::service::Service::call(&service, req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        if response.extensions().get::<ResetConnection>().is_some() {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "injected connection reset",
                            ));
                        }
                        Ok::<_, std::io::Error>(response)
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// Upper bound on request bodies (authentik's own limit is larger; a captcha
/// stage is a few hundred bytes).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

async fn handle(
    State(shared): State<Arc<Shared>>,
    request: Request<AxumBody>,
) -> Response<AxumBody> {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let route = routes::Route::resolve(&path);
    let latency = lock(&shared.latency).for_request(&method, route.pattern(), parts.uri.query());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    lock(&shared.counts).record(&method, route.pattern());
    let fault = fault::take(&mut lock(&shared.faults), &method, &path);
    match &fault {
        Some(FaultKind::Reset) => return reset_connection(),
        Some(FaultKind::Hang) => std::future::pending::<()>().await,
        Some(FaultKind::Status {
            status,
            retry_after,
            body,
        }) => return status_fault(*status, *retry_after, body),
        Some(FaultKind::EmptyHtml405) => {
            return into_response(&routes::Reply::internal_error(), false);
        }
        Some(FaultKind::StreamedDetail { status, bytes }) => {
            return streamed_detail(*status, *bytes);
        }
        Some(
            FaultKind::Truncated
            | FaultKind::LostAnswer
            | FaultKind::HangAfterProcessing
            | FaultKind::SlowAnswer(_),
        )
        | None => {}
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return into_response(&routes::Reply::internal_error(), false),
    };
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let accept = header(header::ACCEPT);
    let authorization = header(header::AUTHORIZATION);
    let content_type = header(header::CONTENT_TYPE);
    let user_agent = header(header::USER_AGENT).unwrap_or_default();
    let client_ip = parts
        .extensions
        .get::<Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default();
    let incoming = routes::Incoming {
        method: &method,
        path: &path,
        query: parts.uri.query(),
        accept: accept.as_deref(),
        authorization: authorization.as_deref(),
        content_type: content_type.as_deref(),
        body: &body,
        user_agent: &user_agent,
        client_ip: &client_ip,
    };
    let reply = routes::answer(&mut lock(&shared.store), &incoming);
    match fault {
        Some(FaultKind::LostAnswer) => return reset_connection(),
        Some(FaultKind::HangAfterProcessing) => std::future::pending::<()>().await,
        Some(FaultKind::SlowAnswer(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    into_response(&reply, fault == Some(FaultKind::Truncated))
}

/// A response the connection driver replaces by closing the socket.
fn reset_connection() -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::empty());
    response.extensions_mut().insert(ResetConnection);
    response
}

fn status_fault(status: u16, retry_after: Option<u64>, body: &str) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::from(body.to_owned()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if serde_json::from_str::<serde_json::Value>(body).is_ok() {
        "application/json; charset=utf-8"
    } else {
        "text/html; charset=utf-8"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn into_response(reply: &routes::Reply, truncate: bool) -> Response<AxumBody> {
    let (content_type, bytes) = reply.encode();
    let full_len = bytes.len();
    let body = if truncate {
        AxumBody::new(Truncated {
            half: Some(Bytes::from(bytes[..full_len / 2].to_vec())),
        })
    } else {
        AxumBody::from(bytes)
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Some(allow) = reply.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept-Language, Cookie"),
    );
    if truncate {
        // The full length is announced; half is sent, then the connection breaks.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
    }
    response
}

/// `{"detail": "xxx…"}`, chunked, `bytes` long or endless.
fn streamed_detail(status: u16, bytes: Option<u64>) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::new(StreamedDetail {
        sent: 0,
        total: bytes,
        closed: false,
    }));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The body of [`FaultKind::StreamedDetail`]: generated chunk by chunk, so the
/// simulator holds 64 KiB of it at most.
struct StreamedDetail {
    sent: u64,
    total: Option<u64>,
    closed: bool,
}

impl http_body::Body for StreamedDetail {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        const OPEN: &[u8] = b"{\"detail\": \"";
        const CLOSE: &[u8] = b"\"}";
        const CHUNK: u64 = 64 * 1024;
        if self.closed {
            return Poll::Ready(None);
        }
        let mut chunk = Vec::new();
        if self.sent == 0 {
            chunk.extend_from_slice(OPEN);
        }
        let room = match self.total {
            Some(total) => {
                total.saturating_sub(self.sent + CLOSE.len() as u64 + chunk.len() as u64)
            }
            None => CHUNK,
        };
        let fill = room.min(CHUNK) as usize;
        chunk.resize(chunk.len() + fill, b'x');
        if self.total.is_some() && fill as u64 == room {
            chunk.extend_from_slice(CLOSE);
            self.closed = true;
        }
        self.sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
    }
}

/// A body that yields its first half and then fails, so the connection is
/// closed mid-body.
struct Truncated {
    half: Option<Bytes>,
}

impl http_body::Body for Truncated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.half.take() {
            Some(half) => Poll::Ready(Some(Ok(http_body::Frame::data(half)))),
            None => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "injected truncated body",
            )))),
        }
    }
}
