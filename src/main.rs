//! The `stagesync` binary: parse, set up logging, dispatch, then map the result
//! to an exit code and print its error, in one place ([`stagesync::exit`]).
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use stagesync::cli::Cli;
use stagesync::exit::{self, CommandError, Exit};
use stagesync::{commands, logging};

fn main() -> ExitCode {
    let result = run();
    if let Err(err) = &result {
        exit::report(err);
    }
    ExitCode::from(u8::try_from(exit::code(&result)).unwrap_or(1))
}

fn run() -> anyhow::Result<Exit> {
    let config = Cli::try_parse()
        .map_err(CommandError::CommandLine)?
        .resolve()
        .map_err(CommandError::Config)?;
    logging::init(config.log_format);
    commands::dispatch(config)
}
