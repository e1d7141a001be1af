//! `--prune` end to end: the real binary against the simulator on loopback.
//! Stages are created by `apply` (so they are in the state file's inventory),
//! then their manifests are removed.

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{Fault, SimHandle};
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};

/// Writes `stages/<name>.yaml` for each name (keys from `$KEY`).
fn write_manifests(ws: &Workspace, names: &[&str]) {
    for name in names {
        ws.write(&format!("{name}.yaml"), &manifest(name, "site", "KEY", ""));
    }
}

fn remove_manifest(ws: &Workspace, name: &str) {
    std::fs::remove_file(ws.stages().join(format!("{name}.yaml"))).expect("manifest removed");
}

/// Runs `stagesync <args>` with `$KEY` set; returns (exit code, stdout, stderr).
async fn stagesync(ws: &Workspace, sim: &SimHandle, args: &[&str]) -> (i32, String, String) {
    let mut cmd = ws.cmd(sim);
    cmd.env("KEY", "prune-test-key").args(args);
    let out = run(cmd).await;
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

fn live_names(sim: &SimHandle) -> Vec<String> {
    let mut names: Vec<String> = sim
        .captcha_stages()
        .into_iter()
        .map(|s| s.fields.name)
        .collect();
    names.sort();
    names
}

fn uuid_of(sim: &SimHandle, name: &str) -> uuid::Uuid {
    sim.captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == name)
        .unwrap_or_else(|| panic!("{name} is live"))
        .uuid
}

