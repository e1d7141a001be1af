//! The HTTP transport to authentik's API, for every kind's endpoints.
//!
//! One [`Client`] per run; cloning is cheap. Every call goes through one retry
//! loop ([`super::retry`]) and one place that turns a status into an
//! [`ApiError`] in the user's words. It knows requests, answers and lists, not
//! kinds: each kind's endpoints are in its own module (the captcha stage's in
//! [`crate::kinds::captcha::api`]). Traps handled here:
//!
//! - the trailing slash is required: a path without it is an HTML 404, so every
//!   route ends with `/`;
//! - an HTML page (404 or even 200) means there is no authentik API at the URL;
//! - a create whose answer was lost may have succeeded: before sending it again
//!   the client looks the name up in the list it posted to
//!   ([`Client::create`]) and returns the object it finds;
//! - redirects are not followed: a POST would silently turn into a GET, and the
//!   token must not follow a redirect to another host;
//! - the token lives in a sensitive header built once; it never reaches a log;
//! - a server may echo the token or a key it was sent (an error detail, a
//!   validation message): every answer passes through the client's
//!   [`Redactor`] (the token, and every key a write of this client sends)
//!   before anything parses or quotes it;
//! - no answer is read past [`MAX_BODY_BYTES`], so a server that sends without
//!   end costs bounded memory;
//! - a list can change while it is paged through: items are kept once per
//!   uuid, and a total that moves between pages means reading it again.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER,
};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::error::{MAX_BODY_BYTES, cut, excerpt, excerpt_of_start};
use super::retry::{RetryPolicy, is_retryable_status, parse_retry_after};
use super::wire::{self, Page, WireVersion};
use super::{ApiError, ClientSettings, ServerVersion};
use crate::secret::{ExposeSecret, PrivateKey, Redactor};
use crate::text::error_chain;

/// Route patterns, as reported to the observer (low cardinality, no uuids).
pub(crate) const ROUTE_VERSION: &str = "/api/v3/admin/version/";

/// Page size asked for when listing: authentik's default cap.
pub(crate) const LIST_PAGE_SIZE: u32 = 100;
/// Pages followed before the answer is deemed broken (a million stages).
const MAX_PAGES: u64 = 10_000;
/// List pages fetched at once after the first: pages of 100 cost authentik
/// about 200 ms (captcha) to 720 ms (every type) each, one worker's time;
/// four at a time cuts the wait without taking over a small install.
pub(crate) const LIST_PAGE_CONCURRENCY: usize = 4;
/// Reads of a list that changed while it was paged through, before giving up.
const MAX_LIST_READS: u32 = 3;

/// A list the client pages through: its path under `/api/v3/` and its route
/// pattern (for the observer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    pub(crate) path: &'static str,
    pub(crate) route: &'static str,
}

/// A list read to its end, page by page, or the reason to read it again.
enum Listed<T> {
    Whole(Vec<Vec<T>>),
    Changed(String),
}

/// `total_pages`, when the server says and it is a sane page count.
pub(crate) fn page_count(p: &wire::Pagination) -> Option<u64> {
    let total = p.total_pages?;
    (total.fract() == 0.0 && total >= 1.0 && total <= MAX_PAGES as f64).then_some(total as u64)
}

/// One HTTP attempt, as the observer sees it (the daemon feeds metrics from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub(crate) method: &'static str,
    /// The route pattern, e.g. `/api/v3/stages/captcha/{uuid}/`.
    pub path: &'static str,
    /// `None` when no response arrived (connect error, timeout, reset).
    pub status: Option<u16>,
    pub(crate) elapsed: Duration,
}

type Observer = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// What a create ended with: the object as authentik answered it.
#[derive(Debug)]
pub(crate) enum Created<T> {
    /// authentik answered the `POST`: the object holds what was sent.
    Confirmed(T),
    /// The answer was lost and the name was found: probably this create, but
    /// another writer may have made it, so what it holds is not known.
    FoundByName(T),
}

/// A connection to one authentik install.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    observer: Option<Observer>,
    retry: RetryPolicy,
    /// Log each retry at WARN (one-shot commands: the user is waiting and
    /// should see why) or at DEBUG (the daemon, which reports a failure once).
    loud_retries: bool,
}

