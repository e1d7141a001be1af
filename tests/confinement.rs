//! The file system as an attacker with write access to the manifest directory
//! uses it: a folder swapped for a symlink while `!File` keys are read, links
//! out of the directory (to a key, to a manifest-shaped file, to
//! `/proc/self/environ`), stagesync's own token and state files named as keys,
//! and a FIFO given where a plan file is expected. The real binary, each time;
//! nothing outside the manifest directory (or a `--secrets-dir`) is read, and
//! what is refused reads the same whether it exists or not.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cli::{TOKEN, Workspace, run, start_sim, stderr, stdout};

const HCAPTCHA: &str =
    "js_url: https://js.hcaptcha.com/1/api.js\napi_url: https://api.hcaptcha.com/siteverify\n";

/// A manifest for stage `name` whose key is `!File path`.
fn file_key_stage(name: &str, path: &str) -> String {
    format!("name: {name}\npublic_key: site-key\nprivate_key: !File {path}\n{HCAPTCHA}")
}

/// `stagesync validate stages` in `ws`, with nothing of the caller's
/// environment that widens the policy.
fn validate(ws: &Workspace) -> std::process::Output {
    assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(ws.root.path())
        .env_remove("STAGESYNC_SECRETS_DIRS")
        .env_remove("STAGESYNC_ENV_ALLOW")
        .env("STAGESYNC_STATE_FILE", ws.state_file())
        .env("NO_COLOR", "1")
        .args(["validate", "stages"])
        .output()
        .unwrap()
}

/// Swaps two paths in one step, as `renameat2(RENAME_EXCHANGE)` does: each
/// name is always there, naming one or the other.
fn exchange(a: &Path, b: &Path) {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(done, 0, "renameat2: {}", std::io::Error::last_os_error());
}

#[test]
fn a_folder_swapped_for_a_symlink_during_validate_never_leads_a_read_outside() {
    // `stages/sub` is a folder holding the key; `swap` is a symlink to a
    // folder outside whose `key` is empty (so reading it says "is empty") and
    // whose `big` is over the size limit. A thread exchanges the two without
    // pause while validate reads `!File sub/key` and `!File sub/big` fifty
    // times per run.
    let ws = Workspace::new();
    let root = ws.root.path();
    std::fs::create_dir_all(ws.stages().join("sub")).unwrap();
    std::fs::write(ws.stages().join("sub/key"), "inside-key-7d1e\n").unwrap();
    std::fs::write(ws.stages().join("sub/big"), "inside-key-big\n").unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("outside/key"), "").unwrap();
    std::fs::write(root.join("outside/big"), vec![b'x'; 2 * 1024 * 1024]).unwrap();
    std::os::unix::fs::symlink(root.join("outside"), root.join("swap")).unwrap();
    let manifest: Vec<String> = (0..50)
        .map(|i| {
            let file = if i % 2 == 0 { "sub/key" } else { "sub/big" };
            file_key_stage(&format!("s{i}"), file)
        })
        .collect();
    ws.write("a.yaml", &manifest.join("---\n"));

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (a, b) = (ws.stages().join("sub"), root.join("swap"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&a, &b);
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    let (mut runs, mut read_inside, mut refused) = (0, 0, 0);
    let mut leaks = Vec::new();
    while runs < 40 && started.elapsed() < Duration::from_secs(20) {
        let out = validate(&ws);
        let report = stdout(&out);
        runs += 1;
        for line in report.lines().filter(|l| l.contains("stages/a.yaml:")) {
            if line.contains("is refused") {
                refused += 1;
            } else {
                leaks.push(line.to_owned());
            }
        }
        read_inside += 50 - report.matches("stages/a.yaml:").count();
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        leaks.is_empty(),
        "a read went outside the manifest directory ({} times in {runs} runs): {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(5)]
    );
    // The race did happen: reads met both the folder and the symlink.
    assert!(swaps.load(Ordering::Relaxed) > 1_000, "too few swaps");
    assert!(
        read_inside > 0 && refused > 0,
        "{runs} runs: {read_inside} keys read inside, {refused} refused"
    );
}

#[test]
fn a_refused_file_reads_the_same_whether_it_exists_or_not() {
    // Through a symlinked folder (relative or absolute) that leads out of the
    // directory, an existing file and a missing one get the same refusal.
    let ws = Workspace::new();
    let root = ws.root.path();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("outside/exists"), "outside-secret-9a2b\n").unwrap();
    std::os::unix::fs::symlink("../outside", ws.stages().join("relative")).unwrap();
    std::os::unix::fs::symlink(root.join("outside"), ws.stages().join("absolute")).unwrap();
    for link in ["relative", "absolute"] {
        for (i, target) in ["exists", "missing"].iter().enumerate() {
            ws.write(
                &format!("k{i}.yaml"),
                &file_key_stage(&format!("k{i}"), &format!("{link}/{target}")),
            );
        }
        let out = validate(&ws);
        let report = stdout(&out);
        assert_eq!(out.status.code(), Some(3), "{report}");
        let line = |file: &str| {
            report
                .lines()
                .find(|l| l.starts_with(file))
                .unwrap_or_else(|| panic!("no line for {file} in {report}"))
                .replace("exists", "NAME")
                .replace("missing", "NAME")
                .replace("k0.yaml", "k.yaml")
                .replace("k1.yaml", "k.yaml")
                .replace("`k0`", "`k`")
                .replace("`k1`", "`k`")
        };
        assert_eq!(line("stages/k0.yaml"), line("stages/k1.yaml"), "{link}");
        assert!(line("stages/k0.yaml").contains("is refused"), "{report}");
        assert!(!report.contains("outside-secret"), "{report}");
    }
}

