//! Injected faults and request counting.
//!
//! A fault is queued with a matcher (method, path prefix) and a count; each
//! matching request consumes one, in queue order. Counting happens before
//! faults are applied, so a request that gets a fault is still counted.

use std::collections::BTreeMap;

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status (and `Retry-After` seconds), without processing.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Close the connection without an answer, without processing.
    Reset,
    /// Never answer (the client's timeout must fire), without processing.
    Hang,
    /// Process the request, then close the connection without an answer: the
    /// write happened, and the client cannot know it.
    LostAnswer,
    /// Process the request, then never answer: a write that hangs after
    /// authentik made it (a stalled proxy, say).
    HangAfterProcessing,
    /// Process the request, then wait this long before answering: a window in
    /// which the write is made and its answer not yet seen.
    SlowAnswer(std::time::Duration),
    /// Process the request, then send only half of the JSON body and close the
    /// connection: for a create, the stage exists but the answer is lost.
    Truncated,
    /// authentik's internal error: an empty `405 text/html`, without processing.
    EmptyHtml405,
    /// Answer with this status and a JSON `{"detail": "xxx…"}` streamed in
    /// chunks, without a length: `bytes` long in all, or never ending (`None`),
    /// as a broken proxy or a hostile server might.
    StreamedDetail { status: u16, bytes: Option<u64> },
}

/// A queued fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// `None` matches every method.
    pub(crate) method: Option<String>,
    /// `None` matches every path.
    pub(crate) path_prefix: Option<String>,
    /// How many matching requests it hits.
    pub times: usize,
}

impl Fault {
    /// A fault hitting the next request, whatever it is.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            method: None,
            path_prefix: None,
            times: 1,
        }
    }

    /// A status answer with a small JSON body.
    pub fn status(status: u16) -> Self {
        Fault::new(FaultKind::Status {
            status,
            retry_after: None,
            body: format!("{{\"detail\": \"injected HTTP {status}\"}}"),
        })
    }

    /// A status answer with `Retry-After: secs`.
    pub fn status_retry_after(status: u16, secs: u64) -> Self {
        let mut fault = Fault::status(status);
        if let FaultKind::Status { retry_after, .. } = &mut fault.kind {
            *retry_after = Some(secs);
        }
        fault
    }

    /// Only requests with this method and a path starting with `path_prefix`.
    pub fn on(mut self, method: &str, path_prefix: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self.path_prefix = Some(path_prefix.to_owned());
        self
    }

    /// Hit `n` matching requests instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// Takes one hit of the first matching fault.
pub(crate) fn take(queue: &mut Vec<Fault>, method: &str, path: &str) -> Option<FaultKind> {
    let index = queue.iter().position(|f| f.matches(method, path))?;
    let fault = &mut queue[index];
    fault.times -= 1;
    let kind = fault.kind.clone();
    if fault.times == 0 {
        queue.remove(index);
    }
    Some(kind)
}

/// How long the simulator waits before answering, per kind of request, to
/// model a real server's costs (see [`LatencyProfile::authentik_2025_12`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyProfile {
    /// A page of `GET /stages/captcha/`.
    pub(crate) captcha_page: std::time::Duration,
    /// A page of `GET /stages/all/`.
    pub(crate) all_stages_page: std::time::Duration,
    /// A `GET` with `?name=` (a look-up by name, on either list).
    pub(crate) name_lookup: std::time::Duration,
    pub(crate) put: std::time::Duration,
    pub(crate) post: std::time::Duration,
    /// Everything else (the version, PATCH, DELETE, unknown routes).
    pub(crate) other: std::time::Duration,
}

impl LatencyProfile {
    /// The same latency for every request.
    pub(crate) fn uniform(d: std::time::Duration) -> Self {
        LatencyProfile {
            captcha_page: d,
            all_stages_page: d,
            name_lookup: d,
            put: d,
            post: d,
            other: d,
        }
    }

    /// p50 latencies measured on authentik 2025.12.4 with one worker and about
    /// 300 captcha stages, on loopback.
    pub fn authentik_2025_12() -> Self {
        let ms = std::time::Duration::from_millis;
        LatencyProfile {
            captcha_page: ms(200),
            all_stages_page: ms(720),
            name_lookup: ms(370),
            put: ms(127),
            post: ms(130),
            other: ms(20),
        }
    }

