//! `plan --out FILE` then `apply --plan FILE`: the real binary against the
//! simulator. A saved plan is applied exactly, or nothing is written (exit 4).

use std::path::PathBuf;
use std::time::Duration;

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::SimHandle;
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};
use uuid::Uuid;

const STALE: i32 = 4;

/// After a first apply, three managed stages: `login` (its manifest now
/// changes a field: an update), `quiet` (in sync), and `signup` (a new
/// manifest: a create). The plan file is `plan.json` in the workspace.
struct Scenario {
    ws: Workspace,
    sim: SimHandle,
    login: Uuid,
    quiet: Uuid,
    /// The value of `$LOGIN_KEY` the next command sees.
    login_key: String,
}

impl Scenario {
    async fn new() -> Scenario {
        let sim = start_sim().await;
        let ws = Workspace::new();
        ws.write(
            "login.yaml",
            &manifest("login", "site-login", "LOGIN_KEY", ""),
        );
        ws.write(
            "quiet.yaml",
            &manifest("quiet", "site-quiet", "QUIET_KEY", ""),
        );
        let mut s = Scenario {
            ws,
            sim,
            login: Uuid::nil(),
            quiet: Uuid::nil(),
            login_key: "login-secret-value-1".into(),
        };
        let out = s.run(&["apply", "--yes", "stages"]).await;
        assert_eq!(out.status.code(), Some(0), "first apply: {}", stderr(&out));
        let uuid_of = |name: &str| {
            s.sim
                .captcha_stages()
                .into_iter()
                .find(|l| l.fields.name == name)
                .unwrap()
                .uuid
        };
        s.login = uuid_of("login");
        s.quiet = uuid_of("quiet");
        s.ws.write(
            "login.yaml",
            &manifest(
                "login",
                "site-login",
                "LOGIN_KEY",
                "score_min_threshold: 0.7\n",
            ),
        );
        s.ws.write(
            "new/signup.yaml",
            &manifest("signup", "site-signup", "SIGNUP_KEY", ""),
        );
        s
    }

    fn plan_file(&self) -> PathBuf {
        self.ws.root.path().join("plan.json")
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.ws.cmd(&self.sim);
        cmd.env("LOGIN_KEY", &self.login_key)
            .env("QUIET_KEY", "quiet-secret-value-2")
            .env("SIGNUP_KEY", "signup-secret-value-3")
            .args(args);
        cmd
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        run(self.cmd(args)).await
    }

    /// `plan --out plan.json`, which must save a plan with changes.
    async fn save_plan(&self) {
        let out = self.run(&["plan", "--out", "plan.json", "stages"]).await;
        assert_eq!(out.status.code(), Some(2), "plan --out: {}", stderr(&out));
    }

    /// `apply --plan plan.json` with the write counter reset first.
    async fn apply_plan(&self, extra: &[&str]) -> std::process::Output {
        self.sim.reset_counts();
        let mut args = vec!["apply", "--plan", "plan.json"];
        args.extend_from_slice(extra);
        args.push("stages");
        self.run(&args).await
    }
}

