//! authentik's HTTP behaviour in front of the in-memory store: routing (trailing slash
//! required, HTML 404 otherwise), content negotiation (406 before auth), auth
//! (403 without `WWW-Authenticate`, no 401), body parsing (415, empty = `{}`,
//! JSON parse errors, invalid UTF-8 as the empty 405), lists with pagination,
//! filters, search and ordering.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::events::{self, Change, ModelRef};
use super::store::{NAME_INDEX_LIMIT, Store, WriteMode};

mod guards;

pub(crate) const ALLOW_LIST: &str = "GET, POST, HEAD, OPTIONS";
pub(crate) const ALLOW_ONE: &str = "GET, PUT, PATCH, DELETE, HEAD, OPTIONS";
pub(crate) const ALLOW_READ: &str = "GET, HEAD, OPTIONS";

/// The first bytes of authentik's 404 page, as recorded.
pub(crate) const HTML_404: &str = "\n\n\n\n\n<!DOCTYPE html>\n<html\n    lang=\"en\"\n    data-theme=\"light\"\n    data-theme-choice=\"auto\"\n>\n    <head>\n        <meta charset=\"UTF-8\">\n        <meta name=\"viewport\" content=\"width=device-width, initial-scale=1, maximum-scale=1\">\n        \n        <meta name=\"darkreader-lock\">\n        <title>\nauthentik\n</title>\n    </head>\n    <body>\n        <h1>Not Found</h1>\n        <p>The requested resource was not found on this server.</p>\n    </body>\n</html>\n";

/// A route of the API, by pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    CaptchaList,
    CaptchaOne(String),
    CaptchaUsedBy(String),
    AllStages,
    /// `/flows/instances/`, and one flow by its slug.
    FlowList,
    FlowOne(String),
    /// `/flows/bindings/`, one binding, and its `used_by`.
    BindingList,
    BindingOne(String),
    BindingUsedBy(String),
    /// `/stages/identification/` and one identification stage.
    IdentificationList,
    IdentificationOne(String),
    /// `events/events/`: the event log.
    Events,
    /// `core/users/me/`: the token's user.
    UsersMe,
    Unknown,
}

impl Route {
    pub(crate) fn resolve(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/api/v3/") else {
            return Route::Unknown;
        };
        let Some(rest) = rest.strip_suffix('/') else {
            return Route::Unknown;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        // DRF's lookup regex: anything but `/` and `.`.
        let lookup = |s: &str| !s.is_empty() && !s.contains('.');
        match parts.as_slice() {
            ["admin", "version"] => Route::Version,
            ["stages", "captcha"] => Route::CaptchaList,
            ["stages", "all"] => Route::AllStages,
            ["events", "events"] => Route::Events,
            ["core", "users", "me"] => Route::UsersMe,
            ["stages", "captcha", id] if lookup(id) => Route::CaptchaOne((*id).to_owned()),
            ["stages", "captcha", id, "used_by"] if lookup(id) => {
                Route::CaptchaUsedBy((*id).to_owned())
            }
            ["flows", "instances"] => Route::FlowList,
            ["flows", "instances", slug] if lookup(slug) => Route::FlowOne((*slug).to_owned()),
            ["flows", "bindings"] => Route::BindingList,
            ["flows", "bindings", id] if lookup(id) => Route::BindingOne((*id).to_owned()),
            ["flows", "bindings", id, "used_by"] if lookup(id) => {
                Route::BindingUsedBy((*id).to_owned())
            }
            ["stages", "identification"] => Route::IdentificationList,
            ["stages", "identification", id] if lookup(id) => {
                Route::IdentificationOne((*id).to_owned())
            }
            _ => Route::Unknown,
        }
    }

