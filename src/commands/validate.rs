//! `stagesync validate`: check the manifests offline, contacting nothing.
//!
//! The report is the command's data, so it goes to stdout: one line per problem
//! (`path:line:column: error: message`, or `warning:`), then a summary line.
//! Only an unusable directory goes to stderr. A closed stdout (`| head`) is not
//! an error.

use anyhow::Result;

use crate::cli::ValidateConfig;
use crate::exit::{CommandError, Exit};
use crate::manifest::{self, Manifests, Severity};
use crate::output::Console;

pub(crate) async fn run(cfg: ValidateConfig, console: &Console, color: bool) -> Result<Exit> {
    let manifests = manifest::load(&cfg.dir, &cfg.policy).map_err(CommandError::ManifestDir)?;
    console.out(&render(&manifests, color))?;
    Ok(if manifests.is_valid() {
        Exit::Success
    } else {
        Exit::Invalid
    })
}

/// The report: every diagnostic, then the summary line, with the severity
/// styled when `color` (file contents are escaped, so these are the only
/// escape sequences).
pub(crate) fn render(manifests: &Manifests, color: bool) -> String {
    let mut out = String::new();
    for diagnostic in &manifests.diagnostics {
        let style = match diagnostic.severity {
            _ if !color => anstyle::Style::new(),
            Severity::Error => anstyle::AnsiColor::Red.on_default().bold(),
            Severity::Warning => anstyle::AnsiColor::Yellow.on_default().bold(),
        };
        out.push_str(&format!(
            "{}: {style}{}{style:#}: {}\n",
            diagnostic.place(),
            diagnostic.severity,
            diagnostic.shown_message()
        ));
    }
    out.push_str(&summary(manifests));
    out.push('\n');
    out
}

/// `2 errors, 1 warning in 5 files (7 stages)`.
pub(crate) fn summary(manifests: &Manifests) -> String {
    let stages = manifests.stages().count();
    format!(
        "{}, {} in {} ({})",
        plural(manifests.error_count(), "error"),
        plural(manifests.warning_count(), "warning"),
        plural(manifests.files.len(), "file"),
        plural(stages, "stage"),
    )
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_with_plurals() {
        let manifests = Manifests::default();
        assert_eq!(
            summary(&manifests),
            "0 errors, 0 warnings in 0 files (0 stages)"
        );
        assert_eq!(plural(1, "warning"), "1 warning");
    }
}
