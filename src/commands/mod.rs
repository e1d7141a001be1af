//! One module per subcommand. Each takes its resolved config and returns an
//! [`Outcome`], or an error that [`crate::exit`] maps to a code and prints.

use anyhow::Result;
use clap::CommandFactory;

use crate::authentik::{Client, ClientSettings};
use crate::cli::{Cli, Command, Config};
use crate::exit::{CommandError, Outcome};
use crate::kinds::captcha::DesiredStage;
use crate::manifest;
use crate::policy::Policy;

pub(crate) mod apply;
mod apply_saved;
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod plan;
pub(crate) mod run;
pub(crate) mod validate;
pub(crate) mod verify;

/// Runs the chosen command on a Tokio runtime.
pub fn dispatch(config: Config) -> Result<Outcome> {
    if let Command::Demo(cfg) = &config.command {
        demo::set_demo_secrets(&cfg.dir, &cfg.policy);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let color = config.color;
    runtime.block_on(async move {
        match config.command {
            Command::Validate(cfg) => validate::run(cfg, color).await,
            Command::Plan(cfg) => plan::run(cfg, color).await,
            Command::Apply(cfg) => match cfg.plan_file.clone() {
                Some(path) => apply_saved::run(cfg, &path, color).await,
                None => apply::run(cfg, color).await,
            },
            Command::Run(cfg) => run::run(cfg).await,
            Command::Demo(cfg) => demo::run(cfg, color).await,
            Command::Export(cfg) => export::run(cfg).await,
            Command::Verify(cfg) => verify::run(cfg, color).await,
            Command::Completions(shell) => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "stagesync", &mut script);
                crate::output::print_stdout(&String::from_utf8_lossy(&script))?;
                Ok(Outcome::Success)
            }
        }
    })
}

/// Loads the manifests for a command that talks to authentik. Warnings are
/// printed on stderr; any error means nothing is contacted (exit 3).
pub(crate) fn load_desired(
    dir: &std::path::Path,
    policy: &Policy,
) -> Result<Vec<DesiredStage>, CommandError> {
    let manifests = manifest::load(dir, policy)?;
    if !manifests.is_valid() {
        return Err(CommandError::InvalidManifests(manifests.diagnostics));
    }
    for warning in &manifests.diagnostics {
        eprintln!("{warning}");
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
