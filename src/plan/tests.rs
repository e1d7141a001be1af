use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::authentik::ServerVersion;
use crate::kinds::captcha::StageFields;
use crate::kinds::field::{FieldChange, Value};
use crate::plan::prune::Decided;
use crate::secret::{PrivateKey, SecretString};

const NEW: Capabilities = Capabilities {
    version: ServerVersion::new(2026, 8, 0),
};
const OLD: Capabilities = Capabilities {
    version: ServerVersion::new(2025, 12, 4),
};

fn origin(line: usize) -> Origin {
    Origin {
        file: PathBuf::from("stages/captcha.yaml"),
        line,
        column: 1,
    }
}

fn desired(name: &str, uuid: Option<u128>) -> DesiredStage {
    DesiredStage {
        origin: origin(1),
        uuid: uuid.map(Uuid::from_u128),
        fields: StageFields::with_defaults(name, "site-key"),
        key_source: KeySource::Env("CAPTCHA_KEY".into()),
        private_key: SecretString::from("k"),
        guards: None,
    }
}

fn live(uuid: u128, name: &str) -> LiveStage {
    LiveStage {
        uuid: Uuid::from_u128(uuid),
        fields: StageFields::with_defaults(name, "site-key"),
    }
}

/// Keys recorded for every live stage with the key `k`, as after an apply.
fn known_keys(live: &[LiveStage]) -> KeyState {
    let mut keys = KeyState::default();
    for l in live {
        keys.record(l.uuid, &SecretString::from("k"));
    }
    keys
}

fn run(desired: &[DesiredStage], live: &[LiveStage], keys: &KeyState) -> Plan {
    run_with(desired, live, keys, NEW, &BTreeMap::new())
}

fn run_with(
    desired: &[DesiredStage],
    live: &[LiveStage],
    keys: &KeyState,
    capabilities: Capabilities,
    foreign: &BTreeMap<String, String>,
) -> Plan {
    plan(&PlanInputs {
        desired,
        live,
        keys,
        capabilities,
        foreign_names: foreign,
    })
}

fn error_message(stage: &Entry) -> &str {
    match &stage.action {
        Action::Error { message, .. } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_stage_not_live_is_created_with_an_unknown_key() {
    let p = run(&[desired("rec", None)], &[], &KeyState::default());
    assert_eq!(p.entries.len(), 1);
    assert!(matches!(
        &p.entries[0].action,
        Action::Create { write, key: KeyStatus::Unknown } if write.object.value("name") == Value::Str("rec".into())
    ));
    assert!(p.has_changes());
}

#[test]
fn same_fields_and_recorded_key_are_in_sync() {
    let l = [live(1, "rec")];
    let p = run(&[desired("  rec ", None)], &l, &known_keys(&l));
    assert_eq!(
        p.entries[0].action,
        Action::InSync {
            uuid: Uuid::from_u128(1)
        }
    );
    assert_eq!(p.entries[0].name, "rec");
    assert!(!p.has_changes());
    assert!(p.unmanaged.is_empty());
}

#[test]
fn a_changed_field_is_an_update_old_to_new() {
    let l = [live(1, "rec")];
    let mut d = desired("rec", None);
    d.fields.score_min_threshold = 0.7;
    d.fields.js_url = format!(" {} ", d.fields.js_url);
    let p = run(&[d], &l, &known_keys(&l));
    let Action::Update {
        uuid, changes, key, ..
    } = &p.entries[0].action
    else {
        panic!("expected an update: {p:?}");
    };
    assert_eq!(*uuid, Uuid::from_u128(1));
    assert_eq!(*key, KeyStatus::Unchanged);
    assert_eq!(
        changes,
        &[FieldChange {
            field: "score_min_threshold",
            old: Value::Num(0.5),
            new: Value::Num(0.7)
        }]
    );
}

#[test]
fn a_key_alone_rotated_or_unknown_is_an_update_without_field_changes() {
    let l = [live(1, "rec")];
    let mut d = desired("rec", None);
    d.private_key = SecretString::from("new key");
    let rotated = run(std::slice::from_ref(&d), &l, &known_keys(&l));
    assert!(matches!(
        &rotated.entries[0].action,
        Action::Update { changes, key: KeyStatus::Rotated, .. } if changes.is_empty()
    ));
    let unknown = run(&[d], &l, &KeyState::default());
    assert!(matches!(
        &unknown.entries[0].action,
        Action::Update { changes, key: KeyStatus::Unknown, .. } if changes.is_empty()
    ));
}

#[test]
fn ignoring_unknown_keys_hides_only_key_only_updates_with_unknown_keys() {
    let l = [live(1, "a"), live(2, "b"), live(3, "c")];
    let a = desired("a", None);
    let mut b = desired("b", None);
    b.fields.score_min_threshold = 0.9;
    let mut c = desired("c", None);
    c.private_key = SecretString::from("rotated");
    let keys = known_keys(&l[2..]);
    let plan = run(&[a, b, c], &l, &keys).ignoring_unknown_keys();
    assert!(
        matches!(plan.entries[0].action, Action::InSync { .. }),
        "unknown key only"
    );
    assert!(
        matches!(&plan.entries[1].action, Action::Update { changes, .. } if changes.len() == 1),
        "field drift still shows"
    );
    assert!(
        matches!(
            plan.entries[2].action,
            Action::Update {
                key: KeyStatus::Rotated,
                ..
            }
        ),
        "a rotation still shows"
    );
}

#[test]
fn a_pinned_uuid_with_another_live_name_is_a_rename() {
    let l = [live(1, "old-name")];
    let p = run(&[desired("new-name", Some(1))], &l, &known_keys(&l));
    let Action::Update { changes, .. } = &p.entries[0].action else {
        panic!("expected an update: {p:?}");
    };
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].field, "name");
    assert_eq!(changes[0].old, Value::Str("old-name".into()));
    assert_eq!(changes[0].new, Value::Str("new-name".into()));
    assert_eq!(p.waits_for(&p.entries[0]), None);
}

