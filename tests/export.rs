//! `stagesync export` end to end: the real binary against the simulator, then
//! the round trip through `validate` and `plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use stagesync::kinds::captcha::{DesiredStage, StageFields};
use stagesync::manifest;
use stagesync::simulator::{self, SimConfig, SimHandle};
use support::cli::{TOKEN, Workspace, run, stderr, stdout};

/// The stage with every optional field away from its default.
fn sign_up_fields() -> StageFields {
    StageFields {
        js_url: "https://js.hcaptcha.com/1/api.js".into(),
        api_url: "https://api.hcaptcha.com/siteverify".into(),
        interactive: true,
        score_min_threshold: 0.0,
        score_max_threshold: 0.75,
        error_on_invalid_score: false,
        request_content_type: Some("application/json".into()),
        ..StageFields::with_defaults("Sign Up", "site key with spaces")
    }
}

/// Live stages with non-default fields, odd names, and two pairs of names whose
/// file stems (and variable names) collide: `Sign Up` / `sign-up`, `A b` / `a-b`.
fn seed(sim: &SimHandle) {
    sim.seed_captcha(
        StageFields::with_defaults("login", "site-login"),
        "seeded-secret-k1",
    );
    sim.seed_captcha(sign_up_fields(), "seeded-secret-k2");
    sim.seed_captcha(
        StageFields {
            score_min_threshold: 0.7,
            ..StageFields::with_defaults("sign-up", "123")
        },
        "seeded-secret-k3",
    );
    sim.seed_captcha(
        StageFields::with_defaults("reset/password", "yes"),
        "seeded-secret-k4",
    );
    sim.seed_captcha(StageFields::with_defaults("A b", "p"), "seeded-secret-k5");
    sim.seed_captcha(StageFields::with_defaults("a-b", "p"), "seeded-secret-k6");
    sim.seed_captcha(
        StageFields::with_defaults("MFA \"quoted\" #1: x", "site: colon"),
        "seeded-secret-k7",
    );
    // Not a captcha stage: never exported.
    sim.seed_other_stage("identification", "ak-stage-identification-form");
}

