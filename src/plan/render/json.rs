//! The JSON plan: stable, versioned, documented in `docs/plan.md` ("`--format json`").
//!
//! Every stage object has every key (`null` or `[]` when not applicable), so
//! consumers need no per-action schema. One exception: `key_check` is there
//! only on the entries whose key was checked (`plan --verify-keys`), so a plan
//! without the flag is what it always was. A breaking change bumps
//! [`JSON_FORMAT_VERSION`]; adding keys does not.

use serde::Serialize;

use crate::drift::ChangedBy;
use crate::kinds::Object;
use crate::kinds::field::FieldChange;
use crate::plan::key_check::Verdict;
use crate::plan::{Action, Held, KeyStatus, Plan, Summary, Unmanaged, Warning};

/// `format_version` of [`render_json`]'s output.
pub const JSON_FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct JsonPlan<'a> {
    format_version: u32,
    summary: Summary,
    has_changes: bool,
    known_fields: Vec<&'static str>,
    stages: Vec<JsonStage<'a>>,
    unmanaged: &'a [Unmanaged],
    /// Security-relevant changes, each with its `message`.
    warnings: Vec<JsonWarning>,
    /// Managed stages whose manifests are gone: `{uuid, name, decision}` with
    /// `users` (blocked) or `reason` (held back). Left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prune: Vec<JsonPrune<'a>>,
    /// Why nobody could be named for a drift (the event log cannot be
    /// read). Left out when the log was read or nothing drifted.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_by_unknown: Option<&'a str>,
}

/// A delete entry, as the `prune` array shows it.
#[derive(Serialize)]
struct JsonPrune<'a> {
    uuid: uuid::Uuid,
    name: &'a str,
    #[serde(flatten)]
    decision: JsonDecision<'a>,
    /// Its own guards, removed first (each also in `warnings`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    guards: Vec<JsonRemovedGuard<'a>>,
}

/// A guard a pruned stage's delete removes first: `unbind` (a binding's
/// delete) or `update` (an identification stage made to embed no captcha).
#[derive(Serialize)]
struct JsonRemovedGuard<'a> {
    name: &'a str,
    uuid: Option<uuid::Uuid>,
    action: &'static str,
}

#[derive(Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
enum JsonDecision<'a> {
    Delete,
    Blocked { users: &'a [String] },
    NotPruned,
    HeldBack { reason: &'a str },
}

impl<'a> JsonDecision<'a> {
    fn of(held: Option<&'a Held>) -> Self {
        match held {
            None => JsonDecision::Delete,
            Some(Held::InUse { users }) => JsonDecision::Blocked { users },
            Some(Held::NotPruned) => JsonDecision::NotPruned,
            Some(Held::Guard { reason }) => JsonDecision::HeldBack { reason },
        }
    }
}

#[derive(Serialize)]
struct JsonWarning {
    #[serde(flatten)]
    warning: Warning,
    message: String,
}

#[derive(Serialize)]
struct JsonOrigin {
    file: String,
    line: usize,
    column: usize,
}

#[derive(Serialize)]
struct JsonStage<'a> {
    /// `guard` for what a stage guards; left out for a captcha stage, so
    /// plans without guards read as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<crate::kinds::Kind>,
    action: &'static str,
    name: &'a str,
    origin: JsonOrigin,
    uuid: Option<uuid::Uuid>,
    after: Option<uuid::Uuid>,
    key_source: String,
    private_key: Option<KeyStatus>,
    changes: &'a [FieldChange],
    fields: Option<&'a Object>,
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_check: Option<JsonKeyCheck<'a>>,
    /// Who made a drifted stage what it is (`username`, `client_ip`, `at`,
    /// `action`), when the event log names someone other than stagesync.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_by: Option<&'a ChangedBy>,
}

/// The shape of one check in `stagesync verify --format json`, without what
/// the entry already says (`stage`, and `api_url` in `fields`).
#[derive(Serialize)]
struct JsonKeyCheck<'a> {
    result: Verdict,
    reason: String,
    error_codes: &'a [String],
    http_status: Option<u16>,
    contacted: bool,
}

/// The plan as one pretty-printed JSON document, with a trailing newline.
pub fn render_json(plan: &Plan) -> String {
    let stages = plan
        .shown_entries()
        .into_iter()
        .map(|s| {
            let (action, uuid, key, changes, fields, message): (_, _, _, &[FieldChange], _, _) =
                match &s.action {
                    Action::Create { write, key } => {
                        ("create", None, Some(*key), &[], Some(&write.object), None)
                    }
                    Action::Update {
                        uuid,
                        changes,
                        write,
                        key,
                    } => (
                        "update",
                        Some(*uuid),
                        Some(*key),
                        changes,
                        Some(&write.object),
                        None,
                    ),
                    Action::InSync { uuid } => (
                        "in_sync",
                        Some(*uuid),
                        Some(KeyStatus::Unchanged),
                        &[],
                        None,
                        None,
                    ),
                    Action::Error { uuid, message } => {
                        ("error", *uuid, None, &[], None, Some(message.as_str()))
                    }
                    Action::Delete { uuid, .. } => ("delete", Some(*uuid), None, &[], None, None),
                };
            JsonStage {
                kind: Some(s.kind).filter(|k| *k != crate::kinds::Kind::CaptchaStage),
                action,
                name: &s.name,
                origin: JsonOrigin {
                    file: s
                        .origin
                        .as_ref()
                        .map(|o| o.file.display().to_string())
                        .unwrap_or_default(),
                    line: s.origin.as_ref().map_or(0, |o| o.line),
                    column: s.origin.as_ref().map_or(0, |o| o.column),
                },
                uuid,
                after: plan.waits_for(s),
                key_source: s
                    .key_source
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                private_key: key,
                changes,
                fields,
                message,
                key_check: plan.key_checks.get(&s.id).map(|c| JsonKeyCheck {
                    result: c.verdict(),
                    reason: c.reason.describe(),
                    error_codes: &c.error_codes,
                    http_status: c.status,
                    contacted: c.reason.contacted(),
                }),
                changed_by: plan.changed_by.get(&s.id),
            }
        })
        .collect();
    let doc = JsonPlan {
        format_version: JSON_FORMAT_VERSION,
        summary: plan.summary(),
        has_changes: plan.has_changes(),
        known_fields: plan.known_fields(crate::kinds::Kind::CaptchaStage),
        stages,
        unmanaged: &plan.unmanaged,
        warnings: crate::plan::warnings(plan)
            .into_iter()
            .map(|warning| JsonWarning {
                message: warning.message(),
                warning,
            })
            .collect(),
        prune: plan
            .prune_entries()
            .filter_map(|entry| match &entry.action {
                Action::Delete { uuid, held } => Some(JsonPrune {
                    uuid: *uuid,
                    name: &entry.name,
                    decision: JsonDecision::of(held.as_ref()),
                    guards: plan
                        .removed_with(entry)
                        .map(|guard| JsonRemovedGuard {
                            name: &guard.name,
                            uuid: guard.uuid(),
                            action: match guard.action {
                                Action::Delete { .. } => "unbind",
                                _ => "update",
                            },
                        })
                        .collect(),
                }),
                _ => None,
            })
            .collect(),
        changed_by_unknown: plan.changed_by_unknown.as_deref(),
    };
    match serde_json::to_string_pretty(&doc) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Every map key is a string and every value serialisable; keep the
        // promise of valid JSON anyway rather than panic.
        Err(e) => format!(
            "{{\"format_version\": {JSON_FORMAT_VERSION}, \"error\": {}}}\n",
            serde_json::Value::String(e.to_string())
        ),
    }
}
