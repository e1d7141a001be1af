//! `stagesync verify` end to end: the real binary against the fake captcha
//! provider on loopback.

use std::time::{Duration, Instant};

use assert_cmd::Command;
use stagesync::simulator::SimHandle;
use stagesync::simulator::provider::{self, ProviderHandle, ProviderMode};
use stagesync::verify::PROBE_TOKEN;
use support::cli::{Workspace, run, stderr, stdout};
use support::daemon::Harness;

const GOOD_SECRET: &str = "good-secret-7d41c0a9e2";
const WRONG_SECRET: &str = "wrong-secret-93be5f1a04";
const SITE_KEY: &str = "site-key-good";

async fn start_provider() -> ProviderHandle {
    provider::start(GOOD_SECRET, SITE_KEY)
        .await
        .expect("fake provider starts")
}

/// A manifest whose key comes from `$<VAR>`, checked at `api_url`.
fn manifest(name: &str, site_key: &str, var: &str, api_url: &str, extra: &str) -> String {
    support::cli::manifest(name, site_key, var, &format!("api_url: {api_url}\n{extra}"))
}

/// `stagesync verify stages/ ARGS`, with both keys in the environment and the
/// fake provider's loopback address allowed as a plain-http provider host.
fn verify(ws: &Workspace, fake: &ProviderHandle, args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("stagesync").expect("binary");
    cmd.current_dir(ws.root.path())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("GOOD_KEY", GOOD_SECRET)
        .env("WRONG_KEY", WRONG_SECRET)
        .env(
            "STAGESYNC_PROVIDER_HOSTS",
            format!("http://{}", fake.addr()),
        )
        .arg("verify")
        .arg(ws.stages())
        .args(args);
    cmd
}

/// Three stages at one provider: a good key, a wrong key, a good key for another site key.
fn three_stages(ws: &Workspace, fake: &ProviderHandle) {
    let url = fake.siteverify_url();
    ws.write(
        "good.yaml",
        &manifest("good", SITE_KEY, "GOOD_KEY", &url, ""),
    );
    ws.write(
        "wrong.yaml",
        &manifest("wrong", SITE_KEY, "WRONG_KEY", &url, ""),
    );
    ws.write(
        "elsewhere.yaml",
        &manifest("elsewhere", "site-key-other", "GOOD_KEY", &url, ""),
    );
}

/// The fake provider and a workspace with one stage, `good`, holding the good
/// key, checked at `api_url` (default: the fake provider).
async fn one_stage(api_url: Option<&str>, extra: &str) -> (ProviderHandle, Workspace) {
    let fake = start_provider().await;
    let ws = Workspace::new();
    let url = api_url.map_or_else(|| fake.siteverify_url(), str::to_owned);
    ws.write(
        "good.yaml",
        &manifest("good", SITE_KEY, "GOOD_KEY", &url, extra),
    );
    (fake, ws)
}

fn assert_code(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

fn line_of<'a>(text: &'a str, stage: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(stage))
        .unwrap_or_else(|| panic!("no line for {stage} in:\n{text}"))
}

#[tokio::test]
async fn a_good_key_is_valid_and_exits_0() {
    let (fake, ws) = one_stage(None, "").await;
    let out = run(verify(&ws, &fake, &[])).await;
    let text = stdout(&out);
    assert_code(&out, 0);
    assert!(line_of(&text, "good").starts_with("valid "), "{text}");
    assert!(
        line_of(&text, "good").contains("invalid-input-response"),
        "{text}"
    );
    assert!(text.ends_with("1 key checked: 1 valid, 0 invalid, 0 mismatched, 0 unknown\n"));

    // Sent as authentik sends it: a form POST to api_url, the key in the body only.
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/siteverify");
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let fields = seen[0].fields.as_ref().expect("a form body");
    assert_eq!(fields["secret"], GOOD_SECRET);
    assert_eq!(fields["response"], PROBE_TOKEN);
    assert_eq!(fields["sitekey"], SITE_KEY);
    assert!(fields.contains_key("remoteip"));
}

