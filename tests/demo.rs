//! `stagesync demo`: the README's first command works with no setup.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

/// A temp dir with a copy of the repository's `stages/`.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let stages = Path::new(env!("CARGO_MANIFEST_DIR")).join("stages");
    std::fs::create_dir(dir.path().join("stages")).expect("mkdir");
    for entry in std::fs::read_dir(stages).expect("stages/") {
        let entry = entry.expect("entry");
        std::fs::copy(
            entry.path(),
            dir.path().join("stages").join(entry.file_name()),
        )
        .expect("copy");
    }
    dir
}

fn demo(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("stagesync").expect("binary");
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("AUTHENTIK_URL")
        .env_remove("AUTHENTIK_TOKEN")
        .env_remove("RECAPTCHA_SECRET_KEY")
        .env_remove("HCAPTCHA_SECRET_KEY")
        .env_remove("TURNSTILE_SECRET_KEY");
    cmd
}

#[test]
fn demo_plans_applies_and_ends_in_sync_without_any_setup() {
    let ws = workspace();
    let out = demo(ws.path())
        .args(["demo", "--no-daemon"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let first = stdout
        .find("Plan: 1 to create, 1 to update, 1 in sync, 1 unmanaged, 1 blocked.")
        .expect(&stdout);
    let applied = stdout
        .find("Apply: 1 created, 1 updated, 0 failed.")
        .expect(&stdout);
    let last = stdout
        .find("Plan: 0 to create, 0 to update, 3 in sync, 1 unmanaged, 1 blocked.")
        .expect(&stdout);
    let verified = stdout
        .find("3 keys checked: 2 valid, 1 invalid, 0 mismatched, 0 unknown")
        .expect(&stdout);
    assert!(
        first < applied && applied < last && last < verified,
        "plan, apply, empty plan, verify in that order:\n{stdout}"
    );
    let bad = stdout
        .lines()
        .find(|l| {
            l.split_whitespace().nth(1) == Some("recovery-turnstile") && l.contains("siteverify:")
        })
        .expect(&stdout);
    assert!(bad.starts_with("invalid "), "{bad}");
    assert!(bad.contains("invalid-input-secret"), "{bad}");
    // The checks go to the demo's own provider on loopback, never to the
    // providers the shipped manifests name, and the demo says so.
    let provider = stderr
        .lines()
        .find(|l| {
            l.starts_with("demo: key checks go to a fake captcha provider on http://127.0.0.1:")
        })
        .expect(&stderr);
    let url = provider.split_whitespace().nth(10).expect(provider);
    for line in stdout.lines().filter(|l| l.contains("siteverify:")) {
        assert!(line.contains(&format!("{url}:")), "{line} is not {url}");
    }
    // The stage whose manifest is gone stays: a login flow still uses it.
    assert!(
        stdout.contains("! blocked old-login-captcha")
            && stdout.contains("bound to flow `default-authentication-flow`")
            && stdout.contains(
                "captcha of identification stage `default-authentication-identification`"
            ),
        "{stdout}"
    );
    assert!(
        stderr.contains("demo: set RECAPTCHA_SECRET_KEY to a demo value"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("demo-secret-"),
        "demo keys are secrets too"
    );
}

/// Names of what `dir` holds, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn demo_works_from_an_empty_directory_with_its_own_manifests_and_leaves_nothing() {
    let cwd = tempfile::tempdir().expect("cwd");
    let tmp = tempfile::tempdir().expect("TMPDIR");
    let out = demo(cwd.path())
        .env("TMPDIR", tmp.path())
        .args(["demo", "--no-daemon"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // It says where its manifests are, and they are where it says.
    let line = stderr
        .lines()
        .find(|l| {
            l.starts_with(
                "demo: no stages here: using the demo's own example manifests, written to ",
            )
        })
        .expect(&stderr);
    let written = line
        .split("written to ")
        .nth(1)
        .and_then(|rest| rest.split(" (removed").next())
        .expect(line);
    assert!(
        written.starts_with(&tmp.path().display().to_string()) && written.ends_with("/stages"),
        "{written}"
    );
    assert!(
        stdout.contains(&format!(
            "~ update login-recaptcha-v3 ({written}/recaptcha-v3.yaml:4)"
        )),
        "{stdout}"
    );
    for summary in [
        "Plan: 1 to create, 1 to update, 1 in sync, 1 unmanaged, 1 blocked.",
        "Apply: 1 created, 1 updated, 0 failed.",
        "Plan: 0 to create, 0 to update, 3 in sync, 1 unmanaged, 1 blocked.",
        "3 keys checked: 2 valid, 1 invalid, 0 mismatched, 0 unknown",
    ] {
        assert!(stdout.contains(summary), "{summary}\n{stdout}");
    }
    // Nothing written where it ran; its temporary files are gone.
    assert!(listing(cwd.path()).is_empty(), "{:?}", listing(cwd.path()));
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn demo_dir_uses_the_given_manifests_and_leaves_them_as_they_were() {
    let ws = workspace();
    let mine = ws.path().join("mine");
    std::fs::rename(ws.path().join("stages"), &mine).expect("rename");
    let before: Vec<String> = listing(&mine)
        .iter()
        .map(|f| std::fs::read_to_string(mine.join(f)).expect("read"))
        .collect();
    let out = demo(ws.path())
        .args(["demo", "--no-daemon", "--dir", "mine"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("own example manifests"), "{stderr}");
    assert!(
        stdout.contains("~ update login-recaptcha-v3 (mine/recaptcha-v3.yaml:4)"),
        "{stdout}"
    );
    let after: Vec<String> = listing(&mine)
        .iter()
        .map(|f| std::fs::read_to_string(mine.join(f)).expect("read"))
        .collect();
    assert_eq!(before, after, "the demo edits nothing of the user's");
    assert_eq!(listing(ws.path()), ["mine"]);

    // A directory that does not exist is an error, not the examples.
    let out = demo(ws.path())
        .args(["demo", "--no-daemon", "--dir", "absent"])
        .output()
        .expect("demo runs");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_keeps_running_the_daemon_until_interrupted() {
    // From an empty directory: the temporary manifests go on Ctrl-C too.
    let cwd = tempfile::tempdir().expect("cwd");
    let tmp = tempfile::tempdir().expect("TMPDIR");
    let mut child = demo(cwd.path())
        .env("TMPDIR", tmp.path())
        .args(["demo", "--listen", "off"])
        // The first pass's DEBUG line says the daemon (and its signal handling) is up.
        .env("RUST_LOG", "stagesync=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut started = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("reconcile finished") => {
                started = true;
                break;
            }
            _ => {}
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(started, "the daemon phase started");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Ctrl-C ends the demo cleanly"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    assert!(listing(cwd.path()).is_empty(), "{:?}", listing(cwd.path()));
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