#[test]
fn a_pinned_uuid_not_live_is_an_error_that_says_to_remove_the_pin() {
    let p = run(
        &[desired("rec", Some(9))],
        &[live(1, "rec")],
        &KeyState::default(),
    );
    let message = error_message(&p.entries[0]);
    assert!(message.contains(&Uuid::from_u128(9).to_string()));
    assert!(message.contains("remove the `uuid` line"));
    // The live stage of the same name is not silently taken over.
    assert_eq!(p.unmanaged.len(), 1);
    assert!(!p.has_changes());
}

#[test]
fn a_stage_claimed_by_a_pin_is_not_matched_again_by_name() {
    // Stage 1 is renamed away from "a" by its pin; a new manifest named "a" is
    // then a create that waits for that rename.
    let l = [live(1, "a")];
    let p = run(
        &[desired("b", Some(1)), desired("a", None)],
        &l,
        &known_keys(&l),
    );
    assert!(matches!(p.entries[0].action, Action::Update { .. }));
    assert!(matches!(p.entries[1].action, Action::Create { .. }));
    assert_eq!(p.waits_for(&p.entries[1]), Some(Uuid::from_u128(1)));
}

#[test]
fn a_rename_onto_a_name_another_captcha_stage_keeps_is_an_error() {
    let l = [live(1, "a"), live(2, "b")];
    let p = run(&[desired("b", Some(1))], &l, &known_keys(&l));
    let message = error_message(&p.entries[0]);
    assert!(
        message.starts_with("cannot rename to \"b\": name \"b\" is already used by captcha stage")
    );
    assert_eq!(p.unmanaged.len(), 1);
    assert_eq!(p.unmanaged[0].name, "b");
}

#[test]
fn a_rename_onto_a_name_being_vacated_waits_for_it() {
    let l = [live(1, "a"), live(2, "b")];
    let p = run(
        &[desired("b", Some(1)), desired("c", Some(2))],
        &l,
        &known_keys(&l),
    );
    assert!(matches!(p.entries[0].action, Action::Update { .. }));
    assert_eq!(p.waits_for(&p.entries[0]), Some(Uuid::from_u128(2)));
    assert_eq!(p.waits_for(&p.entries[1]), None);
}

#[test]
fn a_swap_of_names_is_an_error() {
    let l = [live(1, "a"), live(2, "b")];
    let p = run(
        &[desired("b", Some(1)), desired("a", Some(2))],
        &l,
        &known_keys(&l),
    );
    for stage in &p.entries {
        assert!(error_message(stage).contains("cycle of renames"));
    }
    assert!(p.unmanaged.is_empty());
}

