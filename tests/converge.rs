//! The convergence property: `plan` right after a successful `apply` is empty.
//!
//! Generated manifests (odd spacing and case in names, optional fields omitted
//! or set, thresholds written as `1`, `1.0`, `-0.0`, URLs with surrounding
//! whitespace, uuid pins that rename live stages) meet a generated live state in
//! the simulator (stages that match, drift, are unmanaged, or hold a name a
//! manifest wants; names held by stages of other types). The library path runs
//! in-process against the simulator over real HTTP: load, fetch and plan, apply,
//! then fetch and plan again. Entries the planner refuses (errors) are excluded;
//! everything else must be in sync on the second pass, and the second pass must
//! not write anything (checked with the simulator's request counter).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stagesync::apply::{Stop, apply};
use stagesync::authentik::{Client, ClientSettings};
use stagesync::kinds::captcha::{DEFAULT_API_URL, DEFAULT_JS_URL, DesiredStage, StageFields};
use stagesync::manifest;
use stagesync::plan::Action;
use stagesync::reconcile::fetch_and_plan;
use stagesync::secret::SecretString;
use stagesync::simulator::{self, SimConfig, SimHandle};

use stagesync::state::KeyState;

const OLD: &str = "2025.12.4";
const NEW: &str = "2026.8.0";
const CASES: u32 = 48;

/// Names differ in case and punctuation only, so trimming and case-sensitive
/// matching are both exercised.
const NAMES: [&str; 7] = [
    "login",
    "Login",
    "LOGIN",
    "sign up",
    "Sign Up",
    "reset/password",
    "mfa (v2)",
];
/// Whitespace around a desired name or string value (authentik trims it).
const PADS: [&str; 4] = ["", " ", "  ", "\t"];
const PUBLIC_KEYS: [&str; 3] = ["site-a", "site-b", "Site A"];
const JS_URLS: [&str; 3] = [
    DEFAULT_JS_URL,
    "https://js.hcaptcha.com/1/api.js",
    "https://challenges.cloudflare.com/turnstile/v0/api.js",
];
const API_URLS: [&str; 3] = [
    DEFAULT_API_URL,
    "https://api.hcaptcha.com/siteverify",
    "https://challenges.cloudflare.com/turnstile/v0/siteverify",
];
/// Threshold spellings in YAML and the value each means.
const THRESHOLDS: [(&str, f64); 8] = [
    ("0", 0.0),
    ("-0.0", -0.0),
    ("0.5", 0.5),
    ("0.50", 0.5),
    ("0.7", 0.7),
    ("1", 1.0),
    ("1.0", 1.0),
    ("1.00", 1.0),
];
const CONTENT_TYPES: [&str; 2] = ["application/x-www-form-urlencoded", "application/json"];
const KEYS: [&str; 3] = ["key-zero", "key-one", "key-two"];

#[derive(Clone, Debug)]
struct LiveGen {
    name: usize,
    public_key: usize,
    js_url: usize,
    api_url: usize,
    interactive: bool,
    min: f64,
    max: f64,
    error_on_invalid_score: bool,
    content_type: usize,
    key: usize,
    /// The state file remembers writing `KEYS[key]` to this stage.
    key_recorded: bool,
}

#[derive(Clone, Debug)]
struct DesiredGen {
    name: usize,
    pad: (usize, usize),
    /// Pins the live stage at this index (modulo the live count), if any.
    pin: Option<usize>,
    public_key: (usize, usize),
    js_url: Option<(usize, usize)>,
    api_url: Option<(usize, usize)>,
    interactive: Option<bool>,
    min: Option<usize>,
    max: Option<usize>,
    error_on_invalid_score: Option<bool>,
    content_type: Option<usize>,
    key: usize,
    /// Spell out the live stage of the same name (if any) instead, differently
    /// written but equal: the in-sync case.
    mirror: bool,
}

#[derive(Clone, Debug)]
struct Case {
    live: Vec<LiveGen>,
    desired: Vec<DesiredGen>,
    /// Names held by stages of other types (if no captcha stage holds them).
    foreign: Vec<usize>,
}

