//! What a captcha stage guards, end to end: the real binary's `plan` and
//! `apply` against the simulator on loopback, with `guards:` in manifests.

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::SimHandle;
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};
use uuid::Uuid;

const LOGIN_FLOW: &str = "default-authentication-flow";
const IDENT: &str = "default-authentication-identification";

/// Runs `stagesync <args>` with `$KEY` set; returns (exit code, stdout, stderr).
async fn stagesync(ws: &Workspace, sim: &SimHandle, args: &[&str]) -> (i32, String, String) {
    let mut cmd = ws.cmd(sim);
    cmd.env("KEY", "guards-test-key").args(args);
    let out = run(cmd).await;
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

fn uuid_of(sim: &SimHandle, name: &str) -> Uuid {
    sim.captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == name)
        .unwrap_or_else(|| panic!("{name} is live"))
        .uuid
}

/// The simulator holding stage `login` bound into the login flow at order
/// 10: `(sim, stage, flow, binding)`.
async fn bound_login() -> (SimHandle, Uuid, Uuid, Uuid) {
    let sim = start_sim().await;
    let stage = sim.seed_captcha(StageFields::with_defaults("login", "site"), "k");
    let flow = sim.seed_flow(LOGIN_FLOW, "Welcome");
    let binding = sim.bind(flow, stage, 10);
    (sim, stage, flow, binding)
}

