//! The client against the simulator (and wiremock where a response must be
//! odd): pagination, every error class in the user's words, retries and what is
//! never retried, the lost create, and version-dependent fields.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagesync::authentik::{ApiError, Client, RequestRecord, RetryPolicy};
use stagesync::kinds::captcha::StageFields;
use stagesync::kinds::captcha::api::Stages;
use stagesync::simulator::{Fault, FaultKind, SimConfig};
use support::client::*;
use uuid::Uuid;

const LIST: &str = "/api/v3/stages/captcha/";
const ONE: &str = "/api/v3/stages/captcha/{uuid}/";

fn seed_many(sim: &stagesync::simulator::SimHandle, n: usize) {
    for i in 0..n {
        sim.seed_captcha(
            StageFields::with_defaults(format!("stage-{i:04}"), format!("site-{i}")),
            "k",
        );
    }
}

/// Records every attempt the client makes.
fn observed(client: Client) -> (Client, Arc<Mutex<Vec<RequestRecord>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let client = client.with_observer(Arc::new(move |r: &RequestRecord| {
        sink.lock().unwrap().push(r.clone())
    }));
    (client, seen)
}

#[tokio::test]
async fn lists_every_page_with_the_largest_page_size() {
    let sim = sim().await;
    seed_many(&sim, 250);
    let stages = Stages::new(&client(&sim.url())).list().await.expect("list");
    assert_eq!(stages.len(), 250);
    let mut names: Vec<_> = stages.iter().map(|s| s.fields.name.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), 250, "no stage twice");
    assert_eq!(sim.request_counts().get("GET", LIST), 3, "100 + 100 + 50");
}

#[tokio::test]
async fn follows_next_when_the_install_caps_pages_lower() {
    let sim = sim_with(SimConfig {
        max_page_size: 30,
        ..SimConfig::default()
    })
    .await;
    seed_many(&sim, 95);
    let stages = Stages::new(&client(&sim.url())).list().await.expect("list");
    assert_eq!(stages.len(), 95);
    assert_eq!(sim.request_counts().get("GET", LIST), 4);
}

#[tokio::test]
async fn an_empty_install_lists_nothing_in_one_request() {
    let sim = sim().await;
    assert!(
        Stages::new(&client(&sim.url()))
            .list()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sim.request_counts().total(), 1);
}

#[tokio::test]
async fn reads_the_version_and_accepts_urls_with_api_v3_and_slashes() {
    let sim = sim().await;
    for url in [
        sim.url(),
        format!("{}/", sim.url()),
        format!("{}/api/v3/", sim.url()),
    ] {
        let c = client(&url);
        assert_eq!(c.base_url(), sim.url());
        assert_eq!(c.version().await.expect("version").to_string(), "2025.12.4");
    }
}

#[tokio::test]
async fn creates_and_updates_with_every_field_and_the_key() {
    let sim = sim().await;
    let c = client(&sim.url());
    let fields = StageFields {
        js_url: " https://js.example/api.js ".into(),
        score_min_threshold: 0.7,
        ..StageFields::with_defaults("login", "site")
    };
    let created = Stages::new(&c)
        .create(&write(&fields, &key(" first-key "), "2025.12.4").request())
        .await
        .expect("create");
    assert_eq!(created.fields.js_url, "https://js.example/api.js");
    assert_eq!(created.fields.score_min_threshold, 0.7);
    assert_eq!(
        sim.private_key_of(created.uuid).as_deref(),
        Some("first-key")
    );

    // Someone edits in the UI; a PUT with every field converges.
    sim.edit(created.uuid, |f| {
        f.interactive = true;
        f.api_url = "https://elsewhere".into();
    });
    let desired = StageFields {
        name: "login-renamed".into(),
        ..fields.clone()
    }
    .normalized();
    let updated = Stages::new(&c)
        .update(
            created.uuid,
            &write(&desired, &key("second-key"), "2025.12.4").request(),
        )
        .await
        .expect("update");
    assert_eq!(updated.uuid, created.uuid);
    let desired_live = StageFields {
        request_content_type: None,
        ..desired
    };
    assert_eq!(updated.fields, desired_live);
    assert_eq!(sim.captcha_stages()[0].fields, desired_live);
    assert_eq!(
        sim.private_key_of(created.uuid).as_deref(),
        Some("second-key")
    );
}