#[test]
fn a_name_held_by_another_stage_type_is_an_error_found_while_planning() {
    let l = [live(1, "a")];
    let ds = [
        desired("login", None),
        desired("x", Some(1)),
        desired("ok", None),
    ];
    assert_eq!(names_to_check(&ds, &l), ["login", "ok", "x"]);
    let foreign = BTreeMap::from([
        ("login".to_owned(), "identification".to_owned()),
        ("x".to_owned(), "password".to_owned()),
    ]);
    let p = run_with(&ds, &l, &known_keys(&l), NEW, &foreign);
    assert_eq!(
        error_message(&p.entries[0]),
        "name \"login\" is already used by an identification stage; stage names are unique across all stage types"
    );
    assert!(error_message(&p.entries[1]).contains("password stage"));
    assert!(matches!(p.entries[2].action, Action::Create { .. }));
}

#[test]
fn names_held_by_captcha_stages_need_no_lookup() {
    let l = [live(1, "a")];
    let ds = [
        desired(" a ", None),
        desired("b ", None),
        desired("b", Some(1)),
    ];
    assert_eq!(names_to_check(&ds, &l), ["b"]);
}

#[test]
fn live_stages_no_manifest_names_are_unmanaged_and_sorted() {
    let l = [live(3, "zeta"), live(1, "alpha"), live(2, "managed")];
    let p = run(&[desired("managed", None)], &l, &known_keys(&l));
    let names: Vec<&str> = p.unmanaged.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert_eq!(p.summary().unmanaged, 2);
}

#[test]
fn an_old_server_neither_compares_nor_sends_request_content_type() {
    let mut l = live(1, "rec");
    l.fields.request_content_type = None;
    let l = [l];
    let mut d = desired("rec", None);
    d.fields.request_content_type = Some("application/json".into());
    let old = run_with(
        std::slice::from_ref(&d),
        &l,
        &known_keys(&l),
        OLD,
        &BTreeMap::new(),
    );
    assert!(matches!(old.entries[0].action, Action::InSync { .. }));
    assert!(
        !old.known_fields(crate::kinds::Kind::CaptchaStage)
            .contains(&"request_content_type")
    );
    let new = run(std::slice::from_ref(&d), &l, &known_keys(&l));
    assert!(matches!(new.entries[0].action, Action::Update { .. }));

    let create = run_with(
        &[desired("other", None)],
        &[],
        &KeyState::default(),
        OLD,
        &BTreeMap::new(),
    );
    assert!(matches!(
        &create.entries[0].action,
        Action::Create { write, .. } if write.object.value("request_content_type") == Value::Absent
    ));
}

#[test]
fn duplicate_names_or_pins_are_errors_for_every_copy() {
    let l = [live(1, "a")];
    let mut second = desired("a", None);
    second.origin = origin(7);
    let p = run(&[desired("a", None), second], &l, &known_keys(&l));
    for stage in &p.entries {
        assert_eq!(
            error_message(stage),
            "name \"a\" is declared by more than one manifest (stages/captcha.yaml:1, stages/captcha.yaml:7)"
        );
    }
    // The live stage is named by manifests, so it is not "unmanaged".
    assert!(p.unmanaged.is_empty());

    let p = run(
        &[desired("x", Some(1)), desired("y", Some(1))],
        &l,
        &known_keys(&l),
    );
    assert!(error_message(&p.entries[0]).starts_with("uuid"));
    assert!(p.unmanaged.is_empty());
}

#[test]
fn summary_counts_every_kind() {
    let p = every_kind_of_entry();
    assert_eq!(
        p.summary(),
        Summary {
            create: 2,
            update: 5,
            in_sync: 1,
            error: 2,
            unmanaged: 1,
            warnings: 2,
            ..Summary::default()
        }
    );
    assert_eq!(
        crate::plan::warnings(&p)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "stage `rec-signup`: the key will be sent to a new host: www.recaptcha.net -> captcha.internal:8443 (api_url)",
            "stage `rec-recovery`: the login page will load its script from a new host: www.recaptcha.net -> js.hcaptcha.com (js_url)",
        ]
    );
    assert!(p.has_changes());
    assert!(p.has_errors());
}

