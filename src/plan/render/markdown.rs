//! The Markdown plan, for pull-request comments: the summary line and a count
//! table, every security warning and every error first, then one entry per
//! delete, create and update with its diff folded in `<details>`, and the
//! in-sync and unmanaged stages folded in `<details>` too.
//!
//! It fits where it is posted ([`Fit`]): at most `max_chars` characters
//! (GitHub refuses a comment over 65,536). What does not fit is left out from
//! the end, in that order of importance, and a last paragraph says how many
//! entries were left out and where the full plan is.
//!
//! Names and values are user data: code spans and fences are made longer than
//! any run of backticks inside them, plain text has Markdown and HTML
//! characters backslash-escaped, and text in HTML (a `<summary>`) is
//! entity-escaped, so a stage name cannot break the comment.

use std::fmt::Write as _;

use super::{
    body_lines, delete_of, key_check_text, origin_short, prune_label, prune_lines, removal_lines,
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

/// `s` as text inside HTML (a `<summary>`, where Markdown is not rendered).
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in escape(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// `file:line` of an entry's manifest.
fn origin_of(entry: &crate::plan::Entry) -> String {
    entry.origin.as_ref().map(origin_short).unwrap_or_default()
}

/// Where the Markdown plan is posted: how long it may be, and where a reader
/// finds what did not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fit {
    /// At most this many characters (Unicode scalar values), all included.
    pub max_chars: usize,
    /// Where the full plan is, as the reader should be told (a CI run's URL).
    pub full_plan_at: Option<String>,
    /// The plan file `plan --out` writes alongside, which holds every entry.
    pub plan_file: Option<String>,
}

impl Fit {
    /// GitHub's limit on a pull-request comment.
    pub const GITHUB_COMMENT: usize = 65_536;
    /// The smallest limit accepted: the summary, the table and the last
    /// paragraph always fit in it.
    pub const MIN_CHARS: usize = 2_000;
}

impl Default for Fit {
    fn default() -> Self {
        Fit {
            max_chars: Fit::GITHUB_COMMENT,
            full_plan_at: None,
            plan_file: None,
        }
    }
}

/// What a piece of the Markdown shows, to count what was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Warning,
    Error,
    Delete,
    Create,
    Update,
    InSync,
    Unmanaged,
}