fn code_and_output(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_plan_file_converges_and_leaves_an_empty_plan() {
    let s = Scenario::new().await;
    s.save_plan().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.plan_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "plan file mode");
    }

    let out = s.apply_plan(&[]).await;
    let all = code_and_output(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(s.sim.request_counts().writes(), 2, "{all}");
    assert!(
        stdout(&out).contains("Apply: 1 created, 1 updated, 0 failed."),
        "{all}"
    );
    let login = s
        .sim
        .captcha_stages()
        .into_iter()
        .find(|l| l.uuid == s.login)
        .unwrap();
    assert_eq!(login.fields.score_min_threshold, 0.7);

    let out = s.run(&["plan", "stages"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", code_and_output(&out));
}

/// Each way the world can move between `plan --out` and `apply --plan`:
/// refused with exit 4, the reason named, and not one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_no_longer_matches_is_refused_without_a_write() {
    type Edit = fn(&mut Scenario);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "a UI edit of a planned stage",
            |s| {
                s.sim.edit(s.login, |f| {
                    f.js_url = "https://other.example/api.js".into()
                })
            },
            "login (stages/login.yaml:1): live edited",
        ),
        (
            "a changed manifest",
            |s| {
                s.ws.write(
                    "new/signup.yaml",
                    &manifest("signup", "site-signup-2", "SIGNUP_KEY", ""),
                );
            },
            "signup (stages/new/signup.yaml:1): manifest changed",
        ),
        (
            "a rotated key",
            |s| s.login_key = "login-secret-value-rotated".into(),
            "login (stages/login.yaml:1): key changed",
        ),
        (
            "a deleted stage",
            |s| {
                s.sim.delete(s.login);
            },
            "login (stages/login.yaml:1): stage gone",
        ),
        (
            "a name taken since by a captcha stage",
            |s| {
                s.sim
                    .seed_captcha(StageFields::with_defaults("signup", "x"), "k");
            },
            "signup (stages/new/signup.yaml:1): name taken: name \"signup\" is already used by captcha stage",
        ),
        (
            "a name taken since by another kind of stage",
            |s| {
                s.sim
                    .seed_other_stage("signup", "ak-stage-identification-form");
            },
            "signup (stages/new/signup.yaml:1): name taken: name \"signup\" is already used by a",
        ),
        (
            "an edited plan file",
            |s| {
                let text = std::fs::read_to_string(s.plan_file()).unwrap();
                let edited = text.replacen("0.7", "0.1", 1);
                assert_ne!(text, edited);
                std::fs::write(s.plan_file(), edited).unwrap();
            },
            "was edited after it was made",
        ),
    ];
    for (case, edit, expected) in cases {
        let mut s = Scenario::new().await;
        s.save_plan().await;
        edit(&mut s);
        let out = s.apply_plan(&[]).await;
        let all = format!("{case}:\n{}", code_and_output(&out));
        assert_eq!(out.status.code(), Some(STALE), "{all}");
        assert_eq!(s.sim.request_counts().writes(), 0, "{all}");
        assert!(stderr(&out).contains(expected), "{all}");
        assert!(stderr(&out).contains("nothing was written"), "{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_plan_file_is_refused() {
    let s = Scenario::new().await;
    s.save_plan().await;
    // The file's time has whole seconds: 2 s later it is at least 1 s old.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = s.apply_plan(&["--max-age", "1s"]).await;
    let all = code_and_output(&out);
    assert_eq!(out.status.code(), Some(STALE), "{all}");
    assert!(stderr(&out).contains("older than --max-age 1s"), "{all}");
    assert_eq!(s.sim.request_counts().writes(), 0, "{all}");
    // Within the default day it applies.
    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", code_and_output(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_made_against_another_server_is_refused() {
    let s = Scenario::new().await;
    s.save_plan().await;
    let other = start_sim().await;
    let mut cmd = s.cmd(&["apply", "--plan", "plan.json", "stages"]);
    cmd.env("AUTHENTIK_URL", other.url());
    let out = run(cmd).await;
    let all = code_and_output(&out);
    assert_eq!(out.status.code(), Some(STALE), "{all}");
    assert!(
        stderr(&out).contains(&format!(
            "made against {}, not {}",
            s.sim.url(),
            other.url()
        )),
        "{all}"
    );
    assert_eq!(other.request_counts().writes(), 0, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_drifted_after_an_in_sync_plan_is_left_alone_and_reported() {
    let s = Scenario::new().await;
    s.save_plan().await;
    s.sim.edit(s.quiet, |f| f.interactive = true);
    let out = s.apply_plan(&[]).await;
    let all = code_and_output(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        s.sim.request_counts().writes(),
        2,
        "only the planned writes: {all}"
    );
    assert!(
        stderr(&out).contains("note: left alone: quiet (stages/quiet.yaml:1): live edited"),
        "{all}"
    );
    let quiet = s
        .sim
        .captcha_stages()
        .into_iter()
        .find(|l| l.uuid == s.quiet)
        .unwrap();
    assert!(quiet.fields.interactive, "the unreviewed drift stays");
    // The next plan shows it.
    let out = s.run(&["plan", "stages"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", code_and_output(&out));
    assert!(stdout(&out).contains("quiet"), "{}", code_and_output(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_reaches_the_plan_file_whatever_the_reference_and_it_fits_the_schema() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    ws.write("env.yaml", &manifest("env", "site-env", "ENV_KEY", ""));
    ws.write("keys/file-key", "file-secret-value-5\n");
    ws.write(
        "file.yaml",
        "name: file\npublic_key: site-file\nprivate_key: !File keys/file-key\n",
    );
    ws.write(
        "literal.yaml",
        "name: literal\npublic_key: site-literal\nprivate_key: literal-secret-value-6\n",
    );
    let secrets = [
        "env-secret-value-4",
        "file-secret-value-5",
        "literal-secret-value-6",
    ];
    let cmd = |args: &[&str]| {
        let mut cmd = ws.cmd(&sim);
        cmd.env("ENV_KEY", secrets[0]).args(args);
        cmd
    };
    let out = run(cmd(&["plan", "--out", "plan.json", "stages"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", code_and_output(&out));
    let text = std::fs::read_to_string(ws.root.path().join("plan.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/plan-file.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let errors: Vec<String> = jsonschema::validator_for(&schema)
        .unwrap()
        .iter_errors(&file)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "the file the binary wrote fails the schema: {errors:?}"
    );
    for needle in [
        "\"!Env ENV_KEY\"",
        "\"!File keys/file-key\"",
        "\"literal value\"",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let applied = run(cmd(&["apply", "--plan", "plan.json", "stages"])).await;
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}",
        code_and_output(&applied)
    );
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in the plan file");
        for o in [&out, &applied] {
            assert!(
                !code_and_output(o).contains(secret),
                "{secret} in the output"
            );
        }
    }
    // The keys were written from the manifests' references.
    let keys: Vec<_> = sim
        .captcha_stages()
        .iter()
        .map(|l| sim.private_key_of(l.uuid).unwrap())
        .collect();
    for secret in secrets {
        assert!(
            keys.iter().any(|k| k == secret),
            "{secret} written: {keys:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_errors_saves_no_file() {
    let s = Scenario::new().await;
    s.ws.write(
        "ghost.yaml",
        &format!(
            "uuid: {}\n{}",
            Uuid::from_u128(99),
            manifest("ghost", "site-ghost", "LOGIN_KEY", "")
        ),
    );
    let out = s.run(&["plan", "--out", "plan.json", "stages"]).await;
    let all = code_and_output(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(stderr(&out).contains("no plan file written"), "{all}");
    assert!(!s.plan_file().exists());
}