#[tokio::test]
async fn a_wrong_key_and_a_site_key_mismatch_exit_1_with_the_providers_codes() {
    let fake = start_provider().await;
    let ws = Workspace::new();
    three_stages(&ws, &fake);
    let out = run(verify(&ws, &fake, &[])).await;
    let text = stdout(&out);
    assert_code(&out, 1);
    assert!(line_of(&text, "good").starts_with("valid "), "{text}");
    let wrong = line_of(&text, "wrong");
    assert!(wrong.starts_with("invalid "), "{text}");
    assert!(
        wrong.contains("(error-codes: invalid-input-secret)"),
        "{text}"
    );
    let elsewhere = line_of(&text, "elsewhere");
    assert!(elsewhere.starts_with("mismatch "), "{text}");
    assert!(elsewhere.contains("sitekey-secret-mismatch"), "{text}");
    assert!(text.ends_with("3 keys checked: 1 valid, 1 invalid, 1 mismatched, 0 unknown\n"));
    assert_eq!(fake.request_count(), 3, "one request per stage, no retry");

    let out = run(verify(&ws, &fake, &["--format", "json"])).await;
    assert_code(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["format_version"], 1);
    assert_eq!(
        report["summary"],
        serde_json::json!({"valid": 1, "invalid": 1, "mismatch": 1, "unknown": 0})
    );
    let by_stage = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["stage"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let wrong = by_stage("wrong");
    assert_eq!(wrong["result"], "invalid");
    assert_eq!(
        wrong["error_codes"],
        serde_json::json!(["invalid-input-secret"])
    );
    assert_eq!(wrong["http_status"], 200);
    assert_eq!(wrong["contacted"], true);
    assert_eq!(by_stage("elsewhere")["result"], "mismatch");
}

#[tokio::test]
async fn json_is_sent_where_request_content_type_says_so() {
    let (fake, ws) = one_stage(None, "request_content_type: application/json\n").await;
    let out = run(verify(&ws, &fake, &[])).await;
    assert_code(&out, 0);
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let fields = seen[0].fields.as_ref().expect("a JSON object body");
    assert_eq!(fields["secret"], GOOD_SECRET);
    assert_eq!(fields["response"], PROBE_TOKEN);
}

/// Runs verify against the fake provider in `mode` and returns (stdout, stderr, code, time).
async fn unknown_answer(
    mode: ProviderMode,
    args: &[&str],
) -> (String, String, Option<i32>, Duration) {
    let (fake, ws) = one_stage(None, "").await;
    fake.set_mode(mode);
    let started = Instant::now();
    let out = run(verify(&ws, &fake, args)).await;
    assert_eq!(fake.request_count(), 1, "asked once, never retried");
    (
        stdout(&out),
        stderr(&out),
        out.status.code(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_provider_that_hangs_is_unknown_after_the_timeout() {
    let (text, err, code, took) = unknown_answer(ProviderMode::Hang, &["--timeout", "1s"]).await;
    assert_eq!(code, Some(0), "unknown is a warning: {text}{err}");
    assert!(line_of(&text, "good").starts_with("unknown "), "{text}");
    assert!(
        line_of(&text, "good").contains("no answer within 1s"),
        "{text}"
    );
    assert!(err.contains("warning: 1 key could not be checked"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let (_, _, code, _) =
        unknown_answer(ProviderMode::Hang, &["--timeout", "1s", "--strict"]).await;
    assert_eq!(code, Some(1), "--strict fails on unknown");
}

#[tokio::test]
async fn a_500_is_unknown() {
    let (text, err, code, _) = unknown_answer(ProviderMode::ServerError, &[]).await;
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(line_of(&text, "good").starts_with("unknown "), "{text}");
    assert!(line_of(&text, "good").contains("HTTP 500"), "{text}");
    let (_, _, code, _) = unknown_answer(ProviderMode::ServerError, &["--strict"]).await;
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn an_html_page_is_unknown() {
    let (text, err, code, _) = unknown_answer(ProviderMode::Html, &[]).await;
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(line_of(&text, "good").starts_with("unknown "), "{text}");
    assert!(
        line_of(&text, "good").contains("not a captcha provider's JSON"),
        "{text}"
    );
}

#[tokio::test]
async fn a_test_key_that_passes_every_token_is_valid() {
    let (text, err, code, _) = unknown_answer(ProviderMode::AcceptAll, &[]).await;
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(line_of(&text, "good").starts_with("valid "), "{text}");
    assert!(line_of(&text, "good").contains("test key"), "{text}");
}

/// A host the operator did not allow is never contacted: plain http to a host
/// that is not allowed, or https to a host that is not a provider's. The
/// manifest is refused while loading, as `plan` refuses it. The request would
/// reach the fake provider through the proxy named in HTTP_PROXY if it were
/// sent at all.
#[tokio::test]
async fn a_provider_host_that_is_not_allowed_is_never_contacted() {
    for api_url in [
        "http://provider.example/siteverify",
        "https://provider.example/siteverify",
    ] {
        let (fake, ws) = one_stage(Some(api_url), "").await;
        let proxy = format!("http://{}", fake.addr());
        for args in [&["--format", "json"][..], &["--strict"]] {
            let mut cmd = verify(&ws, &fake, args);
            cmd.env("HTTP_PROXY", &proxy)
                .env("http_proxy", &proxy)
                .env("HTTPS_PROXY", &proxy)
                .env("https_proxy", &proxy)
                .env_remove("NO_PROXY")
                .env_remove("no_proxy");
            let out = run(cmd).await;
            assert_code(&out, 3);
            assert!(
                stderr(&out).contains("`api_url` is refused"),
                "{}",
                stderr(&out)
            );
            assert_eq!(fake.request_count(), 0, "the key left for a refused host");
        }
    }
}

#[tokio::test]
async fn no_key_in_any_output_at_trace_level() {
    let fake = start_provider().await;
    let ws = Workspace::new();
    three_stages(&ws, &fake);
    fake.set_mode(ProviderMode::Answer);
    for format in ["text", "json"] {
        let mut cmd = verify(&ws, &fake, &["--format", format]);
        cmd.env("RUST_LOG", "trace");
        let out = run(cmd).await;
        assert_code(&out, 1);
        let (text, err) = (stdout(&out), stderr(&out));
        // Trace logging is on: the probes' own lines and the HTTP stack's are there.
        assert!(err.contains("key check"), "{err}");
        assert!(err.lines().count() > 20, "{err}");
        for secret in [GOOD_SECRET, WRONG_SECRET] {
            assert!(!text.contains(secret), "key in stdout:\n{text}");
            assert!(!err.contains(secret), "key in stderr:\n{err}");
        }
    }
    for seen in fake.requests() {
        assert_eq!(seen.uri, "/siteverify", "the key travels in the body only");
    }
}

#[tokio::test]
async fn invalid_manifests_exit_3_and_contact_nobody() {
    let fake = start_provider().await;
    let ws = Workspace::new();
    three_stages(&ws, &fake);
    ws.write("broken.yaml", "name: broken\npublic_key: [\n");
    let out = run(verify(&ws, &fake, &[])).await;
    assert_code(&out, 3);
    assert_eq!(fake.request_count(), 0);
}

/// The binary pointed at `sim`, with both keys in the environment and the
/// fake provider's loopback address allowed as a plain-http provider host.
fn against_sim(ws: &Workspace, sim: &SimHandle, fake: &ProviderHandle) -> Command {
    let mut cmd = ws.cmd(sim);
    cmd.env("GOOD_KEY", GOOD_SECRET)
        .env("WRONG_KEY", WRONG_SECRET)
        .env(
            "STAGESYNC_PROVIDER_HOSTS",
            format!("http://{}", fake.addr()),
        );
    cmd
}

/// `stagesync plan ARGS stages/` against `sim`.
fn plan(ws: &Workspace, sim: &SimHandle, fake: &ProviderHandle, args: &[&str]) -> Command {
    let mut cmd = against_sim(ws, sim, fake);
    cmd.arg("plan").args(args).arg(ws.stages());
    cmd
}

#[tokio::test]
async fn plan_verify_keys_shows_the_check_of_every_entry_that_writes_its_key() {
    let fake = start_provider().await;
    let sim = support::cli::start_sim().await;
    let ws = Workspace::new();
    three_stages(&ws, &fake);

    let without = run(plan(&ws, &sim, &fake, &[])).await;
    assert_code(&without, 2);
    assert!(
        !stdout(&without).contains("key check"),
        "{}",
        stdout(&without)
    );
    let json = run(plan(&ws, &sim, &fake, &["--format", "json"])).await;
    assert!(!stdout(&json).contains("key_check"), "{}", stdout(&json));
    assert_eq!(fake.request_count(), 0, "no check without the flag");

    let out = run(plan(&ws, &sim, &fake, &["--verify-keys"])).await;
    assert_code(&out, 2);
    let text = stdout(&out);
    let entry = |name: &str| {
        let start = text
            .find(&format!("+ create {name} "))
            .unwrap_or_else(|| panic!("{name} in:\n{text}"));
        text[start..]
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        entry("wrong").ends_with(
            "    key check: invalid: the provider refused the key (error-codes: invalid-input-secret)"
        ),
        "{text}"
    );
    assert!(
        entry("good").contains("    key check: valid: the provider accepted the key"),
        "{text}"
    );
    assert!(
        entry("elsewhere").contains("key check: mismatch:"),
        "{text}"
    );
    assert_eq!(fake.request_count(), 3, "one check per entry that writes");

    let out = run(plan(
        &ws,
        &sim,
        &fake,
        &["--verify-keys", "--format", "json"],
    ))
    .await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let check_of = |name: &str| {
        doc["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["key_check"].clone())
            .unwrap_or_else(|| panic!("{name} in {doc}"))
    };
    assert_eq!(check_of("wrong")["result"], "invalid");
    assert_eq!(
        check_of("wrong")["error_codes"],
        serde_json::json!(["invalid-input-secret"])
    );
    assert_eq!(check_of("wrong")["contacted"], true);
    assert_eq!(check_of("good")["result"], "valid");
    assert_eq!(check_of("elsewhere")["result"], "mismatch");

    let out = run(plan(
        &ws,
        &sim,
        &fake,
        &["--verify-keys", "--format", "markdown"],
    ))
    .await;
    let markdown = stdout(&out);
    assert!(
        markdown.contains("Key check: **invalid: the provider refused the key (error-codes: invalid-input-secret)**"),
        "{markdown}"
    );
    for secret in [GOOD_SECRET, WRONG_SECRET] {
        for output in [&text, &markdown, &stdout(&out), &stderr(&out)] {
            assert!(!output.contains(secret), "key in output:\n{output}");
        }
    }

    // Once applied, nothing writes a key: nothing is checked.
    let mut apply = against_sim(&ws, &sim, &fake);
    apply.args(["apply", "--yes"]).arg(ws.stages());
    assert_code(&run(apply).await, 0);
    let asked = fake.request_count();
    let out = run(plan(&ws, &sim, &fake, &["--verify-keys"])).await;
    assert_code(&out, 0);
    assert!(!stdout(&out).contains("key check"), "{}", stdout(&out));
    assert_eq!(fake.request_count(), asked);
}

fn key_check_series(stage: &str, result: &str) -> String {
    format!(r#"stagesync_key_check{{stage="{stage}",result="{result}"}}"#)
}

/// `stagesync run --verify-keys` with `!File` keys, so a key can change while
/// it runs: each key is checked when first seen and when it changes, never on
/// a resync; the invalid one is logged as an error and written anyway.
#[test]
fn the_daemon_checks_a_key_when_first_seen_and_when_it_changes_not_on_resync() {
    let h = Harness::new();
    let fake = h.block_on(start_provider());
    let url = fake.siteverify_url();
    let keys = h.ws.root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir keys");
    let (good_key, bad_key) = (keys.join("good.key"), keys.join("bad.key"));
    std::fs::write(&good_key, GOOD_SECRET).expect("write key");
    std::fs::write(&bad_key, WRONG_SECRET).expect("write key");
    let file_manifest = |name: &str, key: &std::path::Path| {
        format!(
            "name: {name}\npublic_key: {SITE_KEY}\nprivate_key: !File {}\napi_url: {url}\n",
            key.display()
        )
    };
    h.ws.write("good.yaml", &file_manifest("good", &good_key));
    h.ws.write("bad.yaml", &file_manifest("bad", &bad_key));
    let allowed = format!("http://{}", fake.addr());
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--verify-keys",
            "--secrets-dir",
            &keys.display().to_string(),
        ],
        &[("STAGESYNC_PROVIDER_HOSTS", &allowed)],
    );

    d.wait_for_metric_eq(&key_check_series("good", "valid"), 1.0);
    d.wait_for_metric_eq(&key_check_series("bad", "invalid"), 1.0);
    for other in ["valid", "mismatch", "unknown"] {
        assert_eq!(d.metric(&key_check_series("bad", other)), Some(0.0));
    }
    let line = d.wait_for_log("key check: the key does not work");
    assert!(
        line.contains("ERROR") && line.contains("bad") && line.contains("invalid-input-secret"),
        "{line}"
    );
    assert_eq!(d.count_lines("key check: the provider accepts the key"), 1);
    d.wait_until("the invalid key is written anyway", || {
        h.live("bad")
            .and_then(|s| h.sim.private_key_of(s.uuid))
            .is_some_and(|k| k == WRONG_SECRET)
    });
    assert_eq!(fake.request_count(), 2, "one check per stage");

    // Resyncs (here asked for with SIGHUP) do not ask the provider again.
    let passes = r#"stagesync_reconciles_total{result="success"}"#;
    for _ in 0..3 {
        let done = d.metric(passes).unwrap_or(0.0);
        d.signal(libc::SIGHUP);
        d.wait_for_metric(passes, done + 1.0);
    }
    assert_eq!(fake.request_count(), 2, "a resync checked a key again");

    // The bad key is replaced with the good one: checked again, once.
    std::fs::write(&bad_key, GOOD_SECRET).expect("rotate key");
    d.wait_for_metric_eq(&key_check_series("bad", "valid"), 1.0);
    assert_eq!(d.metric(&key_check_series("bad", "invalid")), Some(0.0));
    let line = d.wait_for_log_count("key check: the provider accepts the key", 2);
    assert!(line.contains("bad") && line.contains("invalid"), "{line}");
    let done = d.metric(passes).unwrap_or(0.0);
    d.signal(libc::SIGHUP);
    d.wait_for_metric(passes, done + 1.0);
    assert_eq!(fake.request_count(), 3, "the changed key only");

    // A stage that leaves the manifests loses its series.
    std::fs::remove_file(h.ws.stages().join("good.yaml")).expect("remove manifest");
    let deadline = Instant::now() + support::daemon::DEADLINE;
    while d.get("/metrics").1.contains(r#"stage="good""#) {
        d.assert_running();
        assert!(
            Instant::now() < deadline,
            "good's series stayed:\n{}",
            d.get("/metrics").1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.metric(&key_check_series("bad", "valid")), Some(1.0));

    let log = d.log();
    for secret in [GOOD_SECRET, WRONG_SECRET] {
        assert!(!log.contains(secret), "key in the log:\n{log}");
    }
    assert!(fake.requests().iter().all(|r| r.uri == "/siteverify"));
}

/// A provider that never answers holds back no write: the pass does not wait
/// for the check, which is still in flight when the stage is live.
#[test]
fn a_hanging_provider_does_not_delay_the_reconcile() {
    let h = Harness::new();
    let fake = h.block_on(start_provider());
    fake.set_mode(ProviderMode::Hang);
    h.ws.write(
        "good.yaml",
        &manifest("good", SITE_KEY, "GOOD_KEY", &fake.siteverify_url(), ""),
    );
    let allowed = format!("http://{}", fake.addr());
    let started = Instant::now();
    let mut d = h.start_daemon(
        h.ws.stages(),
        &["--verify-keys"],
        &[
            ("STAGESYNC_PROVIDER_HOSTS", &allowed),
            ("GOOD_KEY", GOOD_SECRET),
        ],
    );
    d.wait_until("the stage is written", || h.live("good").is_some());
    d.wait_for_metric(r#"stagesync_reconciles_total{result="success"}"#, 1.0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the pass waited for the provider's 10 s timeout: {took:?}"
    );
    d.wait_until("the check is asked", || fake.request_count() == 1);
    assert!(
        !d.get("/metrics").1.contains(r#"stage="good""#),
        "no result yet: the check is still waiting for the provider"
    );
}
