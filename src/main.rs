//! The `stagesync` binary: parse, set up logging, dispatch, map the outcome to
//! an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use stagesync::cli::Cli;
use stagesync::{commands, exit, logging};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" to clap but successes to the user.
            let code = if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = err.print();
            return code_of(code);
        }
    };
    let config = match cli.resolve() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return code_of(exit::INVALID);
        }
    };
    logging::init(config.log_format);
    let code = match commands::dispatch(config) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", stagesync::output::escape(&message(&err)));
            exit::FAILURE
        }
    };
    code_of(code)
}

/// The error and its causes on one line, each cause once: many error messages
/// already quote their source (`state file X: Is a directory`), and anyhow's
/// `{:#}` would repeat it.
fn message(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn code_of(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