fn live_gen() -> impl Strategy<Value = LiveGen> {
    (
        (0..NAMES.len(), 0..PUBLIC_KEYS.len(), 0..JS_URLS.len()),
        (0..API_URLS.len(), any::<bool>(), 0..THRESHOLDS.len()),
        (0..THRESHOLDS.len(), any::<bool>(), 0..CONTENT_TYPES.len()),
        (0..KEYS.len(), any::<bool>()),
    )
        .prop_map(
            |(
                (name, public_key, js_url),
                (api_url, interactive, min),
                (max, eoi, ct),
                (key, rec),
            )| {
                LiveGen {
                    name,
                    public_key,
                    js_url,
                    api_url,
                    interactive,
                    // Live values need not be ordered: authentik does not check.
                    min: THRESHOLDS[min].1,
                    max: THRESHOLDS[max].1,
                    error_on_invalid_score: eoi,
                    content_type: ct,
                    key,
                    key_recorded: rec,
                }
            },
        )
}

fn pad() -> impl Strategy<Value = (usize, usize)> {
    (0..PADS.len(), 0..PADS.len())
}

fn desired_gen() -> impl Strategy<Value = DesiredGen> {
    (
        (
            0..NAMES.len(),
            pad(),
            prop::option::weighted(0.3, 0..8usize),
        ),
        (
            (0..PUBLIC_KEYS.len(), 0..PADS.len()),
            prop::option::of((0..JS_URLS.len(), 0..PADS.len())),
            prop::option::of((0..API_URLS.len(), 0..PADS.len())),
        ),
        (
            prop::option::of(any::<bool>()),
            prop::option::of(0..THRESHOLDS.len()),
            prop::option::of(0..THRESHOLDS.len()),
        ),
        (
            prop::option::of(any::<bool>()),
            prop::option::of(0..CONTENT_TYPES.len()),
            0..KEYS.len(),
        ),
        prop::bool::weighted(0.7),
    )
        .prop_map(
            |(
                (name, pad, pin),
                (public_key, js_url, api_url),
                (interactive, min, max),
                (error_on_invalid_score, content_type, key),
                mirror,
            )| {
                DesiredGen {
                    name,
                    pad,
                    pin,
                    public_key,
                    js_url,
                    api_url,
                    interactive,
                    min,
                    max,
                    error_on_invalid_score,
                    content_type,
                    key,
                    mirror,
                }
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(live_gen(), 2..7),
        prop::collection::vec(desired_gen(), 0..7),
        prop::collection::vec(0..NAMES.len(), 1..3),
    )
        .prop_map(|(live, desired, foreign)| Case {
            live,
            desired,
            foreign,
        })
}

fn quoted(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_default()
}

fn padded((value, pad): (&str, usize)) -> String {
    quoted(&format!(
        "{}{value}{}",
        PADS[pad],
        PADS[(pad + 1) % PADS.len()]
    ))
}

/// The manifest text of `d`; `pin` is the uuid it pins, if any.
fn manifest_text(d: &DesiredGen, pin: Option<uuid::Uuid>) -> String {
    let mut out = String::new();
    if let Some(u) = pin {
        out.push_str(&format!("uuid: {u}\n"));
    }
    out.push_str(&format!(
        "name: {}\n",
        quoted(&format!(
            "{}{}{}",
            PADS[d.pad.0], NAMES[d.name], PADS[d.pad.1]
        ))
    ));
    out.push_str(&format!(
        "public_key: {}\n",
        padded((PUBLIC_KEYS[d.public_key.0], d.public_key.1))
    ));
    out.push_str(&format!("private_key: !Env KEY_{}\n", d.key));
    if let Some((i, p)) = d.js_url {
        out.push_str(&format!("js_url: {}\n", padded((JS_URLS[i], p))));
    }
    if let Some((i, p)) = d.api_url {
        out.push_str(&format!("api_url: {}\n", padded((API_URLS[i], p))));
    }
    if let Some(b) = d.interactive {
        out.push_str(&format!("interactive: {b}\n"));
    }
    // Keep min <= max (with authentik's defaults 0.5 and 1.0 for omitted ones),
    // or the manifest is invalid.
    let (mut min, mut max) = (d.min, d.max);
    let value = |t: Option<usize>, default: f64| t.map_or(default, |i| THRESHOLDS[i].1);
    if value(min, 0.5) > value(max, 1.0) {
        if min.is_some() && max.is_some() {
            std::mem::swap(&mut min, &mut max);
        } else {
            max = None;
            min = min.filter(|&i| THRESHOLDS[i].1 <= 1.0);
        }
    }
    if let Some(i) = min {
        out.push_str(&format!("score_min_threshold: {}\n", THRESHOLDS[i].0));
    }
    if let Some(i) = max {
        out.push_str(&format!("score_max_threshold: {}\n", THRESHOLDS[i].0));
    }
    if let Some(b) = d.error_on_invalid_score {
        out.push_str(&format!("error_on_invalid_score: {b}\n"));
    }
    if let Some(i) = d.content_type {
        out.push_str(&format!("request_content_type: {}\n", CONTENT_TYPES[i]));
    }
    out
}

/// A manifest equal to the live stage `l`, spelled differently: padded strings,
/// thresholds in another notation, defaults sometimes omitted.
fn mirror_text(l: &LiveGen, d: &DesiredGen) -> String {
    let spell = |v: f64| {
        let spellings: Vec<&str> = THRESHOLDS
            .iter()
            .filter(|(_, x)| *x == v)
            .map(|(t, _)| *t)
            .collect();
        spellings[d.pad.0 % spellings.len()].to_owned()
    };
    let omit_defaults = d.pad.1.is_multiple_of(2);
    let mut out = format!(
        "name: {}\npublic_key: {}\nprivate_key: !Env KEY_{}\n",
        padded((NAMES[l.name], d.pad.0)),
        padded((PUBLIC_KEYS[l.public_key], d.pad.1)),
        l.key
    );
    let mut line = |key: &str, value: String, is_default: bool| {
        if !(omit_defaults && is_default) {
            out.push_str(&format!("{key}: {value}\n"));
        }
    };
    line(
        "js_url",
        padded((JS_URLS[l.js_url], d.pad.1)),
        l.js_url == 0,
    );
    line(
        "api_url",
        padded((API_URLS[l.api_url], d.pad.0)),
        l.api_url == 0,
    );
    line("interactive", l.interactive.to_string(), !l.interactive);
    line("score_min_threshold", spell(l.min), l.min == 0.5);
    line("score_max_threshold", spell(l.max), l.max == 1.0);
    line(
        "error_on_invalid_score",
        l.error_on_invalid_score.to_string(),
        l.error_on_invalid_score,
    );
    line(
        "request_content_type",
        CONTENT_TYPES[l.content_type].to_owned(),
        l.content_type == 0,
    );
    out
}

fn env(var: &str) -> Option<OsString> {
    let index: usize = var.strip_prefix("KEY_")?.parse().ok()?;
    KEYS.get(index).map(OsString::from)
}

fn load(dir: &Path) -> Result<Vec<DesiredStage>, TestCaseError> {
    let manifests = manifest::load_with_env(dir, &stagesync::policy::Policy::default(), &env)
        .map_err(|e| TestCaseError::fail(format!("cannot load manifests: {e}")))?;
    if !manifests.is_valid() {
        let problems: Vec<String> = manifests
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect();
        return Err(TestCaseError::fail(format!(
            "generated manifests are invalid:\n{}",
            problems.join("\n")
        )));
    }
    Ok(manifests.stages().cloned().collect())
}

fn client(sim: &SimHandle) -> Client {
    Client::new(&ClientSettings {
        url: sim.url(),
        token: SecretString::from(support::cli::TOKEN),
        ca_file: None,
        insecure_skip_tls_verify: false,
        allow_http: false,
        connect_timeout: ClientSettings::DEFAULT_CONNECT_TIMEOUT,
        request_timeout: Duration::from_secs(10),
    })
    .expect("client for the simulator")
}

async fn start(version: &str) -> SimHandle {
    simulator::start(SimConfig {
        token: support::cli::TOKEN.to_owned(),
        version: version.to_owned(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Seeds `case` into `sim` and writes its manifests; returns the key state.
fn seed(sim: &SimHandle, case: &Case, dir: &Path) -> KeyState {
    let mut keys = KeyState::default();
    let mut live_uuids = Vec::new();
    let mut held = BTreeMap::new();
    for l in &case.live {
        // authentik's names are unique: the first stage generated with a name wins.
        if held.contains_key(&l.name) {
            continue;
        }
        let uuid = sim.seed_captcha(
            StageFields {
                name: NAMES[l.name].to_owned(),
                public_key: PUBLIC_KEYS[l.public_key].to_owned(),
                js_url: JS_URLS[l.js_url].to_owned(),
                api_url: API_URLS[l.api_url].to_owned(),
                interactive: l.interactive,
                score_min_threshold: l.min,
                score_max_threshold: l.max,
                error_on_invalid_score: l.error_on_invalid_score,
                request_content_type: Some(CONTENT_TYPES[l.content_type].to_owned()),
            },
            KEYS[l.key],
        );
        if l.key_recorded {
            keys.record(uuid, &SecretString::from(KEYS[l.key]));
        }
        held.insert(l.name, uuid);
        live_uuids.push(uuid);
    }
    for &f in &case.foreign {
        if !held.contains_key(&f) {
            sim.seed_other_stage(NAMES[f], "ak-stage-identification-form");
        }
    }
    // Two manifests with one name or one uuid make the directory invalid (the
    // loader says so before anything is planned): keep the first of each.
    let mut names = BTreeSet::new();
    let mut pins = BTreeSet::new();
    for (i, d) in case.desired.iter().enumerate() {
        if !names.insert(d.name) {
            continue;
        }
        let pin = d
            .pin
            .filter(|_| !live_uuids.is_empty())
            .map(|p| live_uuids[p % live_uuids.len()])
            .filter(|u| pins.insert(*u));
        let text = match (
            case.live.iter().find(|l| l.name == d.name),
            held.get(&d.name),
        ) {
            (Some(l), Some(uuid)) if d.mirror && pin.is_none() && l.min <= l.max => {
                // As if stagesync had written this stage before.
                keys.record(*uuid, &SecretString::from(KEYS[l.key]));
                mirror_text(l, d)
            }
            _ => manifest_text(d, pin),
        };
        std::fs::write(dir.join(format!("stage-{i}.yaml")), text).expect("write manifest");
    }
    keys
}

/// One case: plan and apply, then plan again; nothing may be left to do.
async fn converges(
    case: Case,
    version: &str,
    seen: &mut BTreeMap<&'static str, usize>,
) -> Result<(), TestCaseError> {
    let sim = start(version).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut keys = seed(&sim, &case, dir.path());
    let client = client(&sim);
    let stop = Stop::new();

    let first = fetch_and_plan(&client, load(dir.path())?, &keys)
        .await
        .map_err(|e| TestCaseError::fail(format!("first plan: {e}")))?;
    for entry in &first.plan.entries {
        let kind = match &entry.action {
            Action::Create { .. } => "create",
            Action::Update { changes, .. } if changes.iter().any(|c| c.field == "name") => "rename",
            Action::Update { .. } => "update",
            Action::InSync { .. } => "in sync",
            Action::Error { .. } => "error",
            Action::Delete { .. } => "delete",
        };
        *seen.entry(kind).or_default() += 1;
    }
    let report = apply(&client, &first.plan, &mut keys, 4, &stop, |_| false, |_| {}).await;
    let failed: Vec<String> = report
        .failed()
        .map(|(o, e)| format!("{}: {e}", o.name))
        .collect();
    prop_assert!(
        report.converged(),
        "the plan had no errors for these stages, yet writes failed: {failed:?} (not started: {})",
        report.skipped()
    );

    sim.reset_counts();
    let second = fetch_and_plan(&client, load(dir.path())?, &keys)
        .await
        .map_err(|e| TestCaseError::fail(format!("second plan: {e}")))?;
    for (before, after) in first.plan.entries.iter().zip(&second.plan.entries) {
        if matches!(before.action, Action::Error { .. }) {
            // Refused then; it must still be refused, never a new write.
            prop_assert!(
                matches!(after.action, Action::Error { .. }),
                "{:?} was an error, now {:?}",
                before.name,
                after.action
            );
            continue;
        }
        prop_assert!(
            matches!(after.action, Action::InSync { .. }),
            "{:?} is not in sync after apply: {:?} (first pass: {:?})",
            after.name,
            after.action,
            before.action
        );
    }
    let again = apply(
        &client,
        &second.plan,
        &mut keys,
        4,
        &stop,
        |_| false,
        |_| {},
    )
    .await;
    prop_assert!(again.outcomes.is_empty());
    let counts = sim.request_counts();
    prop_assert_eq!(counts.writes(), 0, "second pass wrote: {:?}", counts);
    // Fetching is one version call and one list page (fewer than 100 stages),
    // plus one name look-up per name no captcha stage holds.
    prop_assert_eq!(counts.get("GET", "/api/v3/admin/version/"), 1);
    prop_assert_eq!(counts.get("GET", "/api/v3/stages/captcha/"), 1);
    sim.shutdown();
    Ok(())
}

fn run_property(version: &'static str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::cell::RefCell::new(BTreeMap::new());
    let result = runner.run(&case(), |case| {
        runtime.block_on(converges(case, version, &mut seen.borrow_mut()))
    });
    if let Err(err) = result {
        panic!("{version}: {err}");
    }
    // The generator must reach every kind of entry, or the property says little.
    let seen = seen.into_inner();
    eprintln!("{version}: first-pass entries by kind: {seen:?}");
    for kind in ["create", "update", "rename", "in sync", "error"] {
        assert!(
            seen.contains_key(kind),
            "no {kind} entry generated: {seen:?}"
        );
    }
}

#[test]
fn plan_after_apply_is_empty_on_2025_12() {
    run_property(OLD);
}

#[test]
fn plan_after_apply_is_empty_on_2026_8() {
    run_property(NEW);
}

/// A server upgrade (the field appears) and a downgrade (it disappears) never
/// leave a diff that an apply cannot remove.
#[test]
fn request_content_type_never_causes_a_perpetual_diff_across_versions() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sim = start(OLD).await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("json.yaml"),
            "name: json\npublic_key: p\nprivate_key: !Env KEY_0\nrequest_content_type: application/json\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("plain.yaml"),
            "name: plain\npublic_key: p\nprivate_key: !Env KEY_1\n",
        )
        .expect("write");
        let client = client(&sim);
        let stop = Stop::new();
        let mut keys = KeyState::default();
        let desired = || load(dir.path()).expect("valid manifests");

        for (version, writes_expected) in [(OLD, 2), (NEW, 1), (OLD, 0), (NEW, 0)] {
            sim.set_version(version);
            sim.reset_counts();
            let planned = fetch_and_plan(&client, desired(), &keys)
                .await
                .expect("plan");
            let report = apply(&client, &planned.plan, &mut keys, 4, &stop, |_| false, |_| {}).await;
            assert!(report.converged(), "{version}: {report:?}");
            assert_eq!(
                sim.request_counts().writes(),
                writes_expected,
                "{version}: {:?}",
                planned.plan.entries
            );
            sim.reset_counts();
            let after = fetch_and_plan(&client, desired(), &keys)
                .await
                .expect("plan");
            assert!(
                after
                    .plan
                    .entries
                    .iter()
                    .all(|s| matches!(s.action, Action::InSync { .. })),
                "{version}: {:?}",
                after.plan.entries
            );
            assert_eq!(sim.request_counts().writes(), 0);
        }
        // On 2026.8 the desired content type is what the server holds.
        let json = sim
            .captcha_stages()
            .into_iter()
            .find(|s| s.fields.name == "json")
            .expect("json stage");
        assert_eq!(
            json.fields.request_content_type.as_deref(),
            Some("application/json")
        );
        sim.shutdown();
    });
}