struct Inner {
    http: reqwest::Client,
    /// `<root>/api/v3/`.
    api: Url,
    /// The root for messages, without a trailing slash.
    base: String,
    /// The limits, named in a timeout's message.
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The token and every key sent: never repeated from an answer.
    redactor: Redactor,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// A response as read off the wire.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<Duration>,
    location: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn is_html(&self) -> bool {
        self.content_type.to_ascii_lowercase().contains("text/html")
    }
    fn is_json(&self) -> bool {
        self.content_type.to_ascii_lowercase().contains("json")
    }
    fn empty_html(&self) -> bool {
        self.is_html() && self.body.iter().all(u8::is_ascii_whitespace)
    }
}

/// One logical request.
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    /// The route pattern, for the observer.
    pub(crate) route: &'static str,
    pub(crate) url: Url,
    pub(crate) body: Option<&'a Value>,
}

/// What the retry loop ends with.
enum Executed {
    Answer(Answer, u32),
    /// A create's answer was lost, and the object was found by name.
    Found(Value),
}

/// How to find the object a create made, should its answer be lost: the list
/// it was posted to, filtered by its name.
#[derive(Clone, Copy)]
struct LostCreate<'a> {
    list: List,
    name: &'a str,
}

impl Client {
    /// Builds a client: normalises the URL, enforces the http policy, loads the
    /// CA file. Nothing is contacted yet.
    pub fn new(settings: &ClientSettings) -> Result<Client, ApiError> {
        let root = normalise_url(&settings.url)?;
        check_http_policy(&root, settings.allow_http)?;
        let base = root.as_str().trim_end_matches('/').to_owned();
        let api = root.join("api/v3/").map_err(|e| ApiError::BadUrl {
            url: base.clone(),
            reason: e.to_string(),
        })?;

        let mut auth = HeaderValue::from_str(&format!("Bearer {}", settings.token.expose_secret()))
            .map_err(|_| ApiError::ClientSetup {
                reason: "the API token contains characters that cannot be sent in an HTTP header"
                    .into(),
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("stagesync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| ApiError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ApiError::CaFile {
                    path: path.clone(),
                    reason: format!("not a PEM certificate bundle ({e})"),
                })?;
            if certs.is_empty() {
                return Err(ApiError::CaFile {
                    path: path.clone(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        if settings.insecure_skip_tls_verify {
            tracing::warn!(
                url = %base,
                "TLS CERTIFICATE VERIFICATION IS DISABLED (--insecure-skip-tls-verify): anyone on the network path can read the API token and the private keys; use --ca-file instead"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| ApiError::ClientSetup {
            reason: error_chain(&e),
        })?;
        let redactor = Redactor::default();
        redactor.add(&settings.token);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                api,
                base,
                connect_timeout: settings.connect_timeout,
                request_timeout: settings.request_timeout,
                redactor,
            }),
            observer: None,
            retry: RetryPolicy::default(),
            loud_retries: true,
        })
    }

    /// The normalised root of the install (no `/api/v3`, no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Calls `observer` once per HTTP attempt (retries included).
    pub fn with_observer(mut self, observer: Arc<dyn Fn(&RequestRecord) + Send + Sync>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Replaces the retry numbers (tests and benchmarks shrink the delays).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Never repeats `keys` from an answer (see [`Redactor`]): a write adds its
    /// own key; a caller about to write several adds them all first, so that
    /// an answer to one write cannot show another's key either.
    pub(crate) fn never_repeat<'a>(&self, keys: impl IntoIterator<Item = &'a PrivateKey>) {
        for key in keys {
            self.inner.redactor.add(key);
        }
    }

    /// Logs retries at DEBUG instead of WARN: for the daemon, which logs a
    /// failure when it starts and when it ends, not on every attempt.
    pub(crate) fn with_quiet_retries(mut self) -> Self {
        self.loud_retries = false;
        self
    }

    /// `GET /api/v3/admin/version/`.
    pub async fn version(&self) -> Result<ServerVersion, ApiError> {
        let url = self.endpoint("admin/version/")?;
        let v: WireVersion = self.get_json(url, ROUTE_VERSION).await?;
        ServerVersion::parse(&v.version_current).ok_or_else(|| ApiError::UnexpectedResponse {
            status: 200,
            excerpt: format!(
                "version_current {:?} is not a version",
                crate::text::escape(&v.version_current)
            ),
        })
    }

    /// Reads a whole list, pages of [`LIST_PAGE_SIZE`]. The first page tells
    /// how many there are (`total_pages`); the others are fetched
    /// [`LIST_PAGE_CONCURRENCY`] at a time. A server that does not say
    /// `total_pages` is followed by `pagination.next`, one page at a time.
    ///
    /// The list may change while it is paged through (someone creates or
    /// deletes a stage in the UI): an item then shows up on two pages or on
    /// none. Items are kept once per uuid, and when the total (`count`) differs
    /// between pages, or a page has gone, the list is read again from the
    /// start, at most [`MAX_LIST_READS`] times in all.
    pub(crate) async fn list_every_page<T>(
        &self,
        list: List,
        mut first: Option<Page<T>>,
        uuid: fn(&T) -> Uuid,
    ) -> Result<Vec<T>, ApiError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        for read in 1..=MAX_LIST_READS {
            let first_page = match first.take() {
                Some(page) => page,
                None => self.list_page(list, 1).await?,
            };
            match self.read_rest(list, first_page).await? {
                Listed::Whole(pages) => {
                    let mut seen = std::collections::HashSet::new();
                    let mut items = Vec::new();
                    let mut repeated = 0usize;
                    for item in pages.into_iter().flatten() {
                        if seen.insert(uuid(&item)) {
                            items.push(item);
                        } else {
                            repeated += 1;
                        }
                    }
                    if repeated > 0 {
                        tracing::debug!(
                            path = list.route,
                            repeated,
                            "items listed on two pages (the list shifted while it was read) are kept once"
                        );
                    }
                    return Ok(items);
                }
                Listed::Changed(why) => {
                    tracing::debug!(path = list.route, read, "{why}: reading the list again");
                }
            }
        }
        Err(ApiError::ListKeptChanging {
            route: list.route,
            reads: MAX_LIST_READS,
        })
    }

    /// The pages after `first`, or word that the list changed meanwhile.
    async fn read_rest<T>(&self, list: List, first: Page<T>) -> Result<Listed<T>, ApiError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let count = first.pagination.count;
        let mut pages = Vec::new();
        if first.pagination.next == 0.0 {
            pages.push(first.results);
            return Ok(Listed::Whole(pages));
        }
        let Some(total) = page_count(&first.pagination) else {
            // No `total_pages`: follow `next`, one page at a time.
            let mut next = first.pagination.next;
            pages.push(first.results);
            let mut page: u64 = 1;
            loop {
                if next.fract() != 0.0 || next <= page as f64 || page >= MAX_PAGES {
                    return Err(ApiError::UnexpectedResponse {
                        status: 200,
                        excerpt: format!("pagination.next is {next} on page {page}"),
                    });
                }
                page = next as u64;
                let list_page: Page<T> = self.list_page(list, page).await?;
                next = list_page.pagination.next;
                pages.push(list_page.results);
                if next == 0.0 {
                    return Ok(Listed::Whole(pages));
                }
            }
        };
        pages.push(first.results);
        let mut fetched: Vec<(u64, Page<T>)> = Vec::with_capacity(total as usize);
        let mut wanted = 2..=total;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < LIST_PAGE_CONCURRENCY {
                let Some(number) = wanted.next() else { break };
                let client = self.clone();
                tasks.spawn(async move { (number, client.list_page::<T>(list, number).await) });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (number, result) = joined.unwrap_or_else(|e| raise_panic(e, "a list page"));
            match result {
                Ok(page) => fetched.push((number, page)),
                // The list shrank under us: the page is gone.
                Err(ApiError::UnexpectedResponse { status: 404, .. }) => {
                    return Ok(Listed::Changed(format!("page {number} of {total} is gone")));
                }
                Err(e) => return Err(e),
            }
        }
        fetched.sort_by_key(|(number, _)| *number);
        for (number, page) in fetched {
            if page.pagination.count != count {
                return Ok(Listed::Changed(format!(
                    "the total went from {} to {} by page {number}",
                    count.unwrap_or(0.0),
                    page.pagination.count.unwrap_or(0.0)
                )));
            }
            pages.push(page.results);
        }
        Ok(Listed::Whole(pages))
    }

