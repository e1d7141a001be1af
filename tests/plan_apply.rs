//! `plan` and `apply` end to end: the real binary against the simulator on loopback.

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{Fault, FaultKind};
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};

const LIST: &str = "/api/v3/stages/captcha/";

/// A workspace with three manifests: `login` (will drift), `signup` (missing
/// live), `renamed` (pinned by uuid to a stage live under another name).
struct Scenario {
    ws: Workspace,
    sim: stagesync::simulator::SimHandle,
}

async fn scenario() -> Scenario {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let login = sim.seed_captcha(
        StageFields {
            score_min_threshold: 0.3,
            ..StageFields::with_defaults("login", "site-login")
        },
        "old-secret",
    );
    let old = sim.seed_captcha(StageFields::with_defaults("old-name", "site-renamed"), "k");
    sim.seed_captcha(StageFields::with_defaults("clicked-in-ui", "site-ui"), "k");
    let _ = login;
    ws.write(
        "login.yaml",
        &manifest("login", "site-login", "LOGIN_KEY", ""),
    );
    ws.write(
        "more/signup.yml",
        &manifest(
            "signup",
            "site-signup",
            "SIGNUP_KEY",
            "interactive: true\nscore_max_threshold: 0.9\n",
        ),
    );
    ws.write(
        "renamed.yaml",
        &format!(
            "uuid: {old}\n{}",
            manifest("renamed", "site-renamed", "RENAMED_KEY", "")
        ),
    );
    Scenario { ws, sim }
}

