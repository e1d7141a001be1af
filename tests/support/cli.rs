//! Black-box runs of the real binary: a temp directory of manifests, the
//! simulator on loopback, and the command pointed at both.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use stagesync::simulator::{self, SimConfig, SimHandle};
use tempfile::TempDir;

/// The token the simulator of [`start_sim`] accepts and [`Workspace::cmd`]
/// sends. Distinctive, so a leak is easy to find in captured output.
pub const TOKEN: &str = "test-token-5f1c9a7e0b";

/// A temporary workspace: `stages/` for manifests and a state file path.
pub struct Workspace {
    pub root: TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// A fresh temp directory with an empty `stages/`.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("stages")).expect("stages dir");
        Workspace { root }
    }

    /// `stages/`, the manifest directory.
    pub fn stages(&self) -> PathBuf {
        self.root.path().join("stages")
    }

    /// `state/state.json` (the folder is not created).
    pub fn state_file(&self) -> PathBuf {
        self.root.path().join("state").join("state.json")
    }

    /// Writes `stages/<name>` with `content`.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.stages().join(name);
        crate::files::write(&path, content);
        path
    }

    /// The binary, run in the workspace, pointed at `sim` and this workspace's state file.
    pub fn cmd(&self, sim: &SimHandle) -> Command {
        Command::from_std(self.std_cmd(sim))
    }

    /// [`Workspace::cmd`] as a `std` command, for a test that spawns it and
    /// signals or kills it while it runs.
    pub fn std_cmd(&self, sim: &SimHandle) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::daemon::binary());
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

/// The simulator on loopback, accepting [`TOKEN`].
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

/// stdout, lossily decoded.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr, lossily decoded.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as the binary prints it.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