    /// The pattern requests are counted under (matches the client's route names).
    pub(crate) fn pattern(&self) -> &'static str {
        match self {
            Route::Version => "/api/v3/admin/version/",
            Route::CaptchaList => "/api/v3/stages/captcha/",
            Route::CaptchaOne(_) => "/api/v3/stages/captcha/{uuid}/",
            Route::CaptchaUsedBy(_) => "/api/v3/stages/captcha/{uuid}/used_by/",
            Route::AllStages => "/api/v3/stages/all/",
            Route::FlowList => "/api/v3/flows/instances/",
            Route::FlowOne(_) => "/api/v3/flows/instances/{slug}/",
            Route::BindingList => "/api/v3/flows/bindings/",
            Route::BindingOne(_) => "/api/v3/flows/bindings/{uuid}/",
            Route::BindingUsedBy(_) => "/api/v3/flows/bindings/{uuid}/used_by/",
            Route::IdentificationList => "/api/v3/stages/identification/",
            Route::IdentificationOne(_) => "/api/v3/stages/identification/{uuid}/",
            Route::Events => "/api/v3/events/events/",
            Route::UsersMe => "/api/v3/core/users/me/",
            Route::Unknown => "(unknown route)",
        }
    }

    pub(crate) fn allow(&self) -> Option<&'static str> {
        match self {
            Route::CaptchaList
            | Route::FlowList
            | Route::BindingList
            | Route::IdentificationList
            | Route::Events => Some(ALLOW_LIST),
            Route::CaptchaOne(_)
            | Route::FlowOne(_)
            | Route::BindingOne(_)
            | Route::IdentificationOne(_) => Some(ALLOW_ONE),
            Route::Version
            | Route::CaptchaUsedBy(_)
            | Route::AllStages
            | Route::BindingUsedBy(_)
            | Route::UsersMe => Some(ALLOW_READ),
            Route::Unknown => None,
        }
    }

    fn is_detail(&self) -> bool {
        matches!(
            self,
            Route::CaptchaOne(_)
                | Route::CaptchaUsedBy(_)
                | Route::FlowOne(_)
                | Route::BindingOne(_)
                | Route::BindingUsedBy(_)
                | Route::IdentificationOne(_)
        )
    }
}

/// What the simulator answers, before it becomes HTTP.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Body {
    Json(Value),
    Html(String),
    /// No body (204).
    Empty,
    /// authentik's internal error: an empty `text/html` body.
    EmptyHtml,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) allow: Option<&'static str>,
    pub(crate) body: Body,
}

impl Reply {
    pub(crate) fn json(status: u16, route: &Route, value: Value) -> Reply {
        Reply {
            status,
            allow: route.allow(),
            body: Body::Json(value),
        }
    }

    pub(crate) fn detail(status: u16, route: &Route, detail: &str) -> Reply {
        Reply::json(status, route, json!({ "detail": detail }))
    }

    pub(crate) fn html_404() -> Reply {
        Reply {
            status: 404,
            allow: None,
            body: Body::Html(HTML_404.to_owned()),
        }
    }

    pub(crate) fn internal_error() -> Reply {
        Reply {
            status: 405,
            allow: Some(ALLOW_READ),
            body: Body::EmptyHtml,
        }
    }

    /// `(content-type, bytes)` of the body.
    pub(crate) fn encode(&self) -> (Option<&'static str>, Vec<u8>) {
        match &self.body {
            Body::Json(v) => (
                Some("application/json; charset=utf-8"),
                serde_json::to_vec(v).unwrap_or_default(),
            ),
            Body::Html(s) => (Some("text/html; charset=utf-8"), s.clone().into_bytes()),
            Body::Empty => (None, Vec::new()),
            Body::EmptyHtml => (Some("text/html; charset=utf-8"), Vec::new()),
        }
    }
}

/// The parts of a request the behaviour depends on.
pub(crate) struct Incoming<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) accept: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) body: &'a [u8],
    /// For the event a write logs.
    pub(crate) user_agent: &'a str,
    pub(crate) client_ip: &'a str,
}

