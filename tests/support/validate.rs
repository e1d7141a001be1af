//! Runs `stagesync validate` on fixture directories and captures the outcome.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// `tests/fixtures/manifests`, one directory per case.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/manifests")
}

/// Exit code, stdout and stderr of `stagesync validate <dir>` run in `cwd`,
/// with `TEST_CAPTCHA_SECRET` set and `TEST_CAPTCHA_UNSET_VARIABLE` unset.
pub fn validate_in(cwd: &Path, dir: &str) -> (i32, String, String) {
    let output = Command::cargo_bin("stagesync")
        .expect("binary built")
        .current_dir(cwd)
        .env("TEST_CAPTCHA_SECRET", "fixture-secret-value")
        .env_remove("TEST_CAPTCHA_UNSET_VARIABLE")
        .env_remove("RUST_LOG")
        .args(["validate", dir])
        .timeout(std::time::Duration::from_secs(10))
        .output()
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The snapshot text: exit code, then stdout.
pub fn report(code: i32, stdout: &str) -> String {
    format!("exit {code}\n{stdout}")
}
