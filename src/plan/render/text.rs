//! The text plan, for terminals and logs.
//!
//! ```text
//! ~ update rec-login (stages/login.yaml:1)
//!     --- live
//!     +++ manifest
//!     @@ -1,9 +1,9 @@
//!      name: "rec-login"
//!     -score_min_threshold: 0.5
//!     +score_min_threshold: 0.7
//!     ...
//!      private_key: (sensitive) unchanged
//!     key check: valid: the provider accepted the key (...)   (plan --verify-keys)
//!
//! Plan: 0 to create, 1 to update, 0 in sync, 0 unmanaged.
//! ```
//!
//! Colour (ANSI, via anstyle) only when the caller says so: it decides from the
//! terminal and `NO_COLOR`, not this module.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use super::{
    body_lines, delete_of, key_check_text, origin_short, prune_label, prune_lines, removal_lines,
    summary_line, warning_lines,
};
use crate::plan::key_check::Verdict;
use crate::plan::{Action, Entry, Held, Plan};
use crate::text::escape;

const INDENT: &str = "    ";

struct Painter {
    color: bool,
}

impl Painter {
    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_owned()
        }
    }

    fn diff_line(&self, line: &str) -> String {
        let style = if line.starts_with("---") || line.starts_with("+++") {
            Style::new().bold()
        } else if line.starts_with("@@") {
            AnsiColor::Cyan.on_default()
        } else if line.starts_with('+') {
            AnsiColor::Green.on_default()
        } else if line.starts_with('-') {
            AnsiColor::Red.on_default()
        } else {
            Style::new()
        };
        self.paint(style, line)
    }
}

fn header(stage: &Entry) -> (&'static str, Style) {
    match stage.action {
        Action::Create { .. } => ("+ create", AnsiColor::Green.on_default().bold()),
        Action::Update { .. } => ("~ update", AnsiColor::Yellow.on_default().bold()),
        Action::InSync { .. } => ("= in sync", Style::new().dimmed()),
        Action::Error { .. } => ("! error", AnsiColor::Red.on_default().bold()),
        Action::Delete { .. } => ("- delete", AnsiColor::Red.on_default().bold()),
    }
}

/// The plan as text; `color` adds ANSI colours. Ends with the summary line and a newline.
pub fn render_text(plan: &Plan, color: bool) -> String {
    let painter = Painter { color };
    let warnings = crate::plan::warnings(plan);
    let mut out = String::new();
    let mut previous_in_sync = None;
    for stage in plan.shown_entries() {
        let in_sync = matches!(stage.action, Action::InSync { .. });
        // A blank line between entries; consecutive in-sync entries stay compact.
        if previous_in_sync.is_some_and(|prev| !(prev && in_sync)) {
            out.push('\n');
        }
        previous_in_sync = Some(in_sync);
        let (label, style) = header(stage);
        let _ = writeln!(
            out,
            "{} {} ({})",
            painter.paint(style, label),
            painter.paint(Style::new().bold(), &escape(&stage.name)),
            stage.origin.as_ref().map(origin_short).unwrap_or_default(),
        );
        if let Some(after) = plan.waits_for(stage) {
            let _ = writeln!(
                out,
                "{INDENT}waits for stage {after} to be renamed away from this name"
            );
        }
        if let Some(by) = plan.changed_by.get(&stage.id) {
            let line = escape(&by.to_string()).into_owned();
            let _ = writeln!(
                out,
                "{INDENT}{}",
                painter.paint(AnsiColor::Yellow.on_default(), &line)
            );
        }
        if let Action::Error { message, .. } = &stage.action {
            let _ = writeln!(
                out,
                "{INDENT}{}",
                painter.paint(AnsiColor::Red.on_default(), &escape(message))
            );
        }
        let known = plan.known_fields(stage.kind);
        for line in body_lines(&stage.action, stage.key_source.as_ref(), &known) {
            let _ = writeln!(out, "{INDENT}{}", painter.diff_line(&line));
        }
        for line in warning_lines(&warnings, &stage.name) {
            let style = AnsiColor::Red.on_default().bold();
            let _ = writeln!(out, "{INDENT}{}", painter.paint(style, &line));
        }
        if let Some(check) = plan.key_checks.get(&stage.id) {
            let style = match check.verdict() {
                Verdict::Valid => AnsiColor::Green.on_default(),
                Verdict::Invalid | Verdict::Mismatch => AnsiColor::Red.on_default().bold(),
                Verdict::Unknown => AnsiColor::Yellow.on_default(),
            };
            let _ = writeln!(
                out,
                "{INDENT}key check: {}",
                painter.paint(style, &key_check_text(check))
            );
        }
    }
    if plan.manifest_entries().next().is_some() {
        out.push('\n');
    }
    for entry in plan.prune_entries() {
        let Some((uuid, held)) = delete_of(&entry.action) else {
            continue;
        };
        let style = match held {
            None => AnsiColor::Red.on_default().bold(),
            Some(Held::InUse { .. } | Held::Guard { .. }) => AnsiColor::Yellow.on_default().bold(),
            Some(Held::NotPruned) => Style::new().dimmed(),
        };
        let _ = writeln!(
            out,
            "{} {} ({})",
            painter.paint(style, prune_label(held)),
            painter.paint(Style::new().bold(), &escape(&entry.name)),
            uuid,
        );
        for line in prune_lines(held) {
            let _ = writeln!(out, "{INDENT}{}", escape(&line));
        }
        for (line, guard) in removal_lines(plan, entry) {
            let _ = writeln!(out, "{INDENT}{}", escape(&line));
            for line in warning_lines(&warnings, guard) {
                let style = AnsiColor::Red.on_default().bold();
                let _ = writeln!(out, "{INDENT}{}", painter.paint(style, &line));
            }
        }
        out.push('\n');
    }
    if !plan.unmanaged.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            painter.paint(
                Style::new().bold(),
                "Unmanaged captcha stages (no manifest names them; never touched):"
            )
        );
        for u in &plan.unmanaged {
            let _ = writeln!(out, "{INDENT}? {} ({})", escape(&u.name), u.uuid);
        }
        out.push('\n');
    }
    if let Some(why) = &plan.changed_by_unknown {
        let _ = writeln!(out, "changed by: unknown ({})\n", escape(why));
    }
    let _ = writeln!(
        out,
        "{}",
        painter.paint(Style::new().bold(), &summary_line(&plan.summary()))
    );
    out
}
