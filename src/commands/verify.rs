//! `stagesync verify`: ask each stage's captcha provider whether its private
//! key works (see [`crate::verify`] for what is sent). authentik is not contacted.
//!
//! The report is data, so it goes to stdout (text or JSON); the warning about
//! keys that could not be checked goes to stderr. Exit 0 when every key is
//! valid, 1 when one is invalid or mismatched (or unknown, with `--strict`).

use anyhow::Result;
use serde::Serialize;

use crate::cli::{ReportFormat, VerifyConfig};
use crate::commands::load_desired;
use crate::exit::Exit;
use crate::output::Console;
use crate::text::escape;
use crate::verify::{KeyCheck, KeyProbe, ProbeSettings, Prober, Verdict, allowed_by};

/// `format_version` of the JSON report.
pub(crate) const JSON_FORMAT_VERSION: u32 = 1;

pub(crate) async fn run(cfg: VerifyConfig, console: &Console, color: bool) -> Result<Exit> {
    let desired = load_desired(&cfg.dir, &cfg.policy, console)?;
    let probes: Vec<KeyProbe> = desired.iter().map(KeyProbe::from_desired).collect();
    let prober = Prober::new(ProbeSettings {
        timeout: cfg.timeout,
        concurrency: cfg.concurrency,
    })?;
    let checks = prober.verify(&probes, &allowed_by(&cfg.policy.hosts)).await;
    let report = match cfg.format {
        ReportFormat::Text => render_text(&checks, color),
        ReportFormat::Json => render_json(&checks),
    };
    console.out(&report)?;
    let counts = Counts::of(&checks);
    if counts.unknown > 0 && !cfg.strict {
        console.errln(&format!(
            "warning: {} could not be checked (see above; --strict makes this fail)",
            if counts.unknown == 1 {
                "1 key".to_owned()
            } else {
                format!("{} keys", counts.unknown)
            }
        ));
    }
    Ok(outcome(&counts, cfg.strict))
}

/// How many checks ended in each verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub(crate) valid: usize,
    pub(crate) invalid: usize,
    pub(crate) mismatch: usize,
    pub(crate) unknown: usize,
}

impl Counts {
    pub(crate) fn of(checks: &[KeyCheck]) -> Counts {
        let mut counts = Counts::default();
        for check in checks {
            match check.verdict() {
                Verdict::Valid => counts.valid += 1,
                Verdict::Invalid => counts.invalid += 1,
                Verdict::Mismatch => counts.mismatch += 1,
                Verdict::Unknown => counts.unknown += 1,
            }
        }
        counts
    }
}

/// Failed when a key is invalid or mismatched, or unknown under `--strict`.
pub(crate) fn outcome(counts: &Counts, strict: bool) -> Exit {
    if counts.invalid > 0 || counts.mismatch > 0 || (strict && counts.unknown > 0) {
        Exit::Failed
    } else {
        Exit::Success
    }
}

/// One line per stage (`invalid  login  https://...: the provider refused the
/// key (error-codes: invalid-input-secret)`), then a summary line.
pub(crate) fn render_text(checks: &[KeyCheck], color: bool) -> String {
    let mut out = String::new();
    let stages: Vec<_> = checks.iter().map(|c| escape(&c.stage)).collect();
    let width = stages.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    for (check, stage) in checks.iter().zip(&stages) {
        let verdict = check.verdict();
        let style = match verdict {
            Verdict::Valid => anstyle::AnsiColor::Green.on_default(),
            Verdict::Invalid | Verdict::Mismatch => anstyle::AnsiColor::Red.on_default().bold(),
            Verdict::Unknown => anstyle::AnsiColor::Yellow.on_default(),
        };
        let label = format!("{:<8}", verdict.as_str());
        let label = if color {
            format!("{style}{label}{style:#}")
        } else {
            label
        };
        let pad = width.saturating_sub(stage.chars().count());
        out.push_str(&format!(
            "{label} {stage}{:pad$}  {}: {}",
            "",
            escape(&check.api_url),
            escape(&check.reason.describe()),
        ));
        if !check.error_codes.is_empty() {
            out.push_str(&format!(
                " (error-codes: {})",
                escape(&check.error_codes.join(", "))
            ));
        }
        out.push('\n');
    }
    let counts = Counts::of(checks);
    out.push_str(&format!(
        "{} checked: {} valid, {} invalid, {} mismatched, {} unknown\n",
        if checks.len() == 1 {
            "1 key".to_owned()
        } else {
            format!("{} keys", checks.len())
        },
        counts.valid,
        counts.invalid,
        counts.mismatch,
        counts.unknown
    ));
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    format_version: u32,
    checks: Vec<JsonCheck<'a>>,
    summary: Counts,
}

#[derive(Serialize)]
struct JsonCheck<'a> {
    stage: &'a str,
    api_url: &'a str,
    result: Verdict,
    reason: String,
    error_codes: &'a [String],
    http_status: Option<u16>,
    contacted: bool,
}

/// The report as one JSON document (serde escapes every control character).
pub(crate) fn render_json(checks: &[KeyCheck]) -> String {
    let report = JsonReport {
        format_version: JSON_FORMAT_VERSION,
        checks: checks
            .iter()
            .map(|c| JsonCheck {
                stage: &c.stage,
                api_url: &c.api_url,
                result: c.verdict(),
                reason: c.reason.describe(),
                error_codes: &c.error_codes,
                http_status: c.status,
                contacted: c.reason.contacted(),
            })
            .collect(),
        summary: Counts::of(checks),
    };
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Reason;

    fn check(stage: &str, reason: Reason, codes: &[&str]) -> KeyCheck {
        KeyCheck {
            stage: stage.into(),
            api_url: "https://provider.example/siteverify".into(),
            reason,
            error_codes: codes.iter().map(|c| c.to_string()).collect(),
            status: Some(200),
        }
    }

    #[test]
    fn invalid_and_mismatch_fail_unknown_only_when_strict() {
        let unknown = Counts::of(&[check("a", Reason::NoVerdict, &[])]);
        assert_eq!(outcome(&unknown, false), Exit::Success);
        assert_eq!(outcome(&unknown, true), Exit::Failed);
        for reason in [Reason::SecretRefused, Reason::SiteKeyMismatch] {
            assert_eq!(
                outcome(&Counts::of(&[check("a", reason, &[])]), false),
                Exit::Failed
            );
        }
        let valid = Counts::of(&[check("a", Reason::TokenRefused, &[])]);
        assert_eq!(outcome(&valid, true), Exit::Success);
    }

    #[test]
    fn text_names_the_stage_the_verdict_and_the_provider_codes_escaped() {
        let text = render_text(
            &[
                check("login", Reason::SecretRefused, &["invalid-input-secret"]),
                check("evil\u{1b}[2J", Reason::TokenRefused, &["x\u{1b}"]),
            ],
            false,
        );
        assert!(text.starts_with("invalid  login          https://provider.example/siteverify: the provider refused the key (error-codes: invalid-input-secret)\n"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.ends_with("2 keys checked: 1 valid, 1 invalid, 0 mismatched, 0 unknown\n"));
    }
}