/// Answers one request against the store.
pub(crate) fn answer(store: &mut Store, req: &Incoming<'_>) -> Reply {
    let route = Route::resolve(req.path);
    if route == Route::Unknown {
        return Reply::html_404();
    }
    if !accept_satisfiable(req.accept) {
        return Reply::detail(406, &route, "Could not satisfy the request Accept header.");
    }
    if let Err(detail) = authenticate(store, req.authorization, route.is_detail()) {
        return Reply::detail(403, &route, detail);
    }
    let query = parse_query(req.query);
    match (&route, req.method) {
        (Route::Version, "GET") => Reply::json(
            200,
            &route,
            json!({
                "version_current": store.version,
                "version_latest": store.version,
                "version_latest_valid": true,
                "build_hash": "",
                "outdated": false,
                "outpost_outdated": false,
            }),
        ),
        (Route::CaptchaList, "GET") => list_captcha(store, &route, &query),
        (Route::AllStages, "GET") => list_all(store, &route, &query),
        (Route::UsersMe, "GET") => Reply::json(200, &route, store.events.me()),
        (Route::Events, "GET") if !store.events.readable => Reply::detail(
            403,
            &route,
            "You do not have permission to perform this action.",
        ),
        (Route::Events, "GET") => {
            let events = store.events.select(&query);
            let rows = events.into_iter().map(|e| {
                let render: Box<dyn Fn() -> Value> = Box::new(move || e.clone());
                render
            });
            page(store, &route, &query, rows.collect::<Vec<_>>())
        }
        (Route::CaptchaList, "POST") => write(store, &route, req, None, WriteMode::Create),
        (Route::CaptchaOne(id), method @ ("GET" | "PUT" | "PATCH" | "DELETE")) => {
            let uuid = match find(store, &route, id) {
                Ok(uuid) => uuid,
                Err(reply) => return reply,
            };
            match method {
                "GET" => Reply::json(200, &route, render(store, uuid)),
                "PUT" => write(store, &route, req, Some(uuid), WriteMode::Replace),
                "PATCH" => write(store, &route, req, Some(uuid), WriteMode::Partial),
                _ => {
                    let name = store.find(uuid).map(|r| r.fields.name.clone());
                    store.delete(uuid);
                    if let Some(name) = name {
                        log_change(store, req, Change::Deleted, uuid, &name);
                    }
                    Reply {
                        status: 204,
                        allow: route.allow(),
                        body: Body::Empty,
                    }
                }
            }
        }
        (Route::CaptchaUsedBy(id), "GET") => match find(store, &route, id) {
            Ok(uuid) => Reply::json(200, &route, store.used_by(uuid)),
            Err(reply) => reply,
        },
        (
            Route::FlowList
            | Route::FlowOne(_)
            | Route::BindingList
            | Route::BindingOne(_)
            | Route::BindingUsedBy(_)
            | Route::IdentificationList
            | Route::IdentificationOne(_),
            _,
        ) => guards::answer(store, &route, req, &query),
        (_, method) => Reply::detail(405, &route, &format!("Method \"{method}\" not allowed.")),
    }
}

fn render(store: &Store, uuid: Uuid) -> Value {
    store
        .find(uuid)
        .map(|rec| store.render(rec))
        .unwrap_or(Value::Null)
}

fn find(store: &Store, route: &Route, id: &str) -> Result<Uuid, Reply> {
    let uuid = Uuid::parse_str(id).map_err(|_| Reply::detail(404, route, "Not found."))?;
    match store.find(uuid) {
        Some(_) => Ok(uuid),
        None => Err(Reply::detail(
            404,
            route,
            "No CaptchaStage matches the given query.",
        )),
    }
}

/// DRF content negotiation with only a JSON renderer. A missing header is `*/*`;
/// an empty one matches nothing.
fn accept_satisfiable(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    accept.split(',').any(|range| {
        let media = range
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(media.as_str(), "*/*" | "application/*" | "application/json")
    })
}

/// authentik's token authentication: `Bearer` (any case) and a known token.
fn authenticate(
    store: &Store,
    header: Option<&str>,
    detail_route: bool,
) -> Result<(), &'static str> {
    let no_credentials = if detail_route {
        // Seen on the real server: detail routes answer with the permission message.
        "You do not have permission to perform this action."
    } else {
        "Authentication credentials were not provided."
    };
    let Some(header) = header else {
        return Err(no_credentials);
    };
    let mut parts = header.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => {
            if token == store.token {
                Ok(())
            } else {
                Err("Token invalid/expired")
            }
        }
        _ => Err(no_credentials),
    }
}

/// DRF's body parsing: no body (or no content type) is `{}`; another media
/// type is 415; invalid UTF-8 is authentik's empty 405.
fn parse_body(route: &Route, req: &Incoming<'_>) -> Result<Value, Reply> {
    let content_type = match req.content_type {
        Some(ct) if !req.body.is_empty() => ct,
        _ => return Ok(json!({})),
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return Err(Reply::detail(
            415,
            route,
            &format!("Unsupported media type \"{content_type}\" in request."),
        ));
    }
    let text = std::str::from_utf8(req.body).map_err(|_| Reply::internal_error())?;
    serde_json::from_str::<Value>(text).map_err(|e| {
        Reply::detail(
            400,
            route,
            &format!("JSON parse error - {}", parse_error_message(text, &e)),
        )
    })
}