#[test]
fn summary_line_grammar() {
    let mut s = Summary {
        create: 1,
        update: 2,
        in_sync: 5,
        error: 0,
        unmanaged: 1,
        warnings: 0,
        ..Summary::default()
    };
    assert_eq!(
        render::summary_line(&s),
        "Plan: 1 to create, 2 to update, 5 in sync, 1 unmanaged."
    );
    s.error = 1;
    assert_eq!(
        render::summary_line(&s),
        "Plan: 1 to create, 2 to update, 5 in sync, 1 unmanaged, 1 error."
    );
    s.error = 3;
    assert!(render::summary_line(&s).ends_with(", 3 errors."));
    s.warnings = 1;
    assert!(render::summary_line(&s).ends_with(", 3 errors, 1 security warning."));
    s.warnings = 2;
    assert!(render::summary_line(&s).ends_with(", 2 security warnings."));
}

/// A plan with every kind of entry, against a new server.
fn every_kind_of_entry() -> Plan {
    let secret = "6Lc-super-secret-private-key";
    let key = || -> PrivateKey { SecretString::from(secret) };
    let at = |mut d: DesiredStage, file: &str, line: usize| {
        d.origin = Origin {
            file: PathBuf::from(file),
            line,
            column: 1,
        };
        d.private_key = key();
        d
    };
    let l = [
        live(0xa1, "rec-login"),
        live(0xa2, "rec-signup"),
        live(0xa3, "rec-old-name"),
        live(0xa4, "rec-recovery"),
        live(0xa5, "legacy-captcha"),
        live(0xa6, "rec-untracked-key"),
        live(0xa7, "rec-b"),
    ];
    let mut keys = KeyState::default();
    for u in [0xa1, 0xa2, 0xa3, 0xa7] {
        keys.record(Uuid::from_u128(u), &key());
    }
    keys.record(Uuid::from_u128(0xa4), &SecretString::from("previous key"));

    let mut signup = desired("rec-signup", None);
    signup.fields.score_min_threshold = 0.7;
    signup.fields.interactive = true;
    // A key moving to another host is a security warning.
    signup.fields.api_url = "https://captcha.internal:8443/siteverify".into();
    let mut recovery = desired("rec-recovery", None);
    recovery.key_source = KeySource::File("secrets/recovery.key".into());
    recovery.fields.js_url = "https://js.hcaptcha.com/1/api.js".into();
    let mut evil = desired("bad\u{1b}[2Jname", None);
    evil.key_source = KeySource::Literal;
    let ds = [
        at(desired("rec-new", None), "stages/new.yaml", 1),
        at(signup, "stages/signup.yaml", 1),
        at(desired("rec-renamed", Some(0xa3)), "stages/renamed.yaml", 1),
        at(recovery, "stages/recovery.yaml", 1),
        at(desired("rec-login", None), "stages/login.yaml", 1),
        at(desired("rec-gone", Some(0xff)), "stages/gone.yaml", 4),
        at(evil, "stages/clash.yaml", 1),
        at(
            desired("rec-untracked-key", None),
            "stages/untracked.yaml",
            1,
        ),
        at(desired("rec-c", Some(0xa7)), "stages/swap.yaml", 1),
        at(desired("rec-b", None), "stages/swap.yaml", 12),
    ];
    let foreign = BTreeMap::from([("bad\u{1b}[2Jname".to_owned(), "identification".to_owned())]);
    let p = run_with(&ds, &l, &keys, NEW, &foreign);
    for rendering in [
        render_text(&p, false),
        render_text(&p, true),
        render_json(&p),
        render_markdown(&p),
    ] {
        assert!(!rendering.contains(secret), "secret leaked: {rendering}");
        assert!(!rendering.contains("previous key"));
        // Only the renderer's own colour (SGR) sequences may carry an ESC: the
        // one in the stage name must arrive escaped.
        let without_colour = strip_sgr(&rendering);
        assert!(
            !without_colour.contains('\u{1b}'),
            "raw escape: {without_colour:?}"
        );
    }
    p
}

#[test]
fn text_rendering_of_every_kind_of_entry() {
    let text = render_text(&every_kind_of_entry(), false);
    assert!(!text.contains('\u{1b}'), "no colour unless asked");
    insta::assert_snapshot!(text);
}