async fn start(version: &str) -> SimHandle {
    let sim = simulator::start(SimConfig {
        token: TOKEN.to_owned(),
        version: version.to_owned(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    seed(&sim);
    sim
}

fn out_dir(ws: &Workspace) -> PathBuf {
    ws.root.path().join("out")
}

async fn export(ws: &Workspace, sim: &SimHandle, force: bool) -> std::process::Output {
    let mut cmd = ws.cmd(sim);
    cmd.args(["export", "--dir"]).arg(out_dir(ws));
    if force {
        cmd.arg("--force");
    }
    run(cmd).await
}

/// File name -> content of every file in `dir`.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read out dir")
        .map(|e| {
            let e = e.expect("dir entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("read file"),
            )
        })
        .collect()
}

/// The `!Env` variable a manifest's private key references.
fn key_variable(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("private_key: !Env "))
        .map(|v| v.trim().to_owned())
}

/// The manifest keys a file sets.
fn keys_of(manifest: &str) -> BTreeSet<&str> {
    manifest
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect()
}

/// The exported manifests read back by stagesync's own loader (every key
/// variable set), as file name -> stage.
fn load(dir: &Path) -> BTreeMap<String, DesiredStage> {
    let manifests = manifest::load_with_env(dir, &stagesync::policy::Policy::default(), &|_| {
        Some("any-key".into())
    })
    .expect("load");
    assert!(manifests.is_valid(), "{:#?}", manifests.diagnostics);
    manifests
        .stages()
        .map(|s| {
            let file = s.origin.file.file_name().expect("file name");
            (file.to_string_lossy().into_owned(), s.clone())
        })
        .collect()
}

/// The file and fields of the exported stage named `name`.
fn by_name<'a>(
    loaded: &'a BTreeMap<String, DesiredStage>,
    name: &str,
) -> (&'a str, &'a StageFields) {
    loaded
        .iter()
        .find(|(_, s)| s.fields.name == name)
        .map(|(file, s)| (file.as_str(), &s.fields))
        .unwrap_or_else(|| panic!("no manifest for {name:?} in {loaded:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_one_manifest_per_stage_and_never_overwrites_without_force() {
    let sim = start("2026.8.0").await;
    let ws = Workspace::new();

    let out = export(&ws, &sim, false).await;
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let exported = files(&out_dir(&ws));
    assert_eq!(
        exported.len(),
        7,
        "one file per captcha stage: {exported:#?}"
    );
    let names: BTreeSet<&String> = exported.keys().collect();
    assert!(names.iter().all(|n| n.ends_with(".yaml")), "{names:?}");

    // Files are named after the stage; colliding stems get a suffix.
    let loaded = load(&out_dir(&ws));
    assert_eq!(loaded.len(), 7);
    assert_eq!(by_name(&loaded, "login").0, "login.yaml");
    assert_eq!(by_name(&loaded, "reset/password").0, "reset-password.yaml");
    let sign_up = [by_name(&loaded, "Sign Up").0, by_name(&loaded, "sign-up").0];
    assert_eq!(
        BTreeSet::from(sign_up),
        BTreeSet::from(["sign-up.yaml", "sign-up-2.yaml"])
    );
    let a_b = [by_name(&loaded, "A b").0, by_name(&loaded, "a-b").0];
    assert_eq!(
        BTreeSet::from(a_b),
        BTreeSet::from(["a-b.yaml", "a-b-2.yaml"])
    );

    // The key is an !Env reference with a comment; every variable is distinct,
    // or two stages would be given one key.
    let vars: Vec<String> = exported.values().filter_map(|t| key_variable(t)).collect();
    assert_eq!(vars.len(), 7);
    assert_eq!(vars.iter().collect::<BTreeSet<_>>().len(), 7, "{vars:?}");
    let login = &exported["login.yaml"];
    assert_eq!(
        key_variable(login).as_deref(),
        Some("CAPTCHA_LOGIN_PRIVATE_KEY")
    );
    assert!(
        login.contains("# authentik never returns the private key"),
        "{login}"
    );
    for var in &vars {
        assert!(
            var.starts_with("CAPTCHA_")
                && var.ends_with("_PRIVATE_KEY")
                && var
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "{var}"
        );
    }
    // No key reaches the files (authentik never returns one, so this guards
    // against a future simulator or client that would).
    for text in exported.values() {
        assert!(!text.contains("seeded-secret-"), "{text}");
    }

    // Default-valued fields are omitted; the others are kept, as values.
    assert_eq!(
        keys_of(login),
        BTreeSet::from(["name", "public_key", "private_key"])
    );
    let (file, signup) = by_name(&loaded, "Sign Up");
    assert_eq!(keys_of(&exported[file]).len(), 10, "{}", exported[file]);
    assert_eq!(signup, &sign_up_fields());
    // Strings YAML would read as something else stay strings.
    let (file, dash) = by_name(&loaded, "sign-up");
    assert_eq!(
        keys_of(&exported[file]),
        BTreeSet::from(["name", "public_key", "private_key", "score_min_threshold"])
    );
    assert_eq!(dash.public_key, "123");
    assert_eq!(dash.score_min_threshold, 0.7);
    assert_eq!(by_name(&loaded, "reset/password").1.public_key, "yes");
    assert_eq!(
        by_name(&loaded, "MFA \"quoted\" #1: x").1.public_key,
        "site: colon"
    );

    // Again without --force: refused, nothing written, not even the new file.
    let new = sim.seed_captcha(
        StageFields::with_defaults("brand-new", "p"),
        "seeded-secret-k8",
    );
    std::fs::write(out_dir(&ws).join("login.yaml"), "edited by hand\n").expect("edit");
    let out = export(&ws, &sim, false).await;
    assert_eq!(out.status.code(), Some(1), "stdout:\n{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--force") && err.contains("login.yaml"),
        "{err}"
    );
    let after = files(&out_dir(&ws));
    assert_eq!(after.len(), 7, "{after:#?}");
    assert!(!after.contains_key("brand-new.yaml"));
    assert_eq!(after["login.yaml"], "edited by hand\n");

    // --force overwrites, and writes the new one.
    let out = export(&ws, &sim, true).await;
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let after = files(&out_dir(&ws));
    assert_eq!(after.len(), 8);
    assert_eq!(after["login.yaml"], exported["login.yaml"]);
    assert!(after["brand-new.yaml"].contains(&new.to_string()));
    sim.shutdown();
}

/// Sets every exported key variable to a distinct value.
fn with_exported_keys(
    mut cmd: assert_cmd::Command,
    exported: &BTreeMap<String, String>,
) -> assert_cmd::Command {
    for (i, var) in exported
        .values()
        .filter_map(|t| key_variable(t))
        .enumerate()
    {
        cmd.env(var, format!("exported-key-{i}"));
    }
    cmd
}

async fn round_trip(version: &str) {
    let sim = start(version).await;
    let ws = Workspace::new();
    let out = export(&ws, &sim, false).await;
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let exported = files(&out_dir(&ws));

    let mut cmd = with_exported_keys(ws.cmd(&sim), &exported);
    cmd.arg("validate").arg(out_dir(&ws));
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{version}: validate\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );

    sim.reset_counts();
    let mut cmd = with_exported_keys(ws.cmd(&sim), &exported);
    cmd.args(["plan", "--format", "json"]).arg(out_dir(&ws));
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{version}: the unknown keys are pending changes\nstderr:\n{}",
        stderr(&out)
    );
    assert_eq!(sim.request_counts().writes(), 0);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let stages = plan["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 7, "{plan:#}");
    for stage in stages {
        assert_eq!(stage["action"], "update", "{version}: {stage:#}");
        assert_eq!(stage["private_key"], "unknown", "{version}: {stage:#}");
        assert_eq!(
            stage["changes"].as_array().map(Vec::len),
            Some(0),
            "{version}: only the key may differ: {stage:#}"
        );
    }
    assert_eq!(plan["unmanaged"].as_array().map(Vec::len), Some(0));
    assert!(!stdout(&out).contains("exported-key-") && !stderr(&out).contains("exported-key-"));

    // Applying the export writes only the keys; afterwards nothing is pending.
    let live_before = sim.captcha_stages();
    let mut cmd = with_exported_keys(ws.cmd(&sim), &exported);
    cmd.args(["apply", "--yes"]).arg(out_dir(&ws));
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{version}: apply\n{}",
        stderr(&out)
    );
    assert_eq!(
        sim.captcha_stages(),
        live_before,
        "{version}: fields unchanged"
    );
    let mut cmd = with_exported_keys(ws.cmd(&sim), &exported);
    cmd.arg("plan").arg(out_dir(&ws));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{version}: {}", stdout(&out));
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_plan_differs_only_in_the_unknown_keys_on_2025_12() {
    round_trip("2025.12.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_plan_differs_only_in_the_unknown_keys_on_2026_8() {
    round_trip("2026.8.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_never_writes_through_a_symlink_in_the_directory() {
    let sim = start("2025.12.4").await;
    let ws = Workspace::new();
    let out = out_dir(&ws);
    std::fs::create_dir_all(&out).unwrap();
    let target = ws.root.path().join("outside.txt");
    std::fs::write(&target, "outside, untouched\n").unwrap();
    // A link to an existing file outside, and a dangling one whose target
    // would be created by a write that follows it.
    std::os::unix::fs::symlink(&target, out.join("login.yaml")).unwrap();
    let dangling = ws.root.path().join("created-through-a-link");
    std::os::unix::fs::symlink(&dangling, out.join("a-b.yaml")).unwrap();

    for force in [false, true] {
        let result = export(&ws, &sim, force).await;
        assert_eq!(result.status.code(), Some(1), "--force {force}");
        let err = stderr(&result);
        for name in ["login.yaml", "a-b.yaml"] {
            assert!(
                err.contains(&format!("{name} is a symbolic link")),
                "--force {force}: {err}"
            );
        }
        assert!(err.contains("nothing was written"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "outside, untouched\n"
        );
        assert!(
            !dangling.exists(),
            "--force {force}: the dangling link was followed"
        );
        // All or nothing: not even the files without a link were written.
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_for_a_file_name_is_cut_and_every_file_is_written() {
    let sim = start("2025.12.4").await;
    let long = format!("{}-tail", "Very Long Captcha Name ".repeat(13));
    assert!(long.chars().count() >= 300);
    sim.seed_captcha(StageFields::with_defaults(&long, "p"), "seeded-secret-k8");
    let ws = Workspace::new();
    let result = export(&ws, &sim, false).await;
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let written = files(&out_dir(&ws));
    assert_eq!(written.len(), 8, "{:?}", written.keys());
    let (file, text) = written
        .iter()
        .find(|(_, text)| text.contains("-tail"))
        .expect("the long name's manifest");
    assert!(file.len() <= 105, "{file}");
    assert!(file.starts_with("very-long-captcha-name-"), "{file}");
    let variable = key_variable(text).expect("an !Env key");
    assert!(variable.len() <= 130, "{variable}");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_fails_part_way_leaves_nothing_behind() {
    let sim = start("2025.12.4").await;
    let ws = Workspace::new();
    let out = out_dir(&ws);
    // The last file in name order cannot be put in place: a folder is there.
    std::fs::create_dir_all(out.join("sign-up-2.yaml/inside")).unwrap();
    let result = export(&ws, &sim, true).await;
    assert_eq!(result.status.code(), Some(1));
    let err = stderr(&result);
    assert!(
        err.contains("cannot write") && err.contains("sign-up-2.yaml; nothing was written"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["sign-up-2.yaml"],
        "no manifest and no temporary file"
    );
    sim.shutdown();
}
