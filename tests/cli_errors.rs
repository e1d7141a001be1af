//! Every way talking to authentik can go wrong, as the user of `plan` and
//! `apply --yes` sees it: the real binary against the simulator (with injected
//! faults), against wiremock where an answer must be malformed, and against
//! addresses where nothing (or the wrong thing) listens. Each case checks the
//! exit code, the words on stderr/stdout, how many requests were made (retried
//! or not), and that no secret was printed.

use std::process::Output;
use std::time::{Duration, Instant};

use stagesync::simulator::{Fault, FaultKind, SimHandle};
use stagesync::stage::StageFields;
use support::cli::{TOKEN, Workspace, manifest, path_str, run, start_sim, stderr, stdout};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const VERSION: &str = "/api/v3/admin/version/";
const LIST: &str = "/api/v3/stages/captcha/";
const ONE: &str = "/api/v3/stages/captcha/{uuid}/";
const ALL: &str = "/api/v3/stages/all/";

const LOGIN_KEY: &str = "login-private-key-8c2e41";
const SIGNUP_KEY: &str = "signup-private-key-d93b07";
const WRONG_TOKEN: &str = "wrong-token-77aa0c13f2";

/// Every value that must never be printed.
const SECRETS: [&str; 4] = [TOKEN, LOGIN_KEY, SIGNUP_KEY, WRONG_TOKEN];

/// A workspace with `login.yaml` (live, drifted) and `more/signup.yaml` (not live yet).
async fn scenario() -> (Workspace, SimHandle) {
    let sim = start_sim().await;
    let ws = Workspace::new();
    sim.seed_captcha(
        StageFields {
            score_min_threshold: 0.3,
            ..StageFields::with_defaults("login", "site-login")
        },
        "old-key",
    );
    ws.write(
        "login.yaml",
        &manifest("login", "site-login", "LOGIN_KEY", ""),
    );
    ws.write(
        "more/signup.yaml",
        &manifest("signup", "site-signup", "SIGNUP_KEY", ""),
    );
    (ws, sim)
}

/// The binary pointed at `sim`, with the manifests' keys in the environment.
fn cmd(ws: &Workspace, sim: &SimHandle) -> assert_cmd::Command {
    let mut cmd = ws.cmd(sim);
    cmd.env("LOGIN_KEY", LOGIN_KEY)
        .env("SIGNUP_KEY", SIGNUP_KEY);
    cmd
}

/// Runs the command and checks that no secret reached stdout or stderr.
/// What `plan` did against a stand-in server answering every GET the same way.
struct AgainstServer {
    out: Output,
    uri: String,
    requests: usize,
}

async fn plan_against(response: ResponseTemplate) -> AgainstServer {
    let (ws, sim) = scenario().await;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(response)
        .mount(&server)
        .await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", &server.uri()]);
    let out = run_checked(c).await;
    let requests = server.received_requests().await.unwrap_or_default().len();
    AgainstServer {
        out,
        uri: server.uri(),
        requests,
    }
}

async fn run_checked(cmd: assert_cmd::Command) -> Output {
    let out = run(cmd).await;
    assert_no_secrets(&out);
    out
}

fn assert_no_secrets(out: &Output) {
    let all = format!("{}{}", stdout(out), stderr(out));
    for secret in SECRETS {
        assert!(!all.contains(secret), "a secret was printed:\n{all}");
    }
}

fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// The `error: ` lines of stderr (log lines are prefixed with a timestamp).
fn error_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_owned)
        .collect()
}