#[test]
fn coloured_text_differs_only_by_ansi_styles() {
    let p = every_kind_of_entry();
    let coloured = render_text(&p, true);
    assert!(coloured.contains("\u{1b}["));
    // Strip SGR sequences: what remains is the plain rendering.
    let mut plain = String::new();
    let mut chars = coloured.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    assert_eq!(plain, render_text(&p, false));
}

#[test]
fn json_rendering_of_every_kind_of_entry() {
    let json = render_json(&every_kind_of_entry());
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(parsed["format_version"], JSON_FORMAT_VERSION);
    insta::assert_snapshot!(json);
}

#[test]
fn markdown_rendering_of_every_kind_of_entry() {
    insta::assert_snapshot!(render_markdown(&every_kind_of_entry()));
}

/// The numbers in the last paragraph of a cut Markdown plan: left out, of.
fn left_out_counts(markdown: &str) -> (usize, usize) {
    let last = markdown.lines().last().expect("a last line");
    let counts = last
        .strip_prefix("**")
        .and_then(|rest| rest.split(" entries left out**").next())
        .expect(last);
    let (left, total) = counts.split_once(" of ").expect(counts);
    (left.parse().expect(left), total.parse().expect(total))
}

#[test]
fn markdown_folds_each_diff_and_shows_whole_plans_whole() {
    let p = every_kind_of_entry();
    let whole = render_markdown(&p);
    assert_eq!(
        whole.matches("<details><summary>+ create <code>").count(),
        2
    );
    assert_eq!(
        whole.matches("<details><summary>~ update <code>").count(),
        5
    );
    assert!(!whole.contains("left out"), "{whole}");
    let exactly = MarkdownFit {
        max_chars: whole.chars().count(),
        ..MarkdownFit::default()
    };
    assert_eq!(render_markdown_fit(&p, &exactly), whole);
}

#[test]
fn markdown_cut_to_fit_keeps_the_summary_and_warnings_and_counts_what_is_left_out() {
    let p = every_kind_of_entry();
    let whole = render_markdown(&p);
    for max_chars in [MarkdownFit::MIN_CHARS, 3_000, whole.chars().count() - 1] {
        let fit = MarkdownFit {
            max_chars,
            full_plan_at: Some("https://ci.example/runs/7".to_owned()),
            plan_file: Some("plan.json".to_owned()),
        };
        let cut = render_markdown_fit(&p, &fit);
        assert!(cut.chars().count() <= max_chars, "{max_chars}: {cut}");
        assert!(cut.starts_with("### stagesync plan\n\n**Plan: 2 to create, 5 to update"));
        for warning in ["(api\\_url)", "(js\\_url)"] {
            let first = cut.find(warning).expect(&cut);
            assert!(first < cut.find("<details>").unwrap_or(cut.len()), "{cut}");
        }
        let shown = cut.matches("<details><summary>+ create").count()
            + cut.matches("<details><summary>~ update").count()
            + cut.matches("**! error**").count();
        let (left, total) = left_out_counts(&cut);
        assert_eq!(total, 9, "{cut}");
        assert_eq!(shown + left, total, "{cut}");
        assert!(
            cut.ends_with(
                "The full plan: https://ci.example/runs/7; the plan file `plan.json` (every entry).\n"
            ),
            "{cut}"
        );
        // However long the plan file's path, the limit holds.
        let deep = MarkdownFit {
            plan_file: Some(format!("{}plan.json", "deep/".repeat(600))),
            ..fit.clone()
        };
        let cut_deep = render_markdown_fit(&p, &deep);
        assert!(cut_deep.chars().count() <= max_chars, "{cut_deep}");
        assert!(
            cut_deep
                .trim_end()
                .ends_with("the plan file `plan.json` (every entry).")
        );
        // Whole entries only: every fence and fold that opens closes.
        assert_eq!(
            cut.matches("<details>").count(),
            cut.matches("</details>").count()
        );
        assert_eq!(cut.matches("```").count() % 2, 0, "{cut}");
    }
}

