//! The Markdown plan, for pull-request comments: the summary line and a count
//! table, then one ```` ```diff ```` block per create or update, errors with
//! their message, and the in-sync and unmanaged stages folded in `<details>`.
//!
//! Names and values are user data: code spans and fences are made longer than
//! any run of backticks inside them, and plain text has Markdown and HTML
//! characters backslash-escaped, so a stage name cannot break the comment.

use std::fmt::Write as _;

use super::{
    body_lines, delete_of, has_any, key_check_text, origin_short, prune_label, prune_lines,
    summary_line, warning_lines,
};
use crate::plan::key_check::Verdict;
use crate::plan::{Action, Plan};
use crate::text::escape;

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// `s` as an inline code span, whatever backticks it holds.
fn code(s: &str) -> String {
    let s = escape(s);
    let fence = "`".repeat(longest_backtick_run(&s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// `s` as plain Markdown text.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in escape(s).chars() {
        if "\\`*_[]<>|~&".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn fenced(lang: &str, lines: &[String]) -> String {
    let longest = lines
        .iter()
        .map(|l| longest_backtick_run(l))
        .max()
        .unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    let mut out = format!("{fence}{lang}\n");
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&fence);
    out.push('\n');
    out
}

/// `file:line` of an entry's manifest.
fn origin_of(entry: &crate::plan::Entry) -> String {
    entry.origin.as_ref().map(origin_short).unwrap_or_default()
}

/// The plan as GitHub-flavoured Markdown.
pub fn render_markdown(plan: &Plan) -> String {
    let summary = plan.summary();
    let warnings = crate::plan::warnings(plan);
    let mut out = String::from("### stagesync plan\n\n");
    let _ = writeln!(out, "**{}**\n", summary_line(&summary));
    if !warnings.is_empty() {
        out.push_str("#### Security-relevant changes\n\n");
        for warning in &warnings {
            let _ = writeln!(out, "- {}", text(&warning.to_string()));
        }
        out.push('\n');
    }
    out.push_str("| Action | Stages |\n|---|---:|\n");
    for (label, n) in [
        ("Create", summary.create),
        ("Update", summary.update),
        ("In sync", summary.in_sync),
        ("Error", summary.error),
        ("Unmanaged", summary.unmanaged),
    ] {
        let _ = writeln!(out, "| {label} | {n} |");
    }
    // Prune rows only when there is something to prune.
    for (label, n) in [
        ("Delete", summary.delete),
        ("Blocked", summary.blocked),
        ("Held back", summary.held_back),
        ("Not pruned", summary.not_pruned),
    ] {
        if n > 0 {
            let _ = writeln!(out, "| {label} | {n} |");
        }
    }
    out.push('\n');

    if has_any(plan, |a| matches!(a, Action::Error { .. })) {
        out.push_str("#### Errors\n\n");
        for stage in plan.manifest_entries() {
            if let Action::Error { message, .. } = &stage.action {
                let _ = writeln!(
                    out,
                    "- **! error** {} ({}): {}",
                    code(&stage.name),
                    code(&origin_of(stage)),
                    text(message)
                );
            }
        }
        out.push('\n');
    }

    for stage in plan.manifest_entries() {
        let label = match stage.action {
            Action::Create { .. } => "+ create",
            Action::Update { .. } => "~ update",
            Action::InSync { .. } | Action::Error { .. } | Action::Delete { .. } => continue,
        };
        let _ = writeln!(
            out,
            "#### {label} {} ({})\n",
            code(&stage.name),
            code(&origin_of(stage))
        );
        if let Some(after) = plan.waits_for(stage) {
            let _ = writeln!(
                out,
                "Waits for stage {} to be renamed away from this name.\n",
                code(&after.to_string())
            );
        }
        if let Some(by) = plan.changed_by.get(&stage.id) {
            let _ = writeln!(out, "_{}_\n", text(&by.to_string()));
        }
        for line in warning_lines(&warnings, &stage.name) {
            let _ = writeln!(out, "> **Security:** {}\n", text(&line[2..]));
        }
        out.push_str(&fenced(
            "diff",
            &body_lines(
                &stage.action,
                stage.key_source.as_ref(),
                &plan.known_fields(stage.kind),
            ),
        ));
        out.push('\n');
        if let Some(check) = plan.key_checks.get(&stage.id) {
            let mark = match check.verdict() {
                Verdict::Valid => "",
                Verdict::Invalid | Verdict::Mismatch => "**",
                Verdict::Unknown => "_",
            };
            let _ = writeln!(
                out,
                "Key check: {mark}{}{mark}\n",
                text(&key_check_text(check))
            );
        }
    }

    if let Some(why) = &plan.changed_by_unknown {
        let _ = writeln!(out, "Changed by: unknown ({}).\n", text(why));
    }

    for entry in plan.prune_entries() {
        let Some((uuid, held)) = delete_of(&entry.action) else {
            continue;
        };
        let _ = writeln!(
            out,
            "#### {} {} ({})\n",
            prune_label(held),
            code(&entry.name),
            code(&uuid.to_string())
        );
        for line in prune_lines(held) {
            let _ = writeln!(out, "- {}", text(&line));
        }
        out.push('\n');
    }

    if summary.in_sync > 0 {
        let _ = writeln!(
            out,
            "<details><summary>{} in sync</summary>\n",
            summary.in_sync
        );
        for stage in plan.manifest_entries() {
            if matches!(stage.action, Action::InSync { .. }) {
                let _ = writeln!(out, "- {} ({})", code(&stage.name), code(&origin_of(stage)));
            }
        }
        out.push_str("\n</details>\n\n");
    }

    if !plan.unmanaged.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>{} unmanaged (no manifest names them; never touched)</summary>\n",
            plan.unmanaged.len()
        );
        for u in &plan.unmanaged {
            let _ = writeln!(out, "- {} ({})", code(&u.name), code(&u.uuid.to_string()));
        }
        out.push_str("\n</details>\n\n");
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_survive_backticks() {
        assert_eq!(code("a"), "`a`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
    }

    #[test]
    fn fences_outgrow_their_content() {
        let lines = vec!["+name: \"````\"".to_owned()];
        assert!(fenced("diff", &lines).starts_with("`````diff\n"));
    }

    #[test]
    fn text_escapes_markup() {
        assert_eq!(text("<b>*x*</b>"), "\\<b\\>\\*x\\*\\</b\\>");
    }
}