/// A heading (or nothing), its items, and what closes it; items are left out
/// from the end when the whole does not fit.
struct Section {
    heading: String,
    items: Vec<(Part, String)>,
    trailer: String,
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The plan as GitHub-flavoured Markdown, under GitHub's comment limit.
pub fn render_markdown(plan: &Plan) -> String {
    render_markdown_fit(plan, &Fit::default())
}

/// The plan as GitHub-flavoured Markdown, within `fit`.
pub fn render_markdown_fit(plan: &Plan, fit: &Fit) -> String {
    let head = head(plan);
    let sections = sections(plan);
    let whole = sections.iter().fold(head.clone(), |mut out, s| {
        if !s.items.is_empty() {
            out.push_str(&s.heading);
            for (_, item) in &s.items {
                out.push_str(item);
            }
            out.push_str(&s.trailer);
        }
        out
    });
    let whole = finish(whole);
    if chars(&whole) <= fit.max_chars {
        return whole;
    }

    // Room for the last paragraph as long as it can get: everything left out.
    let all: Vec<Part> = sections
        .iter()
        .flat_map(|s| s.items.iter().map(|(p, _)| *p))
        .collect();
    let reserve = chars(&left_out(&all, &all, fit)) + 2;
    let budget = fit.max_chars.saturating_sub(reserve);
    let mut out = head;
    let mut used = chars(&out);
    let mut omitted = Vec::new();
    let mut full = false;
    for section in &sections {
        let mut opened = false;
        for (part, item) in &section.items {
            let opening = if opened {
                0
            } else {
                chars(&section.heading) + chars(&section.trailer)
            };
            let cost = chars(item) + opening;
            if full || used + cost > budget {
                // Keep the order: once something is left out, all after it is.
                full = true;
                omitted.push(*part);
                continue;
            }
            if !opened {
                out.push_str(&section.heading);
                opened = true;
            }
            out.push_str(item);
            used += cost;
        }
        if opened {
            out.push_str(&section.trailer);
        }
    }
    let mut out = finish(out);
    out.push('\n');
    out.push_str(&left_out(&omitted, &all, fit));
    out.push('\n');
    out
}

fn finish(mut out: String) -> String {
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The title, the summary line and the count table: always shown.
fn head(plan: &Plan) -> String {
    let summary = plan.summary();
    let mut out = String::from("### stagesync plan\n\n");
    let _ = writeln!(out, "**{}**\n", summary_line(&summary));
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
    out
}

/// Everything after the head, most important first: warnings, errors,
/// deletes, then creates and updates in plan order, then the folded lists.
fn sections(plan: &Plan) -> Vec<Section> {
    let warnings = crate::plan::warnings(plan);
    let mut sections = Vec::new();

    sections.push(Section {
        heading: "#### Security-relevant changes\n\n".to_owned(),
        items: warnings
            .iter()
            .map(|w| (Part::Warning, format!("- {}\n", text(&w.to_string()))))
            .collect(),
        trailer: "\n".to_owned(),
    });

    sections.push(Section {
        heading: "#### Errors\n\n".to_owned(),
        items: plan
            .shown_entries()
            .into_iter()
            .filter_map(|stage| match &stage.action {
                Action::Error { message, .. } => Some((
                    Part::Error,
                    format!(
                        "- **! error** {} ({}): {}\n",
                        code(&stage.name),
                        code(&origin_of(stage)),
                        text(message)
                    ),
                )),
                _ => None,
            })
            .collect(),
        trailer: "\n".to_owned(),
    });

    let mut prunes = Vec::new();
    for entry in plan.prune_entries() {
        let Some((uuid, held)) = delete_of(&entry.action) else {
            continue;
        };
        let mut item = format!(
            "#### {} {} ({})\n\n",
            prune_label(held),
            code(&entry.name),
            code(&uuid.to_string())
        );
        for line in prune_lines(held) {
            let _ = writeln!(item, "- {}", text(&line));
        }
        for (line, guard) in removal_lines(plan, entry) {
            let _ = writeln!(item, "- {}", text(&line));
            for line in warning_lines(&warnings, guard) {
                let _ = writeln!(item, "  - **Security:** {}", text(&line[2..]));
            }
        }
        item.push('\n');
        prunes.push((Part::Delete, item));
    }
    // A guard its stage's list no longer names: destructive, so with the
    // deletes, never among what a cut leaves out first (a stage's own delete
    // is a prune entry, above).
    for entry in plan.shown_entries() {
        if !(entry.is_manifest() && matches!(entry.action, Action::Delete { held: None, .. })) {
            continue;
        }
        let mut item = format!(
            "#### - delete {} ({})\n\n",
            code(&entry.name),
            code(&origin_of(entry))
        );
        for line in warning_lines(&warnings, &entry.name) {
            let _ = writeln!(item, "> **Security:** {}\n", text(&line[2..]));
        }
        prunes.push((Part::Delete, item));
    }
    sections.push(Section {
        heading: String::new(),
        items: prunes,
        trailer: String::new(),
    });

    let mut writes = Vec::new();
    for stage in plan.shown_entries() {
        let (part, label) = match stage.action {
            Action::Create { .. } => (Part::Create, "+ create"),
            Action::Update { .. } => (Part::Update, "~ update"),
            Action::InSync { .. } | Action::Error { .. } | Action::Delete { .. } => continue,
        };
        let mut item = format!(
            "<details><summary>{label} <code>{}</code> (<code>{}</code>)</summary>\n\n",
            html(&stage.name),
            html(&origin_of(stage))
        );
        if let Some(after) = plan.waits_for(stage) {
            let _ = writeln!(
                item,
                "Waits for stage {} to be renamed away from this name.\n",
                code(&after.to_string())
            );
        }
        if let Some(by) = plan.changed_by.get(&stage.id) {
            let _ = writeln!(item, "_{}_\n", text(&by.to_string()));
        }
        for line in warning_lines(&warnings, &stage.name) {
            let _ = writeln!(item, "> **Security:** {}\n", text(&line[2..]));
        }
        item.push_str(&fenced(
            "diff",
            &body_lines(
                &stage.action,
                stage.key_source.as_ref(),
                &plan.known_fields(stage.kind),
            ),
        ));
        item.push('\n');
        if let Some(check) = plan.key_checks.get(&stage.id) {
            let mark = match check.verdict() {
                Verdict::Valid => "",
                Verdict::Invalid | Verdict::Mismatch => "**",
                Verdict::Unknown => "_",
            };
            let _ = writeln!(
                item,
                "Key check: {mark}{}{mark}\n",
                text(&key_check_text(check))
            );
        }
        item.push_str("</details>\n\n");
        writes.push((part, item));
    }
    sections.push(Section {
        heading: String::new(),
        items: writes,
        // Said once, whatever is left out.
        trailer: plan
            .changed_by_unknown
            .as_ref()
            .map(|why| format!("Changed by: unknown ({}).\n\n", text(why)))
            .unwrap_or_default(),
    });

    let in_sync: Vec<_> = plan
        .shown_entries()
        .into_iter()
        .filter(|stage| matches!(stage.action, Action::InSync { .. }))
        .collect();
    if !in_sync.is_empty() {
        let mut item = format!("<details><summary>{} in sync</summary>\n\n", in_sync.len());
        for stage in in_sync {
            let _ = writeln!(
                item,
                "- {} ({})",
                code(&stage.name),
                code(&origin_of(stage))
            );
        }
        item.push_str("\n</details>\n\n");
        sections.push(Section {
            heading: String::new(),
            items: vec![(Part::InSync, item)],
            trailer: String::new(),
        });
    }

    if !plan.unmanaged.is_empty() {
        let mut item = format!(
            "<details><summary>{} unmanaged (no manifest names them; never touched)</summary>\n\n",
            plan.unmanaged.len()
        );
        for u in &plan.unmanaged {
            let _ = writeln!(item, "- {} ({})", code(&u.name), code(&u.uuid.to_string()));
        }
        item.push_str("\n</details>\n\n");
        sections.push(Section {
            heading: String::new(),
            items: vec![(Part::Unmanaged, item)],
            trailer: String::new(),
        });
    }
    sections
}

/// The last paragraph of a plan cut to fit: how many entries of each kind
/// were left out, and where the full plan is.
fn left_out(omitted: &[Part], all: &[Part], fit: &Fit) -> String {
    let count = |of: &[Part], part: Part| of.iter().filter(|p| **p == part).count();
    let entries = [Part::Error, Part::Delete, Part::Create, Part::Update];
    let left: usize = entries.iter().map(|p| count(omitted, *p)).sum();
    let total: usize = entries.iter().map(|p| count(all, *p)).sum();
    let mut what = Vec::new();
    for (part, noun) in [
        (Part::Error, "errors"),
        (Part::Delete, "prune entries"),
        (Part::Create, "creates"),
        (Part::Update, "updates"),
    ] {
        let n = count(omitted, part);
        if n > 0 {
            what.push(format!("{n} {noun}"));
        }
    }
    let warnings = count(omitted, Part::Warning);
    if warnings > 0 {
        what.push(format!(
            "{warnings} of {} security warnings",
            count(all, Part::Warning)
        ));
    }
    if count(omitted, Part::InSync) > 0 {
        what.push("the list of stages in sync".to_owned());
    }
    if count(omitted, Part::Unmanaged) > 0 {
        what.push("the list of unmanaged stages".to_owned());
    }
    let mut out = format!(
        "---\n\n**{left} of {total} entries left out** to stay under {} characters ({}).",
        thousands(fit.max_chars),
        if what.is_empty() {
            "nothing else".to_owned()
        } else {
            what.join(", ")
        }
    );
    out.push_str(" The full plan: ");
    let mut at = Vec::new();
    if let Some(place) = &fit.full_plan_at {
        at.push(text(place));
    }
    if let Some(file) = &fit.plan_file {
        // A path too long for the smallest limit is named by its file name.
        let file = match std::path::Path::new(file).file_name() {
            Some(name) if file.chars().count() > 200 => name.to_string_lossy(),
            _ => file.into(),
        };
        at.push(format!("the plan file {} (every entry)", code(&file)));
    }
    if at.is_empty() {
        at.push("`stagesync plan` prints every entry (in CI: the job's log)".to_owned());
    }
    out.push_str(&at.join("; "));
    out.push('.');
    out
}

/// `65,536`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
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