#[test]
fn a_thousand_creates_fit_in_a_github_comment() {
    let ds: Vec<DesiredStage> = (0..1000)
        .map(|i| desired(&format!("stage-{i:04}"), None))
        .collect();
    let p = run(&ds, &[], &KeyState::default());
    let markdown = render_markdown(&p);
    assert!(markdown.chars().count() <= 65_536, "{}", markdown.len());
    let (left, total) = left_out_counts(&markdown);
    assert_eq!(total, 1000);
    let shown = markdown.matches("<details><summary>+ create").count();
    assert!(shown > 50, "{shown} shown");
    assert_eq!(shown + left, 1000);
    assert!(
        markdown.contains(&format!("({left} creates)")),
        "{markdown}"
    );
    assert!(markdown.contains("`stagesync plan` prints every entry"));
}

#[test]
fn an_empty_plan_renders() {
    let p = run(&[], &[], &KeyState::default());
    assert_eq!(
        render_text(&p, false),
        "Plan: 0 to create, 0 to update, 0 in sync, 0 unmanaged.\n"
    );
    assert!(render_markdown(&p).contains("**Plan: 0 to create"));
}

// ---- no perpetual diffs: plan, apply (a pure model of authentik), plan again ----

/// What authentik stores after a write: trimmed strings, `-0.0` as `0.0`, only
/// the fields the server knows.
fn stored(fields: &StageFields, caps: Capabilities) -> StageFields {
    let mut f = fields.clone().normalized();
    if !crate::kinds::captcha::REQUEST_CONTENT_TYPE.known_by(caps) {
        f.request_content_type = None;
    }
    f
}

/// Applies `plan` to `live` as authentik would, honouring `after`, and checks
/// that no write would break name uniqueness (across `foreign` too).
fn apply_model(
    plan: &Plan,
    live: &mut Vec<LiveStage>,
    keys: &mut KeyState,
    caps: Capabilities,
    foreign: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut done: BTreeSet<Uuid> = BTreeSet::new();
    let mut pending: Vec<&Entry> = plan
        .entries
        .iter()
        .filter(|s| matches!(s.action, Action::Create { .. } | Action::Update { .. }))
        .collect();
    let mut next_uuid = 0xc000_u128;
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for stage in pending {
            if plan.waits_for(stage).is_some_and(|u| !done.contains(&u)) {
                waiting.push(stage);
                continue;
            }
            let write = stage.action.write().expect("filtered above");
            let key = write.secret.as_ref().expect("a captcha write has its key");
            let taken = |name: &str, except: Option<Uuid>, live: &[LiveStage]| {
                foreign.contains_key(name)
                    || live
                        .iter()
                        .any(|l| Some(l.uuid) != except && l.fields.name == name)
            };
            match &stage.action {
                Action::Create { write, .. } => {
                    let Object::CaptchaStage(fields) = &write.object else {
                        panic!("a captcha stage write")
                    };
                    let f = stored(fields, caps);
                    if taken(&f.name, None, live) {
                        return Err(format!("create of taken name {:?}", f.name));
                    }
                    next_uuid += 1;
                    let uuid = Uuid::from_u128(next_uuid);
                    live.push(LiveStage { uuid, fields: f });
                    keys.record(uuid, key);
                }
                Action::Update { uuid, write, .. } => {
                    let Object::CaptchaStage(fields) = &write.object else {
                        panic!("a captcha stage write")
                    };
                    let f = stored(fields, caps);
                    if taken(&f.name, Some(*uuid), live) {
                        return Err(format!("rename to taken name {:?}", f.name));
                    }
                    let target = live
                        .iter_mut()
                        .find(|l| l.uuid == *uuid)
                        .ok_or("update of a stage that is not live")?;
                    target.fields = f;
                    keys.record(*uuid, key);
                    done.insert(*uuid);
                }
                _ => unreachable!("filtered above"),
            }
        }
        if waiting.len() == before {
            return Err("entries wait on each other".into());
        }
        pending = waiting;
    }
    Ok(())
}

const NAMES: [&str; 5] = ["a", "b", "c", "login", "B"];

fn padded_name() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&NAMES[..]),
        prop::sample::select(&["", " ", "\n", "\t "][..]),
        prop::sample::select(&["", " ", " \n"][..]),
    )
        .prop_map(|(n, pre, post)| format!("{pre}{n}{post}"))
}

fn threshold() -> impl Strategy<Value = f64> {
    prop::sample::select(&[0.0, -0.0, 0.5, 1.0, 0.25][..])
}

