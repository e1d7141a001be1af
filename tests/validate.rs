//! Black-box tests of `stagesync validate`: one fixture directory per error
//! class, the exact report snapshotted, the exit code asserted.

use std::time::{Duration, Instant};

use support::validate::{fixtures, report, validate_in};

fn check(case: &str, expected_code: i32) -> String {
    let started = Instant::now();
    let (code, stdout, stderr) = validate_in(&fixtures(), case);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{case} took {:?}",
        started.elapsed()
    );
    assert_eq!(
        code, expected_code,
        "{case}: stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("fixture-secret-value"),
        "{case} leaked a secret"
    );
    assert!(!stderr.contains("panicked"), "{case} panicked: {stderr}");
    report(code, &stdout)
}

macro_rules! case {
    ($test:ident, $dir:literal, $code:expr) => {
        #[test]
        fn $test() {
            insta::assert_snapshot!($dir, check($dir, $code));
        }
    };
}

case!(valid_full, "valid-full", 0);
case!(valid_minimal, "valid-minimal", 0);
case!(valid_multi_document, "valid-multi-document", 0);
case!(empty_and_comment_only_files_are_valid, "valid-empty", 0);
case!(nested_folders_found_hidden_ignored, "valid-nested", 0);
case!(file_secret_relative_to_manifest, "valid-file-secret", 0);
case!(literal_private_key_warns_only, "warning-literal-key", 0);
case!(unknown_key_suggests, "unknown-key", 3);
case!(wrong_type, "wrong-type", 3);
case!(duplicate_key, "duplicate-key", 3);
case!(empty_required_string, "empty-required", 3);
case!(missing_required_key, "missing-required", 3);
case!(malformed_uuid, "bad-uuid", 3);
case!(non_finite_number, "non-finite", 3);
case!(min_above_max, "min-above-max", 3);
case!(url_not_absolute_http, "bad-url", 3);
case!(unknown_request_content_type, "bad-content-type", 3);
case!(duplicate_name_across_files, "duplicate-name", 3);
case!(duplicate_uuid_across_files, "duplicate-uuid", 3);
case!(unknown_tag, "unknown-tag", 3);
case!(top_level_not_a_mapping, "top-level-not-mapping", 3);
case!(unset_environment_variable, "unset-env", 3);
case!(empty_secret_file, "empty-secret-file", 3);
case!(missing_secret_file, "missing-secret-file", 3);
case!(yaml_syntax_error, "syntax-error", 3);
case!(invalid_utf8, "invalid-utf8", 3);
case!(alias_bomb, "alias-bomb", 3);
case!(absurd_nesting, "deep-nesting", 3);
case!(control_characters_escaped, "escape-sequences", 3);

#[test]
fn the_shipped_stages_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(root)
        .env("RECAPTCHA_SECRET_KEY", "r")
        .env("HCAPTCHA_SECRET_KEY", "h")
        .env("TURNSTILE_SECRET_KEY", "t")
        .arg("validate")
        .output()
        .unwrap();
    insta::assert_snapshot!(
        "shipped-stages",
        report(
            output.status.code().unwrap_or(-1),
            &String::from_utf8_lossy(&output.stdout)
        )
    );
}

#[test]
fn a_file_over_one_mib_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    let big = format!("# {}\n", "x".repeat(1024 * 1024));
    std::fs::write(dir.path().join("stages/big.yaml"), big).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    insta::assert_snapshot!("too-large", report(code, &stdout));
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_is_reported_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(stages.join("sub")).unwrap();
    std::fs::write(
        stages.join("sub/a.yaml"),
        "name: a\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..", stages.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("self.yaml", stages.join("self.yaml")).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    insta::assert_snapshot!("symlink-loop", report(code, &stdout));
}

#[cfg(unix)]
#[test]
fn symlinked_files_and_folders_are_followed_like_a_configmap_mount() {
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir_all(stages.join("..2026_11_28/nested")).unwrap();
    std::fs::write(
        stages.join("..2026_11_28/a.yaml"),
        "name: a\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\n",
    )
    .unwrap();
    std::fs::write(
        stages.join("..2026_11_28/nested/b.yaml"),
        "name: b\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_28", stages.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/a.yaml", stages.join("a.yaml")).unwrap();
    std::os::unix::fs::symlink("..data/nested", stages.join("nested")).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    insta::assert_snapshot!("configmap-mount", report(code, &stdout));
}

#[test]
fn a_missing_directory_is_an_error_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = validate_in(dir.path(), "nowhere");
    assert_eq!(code, 3);
    assert_eq!(stdout, "");
    assert_eq!(stderr, "error: nowhere: manifest directory not found\n");
}

#[test]
fn the_default_directory_is_stages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    std::fs::write(dir.path().join("stages/a.yaml"), "name: [").unwrap();
    let output = assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("stages/a.yaml:"));
}

