//! What a notification says (pure): one JSON message per event worth a
//! human's attention, or a Slack/Mattermost-compatible `{"text": ...}` body.
//! Delivery is the daemon's ([`crate::daemon::notify`]).
//!
//! No secret ever: a message holds names, files, uuids, the fields that
//! changed (a private key is write-only and never a field) and who changed
//! them; errors are the messages the log shows, which never hold a secret.

use serde::Serialize;
use uuid::Uuid;

use super::attribution::ChangedBy;
use crate::kinds::Kind;
use crate::kinds::field::FieldChange;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Someone changed a managed object outside git; stagesync wrote it back.
    DriftReverted,
    /// Drift found and not written (`--dry-run`, a freeze).
    DriftDetected,
    /// A write started failing (not every retry).
    WriteFailed,
    /// Writes of an object that failed work again.
    WriteRecovered,
    /// A managed object no manifest declares any more was deleted.
    PruneDone,
    /// A delete is blocked: something uses the object.
    PruneBlocked,
    /// A guard was removed (its manifest no longer lists it, or its stage
    /// was pruned): a login flow runs without that captcha from now on.
    GuardRemoved,
    /// `--verify-keys`: a stage's key check has another result than before.
    KeyCheckChanged,
}

/// The body's shape (`--notify-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The whole message as JSON.
    #[default]
    Json,
    /// `{"text": ...}`: Slack's and Mattermost's incoming webhooks.
    Slack,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    pub event: Event,
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// Its manifest, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Field by field, from what authentik had to what the manifest says.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// The change in one line, as the log says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// Who made the drift, when the event log names someone else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<ChangedBy>,
    /// The event log could not be read: who made it is unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_by_unknown: bool,
    /// Why a write failed, or what blocks a delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Notification {
    /// A message about `name` with nothing else said yet.
    pub fn new(event: Event, kind: Kind, name: &str) -> Notification {
        Notification {
            event,
            kind,
            name: name.to_owned(),
            file: None,
            uuid: None,
            changes: Vec::new(),
            change: None,
            changed_by: None,
            changed_by_unknown: false,
            reason: None,
        }
    }

    /// One sentence for people: `stagesync reverted captcha stage login
    /// (stages/login.yaml): score_min_threshold: 0.1 -> 0.5; changed by alice
    /// from 192.0.2.7 at 2026-12-04T14:02:11Z`.
    pub fn text(&self) -> String {
        let what = match self.event {
            Event::DriftReverted => "reverted",
            Event::DriftDetected => "found drift (not written) in",
            Event::WriteFailed => "cannot write",
            Event::WriteRecovered => "can write again",
            Event::PruneDone => "deleted (pruned)",
            Event::PruneBlocked => "cannot prune",
            Event::GuardRemoved => "removed",
            Event::KeyCheckChanged => "checked the key of",
        };
        let mut text = format!("stagesync {what} {} {}", self.kind.noun(), self.name);
        if let Some(file) = &self.file {
            text.push_str(&format!(" ({file})"));
        }
        let mut parts = Vec::new();
        if let Some(change) = &self.change {
            parts.push(change.clone());
        }
        if let Some(by) = &self.changed_by {
            parts.push(by.to_string());
        } else if self.changed_by_unknown {
            parts.push("changed by: unknown".to_owned());
        }
        if let Some(reason) = &self.reason {
            parts.push(reason.clone());
        }
        if !parts.is_empty() {
            text.push_str(": ");
            text.push_str(&parts.join("; "));
        }
        text
    }

    /// The request body in `format`.
    pub fn body(&self, format: Format) -> Vec<u8> {
        let value = match format {
            Format::Json => {
                let mut value = serde_json::to_value(self).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    object.insert("source".into(), "stagesync".into());
                    object.insert("text".into(), self.text().into());
                }
                value
            }
            Format::Slack => serde_json::json!({ "text": slack_escape(&self.text()) }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// Slack's three control characters in message text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::field::Value;

    fn reverted() -> Notification {
        Notification {
            file: Some("stages/login.yaml".into()),
            uuid: Some(Uuid::nil()),
            changes: vec![FieldChange {
                field: "score_min_threshold",
                old: Value::Num(0.1),
                new: Value::Num(0.5),
            }],
            change: Some("score_min_threshold: 0.1 -> 0.5".into()),
            changed_by: Some(ChangedBy {
                username: Some("alice".into()),
                client_ip: Some("192.0.2.7".into()),
                at: "2026-12-04T14:02:11Z".into(),
                action: "model_updated".into(),
            }),
            ..Notification::new(Event::DriftReverted, Kind::CaptchaStage, "login")
        }
    }

    #[test]
    fn the_json_body_names_what_from_what_to_what_and_who() {
        let body: serde_json::Value =
            serde_json::from_slice(&reverted().body(Format::Json)).unwrap();
        assert_eq!(body["event"], "drift_reverted");
        assert_eq!(body["kind"], "captcha_stage");
        assert_eq!(body["name"], "login");
        assert_eq!(body["changes"][0]["field"], "score_min_threshold");
        assert_eq!(body["changes"][0]["old"], 0.1);
        assert_eq!(body["changes"][0]["new"], 0.5);
        assert_eq!(body["changed_by"]["username"], "alice");
        assert_eq!(body["source"], "stagesync");
        assert_eq!(
            body["text"],
            "stagesync reverted captcha stage login (stages/login.yaml): score_min_threshold: 0.1 -> 0.5; changed by alice from 192.0.2.7 at 2026-12-04T14:02:11Z"
        );
        assert!(body.get("reason").is_none() && body.get("changed_by_unknown").is_none());
    }

    #[test]
    fn the_slack_body_is_text_alone_escaped() {
        let mut n = reverted();
        n.name = "<!channel> & co".into();
        let body: serde_json::Value = serde_json::from_slice(&n.body(Format::Slack)).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1);
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .contains("&lt;!channel&gt; &amp; co")
        );
    }

    #[test]
    fn unknown_authors_and_reasons_are_said() {
        let n = Notification {
            changed_by_unknown: true,
            reason: Some("HTTP 500".into()),
            ..Notification::new(Event::WriteFailed, Kind::CaptchaStage, "login")
        };
        assert_eq!(
            n.text(),
            "stagesync cannot write captcha stage login: changed by: unknown; HTTP 500"
        );
    }
}