#[tokio::test]
async fn finds_which_stage_of_any_type_holds_a_name() {
    let sim = sim().await;
    let other = sim.seed_other_stage("default-identification", "ak-stage-identification-form");
    let captcha = sim.seed_captcha(StageFields::with_defaults("cap", "p"), "k");
    let c = client(&sim.url());
    let found = c
        .find_stage_by_name("default-identification")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        (found.uuid, found.is_captcha, found.kind.as_str()),
        (other, false, "Identification Stage")
    );
    let found = c.find_stage_by_name(" cap ").await.unwrap().expect("found");
    assert_eq!((found.uuid, found.is_captcha), (captcha, true));
    assert_eq!(c.find_stage_by_name("nobody").await.unwrap(), None);
}

#[tokio::test]
async fn used_by_names_flows_bindings_and_embedding_stages_then_delete_strips_them() {
    let sim = sim().await;
    let captcha = sim.seed_captcha(StageFields::with_defaults("cap", "p"), "k");
    let unused = sim.seed_captcha(StageFields::with_defaults("unused", "p"), "k");
    let flow = sim.seed_flow_binding(captcha, "login", "Login", 10);
    let ident = sim.seed_identification_stage("ident", Some(captcha));
    let c = client(&sim.url());

    let users = Stages::new(&c).used_by(captcha).await.unwrap();
    let models: Vec<(&str, &str)> = users
        .iter()
        .map(|u| (u.model_name.as_str(), u.action.as_str()))
        .collect();
    assert_eq!(
        models,
        [
            ("flow", "cascade_many"),
            ("flowstagebinding", "cascade"),
            ("identificationstage", "set_null")
        ]
    );
    assert_eq!(users[0].name, "Flow login (login)");
    assert_eq!(users[2].name, "Stage ident");
    assert!(Stages::new(&c).used_by(unused).await.unwrap().is_empty());

    // authentik deletes whatever uses the stage: bindings go, the embedding is nulled.
    Stages::new(&c).delete(captcha).await.unwrap();
    assert_eq!(sim.bindings_of_flow(flow), vec![]);
    assert_eq!(sim.captcha_of_identification_stage(ident), Some(None));
    assert!(matches!(
        Stages::new(&c).delete(captcha).await,
        Err(ApiError::StageNotFound { uuid }) if uuid == captcha
    ));
    assert!(matches!(
        Stages::new(&c).used_by(captcha).await,
        Err(ApiError::StageNotFound { .. })
    ));
}

#[tokio::test]
async fn a_delete_answered_503_is_retried_and_used_by_errors_are_errors() {
    let sim = sim().await;
    let captcha = sim.seed_captcha(StageFields::with_defaults("cap", "p"), "k");
    sim.inject(Fault::status(503).on("DELETE", "/api/v3/stages/captcha/"));
    let c = client(&sim.url());
    Stages::new(&c).delete(captcha).await.unwrap();
    assert!(sim.captcha_stages().is_empty());
    // A 403 on used_by is an error in plain words, never an empty list.
    let other = sim.seed_captcha(StageFields::with_defaults("other", "p"), "k");
    let denied = client_from(&settings_with_token(&sim.url(), "wrong-token"));
    assert!(matches!(
        Stages::new(&denied).used_by(other).await,
        Err(ApiError::Forbidden { .. })
    ));
}

// --- errors in the user's words, and which are not retried -----------------

#[tokio::test]
async fn a_rejected_token_is_a_403_in_plain_words_and_not_retried() {
    let sim = sim().await;
    let c = client_from(&settings_with_token(&sim.url(), "wrong-token"));
    let err = Stages::new(&c).list().await.unwrap_err();
    assert!(matches!(err, ApiError::Forbidden { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: Token invalid/expired)"
    );
    assert!(!err.is_transient());
    assert_eq!(sim.request_counts().total(), 1);
}

#[tokio::test]
async fn an_html_404_means_a_wrong_url_and_is_not_retried() {
    let sim = sim().await;
    let url = format!("{}/authentik", sim.url());
    let err = client(&url).version().await.unwrap_err();
    // The page is quoted by its title, not as markup.
    assert_eq!(
        err.to_string(),
        format!(
            "no authentik API at {url} (wrong URL?): HTTP 404 with an HTML page instead of JSON: title \"authentik\""
        )
    );
    assert_eq!(sim.request_counts().total(), 1);
}

#[tokio::test]
async fn a_json_404_on_a_uuid_is_a_missing_stage_and_is_not_retried() {
    let sim = sim().await;
    let id = Uuid::new_v4();
    let fields = StageFields::with_defaults("x", "p");
    let err = Stages::new(&client(&sim.url()))
        .update(id, &write(&fields, &key("k"), "2025.12.4").request())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::StageNotFound { uuid } if uuid == id));
    assert_eq!(
        err.to_string(),
        format!("captcha stage {id} does not exist in authentik (HTTP 404)")
    );
    assert_eq!(sim.request_counts().get("PUT", ONE), 1);
}