#[cfg(unix)]
#[test]
fn a_symlink_to_the_file_system_root_is_not_walked() {
    // Symlinks are followed only within the manifest directory: `/` is not
    // walked, and the set is invalid (what lies behind the link is unknown).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    std::os::unix::fs::symlink("/", dir.path().join("stages/root")).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 3);
    assert_eq!(
        stdout,
        "stages/root: error: a symlink leads outside the manifest directory; not followed (only links that stay inside are)\n\
         1 error, 0 warnings in 0 files (0 stages)\n"
    );
}

#[test]
fn a_flood_of_problems_stops_after_one_hundred_per_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    let text: String = (0..5_000).map(|i| format!("name: s{i}\n---\n")).collect();
    std::fs::write(dir.path().join("stages/flood.yaml"), text).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 3);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 102, "{stdout}");
    insta::assert_snapshot!("problem-flood-tail", lines[99..].join("\n"));
}

#[test]
fn many_warnings_do_not_stop_the_check_or_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    // 150 valid stages, each with a literal key (a warning), then one error.
    let mut text: String = (0..150)
        .map(|i| format!("name: s{i}\npublic_key: p\nprivate_key: literal\n---\n"))
        .collect();
    text.push_str("name: last\npublic_key: p\nprivate_key: !Env\n");
    std::fs::write(dir.path().join("stages/many.yaml"), &text).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(
        code, 3,
        "the error after the 100th warning is still found: {stdout}"
    );
    assert!(stdout.contains("50 more warnings not shown"), "{stdout}");

    // Without that last document: warnings only, so valid.
    text.truncate(text.rfind("name: last").unwrap());
    std::fs::write(dir.path().join("stages/many.yaml"), &text).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("50 more warnings not shown") && stdout.contains("0 errors"),
        "{stdout}"
    );
}

#[test]
fn colour_marks_only_the_severity_and_file_escapes_stay_escaped() {
    let output = assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(fixtures())
        .env("TEST_CAPTCHA_SECRET", "s")
        .args(["--color", "always", "validate", "escape-sequences"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3));
    assert!(stdout.starts_with("escape-sequences/stage.yaml:4:1: \u{1b}[1m\u{1b}[31merror\u{1b}[0m: unknown key `\\u{1b}[31mred\\u{1b}[0m`"), "{stdout}");
    assert_eq!(stdout.matches('\u{1b}').count(), 3, "{stdout}");
}

#[test]
fn every_copy_of_a_duplicate_name_names_the_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    let doc = "name: x\npublic_key: p\nprivate_key: literal\n";
    std::fs::write(dir.path().join("stages/a.yaml"), [doc; 3].join("---\n")).unwrap();
    std::fs::write(dir.path().join("stages/b.yaml"), [doc; 3].join("---\n")).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 3);
    assert!(
        stdout.contains(
            "stages/a.yaml:1:1: error: stage name `x` is also declared at stages/a.yaml:5:1, stages/a.yaml:9:1, stages/b.yaml:1:1 and 2 more"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "stages/b.yaml:9:1: error: stage name `x` is also declared at stages/a.yaml:1:1, stages/a.yaml:5:1, stages/a.yaml:9:1 and 2 more"
        ),
        "{stdout}"
    );
}

#[cfg(unix)]
#[test]
fn a_folder_that_cannot_be_read_makes_the_set_invalid_not_smaller() {
    // A folder behind a symlink that leads nowhere (not mounted yet): its
    // manifests are unknown, so the set is not complete (prune must not take
    // its stages for removed).
    let dir = tempfile::tempdir().unwrap();
    let stages = dir.path().join("stages");
    std::fs::create_dir(&stages).unwrap();
    std::fs::write(
        stages.join("a.yaml"),
        "name: a\npublic_key: p\nprivate_key: !Env TEST_CAPTCHA_SECRET\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("mounts/team-a", stages.join("team-a")).unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("stages/team-a: error: cannot read:"),
        "{stdout}"
    );
}

#[test]
fn an_endless_env_name_or_file_path_is_refused_without_being_echoed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stages")).unwrap();
    let long = "A".repeat(100_000);
    std::fs::write(
        dir.path().join("stages/env.yaml"),
        format!("name: a\npublic_key: p\nprivate_key: !Env {long}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stages/file.yaml"),
        format!("name: b\npublic_key: p\nprivate_key: !File {long}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stages/tag.yaml"),
        format!("name: c\npublic_key: p\nprivate_key: !{long} x\n"),
    )
    .unwrap();
    let (code, stdout, _) = validate_in(dir.path(), "stages");
    assert_eq!(code, 3);
    assert!(
        stdout.contains(
            "stages/env.yaml:3:19: error: `!Env` names a variable of 100000 characters; at most 255 are accepted"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "stages/file.yaml:3:20: error: `!File` names a path of 100000 bytes; at most 4096 are accepted"
        ),
        "{stdout}"
    );
    // Any other message quoting the manifest is cut.
    assert!(stdout.contains("more characters)"), "{stdout}");
    assert!(stdout.len() < 4_000, "{} bytes of output", stdout.len());
}
