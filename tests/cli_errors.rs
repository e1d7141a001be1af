//! Every way talking to authentik can go wrong, as the user of `plan` and
//! `apply --yes` sees it: the real binary against the simulator (with injected
//! faults), against wiremock where an answer must be malformed, and against
//! addresses where nothing (or the wrong thing) listens. Each case checks the
//! exit code, the words on stderr/stdout, how many requests were made (retried
//! or not), and that no secret was printed.
//!
//! Most cases have one shape (a scenario, a server, one or two commands, an
//! exit code and an error line), so they are rows of one table, [`cases`], run
//! by [`every_failure_is_reported_as_the_table_says`]; a failure names its case.
//! The few with steps of their own (a lock held by the test, a second run that
//! must be in sync, routes under a path prefix) are tests of their own below.

use std::process::Output;
use std::time::{Duration, Instant};

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{Fault, FaultKind, RequestCounts, SimHandle};
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

const PLAN: &[&[&str]] = &[&["plan"]];
const APPLY: &[&[&str]] = &[&["apply", "--yes"]];
const PLAN_AND_APPLY: &[&[&str]] = &[&["plan"], &["apply", "--yes"]];

/// How many cases run at once: each runs the binary, and the machine is shared.
const PARALLEL_CASES: usize = 4;

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

/// An HTTP status fault with authentik's (or a proxy's) `body` and no `Retry-After`.
fn status_fault(status: u16, body: &str) -> Fault {
    Fault::new(FaultKind::Status {
        status,
        retry_after: None,
        body: body.into(),
    })
}

// ---------------------------------------------------------------- the table

/// What answers the binary in a case.
enum Server {
    /// The scenario's simulator, with these faults injected.
    Simulator(Vec<Fault>),
    /// A stand-in answering every GET with this response.
    EveryGet(ResponseTemplate),
    /// A stand-in answering the version call properly and the list call with this.
    List(ResponseTemplate),
    /// A stand-in whose version call answers with this JSON body.
    Version(&'static str),
}

impl Server {
    /// No faults: the simulator as the scenario left it.
    fn simulator() -> Self {
        Server::Simulator(Vec::new())
    }
}

/// Where a case's binary can be pointed, for its flags and its expected text.
struct Target<'a> {
    ws: &'a Workspace,
    sim: &'a SimHandle,
    /// The stand-in's URL (the binary gets `--url` to it), for stand-in cases.
    stand_in: Option<String>,
    /// `http://127.0.0.1:PORT` where nothing listens.
    closed: String,
}

impl Target<'_> {
    /// The stand-in's URL.
    fn uri(&self) -> &str {
        self.stand_in.as_deref().expect("a stand-in case")
    }
}

/// How the single `error: ` line of stderr must read.
enum Line {
    Exact(String),
    StartsWith(String),
    StartsAndEndsWith(String, String),
    /// The case does not look at error lines (it succeeds, or checks stdout).
    Unchecked,
}

fn exact(line: impl Into<String>) -> Line {
    Line::Exact(line.into())
}

fn starts_with(prefix: impl Into<String>) -> Line {
    Line::StartsWith(prefix.into())
}

/// One run of one case's command.
struct Ran<'a> {
    case: &'static str,
    command: &'static [&'static str],
    out: Output,
    target: &'a Target<'a>,
    /// Requests the stand-in received during this run.
    stand_in_requests: usize,
    elapsed: Duration,
}

impl Ran<'_> {
    /// The case, the command, the exit code and both streams, for messages.
    fn describe(&self) -> String {
        format!("{} {:?}: {}", self.case, self.command, describe(&self.out))
    }

    fn stdout(&self) -> String {
        stdout(&self.out)
    }

    fn stderr(&self) -> String {
        stderr(&self.out)
    }

    /// The single `error: ` line.
    fn error(&self) -> String {
        the_error(&self.out)
    }

    /// The simulator's request counts since this run started.
    fn counts(&self) -> RequestCounts {
        self.target.sim.request_counts()
    }
}

