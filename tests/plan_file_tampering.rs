//! A plan file is a CI artifact: anyone who can write it can recompute its
//! digest. `apply --plan` therefore plans again and requires every entry to be
//! what the manifests plan now. Each test here edits a file `plan --out`
//! wrote, as an attacker would (the digest recomputed), and runs the real
//! binary against the simulator: exit 4, nothing written, the stage the file
//! aimed at untouched. Also here: saved plans that carry deletes, and plan
//! files written before kinds existed.

use serde_json::Value;
use sha2::{Digest, Sha256};
use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::SimHandle;
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};
use uuid::Uuid;

const REFUSED: i32 = 4;

/// `login` and `quiet` applied; `login`'s manifest then changes a field (an
/// update), and `clicked` is a stage made in the UI that no manifest names.
struct Scenario {
    ws: Workspace,
    sim: SimHandle,
    login: Uuid,
    clicked: Uuid,
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
        let s = Scenario {
            ws,
            sim,
            login: Uuid::nil(),
            clicked: Uuid::nil(),
        };
        let out = s.run(&["apply", "--yes", "stages"]).await;
        assert_eq!(out.status.code(), Some(0), "first apply: {}", stderr(&out));
        let clicked = s.sim.seed_captcha(
            StageFields::with_defaults("clicked", "site-clicked"),
            "clicked-key",
        );
        s.ws.write(
            "login.yaml",
            &manifest(
                "login",
                "site-login",
                "LOGIN_KEY",
                "score_min_threshold: 0.7\n",
            ),
        );
        Scenario {
            login: s.uuid_of("login"),
            clicked,
            ..s
        }
    }

    fn uuid_of(&self, name: &str) -> Uuid {
        self.sim
            .captcha_stages()
            .into_iter()
            .find(|l| l.fields.name == name)
            .unwrap_or_else(|| panic!("{name} is live"))
            .uuid
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.ws.cmd(&self.sim);
        cmd.env("LOGIN_KEY", "login-secret-value")
            .env("QUIET_KEY", "quiet-secret-value")
            .env("SIGNUP_KEY", "signup-secret-value")
            .args(args);
        cmd
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        run(self.cmd(args)).await
    }

    fn plan_file(&self) -> std::path::PathBuf {
        self.ws.root.path().join("plan.json")
    }

    /// `plan --out plan.json` (with `extra` flags), read back as JSON.
    async fn saved(&self, extra: &[&str]) -> Value {
        let mut args = vec!["plan", "--out", "plan.json"];
        args.extend_from_slice(extra);
        args.push("stages");
        let out = self.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "plan --out: {}", stderr(&out));
        serde_json::from_str(&std::fs::read_to_string(self.plan_file()).unwrap()).unwrap()
    }

    /// Writes `doc` as the plan file, its digest recomputed as a forger would.
    fn forge(&self, mut doc: Value) {
        reseal(&mut doc);
        std::fs::write(
            self.plan_file(),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
    }

    /// `apply --plan plan.json` (with `extra` flags), write counter reset first.
    async fn apply_plan(&self, extra: &[&str]) -> std::process::Output {
        self.sim.reset_counts();
        let mut args = vec!["apply", "--plan", "plan.json"];
        args.extend_from_slice(extra);
        args.push("stages");
        self.run(&args).await
    }

    /// The entry of `doc` named `name`.
    fn entry<'a>(doc: &'a mut Value, name: &str) -> &'a mut Value {
        doc["entries"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("an entry for {name}"))
    }
}

