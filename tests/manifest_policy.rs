//! Manifests are untrusted input: the real binary against the simulator, with
//! manifests that try to read stagesync's own secrets or files outside the
//! manifest directory, or to send a key (or point the login page's script) at
//! a foreign host. `validate`, `plan`, `apply` and `run` refuse each alike,
//! before anything is sent to authentik; the operator's flags (and their
//! environment variables) allow what the operator chooses, and nothing else.

use std::path::Path;

use stagesync::simulator::SimHandle;
use support::cli::{TOKEN, Workspace, run, start_sim, stderr, stdout};
use support::daemon::{DEADLINE, Harness};

const HCAPTCHA: &str =
    "js_url: https://js.hcaptcha.com/1/api.js\napi_url: https://api.hcaptcha.com/siteverify\n";

/// A manifest named `stage` whose key is `key` (a YAML value) and with `extra` lines.
fn doc(key: &str, extra: &str) -> String {
    format!("name: stage\npublic_key: site-key\nprivate_key: {key}\n{extra}")
}

/// One attack: the manifest, and the words (and line) its refusal must contain.
struct Attack {
    what: &'static str,
    manifest: String,
    line: usize,
    refusal: &'static str,
}

/// A file outside the manifest directory, and a symlink to it inside.
fn plant_outside_files(ws: &Workspace) {
    std::fs::write(ws.root.path().join("outside-key"), "outside-secret-1f2e\n").unwrap();
    std::os::unix::fs::symlink(
        ws.root.path().join("outside-key"),
        ws.stages().join("innocent-key"),
    )
    .unwrap();
}

fn attacks() -> Vec<Attack> {
    let outside = "lies outside the manifest directory";
    let own = "AUTHENTIK_* and STAGESYNC_* variables are stagesync's own";
    vec![
        Attack {
            what: "the API token",
            manifest: doc("!Env AUTHENTIK_TOKEN", HCAPTCHA),
            line: 3,
            refusal: own,
        },
        Attack {
            what: "a variable of stagesync's configuration",
            manifest: doc("!Env STAGESYNC_STATE_FILE", HCAPTCHA),
            line: 3,
            refusal: own,
        },
        Attack {
            what: "a system file",
            manifest: doc("!File /etc/passwd", HCAPTCHA),
            line: 3,
            refusal: outside,
        },
        Attack {
            what: "a relative path out of the directory",
            manifest: doc("!File ../outside-key", HCAPTCHA),
            line: 3,
            refusal: outside,
        },
        Attack {
            what: "a path out of the directory that does not exist",
            manifest: doc("!File ../../../nothing-here", HCAPTCHA),
            line: 3,
            refusal: outside,
        },
        Attack {
            what: "a symlink inside the directory pointing outside",
            manifest: doc("!File innocent-key", HCAPTCHA),
            line: 3,
            refusal: outside,
        },
        Attack {
            what: "a foreign js_url",
            manifest: doc(
                "!Env LOGIN_KEY",
                "js_url: https://attacker.example/api.js\napi_url: https://api.hcaptcha.com/siteverify\n",
            ),
            line: 4,
            refusal: "`js_url` is refused: `attacker.example` is not a captcha provider host",
        },
        Attack {
            what: "a foreign api_url",
            manifest: doc("!Env LOGIN_KEY", "api_url: https://attacker.example/x\n"),
            line: 4,
            refusal: "`api_url` is refused: `attacker.example` is not a captcha provider host",
        },
        Attack {
            what: "a look-alike api_url",
            manifest: doc(
                "!Env LOGIN_KEY",
                "api_url: https://www.google.com@attacker.example/recaptcha/api/siteverify\n",
            ),
            line: 4,
            refusal: "`attacker.example` is not a captcha provider host",
        },
        Attack {
            what: "an api_url other parsers read as another host",
            manifest: doc(
                "!Env LOGIN_KEY",
                "api_url: https://www.google.com\\@attacker.example/recaptcha/api/siteverify\n",
            ),
            line: 4,
            refusal: "`api_url` is refused: other URL parsers (authentik's, a browser's) may read another host",
        },
        Attack {
            what: "a js_url with user info",
            manifest: doc(
                "!Env LOGIN_KEY",
                "js_url: https://attacker.example@www.google.com/recaptcha/api.js\n",
            ),
            line: 4,
            refusal: "`js_url` is refused: other URL parsers",
        },
        Attack {
            what: "a plain http api_url",
            manifest: doc(
                "!Env LOGIN_KEY",
                "api_url: http://www.google.com/recaptcha/api/siteverify\n",
            ),
            line: 4,
            refusal: "plain http:// to `www.google.com` would send the key unencrypted",
        },
    ]
}

