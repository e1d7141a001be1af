//! Renderings of a [`Plan`]: text for terminals, JSON for tools, Markdown for
//! pull-request comments. All pure `Plan -> String`.
//!
//! None of them can print a private key: the key a [`Plan`]'s writes carry is a
//! secret type (its `Debug` is redacted, it has no `Display` or `Serialize`), and
//! the renderers show only the [`KeyStatus`] and the
//! [`crate::secret::KeySource`], which names a variable or a file. Names and
//! values come from manifests and from authentik, so the text and Markdown
//! renderers pass them through [`crate::text::escape`] (JSON escapes control
//! characters itself).

mod json;
mod markdown;
mod text;

#[cfg(test)]
pub use json::JSON_FORMAT_VERSION;
pub use json::render_json;
pub use markdown::{Fit as MarkdownFit, render_markdown, render_markdown_fit};
pub use text::render_text;

use similar::TextDiff;

use super::{Action, Entry, Held, KeyStatus, Plan, Summary, Warning};
use crate::kinds::Object;
use crate::kinds::Origin;
use crate::kinds::field::{FieldChange, Value};
use crate::plan::key_check::KeyCheck;
use crate::secret::KeySource;
use crate::text::escape;

/// `Plan: 1 to create, 2 to update, 5 in sync, 1 unmanaged.`, with
/// `, 1 error` / `, 2 errors` before the full stop when there are errors.
pub(crate) fn summary_line(summary: &Summary) -> String {
    let mut line = format!(
        "Plan: {} to create, {} to update, {} in sync, {} unmanaged",
        summary.create, summary.update, summary.in_sync, summary.unmanaged
    );
    for (n, what) in [
        (summary.delete, "to delete"),
        (summary.blocked, "blocked"),
        (summary.held_back, "held back"),
        (summary.not_pruned, "not pruned"),
    ] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    match summary.error {
        0 => {}
        1 => line.push_str(", 1 error"),
        n => line.push_str(&format!(", {n} errors")),
    }
    match summary.warnings {
        0 => {}
        1 => line.push_str(", 1 security warning"),
        n => line.push_str(&format!(", {n} security warnings")),
    }
    line.push('.');
    line
}

fn key_phrase(key: KeyStatus) -> &'static str {
    match key {
        KeyStatus::Unchanged => "unchanged",
        KeyStatus::Rotated => "will be updated",
        KeyStatus::Unknown => "unknown, will be written",
    }
}

/// `private_key: (sensitive) will be updated, from !Env LOGIN_KEY`: where a
/// key that will be written comes from (a variable or a path, never a value).
fn key_line(key: KeyStatus, source: &KeySource) -> String {
    match key {
        KeyStatus::Unchanged => format!("private_key: (sensitive) {}", key_phrase(key)),
        KeyStatus::Rotated | KeyStatus::Unknown => escape(&format!(
            "private_key: (sensitive) {}, from {source}",
            key_phrase(key)
        ))
        .into_owned(),
    }
}

/// The security warnings of the stage named `name`, as `! message` lines.
fn warning_lines(warnings: &[Warning], name: &str) -> Vec<String> {
    warnings
        .iter()
        .filter(|w| w.stage == name)
        .map(|w| escape(&format!("! {}", w.message())).into_owned())
        .collect()
}

/// `stages/login.yaml:3`, escaped.
fn origin_short(origin: &Origin) -> String {
    escape(&format!("{}:{}", origin.file.display(), origin.line)).into_owned()
}

fn field_line(field: &str, value: &Value) -> String {
    escape(&format!("{field}: {value}")).into_owned()
}