    /// One page of a list.
    pub(crate) async fn list_page<T: DeserializeOwned>(
        &self,
        list: List,
        page: u64,
    ) -> Result<Page<T>, ApiError> {
        let mut url = self.endpoint(list.path)?;
        url.query_pairs_mut()
            .append_pair("page_size", &LIST_PAGE_SIZE.to_string())
            .append_pair("page", &page.to_string());
        self.get_json(url, list.route).await
    }

    /// The items of `list` whose `name` is exactly `name` (authentik's
    /// `?name=` filter: trimmed, case-sensitive).
    pub(crate) async fn find_by_name(
        &self,
        list: List,
        name: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let mut url = self.endpoint(list.path)?;
        url.query_pairs_mut().append_pair("name", name);
        let page: Page<Value> = self.get_json(url, list.route).await?;
        Ok(page
            .results
            .into_iter()
            .filter(|item| item.get("name").and_then(Value::as_str) == Some(name))
            .collect())
    }

    /// `POST` a new object named `name` to `list`. A create whose answer was
    /// lost (broken connection, 5xx, authentik's empty 405) is not sent again
    /// blindly: the name is looked up in `list` first, and the object returned
    /// if the first attempt did create it ([`Created::FoundByName`]).
    pub(crate) async fn create<T: DeserializeOwned>(
        &self,
        list: List,
        name: &str,
        body: &Value,
    ) -> Result<Created<T>, ApiError> {
        let lost = LostCreate { list, name };
        let call = Call {
            method: Method::POST,
            route: list.route,
            url: self.endpoint(list.path)?,
            body: Some(body),
        };
        let found = || async {
            match self.find_by_name(list, name).await?.into_iter().next() {
                Some(object) => serde_json::from_value::<T>(object).map(Some).map_err(|e| {
                    ApiError::UnexpectedResponse {
                        status: 200,
                        excerpt: format!("not the expected JSON ({e})"),
                    }
                }),
                None => Ok(None),
            }
        };
        let outcome = match self.execute(&call, Some(lost)).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_transient() => {
                return match found().await {
                    Ok(Some(object)) => Ok(Created::FoundByName(object)),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        match outcome {
            Executed::Found(object) => serde_json::from_value::<T>(object)
                .map(Created::FoundByName)
                .map_err(|e| ApiError::UnexpectedResponse {
                    status: 200,
                    excerpt: format!("not the expected JSON ({e})"),
                }),
            Executed::Answer(answer, attempts) => {
                if answer.status >= 500
                    && let Ok(Some(object)) = found().await
                {
                    return Ok(Created::FoundByName(object));
                }
                let answer = self.check(answer, None, attempts)?;
                parse_json::<T>(&answer).map(Created::Confirmed)
            }
        }
    }

    /// A request that is not a create, its answer checked and read as `T`; a
    /// JSON 404 on a detail route is [`ApiError::StageNotFound`] naming `uuid`.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        uuid: Option<Uuid>,
    ) -> Result<T, ApiError> {
        let answer = self.execute_checked(call, uuid).await?;
        parse_json(&answer)
    }

    /// A request whose answer has no body (a `DELETE`), its status checked.
    pub(crate) async fn send_without_answer(
        &self,
        call: &Call<'_>,
        uuid: Option<Uuid>,
    ) -> Result<(), ApiError> {
        self.execute_checked(call, uuid).await.map(drop)
    }

    pub(crate) fn endpoint(&self, path: &str) -> Result<Url, ApiError> {
        self.inner.api.join(path).map_err(|e| ApiError::BadUrl {
            url: self.inner.base.clone(),
            reason: e.to_string(),
        })
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        route: &'static str,
    ) -> Result<T, ApiError> {
        let call = Call {
            method: Method::GET,
            route,
            url,
            body: None,
        };
        let answer = self.execute_checked(&call, None).await?;
        parse_json(&answer)
    }

    /// [`Self::execute`] for anything but a create, with the answer checked.
    async fn execute_checked(
        &self,
        call: &Call<'_>,
        uuid: Option<Uuid>,
    ) -> Result<Answer, ApiError> {
        match self.execute(call, None).await? {
            Executed::Answer(answer, attempts) => self.check(answer, uuid, attempts),
            // Only a create (`lost_create` given) looks names up.
            Executed::Found(_) => unreachable!("no lookup without a create"),
        }
    }

    /// The retry loop. Returns the first answer that is not retryable, or an
    /// error once attempts or time are used up. With `lost_create`, a retry is
    /// preceded by a lookup of that name.
    async fn execute(
        &self,
        call: &Call<'_>,
        lost_create: Option<LostCreate<'_>>,
    ) -> Result<Executed, ApiError> {
        let policy = &self.retry;
        let mut delays = policy.delays();
        let mut waited = Duration::ZERO;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            if attempts > 1
                && let Some(lost) = lost_create
                // Boxed: the lookup goes through this same loop.
                && let Some(object) = Box::pin(self.find_by_name(lost.list, lost.name))
                    .await?
                    .into_iter()
                    .next()
            {
                tracing::info!(
                    stage = %crate::text::escape(lost.name),
                    "the create's answer was lost but the stage exists: not creating it again"
                );
                return Ok(Executed::Found(object));
            }
            let (failure, retry_after) = match self.attempt(call).await {
                Ok(answer) if is_retryable_status(answer.status, answer.empty_html()) => {
                    let after = answer.retry_after;
                    (Failure::Status(answer), after)
                }
                Ok(answer) => return Ok(Executed::Answer(answer, attempts)),
                Err(e) if retryable_transport(&e) => (Failure::Transport(e), None),
                Err(e) => return Err(e),
            };
            let give_up = |failure: Failure| failure.into_error(attempts);
            let Some(backoff) = delays.next() else {
                return Err(give_up(failure));
            };
            let wait = policy.wait(backoff, retry_after);
            if waited + wait > policy.max_total_wait {
                return Err(give_up(failure));
            }
            waited += wait;
            let reason = failure.describe();
            let wait_ms = wait.as_millis() as u64;
            if self.loud_retries {
                tracing::warn!(method = %call.method, path = call.route, attempt = attempts,
                    max_attempts = policy.max_attempts, wait_ms, "retrying after {reason}");
            } else {
                tracing::debug!(method = %call.method, path = call.route, attempt = attempts,
                    max_attempts = policy.max_attempts, wait_ms, "retrying after {reason}");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP exchange, reported to the observer.
    async fn attempt(&self, call: &Call<'_>) -> Result<Answer, ApiError> {
        let started = Instant::now();
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone());
        if let Some(body) = call.body {
            let bytes = serde_json::to_vec(body).map_err(|e| ApiError::ClientSetup {
                reason: format!("cannot encode the request body: {e}"),
            })?;
            request = request.header(CONTENT_TYPE, "application/json").body(bytes);
        }
        let result = async {
            let response = request
                .send()
                .await
                .map_err(|e| (None, AttemptError::Http(e)))?;
            let status = response.status().as_u16();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_type = header(CONTENT_TYPE).unwrap_or_default();
            let retry_after = header(RETRY_AFTER).and_then(|v| parse_retry_after(&v));
            let location =
                header(LOCATION).map(|l| self.inner.redactor.redact_str(&l).into_owned());
            let body = self.read_body(response, status).await?;
            // Before anything reads it: an answer that echoes a secret must
            // not hand it to a parser, a message or a log.
            let body = match self.inner.redactor.redact(&body) {
                std::borrow::Cow::Borrowed(_) => body,
                std::borrow::Cow::Owned(redacted) => redacted,
            };
            Ok::<_, (Option<u16>, AttemptError)>(Answer {
                status,
                content_type,
                retry_after,
                location,
                body,
            })
        }
        .await;
        let elapsed = started.elapsed();
        let status = match &result {
            Ok(a) => Some(a.status),
            Err((status, _)) => *status,
        };
        tracing::debug!(
            method = %call.method,
            path = call.route,
            status = status.map(|s| s as i64).unwrap_or(-1),
            elapsed_ms = elapsed.as_millis() as u64,
            "authentik request"
        );
        if let Some(observer) = &self.observer {
            observer(&RequestRecord {
                method: method_name(&call.method),
                path: call.route,
                status,
                elapsed,
            });
        }
        result.map_err(|(_, e)| match e {
            AttemptError::Http(e) => self.transport_error(&e),
            AttemptError::Api(e) => e,
        })
    }

    /// Reads a body chunk by chunk, up to [`MAX_BODY_BYTES`]: what a server
    /// sends beyond that is never held, whatever it announces.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        status: u16,
    ) -> Result<Vec<u8>, (Option<u16>, AttemptError)> {
        let failed = |e| (Some(status), AttemptError::Http(e));
        let too_large = |start: &[u8]| {
            (
                Some(status),
                AttemptError::Api(ApiError::BodyTooLarge {
                    url: self.inner.base.clone(),
                    status,
                    limit: MAX_BODY_BYTES,
                    excerpt: excerpt_of_start(
                        &self
                            .inner
                            .redactor
                            .redact(&start[..start.len().min(QUOTED_START_BYTES)]),
                    ),
                }),
            )
        };
        let announced = response.content_length();
        if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            // Said up front: read only enough to quote its start.
            let start = response.chunk().await.map_err(failed)?.unwrap_or_default();
            return Err(too_large(&start));
        }
        let mut body = Vec::with_capacity(announced.unwrap_or(0) as usize);
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large(&body));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Turns a final answer into the body or an error in the user's words.
    fn check(&self, answer: Answer, uuid: Option<Uuid>, attempts: u32) -> Result<Answer, ApiError> {
        let status = answer.status;
        let json = || serde_json::from_slice::<Value>(&answer.body).ok();
        match status {
            200..=299 if answer.is_html() => Err(self.not_an_api(&answer)),
            200..=299 => Ok(answer),
            300..=399 => Err(ApiError::UnexpectedResponse {
                status,
                excerpt: match &answer.location {
                    Some(to) => format!(
                        "redirected to {}: pass the install's final URL with --url",
                        crate::text::escape(to)
                    ),
                    None => excerpt(&answer.body),
                },
            }),
            400 => match json().as_ref().and_then(wire::validation_errors) {
                Some((fields, detail)) => Err(ApiError::Validation { fields, detail }),
                None => Err(unexpected(&answer)),
            },
            403 => Err(match json().as_ref().and_then(wire::detail) {
                Some(detail) => ApiError::Forbidden {
                    detail: cut(&detail),
                },
                None => ApiError::ForbiddenPage {
                    excerpt: excerpt(&answer.body),
                },
            }),
            404 if !answer.is_json() || json().is_none() => Err(self.not_an_api(&answer)),
            404 => match uuid {
                Some(uuid) => Err(ApiError::StageNotFound { uuid }),
                None => Err(unexpected(&answer)),
            },
            _ if is_retryable_status(status, answer.empty_html()) || status >= 500 => {
                Err(ApiError::Server {
                    status,
                    attempts,
                    excerpt: excerpt(&answer.body),
                })
            }
            _ => Err(unexpected(&answer)),
        }
    }

