//! `stagesync --version`: which build this is, and which authentik it knows.

use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

fn version(flag: &str) -> String {
    let out = Command::cargo_bin("stagesync")
        .expect("binary")
        .arg(flag)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn version_names_the_release_the_commit_and_the_authentik_versions() {
    let text = version("--version");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(concat!("stagesync ", env!("CARGO_PKG_VERSION")))
    );
    // The test is built from the same sources, by the same build script, as
    // the binary: when they are a git checkout, both know its HEAD.
    let commit = lines.next().expect(&text);
    let built_from = option_env!("STAGESYNC_GIT_COMMIT");
    match built_from {
        Some(built_from) => assert_eq!(commit, format!("commit {built_from}")),
        None => assert_eq!(commit, "commit unknown (not built from a git checkout)"),
    }
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let (Some(built_from), Some(head)) = (built_from, head) {
        assert_eq!(built_from, head, "a checkout's commit");
    }
    assert_eq!(
        lines.next(),
        Some("authentik 2025.12 and later; captcha stage request_content_type from 2026.8"),
        "{text}"
    );
    assert_eq!(lines.next(), None, "{text}");
}

#[test]
fn short_version_is_one_line() {
    assert_eq!(
        version("-V"),
        concat!("stagesync ", env!("CARGO_PKG_VERSION"), "\n")
    );
}