#[tokio::test]
async fn a_400_lists_every_field_and_is_not_retried() {
    let sim = sim().await;
    sim.seed_other_stage("taken", "ak-stage-identification-form");
    let fields = StageFields {
        public_key: "  ".into(),
        ..StageFields::with_defaults("taken", "p")
    };
    let err = Stages::new(&client(&sim.url()))
        .create(&write(&fields, &key("k"), "2025.12.4").request())
        .await
        .unwrap_err();
    match &err {
        ApiError::Validation { fields, detail } => {
            assert_eq!(detail, &None);
            assert!(fields.contains(&(
                "name".into(),
                vec!["stage with this name already exists.".into()]
            )));
            assert!(fields.contains(&(
                "public_key".into(),
                vec!["This field may not be blank.".into()]
            )));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("name: stage with this name already exists.")
    );
    assert_eq!(sim.request_counts().get("POST", LIST), 1);
    assert!(sim.captcha_stages().is_empty());
}

#[tokio::test]
async fn connection_refused_is_named_and_retried_a_bounded_number_of_times() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (c, seen) = observed(client(&format!("http://127.0.0.1:{port}")));
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&format!(
        "cannot connect to http://127.0.0.1:{port}: connection refused or unreachable"
    )));
    assert!(err.is_transient());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), RetryPolicy::default().max_attempts as usize);
    assert!(
        seen.iter()
            .all(|r| r.status.is_none() && r.path == "/api/v3/admin/version/")
    );
}