    fn not_an_api(&self, answer: &Answer) -> ApiError {
        ApiError::NotAnApi {
            url: self.inner.base.clone(),
            status: answer.status,
            excerpt: excerpt(&answer.body),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> ApiError {
        let url = self.inner.base.clone();
        // reqwest's own message only repeats the URL; its causes say what happened.
        let reason = match std::error::Error::source(e) {
            Some(cause) => error_chain(cause),
            None => error_chain(e),
        };
        let lower = reason.to_ascii_lowercase();
        if e.is_timeout() {
            // reqwest only says "operation timed out": name the limit and its flag.
            let reason = if e.is_connect() {
                format!(
                    "no connection within {} (--connect-timeout)",
                    humantime::format_duration(self.inner.connect_timeout)
                )
            } else {
                format!(
                    "no answer within {} (--timeout)",
                    humantime::format_duration(self.inner.request_timeout)
                )
            };
            ApiError::Timeout { url, reason }
        } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
            ApiError::Dns { url, reason }
        } else if is_tls_failure(e) {
            // rustls reads a plain-http answer as a record of an unknown type.
            let hint = if lower.contains("corrupt message") || lower.contains("invalidcontenttype")
            {
                "the server does not speak TLS on that port: is the URL http://?"
            } else {
                "for a private CA pass --ca-file PATH"
            };
            ApiError::Tls { url, reason, hint }
        } else if e.is_connect() {
            ApiError::Connect { url, reason }
        } else {
            ApiError::Transport { url, reason }
        }
    }
}

/// Raises the panic that ended a spawned request (a bug), as if it had run
/// inline, rather than go on without its answer. The sets are never aborted,
/// so a task ends without a result only by panicking.
pub(crate) fn raise_panic(err: tokio::task::JoinError, what: &str) -> ! {
    match err.try_into_panic() {
        Ok(payload) => std::panic::resume_unwind(payload),
        Err(err) => panic!("{what} stopped without an answer: {err}"),
    }
}

/// How much of the start of an oversized answer is kept to quote.
const QUOTED_START_BYTES: usize = 16 * 1024;

/// Why one attempt ended without an answer.
enum AttemptError {
    /// The exchange itself failed (connect, TLS, timeout, broken body).
    Http(reqwest::Error),
    /// The answer was refused as read (too large).
    Api(ApiError),
}

/// What made an attempt worth retrying.
enum Failure {
    Status(Answer),
    Transport(ApiError),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Status(a) if a.status == 405 => {
                "authentik's internal error (empty HTTP 405)".to_owned()
            }
            Failure::Status(a) => format!("HTTP {}", a.status),
            Failure::Transport(e) => e.to_string(),
        }
    }

    fn into_error(self, attempts: u32) -> ApiError {
        match self {
            Failure::Status(a) => ApiError::Server {
                status: a.status,
                attempts,
                excerpt: if a.empty_html() && a.status == 405 {
                    "empty text/html answer (authentik's internal server error)".to_owned()
                } else {
                    excerpt(&a.body)
                },
            },
            Failure::Transport(e) => e,
        }
    }
}