/// Canonical JSON, as the file's digest covers it: keys sorted, no whitespace.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn sha256(value: &Value) -> String {
    let mut text = String::new();
    canonical(value, &mut text);
    let hash = Sha256::digest(text.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Recomputes the file's digest: anyone can.
fn reseal(doc: &mut Value) {
    let mut rest = doc.clone();
    rest.as_object_mut().unwrap().remove("digest");
    doc["digest"] = Value::String(sha256(&rest));
}

/// The live digest of a stage with authentik's defaults, as `plan --out`
/// computes it (the format is documented: uuid and every compared field).
fn live_digest(uuid: Uuid, name: &str, public_key: &str) -> String {
    sha256(&serde_json::json!({
        "uuid": uuid,
        "fields": {
            "name": name,
            "public_key": public_key,
            "js_url": stagesync::kinds::captcha::DEFAULT_JS_URL,
            "api_url": stagesync::kinds::captcha::DEFAULT_API_URL,
            "interactive": false,
            "score_min_threshold": 0.5,
            "score_max_threshold": 1.0,
            "error_on_invalid_score": true,
        }
    }))
}

fn all(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_turned_into_an_update_of_an_unmanaged_stage_writes_nothing() {
    let s = Scenario::new().await;
    s.ws.write(
        "signup.yaml",
        &manifest("signup", "site-signup", "SIGNUP_KEY", ""),
    );
    let mut doc = s.saved(&[]).await;
    let signup = Scenario::entry(&mut doc, "signup");
    assert_eq!(signup["action"], "create");
    // The attack: the create of a new stage turned into an update of a stage
    // stagesync does not manage, which would rename it to `signup`, give it
    // signup's key, and adopt it (so that a later prune could delete it).
    signup["action"] = Value::String("update".into());
    signup["uuid"] = Value::String(s.clicked.to_string());
    signup["digests"]["live"] = Value::String(live_digest(s.clicked, "clicked", "site-clicked"));
    s.forge(doc);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert_eq!(s.sim.request_counts().writes(), 0, "{}", all(&out));
    assert!(
        stderr(&out).contains(&format!(
            "signup (stages/signup.yaml:1): the file writes captcha stage {}, but its manifest means a new stage now",
            s.clicked
        )),
        "{}",
        all(&out)
    );
    assert_eq!(s.uuid_of("clicked"), s.clicked, "still named clicked");
    assert_eq!(
        s.sim.private_key_of(s.clicked).as_deref(),
        Some("clicked-key")
    );
    let state = std::fs::read_to_string(s.ws.state_file()).unwrap_or_default();
    assert!(
        !state.contains(&s.clicked.to_string()),
        "not adopted: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_retargeted_at_an_unmanaged_stage_writes_nothing() {
    let s = Scenario::new().await;
    let mut doc = s.saved(&[]).await;
    let login = Scenario::entry(&mut doc, "login");
    assert_eq!(login["action"], "update");
    // The attack: the update's uuid and live digest set to those of a stage
    // stagesync does not manage, so that its name and key are overwritten.
    login["uuid"] = Value::String(s.clicked.to_string());
    login["digests"]["live"] = Value::String(live_digest(s.clicked, "clicked", "site-clicked"));
    s.forge(doc);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert_eq!(s.sim.request_counts().writes(), 0, "{}", all(&out));
    assert!(
        stderr(&out).contains(&format!(
            "login (stages/login.yaml:1): the file writes captcha stage {}, but its manifest means captcha stage {} now",
            s.clicked, s.login
        )),
        "{}",
        all(&out)
    );
    assert!(
        stderr(&out).contains(
            "not what the manifests plan (a plan file edited by hand?); nothing was written"
        ),
        "{}",
        all(&out)
    );
    assert_eq!(s.uuid_of("clicked"), s.clicked, "still named clicked");
    assert_eq!(
        s.sim.private_key_of(s.clicked).as_deref(),
        Some("clicked-key")
    );
    // Nor is it adopted: a later prune could not delete it.
    let state = std::fs::read_to_string(s.ws.state_file()).unwrap_or_default();
    assert!(!state.contains(&s.clicked.to_string()), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_saved_as_in_sync_may_not_hide_a_change() {
    let s = Scenario::new().await;
    let mut doc = s.saved(&[]).await;
    let login = Scenario::entry(&mut doc, "login");
    login["action"] = Value::String("in_sync".into());
    login["fields"] = Value::Null;
    login["changes"] = Value::Array(Vec::new());
    login["private_key"] = Value::String("unchanged".into());
    s.forge(doc);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert!(
        stderr(&out).contains(
            "login (stages/login.yaml:1): saved as in sync, but its manifest asks for a change (score_min_threshold)"
        ),
        "{}",
        all(&out)
    );
    assert_eq!(s.sim.request_counts().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_an_unmanaged_stage_is_refused() {
    let s = Scenario::new().await;
    let mut doc = s.saved(&[]).await;
    let id = doc["entries"].as_array().unwrap().len();
    doc["entries"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": id,
            "kind": "captcha_stage",
            "action": "delete",
            "name": "clicked",
            "origin": null,
            "uuid": s.clicked,
            "pinned_uuid": null,
            "after": null,
            "key_source": null,
            "private_key": null,
            "changes": [],
            "fields": null,
            "digests": {
                "live": live_digest(s.clicked, "clicked", "site-clicked"),
                "desired": null,
                "key": null
            }
        }));
    s.forge(doc);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert!(
        stderr(&out).contains(
            "clicked: not a delete now: it is not a managed stage whose manifest is gone"
        ),
        "{}",
        all(&out)
    );
    assert_eq!(s.sim.request_counts().writes(), 0);
    assert_eq!(s.uuid_of("clicked"), s.clicked, "not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_no_longer_waits_for_the_rename_freeing_its_name_is_refused() {
    let s = Scenario::new().await;
    // `login` is renamed (pinned) to `login-old`, and a new `login` takes
    // its name: the create waits for the rename.
    s.ws.write(
        "login.yaml",
        &manifest(
            "login-old",
            "site-login",
            "LOGIN_KEY",
            &format!("uuid: {}\n", s.login),
        ),
    );
    s.ws.write(
        "signup.yaml",
        &manifest("login", "site-new", "SIGNUP_KEY", ""),
    );
    let mut doc = s.saved(&[]).await;
    let create = Scenario::entry(&mut doc, "login");
    assert_eq!(create["action"], "create");
    assert!(create["after"].is_u64(), "{create}");
    create["after"] = Value::Null;
    s.forge(doc);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert!(
        stderr(&out)
            .contains("the file makes it wait for nothing, the manifests for \"login-old\""),
        "{}",
        all(&out)
    );
    assert_eq!(s.sim.request_counts().writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_prune_is_applied_and_a_stage_bound_since_is_not_deleted() {
    let s = Scenario::new().await;
    let quiet = s.uuid_of("quiet");
    std::fs::remove_file(s.ws.stages().join("quiet.yaml")).unwrap();

    // The file carries the delete; applying it deletes the stage.
    let doc = s.saved(&["--prune"]).await;
    let delete = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "delete")
        .expect("a delete entry");
    assert_eq!(delete["uuid"], quiet.to_string());
    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("deleted quiet ({quiet})")),
        "{}",
        all(&out)
    );
    assert!(s.sim.captcha_stages().iter().all(|l| l.uuid != quiet));
    let out = s.run(&["plan", "--prune", "stages"]).await;
    assert_eq!(out.status.code(), Some(0), "converged: {}", all(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_bound_between_plan_and_apply_is_not_deleted() {
    let s = Scenario::new().await;
    let quiet = s.uuid_of("quiet");
    std::fs::remove_file(s.ws.stages().join("quiet.yaml")).unwrap();
    s.saved(&["--prune"]).await;
    // Someone binds the stage to a login flow after the review.
    s.sim
        .seed_flow_binding(quiet, "default-authentication-flow", "Welcome", 10);

    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(REFUSED), "{}", all(&out));
    assert!(
        stderr(&out).contains(
            "quiet: not a delete now: in use now: bound to flow `default-authentication-flow`"
        ),
        "{}",
        all(&out)
    );
    assert_eq!(
        s.sim.request_counts().writes(),
        0,
        "nothing written, nothing deleted"
    );
    assert!(s.sim.captcha_stages().iter().any(|l| l.uuid == quiet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_from_before_kinds_is_applied() {
    let s = Scenario::new().await;
    let mut doc = s.saved(&[]).await;
    // What an earlier stagesync wrote: no `kind` in the entries.
    for entry in doc["entries"].as_array_mut().unwrap() {
        entry.as_object_mut().unwrap().remove("kind");
    }
    s.forge(doc);
    let out = s.apply_plan(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert_eq!(s.sim.request_counts().writes(), 1, "the update of login");
}
