//! The simulator against the exchanges recorded from a real authentik
//! 2025.12.4 (tests/fixtures/exchanges-2025.12.4.json), and both the
//! simulator's answers and the client's request bodies against authentik's
//! published OpenAPI schema (read from ../shared/authentik/, never committed).
//!
//! How the replay compares: every exchange is sent in order to one simulator;
//! uuids are mapped (the server picks them: a recorded create's `pk` maps to the
//! simulator's) and ignored in bodies; status, `content-type`, `allow` and the
//! JSON body must be equal. The HTML 404 page is compared by its recorded
//! prefix; the three "results elided" cases by their pagination and result
//! count (after seeding captcha stages up to the recorded 107). Seeded, as the
//! recording's server had them: an identification stage named `rec-dummy`, and
//! the flow `rec-flow` binding `rec-login` at order 10 before the flow_set case.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use stagesync::kinds::captcha::StageFields;
use stagesync::kinds::captcha::api::Stages;
use stagesync::simulator::SimHandle;
use support::client::*;

const RECORDED: &str = include_str!("fixtures/exchanges-2025.12.4.json");
const HTML_ELISION: &str = "…(html page, truncated)";

fn exchanges() -> Vec<Value> {
    let doc: Value = serde_json::from_str(RECORDED).expect("the recording is JSON");
    doc["exchanges"].as_array().expect("exchanges").clone()
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// Replaces every uuid, also inside strings, by `<uuid>`.
fn without_uuids(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            let mut i = 0;
            while i + 36 <= out.len() {
                if out.is_char_boundary(i)
                    && out.is_char_boundary(i + 36)
                    && is_uuid(&out[i..i + 36])
                {
                    out.replace_range(i..i + 36, "<uuid>");
                }
                i += 1;
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(without_uuids).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_uuids(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What one replayed exchange produced.
struct Replayed {
    case: String,
    method: String,
    path: String,
    status: u16,
    content_type: String,
    body: Option<Value>,
}

/// Replays every recorded exchange against `sim`, asserting each answer, and
/// returns what the simulator sent.
async fn replay(sim: &SimHandle) -> Vec<Replayed> {
    let http = reqwest::Client::new();
    let mut uuids: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for ex in exchanges() {
        let case = ex["case"].as_str().unwrap_or("?").to_owned();
        let req = &ex["request"];
        let rec = &ex["response"];
        let method = req["method"].as_str().unwrap_or("GET").to_owned();
        let mut path = req["path"]
            .as_str()
            .unwrap_or("/api/v3/stages/captcha/")
            .to_owned();
        for (recorded, ours) in &uuids {
            path = path.replace(recorded, ours);
        }

        // Seeding what the recording's server had at this point.
        if case.starts_with("get: stage bound to a flow") {
            let login = sim
                .captcha_stages()
                .into_iter()
                .find(|s| s.fields.name == "rec-login")
                .expect("rec-login exists");
            sim.seed_flow_binding(login.uuid, "rec-flow", "Rec flow", 10);
        }
        if case.starts_with("list: default page size") {
            let have = sim.captcha_stages().len();
            for i in have..107 {
                sim.seed_captcha(
                    StageFields::with_defaults(format!("rec-bulk-{i:03}"), "bulk-site"),
                    "bulk-secret",
                );
            }
        }

        let mut builder = http.request(
            method.parse().expect("a method"),
            format!("{}{}", sim.url(), path),
        );
        let headers = req
            .get("headers")
            .cloned()
            .unwrap_or_else(|| json!({"Authorization": "Bearer <token>"}));
        for (name, value) in headers.as_object().expect("headers") {
            let value = value.as_str().unwrap_or_default().replace("<token>", TOKEN);
            builder = builder.header(name.as_str(), value);
        }
        match &req["body"] {
            Value::Null => {}
            Value::String(raw) => builder = builder.body(raw.clone()),
            body => builder = builder.body(serde_json::to_vec(body).expect("json")),
        }
        let response = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let status = response.status().as_u16();
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let allow = header("allow");
        let www_authenticate = header("www-authenticate");
        let text = response.text().await.expect("a body");

        assert_eq!(
            status as u64,
            rec["status"].as_u64().expect("status"),
            "{case}: status; body {text}"
        );
        assert_eq!(
            www_authenticate, None,
            "{case}: authentik never sends WWW-Authenticate"
        );
        if let Some(headers) = rec.get("headers") {
            assert_eq!(
                Some(content_type.as_str()).filter(|c| !c.is_empty()),
                headers.get("content-type").and_then(Value::as_str),
                "{case}: content-type"
            );
            assert_eq!(
                allow.as_deref(),
                headers.get("allow").and_then(Value::as_str),
                "{case}: allow"
            );
        }

        let body: Option<Value> = serde_json::from_str(&text).ok();
        if let Some(len) = rec.get("results_len") {
            let body = body
                .clone()
                .unwrap_or_else(|| panic!("{case}: JSON expected"));
            assert_eq!(body["pagination"], rec["pagination"], "{case}: pagination");
            assert_eq!(
                body["results"].as_array().map(Vec::len) as Option<usize>,
                len.as_u64().map(|n| n as usize),
                "{case}: results"
            );
        } else {
            match &rec["body"] {
                Value::String(s) if s.ends_with(HTML_ELISION) => {
                    let prefix = s.trim_end_matches(HTML_ELISION);
                    assert!(
                        text.starts_with(prefix),
                        "{case}: HTML page starts as recorded"
                    );
                }
                Value::String(s) => assert_eq!(&text, s, "{case}: body"),
                expected => {
                    let got = body
                        .clone()
                        .unwrap_or_else(|| panic!("{case}: JSON expected, got {text:?}"));
                    assert_eq!(without_uuids(&got), without_uuids(expected), "{case}: body");
                    // The recorded create's uuid maps to ours.
                    if status == 201 {
                        let recorded = expected["pk"].as_str().expect("pk").to_owned();
                        let ours = got["pk"].as_str().expect("pk").to_owned();
                        assert_ne!(
                            Some(ours.as_str()),
                            req["body"]["pk"].as_str(),
                            "{case}: a pk in the body is ignored"
                        );
                        uuids.insert(recorded, ours);
                    }
                }
            }
        }
        out.push(Replayed {
            case,
            method,
            path,
            status,
            content_type,
            body,
        });
    }
    out
}

#[tokio::test]
async fn the_simulator_answers_every_recorded_exchange_as_authentik_did() {
    let sim = sim().await;
    sim.seed_other_stage("rec-dummy", "ak-stage-identification-form");
    let replayed = replay(&sim).await;
    assert_eq!(replayed.len(), exchanges().len());
    // The recording's write-only key was stored, trimmed, and never shown.
    assert_eq!(replayed.len(), 33, "every recorded exchange was replayed");
    let login = sim
        .captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == "rec-login")
        .expect("rec-login");
    assert_eq!(sim.private_key_of(login.uuid).as_deref(), Some("secret-a"));
    assert!(replayed.iter().all(|r| {
        !r.body
            .as_ref()
            .is_some_and(|b| b.to_string().contains("secret-a"))
    }));
}

/// Facts from CONTRACT.md the recording does not cover.
#[tokio::test]
async fn the_simulator_follows_the_contract_beyond_the_recording() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{}", sim.url(), p);
    let auth = format!("Bearer {TOKEN}");
    let post = |body: Vec<u8>| {
        http.post(url("/api/v3/stages/captcha/"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    // NaN and infinity accepted, read back as null.
    let (s, b) = status_and_json(post(br#"{"name":"n1","public_key":"p","private_key":"k","score_min_threshold":"NaN","score_max_threshold":"inf"}"#.to_vec()).await.unwrap()).await;
    assert_eq!(
        (s, &b["score_min_threshold"], &b["score_max_threshold"]),
        (201, &Value::Null, &Value::Null)
    );
    // Numbers stringified for strings, `true` rejected.
    let (s, b) = status_and_json(
        post(br#"{"name":123,"public_key":true,"private_key":"k"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b),
        (400, json!({"public_key": ["Not a valid string."]}))
    );
    let (s, b) = status_and_json(
        post(br#"{"name":123,"public_key":"p","private_key":"k"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &b["name"]), (201, &json!("123")));
    // Case-sensitive uniqueness after trimming.
    let (s, _) = status_and_json(
        post(br#"{"name":"N1","public_key":"p","private_key":"k"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = status_and_json(
        post(br#"{"name":" n1 ","public_key":"p","private_key":"k"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"name": ["stage with this name already exists."]})
        )
    );
    // Empty body is {}; invalid UTF-8 and an over-long name are the empty 405.
    let (s, b) = status_and_json(post(Vec::new()).await.unwrap()).await;
    assert_eq!(s, 400);
    assert_eq!(b["name"], json!(["This field is required."]));
    for body in [
        vec![0xff, 0xfe, b'{'],
        format!(
            r#"{{"name":"{}","public_key":"p","private_key":"k"}}"#,
            "x".repeat(3000)
        )
        .into_bytes(),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    // An unsatisfiable Accept header is 406, before auth.
    for accept in ["text/html", ""] {
        let r = http
            .get(url("/api/v3/stages/captcha/"))
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 406, "Accept: {accept:?}");
    }
    // Without a token, detail routes answer with the permission message.
    let id = sim.captcha_stages()[0].uuid;
    let (s, b) = status_and_json(
        http.get(url(&format!("/api/v3/stages/captcha/{id}/")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            403,
            json!({"detail": "You do not have permission to perform this action."})
        )
    );
    // The scheme is case-insensitive.
    let r = http
        .get(url("/api/v3/stages/captcha/"))
        .header("Authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Ordering by name is byte order; -name reverses; search is case-insensitive.
    let names = |b: &Value| {
        b["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, b) = status_and_json(
        http.get(url("/api/v3/stages/captcha/?ordering=-name"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(names(&b), ["n1", "N1", "123"]);
    let (_, b) = status_and_json(
        http.get(url("/api/v3/stages/captcha/?search=n&ordering=bogus"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(names(&b), ["N1", "n1"]);
    // request_content_type appears with 2026.8.
    sim.set_version("2026.8.0");
    let (_, b) = status_and_json(
        http.get(url(&format!("/api/v3/stages/captcha/{id}/")))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        b["request_content_type"],
        "application/x-www-form-urlencoded"
    );
    let (_, b) = status_and_json(
        http.get(url("/api/v3/admin/version/"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["version_current"], "2026.8.0");
    // /stages/all/ shows every type.
    sim.seed_other_stage("ident", "ak-stage-identification-form");
    let (_, b) = status_and_json(
        http.get(url("/api/v3/stages/all/?name=ident"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["results"][0]["verbose_name"], "Identification Stage");
    // DELETE is 204 with an empty body.
    let r = http
        .delete(url(&format!("/api/v3/stages/captcha/{id}/")))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

/// Sends one recorded request (`body`: JSON text) to `sim` with the token,
/// and asserts the recorded status, `content-type` and `allow`. Returns the
/// status and the body's text.
async fn send_recorded(
    http: &reqwest::Client,
    sim: &SimHandle,
    case: &str,
    method: &str,
    path: &str,
    body: Option<String>,
    rec: &Value,
) -> (u16, String) {
    let mut builder = http
        .request(method.parse().unwrap(), format!("{}{path}", sim.url()))
        .header("Authorization", format!("Bearer {TOKEN}"));
    if let Some(body) = body {
        builder = builder
            .header("Content-Type", "application/json")
            .body(body);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |n: &str| {
        response
            .headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (content_type, allow) = (header("content-type"), header("allow"));
    let text = response.text().await.unwrap();
    assert_eq!(
        u64::from(status),
        rec["status"].as_u64().unwrap(),
        "{case}: {text}"
    );
    assert_eq!(
        content_type.as_deref(),
        rec["headers"]["content-type"].as_str(),
        "{case}: content-type"
    );
    assert_eq!(
        allow.as_deref(),
        rec["headers"]["allow"].as_str(),
        "{case}: allow"
    );
    (status, text)
}

/// `used_by` and a delete of a stage that flows use, replayed from
/// tests/fixtures/exchanges-2025.12.4-used-by.json. The simulator serves only
/// the captcha stage API: the recording's flow, identification stage and
/// binding are seeded where it created them (uuids mapped), and its reads of
/// those after the delete are checked on the simulator's state instead.
#[tokio::test]
async fn used_by_and_delete_answer_as_recorded() {
    const USED_BY: &str = include_str!("fixtures/exchanges-2025.12.4-used-by.json");
    let doc: Value = serde_json::from_str(USED_BY).expect("the recording is JSON");
    let exchanges = doc["exchanges"].as_array().expect("exchanges");
    let sim = sim().await;
    let http = reqwest::Client::new();
    // Recorded uuid -> ours.
    let mut uuids: HashMap<String, String> = HashMap::new();
    let ours = |uuids: &HashMap<String, String>, recorded: &Value| -> uuid::Uuid {
        let recorded = recorded.as_str().expect("a uuid");
        uuids[recorded].parse().expect("a uuid")
    };
    let mut sent = 0;
    for ex in exchanges {
        let case = ex["case"].as_str().expect("case");
        let (req, rec) = (&ex["request"], &ex["response"]);
        let body = &req["body"];
        let recorded_pk = rec["body"]["pk"].as_str().map(str::to_owned);
        let path = req["path"].as_str().expect("path");
        match (req["method"].as_str().expect("method"), path) {
            ("POST", "/api/v3/flows/instances/") => {
                let flow = sim.seed_flow(
                    body["slug"].as_str().expect("slug"),
                    body["title"].as_str().expect("title"),
                );
                uuids.insert(recorded_pk.expect("pk"), flow.to_string());
                continue;
            }
            ("POST", "/api/v3/stages/identification/") => {
                let captcha = ours(&uuids, &body["captcha_stage"]);
                let ident = sim
                    .seed_identification_stage(body["name"].as_str().expect("name"), Some(captcha));
                uuids.insert(recorded_pk.expect("pk"), ident.to_string());
                continue;
            }
            ("POST", "/api/v3/flows/bindings/") => {
                let binding = sim.bind(
                    ours(&uuids, &body["target"]),
                    ours(&uuids, &body["stage"]),
                    body["order"].as_i64().expect("order"),
                );
                uuids.insert(recorded_pk.expect("pk"), binding.to_string());
                continue;
            }
            ("GET", p) if p.starts_with("/api/v3/stages/identification/") => {
                let ident = p.trim_start_matches("/api/v3/stages/identification/");
                let ident: uuid::Uuid = uuids[ident.trim_end_matches('/')].parse().unwrap();
                assert_eq!(rec["body"]["captcha_stage"], Value::Null, "{case}");
                assert_eq!(
                    sim.captcha_of_identification_stage(ident),
                    Some(None),
                    "{case}: the delete set captcha_stage to null"
                );
                continue;
            }
            ("GET", p) if p.starts_with("/api/v3/flows/bindings/") => {
                let flow = p.rsplit('=').next().expect("target");
                assert_eq!(rec["body"]["pagination"]["count"], 0, "{case}");
                assert_eq!(
                    sim.bindings_of_flow(uuids[flow].parse().unwrap()),
                    vec![],
                    "{case}: the delete removed the binding"
                );
                continue;
            }
            _ => {}
        }
        let mut path = path.to_owned();
        for (recorded, ours) in &uuids {
            path = path.replace(recorded, ours);
        }
        let body = (!body.is_null()).then(|| body.to_string());
        let (status, text) = send_recorded(
            &http,
            &sim,
            case,
            req["method"].as_str().unwrap(),
            &path,
            body,
            rec,
        )
        .await;
        sent += 1;
        if rec["body"].is_null() {
            assert_eq!(text, "", "{case}: empty body");
            continue;
        }
        let got: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{case}: {text}"));
        assert_eq!(
            without_uuids(&got),
            without_uuids(&rec["body"]),
            "{case}: body"
        );
        if status == 201 {
            uuids.insert(
                recorded_pk.expect("pk"),
                got["pk"].as_str().unwrap().to_owned(),
            );
        }
        // The uuids inside the answer are the ones seeded, not merely uuids.
        if case.starts_with("used_by") {
            for (item, recorded) in got
                .as_array()
                .unwrap()
                .iter()
                .zip(rec["body"].as_array().unwrap())
            {
                assert_eq!(
                    item["pk"].as_str(),
                    uuids
                        .get(recorded["pk"].as_str().unwrap())
                        .map(String::as_str),
                    "{case}"
                );
            }
        }
    }
    assert_eq!(sent, 5, "every captcha-API exchange was sent");

    // Nothing uses a fresh stage: an empty list.
    let fresh = sim.seed_captcha(StageFields::with_defaults("fresh", "p"), "k");
    let r = http
        .get(format!(
            "{}/api/v3/stages/captcha/{fresh}/used_by/",
            sim.url()
        ))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

/// Flows, flow-stage bindings and identification stages, replayed from
/// tests/fixtures/exchanges-2025.12.4-guards.json in order: every exchange on
/// those routes and on the captcha stage API is sent and compared (status,
/// `content-type`, `allow`, body without uuids), the validation quirks
/// included. The recording's other exchanges (the token's user, users, groups,
/// tokens and the event log) are not routes of the simulator and are left
/// out; the second user's requests are sent with the one token.
#[tokio::test]
async fn guards_answer_as_recorded() {
    const GUARDS: &str = include_str!("fixtures/exchanges-2025.12.4-guards.json");
    let doc: Value = serde_json::from_str(GUARDS).expect("the recording is JSON");
    let exchanges = doc["exchanges"].as_array().expect("exchanges");
    assert_eq!(exchanges.len(), 56, "the whole recording is here");
    let sim = sim().await;
    let http = reqwest::Client::new();
    let mut uuids: HashMap<String, String> = HashMap::new();
    let map = |uuids: &HashMap<String, String>, text: &str| -> String {
        let mut text = text.to_owned();
        for (recorded, ours) in uuids {
            text = text.replace(recorded, ours);
        }
        text
    };
    let mut sent = Vec::new();
    for ex in exchanges {
        let case = ex["case"].as_str().expect("case");
        let (req, rec) = (&ex["request"], &ex["response"]);
        let path = req["path"].as_str().expect("path");
        let ours = ["/api/v3/flows/", "/api/v3/stages/"];
        if !ours.iter().any(|prefix| path.starts_with(prefix)) {
            continue;
        }
        let method = req["method"].as_str().expect("method");
        let body = (!req["body"].is_null()).then(|| map(&uuids, &req["body"].to_string()));
        let (status, text) =
            send_recorded(&http, &sim, case, method, &map(&uuids, path), body, rec).await;
        sent.push(case.to_owned());
        if rec["body"].is_null() {
            assert_eq!(text, "", "{case}: empty body");
            continue;
        }
        let got: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{case}: {text}"));
        // The recording notes where it cut a list: compare what it kept.
        let mut expected = rec["body"].clone();
        let mut compared = got.clone();
        if let Some(note) = expected.as_object_mut().and_then(|o| o.remove("_note")) {
            let kept = expected["results"].as_array().map_or(0, Vec::len);
            if let Some(results) = compared["results"].as_array_mut() {
                results.truncate(kept);
            }
            assert!(note.is_string(), "{case}: {note}");
        }
        assert_eq!(
            without_uuids(&compared),
            without_uuids(&expected),
            "{case}: body"
        );
        if status == 201 {
            uuids.insert(
                rec["body"]["pk"].as_str().expect("pk").to_owned(),
                got["pk"].as_str().unwrap().to_owned(),
            );
        }
        // The uuids the answer names are the ones this replay made.
        let named = |v: &Value| {
            v.as_str()
                .map(|recorded| uuids.get(recorded).cloned().unwrap_or(recorded.to_owned()))
        };
        for key in ["pk", "target", "stage", "captcha_stage"] {
            if status < 300 && rec["body"].get(key).is_some_and(Value::is_string) {
                assert_eq!(
                    got[key].as_str().map(str::to_owned),
                    named(&rec["body"][key]),
                    "{case}: {key}"
                );
            }
        }
    }
    assert_eq!(
        sent.len(),
        42,
        "every flow, binding and stage exchange was sent: {sent:?}"
    );
}

// ---------------------------------------------------------------------------
// Schema checks.

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/authentik/schema-2026.5.6.yml")
}

/// authentik's components, or `None` (with a clear message) when the schema
/// file is not there.
fn load_components() -> Option<Value> {
    let path = schema_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: schema file not found at {}", path.display());
        return None;
    };
    let doc: Value = serde_saphyr::from_str(&text).expect("the schema is YAML");
    Some(doc["components"]["schemas"].clone())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// A request body: no readOnly property, no unknown property.
    Request,
    /// A response body: no writeOnly property.
    Response,
}

/// The subset of OpenAPI 3.0 schema objects authentik's components use.
fn check(
    components: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    dir: Direction,
    errors: &mut Vec<String>,
) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/components/schemas/");
        return check(components, &components[name], value, at, dir, errors);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(components, s, value, at, dir, errors);
        }
    }
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            errors.push(format!("{at}: null where not nullable"));
        }
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} not one of {options:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return errors.push(format!("{at}: not an object"));
            };
            let props = schema.get("properties").and_then(Value::as_object);
            let flag = |name: &str, f: &str| {
                props.and_then(|p| p.get(name)).and_then(|p| p.get(f)) == Some(&Value::Bool(true))
            };
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap_or_default();
                let skip = match dir {
                    Direction::Request => flag(req, "readOnly"),
                    Direction::Response => flag(req, "writeOnly"),
                };
                if !skip && !obj.contains_key(req) {
                    errors.push(format!("{at}: required property {req} missing"));
                }
            }
            for (key, v) in obj {
                match props.and_then(|p| p.get(key)) {
                    Some(p) => {
                        if dir == Direction::Request && flag(key, "readOnly") {
                            errors.push(format!("{at}.{key}: read-only property sent"));
                        }
                        if dir == Direction::Response && flag(key, "writeOnly") {
                            errors.push(format!("{at}.{key}: write-only property returned"));
                        }
                        check(components, p, v, &format!("{at}.{key}"), dir, errors);
                    }
                    None if dir == Direction::Request
                        && schema.get("additionalProperties").is_none() =>
                    {
                        errors.push(format!("{at}.{key}: unknown property sent"));
                    }
                    None => {}
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(
                        components,
                        &schema["items"],
                        item,
                        &format!("{at}[{i}]"),
                        dir,
                        errors,
                    );
                }
            }
            None => errors.push(format!("{at}: not an array")),
        },
        Some("string") => match value.as_str() {
            Some(s) => {
                let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                if (s.chars().count() as u64) < min {
                    errors.push(format!("{at}: shorter than {min}"));
                }
                if schema.get("format").and_then(Value::as_str) == Some("uuid") && !is_uuid(s) {
                    errors.push(format!("{at}: not a uuid"));
                }
            }
            None => errors.push(format!("{at}: not a string")),
        },
        Some("number") if !value.is_number() => errors.push(format!("{at}: not a number")),
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            errors.push(format!("{at}: not an integer"))
        }
        Some("boolean") if !value.is_boolean() => errors.push(format!("{at}: not a boolean")),
        _ => {}
    }
}

/// The component a simulator answer should match.
fn component_for(method: &str, path: &str, status: u16) -> Option<(&'static str, bool)> {
    let p = path.split('?').next().unwrap_or(path);
    let list = p == "/api/v3/stages/captcha/";
    Some(match status {
        200 if p == "/api/v3/admin/version/" => ("Version", false),
        200 if p == "/api/v3/stages/all/" => ("PaginatedStageList", false),
        200 if p.ends_with("/used_by/") => ("UsedBy", true),
        200 if list && method == "GET" => ("PaginatedCaptchaStageList", false),
        200 | 201 => ("CaptchaStage", false),
        400 => ("ValidationError", false),
        403 | 404 | 405 | 406 | 415 => ("GenericError", false),
        _ => return None,
    })
}

#[tokio::test]
async fn the_simulators_answers_match_authentiks_schema() {
    let Some(components) = load_components() else {
        return;
    };
    let sim = sim().await;
    sim.seed_other_stage("rec-dummy", "ak-stage-identification-form");
    let mut errors = Vec::new();
    let mut checked = 0;
    for r in replay(&sim).await {
        let (Some(body), true) = (&r.body, r.content_type.contains("json")) else {
            continue;
        };
        let Some((name, array)) = component_for(&r.method, &r.path, r.status) else {
            continue;
        };
        let schema = if array {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}})
        } else {
            json!({"$ref": format!("#/components/schemas/{name}")})
        };
        check(
            &components,
            &schema,
            body,
            &format!("{} ({name})", r.case),
            Direction::Response,
            &mut errors,
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} answers checked");
    assert!(
        errors.is_empty(),
        "schema violations:\n{}",
        errors.join("\n")
    );
}

#[tokio::test]
async fn the_clients_request_bodies_match_authentiks_schema() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let Some(components) = load_components() else {
        return;
    };
    let server = MockServer::start().await;
    let stage = json!({
        "pk": "db44783d-b6a4-4fc0-bae4-2a08e5151f2e", "name": "a", "component": "ak-stage-captcha-form",
        "verbose_name": "Captcha Stage", "verbose_name_plural": "Captcha Stages",
        "meta_model_name": "authentik_stages_captcha.captchastage", "flow_set": [], "public_key": "p",
        "js_url": "j", "api_url": "a", "interactive": false, "score_min_threshold": 0.5,
        "score_max_threshold": 1.0, "error_on_invalid_score": true
    });
    Mock::given(method("POST"))
        .and(path("/api/v3/stages/captcha/"))
        .respond_with(ResponseTemplate::new(201).set_body_json(&stage))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(
            "/api/v3/stages/captcha/db44783d-b6a4-4fc0-bae4-2a08e5151f2e/",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(&stage))
        .mount(&server)
        .await;

    let client = client(&server.uri());
    let fields = StageFields {
        interactive: true,
        score_min_threshold: 0.25,
        ..StageFields::with_defaults("a", "p")
    };
    let secret = key("private");
    Stages::new(&client)
        .create(&write(&fields, &secret, "2025.12.4").request())
        .await
        .expect("create");
    let id = uuid::Uuid::parse_str("db44783d-b6a4-4fc0-bae4-2a08e5151f2e").unwrap();
    Stages::new(&client)
        .update(id, &write(&fields, &secret, "2026.5.6").request())
        .await
        .expect("update");

    let requests = server.received_requests().await.expect("recording is on");
    assert_eq!(requests.len(), 2);
    let mut errors = Vec::new();
    for r in &requests {
        let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        check(
            &components,
            &json!({"$ref": "#/components/schemas/CaptchaStageRequest"}),
            &body,
            r.method.as_str(),
            Direction::Request,
            &mut errors,
        );
        // Every managed field is sent, so a PUT converges.
        assert_eq!(body.as_object().map(|o| o.len()), Some(9), "{body}");
    }
    assert!(
        errors.is_empty(),
        "schema violations:\n{}",
        errors.join("\n")
    );
}
