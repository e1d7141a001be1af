//! Black-box tests of the `guards:` key of a captcha stage's manifest
//! through `stagesync validate`: what a valid list holds, and each error
//! named at its file, line and field (both places when two disagree).

use support::validate::validate_in;

const HEAD: &str = "name: login\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\n";

/// `stagesync validate` of one directory `stages/` holding `files`.
fn validate(files: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("stages").join(name), text).unwrap();
    }
    let (code, stdout, stderr) = validate_in(dir.path(), "stages");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("fixture-secret-value"), "{stdout}");
    (code, stdout)
}

#[test]
fn flows_with_options_identification_stages_and_an_empty_list_are_valid() {
    let full = format!(
        "{HEAD}guards:\n  - flow: default-authentication-flow\n    order: 15\n    evaluate_on_plan: true\n    re_evaluate_policies: false\n    policy_engine_mode: all\n    invalid_response_action: restart_with_context\n  - flow: default-enrollment-flow\n    order: 5\n  - identification_stage: default-authentication-identification\n"
    );
    let empty = "name: other\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\nguards: []\n";
    let (code, stdout) = validate(&[("a.yaml", &full), ("b.yaml", empty)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("0 errors"), "{stdout}");
}

#[test]
fn each_broken_item_is_an_error_at_its_line() {
    let text = format!(
        "{HEAD}guards:\n  - flow: default-authentication-flow\n  - identification_stage: ident\n    order: 3\n  - flow: f\n    identification_stage: i\n    order: 1\n  - {{}}\n  - flow: g\n    order: ten\n  - flow: h\n    order: 1\n    policy_engine_mode: most\n  - flw: typo\n  - just-a-string\n  - flow: Login Flow\n    order: 1\n"
    );
    let (code, stdout) = validate(&[("a.yaml", &text)]);
    assert_eq!(code, 3, "{stdout}");
    for expected in [
        "stages/a.yaml:5:5: error: `order` is required for a flow",
        "stages/a.yaml:7:12: error: `order` belongs to a flow binding; an identification stage has none",
        "stages/a.yaml:9:27: error: a guard is a `flow` or an `identification_stage`, not both",
        "stages/a.yaml:11:5: error: a guard names a `flow` (by slug) or an `identification_stage` (by name)",
        "stages/a.yaml:13:12: error: `order` must be an integer",
        "stages/a.yaml:16:25: error: `policy_engine_mode` must be one of `all`, `any`",
        "stages/a.yaml:17:5: error: unknown key `flw`; did you mean `flow`?",
        "stages/a.yaml:18:5: error: a guard must be a mapping (`flow:` with `order:`, or `identification_stage:`), found a string",
        "stages/a.yaml:19:11: error: `flow` is a flow's slug: letters, digits, `-` and `_` only",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn guards_that_are_not_a_list_are_an_error_that_says_how_to_guard_nothing() {
    let (code, stdout) = validate(&[("a.yaml", &format!("{HEAD}guards:\n"))]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains(
            "stages/a.yaml:4:7: error: `guards` must be a list of guards, found null (write `guards: []` for a stage that guards nothing)"
        ),
        "{stdout}"
    );
}

#[test]
fn one_flow_twice_in_a_list_names_both_places() {
    let text = format!(
        "{HEAD}guards:\n  - flow: login\n    order: 10\n  - identification_stage: ident\n  - flow: login\n    order: 30\n"
    );
    let (code, stdout) = validate(&[("a.yaml", &text)]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains(
            "stages/a.yaml:8:5: error: flow login is guarded twice in this list (first at line 5, column 5)"
        ),
        "{stdout}"
    );
}

#[test]
fn two_manifests_claiming_one_identification_stage_name_each_other() {
    let a =
        format!("{HEAD}guards:\n  - identification_stage: default-authentication-identification\n");
    let b = "name: second\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\nguards:\n  - flow: x\n    order: 1\n  - identification_stage: default-authentication-identification\n";
    let (code, stdout) = validate(&[("a.yaml", &a), ("b.yaml", b)]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains(
            "stages/a.yaml:5:5: error: identification stage `default-authentication-identification` (it embeds one captcha) is also declared at stages/b.yaml:7:5"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "stages/b.yaml:7:5: error: identification stage `default-authentication-identification` (it embeds one captcha) is also declared at stages/a.yaml:5:5"
        ),
        "{stdout}"
    );
}