fn fields(name: impl Strategy<Value = String>) -> impl Strategy<Value = StageFields> {
    (
        name,
        prop::sample::select(&["site", " site ", "other"][..]),
        prop::option::of(prop::sample::select(
            &["https://js.example/a.js", " https://js.example/a.js\n"][..],
        )),
        any::<bool>(),
        threshold(),
        threshold(),
        any::<bool>(),
        prop::option::of(prop::sample::select(
            &["application/json", " application/json "][..],
        )),
    )
        .prop_map(|(name, pk, js, interactive, min, max, err, ct)| {
            let mut f = StageFields::with_defaults(name, pk);
            if let Some(js) = js {
                f.js_url = js.to_owned();
            }
            f.interactive = interactive;
            f.score_min_threshold = min;
            f.score_max_threshold = max;
            f.error_on_invalid_score = err;
            if let Some(ct) = ct {
                f.request_content_type = Some(ct.to_owned());
            }
            f
        })
}

/// Live captcha stages with unique (trimmed) names, as authentik guarantees.
fn live_stages() -> impl Strategy<Value = Vec<LiveStage>> {
    prop::collection::vec(
        (
            fields(prop::sample::select(&NAMES[..]).prop_map(str::to_owned)),
            any::<bool>(),
        ),
        0..5,
    )
    .prop_map(|stages| {
        let mut seen = BTreeSet::new();
        stages
            .into_iter()
            .filter(|(f, _)| seen.insert(f.name.clone()))
            .enumerate()
            .map(|(i, (mut fields, reports_ct))| {
                if !reports_ct {
                    fields.request_content_type = None;
                }
                LiveStage {
                    uuid: Uuid::from_u128(i as u128 + 1),
                    fields,
                }
            })
            .collect()
    })
}