/// Transport failures worth another attempt. A DNS failure is not: a misspelt
/// host is far likelier than a resolver blip, and the next run retries anyway.
/// Neither is TLS: a certificate does not fix itself in seconds.
fn retryable_transport(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Connect { .. } | ApiError::Timeout { .. } | ApiError::Transport { .. }
    )
}

fn unexpected(answer: &Answer) -> ApiError {
    ApiError::UnexpectedResponse {
        status: answer.status,
        excerpt: excerpt(&answer.body),
    }
}

fn parse_json<T: DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    serde_json::from_slice(&answer.body).map_err(|e| ApiError::UnexpectedResponse {
        status: answer.status,
        excerpt: format!("not the expected JSON ({e}): {}", excerpt(&answer.body)),
    })
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Whether rustls (or the certificate verifier) is among the causes.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps, and rustls' error
        // sits inside io::Errors nested two deep: unwrap them by hand.
        let mut io = err.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(std::io::Error::get_ref) {
            if inner.is::<rustls::Error>() {
                return true;
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        current = err.source();
    }
    let text = error_chain(e).to_ascii_lowercase();
    text.contains("certificate") || text.contains("tls handshake")
}

/// `raw` with anything between `://` and the last `@` of the authority cut
/// out: a URL that does not parse is still quoted in its error, and must not
/// show a password written into it.
fn without_userinfo(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => raw.to_owned(),
    }
}

