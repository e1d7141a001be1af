//! Helpers for black-box tests: a temp directory of manifests, the real binary,
//! and the simulator on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use stagesync::simulator::{self, SimConfig, SimHandle};
use tempfile::TempDir;

pub const TOKEN: &str = "test-token-5f1c9a7e0b";

/// A temporary workspace: `stages/` for manifests and a state file path.
pub struct Workspace {
    pub root: TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("stages")).expect("stages dir");
        Workspace { root }
    }

    pub fn stages(&self) -> PathBuf {
        self.root.path().join("stages")
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.path().join("state").join("state.json")
    }

    /// Writes `stages/<name>` with `content`.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.stages().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, content).expect("write manifest");
        path
    }

    /// The binary, run in the workspace, pointed at `sim` and this workspace's state file.
    pub fn cmd(&self, sim: &SimHandle) -> Command {
        let mut cmd = Command::cargo_bin("stagesync").expect("binary");
        cmd.current_dir(self.root.path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("AUTHENTIK_URL", sim.url())
            .env("AUTHENTIK_TOKEN", TOKEN)
            .env("STAGESYNC_STATE_FILE", self.state_file());
        cmd
    }
}

/// A manifest for `name` whose key comes from `$<VAR>`.
pub fn manifest(name: &str, public_key: &str, var: &str, extra: &str) -> String {
    format!("name: {name}\npublic_key: {public_key}\nprivate_key: !Env {var}\n{extra}")
}

pub async fn start_sim() -> SimHandle {
    simulator::start(SimConfig {
        token: TOKEN.to_owned(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Runs a blocking command from an async test without stalling the simulator.
pub async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"))
        .await
        .expect("join")
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