/// A workspace whose `names` were created by `apply`.
async fn applied(names: &[&str]) -> (Workspace, SimHandle) {
    let sim = start_sim().await;
    let ws = Workspace::new();
    write_manifests(&ws, names);
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    (ws, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_manifest_is_pruned_with_prune_and_only_then() {
    let (ws, sim) = applied(&["keep", "old"]).await;
    let old = uuid_of(&sim, "old");
    remove_manifest(&ws, "old");

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "stages"]).await;
    assert_eq!(code, 0, "not pruning is no change: {out}");
    assert!(
        out.contains(&format!("= not pruned old ({old})"))
            && out.contains("no longer in the manifests (not pruned; --prune would delete it)"),
        "{out}"
    );
    assert!(out.contains("1 not pruned."), "{out}");
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        live_names(&sim),
        ["keep", "old"],
        "without --prune nothing is deleted"
    );

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 2, "a delete is a pending change: {out}");
    assert!(out.contains(&format!("- delete old ({old})")), "{out}");
    assert!(
        out.contains("Plan: 0 to create, 0 to update, 1 in sync, 0 unmanaged, 1 to delete."),
        "{out}"
    );
    let (code, out, _) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--format", "json", "stages"],
    )
    .await;
    assert_eq!(code, 2);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON plan");
    assert_eq!(json["summary"]["delete"], 1);
    assert_eq!(json["prune"][0]["decision"], "delete");
    assert_eq!(json["prune"][0]["uuid"], old.to_string());
    let (_, out, _) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--format", "markdown", "stages"],
    )
    .await;
    assert!(out.contains("#### - delete `old`"), "{out}");

    sim.reset_counts();
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("deleted old ({old})")), "{out}");
    assert!(
        out.contains("Apply: 0 created, 0 updated, 1 deleted, 0 failed."),
        "{out}"
    );
    assert_eq!(live_names(&sim), ["keep"]);
    let counts = sim.request_counts();
    assert_eq!(
        counts.get("GET", "/api/v3/stages/captcha/{uuid}/used_by/"),
        2,
        "used_by is asked when planning and again right before the delete"
    );
    // Deleted stages leave the inventory; the next plan has nothing to prune.
    let state = std::fs::read_to_string(ws.state_file()).unwrap();
    assert!(!state.contains(&old.to_string()), "{state}");
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_and_an_embedded_stage_are_blocked_and_named() {
    let (ws, sim) = applied(&["keep", "bound", "embedded"]).await;
    let flow = sim.seed_flow_binding(
        uuid_of(&sim, "bound"),
        "default-authentication-flow",
        "Welcome",
        10,
    );
    let ident = sim.seed_identification_stage("login-ident", Some(uuid_of(&sim, "embedded")));
    remove_manifest(&ws, "bound");
    remove_manifest(&ws, "embedded");

    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 1, "a blocked prune is not converged: {out}");
    assert!(out.contains("! blocked bound"), "{out}");
    assert!(
        out.contains("bound to flow `default-authentication-flow`"),
        "{out}"
    );
    assert!(out.contains("! blocked embedded"), "{out}");
    assert!(
        out.contains("captcha of identification stage `login-ident`"),
        "{out}"
    );
    assert!(out.contains("2 blocked."), "{out}");

    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(live_names(&sim), ["bound", "embedded", "keep"]);
    assert_eq!(
        sim.bindings_of_flow(flow).len(),
        1,
        "the login flow keeps its captcha"
    );
    assert_eq!(
        sim.captcha_of_identification_stage(ident),
        Some(Some(uuid_of(&sim, "embedded")))
    );
    assert_eq!(
        sim.request_counts()
            .get("DELETE", "/api/v3/stages/captcha/{uuid}/"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_bound_after_the_plan_is_not_deleted() {
    // The plan said delete; by the time apply deletes, the stage is in use.
    let (ws, sim) = applied(&["keep", "old"]).await;
    remove_manifest(&ws, "old");
    let old = uuid_of(&sim, "old");
    // used_by is asked twice: once by the plan, once right before the delete.
    // Bind the stage after the first answer.
    let (code, out, _) = stagesync(&ws, &sim, &["plan", "--prune", "stages"]).await;
    assert_eq!(code, 2, "{out}");
    sim.seed_identification_stage("late-ident", Some(old));
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("! blocked old"), "{out}");
    assert_eq!(live_names(&sim), ["keep", "old"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_stage_is_never_deleted() {
    let (ws, sim) = applied(&["keep"]).await;
    sim.seed_captcha(StageFields::with_defaults("clicked-in-ui", "ui"), "k");
    let (code, out, _) = stagesync(
        &ws,
        &sim,
        &[
            "apply",
            "--prune",
            "--max-deletes",
            "100",
            "--yes",
            "stages",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Unmanaged captcha stages (no manifest names them; never touched):"),
        "{out}"
    );
    assert!(!out.contains("delete"), "{out}");
    assert_eq!(live_names(&sim), ["clicked-in-ui", "keep"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_matched_by_name_is_adopted_and_then_prunable() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    sim.seed_captcha(StageFields::with_defaults("existing", "site"), "k");
    sim.seed_captcha(StageFields::with_defaults("other", "site"), "k");
    write_manifests(&ws, &["existing", "other"]);
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    let state = std::fs::read_to_string(ws.state_file()).unwrap();
    assert!(state.contains(r#""managed_as": "adopted""#), "{state}");
    remove_manifest(&ws, "existing");
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(live_names(&sim), ["other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_guard_holds_at_the_boundary() {
    let names = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"];
    let (ws, sim) = applied(&names).await;
    // 8 managed: at most 2 deletes (25%). Three are one too many.
    for name in ["s1", "s2", "s3"] {
        remove_manifest(&ws, name);
    }
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("this run would delete 3 stages, more than the 2 (25% of 8 managed stages, at least 1) allowed; nothing is deleted (pass --max-deletes 3 to allow it)"),
        "{out}"
    );
    assert!(out.contains("3 held back."), "{out}");
    assert_eq!(live_names(&sim).len(), 8, "nothing deleted");
    let (code, out, _) = stagesync(
        &ws,
        &sim,
        &["apply", "--prune", "--max-deletes", "2", "--yes", "stages"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("more than the --max-deletes 2 allowed"),
        "{out}"
    );
    assert_eq!(live_names(&sim).len(), 8);
    let (code, out, _) = stagesync(
        &ws,
        &sim,
        &["apply", "--prune", "--max-deletes", "3", "--yes", "stages"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(live_names(&sim), ["s4", "s5", "s6", "s7", "s8"]);

    // 5 managed: exactly one delete allowed, and it happens.
    remove_manifest(&ws, "s4");
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(live_names(&sim), ["s5", "s6", "s7", "s8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_manifest_an_empty_or_missing_directory_and_a_failed_list_prevent_every_delete()
{
    let (ws, sim) = applied(&["keep", "old"]).await;
    remove_manifest(&ws, "old");
    let deletes = |sim: &SimHandle| {
        sim.request_counts()
            .get("DELETE", "/api/v3/stages/captcha/{uuid}/")
    };

    // An invalid manifest elsewhere: nothing is contacted at all.
    ws.write("broken.yaml", "name: [unclosed\n");
    let (code, _, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 3, "{err}");
    std::fs::remove_file(ws.stages().join("broken.yaml")).unwrap();

    // An empty directory: nothing declared is not "delete everything".
    remove_manifest(&ws, "keep");
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "the manifests declare no stage at all (an empty directory?); nothing is pruned"
        ),
        "{out}"
    );
    assert!(out.contains("2 held back."), "{out}");

    // A missing directory.
    let (code, _, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "nowhere"]).await;
    assert_eq!(code, 3, "{err}");

    // A failed list.
    write_manifests(&ws, &["keep"]);
    sim.inject(
        Fault::status(503)
            .on("GET", "/api/v3/stages/captcha/")
            .times(100),
    );
    let (code, _, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_ne!(code, 0, "{err}");
    sim.clear_faults();

    // A failed used_by: an error, never taken as "nothing uses it".
    sim.inject(Fault::status(403).times(100).on(
        "GET",
        &format!("/api/v3/stages/captcha/{}/used_by/", uuid_of(&sim, "old")),
    ));
    let (code, _, err) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("HTTP 403"), "{err}");
    sim.clear_faults();

    assert_eq!(deletes(&sim), 0);
    assert_eq!(live_names(&sim), ["keep", "old"]);
    // With everything in order again, the prune goes ahead.
    let (code, out, _) = stagesync(&ws, &sim, &["apply", "--prune", "--yes", "stages"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(live_names(&sim), ["keep"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_wait_for_a_run_whose_writes_all_succeed() {
    // A manifest renamed without a pin is a create plus a delete: if the
    // create fails, the old stage must stay.
    let (ws, sim) = applied(&["keep", "old-name"]).await;
    remove_manifest(&ws, "old-name");
    write_manifests(&ws, &["new-name"]);
    sim.inject(Fault::status(400).on("POST", "/api/v3/stages/captcha/"));
    let (code, out, _) = stagesync(
        &ws,
        &sim,
        &["apply", "--prune", "--max-deletes", "1", "--yes", "stages"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not started: delete old-name: a create or update of this run was not made"),
        "{out}"
    );
    assert_eq!(live_names(&sim), ["keep", "old-name"]);
}

// --- the daemon ------------------------------------------------------------

mod daemon {
    use std::time::Duration;

    use support::daemon::{Daemon, Harness};

    const PRUNED: &str = "stagesync_stages{status=\"pruned\"}";

    fn start(h: &Harness, names: &[&str]) -> Daemon {
        for name in names {
            h.ws.write(
                &format!("{name}.yaml"),
                &support::cli::manifest(name, "site", "KEY", ""),
            );
        }
        let mut d = h.start_daemon(
            h.ws.stages(),
            &["--prune", "--debounce", "200ms", "--interval", "1h"],
            &[("KEY", "daemon-prune-key")],
        );
        for name in names {
            d.wait_until(&format!("{name} created"), || h.live(name).is_some());
        }
        d
    }

    #[test]
    fn run_prune_deletes_a_stage_once_its_file_is_removed() {
        let h = Harness::new();
        let mut d = start(&h, &["a", "b", "c", "d"]);
        std::fs::remove_file(h.ws.stages().join("d.yaml")).unwrap();
        d.wait_until("d deleted", || h.live("d").is_none());
        d.wait_for_log("deleted stage (pruned: no manifest declares it)");
        d.wait_for_metric_eq(PRUNED, 1.0);
        // The first pass after the removal held it back; the next one deleted it.
        assert!(
            d.log()
                .contains("its manifest was gone on this pass only; deleted on the next pass"),
            "{}",
            d.log()
        );
        assert!(h.live("a").is_some() && h.live("c").is_some());
    }

    #[test]
    fn run_prune_deletes_nothing_while_the_checkout_is_half_written() {
        let h = Harness::new();
        let mut d = start(&h, &["a", "b", "c", "d"]);
        // A checkout in progress: d's file is gone and another is half written.
        std::fs::remove_file(h.ws.stages().join("d.yaml")).unwrap();
        h.ws.write("e.yaml", "name: e\npublic_key: [unclosed\n");
        d.wait_for_log("the manifests were not all read and valid; nothing is pruned");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(h.live("d").is_some(), "{}", d.log());
        assert_eq!(
            h.sim
                .request_counts()
                .get("DELETE", "/api/v3/stages/captcha/{uuid}/"),
            0
        );
        // The checkout completes: now d goes (and e is created).
        h.ws.write("e.yaml", &support::cli::manifest("e", "site", "KEY", ""));
        d.wait_until("e created and d deleted", || {
            h.live("e").is_some() && h.live("d").is_none()
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_whose_deletes_grew_since_is_refused_without_naming_a_flag() {
    // The saved plan deletes one stage; by apply time a second manifest is gone
    // too. The file's single delete is the limit, and the refusal must not ask
    // for a --max-deletes the operator never passed.
    let (ws, sim) = applied(&["keep", "old", "older"]).await;
    remove_manifest(&ws, "old");
    let plan_file = ws.root.path().join("plan.json");
    let plan_file = plan_file.to_str().unwrap();
    let (code, out, err) = stagesync(
        &ws,
        &sim,
        &["plan", "--prune", "--out", plan_file, "stages"],
    )
    .await;
    assert_eq!(code, 2, "{out}\n{err}");
    remove_manifest(&ws, "older");
    let (code, out, err) = stagesync(&ws, &sim, &["apply", "--plan", plan_file, "stages"]).await;
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(
        !format!("{out}{err}").contains("--max-deletes"),
        "{out}\n{err}"
    );
    assert_eq!(live_names(&sim), ["keep", "old", "older"]);
}