#[test]
fn a_symlinked_manifest_or_folder_leading_outside_is_not_read() {
    let ws = Workspace::new();
    let root = ws.root.path();
    std::fs::create_dir_all(root.join("outside/team")).unwrap();
    // Manifest-shaped, with a key name worth hiding.
    std::fs::write(
        root.join("outside/stage.yaml"),
        "name: smuggled\npublic_key: p\nprivate_key: !Env OUTSIDE_ONLY_VARIABLE\nunknown_outside_key: 1\n",
    )
    .unwrap();
    std::fs::write(
        root.join("outside/team/b.yaml"),
        "name: smuggled-b\npublic_key: p\nprivate_key: !Env OUTSIDE_ONLY_VARIABLE\nunknown_outside_key: 1\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../outside/stage.yaml", ws.stages().join("relative.yaml")).unwrap();
    std::os::unix::fs::symlink(
        root.join("outside/stage.yaml"),
        ws.stages().join("absolute.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", ws.stages().join("environ.yaml")).unwrap();
    std::os::unix::fs::symlink("../outside/team", ws.stages().join("team")).unwrap();
    // A link that stays inside is still followed (the ConfigMap layout).
    ws.write("..data/inside.yaml", &file_key_stage("inside", "key"));
    std::fs::write(ws.stages().join("key"), "inside-key\n").unwrap();
    std::os::unix::fs::symlink("..data/inside.yaml", ws.stages().join("inside.yaml")).unwrap();

    let out = assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(root)
        .env("OUTSIDE_ONLY_VARIABLE", "outside-value")
        .env("STAGESYNC_STATE_FILE", ws.state_file())
        .args(["validate", "stages"])
        .output()
        .unwrap();
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    let outside = "error: a symlink leads outside the manifest directory; not followed";
    for name in ["relative.yaml", "absolute.yaml", "environ.yaml", "team"] {
        assert!(
            report.contains(&format!("stages/{name}: {outside}")),
            "{name}: {report}"
        );
    }
    for echoed in [
        "smuggled",
        "unknown_outside_key",
        "OUTSIDE_ONLY",
        "PATH",
        "HOME",
    ] {
        assert!(!report.contains(echoed), "{echoed} in {report}");
    }
    assert!(!report.contains("stages/inside.yaml"), "{report}");
    assert!(report.contains("(1 stage)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_and_the_state_file_are_never_a_key() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let token_file = ws.stages().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // A hard link elsewhere in the directory is the same file.
    std::fs::create_dir(ws.stages().join("keys")).unwrap();
    std::fs::hard_link(&token_file, ws.stages().join("keys/innocent")).unwrap();
    let state_file = ws.stages().join("state.json");
    let cmd = |args: &[&str]| {
        let mut cmd = ws.cmd(&sim);
        cmd.env_remove("AUTHENTIK_TOKEN")
            .env("STAGESYNC_STATE_FILE", &state_file)
            .env("K", "k-value")
            .arg(args[0])
            .args(["--token-file", "stages/token"])
            .args(&args[1..]);
        cmd
    };
    // A first apply creates the state file inside the directory.
    ws.write("ok.yaml", "name: ok\npublic_key: p\nprivate_key: !Env K\n");
    let out = run(cmd(&["apply", "--yes", "stages"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(state_file.exists());

    ws.write("a.yaml", &file_key_stage("a", "token"));
    ws.write("b.yaml", &file_key_stage("b", "keys/innocent"));
    ws.write("c.yaml", &file_key_stage("c", "state.json"));
    sim.reset_counts();
    for args in [&["plan", "stages"][..], &["apply", "--yes", "stages"]] {
        let out = run(cmd(args)).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        for (file, what) in [
            (
                "a.yaml",
                "stages/token is refused: it is stagesync's API token file",
            ),
            (
                "b.yaml",
                "stages/keys/innocent is refused: it is stagesync's API token file",
            ),
            (
                "c.yaml",
                "stages/state.json is refused: it is stagesync's state file",
            ),
        ] {
            assert!(
                err.lines()
                    .any(|l| l.starts_with(&format!("stages/{file}:")) && l.contains(what)),
                "{args:?} {file}: {err}"
            );
        }
        assert!(!err.contains(TOKEN), "{err}");
    }
    assert_eq!(sim.request_counts().total(), 0, "nothing sent");
    // validate knows the state file from its environment.
    let out = validate_with_state(&ws, &state_file);
    assert!(
        stdout(&out).contains("stages/state.json is refused: it is stagesync's state file"),
        "{}",
        stdout(&out)
    );
}

fn validate_with_state(ws: &Workspace, state_file: &Path) -> std::process::Output {
    assert_cmd::Command::cargo_bin("stagesync")
        .unwrap()
        .current_dir(ws.root.path())
        .env("STAGESYNC_STATE_FILE", state_file)
        .env("K", "k")
        .args(["validate", "stages"])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plan_refuses_a_fifo_or_a_pipe_at_once() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let fifo = ws.root.path().join("plan.fifo");
    let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    for plan in [fifo.to_str().unwrap(), "/dev/stdin"] {
        let mut cmd = ws.std_cmd(&sim);
        // stdin a pipe that stays open and never says a word.
        cmd.args(["apply", "--plan", plan, "stages"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let _stdin = child.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("apply --plan {plan} still waits after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{plan}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a regular file"),
            "{plan}: {}",
            stderr(&out)
        );
    }
    assert_eq!(sim.request_counts().total(), 0);
}