#[tokio::test]
async fn a_dns_failure_is_named_as_such() {
    let mut s = settings("http://stagesync-test.invalid");
    s.allow_http = true;
    let err = client_from(&s).version().await.unwrap_err();
    assert!(matches!(err, ApiError::Dns { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "cannot resolve the host of http://stagesync-test.invalid (DNS lookup failed"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_tls_failure_is_named_as_such() {
    let sim = sim().await;
    // https to a plain-http port: the handshake fails.
    let url = sim.url().replace("http://", "https://");
    let err = client(&url).version().await.unwrap_err();
    assert!(matches!(err, ApiError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("TLS handshake with {url} failed")),
        "{err}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_the_expected_json_is_an_error_with_an_excerpt() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(path("/api/v3/admin/version/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw("{\"version_current\": 12, \u{1b}[31m", "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/api/v3/stages/captcha/"))
        .respond_with(ResponseTemplate::new(418).set_body_string("x".repeat(5000)))
        .mount(&server)
        .await;
    let c = client(&server.uri());
    let err = c.version().await.unwrap_err();
    assert!(
        matches!(err, ApiError::UnexpectedResponse { status: 200, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not the expected JSON")
            && text.contains("\\u{1b}")
            && !text.contains('\u{1b}'),
        "{text}"
    );
    let err = Stages::new(&c).list().await.unwrap_err();
    assert!(
        matches!(err, ApiError::UnexpectedResponse { status: 418, .. }),
        "{err:?}"
    );
    assert!(err.to_string().len() < 400, "a short excerpt");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "not retried"
    );
}

#[tokio::test]
async fn a_server_that_stays_unavailable_fails_after_bounded_attempts() {
    let sim = sim().await;
    sim.inject(Fault::status(503).times(100));
    let err = Stages::new(&client(&sim.url())).list().await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Server {
                status: 503,
                attempts: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("authentik failed with HTTP 503 after 5 attempts")
    );
    assert_eq!(sim.request_counts().total(), 5);
}

#[tokio::test]
async fn configuration_mistakes_are_caught_before_contacting_anything() {
    let err = Client::new(&settings("http://auth.example.com")).unwrap_err();
    assert!(matches!(err, ApiError::HttpNotAllowed { .. }));
    assert!(err.to_string().contains("--allow-http"));
    let mut allowed = settings("http://auth.example.com");
    allowed.allow_http = true;
    assert!(Client::new(&allowed).is_ok());
    assert!(matches!(
        Client::new(&settings("auth.example.com")).unwrap_err(),
        ApiError::BadUrl { .. }
    ));
    let mut ca = settings("https://auth.example.com");
    ca.ca_file = Some("/nonexistent/ca.pem".into());
    let err = Client::new(&ca).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot use the CA file /nonexistent/ca.pem"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    ca.ca_file = Some(junk);
    assert!(matches!(
        Client::new(&ca).unwrap_err(),
        ApiError::CaFile { .. }
    ));
    let mut insecure = settings("https://auth.example.com");
    insecure.insecure_skip_tls_verify = true;
    assert!(Client::new(&insecure).is_ok());
}

// --- transient faults are survived -----------------------------------------

#[tokio::test]
async fn survives_503s_resets_truncated_bodies_and_authentiks_empty_405() {
    let sim = sim().await;
    seed_many(&sim, 3);
    let c = client(&sim.url());
    for fault in [
        Fault::status(503).times(2),
        Fault::status(502),
        Fault::status(504),
        Fault::new(FaultKind::Reset),
        Fault::new(FaultKind::Truncated),
        Fault::new(FaultKind::EmptyHtml405),
    ] {
        sim.reset_counts();
        let extra = fault.times as u64;
        let label = format!("{:?}", fault.kind);
        sim.inject(fault.on("GET", LIST));
        let stages = Stages::new(&c)
            .list()
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(stages.len(), 3, "{label}");
        assert_eq!(sim.request_counts().get("GET", LIST), 1 + extra, "{label}");
    }
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let sim = sim().await;
    sim.inject(Fault::status_retry_after(429, 1).on("GET", "/api/v3/admin/version/"));
    let policy = RetryPolicy {
        retry_after_cap: Duration::from_secs(5),
        ..RetryPolicy::fast(FAST_BASE)
    };
    let c = client(&sim.url()).with_retry_policy(policy);
    let started = Instant::now();
    c.version().await.expect("survives the 429");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(sim.request_counts().get("GET", "/api/v3/admin/version/"), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_capped() {
    let sim = sim().await;
    sim.inject(Fault::status_retry_after(429, 3600));
    let policy = RetryPolicy {
        retry_after_cap: Duration::from_millis(200),
        ..RetryPolicy::fast(FAST_BASE)
    };
    let started = Instant::now();
    client(&sim.url())
        .with_retry_policy(policy)
        .version()
        .await
        .expect("survives");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_hanging_server_times_out_and_is_retried() {
    let sim = sim().await;
    sim.inject(Fault::new(FaultKind::Hang));
    let mut s = settings(&sim.url());
    s.request_timeout = Duration::from_millis(300);
    let (c, seen) = observed(client_from(&s));
    assert_eq!(
        c.version()
            .await
            .expect("second attempt answers")
            .to_string(),
        "2025.12.4"
    );
    let statuses: Vec<_> = seen.lock().unwrap().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [None, Some(200)]);

    sim.inject(Fault::new(FaultKind::Hang).times(10));
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, ApiError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("did not answer in time"));
}

#[tokio::test]
async fn puts_are_retried_through_authentiks_internal_error() {
    let sim = sim().await;
    let id = sim.seed_captcha(StageFields::with_defaults("a", "p"), "k");
    sim.inject(Fault::new(FaultKind::EmptyHtml405).on("PUT", "/api/v3/stages/captcha/"));
    let fields = StageFields {
        interactive: true,
        ..StageFields::with_defaults("a", "p")
    };
    let live = Stages::new(&client(&sim.url()))
        .update(id, &write(&fields, &key("k2"), "2025.12.4").request())
        .await
        .expect("retried");
    assert!(live.fields.interactive);
    assert_eq!(sim.request_counts().get("PUT", ONE), 2);
}

// --- the lost create --------------------------------------------------------

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_sent_again() {
    let sim = sim().await;
    // The server creates the stage, then the answer breaks off.
    sim.inject(Fault::new(FaultKind::Truncated).on("POST", LIST));
    let fields = StageFields::with_defaults("login", "site");
    let live = Stages::new(&client(&sim.url()))
        .create(&write(&fields, &key("k"), "2025.12.4").request())
        .await
        .expect("found after the lost answer");
    assert_eq!(live.fields.name, "login");
    assert_eq!(sim.captcha_stages().len(), 1, "created once");
    assert_eq!(sim.request_counts().get("POST", LIST), 1, "not re-sent");
    assert_eq!(sim.request_counts().get("GET", LIST), 1, "looked up first");
}

#[tokio::test]
async fn a_create_that_did_not_happen_is_sent_again_after_the_lookup() {
    let sim = sim().await;
    sim.inject(Fault::new(FaultKind::EmptyHtml405).on("POST", LIST));
    sim.inject(Fault::new(FaultKind::Reset).on("POST", LIST));
    let fields = StageFields::with_defaults("login", "site");
    let live = Stages::new(&client(&sim.url()))
        .create(&write(&fields, &key("k"), "2025.12.4").request())
        .await
        .expect("created");
    assert_eq!(sim.captcha_stages(), vec![live]);
    assert_eq!(sim.request_counts().get("POST", LIST), 3);
    assert_eq!(
        sim.request_counts().get("GET", LIST),
        2,
        "a lookup before each re-send"
    );
}

// --- version awareness ---------------------------------------------------------

/// The client sends the fields it is given; cut as the planner cuts a plan's
/// writes, they hold only what the server knows.
#[tokio::test]
async fn request_content_type_is_sent_only_to_servers_that_know_it() {
    let fields = StageFields {
        request_content_type: Some("application/json".into()),
        ..StageFields::with_defaults("a", "p")
    };

    let old = sim().await;
    let c = client(&old.url());
    let caps = stagesync::authentik::Capabilities::for_version(c.version().await.unwrap());
    let live = Stages::new(&c)
        .create(&stagesync::kinds::captcha::api::StageWrite {
            fields: &fields.clone().sendable(caps),
            private_key: &key("k"),
        })
        .await
        .unwrap();
    assert_eq!(
        live.fields.request_content_type, None,
        "2025.12 does not report it"
    );
    old.set_version("2026.8.0");
    assert_eq!(
        old.captcha_stages()[0]
            .fields
            .request_content_type
            .as_deref(),
        Some("application/x-www-form-urlencoded"),
        "it was not sent"
    );

    let new = sim_with(SimConfig {
        version: "2026.8.0".into(),
        ..SimConfig::default()
    })
    .await;
    let c = client(&new.url());
    let caps = stagesync::authentik::Capabilities::for_version(c.version().await.unwrap());
    let live = Stages::new(&c)
        .create(&stagesync::kinds::captcha::api::StageWrite {
            fields: &fields.clone().sendable(caps),
            private_key: &key("k"),
        })
        .await
        .unwrap();
    assert_eq!(
        live.fields.request_content_type.as_deref(),
        Some("application/json")
    );
}

#[tokio::test]
async fn thresholds_stored_as_nan_read_as_nan_and_are_never_sent() {
    let sim = sim().await;
    let id = sim.seed_captcha(
        StageFields {
            score_min_threshold: f64::NAN,
            ..StageFields::with_defaults("a", "p")
        },
        "k",
    );
    let c = client(&sim.url());
    let live = Stages::new(&c).list().await.unwrap();
    assert!(live[0].fields.score_min_threshold.is_nan());
    let err = Stages::new(&c)
        .update(
            id,
            &write(&live[0].fields, &key("k"), "2025.12.4").request(),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ApiError::InvalidValue {
            field: "score_min_threshold",
            ..
        }
    ));
    assert_eq!(sim.request_counts().writes(), 0);
}

#[tokio::test]
async fn the_simulator_adds_the_latency_it_is_given() {
    let sim = sim().await;
    let c = client(&sim.url());
    sim.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    c.version().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.set_latency(Duration::ZERO);
    sim.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = c.version().await.unwrap_err();
    assert!(
        err.is_transient(),
        "a stopped simulator refuses connections: {err}"
    );
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_was_still_made() {
    let sim = sim().await;
    let fields = StageFields::with_defaults("login", "site");
    let uuid = sim.seed_captcha(fields.clone(), "old-key");
    let mut s = settings(&sim.url());
    s.request_timeout = Duration::from_millis(300);
    let c = client_from(&s);
    let one = "/api/v3/stages/captcha/";

    // Every attempt is made by the server and its answer lost: the client
    // reports a failure, the server holds the new key.
    sim.inject(Fault::new(FaultKind::LostAnswer).on("PUT", one).times(10));
    let err = Stages::new(&c)
        .update(
            uuid,
            &write(&fields, &key("new-key"), "2025.12.4").request(),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(sim.private_key_of(uuid).as_deref(), Some("new-key"));
    sim.clear_faults();

    // The same with an answer that never comes.
    sim.inject(
        Fault::new(FaultKind::HangAfterProcessing)
            .on("PUT", one)
            .times(10),
    );
    let err = Stages::new(&c)
        .update(
            uuid,
            &write(&fields, &key("third-key"), "2025.12.4").request(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Timeout { .. }), "{err:?}");
    assert_eq!(sim.private_key_of(uuid).as_deref(), Some("third-key"));
}
