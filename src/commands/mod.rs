//! One module per subcommand. Each takes its resolved config and returns an exit code.

use anyhow::Result;
use clap::CommandFactory;

use crate::authentik::{Client, ClientSettings};
use crate::cli::{Cli, Command, Config};
use crate::manifest;
use crate::stage::DesiredStage;

pub mod apply;
pub mod demo;
pub mod export;
pub mod plan;
pub mod run;
pub mod validate;
pub mod verify;

/// Runs the chosen command on a Tokio runtime and returns its exit code.
pub fn dispatch(config: Config) -> Result<i32> {
    if let Command::Demo(cfg) = &config.command {
        demo::set_demo_secrets(&cfg.dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let color = config.color;
    runtime.block_on(async move {
        match config.command {
            Command::Validate(cfg) => validate::run(cfg, color).await,
            Command::Plan(cfg) => plan::run(cfg, color).await,
            Command::Apply(cfg) => apply::run(cfg, color).await,
            Command::Run(cfg) => run::run(cfg).await,
            Command::Demo(cfg) => demo::run(cfg, color).await,
            Command::Export(cfg) => export::run(cfg).await,
            Command::Verify(cfg) => verify::run(cfg, color).await,
            Command::Completions(shell) => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "stagesync", &mut script);
                crate::output::print_stdout(&String::from_utf8_lossy(&script))?;
                Ok(crate::exit::SUCCESS)
            }
        }
    })
}

/// Loads the manifests for a command that talks to authentik. Problems are
/// printed on stderr; any error means nothing is contacted (exit 3).
pub(crate) fn load_desired(dir: &std::path::Path) -> std::result::Result<Vec<DesiredStage>, i32> {
    let manifests = match manifest::load(dir) {
        Ok(manifests) => manifests,
        Err(err) => {
            eprintln!("error: {}", crate::output::escape(&err.to_string()));
            return Err(crate::exit::INVALID);
        }
    };
    for diagnostic in &manifests.diagnostics {
        eprintln!("{diagnostic}");
    }
    if !manifests.is_valid() {
        eprintln!(
            "error: the manifests are invalid; nothing was contacted (see `stagesync validate`)"
        );
        return Err(crate::exit::INVALID);
    }
    Ok(manifests.stages().cloned().collect())
}

/// Builds the client for a command that talks to authentik. Every error here is
/// a configuration mistake found before anything is contacted (a URL that
/// cannot be used, plain http to another host, an unreadable CA file): it is
/// printed on stderr and the command exits 3, like an invalid manifest.
pub(crate) fn connect(settings: &ClientSettings) -> std::result::Result<Client, i32> {
    Client::new(settings).map_err(|err| {
        eprintln!("error: {err}");
        crate::exit::INVALID
    })
}
