//! How a run of stagesync ends: every exit code, and the one place that maps a
//! command's result to a code and prints its error.
//!
//! A command returns an [`Exit`] when it ran to its end (its own output says
//! what happened), or an error. Errors whose wording or exit code are part of
//! the interface are a [`CommandError`]; anything else is a runtime failure
//! (exit 1) printed with its causes. `main` calls [`report`] and [`code`]; no
//! command prints its own `error:` line or picks a code, and nothing but
//! `main` ends the process: a third Ctrl-C or SIGTERM ends the command at
//! once, and `main` exits with [`INTERRUPTED`] or [`TERMINATED`]
//! ([`crate::signals`]).
//!
//! The codes follow the conventions CI systems already know from `terraform
//! plan -detailed-exitcode` (2 = changes pending), BSD `sysexits.h` (64 =
//! usage) and shells (128 + signal number).
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | [`SUCCESS`] |
//! | 1    | [`FAILURE`] |
//! | 2    | [`CHANGES_PENDING`] |
//! | 3    | [`INVALID`] |
//! | 4    | [`STALE_PLAN`] |
//! | 64   | [`USAGE`] |
//! | 130  | [`INTERRUPTED`] |
//! | 143  | [`TERMINATED`] |
//!
//! Code 4 is `apply --plan` refusing a saved plan whose live state or
//! manifests changed since it was made (as Terraform refuses a stale saved
//! plan), or that is expired, edited or for another server: nothing was written.
//!
//! Trap: a [`CommandError`] is found by downcasting the `anyhow::Error` a
//! command returns. Wrapping one with `.context(..)` keeps it findable; making
//! it the `source` of another error type does not (it would exit 1).

use std::path::PathBuf;

use crate::authentik::ApiError;
use crate::cli::ConfigError;
use crate::manifest::{Diagnostic, SourceError};
use crate::plan::saved::{Refusal, SaveError};
use crate::text::escape;

/// Success; for `plan`, also "everything is in sync".
pub(crate) const SUCCESS: i32 = 0;
/// A runtime error: authentik unreachable or refusing, a write that failed.
pub(crate) const FAILURE: i32 = 1;
/// `plan` found changes to make.
pub(crate) const CHANGES_PENDING: i32 = 2;
/// Invalid manifests or configuration; nothing was contacted or written.
pub(crate) const INVALID: i32 = 3;
/// `apply --plan`: the saved plan no longer matches what it was made from
/// (or is expired, edited, for another server); nothing was written.
pub(crate) const STALE_PLAN: i32 = 4;
/// The command line itself is wrong (`EX_USAGE`).
pub(crate) const USAGE: i32 = 64;
/// SIGINT (128 + 2) stopped `apply` (which saved the state and printed what
/// it did), a second one abandoned the daemon's writes in flight, or a third
/// ended the process at once.
pub(crate) const INTERRUPTED: i32 = 130;
/// SIGTERM (128 + 15), as [`INTERRUPTED`].
pub(crate) const TERMINATED: i32 = 143;

/// How a command that ran to its end went; what happened is already in its
/// output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `plan`, in sync.
    Success,
    /// `plan` shows changes to make.
    ChangesPending,
    /// `validate` reported errors in the manifests.
    Invalid,
    /// The operator did not confirm `apply`; nothing was written.
    Declined,
    /// The report says what failed: a stage that cannot be planned, a write
    /// that failed, a demo that did not converge.
    Failed,
    /// SIGINT stopped `apply` (its summary says what was not started or
    /// abandoned), abandoned the daemon's writes, or ended the process.
    Interrupted,
    /// SIGTERM, as [`Exit::Interrupted`].
    Terminated,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => SUCCESS,
            Exit::ChangesPending => CHANGES_PENDING,
            Exit::Invalid => INVALID,
            Exit::Declined | Exit::Failed => FAILURE,
            Exit::Interrupted => INTERRUPTED,
            Exit::Terminated => TERMINATED,
        }
    }
}