/// One YAML-ish `field: value` line per known field.
fn field_lines(object: &Object, known: &[&'static str]) -> Vec<String> {
    // A key this object does not have (a guard's other kind of target) is
    // not shown.
    known
        .iter()
        .map(|&f| (f, object.value(f)))
        .filter(|(_, value)| *value != Value::Absent)
        .map(|(f, value)| field_line(f, &value))
        .collect()
}

/// A unified diff (live -> manifest) of the known fields of an update, with
/// every field as context so the reviewer sees the whole stage.
fn update_diff(desired: &Object, changes: &[FieldChange], known: &[&'static str]) -> String {
    let line_of = |f: &'static str, live: bool| {
        let value = changes
            .iter()
            .find(|c| c.field == f)
            .map(|c| if live { c.old.clone() } else { c.new.clone() })
            .unwrap_or_else(|| desired.value(f));
        field_line(f, &value) + "\n"
    };
    let shown: Vec<&'static str> = known
        .iter()
        .copied()
        .filter(|&f| desired.value(f) != Value::Absent || changes.iter().any(|c| c.field == f))
        .collect();
    let old: String = shown.iter().map(|&f| line_of(f, true)).collect();
    let new: String = shown.iter().map(|&f| line_of(f, false)).collect();
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(known.len())
        .header("live", "manifest")
        .to_string()
}

/// The lines of the body shown under an entry's header (without indentation),
/// shared by the text and Markdown renderers. Diff lines start with their
/// unified-diff marker. The secret's line only for a kind that has one.
fn body_lines(action: &Action, source: Option<&KeySource>, known: &[&'static str]) -> Vec<String> {
    let secret = |key: KeyStatus| source.map(|source| format!(" {}", key_line(key, source)));
    match action {
        Action::Create { write, key } => field_lines(&write.object, known)
            .into_iter()
            .map(|l| format!("+{l}"))
            .chain(secret(*key))
            .collect(),
        Action::Update {
            changes,
            write,
            key,
            ..
        } => {
            let mut lines: Vec<String> = if changes.is_empty() {
                vec![" (no field changes)".to_owned()]
            } else {
                update_diff(&write.object, changes, known)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            };
            lines.extend(secret(*key));
            lines
        }
        Action::InSync { .. } | Action::Error { .. } | Action::Delete { .. } => Vec::new(),
    }
}

/// `invalid: the provider refused the key (error-codes: invalid-input-secret)`,
/// escaped: the reason may quote a manifest's api_url.
fn key_check_text(check: &KeyCheck) -> String {
    let mut text = format!("{}: {}", check.verdict().as_str(), check.reason.describe());
    if !check.error_codes.is_empty() {
        text.push_str(&format!(" (error-codes: {})", check.error_codes.join(", ")));
    }
    escape(&text).into_owned()
}

/// The header label of a delete entry, shared by the text and Markdown plans.
fn prune_label(held: Option<&Held>) -> &'static str {
    match held {
        None => "- delete",
        Some(Held::InUse { .. }) => "! blocked",
        Some(Held::Guard { .. }) => "! held back",
        Some(Held::NotPruned) => "= not pruned",
    }
}

/// The lines under a delete entry's header (unescaped: names come from
/// authentik, so each renderer escapes them its own way).
fn prune_lines(held: Option<&Held>) -> Vec<String> {
    match held {
        None => {
            vec!["no longer in the manifests: deleted after every create and update".to_owned()]
        }
        Some(Held::InUse { users }) => {
            let mut lines = vec!["no longer in the manifests, but in use: not deleted".to_owned()];
            lines.extend(users.iter().cloned());
            lines.push("unbind it first, or restore its manifest".to_owned());
            lines
        }
        Some(Held::Guard { reason }) => vec![
            "no longer in the manifests; not deleted:".to_owned(),
            reason.clone(),
        ],
        Some(Held::NotPruned) => {
            vec!["no longer in the manifests (not pruned; --prune would delete it)".to_owned()]
        }
    }
}

/// What a pruned stage's delete removes first, one line per own guard
/// (unescaped), each with the guard's entry name for its warnings.
fn removal_lines<'p>(plan: &'p Plan, delete: &'p Entry) -> Vec<(String, &'p str)> {
    plan.removed_with(delete)
        .map(|guard| {
            let (_, target) = crate::kinds::guard::split_name(&guard.name);
            let line = match guard.action {
                Action::Delete { .. } => format!("first unbound from {target}"),
                _ => format!("first removed from {target} (which then embeds no captcha)"),
            };
            (line, guard.name.as_str())
        })
        .collect()
}

/// A delete entry's live object and why it is not deleted, if it is not.
fn delete_of(action: &Action) -> Option<(uuid::Uuid, Option<&Held>)> {
    match action {
        Action::Delete { uuid, held } => Some((*uuid, held.as_ref())),
        _ => None,
    }
}