fn cmd(ws: &Workspace, sim: &SimHandle, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = ws.cmd(sim);
    cmd.env("LOGIN_KEY", "login-secret-value")
        .env_remove("STAGESYNC_SECRETS_DIRS")
        .env_remove("STAGESYNC_ENV_ALLOW")
        .env_remove("STAGESYNC_PROVIDER_HOSTS")
        .args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_plan_and_apply_refuse_every_attack_before_contacting_authentik() {
    let sim = start_sim().await;
    for attack in attacks() {
        let ws = Workspace::new();
        plant_outside_files(&ws);
        ws.write("stage.yaml", &attack.manifest);
        let place = format!("stages/stage.yaml:{}:", attack.line);

        let out = run(cmd(&ws, &sim, &["validate", "stages"])).await;
        let report = stdout(&out);
        assert_eq!(out.status.code(), Some(3), "{}: {report}", attack.what);
        let line = report
            .lines()
            .find(|l| l.contains(attack.refusal))
            .unwrap_or_else(|| panic!("{}: no refusal in\n{report}", attack.what));
        assert!(line.starts_with(&place), "{}: {line}", attack.what);
        assert!(!report.contains("outside-secret") && !report.contains(TOKEN));

        for args in [&["plan", "stages"][..], &["apply", "--yes", "stages"]] {
            sim.reset_counts();
            let out = run(cmd(&ws, &sim, args)).await;
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{} {args:?}: {err}",
                attack.what
            );
            assert!(
                err.contains(attack.refusal),
                "{} {args:?}: {err}",
                attack.what
            );
            assert!(err.contains("nothing was contacted"), "{err}");
            assert_eq!(
                sim.request_counts().total(),
                0,
                "{} {args:?}: authentik was contacted",
                attack.what
            );
        }
    }
    assert!(sim.captcha_stages().is_empty());
}