/// An error whose wording and exit code the user relies on.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command line cannot be parsed; also `--help` and `--version`,
    /// which clap reports as errors.
    #[error(transparent)]
    CommandLine(clap::Error),
    /// Flags and environment that cannot work (no URL, no token).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The manifest directory itself cannot be used.
    #[error(transparent)]
    ManifestDir(#[from] SourceError),
    /// Manifests with errors: every diagnostic (warnings too) is printed before
    /// the error, and nothing was contacted.
    #[error("the manifests are invalid; nothing was contacted (see `stagesync validate`)")]
    InvalidManifests(Vec<Diagnostic>),
    /// The API client could not be set up from the connection flags.
    #[error(transparent)]
    Connection(ApiError),
    /// `apply` without `--yes` and without a terminal to ask on.
    #[error("refusing to apply without confirmation: stdin is not a terminal (pass --yes)")]
    NoTerminalToConfirm,
    /// `export` would overwrite these files; nothing was written.
    #[error("nothing was written")]
    ExportWouldOverwrite(Vec<PathBuf>),
    /// `export` found symbolic links where these files would go; it never
    /// writes through one (with or without --force), so nothing was written.
    #[error("nothing was written")]
    ExportWouldFollowLinks(Vec<PathBuf>),
    /// `plan --out`: the plan cannot be saved (it is printed all the same).
    #[error("no plan file written to {}: {reason}", escape(&path.display().to_string()))]
    PlanNotSaved { path: PathBuf, reason: SaveError },
    /// `apply --plan`: the plan file cannot be read (missing, unreadable).
    #[error("cannot read the plan file {}: {source}", escape(&path.display().to_string()))]
    PlanFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `apply --plan`: the saved plan is not applied; nothing was written.
    /// Stale stages are listed one per line before the error.
    #[error("plan file {}: {refusal}; nothing was written", escape(&path.display().to_string()))]
    PlanRefused { path: PathBuf, refusal: Refusal },
}

impl CommandError {
    pub fn code(&self) -> i32 {
        match self {
            // --help and --version are "errors" to clap but successes to the user.
            CommandError::CommandLine(err) if !err.use_stderr() => SUCCESS,
            CommandError::CommandLine(_) => USAGE,
            CommandError::Config(_)
            | CommandError::ManifestDir(_)
            | CommandError::InvalidManifests(_)
            | CommandError::PlanFileUnreadable { .. } => INVALID,
            CommandError::PlanRefused { .. } => STALE_PLAN,
            // Setting up the client contacts nothing: its configuration errors
            // are like an invalid manifest.
            CommandError::Connection(err) if err.is_config() => INVALID,
            CommandError::Connection(_)
            | CommandError::NoTerminalToConfirm
            | CommandError::ExportWouldOverwrite(_)
            | CommandError::ExportWouldFollowLinks(_)
            | CommandError::PlanNotSaved { .. } => FAILURE,
        }
    }

    /// The text on stderr: diagnostics first where there are any, then one
    /// `error:` line per problem.
    fn render(&self) -> String {
        let mut out = String::new();
        match self {
            CommandError::InvalidManifests(diagnostics) => {
                for diagnostic in diagnostics {
                    out.push_str(&format!("{diagnostic}\n"));
                }
            }
            CommandError::ExportWouldOverwrite(paths) => {
                for path in paths {
                    out.push_str(&format!(
                        "error: {} exists (pass --force to overwrite)\n",
                        escape(&path.display().to_string())
                    ));
                }
            }
            CommandError::ExportWouldFollowLinks(paths) => {
                for path in paths {
                    out.push_str(&format!(
                        "error: {} is a symbolic link; export does not write through links (remove it first)\n",
                        escape(&path.display().to_string())
                    ));
                }
            }
            _ => {}
        }
        out.push_str(&format!("error: {}\n", escape(&self.to_string())));
        if let CommandError::PlanRefused { refusal, .. } = self {
            if let Refusal::Stale(reports) | Refusal::NotFromManifests(reports) = refusal {
                for report in reports {
                    out.push_str(&format!("  {report}\n"));
                }
            }
            out.push_str(
                "Make a new plan (`stagesync plan --out FILE`), review it, and apply that one.\n",
            );
        }
        out
    }
}

/// The exit code of a command's result.
pub fn code(result: &anyhow::Result<Exit>) -> i32 {
    match result {
        Ok(outcome) => outcome.code(),
        Err(err) => err
            .downcast_ref::<CommandError>()
            .map_or(FAILURE, CommandError::code),
    }
}

/// Prints a command's error: clap's own text for the command line (help goes
/// to stdout), otherwise [`render`] on stderr.
pub fn report(err: &anyhow::Error) {
    match err.downcast_ref::<CommandError>() {
        Some(CommandError::CommandLine(err)) => {
            let _ = err.print();
        }
        _ => eprint!("{}", render(err)),
    }
}

