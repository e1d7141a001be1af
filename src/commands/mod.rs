//! One module per subcommand. Each takes its resolved config and returns an exit code.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, Command, Config};

pub mod apply;
pub mod demo;
pub mod export;
pub mod plan;
pub mod run;
pub mod validate;

/// Runs the chosen command on a Tokio runtime and returns its exit code.
pub fn dispatch(config: Config) -> Result<i32> {
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
            Command::Completions(shell) => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "stagesync",
                    &mut std::io::stdout(),
                );
                Ok(crate::exit::SUCCESS)
            }
        }
    })
}