    /// Every latency multiplied by `factor` (benchmarks shrink them).
    pub fn scaled(self, factor: f64) -> Self {
        let f = |d: std::time::Duration| d.mul_f64(factor);
        LatencyProfile {
            captcha_page: f(self.captcha_page),
            all_stages_page: f(self.all_stages_page),
            name_lookup: f(self.name_lookup),
            put: f(self.put),
            post: f(self.post),
            other: f(self.other),
        }
    }

    pub(crate) fn for_request(
        &self,
        method: &str,
        pattern: &str,
        query: Option<&str>,
    ) -> std::time::Duration {
        let by_name = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("name=")));
        match (method, pattern) {
            ("GET", "/api/v3/stages/captcha/" | "/api/v3/stages/all/") if by_name => {
                self.name_lookup
            }
            ("GET", "/api/v3/stages/captcha/") => self.captcha_page,
            ("GET", "/api/v3/stages/all/") => self.all_stages_page,
            ("POST", _) => self.post,
            ("PUT", _) => self.put,
            _ => self.other,
        }
    }
}

/// Requests received, by method and route pattern
/// (e.g. `("GET", "/api/v3/stages/captcha/")`, `("PUT", "/api/v3/stages/captcha/{uuid}/")`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    by_route: BTreeMap<(String, String), u64>,
}

impl RequestCounts {
    pub(crate) fn record(&mut self, method: &str, pattern: &str) {
        *self
            .by_route
            .entry((method.to_owned(), pattern.to_owned()))
            .or_default() += 1;
    }

    pub fn get(&self, method: &str, pattern: &str) -> u64 {
        self.by_route
            .get(&(method.to_owned(), pattern.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.by_route.values().sum()
    }

    /// POST, PUT, PATCH and DELETE requests.
    pub fn writes(&self) -> u64 {
        self.by_route
            .iter()
            .filter(|((m, _), _)| matches!(m.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_by_matcher() {
        let mut q = vec![
            Fault::status(503).on("GET", "/api/v3/stages/").times(2),
            Fault::new(FaultKind::Reset),
        ];
        assert_eq!(
            take(&mut q, "PUT", "/api/v3/stages/captcha/x/"),
            Some(FaultKind::Reset)
        );
        assert!(matches!(
            take(&mut q, "GET", "/api/v3/stages/captcha/"),
            Some(FaultKind::Status { status: 503, .. })
        ));
        assert!(take(&mut q, "GET", "/api/v3/admin/version/").is_none());
        assert!(take(&mut q, "GET", "/api/v3/stages/all/").is_some());
        assert!(take(&mut q, "GET", "/api/v3/stages/all/").is_none());
    }

    #[test]
    fn latency_by_kind_of_request() {
        let p = LatencyProfile::authentik_2025_12();
        let ms = |n| std::time::Duration::from_millis(n);
        assert_eq!(
            p.for_request("GET", "/api/v3/stages/all/", Some("page=2")),
            ms(720)
        );
        assert_eq!(
            p.for_request("GET", "/api/v3/stages/all/", Some("name=x")),
            ms(370)
        );
        assert_eq!(
            p.for_request(
                "GET",
                "/api/v3/stages/captcha/",
                Some("page_size=100&name=x")
            ),
            ms(370)
        );
        assert_eq!(
            p.for_request("GET", "/api/v3/stages/captcha/", None),
            ms(200)
        );
        assert_eq!(
            p.for_request("POST", "/api/v3/stages/captcha/", None),
            ms(130)
        );
        assert_eq!(
            p.for_request("PUT", "/api/v3/stages/captcha/{uuid}/", None),
            ms(127)
        );
        assert_eq!(p.scaled(0.1).all_stages_page, ms(72));
    }

    #[test]
    fn counts_by_route() {
        let mut c = RequestCounts::default();
        c.record("GET", "/a/");
        c.record("GET", "/a/");
        c.record("PUT", "/b/");
        assert_eq!(c.get("GET", "/a/"), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.writes(), 1);
    }
}