/// The stderr text of an error. A runtime error is one line with each cause
/// once: many messages already quote their source (`state file X: Is a
/// directory`), and anyhow's `{:#}` would repeat it.
pub(crate) fn render(err: &anyhow::Error) -> String {
    if let Some(err) = err.downcast_ref::<CommandError>() {
        return err.render();
    }
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    format!("error: {}\n", escape(&text))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::manifest::Severity;

    fn code_of(err: impl Into<anyhow::Error>) -> i32 {
        code(&Err(err.into()))
    }

    #[test]
    fn outcomes_map_to_their_codes() {
        assert_eq!(code(&Ok(Exit::Success)), 0);
        assert_eq!(code(&Ok(Exit::ChangesPending)), 2);
        assert_eq!(code(&Ok(Exit::Invalid)), 3);
        assert_eq!(code(&Ok(Exit::Declined)), 1);
        assert_eq!(code(&Ok(Exit::Failed)), 1);
    }

    #[test]
    fn configuration_errors_exit_3_and_runtime_errors_1() {
        assert_eq!(code_of(CommandError::Config(ConfigError::MissingUrl)), 3);
        assert_eq!(
            code_of(CommandError::ManifestDir(SourceError::Missing("x".into()))),
            3
        );
        assert_eq!(code_of(CommandError::InvalidManifests(vec![])), 3);
        let bad_url = ApiError::BadUrl {
            url: "x".into(),
            reason: "relative URL without a base".into(),
        };
        assert_eq!(code_of(CommandError::Connection(bad_url)), 3);
        let refused = ApiError::Connect {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(code_of(CommandError::Connection(refused)), 1);
        assert_eq!(code_of(CommandError::NoTerminalToConfirm), 1);
        assert_eq!(code_of(CommandError::ExportWouldOverwrite(vec![])), 1);
        assert_eq!(code_of(CommandError::ExportWouldFollowLinks(vec![])), 1);
        // An authentik error while working is a runtime failure, even one that
        // would be a configuration mistake when setting the client up.
        let late = ApiError::BadUrl {
            url: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(code_of(late), 1);
        assert_eq!(code_of(anyhow::anyhow!("disk full")), 1);
    }

    #[test]
    fn a_typed_error_keeps_its_code_under_context() {
        let err = anyhow::Error::from(CommandError::NoTerminalToConfirm).context("while applying");
        assert_eq!(code(&Err(err)), 1);
        let err = anyhow::Error::from(CommandError::Config(ConfigError::MissingToken))
            .context("resolving the command line");
        assert_eq!(code(&Err(err)), 3);
    }

    #[test]
    fn help_is_success_and_a_bad_command_line_is_usage() {
        let help = crate::cli::Cli::command()
            .try_get_matches_from(["stagesync", "--help"])
            .unwrap_err();
        assert_eq!(code_of(CommandError::CommandLine(help)), 0);
        let unknown = crate::cli::Cli::command()
            .try_get_matches_from(["stagesync", "--no-such-flag"])
            .unwrap_err();
        assert_eq!(code_of(CommandError::CommandLine(unknown)), 64);
    }

    #[test]
    fn no_code_is_taken_twice() {
        let codes = [
            SUCCESS,
            FAILURE,
            CHANGES_PENDING,
            INVALID,
            STALE_PLAN,
            USAGE,
            INTERRUPTED,
            TERMINATED,
        ];
        let mut unique = codes.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
    }

    #[test]
    fn invalid_manifests_print_every_diagnostic_then_the_error() {
        let diagnostic = Diagnostic {
            severity: Severity::Error,
            file: "stages/a.yaml".into(),
            line: Some(2),
            column: Some(1),
            field: None,
            message: "unknown key `x`".into(),
        };
        let text = render(&CommandError::InvalidManifests(vec![diagnostic]).into());
        assert_eq!(
            text,
            "stages/a.yaml:2:1: error: unknown key `x`\n\
             error: the manifests are invalid; nothing was contacted (see `stagesync validate`)\n"
        );
    }

    #[test]
    fn an_export_that_would_overwrite_names_every_file() {
        let err = CommandError::ExportWouldOverwrite(vec!["a.yaml".into(), "b\u{1b}.yaml".into()]);
        assert_eq!(
            render(&err.into()),
            "error: a.yaml exists (pass --force to overwrite)\n\
             error: b\\u{1b}.yaml exists (pass --force to overwrite)\n\
             error: nothing was written\n"
        );
    }

    #[test]
    fn a_runtime_error_is_one_escaped_line_with_each_cause_once() {
        let io = std::io::Error::other("Is a directory");
        let err = anyhow::Error::from(io).context("state file /x: Is a directory");
        assert_eq!(render(&err), "error: state file /x: Is a directory\n");
        let err = anyhow::anyhow!("inner \u{1b}[31m").context("outer");
        assert_eq!(render(&err), "error: outer: inner \\u{1b}[31m\n");
    }
}
