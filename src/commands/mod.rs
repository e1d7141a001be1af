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
pub(crate) mod plan;
pub(crate) mod run;
pub(crate) mod validate;
pub(crate) mod verify;

/// Runs the chosen command on a Tokio runtime, writing to the process's
/// streams. A forced end ([`Shutdown::forced`]: a third stop signal, the
/// daemon's backstop) returns at once, without waiting for the work or the
/// runtime's threads: `main` then exits.
pub fn dispatch(config: Config) -> Result<Exit> {
    let console = Console::stdio();
    if let Command::Demo(cfg) = &config.command {
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