/// The single `error: ` line of stderr.
fn the_error(out: &Output) -> String {
    let lines = error_lines(out);
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line expected; stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    lines[0].clone()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

// ---------------------------------------------------------------- 403

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_rejected_with_authentiks_detail_and_not_retried() {
    let (ws, sim) = scenario().await;
    for args in [vec!["plan"], vec!["apply", "--yes"]] {
        sim.reset_counts();
        let mut c = cmd(&ws, &sim);
        c.env("AUTHENTIK_TOKEN", WRONG_TOKEN).args(&args);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert_eq!(
            the_error(&out),
            "error: authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: Token invalid/expired)"
        );
        let counts = sim.request_counts();
        assert_eq!(counts.get("GET", VERSION), 1, "403 is not retried");
        assert_eq!(counts.total(), 1, "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_permission_is_rejected_with_authentiks_detail_and_not_retried() {
    let (ws, sim) = scenario().await;
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 403,
            retry_after: None,
            body: r#"{"detail": "You do not have permission to perform this action."}"#.into(),
        })
        .on("GET", LIST),
    );
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        "error: authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: You do not have permission to perform this action.)"
    );
    assert_eq!(
        sim.request_counts().get("GET", LIST),
        1,
        "403 is not retried"
    );
    assert_eq!(stdout(&out), "", "no plan is printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_page_from_a_proxy_is_not_blamed_on_authentik() {
    let AgainstServer { out, requests, .. } = plan_against(
        ResponseTemplate::new(403)
            .set_body_raw("<html><h1>403 Forbidden</h1>\n</html>", "text/html"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        "error: the request was refused (HTTP 403) with a page that is not authentik's JSON: a proxy or firewall in front of authentik may block it, or the API token is rejected (<html><h1>403 Forbidden</h1> </html>)"
    );
    assert_eq!(requests, 1, "403 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_names_where_it_leads() {
    let AgainstServer { out, requests, .. } = plan_against(
        ResponseTemplate::new(301)
            .insert_header("Location", "https://auth.example.com/api/v3/admin/version/"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        "error: unexpected response from authentik (HTTP 301): redirected to https://auth.example.com/api/v3/admin/version/: pass the install's final URL with --url"
    );
    assert_eq!(requests, 1, "the token does not follow the redirect");
}

// ---------------------------------------------------------------- wrong URL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_base_url_is_named_as_such_and_not_retried() {
    let (ws, sim) = scenario().await;
    for url in [
        format!("{}/authentik", sim.url()),
        format!("{}/authentik/api/v3/", sim.url()),
    ] {
        for args in [vec!["plan"], vec!["apply", "--yes"]] {
            sim.reset_counts();
            let mut c = cmd(&ws, &sim);
            c.args(&args).args(["--url", &url]);
            let out = run_checked(c).await;
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            let shown = format!("{}/authentik", sim.url());
            let error = the_error(&out);
            assert!(
                error.starts_with(&format!(
                    "error: no authentik API at {shown} (wrong URL?): HTTP 404 with an HTML page instead of JSON: <!DOCTYPE html>"
                )),
                "{error}"
            );
            assert_eq!(
                sim.request_counts().total(),
                1,
                "an HTML 404 is not retried"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_web_server_at_the_url_is_not_an_authentik_api() {
    let AgainstServer { out, uri, requests } = plan_against(
        ResponseTemplate::new(404).set_body_raw("<html><body>Not Found</body></html>", "text/html"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        format!(
            "error: no authentik API at {} (wrong URL?): HTTP 404 with an HTML page instead of JSON: <html><body>Not Found</body></html>",
            uri
        )
    );
    assert_eq!(requests, 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_may_end_in_a_slash_or_include_the_api_prefix() {
    let (ws, sim) = scenario().await;
    for url in [
        format!("{}/", sim.url()),
        format!("{}/api/v3", sim.url()),
        format!("{}/api/v3/", sim.url()),
    ] {
        let mut c = cmd(&ws, &sim);
        c.args(["plan", "--url", &url]);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(2), "{url}: {}", describe(&out));
        assert!(
            stdout(&out).contains("Plan: 1 to create, 1 to update, 0 in sync, 0 unmanaged."),
            "{}",
            describe(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_under_a_path_prefix_is_reached_under_that_prefix() {
    let (ws, sim) = scenario().await;
    let server = MockServer::start().await;
    let empty_page = r#"{"pagination": {"next": 0, "previous": 0, "count": 0, "current": 1, "total_pages": 1, "start_index": 0, "end_index": 0}, "results": []}"#;
    Mock::given(method("GET"))
        .and(path("/authentik/api/v3/admin/version/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"version_current": "2025.12.4"}"#, "application/json"),
        )
        .mount(&server)
        .await;
    for route in [
        "/authentik/api/v3/stages/captcha/",
        "/authentik/api/v3/stages/all/",
    ] {
        Mock::given(method("GET"))
            .and(path(route))
            .respond_with(ResponseTemplate::new(200).set_body_raw(empty_page, "application/json"))
            .mount(&server)
            .await;
    }
    for url in [
        format!("{}/authentik", server.uri()),
        format!("{}/authentik/api/v3/", server.uri()),
    ] {
        let mut c = cmd(&ws, &sim);
        c.args(["plan", "--url", &url]);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(2), "{url}: {}", describe(&out));
        assert!(
            stdout(&out).contains("Plan: 2 to create, 0 to update, 0 in sync, 0 unmanaged."),
            "{}",
            describe(&out)
        );
    }
    let received = server.received_requests().await.unwrap_or_default();
    assert!(
        received
            .iter()
            .all(|r| r.url.path().starts_with("/authentik/api/v3/")),
        "{:?}",
        received
            .iter()
            .map(|r| r.url.path().to_owned())
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- network

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_named_and_retried() {
    let (ws, sim) = scenario().await;
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", &url]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let error = the_error(&out);
    assert!(
        error.starts_with(&format!(
            "error: cannot connect to {url}: connection refused or unreachable ("
        )),
        "{error}"
    );
    assert!(error.to_lowercase().contains("refused"), "{error}");
    assert_eq!(
        stderr(&out).matches("retrying after").count(),
        4,
        "five attempts: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_is_a_dns_failure() {
    let (ws, sim) = scenario().await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", "https://nonexistent.invalid"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let error = the_error(&out);
    assert!(
        error.starts_with(
            "error: cannot resolve the host of https://nonexistent.invalid (DNS lookup failed: "
        ),
        "{error}"
    );
    assert!(
        !stderr(&out).contains("retrying"),
        "a DNS failure is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_port_is_a_tls_failure() {
    let (ws, sim) = scenario().await;
    let url = format!("https://{}", sim.addr());
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", &url]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let error = the_error(&out);
    assert!(
        error.starts_with(&format!("error: TLS handshake with {url} failed: ")),
        "{error}"
    );
    assert!(
        error.ends_with(
            "received corrupt message of type InvalidContentType (the server does not speak TLS on that port: is the URL http://?)"
        ),
        "{error}"
    );
    assert!(!stderr(&out).contains("retrying"), "TLS is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout() {
    let (ws, sim) = scenario().await;
    sim.inject(Fault::new(FaultKind::Hang).on("GET", VERSION).times(100));
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--timeout", "1s"]);
    let started = Instant::now();
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        format!(
            "error: authentik at {} did not answer in time (timeout: no answer within 1s (--timeout))",
            sim.url()
        )
    );
    assert_eq!(
        sim.request_counts().get("GET", VERSION),
        5,
        "a timeout is retried, five attempts in all"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "1 s per attempt"
    );
}

// ---------------------------------------------------------------- bad bodies

/// A server answering the version call properly and the list call with `list`.
async fn server_with_list(list: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"version_current": "2025.12.4", "version_latest": "2025.12.4"}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(LIST))
        .respond_with(list)
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_page_with_200_is_not_an_authentik_api() {
    let AgainstServer { out, uri, .. } = plan_against(ResponseTemplate::new(200).set_body_raw(
            "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body>Please sign in</body></html>",
            "text/html; charset=utf-8",
        )).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        format!(
            "error: no authentik API at {} (wrong URL?): HTTP 200 with an HTML page instead of JSON: <!DOCTYPE html> <html><head><title>Sign in</title></head> <body>Please sign in</body></html>",
            uri
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_is_an_error_with_status_and_excerpt() {
    let (ws, sim) = scenario().await;
    let server = server_with_list(ResponseTemplate::new(200).set_body_raw(
        r#"{"pagination": {"next": 0, "previous": 0}, "results": [{"pk": "#,
        "application/json",
    ))
    .await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", &server.uri()]);
    let out = run_checked(c).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let error = the_error(&out);
    assert!(
        error.starts_with(
            "error: unexpected response from authentik (HTTP 200): not the expected JSON ("
        ),
        "{error}"
    );
    assert!(
        error.ends_with(r#": {"pagination": {"next": 0, "previous": 0}, "results": [{"pk":"#),
        "{error}"
    );
    let received = server.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 2, "version and one list call, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_of_the_wrong_shape_is_an_error_with_status_and_excerpt() {
    let (ws, sim) = scenario().await;
    for body in [
        r#"{"results": "nope"}"#,
        r#"[1, 2, 3]"#,
        r#"{"pagination": {"next": 0}, "results": [{"name": 7}]}"#,
    ] {
        let server =
            server_with_list(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
                .await;
        let mut c = cmd(&ws, &sim);
        c.args(["plan", "--url", &server.uri()]);
        let out = run_checked(c).await;
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(1), "{body}: {}", describe(&out));
        let error = the_error(&out);
        assert!(
            error.starts_with(
                "error: unexpected response from authentik (HTTP 200): not the expected JSON ("
            ) && error.ends_with(&format!("): {body}")),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_a_version_is_an_error() {
    let (ws, sim) = scenario().await;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(VERSION))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"version_current": "banana"}"#, "application/json"),
        )
        .mount(&server)
        .await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", &server.uri()]);
    let out = run_checked(c).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        r#"error: unexpected response from authentik (HTTP 200): version_current "banana" is not a version"#
    );
}

// ---------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_survived() {
    let (ws, sim) = scenario().await;
    sim.inject(Fault::status(503).on("GET", VERSION).times(2));
    sim.inject(Fault::status_retry_after(429, 1).on("GET", LIST));
    sim.inject(Fault::new(FaultKind::Reset).on("GET", ALL));
    let started = Instant::now();
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stdout(&out).contains("Plan: 1 to create, 1 to update, 0 in sync, 0 unmanaged."),
        "{}",
        describe(&out)
    );
    let counts = sim.request_counts();
    assert_eq!(counts.get("GET", VERSION), 3, "503 twice, then the answer");
    assert_eq!(counts.get("GET", LIST), 2, "429, then the answer");
    assert_eq!(counts.get("GET", ALL), 2, "reset, then the answer");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 is honoured"
    );
    let err = stderr(&out);
    assert_eq!(err.matches("retrying after").count(), 4, "{err}");
    assert!(err.contains("retrying after HTTP 503"), "{err}");
    assert!(err.contains("retrying after HTTP 429"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentiks_internal_error_and_a_reset_during_writes_are_retried() {
    let (ws, sim) = scenario().await;
    sim.inject(Fault::new(FaultKind::EmptyHtml405).on("PUT", LIST));
    sim.inject(Fault::new(FaultKind::Reset).on("POST", LIST));
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("Apply: 1 created, 1 updated, 0 failed."),
        "{}",
        describe(&out)
    );
    let counts = sim.request_counts();
    assert_eq!(counts.get("PUT", ONE), 2, "empty 405, then the write");
    assert_eq!(counts.get("POST", LIST), 2, "reset, then the create");
    assert!(
        stderr(&out).contains("retrying after authentik's internal error (empty HTTP 405)"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = sim
        .captcha_stages()
        .into_iter()
        .map(|s| s.fields.name)
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "signup").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_is_not_duplicated() {
    let (ws, sim) = scenario().await;
    sim.inject(Fault::new(FaultKind::Truncated).on("POST", LIST));
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("Apply: 1 created, 1 updated, 0 failed."),
        "{}",
        describe(&out)
    );
    let live = sim.captcha_stages();
    let signups: Vec<_> = live.iter().filter(|s| s.fields.name == "signup").collect();
    assert_eq!(signups.len(), 1, "exactly one stage named signup: {live:?}");
    assert_eq!(
        sim.private_key_of(signups[0].uuid).as_deref(),
        Some(SIGNUP_KEY)
    );
    assert_eq!(sim.request_counts().get("POST", LIST), 1, "sent once");

    // The state knows the key: the next plan is in sync.
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_404_on_a_stage_names_the_stage_and_is_not_retried() {
    let (ws, sim) = scenario().await;
    let login = sim.captcha_stages()[0].uuid;
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 404,
            retry_after: None,
            body: r#"{"detail": "No CaptchaStage matches the given query."}"#.into(),
        })
        .on("PUT", LIST),
    );
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "failed to update login (stages/login.yaml:1): captcha stage {login} does not exist in authentik (HTTP 404)"
        )),
        "{text}"
    );
    assert!(
        text.contains("Apply: 1 created, 0 updated, 1 failed."),
        "{text}"
    );
    assert_eq!(
        sim.request_counts().get("PUT", ONE),
        1,
        "404 is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_that_outlasts_the_retries_says_how_often_it_was_tried() {
    let (ws, sim) = scenario().await;
    sim.inject(Fault::status(503).on("GET", VERSION).times(100));
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        r#"error: authentik failed with HTTP 503 after 5 attempts: {"detail": "injected HTTP 503"}"#
    );
    assert_eq!(sim.request_counts().get("GET", VERSION), 5);

    // A 500 is not one of the retried statuses (authentik reports its own
    // internal errors as an empty 405).
    sim.clear_faults();
    sim.reset_counts();
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 500,
            retry_after: None,
            body: "Internal Server Error".into(),
        })
        .on("GET", LIST),
    );
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        "error: authentik failed with HTTP 500: Internal Server Error"
    );
    assert_eq!(sim.request_counts().get("GET", LIST), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_may_read_but_not_write_fails_each_write_once() {
    let (ws, sim) = scenario().await;
    let denied = Fault::new(FaultKind::Status {
        status: 403,
        retry_after: None,
        body: r#"{"detail": "You do not have permission to perform this action."}"#.into(),
    });
    sim.inject(denied.clone().on("PUT", LIST));
    sim.inject(denied.on("POST", LIST));
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let refused = "authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: You do not have permission to perform this action.)";
    assert!(
        text.contains(&format!(
            "failed to update login (stages/login.yaml:1): {refused}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("Apply: 0 created, 0 updated, 2 failed."),
        "{text}"
    );
    let counts = sim.request_counts();
    assert_eq!(counts.get("PUT", ONE), 1, "403 is not retried");
    assert_eq!(counts.get("POST", LIST), 1, "403 is not retried");
    assert_eq!(sim.captcha_stages().len(), 1, "nothing was created");
}

// ---------------------------------------------------------------- 400

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_names_the_stage_its_file_and_every_message_and_the_rest_is_written() {
    let (ws, sim) = scenario().await;
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"name": ["stage with this name already exists."], "public_key": ["This field may not be blank.", "Ensure this field is short."]}"#
                .into(),
        })
        .on("POST", LIST),
    );
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let file = path_str(
        &std::path::Path::new("stages")
            .join("more")
            .join("signup.yaml"),
    );
    assert!(
        text.contains(&format!(
            "failed to create signup ({file}:1): authentik rejected the stage (HTTP 400): name: stage with this name already exists.; public_key: This field may not be blank. Ensure this field is short.\n"
        )),
        "{text}"
    );
    assert!(text.contains("updated login ("), "{text}");
    assert!(
        text.contains("Apply: 0 created, 1 updated, 1 failed."),
        "{text}"
    );
    let counts = sim.request_counts();
    assert_eq!(counts.get("POST", LIST), 1, "400 is not retried");
    assert_eq!(counts.get("PUT", ONE), 1, "the other stage is written");
    let live = sim.captcha_stages();
    let login = live
        .iter()
        .find(|s| s.fields.name == "login")
        .expect("login");
    assert_eq!(login.fields.score_min_threshold, 0.5);
    assert_eq!(sim.private_key_of(login.uuid).as_deref(), Some(LOGIN_KEY));
}

// ---------------------------------------------------------------- configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_host_is_a_configuration_error() {
    let (ws, sim) = scenario().await;
    for args in [vec!["plan"], vec!["apply", "--yes"]] {
        let mut c = cmd(&ws, &sim);
        c.args(&args).args(["--url", "http://auth.example.com"]);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        assert_eq!(
            the_error(&out),
            "error: refusing to send the API token over plain http to auth.example.com: use https://, or pass --allow-http if the network is trusted (http is allowed without it only for loopback hosts)"
        );
    }
    assert_eq!(sim.request_counts().total(), 0);

    // With --allow-http the URL is used (and here fails to resolve).
    let mut c = cmd(&ws, &sim);
    c.args([
        "plan",
        "--allow-http",
        "--url",
        "http://nonexistent.invalid",
    ]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        the_error(&out).starts_with(
            "error: cannot resolve the host of http://nonexistent.invalid (DNS lookup failed: "
        ),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_url_is_a_configuration_error() {
    let (ws, sim) = scenario().await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--url", "auth.example.com"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        r#"error: invalid authentik URL "auth.example.com": it needs a scheme, e.g. https://auth.example.com"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_tls_verification_warns_loudly() {
    let (ws, sim) = scenario().await;
    let mut c = cmd(&ws, &sim);
    c.args(["plan", "--insecure-skip-tls-verify"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "WARN TLS CERTIFICATE VERIFICATION IS DISABLED (--insecure-skip-tls-verify): anyone on the network path can read the API token and the private keys; use --ca-file instead"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_url_or_token_is_a_configuration_error() {
    let (ws, sim) = scenario().await;
    let empty = ws.root.path().join("empty-token");
    std::fs::write(&empty, " \n").expect("write");
    let missing = ws.root.path().join("no-such-token");
    type Setup = Box<dyn Fn(&mut assert_cmd::Command)>;
    let cases: Vec<(Setup, String)> = vec![
        (
            Box::new(|c| {
                c.env_remove("AUTHENTIK_URL");
            }),
            "error: no authentik URL: pass --url or set AUTHENTIK_URL".into(),
        ),
        (
            Box::new(|c| {
                c.env_remove("AUTHENTIK_TOKEN");
            }),
            "error: no API token: set AUTHENTIK_TOKEN or pass --token-file PATH".into(),
        ),
        (
            Box::new(|c| {
                c.env("AUTHENTIK_TOKEN", "  ");
            }),
            "error: AUTHENTIK_TOKEN is set but empty".into(),
        ),
        (
            Box::new({
                let empty = empty.clone();
                move |c| {
                    c.env_remove("AUTHENTIK_TOKEN")
                        .arg("--token-file")
                        .arg(&empty);
                }
            }),
            format!("error: the token file {} is empty", path_str(&empty)),
        ),
        (
            Box::new({
                let missing = missing.clone();
                move |c| {
                    c.env_remove("AUTHENTIK_TOKEN")
                        .arg("--token-file")
                        .arg(&missing);
                }
            }),
            format!(
                "error: cannot read the token file {}: No such file or directory (os error 2)",
                path_str(&missing)
            ),
        ),
        (
            Box::new(|c| {
                c.env("AUTHENTIK_TOKEN", "first-half-4411\nsecond-half-9d2f");
            }),
            "error: cannot set up the HTTP client: the API token contains characters that cannot be sent in an HTTP header".into(),
        ),
    ];
    for (setup, expected) in &cases {
        for sub in [vec!["plan"], vec!["apply", "--yes"]] {
            let mut c = cmd(&ws, &sim);
            c.args(&sub);
            setup(&mut c);
            let out = run_checked(c).await;
            assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
            assert_eq!(&the_error(&out), expected);
            for half in ["first-half-4411", "second-half-9d2f"] {
                assert!(!stderr(&out).contains(half), "{}", describe(&out));
            }
        }
    }
    assert_eq!(sim.request_counts().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_and_trimmed() {
    let (ws, sim) = scenario().await;
    let file = ws.root.path().join("token");
    std::fs::write(&file, format!("  {TOKEN}\n")).expect("write");
    let mut c = cmd(&ws, &sim);
    c.env_remove("AUTHENTIK_TOKEN")
        .arg("plan")
        .arg("--token-file")
        .arg(&file);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_state_file_stops_apply_before_anything_is_contacted() {
    let (ws, sim) = scenario().await;
    let state = ws.state_file();
    std::fs::create_dir_all(state.parent().expect("parent")).expect("state dir");
    let lock_path = state.with_file_name("state.json.lock");
    let holder = std::fs::File::create(&lock_path).expect("lock file");
    holder.try_lock().expect("the test holds the lock");

    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        the_error(&out),
        format!(
            "error: another stagesync (apply or run) is using {}; wait for it to finish",
            path_str(&state)
        )
    );
    assert_eq!(sim.request_counts().total(), 0);

    // plan only reads the state and is not blocked.
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    assert_eq!(run_checked(c).await.status.code(), Some(2));

    drop(holder);
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_file_is_named_once() {
    let (ws, sim) = scenario().await;
    let state = ws.state_file();
    std::fs::create_dir_all(&state).expect("a directory where the file should be");
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let error = the_error(&out);
    assert!(
        error.starts_with(&format!("error: state file {}: ", path_str(&state))),
        "{error}"
    );
    assert_eq!(
        error.matches("os error").count(),
        1,
        "the cause once: {error}"
    );
    assert_eq!(sim.request_counts().total(), 0);
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_printed_in_any_failure_even_at_trace_level() {
    // Each fault in a fresh scenario, so that every apply has both writes to make.
    let faults = [
        (Fault::status(503).on("GET", VERSION).times(2), 0),
        (Fault::new(FaultKind::Truncated).on("POST", LIST), 0),
        (
            Fault::new(FaultKind::Status {
                status: 400,
                retry_after: None,
                body: r#"{"private_key": ["This field may not be blank."]}"#.into(),
            })
            .on("PUT", LIST),
            1,
        ),
    ];
    for (fault, code) in faults {
        let (ws, sim) = scenario().await;
        sim.inject(fault);
        let mut c = cmd(&ws, &sim);
        c.env("RUST_LOG", "trace").args(["apply", "--yes"]);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
        assert!(
            stderr(&out).len() > 1000,
            "trace logging is on: {}",
            describe(&out)
        );
        assert_eq!(sim.request_counts().writes(), 2, "{}", describe(&out));
    }
    let (ws, sim) = scenario().await;
    for (token, url) in [
        (WRONG_TOKEN, sim.url()),
        (TOKEN, format!("https://{}", sim.addr())),
        (TOKEN, format!("http://127.0.0.1:{}", closed_port())),
    ] {
        let mut c = cmd(&ws, &sim);
        c.env("RUST_LOG", "trace")
            .env("AUTHENTIK_TOKEN", token)
            .args(["plan", "--url", &url]);
        let out = run_checked(c).await;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    }
}