/// One way of going wrong and what the user must see.
struct Case {
    name: &'static str,
    server: Server,
    /// The commands run one after the other, each on fresh request counts.
    commands: &'static [&'static [&'static str]],
    /// Flags and environment beyond the scenario's (after the command).
    setup: fn(&mut assert_cmd::Command, &Target),
    code: i32,
    error: fn(&Target) -> Line,
    /// What else the case checks: requests, retries, stdout, live state.
    also: fn(&Ran),
}

impl Default for Case {
    /// `plan` against the plain scenario, failing with exit code 1; nothing
    /// more checked.
    fn default() -> Self {
        Case {
            name: "",
            server: Server::simulator(),
            commands: PLAN,
            setup: no_setup,
            code: 1,
            error: |_| Line::Unchecked,
            also: nothing_else,
        }
    }
}

/// Nothing beyond the scenario.
fn no_setup(_: &mut assert_cmd::Command, _: &Target) {}

/// Nothing beyond the exit code and the error line.
fn nothing_else(_: &Ran) {}

/// Runs `case` in a fresh scenario; panics with the case's name on a mismatch.
async fn check(case: Case) {
    let (ws, sim) = scenario().await;
    let stand_in = match case.server {
        Server::Simulator(faults) => {
            for fault in faults {
                sim.inject(fault);
            }
            None
        }
        Server::EveryGet(response) => Some(server_answering_every_get(response).await),
        Server::List(list) => Some(server_with_list(list).await),
        Server::Version(body) => Some(server_with_version(body).await),
    };
    let target = Target {
        ws: &ws,
        sim: &sim,
        stand_in: stand_in.as_ref().map(MockServer::uri),
        closed: format!("http://127.0.0.1:{}", closed_port()),
    };
    for &command in case.commands {
        sim.reset_counts();
        let received_before = received(stand_in.as_ref()).await;
        let mut c = cmd(&ws, &sim);
        c.args(command);
        if let Some(uri) = &target.stand_in {
            c.args(["--url", uri]);
        }
        (case.setup)(&mut c, &target);
        let started = Instant::now();
        let out = run_checked(c).await;
        let ran = Ran {
            case: case.name,
            command,
            out,
            target: &target,
            stand_in_requests: received(stand_in.as_ref()).await - received_before,
            elapsed: started.elapsed(),
        };
        assert_eq!(ran.out.status.code(), Some(case.code), "{}", ran.describe());
        match (case.error)(&target) {
            Line::Exact(line) => assert_eq!(ran.error(), line, "{}", ran.describe()),
            Line::StartsWith(prefix) => {
                let error = ran.error();
                assert!(error.starts_with(&prefix), "{}: {error}", case.name);
            }
            Line::StartsAndEndsWith(prefix, suffix) => {
                let error = ran.error();
                assert!(
                    error.starts_with(&prefix) && error.ends_with(&suffix),
                    "{}: {error}",
                    case.name
                );
            }
            Line::Unchecked => {}
        }
        (case.also)(&ran);
    }
}

/// How many requests `server` has received so far (0 without one).
async fn received(server: Option<&MockServer>) -> usize {
    match server {
        Some(server) => server.received_requests().await.unwrap_or_default().len(),
        None => 0,
    }
}

async fn server_answering_every_get(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

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

/// A server whose version call answers with `body`.
async fn server_with_version(body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_is_reported_as_the_table_says() {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_CASES));
    let mut running = Vec::new();
    for case in cases() {
        let name = case.name;
        let slots = slots.clone();
        running.push((
            name,
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                check(case).await;
            }),
        ));
    }
    let mut failed = Vec::new();
    for (name, task) in running {
        if let Err(e) = task.await {
            let message = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// The one-shape cases, grouped as the failures are: 403, wrong URL, network,
/// bad bodies, retries, writes, configuration, secrets.
fn cases() -> Vec<Case> {
    vec![
        // ------------------------------------------------------------ 403
        Case {
            name: "an_unknown_token_is_rejected_with_authentiks_detail_and_not_retried",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.env("AUTHENTIK_TOKEN", WRONG_TOKEN);
            },
            error: |_| {
                exact(
                    "error: authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: Token invalid/expired)",
                )
            },
            also: |r| {
                let counts = r.counts();
                assert_eq!(counts.get("GET", VERSION), 1, "{}: 403 is not retried", r.case);
                assert_eq!(counts.total(), 1, "{}: {counts:?}", r.case);
            },
            ..Case::default()
        },
        Case {
            name: "a_token_without_permission_is_rejected_with_authentiks_detail_and_not_retried",
            server: Server::Simulator(vec![
                status_fault(
                    403,
                    r#"{"detail": "You do not have permission to perform this action."}"#,
                )
                .on("GET", LIST),
            ]),
            error: |_| {
                exact(
                    "error: authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: You do not have permission to perform this action.)",
                )
            },
            also: |r| {
                assert_eq!(r.counts().get("GET", LIST), 1, "{}: 403 is not retried", r.case);
                assert_eq!(r.stdout(), "", "{}: no plan is printed", r.case);
            },
            ..Case::default()
        },
        Case {
            name: "a_403_page_from_a_proxy_is_not_blamed_on_authentik",
            server: Server::EveryGet(
                ResponseTemplate::new(403)
                    .set_body_raw("<html><h1>403 Forbidden</h1>\n</html>", "text/html"),
            ),
            error: |_| {
                exact(
                    "error: the request was refused (HTTP 403) with a page that is not authentik's JSON: a proxy or firewall in front of authentik may block it, or the API token is rejected ((an HTML page without a title))",
                )
            },
            also: |r| assert_eq!(r.stand_in_requests, 1, "{}: 403 is not retried", r.case),
            ..Case::default()
        },
        Case {
            name: "a_redirect_is_not_followed_and_names_where_it_leads",
            server: Server::EveryGet(
                ResponseTemplate::new(301)
                    .insert_header("Location", "https://auth.example.com/api/v3/admin/version/"),
            ),
            error: |_| {
                exact(
                    "error: unexpected response from authentik (HTTP 301): redirected to https://auth.example.com/api/v3/admin/version/: pass the install's final URL with --url",
                )
            },
            also: |r| {
                assert_eq!(
                    r.stand_in_requests, 1,
                    "{}: the token does not follow the redirect",
                    r.case
                );
            },
            ..Case::default()
        },
        // ------------------------------------------------------------ wrong URL
        Case {
            name: "a_wrong_base_url_is_named_as_such_and_not_retried (under /authentik)",
            commands: PLAN_AND_APPLY,
            setup: |c, t| {
                c.args(["--url", &format!("{}/authentik", t.sim.url())]);
            },
            error: wrong_base_url,
            also: html_404_not_retried,
            ..Case::default()
        },
        Case {
            name: "a_wrong_base_url_is_named_as_such_and_not_retried (under /authentik/api/v3/)",
            commands: PLAN_AND_APPLY,
            setup: |c, t| {
                c.args(["--url", &format!("{}/authentik/api/v3/", t.sim.url())]);
            },
            error: wrong_base_url,
            also: html_404_not_retried,
            ..Case::default()
        },
        Case {
            name: "another_web_server_at_the_url_is_not_an_authentik_api",
            server: Server::EveryGet(
                ResponseTemplate::new(404)
                    .set_body_raw("<html><body>Not Found</body></html>", "text/html"),
            ),
            error: |t| {
                exact(format!(
                    "error: no authentik API at {} (wrong URL?): HTTP 404 with an HTML page instead of JSON: (an HTML page without a title)",
                    t.uri()
                ))
            },
            also: |r| assert_eq!(r.stand_in_requests, 1, "{}: not retried", r.case),
            ..Case::default()
        },
        Case {
            name: "the_url_may_end_in_a_slash_or_include_the_api_prefix (/)",
            setup: |c, t| {
                c.args(["--url", &format!("{}/", t.sim.url())]);
            },
            code: 2,
            also: one_create_one_update_planned,
            ..Case::default()
        },
        Case {
            name: "the_url_may_end_in_a_slash_or_include_the_api_prefix (/api/v3)",
            setup: |c, t| {
                c.args(["--url", &format!("{}/api/v3", t.sim.url())]);
            },
            code: 2,
            also: one_create_one_update_planned,
            ..Case::default()
        },
        Case {
            name: "the_url_may_end_in_a_slash_or_include_the_api_prefix (/api/v3/)",
            setup: |c, t| {
                c.args(["--url", &format!("{}/api/v3/", t.sim.url())]);
            },
            code: 2,
            also: one_create_one_update_planned,
            ..Case::default()
        },
        // ------------------------------------------------------------ network
        Case {
            name: "connection_refused_is_named_and_retried",
            setup: |c, t| {
                c.args(["--url", &t.closed]);
            },
            error: |t| {
                starts_with(format!(
                    "error: cannot connect to {}: connection refused or unreachable (",
                    t.closed
                ))
            },
            also: |r| {
                let error = r.error();
                assert!(error.to_lowercase().contains("refused"), "{}: {error}", r.case);
                assert_eq!(
                    r.stderr().matches("retrying after").count(),
                    4,
                    "{}: five attempts: {}",
                    r.case,
                    r.stderr()
                );
            },
            ..Case::default()
        },
        Case {
            name: "a_host_that_does_not_resolve_is_a_dns_failure",
            setup: |c, _| {
                c.args(["--url", "https://nonexistent.invalid"]);
            },
            error: |_| {
                starts_with(
                    "error: cannot resolve the host of https://nonexistent.invalid (DNS lookup failed: ",
                )
            },
            also: |r| {
                assert!(
                    !r.stderr().contains("retrying"),
                    "{}: a DNS failure is not retried",
                    r.case
                );
            },
            ..Case::default()
        },
        Case {
            name: "https_to_a_plain_http_port_is_a_tls_failure",
            setup: |c, t| {
                c.args(["--url", &format!("https://{}", t.sim.addr())]);
            },
            error: |t| {
                Line::StartsAndEndsWith(
                    format!("error: TLS handshake with https://{} failed: ", t.sim.addr()),
                    "received corrupt message of type InvalidContentType (the server does not speak TLS on that port: is the URL http://?)".to_owned(),
                )
            },
            also: |r| assert!(!r.stderr().contains("retrying"), "{}: TLS is not retried", r.case),
            ..Case::default()
        },
        Case {
            name: "a_server_that_never_answers_is_a_timeout",
            server: Server::Simulator(vec![Fault::new(FaultKind::Hang).on("GET", VERSION).times(100)]),
            setup: |c, _| {
                c.args(["--timeout", "1s"]);
            },
            error: |t| {
                exact(format!(
                    "error: authentik at {} did not answer in time (timeout: no answer within 1s (--timeout))",
                    t.sim.url()
                ))
            },
            also: |r| {
                assert_eq!(
                    r.counts().get("GET", VERSION),
                    5,
                    "{}: a timeout is retried, five attempts in all",
                    r.case
                );
                assert!(r.elapsed >= Duration::from_secs(5), "{}: 1 s per attempt", r.case);
            },
            ..Case::default()
        },
        // ------------------------------------------------------------ bad bodies
        Case {
            name: "an_html_page_with_200_is_not_an_authentik_api",
            server: Server::EveryGet(ResponseTemplate::new(200).set_body_raw(
                "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body>Please sign in</body></html>",
                "text/html; charset=utf-8",
            )),
            error: |t| {
                exact(format!(
                    "error: no authentik API at {} (wrong URL?): HTTP 200 with an HTML page instead of JSON: title \"Sign in\"",
                    t.uri()
                ))
            },
            also: |r| assert_no_panic(&r.out),
            ..Case::default()
        },
        Case {
            name: "truncated_json_is_an_error_with_status_and_excerpt",
            server: Server::List(ResponseTemplate::new(200).set_body_raw(
                r#"{"pagination": {"next": 0, "previous": 0}, "results": [{"pk": "#,
                "application/json",
            )),
            error: |_| {
                Line::StartsAndEndsWith(
                    "error: unexpected response from authentik (HTTP 200): not the expected JSON ("
                        .to_owned(),
                    r#": {"pagination": {"next": 0, "previous": 0}, "results": [{"pk":"#.to_owned(),
                )
            },
            also: |r| {
                assert_no_panic(&r.out);
                assert_eq!(
                    r.stand_in_requests, 2,
                    "{}: version and one list call, not retried",
                    r.case
                );
            },
            ..Case::default()
        },
        Case {
            name: "json_of_the_wrong_shape_is_an_error_with_status_and_excerpt (results not a list)",
            server: Server::List(
                ResponseTemplate::new(200).set_body_raw(RESULTS_NOT_A_LIST, "application/json"),
            ),
            error: |_| not_the_expected_json(RESULTS_NOT_A_LIST),
            also: |r| assert_no_panic(&r.out),
            ..Case::default()
        },
        Case {
            name: "json_of_the_wrong_shape_is_an_error_with_status_and_excerpt (a list, not an object)",
            server: Server::List(
                ResponseTemplate::new(200).set_body_raw(A_LIST, "application/json"),
            ),
            error: |_| not_the_expected_json(A_LIST),
            also: |r| assert_no_panic(&r.out),
            ..Case::default()
        },
        Case {
            name: "json_of_the_wrong_shape_is_an_error_with_status_and_excerpt (a name that is a number)",
            server: Server::List(
                ResponseTemplate::new(200).set_body_raw(NAME_A_NUMBER, "application/json"),
            ),
            error: |_| not_the_expected_json(NAME_A_NUMBER),
            also: |r| assert_no_panic(&r.out),
            ..Case::default()
        },
        Case {
            name: "a_version_that_is_not_a_version_is_an_error",
            server: Server::Version(r#"{"version_current": "banana"}"#),
            error: |_| {
                exact(
                    r#"error: unexpected response from authentik (HTTP 200): version_current "banana" is not a version"#,
                )
            },
            also: |r| assert_no_panic(&r.out),
            ..Case::default()
        },
        // ------------------------------------------------------------ retries
        Case {
            name: "transient_failures_are_retried_and_survived",
            server: Server::Simulator(vec![
                Fault::status(503).on("GET", VERSION).times(2),
                Fault::status_retry_after(429, 1).on("GET", LIST),
                Fault::new(FaultKind::Reset).on("GET", ALL),
            ]),
            code: 2,
            also: |r| {
                one_create_one_update_planned(r);
                let counts = r.counts();
                assert_eq!(counts.get("GET", VERSION), 3, "{}: 503 twice, then the answer", r.case);
                assert_eq!(counts.get("GET", LIST), 2, "{}: 429, then the answer", r.case);
                assert_eq!(counts.get("GET", ALL), 2, "{}: reset, then the answer", r.case);
                assert!(
                    r.elapsed >= Duration::from_secs(1),
                    "{}: Retry-After: 1 is honoured",
                    r.case
                );
                let err = r.stderr();
                assert_eq!(err.matches("retrying after").count(), 4, "{}: {err}", r.case);
                assert!(err.contains("retrying after HTTP 503"), "{}: {err}", r.case);
                assert!(err.contains("retrying after HTTP 429"), "{}: {err}", r.case);
            },
            ..Case::default()
        },
        Case {
            name: "authentiks_internal_error_and_a_reset_during_writes_are_retried",
            server: Server::Simulator(vec![
                Fault::new(FaultKind::EmptyHtml405).on("PUT", LIST),
                Fault::new(FaultKind::Reset).on("POST", LIST),
            ]),
            commands: APPLY,
            code: 0,
            also: |r| {
                assert!(
                    r.stdout().contains("Apply: 1 created, 1 updated, 0 failed."),
                    "{}",
                    r.describe()
                );
                let counts = r.counts();
                assert_eq!(counts.get("PUT", ONE), 2, "{}: empty 405, then the write", r.case);
                assert_eq!(counts.get("POST", LIST), 2, "{}: reset, then the create", r.case);
                assert!(
                    r.stderr()
                        .contains("retrying after authentik's internal error (empty HTTP 405)"),
                    "{}: {}",
                    r.case,
                    r.stderr()
                );
                let names: Vec<_> = r
                    .target
                    .sim
                    .captcha_stages()
                    .into_iter()
                    .map(|s| s.fields.name)
                    .collect();
                assert_eq!(names.iter().filter(|n| *n == "signup").count(), 1, "{}", r.case);
            },
            ..Case::default()
        },
        Case {
            name: "a_server_error_that_outlasts_the_retries_says_how_often_it_was_tried",
            server: Server::Simulator(vec![Fault::status(503).on("GET", VERSION).times(100)]),
            error: |_| {
                exact(
                    r#"error: authentik failed with HTTP 503 after 5 attempts: {"detail": "injected HTTP 503"}"#,
                )
            },
            also: |r| assert_eq!(r.counts().get("GET", VERSION), 5, "{}", r.case),
            ..Case::default()
        },
        // A 500 is not one of the retried statuses (authentik reports its own
        // internal errors as an empty 405).
        Case {
            name: "a_500_is_not_retried",
            server: Server::Simulator(vec![
                status_fault(500, "Internal Server Error").on("GET", LIST),
            ]),
            error: |_| exact("error: authentik failed with HTTP 500: Internal Server Error"),
            also: |r| assert_eq!(r.counts().get("GET", LIST), 1, "{}", r.case),
            ..Case::default()
        },
        // ------------------------------------------------------------ writes
        Case {
            name: "a_json_404_on_a_stage_names_the_stage_and_is_not_retried",
            server: Server::Simulator(vec![
                status_fault(404, r#"{"detail": "No CaptchaStage matches the given query."}"#)
                    .on("PUT", LIST),
            ]),
            commands: APPLY,
            also: |r| {
                let login = r.target.sim.captcha_stages()[0].uuid;
                let text = r.stdout();
                assert!(
                    text.contains(&format!(
                        "failed to update login (stages/login.yaml:1): captcha stage {login} does not exist in authentik (HTTP 404)"
                    )),
                    "{}: {text}",
                    r.case
                );
                assert!(
                    text.contains("Apply: 1 created, 0 updated, 1 failed."),
                    "{}: {text}",
                    r.case
                );
                assert_eq!(r.counts().get("PUT", ONE), 1, "{}: 404 is not retried", r.case);
            },
            ..Case::default()
        },
        Case {
            name: "a_token_that_may_read_but_not_write_fails_each_write_once",
            server: Server::Simulator(vec![
                status_fault(
                    403,
                    r#"{"detail": "You do not have permission to perform this action."}"#,
                )
                .on("PUT", LIST),
                status_fault(
                    403,
                    r#"{"detail": "You do not have permission to perform this action."}"#,
                )
                .on("POST", LIST),
            ]),
            commands: APPLY,
            also: |r| {
                let text = r.stdout();
                let refused = "authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: You do not have permission to perform this action.)";
                assert!(
                    text.contains(&format!(
                        "failed to update login (stages/login.yaml:1): {refused}\n"
                    )),
                    "{}: {text}",
                    r.case
                );
                assert!(
                    text.contains("Apply: 0 created, 0 updated, 2 failed."),
                    "{}: {text}",
                    r.case
                );
                let counts = r.counts();
                assert_eq!(counts.get("PUT", ONE), 1, "{}: 403 is not retried", r.case);
                assert_eq!(counts.get("POST", LIST), 1, "{}: 403 is not retried", r.case);
                assert_eq!(
                    r.target.sim.captcha_stages().len(),
                    1,
                    "{}: nothing was created",
                    r.case
                );
            },
            ..Case::default()
        },
        Case {
            name: "a_400_names_the_stage_its_file_and_every_message_and_the_rest_is_written",
            server: Server::Simulator(vec![
                status_fault(
                    400,
                    r#"{"name": ["stage with this name already exists."], "public_key": ["This field may not be blank.", "Ensure this field is short."]}"#,
                )
                .on("POST", LIST),
            ]),
            commands: APPLY,
            also: |r| {
                let text = r.stdout();
                let file = path_str(
                    &std::path::Path::new("stages")
                        .join("more")
                        .join("signup.yaml"),
                );
                assert!(
                    text.contains(&format!(
                        "failed to create signup ({file}:1): authentik rejected the stage (HTTP 400): name: stage with this name already exists.; public_key: This field may not be blank. Ensure this field is short.\n"
                    )),
                    "{}: {text}",
                    r.case
                );
                assert!(text.contains("updated login ("), "{}: {text}", r.case);
                assert!(
                    text.contains("Apply: 0 created, 1 updated, 1 failed."),
                    "{}: {text}",
                    r.case
                );
                let counts = r.counts();
                assert_eq!(counts.get("POST", LIST), 1, "{}: 400 is not retried", r.case);
                assert_eq!(counts.get("PUT", ONE), 1, "{}: the other stage is written", r.case);
                let live = r.target.sim.captcha_stages();
                let login = live
                    .iter()
                    .find(|s| s.fields.name == "login")
                    .expect("login");
                assert_eq!(login.fields.score_min_threshold, 0.5, "{}", r.case);
                assert_eq!(
                    r.target.sim.private_key_of(login.uuid).as_deref(),
                    Some(LOGIN_KEY),
                    "{}",
                    r.case
                );
            },
            ..Case::default()
        },
        // ------------------------------------------------------------ configuration
        Case {
            name: "a_missing_plan_file_is_a_configuration_error",
            commands: &[&["apply", "--plan", "missing.json"]],
            code: 3,
            error: |_| {
                exact(
                    "error: cannot read the plan file missing.json: No such file or directory (os error 2)",
                )
            },
            also: nothing_sent,
            ..Case::default()
        },
        Case {
            name: "plain_http_to_another_host_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.args(["--url", "http://auth.example.com"]);
            },
            code: 3,
            error: |_| {
                exact(
                    "error: refusing to send the API token over plain http to auth.example.com: use https://, or pass --allow-http if the network is trusted (http is allowed without it only for loopback hosts)",
                )
            },
            also: nothing_sent,
            ..Case::default()
        },
        Case {
            name: "plain_http_to_another_host_is_used_with_allow_http (and here fails to resolve)",
            setup: |c, _| {
                c.args(["--allow-http", "--url", "http://nonexistent.invalid"]);
            },
            error: |_| {
                starts_with(
                    "error: cannot resolve the host of http://nonexistent.invalid (DNS lookup failed: ",
                )
            },
            ..Case::default()
        },
        Case {
            name: "an_unusable_url_is_a_configuration_error",
            setup: |c, _| {
                c.args(["--url", "auth.example.com"]);
            },
            code: 3,
            error: |_| {
                exact(
                    r#"error: invalid authentik URL "auth.example.com": it needs a scheme, e.g. https://auth.example.com"#,
                )
            },
            ..Case::default()
        },
        Case {
            name: "skipping_tls_verification_warns_loudly",
            setup: |c, _| {
                c.arg("--insecure-skip-tls-verify");
            },
            code: 2,
            also: |r| {
                assert!(
                    r.stderr().contains(
                        "WARN TLS CERTIFICATE VERIFICATION IS DISABLED (--insecure-skip-tls-verify): anyone on the network path can read the API token and the private keys; use --ca-file instead"
                    ),
                    "{}: {}",
                    r.case,
                    r.stderr()
                );
            },
            ..Case::default()
        },
        Case {
            name: "a_missing_url_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.env_remove("AUTHENTIK_URL");
            },
            code: 3,
            error: |_| exact("error: no authentik URL: pass --url or set AUTHENTIK_URL"),
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "a_missing_token_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.env_remove("AUTHENTIK_TOKEN");
            },
            code: 3,
            error: |_| exact("error: no API token: set AUTHENTIK_TOKEN or pass --token-file PATH"),
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "a_blank_token_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.env("AUTHENTIK_TOKEN", "  ");
            },
            code: 3,
            error: |_| exact("error: AUTHENTIK_TOKEN is set but empty"),
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "an_empty_token_file_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, t| {
                let empty = empty_token_file(t);
                std::fs::write(&empty, " \n").expect("write");
                c.env_remove("AUTHENTIK_TOKEN")
                    .arg("--token-file")
                    .arg(&empty);
            },
            code: 3,
            error: |t| {
                exact(format!(
                    "error: the token file {} is empty",
                    path_str(&empty_token_file(t))
                ))
            },
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "a_missing_token_file_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, t| {
                c.env_remove("AUTHENTIK_TOKEN")
                    .arg("--token-file")
                    .arg(missing_token_file(t));
            },
            code: 3,
            error: |t| {
                exact(format!(
                    "error: cannot read the token file {}: No such file or directory (os error 2)",
                    path_str(&missing_token_file(t))
                ))
            },
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "a_token_with_a_line_break_is_a_configuration_error",
            commands: PLAN_AND_APPLY,
            setup: |c, _| {
                c.env("AUTHENTIK_TOKEN", "first-half-4411\nsecond-half-9d2f");
            },
            code: 3,
            error: |_| {
                exact(
                    "error: cannot set up the HTTP client: the API token contains characters that cannot be sent in an HTTP header",
                )
            },
            also: no_token_part_and_nothing_sent,
            ..Case::default()
        },
        Case {
            name: "a_token_file_is_read_and_trimmed",
            setup: |c, t| {
                let file = t.ws.root.path().join("token");
                std::fs::write(&file, format!("  {TOKEN}\n")).expect("write");
                c.env_remove("AUTHENTIK_TOKEN")
                    .arg("--token-file")
                    .arg(&file);
            },
            code: 2,
            ..Case::default()
        },
        Case {
            name: "an_unusable_state_file_is_named_once",
            commands: APPLY,
            setup: |_, t| {
                std::fs::create_dir_all(t.ws.state_file())
                    .expect("a directory where the file should be");
            },
            error: |t| starts_with(format!("error: state file {}: ", path_str(&t.ws.state_file()))),
            also: |r| {
                let error = r.error();
                assert_eq!(
                    error.matches("os error").count(),
                    1,
                    "{}: the cause once: {error}",
                    r.case
                );
                nothing_sent(r);
            },
            ..Case::default()
        },
        // ------------------------------------------------------------ secrets
        // Each fault in a fresh scenario, so that every apply has both writes
        // to make; stdout and stderr are searched for secrets in every case.
        Case {
            name: "no_secret_is_printed_at_trace_level (503 twice)",
            server: Server::Simulator(vec![Fault::status(503).on("GET", VERSION).times(2)]),
            commands: APPLY,
            setup: trace,
            code: 0,
            also: traced_both_writes,
            ..Case::default()
        },
        Case {
            name: "no_secret_is_printed_at_trace_level (truncated create)",
            server: Server::Simulator(vec![Fault::new(FaultKind::Truncated).on("POST", LIST)]),
            commands: APPLY,
            setup: trace,
            code: 0,
            also: traced_both_writes,
            ..Case::default()
        },
        Case {
            name: "no_secret_is_printed_at_trace_level (400 on the key)",
            server: Server::Simulator(vec![
                status_fault(400, r#"{"private_key": ["This field may not be blank."]}"#)
                    .on("PUT", LIST),
            ]),
            commands: APPLY,
            setup: trace,
            also: traced_both_writes,
            ..Case::default()
        },
        Case {
            name: "no_secret_is_printed_at_trace_level (wrong token)",
            setup: |c, t| {
                trace(c, t);
                c.env("AUTHENTIK_TOKEN", WRONG_TOKEN)
                    .args(["--url", &t.sim.url()]);
            },
            ..Case::default()
        },
        Case {
            name: "no_secret_is_printed_at_trace_level (https to plain http)",
            setup: |c, t| {
                trace(c, t);
                c.args(["--url", &format!("https://{}", t.sim.addr())]);
            },
            ..Case::default()
        },
        Case {
            name: "no_secret_is_printed_at_trace_level (connection refused)",
            setup: |c, t| {
                trace(c, t);
                c.args(["--url", &t.closed]);
            },
            ..Case::default()
        },
    ]
}