fn desired_stages() -> impl Strategy<Value = Vec<DesiredStage>> {
    prop::collection::vec(
        (
            fields(padded_name()),
            prop::option::of(1u128..8),
            prop::sample::select(&["k1", "k2", " k1\n"][..]),
        ),
        0..5,
    )
    .prop_map(|stages| {
        stages
            .into_iter()
            .enumerate()
            .map(|(i, (fields, uuid, key))| DesiredStage {
                origin: origin(i + 1),
                uuid: uuid.map(Uuid::from_u128),
                fields,
                key_source: KeySource::Env("K".into()),
                private_key: SecretString::from(key),
                guards: None,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn plan_after_apply_is_empty(
        desired in desired_stages(),
        mut live in live_stages(),
        recorded in prop::collection::vec((1u128..8, prop::sample::select(&["k1", "k2"][..])), 0..4),
        foreign_pick in prop::collection::vec(prop::sample::select(&NAMES[..]), 0..2),
        new_server in any::<bool>(),
    ) {
        let caps = if new_server { NEW } else { OLD };
        let mut keys = KeyState::default();
        for (u, k) in recorded {
            keys.record(Uuid::from_u128(u), &SecretString::from(k));
        }
        // Names held by other stage types cannot also be held by a captcha stage.
        let foreign: BTreeMap<String, String> = foreign_pick
            .into_iter()
            .filter(|n| !live.iter().any(|l| l.fields.name == *n))
            .map(|n| (n.to_owned(), "identification".to_owned()))
            .collect();
        let to_check = names_to_check(&desired, &live);
        prop_assert!(foreign.keys().all(|n| to_check.contains(n) || !desired.iter().any(|d| d.fields.name.trim() == n)));

        let first = run_with(&desired, &live, &keys, caps, &foreign);
        let unmanaged_before: Vec<LiveStage> = live
            .iter()
            .filter(|l| first.unmanaged.iter().any(|u| u.uuid == l.uuid))
            .cloned()
            .collect();
        apply_model(&first, &mut live, &mut keys, caps, &foreign)
            .map_err(|e| TestCaseError::fail(format!("{e}\nplan: {first:#?}")))?;

        let second = run_with(&desired, &live, &keys, caps, &foreign);
        for stage in &second.entries {
            prop_assert!(
                matches!(stage.action, Action::InSync { .. } | Action::Error { .. }),
                "perpetual diff: {:?}\nfirst plan: {:#?}", stage, first
            );
        }
        // Errors stay errors (nothing was written for them) and nothing else became one.
        let errors = |p: &Plan| p.entries.iter().filter(|s| matches!(s.action, Action::Error { .. })).map(|s| s.id).collect::<Vec<_>>();
        prop_assert_eq!(errors(&first), errors(&second));
        // Unmanaged stages were never touched.
        for u in &unmanaged_before {
            prop_assert!(live.contains(u));
        }
    }
}

/// `s` without ANSI colour sequences (`ESC [ digits/semicolons m`).
fn strip_sgr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\u{1b}[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        if after[len..].starts_with('m') {
            rest = &after[len + 1..];
        } else {
            out.push_str("\u{1b}[");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A plan with one prune entry of each kind (and one update, so prune entries
/// are seen after the manifests' entries).
fn every_kind_of_prune_entry() -> Plan {
    let l = [live(0xb1, "rec-kept")];
    let mut d = desired("rec-kept", None);
    d.fields.score_min_threshold = 0.7;
    let entry = |n: u128, name: &str, held| Decided {
        kind: Kind::CaptchaStage,
        uuid: Uuid::from_u128(n),
        name: name.to_owned(),
        held,
        guards: Vec::new(),
    };
    let mut p = run(&[d], &l, &known_keys(&l));
    p.add_deletes(vec![
        entry(0xc1, "rec-old", None),
        entry(
            0xc2,
            "rec-login-old",
            Some(Held::InUse {
                users: vec![
                    "bound to flow `default-authentication-flow`".into(),
                    "captcha of identification stage `login-ident`".into(),
                ],
            }),
        ),
        entry(
            0xc3,
            "rec-many",
            Some(Held::Guard {
                reason: "this run would delete 3 stages, more than the --max-deletes 2 allowed; nothing is deleted (pass --max-deletes 3 to allow it)".into(),
            }),
        ),
        entry(0xc4, "rec-\u{1b}[31mred", Some(Held::NotPruned)),
    ]);
    p
}

#[test]
fn prune_entries_render_in_text_json_and_markdown() {
    let p = every_kind_of_prune_entry();
    assert_eq!(
        render::summary_line(&p.summary()),
        "Plan: 0 to create, 1 to update, 0 in sync, 0 unmanaged, 1 to delete, 1 blocked, 1 held back, 1 not pruned."
    );
    assert!(p.has_changes());
    assert!(p.prune_refused());
    let text = render_text(&p, false);
    assert!(!text.contains('\u{1b}'), "names are escaped");
    insta::assert_snapshot!("prune_text", text);
    let json = render_json(&p);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(parsed["summary"]["delete"], 1);
    assert_eq!(parsed["prune"][1]["decision"], "blocked");
    insta::assert_snapshot!("prune_json", json);
    insta::assert_snapshot!("prune_markdown", render_markdown(&p));
}

#[test]
fn pruned_stages_leave_the_unmanaged_list() {
    let l = [live(1, "kept"), live(2, "gone"), live(3, "clicked")];
    let p = run(&[desired("kept", None)], &l, &known_keys(&l));
    assert_eq!(p.unmanaged.len(), 2);
    let mut p = p;
    p.add_deletes(vec![Decided {
        kind: Kind::CaptchaStage,
        uuid: Uuid::from_u128(2),
        name: "gone".into(),
        held: Some(Held::NotPruned),
        guards: Vec::new(),
    }]);
    assert_eq!(
        p.unmanaged
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["clicked"]
    );
    assert!(!p.has_changes(), "not pruned is no change");
    assert!(!p.prune_refused());
}

#[test]
fn a_stage_type_named_by_its_verbose_name_reads_as_one_kind_of_stage() {
    let ds = [desired("login", None), desired("mail", None)];
    let foreign = BTreeMap::from([
        ("login".to_owned(), "Identification Stage".to_owned()),
        ("mail".to_owned(), "Email Stage".to_owned()),
    ]);
    let p = run_with(&ds, &[], &KeyState::default(), NEW, &foreign);
    assert_eq!(
        error_message(&p.entries[0]),
        "name \"login\" is already used by an identification stage; stage names are unique across all stage types"
    );
    assert!(
        error_message(&p.entries[1]).contains("used by an email stage;"),
        "{}",
        error_message(&p.entries[1])
    );
}