fn with_keys(mut cmd: assert_cmd::Command) -> assert_cmd::Command {
    cmd.env("LOGIN_KEY", "login-secret-value-1")
        .env("SIGNUP_KEY", "signup-secret-value-2")
        .env("RENAMED_KEY", "renamed-secret-value-3");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_creates_updates_renames_and_unmanaged_then_apply_converges() {
    let Scenario { ws, sim } = scenario().await;

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan", "stages"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "plan exit code; stdout:\n{text}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("+ create") && text.contains("signup"),
        "{text}"
    );
    assert!(
        text.contains("~ update") && text.contains("login"),
        "{text}"
    );
    assert!(text.contains("score_min_threshold"), "{text}");
    assert!(
        text.contains("old-name") && text.contains("renamed"),
        "rename shown: {text}"
    );
    assert!(text.contains("clicked-in-ui"), "unmanaged listed: {text}");
    assert!(
        text.contains("Plan: 1 to create, 2 to update, 0 in sync, 1 unmanaged."),
        "{text}"
    );
    // Minimal traffic: version, one list page, and the names no captcha stage
    // holds yet (the create and the rename target) checked against the one page
    // of stages of every type: fewer calls than a look-up per name. No writes.
    let counts = sim.request_counts();
    assert_eq!(counts.get("GET", LIST), 1, "{counts:?}");
    assert_eq!(counts.writes(), 0, "plan never writes: {counts:?}");
    assert_eq!(counts.get("GET", "/api/v3/stages/all/"), 1, "{counts:?}");
    // Who made the drift: the token's user once, one event per update.
    assert_eq!(counts.get("GET", "/api/v3/core/users/me/"), 1, "{counts:?}");
    assert_eq!(counts.get("GET", "/api/v3/events/events/"), 2, "{counts:?}");
    assert_eq!(counts.total(), 6, "{counts:?}");

    sim.reset_counts();
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes", "stages"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "apply: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        sim.request_counts().writes(),
        3,
        "one write per changed stage"
    );

    let live = sim.captcha_stages();
    let by_name = |n: &str| live.iter().find(|s| s.fields.name == n).cloned();
    let login = by_name("login").expect("login live");
    assert_eq!(
        login.fields.score_min_threshold, 0.5,
        "drift reverted to the default"
    );
    assert_eq!(
        sim.private_key_of(login.uuid).as_deref(),
        Some("login-secret-value-1")
    );
    let signup = by_name("signup").expect("signup created");
    assert!(signup.fields.interactive);
    assert_eq!(signup.fields.score_max_threshold, 0.9);
    assert!(
        by_name("old-name").is_none() && by_name("renamed").is_some(),
        "renamed in place"
    );
    assert!(
        by_name("clicked-in-ui").is_some(),
        "unmanaged stage untouched"
    );

    // The next plan is empty, and knows every key is current.
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan", "stages"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Plan: 0 to create, 0 to update, 3 in sync, 1 unmanaged."),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_an_update_even_when_the_fields_match() {
    let Scenario { ws, sim } = scenario().await;
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes"]);
    assert_eq!(run(cmd).await.status.code(), Some(0));

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.env("LOGIN_KEY", "rotated-login-secret").args(["plan"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("Plan: 0 to create, 1 to update, 2 in sync, 1 unmanaged."),
        "{text}"
    );
    assert!(text.contains("will be updated"), "{text}");
    assert!(
        !text.contains("rotated-login-secret"),
        "the key itself never shows"
    );

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.env("LOGIN_KEY", "rotated-login-secret")
        .args(["apply", "--yes"]);
    assert_eq!(run(cmd).await.status.code(), Some(0));
    let login = sim
        .captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == "login")
        .unwrap();
    assert_eq!(
        sim.private_key_of(login.uuid).as_deref(),
        Some("rotated-login-secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_without_a_terminal_and_without_yes_refuses_after_showing_the_plan() {
    let Scenario { ws, sim } = scenario().await;
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("Plan: 1 to create"),
        "the plan is printed first"
    );
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(sim.request_counts().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_exit_3_and_contact_nothing() {
    let Scenario { ws, sim } = scenario().await;
    ws.write(
        "broken.yaml",
        "name: broken\npublic_key: p\nprivate_key: !Env X\nscore_min_threshold: lots\n",
    );
    for args in [vec!["plan"], vec!["apply", "--yes"]] {
        let mut cmd = with_keys(ws.cmd(&sim));
        cmd.args(&args);
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("broken.yaml:4"), "{}", stderr(&out));
    }
    assert_eq!(sim.request_counts().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_held_by_another_stage_type_is_a_plan_error_and_the_rest_still_applies() {
    let Scenario { ws, sim } = scenario().await;
    sim.seed_other_stage("signup", "ak-stage-identification-form");

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stage that cannot be planned fails the plan: {text}"
    );
    assert!(
        text.contains("! error") && text.contains("signup"),
        "{text}"
    );

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        sim.request_counts().writes(),
        2,
        "login and renamed are still written"
    );
    assert!(
        sim.captcha_stages()
            .iter()
            .all(|s| s.fields.name != "signup")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_is_reported_with_authentiks_message_and_does_not_stop_the_others() {
    let Scenario { ws, sim } = scenario().await;
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"public_key": ["This field may not be blank."]}"#.to_owned(),
        })
        .on("POST", LIST),
    );
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("signup") && text.contains("This field may not be blank."),
        "{text}"
    );
    assert!(text.contains("2 updated, 1 failed"), "{text}");
    let live = sim.captcha_stages();
    assert!(live.iter().any(|s| s.fields.name == "renamed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_takes_the_name_of_a_failed_rename_is_not_started_and_says_why() {
    let Scenario { ws, sim } = scenario().await;
    // A new stage takes the name "renamed.yaml" renames its stage away from.
    ws.write(
        "old-name.yaml",
        &manifest("old-name", "site-new", "LOGIN_KEY", ""),
    );
    let old = sim
        .captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == "old-name")
        .expect("seeded")
        .uuid;
    // authentik refuses the rename (a stage called "renamed" was made in the
    // UI meanwhile, as it would answer).
    sim.inject(
        Fault::new(FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"name": ["stage with this name already exists."]}"#.to_owned(),
        })
        .on("PUT", &format!("{LIST}{old}/")),
    );
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("failed to update renamed (stages/renamed.yaml:1)"),
        "{text}"
    );
    assert!(
        text.contains(
            "not started: old-name: it takes the name \"old-name\", which renamed is being renamed away from; that update failed\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Apply: 1 created, 1 updated, 1 failed, 1 not started."),
        "{text}"
    );
    let live = sim.captcha_stages();
    assert_eq!(
        live.iter().filter(|s| s.fields.name == "old-name").count(),
        1,
        "only the stage that kept its name holds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_lists_every_page_of_a_large_install_in_few_calls() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    for i in 0..250 {
        sim.seed_captcha(
            StageFields::with_defaults(format!("stage-{i:03}"), "p"),
            "k",
        );
    }
    ws.write("one.yaml", &manifest("stage-007", "p", "K", ""));
    let mut cmd = ws.cmd(&sim);
    cmd.env("K", "k").args(["plan", "--format", "json"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "key unknown: one update. {}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(json["summary"]["unmanaged"], 249);
    assert_eq!(
        sim.request_counts().get("GET", LIST),
        3,
        "250 stages = 3 pages of 100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_even_at_trace_level() {
    let Scenario { ws, sim } = scenario().await;
    let secrets = [
        support::cli::TOKEN,
        "login-secret-value-1",
        "signup-secret-value-2",
        "renamed-secret-value-3",
    ];
    for args in [
        vec!["plan"],
        vec!["apply", "--yes"],
        vec!["plan", "--format", "json"],
        vec!["plan", "--format", "markdown"],
    ] {
        let mut cmd = with_keys(ws.cmd(&sim));
        cmd.env("RUST_LOG", "trace").args(&args);
        let out = run(cmd).await;
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            all.len() > 100,
            "trace logging produced output for {args:?}"
        );
        for secret in secrets {
            assert!(!all.contains(secret), "{args:?} leaked a secret");
        }
    }
    let state = std::fs::read_to_string(ws.state_file()).expect("state file written");
    for secret in secrets {
        assert!(!state.contains(secret), "state file holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_state_file_only_ignore_unknown_keys_gives_a_clean_ci_plan() {
    let Scenario { ws, sim } = scenario().await;
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["apply", "--yes"]);
    assert_eq!(run(cmd).await.status.code(), Some(0));
    std::fs::remove_file(ws.state_file()).expect("state file existed");

    // A CI job without the state file: every key is unknown, so a plain plan drifts.
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Plan: 0 to create, 3 to update"),
        "{}",
        stdout(&out)
    );

    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan", "--ignore-unknown-keys"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Plan: 0 to create, 0 to update, 3 in sync"),
        "{}",
        stdout(&out)
    );

    // Real drift still shows.
    let login = sim
        .captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == "login")
        .unwrap();
    sim.edit(login.uuid, |f| f.interactive = true);
    let mut cmd = with_keys(ws.cmd(&sim));
    cmd.args(["plan", "--ignore-unknown-keys"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("-interactive: true"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_control_is_escaped_for_people_and_kept_for_parsers() {
    // docs/plan.md: the text and Markdown plans escape U+202E; the JSON plan
    // and the plan file keep the name as it is (JSON needs no escape there).
    let sim = start_sim().await;
    let ws = Workspace::new();
    ws.write(
        "a.yaml",
        &manifest("\"login\u{202e}nimda\"", "site", "LOGIN_KEY", ""),
    );
    for (format, raw) in [("text", false), ("markdown", false), ("json", true)] {
        let mut cmd = ws.cmd(&sim);
        cmd.env("LOGIN_KEY", "login-key-value").args([
            "plan",
            "--format",
            format,
            "--out",
            "plan.json",
            "stages",
        ]);
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(2), "{format}: {}", stderr(&out));
        let shown = stdout(&out);
        assert_eq!(shown.contains('\u{202e}'), raw, "{format}: {shown}");
        assert_eq!(shown.contains("\\u{202e}"), !raw, "{format}: {shown}");
    }
    let file = std::fs::read_to_string(ws.root.path().join("plan.json")).unwrap();
    assert!(file.contains("login\u{202e}nimda"), "{file}");
}