/// List bodies of the wrong shape; the error ends with the body itself.
const RESULTS_NOT_A_LIST: &str = r#"{"results": "nope"}"#;
const A_LIST: &str = r#"[1, 2, 3]"#;
const NAME_A_NUMBER: &str = r#"{"pagination": {"next": 0}, "results": [{"name": 7}]}"#;

fn not_the_expected_json(body: &str) -> Line {
    Line::StartsAndEndsWith(
        "error: unexpected response from authentik (HTTP 200): not the expected JSON (".to_owned(),
        format!("): {body}"),
    )
}

fn wrong_base_url(t: &Target) -> Line {
    starts_with(format!(
        "error: no authentik API at {}/authentik (wrong URL?): HTTP 404 with an HTML page instead of JSON: title \"authentik\"",
        t.sim.url()
    ))
}

fn html_404_not_retried(r: &Ran) {
    assert_eq!(
        r.counts().total(),
        1,
        "{}: an HTML 404 is not retried",
        r.case
    );
}

fn one_create_one_update_planned(r: &Ran) {
    assert!(
        r.stdout()
            .contains("Plan: 1 to create, 1 to update, 0 in sync, 0 unmanaged."),
        "{}",
        r.describe()
    );
}

fn nothing_sent(r: &Ran) {
    assert_eq!(r.counts().total(), 0, "{}: nothing is sent", r.case);
}

