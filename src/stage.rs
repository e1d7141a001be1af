//! The one domain type for a Captcha Stage's managed fields.
//!
//! Both sides of every comparison are a [`StageFields`]: the desired side comes
//! from a manifest (omitted fields filled with authentik's defaults), the live
//! side from the API. Defaults and normalisation live here and nowhere else, so a
//! plan right after an apply is empty:
//!
//! - strings are trimmed, as authentik trims them on write;
//! - numbers are compared numerically (`1` equals `1.0`, `-0.0` equals `0.0`);
//! - read-only fields (`flow_set`, `component`, ...) are not part of the type;
//! - the write-only `private_key` is not part of the type either: it cannot be
//!   read back, so its drift is tracked by fingerprint (see `state`).
//!
//! Fields that only some authentik versions know (`request_content_type`, from
//! 2026.8) are `Option`s here and are compared only when the connected server
//! knows them (see [`crate::capabilities::Capabilities`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::secret::{KeySource, PrivateKey};

/// authentik's default `js_url` for a new stage (reCAPTCHA through recaptcha.net).
pub const DEFAULT_JS_URL: &str = "https://www.recaptcha.net/recaptcha/api.js";
/// authentik's default `api_url` for a new stage.
pub const DEFAULT_API_URL: &str = "https://www.recaptcha.net/recaptcha/api/siteverify";
pub(crate) const DEFAULT_INTERACTIVE: bool = false;
pub(crate) const DEFAULT_SCORE_MIN_THRESHOLD: f64 = 0.5;
pub(crate) const DEFAULT_SCORE_MAX_THRESHOLD: f64 = 1.0;
pub(crate) const DEFAULT_ERROR_ON_INVALID_SCORE: bool = true;
/// authentik's default `request_content_type` (2026.8 and later).
pub(crate) const DEFAULT_REQUEST_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The fields stagesync manages and compares, without the private key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageFields {
    pub name: String,
    pub public_key: String,
    pub js_url: String,
    pub api_url: String,
    pub interactive: bool,
    pub score_min_threshold: f64,
    pub score_max_threshold: f64,
    pub error_on_invalid_score: bool,
    /// `None` on the live side when the server does not report it (before 2026.8);
    /// on the desired side always `Some` (the default when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_content_type: Option<String>,
}

/// One managed field, in the order plans show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Name,
    PublicKey,
    JsUrl,
    ApiUrl,
    Interactive,
    ScoreMinThreshold,
    ScoreMaxThreshold,
    ErrorOnInvalidScore,
    RequestContentType,
}

impl Field {
    pub(crate) const ALL: [Field; 9] = [
        Field::Name,
        Field::PublicKey,
        Field::JsUrl,
        Field::ApiUrl,
        Field::Interactive,
        Field::ScoreMinThreshold,
        Field::ScoreMaxThreshold,
        Field::ErrorOnInvalidScore,
        Field::RequestContentType,
    ];

    /// The key as written in manifests and in authentik's API.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::PublicKey => "public_key",
            Field::JsUrl => "js_url",
            Field::ApiUrl => "api_url",
            Field::Interactive => "interactive",
            Field::ScoreMinThreshold => "score_min_threshold",
            Field::ScoreMaxThreshold => "score_max_threshold",
            Field::ErrorOnInvalidScore => "error_on_invalid_score",
            Field::RequestContentType => "request_content_type",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A field's value, for diffs and plan output. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub(crate) enum Value {
    Str(String),
    Bool(bool),
    Num(f64),
    /// The server did not report the field.
    Absent,
}

impl Value {
    /// Equality as authentik stores values: strings trimmed, numbers numerically.
    pub(crate) fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => a.trim() == b.trim(),
            (Value::Num(a), Value::Num(b)) => a == b || (a.is_nan() && b.is_nan()),
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) => {
                if n.fract() == 0.0 && n.is_finite() {
                    write!(f, "{n:.1}")
                } else {
                    write!(f, "{n}")
                }
            }
            Value::Absent => f.write_str("(not reported)"),
        }
    }
}

