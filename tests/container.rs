//! The container image (`container/build`) run as a user would run it: its
//! `--version`, the demo with a tmpfs `/tmp`, and `plan` and `apply` from
//! inside the container against the simulator on the host, the manifests
//! mounted read-only and the token and key mounted as files.
//!
//! Runs when `STAGESYNC_IMAGE_ARCHIVE` names the OCI archive to test
//! (`container/test` sets it, with buildah's configuration); without it, it
//! prints `skipped` and passes, as `cargo test` on a machine without buildah.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stagesync::kinds::captcha::StageFields;
use support::cli::{TOKEN, start_sim};

/// A buildah working container made from the image, removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn from_archive(archive: &str) -> Container {
        let out = buildah(&["from", "--quiet", &format!("oci-archive:{archive}")]);
        assert!(out.status.success(), "buildah from: {}", text(&out.stderr));
        Container {
            name: text(&out.stdout).trim().to_owned(),
        }
    }

    /// Runs `stagesync ARGS` in the container, on the host's network, with
    /// `extra` buildah flags (mounts, environment).
    fn stagesync(&self, extra: &[String], args: &[&str]) -> Output {
        let mut cmd: Vec<String> = vec!["run".into(), "--network".into(), "host".into()];
        cmd.extend(extra.iter().cloned());
        cmd.push(self.name.clone());
        cmd.push("--".into());
        cmd.push("/usr/local/bin/stagesync".into());
        cmd.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        buildah(&refs)
    }

    fn config(&self, format: &str) -> String {
        let out = buildah(&["inspect", "--format", format, &self.name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah(&["rm", &self.name]);
    }
}

fn buildah(args: &[&str]) -> Output {
    Command::new("buildah")
        .args(args)
        .output()
        .expect("buildah runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory the container's user (65532) can read: temp dirs are 0700.
fn readable_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn readable_file(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn archive() -> Option<String> {
    let archive = std::env::var("STAGESYNC_IMAGE_ARCHIVE").ok();
    if archive.is_none() {
        eprintln!("skipped: STAGESYNC_IMAGE_ARCHIVE is not set (container/test sets it)");
    }
    archive
}

#[test]
fn the_image_is_small_static_non_root_and_shell_less() {
    let Some(archive) = archive() else { return };
    let size = std::fs::metadata(&archive).expect("archive").len();
    assert!(size < 20_000_000, "{archive} is {size} bytes");

    let ctr = Container::from_archive(&archive);
    assert_eq!(ctr.config("{{.OCIv1.Config.User}}"), "65532:65532");
    let env = ctr.config("{{.OCIv1.Config.Env}}");
    assert!(env.contains("HOME=/home/stagesync"), "{env}");

    let out = ctr.stagesync(&[], &["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    assert!(
        version.starts_with(concat!(
            "stagesync ",
            env!("CARGO_PKG_VERSION"),
            "\ncommit "
        )),
        "{version}"
    );
    assert!(version.contains("authentik 2025.12 and later"), "{version}");

    // No shell to run anything else with.
    let mut args = vec!["run", &ctr.name, "--", "/bin/sh", "-c", "true"];
    let out = buildah(&args);
    assert!(!out.status.success(), "a shell ran: {}", text(&out.stdout));
    args[3] = "/usr/bin/env";
    assert!(!buildah(&args).status.success(), "an env binary ran");
}

#[test]
fn the_demo_runs_in_the_image_with_a_tmpfs_tmp() {
    let Some(archive) = archive() else { return };
    let ctr = Container::from_archive(&archive);
    let tmpfs = vec![
        "--mount".to_owned(),
        "type=tmpfs,destination=/tmp".to_owned(),
    ];
    let out = ctr.stagesync(&tmpfs, &["demo", "--no-daemon", "--color", "never"]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("using the demo's own example manifests, written to /tmp/stagesync-demo-"),
        "{stderr}"
    );
    for line in [
        "Plan: 2 to create, 1 to update, 1 in sync, 1 unmanaged, 1 blocked.",
        "Apply: 2 created, 1 updated, 0 failed.",
        "Plan: 0 to create, 0 to update, 4 in sync, 1 unmanaged, 1 blocked.",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_and_apply_run_in_the_image_against_authentik_on_the_host() {
    let Some(archive) = archive() else { return };
    let sim = start_sim().await;
    let drifted = StageFields {
        score_min_threshold: 0.1,
        ..StageFields::with_defaults("login", "site-key")
    };
    let uuid = sim.seed_captcha(drifted, "old-key");

    let host = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let stages = readable_dir(host.path(), "stages");
    readable_file(
        &stages.join("login.yaml"),
        "name: login\npublic_key: site-key\nprivate_key: !File /run/secrets/captcha/login-key\nscore_min_threshold: 0.7\n",
    );
    let keys = readable_dir(host.path(), "captcha");
    let key = "container-key-3b8e51d0";
    readable_file(&keys.join("login-key"), key);
    let authentik = readable_dir(host.path(), "authentik");
    readable_file(&authentik.join("token"), TOKEN);

    // The host's simulator by name: the static binary resolves `localhost`
    // through the container's /etc/hosts.
    let url = format!("http://localhost:{}", sim.addr().port());
    let flags: Vec<String> = [
        "--volume",
        &format!("{}:/stages:ro", stages.display()),
        "--volume",
        &format!("{}:/run/secrets/captcha:ro", keys.display()),
        "--volume",
        &format!("{}:/run/secrets/authentik:ro", authentik.display()),
        "--env",
        &format!("AUTHENTIK_URL={url}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let connection = [
        "--token-file",
        "/run/secrets/authentik/token",
        "--secrets-dir",
        "/run/secrets/captcha",
        "--color",
        "never",
    ];

    let ctr = Container::from_archive(&archive);
    // The simulator answers on this runtime's other threads meanwhile.
    let run = |args: Vec<&str>| tokio::task::block_in_place(|| ctr.stagesync(&flags, &args));
    let with = |cmd: &[&'static str]| -> Vec<&'static str> {
        let mut all = cmd.to_vec();
        all.extend(connection);
        all.push("/stages");
        all
    };

    let plan = run(with(&["plan"]));
    let (stdout, stderr) = (text(&plan.stdout), text(&plan.stderr));
    assert_eq!(plan.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("~ update login (/stages/login.yaml:1)"),
        "{stdout}"
    );
    assert!(stdout.contains("-score_min_threshold: 0.1"), "{stdout}");
    assert!(
        stdout.contains("from !File /run/secrets/captcha/login-key"),
        "{stdout}"
    );

    let apply = run(with(&["apply", "--yes"]));
    let (stdout2, stderr2) = (text(&apply.stdout), text(&apply.stderr));
    assert_eq!(apply.status.code(), Some(0), "{stdout2}\n{stderr2}");
    assert!(
        stdout2.contains("Apply: 0 created, 1 updated, 0 failed."),
        "{stdout2}"
    );
    let live = sim
        .captcha_stages()
        .into_iter()
        .find(|s| s.uuid == uuid)
        .expect("the stage");
    assert_eq!(live.fields.score_min_threshold, 0.7);
    assert_eq!(sim.private_key_of(uuid).as_deref(), Some(key));

    // The state file in the image's state directory says the key is written.
    let again = run(with(&["plan"]));
    let stdout3 = text(&again.stdout);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{stdout3}\n{}",
        text(&again.stderr)
    );
    assert!(stdout3.contains("= in sync login"), "{stdout3}");

    // Not root: the image's root is not writable, its user's HOME is.
    let denied = run(with(&["plan", "--out", "/plan.json"]));
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied.stdout));
    assert!(
        text(&denied.stderr).contains("cannot write the plan file /plan.json"),
        "{}",
        text(&denied.stderr)
    );
    let home = run(with(&["plan", "--out", "/home/stagesync/plan.json"]));
    assert_eq!(home.status.code(), Some(0), "{}", text(&home.stderr));

    for output in [&stdout, &stderr, &stdout2, &stderr2, &stdout3] {
        assert!(!output.contains(key), "the key leaked: {output}");
        assert!(!output.contains(TOKEN), "the token leaked: {output}");
    }
    // Read-only: nothing written into the mounted manifests.
    assert_eq!(std::fs::read_dir(&stages).expect("stages").count(), 1);
}
