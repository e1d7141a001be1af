//! `stagesync validate`: check the manifests offline, contacting nothing.
//!
//! The report is the command's data, so it goes to stdout: one line per problem
//! (`path:line:column: error: message`, or `warning:`), then a summary line.
//! Only an unusable directory goes to stderr. A closed stdout (`| head`) is not
//! an error.

use std::io::Write;

use anyhow::Result;

use crate::cli::{ColorChoice, ValidateConfig};
use crate::exit;
use crate::manifest::{self, Manifests, Severity};

pub async fn run(cfg: ValidateConfig, color: ColorChoice) -> Result<i32> {
    let manifests = match manifest::load(&cfg.dir) {
        Ok(manifests) => manifests,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(exit::INVALID);
        }
    };
    let report = render(&manifests);
    let choice = match color {
        ColorChoice::Auto => anstream::ColorChoice::Auto,
        ColorChoice::Always => anstream::ColorChoice::Always,
        ColorChoice::Never => anstream::ColorChoice::Never,
    };
    // Strips the styles when stdout is not a terminal, NO_COLOR is set or --color never.
    let mut stdout = anstream::AutoStream::new(std::io::stdout().lock(), choice);
    match stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => return Err(err.into()),
        _ => {}
    }
    Ok(if manifests.is_valid() {
        exit::SUCCESS
    } else {
        exit::INVALID
    })
}

/// The report: every diagnostic, then the summary line, with the severity
/// styled (file contents are escaped, so these are the only escape sequences).
pub fn render(manifests: &Manifests) -> String {
    let mut out = String::new();
    for diagnostic in &manifests.diagnostics {
        let style = match diagnostic.severity {
            Severity::Error => anstyle::AnsiColor::Red.on_default().bold(),
            Severity::Warning => anstyle::AnsiColor::Yellow.on_default().bold(),
        };
        out.push_str(&format!(
            "{}: {style}{}{style:#}: {}\n",
            diagnostic.place(),
            diagnostic.severity,
            crate::output::escape(&diagnostic.message)
        ));
    }
    out.push_str(&summary(manifests));
    out.push('\n');
    out
}

/// `2 errors, 1 warning in 5 files (7 stages)`.
pub fn summary(manifests: &Manifests) -> String {
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