/// One field that differs: live (`old`) to desired (`new`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: Field,
    pub(crate) old: Value,
    pub(crate) new: Value,
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl StageFields {
    /// A stage with `name`, `public_key` and every optional field at authentik's default.
    pub fn with_defaults(name: impl Into<String>, public_key: impl Into<String>) -> Self {
        StageFields {
            name: name.into(),
            public_key: public_key.into(),
            js_url: DEFAULT_JS_URL.to_owned(),
            api_url: DEFAULT_API_URL.to_owned(),
            interactive: DEFAULT_INTERACTIVE,
            score_min_threshold: DEFAULT_SCORE_MIN_THRESHOLD,
            score_max_threshold: DEFAULT_SCORE_MAX_THRESHOLD,
            error_on_invalid_score: DEFAULT_ERROR_ON_INVALID_SCORE,
            request_content_type: Some(DEFAULT_REQUEST_CONTENT_TYPE.to_owned()),
        }
    }

    /// The same values as authentik would store them (strings trimmed, `-0.0` as `0.0`).
    pub fn normalized(mut self) -> Self {
        fn trim(s: &mut String) {
            let t = s.trim();
            if t.len() != s.len() {
                *s = t.to_owned();
            }
        }
        trim(&mut self.name);
        trim(&mut self.public_key);
        trim(&mut self.js_url);
        trim(&mut self.api_url);
        if let Some(ct) = self.request_content_type.as_mut() {
            trim(ct);
        }
        self.score_min_threshold += 0.0;
        self.score_max_threshold += 0.0;
        self
    }

    pub(crate) fn get(&self, field: Field) -> Value {
        match field {
            Field::Name => Value::Str(self.name.clone()),
            Field::PublicKey => Value::Str(self.public_key.clone()),
            Field::JsUrl => Value::Str(self.js_url.clone()),
            Field::ApiUrl => Value::Str(self.api_url.clone()),
            Field::Interactive => Value::Bool(self.interactive),
            Field::ScoreMinThreshold => Value::Num(self.score_min_threshold),
            Field::ScoreMaxThreshold => Value::Num(self.score_max_threshold),
            Field::ErrorOnInvalidScore => Value::Bool(self.error_on_invalid_score),
            Field::RequestContentType => match &self.request_content_type {
                Some(s) => Value::Str(s.clone()),
                None => Value::Absent,
            },
        }
    }

    /// The fields where `live` (self) differs from `desired`, in [`Field::ALL`] order.
    /// `compared` decides which fields take part (version-dependent ones may not).
    pub(crate) fn changes_to(
        &self,
        desired: &StageFields,
        compared: impl Fn(Field) -> bool,
    ) -> Vec<FieldChange> {
        Field::ALL
            .into_iter()
            .filter(|f| compared(*f))
            .filter_map(|field| {
                let old = self.get(field);
                let new = desired.get(field);
                (!old.same_as(&new)).then_some(FieldChange { field, old, new })
            })
            .collect()
    }
}

/// Where a desired stage was declared: the file as the user would type it, and
/// the 1-based line and column of its YAML document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A stage as a manifest wants it, with its private key resolved.
#[derive(Clone, Debug)]
pub struct DesiredStage {
    pub origin: Origin,
    /// Pins the manifest to an existing stage (so a rename is a rename).
    pub uuid: Option<Uuid>,
    pub fields: StageFields,
    pub key_source: KeySource,
    pub private_key: PrivateKey,
}

#[cfg(test)]
impl DesiredStage {
    /// A manifest `NAME.yaml` declaring `name` (site key `site`, key `!Env KEY`
    /// = `k`), pinned to `pin`: the unit tests' stock stage.
    pub(crate) fn for_test(name: &str, pin: Option<Uuid>) -> DesiredStage {
        DesiredStage {
            origin: Origin {
                file: std::path::PathBuf::from(format!("{name}.yaml")),
                line: 1,
                column: 1,
            },
            uuid: pin,
            fields: StageFields::with_defaults(name, "site"),
            key_source: crate::secret::KeySource::Env("KEY".into()),
            private_key: crate::secret::SecretString::from("k"),
        }
    }
}

/// One thing that uses a stage, as authentik's `used_by` lists it: a flow
/// (`model_name` `flow`, action `cascade_many`), a flow-stage binding
/// (`flowstagebinding`, `cascade`), an identification stage embedding the
/// captcha (`identificationstage`, `set_null`), or anything else.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct UsedBy {
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub model_name: String,
    /// Not always a uuid (authentik's primary keys vary by model).
    #[serde(default)]
    pub pk: String,
    #[serde(default)]
    pub name: String,
    /// What a delete does to it: `cascade`, `cascade_many`, `set_null`, ...
    #[serde(default)]
    pub action: String,
}

/// A captcha stage as authentik reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveStage {
    pub uuid: Uuid,
    pub fields: StageFields,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compare_equal_after_trimming_and_numeric_comparison() {
        let live = StageFields {
            public_key: " site ".into(),
            score_max_threshold: 1.0,
            ..StageFields::with_defaults("a", "site")
        };
        let desired = StageFields::with_defaults("a", "site");
        assert!(live.changes_to(&desired, |_| true).is_empty());
    }

    #[test]
    fn a_changed_field_is_reported_old_to_new() {
        let live = StageFields::with_defaults("a", "site");
        let desired = StageFields {
            score_min_threshold: 0.7,
            ..live.clone()
        };
        let changes = live.changes_to(&desired, |_| true);
        assert_eq!(
            changes,
            vec![FieldChange {
                field: Field::ScoreMinThreshold,
                old: Value::Num(0.5),
                new: Value::Num(0.7)
            }]
        );
    }

    #[test]
    fn an_uncompared_field_never_differs() {
        let live = StageFields {
            request_content_type: None,
            ..StageFields::with_defaults("a", "p")
        };
        let desired = StageFields::with_defaults("a", "p");
        assert_eq!(live.changes_to(&desired, |_| true).len(), 1);
        assert!(
            live.changes_to(&desired, |f| f != Field::RequestContentType)
                .is_empty()
        );
    }
}
