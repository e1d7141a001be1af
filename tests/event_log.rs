//! The simulator's event log and `core/users/me/` against the exchanges
//! recorded from a real authentik 2025.12.4
//! (tests/fixtures/exchanges-2025.12.4-guards.json).
//!
//! The recording's captcha stage is replayed on the simulator: created and
//! changed with the token (API writes), then changed by a second user (the
//! simulator's "UI edit"). Each recorded event query about captcha stages is
//! then asked of the simulator and compared by shape: status, `content-type`,
//! `allow`, pagination's keys, the keys of every event (and of its `user`,
//! `context.model` and `context.http_request`), and for each event the
//! action, the acting user and the request's method, in order. Values that
//! depend on the install (counts of a long-lived log, uuids, times) are not
//! compared; the counts of the queries about the replayed stage are.

use std::collections::BTreeSet;

use serde_json::Value;
use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{self, Actor, SimConfig, SimHandle};

const RECORDED: &str = include_str!("fixtures/exchanges-2025.12.4-guards.json");
const TOKEN: &str = "contract-token";

fn exchange(case: &str) -> Value {
    let doc: Value = serde_json::from_str(RECORDED).expect("the recording is JSON");
    doc["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|e| e["case"] == case)
        .unwrap_or_else(|| panic!("no recorded case {case:?}"))
        .clone()
}

async fn sim() -> SimHandle {
    simulator::start(SimConfig {
        token: TOKEN.into(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    allow: Option<String>,
    body: Value,
}

async fn send(sim: &SimHandle, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", sim.url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("User-Agent", "Python-urllib/3.11");
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the simulator answers");
    let header = |n: &str| {
        response
            .headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (content_type, allow) = (header("content-type"), header("allow"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        allow,
        body,
    }
}

/// The recorded answer's status and headers, and the shape of its body.
fn assert_like(case: &str, got: &Answer, recorded: &Value) {
    let rec = &recorded["response"];
    assert_eq!(
        u64::from(got.status),
        rec["status"].as_u64().unwrap(),
        "{case}"
    );
    assert_eq!(
        got.content_type.as_deref(),
        rec["headers"]["content-type"].as_str(),
        "{case}: content-type"
    );
    assert_eq!(
        got.allow.as_deref(),
        rec["headers"]["allow"].as_str(),
        "{case}: allow"
    );
    assert_eq!(
        keys(&got.body),
        keys(&rec["body"]),
        "{case}: keys of the answer"
    );
}

/// An event list: pagination's keys, each event's keys, and per event the
/// action, the user's name and the request's method, in order.
fn assert_events_like(case: &str, got: &Answer, recorded: &Value, users: &[(&str, &str)]) {
    assert_like(case, got, recorded);
    let rec = &recorded["response"]["body"];
    assert_eq!(
        keys(&got.body["pagination"]),
        keys(&rec["pagination"]),
        "{case}: pagination"
    );
    let (ours, theirs) = (
        got.body["results"].as_array().expect("results"),
        rec["results"].as_array().expect("results"),
    );
    assert_eq!(ours.len(), theirs.len(), "{case}: how many events");
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(keys(o), keys(t), "{case}: event {i}");
        for part in ["user", "context", "brand"] {
            assert_eq!(keys(&o[part]), keys(&t[part]), "{case}: event {i} {part}");
        }
        for part in ["model", "http_request"] {
            assert_eq!(
                keys(&o["context"][part]),
                keys(&t["context"][part]),
                "{case}: event {i} context.{part}"
            );
        }
        assert_eq!(o["action"], t["action"], "{case}: event {i} action");
        assert_eq!(o["app"], t["app"], "{case}: event {i} app");
        for field in ["app", "model_name"] {
            assert_eq!(
                o["context"]["model"][field], t["context"]["model"][field],
                "{case}: event {i} model {field}"
            );
        }
        assert_eq!(
            o["context"]["http_request"]["method"], t["context"]["http_request"]["method"],
            "{case}: event {i} method"
        );
        // The recording's users, mapped to the replay's.
        let recorded_user = t["user"]["username"].as_str().unwrap();
        let ours_user = users
            .iter()
            .find(|(r, _)| *r == recorded_user)
            .map(|(_, o)| *o)
            .unwrap_or(recorded_user);
        assert_eq!(o["user"]["username"], ours_user, "{case}: event {i} user");
        let created = o["created"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(created).is_ok(),
            "{case}: created {created:?} is RFC 3339"
        );
    }
}

#[tokio::test]
async fn the_event_log_answers_as_recorded() {
    let sim = sim().await;

    let case = "who am I (the token's user)";
    let got = send(&sim, "GET", "/api/v3/core/users/me/", None).await;
    let recorded = exchange(case);
    assert_like(case, &got, &recorded);
    assert_eq!(
        keys(&got.body["user"]),
        keys(&recorded["response"]["body"]["user"]),
        "{case}: the user's keys"
    );
    assert_eq!(got.body["user"]["username"], "akadmin");

    // The recording's stage: created and changed with the token.
    let create = exchange("create a captcha stage to bind");
    let created = send(
        &sim,
        "POST",
        "/api/v3/stages/captcha/",
        Some(&create["request"]["body"]),
    )
    .await;
    assert_eq!(created.status, 201);
    let uuid: uuid::Uuid = created.body["pk"].as_str().unwrap().parse().unwrap();
    let own = exchange("our own change of the captcha stage");
    let changed = send(
        &sim,
        "PATCH",
        &format!("/api/v3/stages/captcha/{uuid}/"),
        Some(&own["request"]["body"]),
    )
    .await;
    assert_eq!(changed.status, 200);

    let case = "events of the captcha stage, newest first";
    let query = format!(
        "/api/v3/events/events/?context_model_app=authentik_stages_captcha&context_model_pk={uuid}&ordering=-created&page_size=5"
    );
    let got = send(&sim, "GET", &query, None).await;
    assert_events_like(case, &got, &exchange(case), &[]);
    let newest = &got.body["results"][0];
    assert_eq!(
        newest["context"]["model"]["pk"],
        uuid.simple().to_string(),
        "the model's pk is the uuid without dashes"
    );
    assert_eq!(newest["context"]["model"]["name"], "acc-rec-g-cap");
    assert_eq!(
        newest["context"]["http_request"]["path"],
        format!("/api/v3/stages/captcha/{uuid}/")
    );
    assert_eq!(
        newest["context"]["http_request"]["user_agent"],
        "Python-urllib/3.11"
    );
    assert_eq!(newest["client_ip"], "127.0.0.1");
    assert_eq!(got.body["pagination"]["count"], 2);

    // The undashed pk filters the same.
    let undashed = query.replace(&uuid.to_string(), &uuid.simple().to_string());
    let again = send(&sim, "GET", &undashed, None).await;
    assert_eq!(again.body["pagination"]["count"], 2);

    // A second user changes it in the UI.
    let ui = Actor::ui("ui-admin", "192.0.2.7");
    sim.edit_as(&ui, uuid, |f| f.score_min_threshold = 0.05);
    let case = "events of the captcha stage now";
    let got = send(
        &sim,
        "GET",
        &format!(
            "/api/v3/events/events/?context_model_app=authentik_stages_captcha&context_model_pk={uuid}&ordering=-created&page_size=3"
        ),
        None,
    )
    .await;
    let users = [("acc-rec-g-admin", "ui-admin")];
    assert_events_like(case, &got, &exchange(case), &users);
    assert_eq!(got.body["results"][0]["client_ip"], "192.0.2.7");
    assert_eq!(got.body["pagination"]["count"], 3);
    assert_ne!(
        got.body["results"][0]["user"]["pk"], got.body["results"][1]["user"]["pk"],
        "another user"
    );

    let case = "model_updated events of captcha stages";
    let got = send(
        &sim,
        "GET",
        "/api/v3/events/events/?action=model_updated&context_model_app=authentik_stages_captcha&ordering=-created&page_size=3",
        None,
    )
    .await;
    // The recording's log held more events; the replay has two updates.
    assert_like(case, &got, &exchange(case));
    let actions: Vec<&str> = got.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["model_updated", "model_updated"], "{case}");

    let case = "newest event of any kind (a cheap change cursor)";
    let got = send(
        &sim,
        "GET",
        "/api/v3/events/events/?ordering=-created&page_size=1",
        None,
    )
    .await;
    assert_like(case, &got, &exchange(case));
    assert_eq!(got.body["pagination"]["count"], 3);
    assert_eq!(got.body["pagination"]["next"], 2);
    assert_eq!(got.body["results"][0]["user"]["username"], "ui-admin");

    let case = "events by username";
    let got = send(
        &sim,
        "GET",
        "/api/v3/events/events/?username=ui-admin&ordering=-created&page_size=3",
        None,
    )
    .await;
    assert_like(case, &got, &exchange(case));
    assert_eq!(got.body["pagination"]["count"], 1, "{case}");
}

#[tokio::test]
async fn deletes_are_logged_and_a_token_without_permission_is_refused() {
    let sim = sim().await;
    let stage = sim.seed_captcha(StageFields::with_defaults("gone", "p"), "k");
    assert!(sim.delete_as(&Actor::ui("bob", "198.51.100.4"), stage));
    let got = send(&sim, "GET", "/api/v3/events/events/?page_size=1", None).await;
    assert_eq!(got.body["results"][0]["action"], "model_deleted");
    assert_eq!(got.body["results"][0]["user"]["username"], "bob");

    // Seeding and the eventless edit log nothing.
    let quiet = sim.seed_captcha(StageFields::with_defaults("quiet", "p"), "k");
    sim.edit(quiet, |f| f.interactive = true);
    assert_eq!(sim.event_count(), 1);

    sim.set_event_log_readable(false);
    let got = send(&sim, "GET", "/api/v3/events/events/", None).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        got.body["detail"],
        "You do not have permission to perform this action."
    );
    sim.set_event_log_readable(true);
    sim.expire_events();
    let got = send(&sim, "GET", "/api/v3/events/events/", None).await;
    assert_eq!(got.body["pagination"]["count"], 0);
}
