//! One module per subcommand. Each takes its resolved config and the
//! [`Console`] it writes through, and returns an [`Exit`], or an error that
//! [`crate::exit`] maps to a code and prints. The commands that write (`apply`,
//! `run`, `demo`) also take the [`Shutdown`] their stop signals end them by.

use anyhow::Result;
use clap::CommandFactory;

use crate::authentik::{Client, ClientSettings};
use crate::cli::{Cli, Command, Config};
use crate::exit::{CommandError, Exit};
use crate::kinds::captcha::DesiredStage;
use crate::manifest;
use crate::output::Console;
use crate::policy::Policy;
use crate::signals::Shutdown;

pub(crate) mod apply;
mod apply_saved;
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod freeze;
pub(crate) mod plan;
pub(crate) mod run;
pub(crate) mod validate;
pub(crate) mod verify;

/// Runs the chosen command on a Tokio runtime, writing to the process's
/// streams. A forced end ([`Shutdown::forced`]: a third stop signal, the
/// daemon's backstop) returns at once, without waiting for the work or the
/// runtime's threads: `main` then exits.
pub fn dispatch(mut config: Config) -> Result<Exit> {
    let console = Console::stdio();
    // Held until the command has ended: dropping it removes the demo's
    // temporary manifests, also after Ctrl-C or a forced end.
    let mut _demo_manifests = None;
    if let Command::Demo(cfg) = &mut config.command {
        _demo_manifests = demo::embedded_manifests_if_needed(cfg, &console)?;
        demo::set_demo_secrets(&cfg.dir, &cfg.policy, &console);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown = Shutdown::new();
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(config, &console, &shutdown) => Ok(result),
            exit = shutdown.forced() => Err(exit),
        }
    });
    match result {
        Ok(result) => result,
        Err(forced) => {
            runtime.shutdown_background();
            Ok(forced)
        }
    }
}

/// The chosen command.
async fn run(config: Config, console: &Console, shutdown: &Shutdown) -> Result<Exit> {
    let color = config.color;
    match config.command {
        Command::Validate(cfg) => validate::run(cfg, console, color).await,
        Command::Plan(cfg) => plan::run(cfg, console, color).await,
        Command::Apply(cfg) => match cfg.plan_file.clone() {
            Some(path) => apply_saved::run(cfg, &path, console, shutdown, color).await,
            None => apply::run(cfg, console, shutdown, color).await,
        },
        Command::Run(cfg) => run::run(cfg, shutdown).await,
        Command::Demo(cfg) => demo::run(cfg, console, shutdown, color).await,
        Command::Export(cfg) => export::run(cfg, console).await,
        Command::Verify(cfg) => verify::run(cfg, console, color).await,
        Command::Freeze(cfg) => freeze::run(&cfg, console),
        Command::Completions(shell) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "stagesync", &mut script);
            console.out(&String::from_utf8_lossy(&script))?;
            Ok(Exit::Success)
        }
    }
}

/// Loads the manifests for a command that talks to authentik. Warnings are
/// printed on stderr; any error means nothing is contacted (exit 3).
pub(crate) fn load_desired(
    dir: &std::path::Path,
    policy: &Policy,
    console: &Console,
) -> Result<Vec<DesiredStage>, CommandError> {
    let manifests = manifest::load(dir, policy)?;
    if !manifests.is_valid() {
        return Err(CommandError::InvalidManifests(manifests.diagnostics));
    }
    for warning in &manifests.diagnostics {
        console.errln(&warning.to_string());
    }
    Ok(manifests.stages().cloned().collect())
}

/// Builds the client for a command that talks to authentik. This contacts
/// nothing: an error is a configuration mistake (a URL that cannot be used,
/// plain http to another host, an unreadable CA file), exit 3 like an invalid
/// manifest.
pub(crate) fn connect(settings: &ClientSettings) -> Result<Client, CommandError> {
    Client::new(settings).map_err(CommandError::Connection)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cli::{Format, PlanConfig, ReconcileConfig};
    use crate::plan::PruneSettings;
    use crate::simulator::{self, SimConfig};

    /// A command run in-process writes through the console it is given: the
    /// plan (data) to stdout, a manifest's warning to stderr.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_writes_through_its_console() {
        let sim = simulator::start(SimConfig {
            token: "console-test-token".into(),
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("login.yaml"),
            "name: login\npublic_key: site\nprivate_key: a-literal-key\n",
        )
        .expect("manifest");
        let cfg = PlanConfig {
            reconcile: ReconcileConfig {
                dir: dir.path().to_owned(),
                policy: Policy::default(),
                client: ClientSettings {
                    url: sim.url(),
                    token: "console-test-token".to_owned().into(),
                    ca_file: None,
                    insecure_skip_tls_verify: false,
                    allow_http: false,
                    connect_timeout: Duration::from_secs(5),
                    request_timeout: Duration::from_secs(5),
                },
                state_file: dir.path().join("state.json"),
                prune: PruneSettings::default(),
            },
            format: Format::Text,
            ignore_unknown_keys: false,
            out: None,
            fit: Default::default(),
            verify_keys: false,
        };
        let (console, captured) = Console::captured();
        let exit = plan::run(cfg, &console, false).await.expect("plan runs");
        assert_eq!(exit, Exit::ChangesPending);
        assert!(
            captured.stdout().contains("+ create login"),
            "{}",
            captured.stdout()
        );
        assert!(
            captured
                .stdout()
                .ends_with("Plan: 1 to create, 0 to update, 0 in sync, 0 unmanaged.\n"),
            "{}",
            captured.stdout()
        );
        assert!(
            captured
                .stderr()
                .contains("warning: `private_key` is a literal value"),
            "{}",
            captured.stderr()
        );
        assert!(!captured.stdout().contains("a-literal-key"));
        sim.shutdown();
    }
}