/// orjson's wording of a parse error: `unexpected character: line 1 column 2 (char 1)`.
fn parse_error_message(text: &str, e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of data",
        _ => "unexpected character",
    };
    let (line, column) = (e.line().max(1), e.column().max(1));
    let char_index: usize = text
        .split('\n')
        .take(line - 1)
        .map(|l| l.chars().count() + 1)
        .sum::<usize>()
        + column
        - 1;
    format!("{what}: line {line} column {column} (char {char_index})")
}

fn write(
    store: &mut Store,
    route: &Route,
    req: &Incoming<'_>,
    uuid: Option<Uuid>,
    mode: WriteMode,
) -> Reply {
    let map = match body_object(route, req) {
        Ok(map) => map,
        Err(reply) => return reply,
    };
    let validated = match store.validate(&map, mode, uuid) {
        Ok(v) => v,
        Err(errors) => return Reply::json(400, route, Value::Object(errors)),
    };
    if validated.name().is_some_and(|n| n.len() > NAME_INDEX_LIMIT) {
        return Reply::internal_error();
    }
    match uuid {
        None => {
            let uuid = store.create(validated);
            log_written(store, req, Change::Created, uuid);
            Reply::json(201, route, render(store, uuid))
        }
        Some(uuid) => {
            store.update(uuid, validated);
            log_written(store, req, Change::Updated, uuid);
            Reply::json(200, route, render(store, uuid))
        }
    }
}

/// A write's body as DRF reads it: a JSON object, or the 400 (or 415, or
/// the empty 405) authentik answers instead.
pub(crate) fn body_object(route: &Route, req: &Incoming<'_>) -> Result<Map<String, Value>, Reply> {
    let body = parse_body(route, req)?;
    let Value::Object(map) = body else {
        let got = match body {
            Value::Array(_) => "list",
            Value::String(_) => "str",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "int",
            _ => {
                return Err(Reply::json(
                    400,
                    route,
                    json!({"non_field_errors": ["No data provided"]}),
                ));
            }
        };
        return Err(Reply::json(
            400,
            route,
            json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {got}.")]}),
        ));
    };
    Ok(map)
}

/// The event authentik writes in the same request as a change.
fn log_written(store: &mut Store, req: &Incoming<'_>, change: Change, uuid: Uuid) {
    if let Some(name) = store.find(uuid).map(|r| r.fields.name.clone()) {
        log_change(store, req, change, uuid, &name);
    }
}

fn log_change(store: &mut Store, req: &Incoming<'_>, change: Change, uuid: Uuid, name: &str) {
    let request = events::Request {
        method: req.method,
        path: req.path,
        user_agent: req.user_agent,
        client_ip: req.client_ip,
    };
    store
        .events
        .record_api(change, ModelRef::captcha_stage(uuid, name), &request);
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// One listed row: name and public key for filters; rendered only when it
/// lands on the requested page (lists of thousands stay cheap).
struct Row<'a> {
    name: &'a str,
    public_key: Option<&'a str>,
    render: Box<dyn Fn() -> Value + 'a>,
}

fn list_captcha(store: &Store, route: &Route, q: &HashMap<String, String>) -> Reply {
    let rows = store
        .captcha
        .iter()
        .map(|rec| Row {
            name: &rec.fields.name,
            public_key: Some(&rec.fields.public_key),
            render: Box::new(move || store.render(rec)),
        })
        .collect();
    paginate(store, route, q, rows)
}

/// Every stage type, with the fields of authentik's `Stage` only.
fn list_all(store: &Store, route: &Route, q: &HashMap<String, String>) -> Reply {
    let mut rows: Vec<Row> = store
        .captcha
        .iter()
        .map(|rec| Row {
            name: &rec.fields.name,
            public_key: None,
            render: Box::new(move || stage_fields_only(store.render(rec))),
        })
        .collect();
    rows.extend(store.others.iter().map(|rec| Row {
        name: &rec.name,
        public_key: None,
        render: Box::new(move || store.render_other(rec)),
    }));
    paginate(store, route, q, rows)
}