/// The install's root as a URL ending in `/`: tolerates a trailing slash and an
/// included `/api/v3`; refuses credentials, queries and fragments.
pub(crate) fn normalise_url(raw: &str) -> Result<Url, ApiError> {
    let raw = raw.trim();
    let bad = |url: String, reason: &str| ApiError::BadUrl {
        url,
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(raw).map_err(|e| {
        let shown = crate::text::escape(&without_userinfo(raw)).into_owned();
        match e {
            url::ParseError::RelativeUrlWithoutBase => {
                bad(shown, "it needs a scheme, e.g. https://auth.example.com")
            }
            other => bad(shown, &other.to_string()),
        }
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return Err(bad(
            url.to_string(),
            "credentials in the URL are not supported: put the token in AUTHENTIK_TOKEN or --token-file",
        ));
    }
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(bad(
            url.to_string(),
            "only https:// and http:// are supported",
        ));
    }
    if url.host().is_none() {
        return Err(bad(url.to_string(), "it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            url.to_string(),
            "it must not have a query or a fragment",
        ));
    }
    let path = url.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/api/v3")
        .unwrap_or(path)
        .trim_end_matches('/');
    let path = format!("{path}/");
    url.set_path(&path);
    Ok(url)
}

/// `http://` only to loopback, unless allowed: the token travels in every request.
pub(crate) fn check_http_policy(url: &Url, allow_http: bool) -> Result<(), ApiError> {
    if url.scheme() != "http" || allow_http || is_loopback(url) {
        return Ok(());
    }
    Err(ApiError::HttpNotAllowed {
        host: url.host_str().unwrap_or_default().to_owned(),
    })
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalise_url(s)
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn urls_are_normalised_to_the_root() {
        for given in [
            "https://auth.example.com",
            "https://auth.example.com/",
            " https://auth.example.com/api/v3 ",
            "https://auth.example.com/api/v3/",
            "https://auth.example.com//",
        ] {
            assert_eq!(norm(given), "https://auth.example.com/", "{given}");
        }
        assert_eq!(
            norm("https://example.com/authentik/api/v3/"),
            "https://example.com/authentik/"
        );
        assert_eq!(norm("http://127.0.0.1:9000"), "http://127.0.0.1:9000/");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        assert!(norm("auth.example.com").contains("needs a scheme"));
        assert!(norm("ftp://auth.example.com").contains("only https://"));
        assert!(norm("https://auth.example.com/?x=1").contains("query"));
        let e = norm("https://user:hunter2@auth.example.com");
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        // A URL that does not parse is quoted, without what looks like a password.
        for unparsable in [
            "https://admin:hunter2@auth.example.com:99999",
            "https://admin:hun@ter2@auth.example.com:99999/x@y",
        ] {
            let e = norm(unparsable);
            assert!(
                e.starts_with("ERR ") && !e.contains("hunter2") && !e.contains("ter2"),
                "{e}"
            );
            assert!(e.contains("auth.example.com:99999"), "{e}");
        }
    }

    fn answer(status: u16, content_type: &str, body: &str) -> Answer {
        Answer {
            status,
            content_type: content_type.to_owned(),
            retry_after: None,
            location: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn test_client() -> Client {
        Client::new(&ClientSettings {
            url: "https://auth.example.com/api/v3/".into(),
            token: crate::secret::SecretString::from("t".to_owned()),
            ca_file: None,
            insecure_skip_tls_verify: false,
            allow_http: false,
            connect_timeout: ClientSettings::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: ClientSettings::DEFAULT_REQUEST_TIMEOUT,
        })
        .expect("valid settings")
    }

    #[test]
    fn statuses_become_errors_in_the_users_words() {
        let c = test_client();
        let json = "application/json";
        let id = Uuid::nil();
        let err = |a, uuid| {
            c.check(a, uuid, 1)
                .err()
                .map(|e| format!("{e:?}"))
                .unwrap_or_default()
        };
        assert!(c.check(answer(200, json, "{}"), None, 1).is_ok());
        assert!(
            err(
                answer(403, json, r#"{"detail":"Token invalid/expired"}"#),
                None
            )
            .starts_with("Forbidden")
        );
        assert!(err(answer(403, "text/html", "<html>"), None).starts_with("Forbidden"));
        assert!(
            err(answer(404, "text/html; charset=utf-8", "<html>"), Some(id))
                .starts_with("NotAnApi")
        );
        assert!(err(answer(200, "text/html", "<html>"), None).starts_with("NotAnApi"));
        assert!(
            err(answer(404, json, r#"{"detail":"Not found."}"#), Some(id))
                .starts_with("StageNotFound")
        );
        assert!(
            err(answer(404, json, r#"{"detail":"Invalid page."}"#), None)
                .starts_with("UnexpectedResponse")
        );
        assert!(err(answer(400, json, r#"{"name":["x"]}"#), None).starts_with("Validation"));
        assert!(err(answer(400, "text/plain", "bad"), None).starts_with("UnexpectedResponse"));
        assert!(err(answer(500, "text/html", ""), None).starts_with("Server"));
        assert!(
            err(
                answer(405, json, r#"{"detail":"Method \"GET\" not allowed."}"#),
                None
            )
            .starts_with("UnexpectedResponse")
        );
        assert!(err(answer(301, "", ""), None).starts_with("UnexpectedResponse"));
        assert_eq!(c.base_url(), "https://auth.example.com");
    }

    proptest::proptest! {
        #[test]
        fn normalising_never_panics_and_is_idempotent(raw in "\\PC{0,40}", path in "(/[a-z0-9]{0,5}x){0,3}(/api/v3)?/?") {
            let _ = normalise_url(&raw);
            let first = normalise_url(&format!("https://auth.example.com{path}")).expect("a valid URL");
            let again = normalise_url(first.as_str()).expect("still valid");
            proptest::prop_assert_eq!(first.as_str(), again.as_str());
            proptest::prop_assert!(first.path().ends_with('/'));
            proptest::prop_assert!(!first.path().ends_with("/api/v3/"));
        }
    }

    #[test]
    fn http_only_to_loopback_unless_allowed() {
        let ok = |s: &str, allow| check_http_policy(&normalise_url(s).unwrap(), allow).is_ok();
        assert!(ok("http://127.0.0.1:9000", false));
        assert!(ok("http://localhost:9000", false));
        assert!(ok("http://[::1]:9000", false));
        assert!(ok("https://auth.example.com", false));
        assert!(!ok("http://auth.example.com", false));
        assert!(!ok("http://10.0.0.1", false));
        assert!(ok("http://auth.example.com", true));
    }
}