#[test]
fn the_daemon_refuses_the_same_manifests_and_writes_nothing() {
    let harness = Harness::new();
    let (ws, sim) = (&harness.ws, &harness.sim);
    plant_outside_files(ws);
    let attacks = attacks();
    for (i, attack) in attacks.iter().enumerate() {
        ws.write(
            &format!("attack-{i}.yaml"),
            &attack
                .manifest
                .replace("name: stage", &format!("name: stage-{i}")),
        );
    }
    let mut daemon = harness.start_daemon(
        ws.stages(),
        &["--interval", "1h", "--listen", "off"],
        &[("LOGIN_KEY", "login-secret-value")],
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    while !attacks.iter().all(|a| daemon.log().contains(a.refusal)) {
        assert!(
            std::time::Instant::now() < deadline,
            "not every refusal was logged: {}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The point is that nothing happens: give the pass time to (not) write.
    std::thread::sleep(std::time::Duration::from_secs(1));
    daemon.assert_running();
    let log = daemon.log();
    assert_eq!(sim.request_counts().writes(), 0, "{log}");
    assert!(sim.captcha_stages().is_empty());
    assert!(!log.contains(TOKEN) && !log.contains("outside-secret"));
}

/// A workspace whose manifest reads `!File <secrets>/key` and sends the key to
/// a self-hosted captcha, neither allowed by default.
fn self_hosted(ws: &Workspace) -> std::path::PathBuf {
    let secrets = ws.root.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("key"), "self-hosted-secret\n").unwrap();
    ws.write(
        "stage.yaml",
        &doc(
            &format!("!File {}", secrets.join("key").display()),
            "js_url: https://captcha.internal:8443/api.js\napi_url: http://127.0.0.1:9000/siteverify\n",
        ),
    );
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flags_allow_a_secrets_dir_and_self_hosted_hosts() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let secrets = self_hosted(&ws);
    let secrets = secrets.to_str().unwrap();

    let out = run(cmd(&ws, &sim, &["validate", "stages"])).await;
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert_eq!(
        stdout(&out).matches(": error: ").count(),
        2,
        "{}",
        stdout(&out)
    );
    let mut hosts_only = cmd(&ws, &sim, &["validate", "stages"]);
    hosts_only.env(
        "STAGESYNC_PROVIDER_HOSTS",
        "captcha.internal:8443,http://127.0.0.1:9000",
    );
    let out = run(hosts_only).await;
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("lies outside the manifest directory (the operator can allow a directory with --secrets-dir DIR)"),
        "{}",
        stdout(&out)
    );

    let flags = [
        "--secrets-dir",
        secrets,
        "--allow-provider-host",
        "captcha.internal:8443",
        "--allow-provider-host",
        "http://127.0.0.1:9000",
    ];
    let mut args = vec!["apply", "--yes"];
    args.extend(flags);
    args.push("stages");
    let out = run(cmd(&ws, &sim, &args)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let live = sim.captcha_stages();
    assert_eq!(live.len(), 1);
    assert_eq!(
        sim.private_key_of(live[0].uuid).as_deref(),
        Some("self-hosted-secret")
    );

    // The same through the environment; one flag short is one error.
    let mut with_env = cmd(&ws, &sim, &["validate", "stages"]);
    with_env
        .env(
            "STAGESYNC_SECRETS_DIRS",
            format!("{}:{secrets}", ws.stages().display()),
        )
        .env(
            "STAGESYNC_PROVIDER_HOSTS",
            "captcha.internal:8443,http://127.0.0.1:9000",
        );
    let out = run(with_env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let mut short = cmd(&ws, &sim, &["validate", "--secrets-dir", secrets, "stages"]);
    short.env("STAGESYNC_PROVIDER_HOSTS", "captcha.internal:8443");
    let out = run(short).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("stages/stage.yaml:5:10: error: `api_url` is refused: plain http://"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_allow_narrows_variables_and_never_reopens_stagesyncs_own() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    ws.write("a.yaml", &doc("!Env LOGIN_KEY", HCAPTCHA));
    ws.write(
        "b.yaml",
        &doc("!Env LOGIN_CAPTCHA_KEY", HCAPTCHA).replace("name: stage", "name: b"),
    );
    ws.write(
        "c.yaml",
        &doc("!Env AUTHENTIK_TOKEN", HCAPTCHA).replace("name: stage", "name: c"),
    );
    let mut validate = cmd(
        &ws,
        &sim,
        &[
            "validate",
            "--env-allow",
            "*_CAPTCHA_KEY",
            "--env-allow",
            "AUTHENTIK_*",
            "stages",
        ],
    );
    validate.env("LOGIN_CAPTCHA_KEY", "k");
    let out = run(validate).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(
        report.contains(
            "stages/a.yaml:3:19: error: `!Env LOGIN_KEY` is refused: the operator allows only variables matching *_CAPTCHA_KEY, AUTHENTIK_*"
        ),
        "{report}"
    );
    assert!(!report.contains("b.yaml"), "{report}");
    assert!(
        report.contains("stages/c.yaml:3:19: error: `!Env AUTHENTIK_TOKEN` is refused"),
        "{report}"
    );

    std::fs::remove_file(ws.stages().join("a.yaml")).unwrap();
    std::fs::remove_file(ws.stages().join("c.yaml")).unwrap();
    let mut env_only = cmd(&ws, &sim, &["validate", "stages"]);
    env_only
        .env("STAGESYNC_ENV_ALLOW", "*_CAPTCHA_KEY")
        .env("LOGIN_CAPTCHA_KEY", "k");
    let out = run(env_only).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_operator_setting_is_a_configuration_error() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    for (args, words) in [
        (
            &[
                "validate",
                "--secrets-dir",
                "/nonexistent-dir-4c1d",
                "stages",
            ][..],
            "--secrets-dir /nonexistent-dir-4c1d",
        ),
        (
            &[
                "validate",
                "--allow-provider-host",
                "https://a.example/path",
                "stages",
            ],
            "--allow-provider-host",
        ),
        (&["validate", "--env-allow", "[", "stages"], "--env-allow"),
    ] {
        let out = run(cmd(&ws, &sim, args)).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_examples_pass_with_the_defaults() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("stages");
    let mut validate = cmd(&ws, &sim, &["validate"]);
    validate
        .arg(&examples)
        .env("HCAPTCHA_SECRET_KEY", "h")
        .env("RECAPTCHA_SECRET_KEY", "r")
        .env("TURNSTILE_SECRET_KEY", "t");
    let out = run(validate).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plan_format_shows_the_key_source_and_a_key_moving_to_a_new_host() {
    let sim = start_sim().await;
    sim.seed_captcha(
        stagesync::kinds::captcha::StageFields::with_defaults("stage", "site-key"),
        "old-key",
    );
    let ws = Workspace::new();
    ws.write(
        "stage.yaml",
        &doc(
            "!Env LOGIN_KEY",
            "api_url: https://captcha.internal/siteverify\n",
        ),
    );
    let plan = |format: &'static str| {
        let mut plan = cmd(
            &ws,
            &sim,
            &[
                "plan",
                "--allow-provider-host",
                "captcha.internal",
                "--format",
                format,
                "stages",
            ],
        );
        plan.env("STAGESYNC_STATE_FILE", ws.root.path().join("none.json"));
        run(plan)
    };
    let moved =
        "the key will be sent to a new host: www.recaptcha.net -> captcha.internal (api_url)";

    let out = plan("text").await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}{}", stderr(&out));
    assert!(
        text.contains("private_key: (sensitive) unknown, will be written, from !Env LOGIN_KEY"),
        "{text}"
    );
    assert!(text.contains(&format!("    ! {moved}\n")), "{text}");
    assert!(text.contains(", 1 security warning."), "{text}");
    assert!(!text.contains("login-secret-value"));

    let out = plan("markdown").await;
    let markdown = stdout(&out);
    assert!(
        markdown.contains("#### Security-relevant changes"),
        "{markdown}"
    );
    assert!(
        markdown.contains("private_key: (sensitive) unknown, will be written, from !Env LOGIN_KEY"),
        "{markdown}"
    );
    assert!(
        markdown.contains("> **Security:** the key will be sent to a new host"),
        "{markdown}"
    );

    let out = plan("json").await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(json["summary"]["warnings"], 1);
    assert_eq!(json["warnings"][0]["stage"], "stage");
    assert_eq!(json["warnings"][0]["from"], "www.recaptcha.net");
    assert_eq!(json["warnings"][0]["to"], "captcha.internal");
    assert_eq!(json["warnings"][0]["message"], moved);
    assert_eq!(json["stages"][0]["key_source"], "!Env LOGIN_KEY");
    assert_eq!(sim.request_counts().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_is_named_as_written_so_its_existence_and_link_target_stay_hidden() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    plant_outside_files(&ws);
    ws.write("a.yaml", &doc("!File ../outside-key", HCAPTCHA));
    ws.write(
        "b.yaml",
        &doc("!File innocent-key", HCAPTCHA).replace("stage", "other"),
    );
    let out = run(cmd(&ws, &sim, &["validate", "stages"])).await;
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    // Neither the resolved target of the link nor the existing file's real
    // path is shown: only what the manifest wrote.
    let resolved = ws.root.path().join("outside-key").display().to_string();
    assert!(
        !report.contains(&format!("{resolved} is refused")),
        "{report}"
    );
    assert!(report.contains("innocent-key"), "{report}");
}