/// A stage with the fields of authentik's `Stage` only (what `/stages/all/`
/// and a binding's `stage_obj` show).
pub(crate) fn stage_fields_only(mut json: Value) -> Value {
    if let Some(o) = json.as_object_mut() {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "pk" | "name"
                    | "component"
                    | "verbose_name"
                    | "verbose_name_plural"
                    | "meta_model_name"
                    | "flow_set"
            )
        });
    }
    json
}

/// Filters (`name`, `public_key` exact; `search` case-insensitive on the name),
/// orders (`name` / `-name`, byte order; others ignored) and pages.
fn paginate(
    store: &Store,
    route: &Route,
    q: &HashMap<String, String>,
    mut rows: Vec<Row<'_>>,
) -> Reply {
    if let Some(name) = q.get("name") {
        rows.retain(|r| r.name == name.as_str());
    }
    if let Some(pk) = q.get("public_key") {
        rows.retain(|r| r.public_key == Some(pk.as_str()));
    }
    if let Some(search) = q.get("search") {
        let terms: Vec<String> = search
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .collect();
        rows.retain(|r| {
            let name = r.name.to_lowercase();
            terms.iter().all(|t| name.contains(t.as_str()))
        });
    }
    let descending = q.get("ordering").and_then(|o| {
        o.split(',')
            .map(str::trim)
            .find(|f| *f == "name" || *f == "-name")
    }) == Some("-name");
    rows.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    if descending {
        rows.reverse();
    }
    page(
        store,
        route,
        q,
        rows.into_iter().map(|r| r.render).collect(),
    )
}

/// Pages rows already filtered and ordered (`page_size` capped, `page`
/// a number or `last`, past the end 404 `Invalid page.`); only the rows on
/// the page are rendered.
pub(crate) fn page(
    store: &Store,
    route: &Route,
    q: &HashMap<String, String>,
    rows: Vec<Box<dyn Fn() -> Value + '_>>,
) -> Reply {
    let size = q
        .get("page_size")
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map(|n| n.min(store.max_page_size))
        .unwrap_or(store.default_page_size)
        .max(1);
    let count = rows.len();
    let total_pages = count.div_ceil(size).max(1);
    let page = match q.get("page").map(|p| p.trim()) {
        None => 1,
        Some("last") => total_pages,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if n >= 1 && n <= total_pages => n,
            _ => return Reply::detail(404, route, "Invalid page."),
        },
    };
    let start = (page - 1) * size;
    let results: Vec<Value> = rows
        .into_iter()
        .skip(start)
        .take(size)
        .map(|render| render())
        .collect();
    let (start_index, end_index) = if count == 0 {
        (0, 0)
    } else {
        (start + 1, start + results.len())
    };
    Reply::json(
        200,
        route,
        json!({
            "pagination": {
                "next": if page < total_pages { page + 1 } else { 0 },
                "previous": page.saturating_sub(1),
                "count": count,
                "current": page,
                "total_pages": total_pages,
                "start_index": start_index,
                "end_index": end_index,
            },
            "results": results,
            "autocomplete": {},
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_trailing_slash() {
        assert_eq!(
            Route::resolve("/api/v3/stages/captcha/"),
            Route::CaptchaList
        );
        assert_eq!(Route::resolve("/api/v3/stages/captcha"), Route::Unknown);
        assert_eq!(
            Route::resolve("/api/v3/stages/captcha/x/"),
            Route::CaptchaOne("x".into())
        );
        assert_eq!(
            Route::resolve("/api/v3/stages/captcha/x/used_by/"),
            Route::CaptchaUsedBy("x".into())
        );
        assert_eq!(Route::resolve("/api/v3/nope/"), Route::Unknown);
    }

    #[test]
    fn parse_errors_in_orjson_words() {
        let e = serde_json::from_str::<Value>("{not json").unwrap_err();
        assert_eq!(
            parse_error_message("{not json", &e),
            "unexpected character: line 1 column 2 (char 1)"
        );
    }

    #[test]
    fn accept_negotiation() {
        assert!(accept_satisfiable(None));
        assert!(accept_satisfiable(Some(
            "application/json; q=0.9, text/html"
        )));
        assert!(accept_satisfiable(Some("*/*")));
        assert!(!accept_satisfiable(Some("")));
        assert!(!accept_satisfiable(Some("text/html")));
    }
}