fn login(guards: &str) -> String {
    manifest("login", "site", "KEY", &format!("guards:\n{guards}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_guard_is_planned_bound_after_its_stage_and_bound_again_when_removed_in_the_ui()
{
    let sim = start_sim().await;
    let flow = sim.seed_flow(LOGIN_FLOW, "Welcome");
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 15\n")),
    );

    let (code, out, err) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains("+ create login (stages/login.yaml:1)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "+ create login in flow {LOGIN_FLOW} (stages/login.yaml:5)"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("+flow: \"{LOGIN_FLOW}\"")), "{out}");
    assert!(out.contains("+order: 15"), "{out}");
    assert!(out.contains("+policy_engine_mode: \"any\""), "{out}");

    // The binding needs the stage's uuid, which only its create gives.
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let stage = uuid_of(&sim, "login");
    let bound = sim.bindings_of_stage(stage);
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!((bound[0].1, bound[0].2), (flow, 15));

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("= in sync login in flow {LOGIN_FLOW}")),
        "{out}"
    );

    // Unbound in the UI: the plan binds it again.
    assert!(sim.unbind(bound[0].0));
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("+ create login in flow {LOGIN_FLOW}")),
        "{out}"
    );
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.bindings_of_stage(stage).len(), 1);
    let counts = sim.request_counts();
    assert_eq!(
        counts.writes(),
        1,
        "one write per changed guard: {counts:?}"
    );
    assert_eq!(counts.get("POST", "/api/v3/flows/bindings/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_change_is_a_patch_of_the_same_binding() {
    let (sim, stage, flow, binding) = bound_login().await;
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!(
            "  - flow: {LOGIN_FLOW}\n    order: 20\n    evaluate_on_plan: true\n    re_evaluate_policies: false\n"
        )),
    );
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("~ update login in flow {LOGIN_FLOW}")),
        "{out}"
    );
    assert!(
        out.contains("-order: 10\n") && out.contains("+order: 20\n"),
        "{out}"
    );
    assert!(out.contains("+evaluate_on_plan: true"), "{out}");
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.bindings_of_stage(stage), vec![(binding, flow, 20)]);
    let counts = sim.request_counts();
    assert_eq!(
        counts.get("PATCH", "/api/v3/flows/bindings/{uuid}/"),
        1,
        "{counts:?}"
    );
    assert_eq!(counts.get("DELETE", "/api/v3/flows/bindings/{uuid}/"), 0);
    assert_eq!(counts.get("POST", "/api/v3/flows/bindings/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_guard_is_flagged_in_every_rendering_and_applied() {
    let (sim, stage, _, _) = bound_login().await;
    let ident = sim.seed_identification_stage(IDENT, Some(stage));
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &manifest("login", "site", "KEY", "guards: []\n"),
    );

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("- delete login in flow {LOGIN_FLOW}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "! a guard is removed: flow {LOGIN_FLOW} runs without this captcha (guards)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "! a guard is removed: identification stage {IDENT} runs without this captcha (guards)"
        )),
        "{out}"
    );
    assert!(out.contains("-captcha_stage: \"login\""), "{out}");
    assert!(out.contains("+captcha_stage: \"(none)\""), "{out}");
    assert!(
        out.contains("2 security warnings") || out.contains("2 warning"),
        "{out}"
    );

    let (_, json, _) = stagesync(&ws, &sim, &["plan", "--format", "json", "stages"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON plan");
    let warnings = json["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 2, "{json}");
    assert!(warnings.iter().all(|w| w["field"] == "guards"), "{json}");
    let kinds: Vec<&serde_json::Value> = json["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| &s["kind"])
        .collect();
    assert_eq!(
        kinds,
        [
            &serde_json::Value::Null,
            &serde_json::json!("guard"),
            &serde_json::json!("guard")
        ],
        "a captcha stage has no kind, its guards follow it: {json}"
    );

    let (_, md, _) = stagesync(&ws, &sim, &["plan", "--format", "markdown", "stages"]).await;
    assert!(
        md.contains(&format!(
            "- captcha \\`login\\`: a guard is removed: flow {LOGIN_FLOW} runs without this captcha"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "#### - delete `login in flow {LOGIN_FLOW}` (`stages/login.yaml:1`)\n\n> **Security:** a guard is removed: flow {LOGIN_FLOW} runs without this captcha (guards)"
        )),
        "{md}"
    );

    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.bindings_of_stage(stage), vec![]);
    assert_eq!(sim.captcha_of_identification_stage(ident), Some(None));
    assert_eq!(
        sim.user_fields_of(ident),
        Some(vec!["email".to_owned(), "username".to_owned()]),
        "the identification stage's user_fields were sent along and kept"
    );
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identification_stage_embedding_another_captcha_shows_the_replacement() {
    let sim = start_sim().await;
    let other = sim.seed_captcha(StageFields::with_defaults("old-captcha", "site"), "k");
    let ident = sim.seed_identification_stage(IDENT, Some(other));
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - identification_stage: {IDENT}\n")),
    );
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("~ update login in identification stage {IDENT}")),
        "{out}"
    );
    assert!(out.contains("-captcha_stage: \"old-captcha\""), "{out}");
    assert!(out.contains("+captcha_stage: \"login\""), "{out}");
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        sim.captcha_of_identification_stage(ident),
        Some(Some(uuid_of(&sim, "login")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_flow_and_a_stage_bound_twice_are_errors_and_nothing_is_touched() {
    let (sim, stage, flow, _) = bound_login().await;
    sim.bind(flow, stage, 30);
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!(
            "  - flow: {LOGIN_FLOW}\n    order: 10\n  - flow: no-such-flow\n    order: 5\n"
        )),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("flow \"no-such-flow\" not found"), "{out}");
    assert!(
        out.contains(&format!(
            "bound 2 times to flow {LOGIN_FLOW} (orders 10, 30): neither binding is touched"
        )),
        "{out}"
    );
    let (_, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(sim.bindings_of_stage(stage).len(), 2, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_guards_key_nothing_about_flows_is_asked_or_touched() {
    let (sim, stage, _, _) = bound_login().await;
    let ws = Workspace::new();
    ws.write("login.yaml", &manifest("login", "site", "KEY", ""));
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let counts = sim.request_counts();
    assert_eq!(
        counts.get("GET", "/api/v3/flows/bindings/"),
        0,
        "{counts:?}"
    );
    assert_eq!(counts.get("GET", "/api/v3/stages/identification/"), 0);
    assert_eq!(sim.bindings_of_stage(stage).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_carries_guard_entries_and_refuses_one_the_world_moved_under() {
    let (sim, stage, flow, binding) = bound_login().await;
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 20\n")),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["plan", "--out", "plan.json", "stages"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    let saved = std::fs::read_to_string(ws.root.path().join("plan.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let entry = saved["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "guard")
        .unwrap_or_else(|| panic!("a guard entry in {saved}"));
    assert_eq!(entry["action"], "update", "{entry}");
    assert_eq!(entry["fields"]["flow"], LOGIN_FLOW, "{entry}");
    assert_eq!(entry["fields"]["order"], 20, "{entry}");
    let schema = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/plan-file.schema.json"),
    )
    .unwrap();
    let schema = jsonschema::validator_for(&serde_json::from_str(&schema).unwrap()).unwrap();
    let problems: Vec<String> = schema.iter_errors(&saved).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}");

    // The binding moved in the UI after the plan was made: refused.
    sim.set_binding_order(binding, 30);
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--plan", "plan.json"]).await;
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains(&format!("login in flow {LOGIN_FLOW}"))
            && format!("{out}{err}").contains("live edited"),
        "{out}\n{err}"
    );
    assert_eq!(sim.bindings_of_stage(stage), vec![(binding, flow, 30)]);

    // Planned again as it is: applied as shown.
    sim.set_binding_order(binding, 10);
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--plan", "plan.json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.bindings_of_stage(stage), vec![(binding, flow, 20)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_guards_from_live_state_and_applying_it_back_changes_nothing() {
    let sim = start_sim().await;
    let login = sim.seed_captcha(StageFields::with_defaults("login", "site"), "k");
    let plain = sim.seed_captcha(StageFields::with_defaults("unbound", "site"), "k");
    let flow = sim.seed_flow(LOGIN_FLOW, "Welcome");
    let enroll = sim.seed_flow("default-enrollment-flow", "Sign up");
    sim.bind(flow, login, 15);
    let binding = sim.bind(enroll, login, 5);
    let ident = sim.seed_identification_stage(IDENT, Some(login));
    let ws = Workspace::new();
    // Options off authentik's defaults, set in the UI.
    let http = reqwest::Client::new();
    let r = http
        .patch(format!("{}/api/v3/flows/bindings/{binding}/", sim.url()))
        .bearer_auth(support::cli::TOKEN)
        .json(&serde_json::json!({"policy_engine_mode": "all", "evaluate_on_plan": true, "re_evaluate_policies": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let mut cmd = ws.cmd(&sim);
    cmd.args(["export", "--dir"]).arg(ws.stages());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(ws.stages().join("login.yaml")).unwrap();
    assert!(
        text.contains(&format!(
            "guards:\n  - flow: \"default-enrollment-flow\"\n    order: 5\n    evaluate_on_plan: true\n    re_evaluate_policies: false\n    policy_engine_mode: \"all\"\n  - flow: \"{LOGIN_FLOW}\"\n    order: 15\n  - identification_stage: \"{IDENT}\"\n"
        )),
        "{text}"
    );
    let unbound = std::fs::read_to_string(ws.stages().join("unbound.yaml")).unwrap();
    assert!(!unbound.contains("guards"), "{unbound}");

    let mut cmd = ws.cmd(&sim);
    cmd.env("CAPTCHA_LOGIN_PRIVATE_KEY", "k")
        .env("CAPTCHA_UNBOUND_PRIVATE_KEY", "k")
        .args(["plan", "--ignore-unknown-keys", "stages"]);
    let out = run(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!("= in sync login in flow {LOGIN_FLOW}"))
            && text.contains(&format!("= in sync login in identification stage {IDENT}")),
        "{text}"
    );
    let _ = (plain, ident);
}

/// The call bound of the guards benchmark, at a size a test affords: 250
/// stages each guarding its own flow, 10% of the guards drifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_guards_cost_one_write_each_beyond_one_call_per_page_of_each_list() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let n = 250;
    let mut text = String::new();
    for i in 0..n {
        sim.seed_flow(&format!("flow-{i:05}"), "Flow");
        text.push_str(&format!(
            "---\nname: stage-{i:05}\npublic_key: site-{i}\nprivate_key: !Env KEY\nguards:\n  - flow: flow-{i:05}\n    order: 10\n"
        ));
    }
    ws.write("guarded.yaml", &text);
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let live = sim.captcha_stages();
    for (k, stage) in live.iter().step_by(10).take(n / 10).enumerate() {
        let (binding, _, _) = sim.bindings_of_stage(stage.uuid)[0];
        if k % 2 == 0 {
            sim.unbind(binding);
        } else {
            sim.set_binding_order(binding, 99);
        }
    }
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let counts = sim.request_counts();
    // The version, 3 pages each of captcha stages, bindings and flows, one
    // of identification stages, and 25 writes.
    let minimal = 1 + 3 * 3 + 1 + 25;
    // Who changed them is asked apart: the token's user once, and one event
    // query per drifted binding (25: a changed one by its pk, an unbound one
    // by the pk stagesync last kept, whose delete the event log names).
    let attribution =
        counts.get("GET", "/api/v3/core/users/me/") + counts.get("GET", "/api/v3/events/events/");
    assert_eq!(attribution, 1 + 25, "{counts:?}");
    assert!(counts.total() - attribution <= minimal + 3, "{counts:?}");
    assert_eq!(counts.writes(), 25, "{counts:?}");
    assert_eq!(
        counts.get("GET", "/api/v3/flows/instances/{slug}/"),
        0,
        "{counts:?}"
    );
    for stage in &live {
        assert_eq!(sim.bindings_of_stage(stage.uuid).len(), 1);
    }
}

/// A captcha replaced by another in the login form and pruned in one plan:
/// the old stage's only user is the identification stage a guard of the new
/// one takes over, so the prune is not blocked; the embedding is written
/// first, then the old stage deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_replaced_in_its_identification_stage_is_pruned_in_the_same_plan() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    ws.write("old.yaml", &manifest("old-captcha", "site", "KEY", ""));
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let old = uuid_of(&sim, "old-captcha");
    let ident = sim.seed_identification_stage(IDENT, Some(old));

    std::fs::remove_file(ws.stages().join("old.yaml")).unwrap();
    ws.write(
        "login.yaml",
        &login(&format!("  - identification_stage: {IDENT}\n")),
    );
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("- delete old-captcha"), "{out}");
    assert!(out.contains("-captcha_stage: \"old-captcha\""), "{out}");
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        sim.captcha_of_identification_stage(ident),
        Some(Some(uuid_of(&sim, "login")))
    );
    assert!(sim.captcha_stages().iter().all(|s| s.uuid != old));

    // Without the replacement the same prune is blocked, as before.
    let sim = start_sim().await;
    let ws = Workspace::new();
    ws.write("old.yaml", &manifest("old-captcha", "site", "KEY", ""));
    let (code, ..) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0);
    let old = uuid_of(&sim, "old-captcha");
    sim.seed_identification_stage(IDENT, Some(old));
    std::fs::remove_file(ws.stages().join("old.yaml")).unwrap();
    ws.write(
        "login.yaml",
        &manifest("login", "site", "KEY", "guards: []\n"),
    );
    let (_, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert!(out.contains("! blocked old-captcha"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_removed_between_plan_and_apply_fails_in_authentiks_words_and_the_rest_applies() {
    let (sim, stage, flow, binding) = bound_login().await;
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 20\n")),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    // Gone before the apply sends its PATCH: injected as a 404
    // on the PATCH, as authentik answers for a binding deleted meanwhile.
    sim.inject(
        stagesync::simulator::Fault::new(stagesync::simulator::FaultKind::Status {
            status: 404,
            retry_after: None,
            body: r#"{"detail": "No FlowStageBinding matches the given query."}"#.into(),
        })
        .on("PATCH", "/api/v3/flows/bindings/"),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains(&format!("login in flow {LOGIN_FLOW}"))
            && text.contains("No FlowStageBinding matches the given query.")
            && !text.contains("captcha stage"),
        "{text}"
    );
    assert_eq!(sim.bindings_of_stage(stage), vec![(binding, flow, 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_of_a_stage_whose_create_failed_is_not_sent_and_says_why() {
    let sim = start_sim().await;
    sim.seed_flow(LOGIN_FLOW, "Welcome");
    sim.inject(stagesync::simulator::Fault::status(400).on("POST", "/api/v3/stages/captcha/"));
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 15\n")),
    );
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("it guards with captcha stage login, whose create failed"),
        "{text}"
    );
    assert_eq!(
        sim.request_counts().get("POST", "/api/v3/flows/bindings/"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_binds_a_new_stage_after_creating_it() {
    let sim = start_sim().await;
    let flow = sim.seed_flow(LOGIN_FLOW, "Welcome");
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 15\n")),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["plan", "--out", "plan.json", "stages"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--plan", "plan.json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let stage = uuid_of(&sim, "login");
    let bound = sim.bindings_of_stage(stage);
    assert_eq!(bound.len(), 1);
    assert_eq!((bound[0].1, bound[0].2), (flow, 15));
}

/// A stage's manifest deleted in a pull request: `--prune` removes its own
/// guards first (the binding and the embedding stagesync made), flagged as
/// guards removed in every rendering, then deletes the stage; a saved plan
/// does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_manifest_is_deleted_is_pruned_together_with_its_own_guards() {
    let sim = start_sim().await;
    let flow = sim.seed_flow(LOGIN_FLOW, "Welcome");
    let ident = sim.seed_identification_stage(IDENT, None);
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!(
            "  - flow: {LOGIN_FLOW}\n    order: 15\n  - identification_stage: {IDENT}\n"
        )),
    );
    ws.write("keep.yaml", &manifest("keep", "site", "KEY", ""));
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let login = uuid_of(&sim, "login");
    let binding = sim.bindings_of_stage(login)[0].0;
    assert_eq!(
        sim.captcha_of_identification_stage(ident),
        Some(Some(login))
    );

    std::fs::remove_file(ws.stages().join("login.yaml")).unwrap();
    let (code, out, err) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    for line in [
        format!("- delete login ({login})"),
        format!("first unbound from flow {LOGIN_FLOW}"),
        format!("first removed from identification stage {IDENT} (which then embeds no captcha)"),
        format!("! a guard is removed: flow {LOGIN_FLOW} runs without this captcha (guards)"),
        format!(
            "! a guard is removed: identification stage {IDENT} runs without this captcha (guards)"
        ),
    ] {
        assert!(out.contains(&line), "{line:?} in\n{out}");
    }
    let (_, out, _) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--format", "json", "stages"],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["prune"][0]["decision"], "delete", "{json}");
    assert_eq!(
        json["prune"][0]["guards"],
        serde_json::json!([
            {"name": format!("login in flow {LOGIN_FLOW}"), "uuid": binding, "action": "unbind"},
            {"name": format!("login in identification stage {IDENT}"), "uuid": ident, "action": "update"},
        ]),
        "{json}"
    );
    assert_eq!(json["summary"]["warnings"], 2, "{json}");
    let (_, out, _) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--format", "markdown", "stages"],
    )
    .await;
    assert!(
        out.contains(&format!(
            "  - **Security:** a guard is removed: flow {LOGIN_FLOW} runs without this captcha (guards)"
        )),
        "{out}"
    );

    let (code, out, err) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--out", "plan.json", "stages"],
    )
    .await;
    assert_eq!(code, 2, "{out}\n{err}");
    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--plan", "plan.json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let counts = sim.request_counts();
    assert_eq!(
        counts.get("DELETE", "/api/v3/flows/bindings/{uuid}/"),
        1,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("PATCH", "/api/v3/stages/identification/{uuid}/"),
        1,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("DELETE", "/api/v3/stages/captcha/{uuid}/"),
        1,
        "{counts:?}"
    );
    assert!(sim.captcha_stages().iter().all(|s| s.uuid != login));
    assert_eq!(sim.captcha_of_identification_stage(ident), Some(None));
    assert!(sim.bindings_of_stage(login).is_empty());
    let _ = flow;

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 0, "{out}");
}

/// Only the guards stagesync made or kept go with a pruned stage: a binding
/// made in the UI still blocks the prune, and then the stage's own binding
/// stays too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_made_in_the_ui_blocks_the_prune_and_keeps_the_stages_own_guards() {
    let sim = start_sim().await;
    sim.seed_flow(LOGIN_FLOW, "Welcome");
    let enroll = sim.seed_flow("default-enrollment-flow", "Sign up");
    let ws = Workspace::new();
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 15\n")),
    );
    ws.write("keep.yaml", &manifest("keep", "site", "KEY", ""));
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let login = uuid_of(&sim, "login");
    // Bound elsewhere in the UI, with the manifest no longer listing guards:
    // not stagesync's to remove.
    ws.write("login.yaml", &manifest("login", "site", "KEY", ""));
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    sim.bind(enroll, login, 30);
    let before = sim.bindings_of_stage(login);
    assert_eq!(before.len(), 2);

    std::fs::remove_file(ws.stages().join("login.yaml")).unwrap();
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("! blocked login"), "{out}");
    assert!(
        out.contains("bound to flow `default-enrollment-flow`"),
        "{out}"
    );
    assert!(!out.contains("first unbound"), "{out}");
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(sim.bindings_of_stage(login), before);
    assert!(sim.captcha_stages().iter().any(|s| s.uuid == login));
}

/// A guard that existed before stagesync and that a manifest declares is
/// kept, so it goes with its stage too; one its manifest stopped listing
/// (removed) and that someone made again in the UI is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_guard_found_in_sync_goes_with_its_stage_and_one_removed_then_remade_does_not() {
    let (sim, stage, _flow, binding) = bound_login().await;
    let ident = sim.seed_identification_stage(IDENT, Some(stage));
    let ws = Workspace::new();
    ws.write("keep.yaml", &manifest("keep", "site", "KEY", ""));
    ws.write(
        "login.yaml",
        &login(&format!(
            "  - flow: {LOGIN_FLOW}\n    order: 10\n  - identification_stage: {IDENT}\n"
        )),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    // The list drops the identification stage: removed; then the UI puts
    // the captcha back into it.
    ws.write(
        "login.yaml",
        &login(&format!("  - flow: {LOGIN_FLOW}\n    order: 10\n")),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(sim.captcha_of_identification_stage(ident), Some(None));
    sim.embed(ident, Some(stage));

    std::fs::remove_file(ws.stages().join("login.yaml")).unwrap();
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("! blocked login"), "{out}");
    assert!(
        out.contains(&format!("captcha of identification stage `{IDENT}`")),
        "{out}"
    );
    assert!(!out.contains("bound to flow"), "{out}");

    // Given back to the manifests' care: the prune takes both.
    sim.embed(ident, None);
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(sim.captcha_stages().iter().all(|s| s.uuid != stage));
    assert!(
        sim.bindings_of_stage(stage).is_empty(),
        "binding {binding} removed"
    );
}

/// The captcha swap of the login form, when the old stage's manifest itself
/// declared the identification stage: the new stage's guard takes it over,
/// so the prune of the old one leaves it embedding the new captcha.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_captcha_keeps_the_login_form_its_old_stage_declared() {
    let sim = start_sim().await;
    let ident = sim.seed_identification_stage(IDENT, None);
    let ws = Workspace::new();
    ws.write(
        "old.yaml",
        &manifest(
            "old-captcha",
            "site",
            "KEY",
            &format!("guards:\n  - identification_stage: {IDENT}\n"),
        ),
    );
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let old = uuid_of(&sim, "old-captcha");
    assert_eq!(sim.captcha_of_identification_stage(ident), Some(Some(old)));

    std::fs::remove_file(ws.stages().join("old.yaml")).unwrap();
    ws.write(
        "login.yaml",
        &login(&format!("  - identification_stage: {IDENT}\n")),
    );
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("- delete old-captcha"), "{out}");
    assert!(!out.contains("first removed from"), "{out}");
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(sim.captcha_stages().iter().all(|s| s.uuid != old));
    assert_eq!(
        sim.captcha_of_identification_stage(ident),
        Some(Some(uuid_of(&sim, "login")))
    );
}