/// A configuration error: no part of the token is printed, nothing is sent.
fn no_token_part_and_nothing_sent(r: &Ran) {
    for half in ["first-half-4411", "second-half-9d2f"] {
        assert!(!r.stderr().contains(half), "{}", r.describe());
    }
    nothing_sent(r);
}

fn empty_token_file(t: &Target) -> std::path::PathBuf {
    t.ws.root.path().join("empty-token")
}

fn missing_token_file(t: &Target) -> std::path::PathBuf {
    t.ws.root.path().join("no-such-token")
}

fn trace(c: &mut assert_cmd::Command, _: &Target) {
    c.env("RUST_LOG", "trace");
}

/// Trace logging was on, and both writes were attempted.
fn traced_both_writes(r: &Ran) {
    assert!(
        r.stderr().len() > 1000,
        "trace logging is on: {}",
        r.describe()
    );
    assert_eq!(r.counts().writes(), 2, "{}", r.describe());
}

// ---------------------------------------------------------------- cases with steps of their own

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

    // The stage was found by name, not confirmed by an answer: another writer
    // may have created it with another key, so the key reads as unknown (never
    // wrongly unchanged) and the next apply writes it once more.
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stdout(&out).contains("private_key: (sensitive) unknown"),
        "{}",
        describe(&out)
    );
    let mut c = cmd(&ws, &sim);
    c.args(["apply", "--yes"]);
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut c = cmd(&ws, &sim);
    c.arg("plan");
    let out = run_checked(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
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
