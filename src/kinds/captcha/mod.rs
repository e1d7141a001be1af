//! The first kind: authentik's Captcha Stage.
//!
//! Its table ([`FIELDS`]) is the one place a captcha field is declared: the
//! manifest keys and checks, defaults and normalisation, the diff, the wire
//! body, the simulator's validation and the JSON schemas all come from it
//! (see [`crate::kinds::field`]). Both sides of every comparison are a
//! [`StageFields`]: the desired side from a manifest (omitted fields at
//! authentik's defaults), the live side from the API.
//!
//! - read-only fields (`flow_set`, `component`, ...) are not part of the type;
//! - the write-only `private_key` is not part of the type either: it cannot be
//!   read back, so its drift is tracked by fingerprint (see `state`);
//! - `request_content_type` exists from authentik 2026.8 on: it is `None` on
//!   the live side of an older server, and neither compared nor sent to one.
//!
//! The rest of the kind: [`MANIFEST`] (what a document holds beyond the
//! fields, and the rule across them), [`matching`] (which live stage a
//! manifest means: its identity, and renames that wait for each other),
//! [`api`] (endpoints and wire format), [`warnings`] (changes a reviewer must
//! not miss) and [`export`] (a manifest from a live stage).

pub mod api;
pub(crate) mod export;
pub(crate) mod matching;
pub(crate) mod warnings;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Origin;
use super::field::{
    self, Access, FieldChange, FieldSpec, FieldType, KeyDoc, Literal, ManifestSpec, Value,
    Violation,
};
use crate::capabilities::{Capabilities, ServerVersion};
use crate::secret::{KeySource, PrivateKey};

/// authentik's default `js_url` for a new stage (reCAPTCHA through recaptcha.net).
pub const DEFAULT_JS_URL: &str = "https://www.recaptcha.net/recaptcha/api.js";
/// authentik's default `api_url` for a new stage.
pub const DEFAULT_API_URL: &str = "https://www.recaptcha.net/recaptcha/api/siteverify";
/// authentik's default `request_content_type` (2026.8 and later).
pub(crate) const DEFAULT_REQUEST_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
/// The values `request_content_type` accepts.
pub(crate) const REQUEST_CONTENT_TYPES: [&str; 2] =
    ["application/x-www-form-urlencoded", "application/json"];
/// The first release whose captcha stages have `request_content_type`.
pub(crate) const REQUEST_CONTENT_TYPE_SINCE: ServerVersion = ServerVersion::new(2026, 8, 0);

/// The longest stage name accepted, in characters. authentik stores names in a
/// unique index whose entries fail above about 2.7 KB (it then answers an empty
/// 405); 255 characters are at most 1,020 bytes of UTF-8, well below, and more
/// than any name a person reads in a list.
pub(crate) const MAX_NAME_CHARS: usize = 255;

/// The fields stagesync manages and compares, without the private key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

pub(crate) const NAME: FieldSpec<StageFields> = FieldSpec {
    key: "name",
    ty: FieldType::Name {
        max_chars: MAX_NAME_CHARS,
    },
    default: None,
    since: None,
    doc: "The stage's name; its identity in authentik. Unique across the directory. At most 255 characters, no control characters.",
    access: Access::Str(|f| &f.name, |f| &mut f.name),
};
pub(crate) const PUBLIC_KEY: FieldSpec<StageFields> = FieldSpec {
    key: "public_key",
    ty: FieldType::Text,
    default: None,
    since: None,
    doc: "The provider's public site key.",
    access: Access::Str(|f| &f.public_key, |f| &mut f.public_key),
};
pub(crate) const JS_URL: FieldSpec<StageFields> = FieldSpec {
    key: "js_url",
    ty: FieldType::Url,
    default: Some(Literal::Str(DEFAULT_JS_URL)),
    since: None,
    doc: "URL of the provider's JavaScript.",
    access: Access::Str(|f| &f.js_url, |f| &mut f.js_url),
};
pub(crate) const API_URL: FieldSpec<StageFields> = FieldSpec {
    key: "api_url",
    ty: FieldType::Url,
    default: Some(Literal::Str(DEFAULT_API_URL)),
    since: None,
    doc: "URL of the provider's verification API.",
    access: Access::Str(|f| &f.api_url, |f| &mut f.api_url),
};
pub(crate) const INTERACTIVE: FieldSpec<StageFields> = FieldSpec {
    key: "interactive",
    ty: FieldType::Bool,
    default: Some(Literal::Bool(false)),
    since: None,
    doc: "Whether the captcha needs the user to interact with it.",
    access: Access::Bool(|f| &f.interactive, |f| &mut f.interactive),
};
pub(crate) const SCORE_MIN_THRESHOLD: FieldSpec<StageFields> = FieldSpec {
    key: "score_min_threshold",
    ty: FieldType::Fraction,
    default: Some(Literal::Num(0.5)),
    since: None,
    doc: "Lowest accepted score, 0 to 1. Must not exceed score_max_threshold.",
    access: Access::Num(|f| &f.score_min_threshold, |f| &mut f.score_min_threshold),
};
pub(crate) const SCORE_MAX_THRESHOLD: FieldSpec<StageFields> = FieldSpec {
    key: "score_max_threshold",
    ty: FieldType::Fraction,
    default: Some(Literal::Num(1.0)),
    since: None,
    doc: "Highest accepted score, 0 to 1.",
    access: Access::Num(|f| &f.score_max_threshold, |f| &mut f.score_max_threshold),
};
pub(crate) const ERROR_ON_INVALID_SCORE: FieldSpec<StageFields> = FieldSpec {
    key: "error_on_invalid_score",
    ty: FieldType::Bool,
    default: Some(Literal::Bool(true)),
    since: None,
    doc: "Whether a score outside the thresholds fails the stage.",
    access: Access::Bool(
        |f| &f.error_on_invalid_score,
        |f| &mut f.error_on_invalid_score,
    ),
};
pub(crate) const REQUEST_CONTENT_TYPE: FieldSpec<StageFields> = FieldSpec {
    key: "request_content_type",
    ty: FieldType::Choice(&REQUEST_CONTENT_TYPES),
    default: Some(Literal::Str(DEFAULT_REQUEST_CONTENT_TYPE)),
    since: Some(REQUEST_CONTENT_TYPE_SINCE),
    doc: "How authentik sends the verification request (authentik 2026.8 and later; ignored by older servers).",
    access: Access::OptStr(|f| &f.request_content_type, |f| &mut f.request_content_type),
};

/// Every managed field, in the order plans, manifests and the API show them.
pub(crate) const FIELDS: [FieldSpec<StageFields>; 9] = [
    NAME,
    PUBLIC_KEY,
    JS_URL,
    API_URL,
    INTERACTIVE,
    SCORE_MIN_THRESHOLD,
    SCORE_MAX_THRESHOLD,
    ERROR_ON_INVALID_SCORE,
    REQUEST_CONTENT_TYPE,
];

/// What a captcha manifest document holds: the fields, the private key (a
/// secret: `!Env`, `!File` or a literal) and an optional `uuid` pin.
pub(crate) const MANIFEST: ManifestSpec<StageFields> = ManifestSpec {
    fields: &FIELDS,
    lead: 2,
    secret: Some(KeyDoc {
        key: "private_key",
        doc: "The provider's secret key: `!Env VARIABLE`, `!File path` (content trimmed; relative to the manifest's folder), or a literal string (accepted with a warning).",
    }),
    pin: Some(KeyDoc {
        key: "uuid",
        doc: "Pins the manifest to an existing stage, so a rename is a rename.",
    }),
    list: Some(crate::kinds::guard::GUARDS_KEY),
    rules: thresholds_in_order,
    what: "a manifest document must be a mapping of stage fields",
};

/// `score_min_threshold <= score_max_threshold`, checked against authentik's
/// default for an omitted one, since that is what the stage will end up with.
fn thresholds_in_order(fields: &StageFields, given: &dyn Fn(&str) -> bool) -> Vec<Violation> {
    let (min, max) = (fields.score_min_threshold, fields.score_max_threshold);
    if min <= max {
        return Vec::new();
    }
    let (min_key, max_key) = (SCORE_MIN_THRESHOLD.key, SCORE_MAX_THRESHOLD.key);
    let at = [min_key, max_key].into_iter().find(|key| given(key));
    let shown = |value: f64, key: &str| {
        let value = Value::Num(value);
        if given(key) {
            value.to_string()
        } else {
            format!("{value}, authentik's default")
        }
    };
    vec![Violation {
        at,
        field: at.unwrap_or(min_key),
        message: format!(
            "score_min_threshold ({}) is greater than score_max_threshold ({})",
            shown(min, min_key),
            shown(max, max_key),
        ),
    }]
}

/// The JSON schema of a captcha manifest (`schema/manifest.schema.json`).
pub fn manifest_schema() -> String {
    field::manifest_schema(
        &MANIFEST,
        &[
            (
                "$id",
                "https://github.com/stagesync/stagesync/schema/manifest.schema.json",
            ),
            ("title", "stagesync Captcha Stage manifest"),
            (
                "description",
                "One authentik Captcha Stage per YAML document. The custom tags `!Env VAR` and `!File path` on private_key are plain strings for this schema.",
            ),
        ],
    )
}

/// The `fields` a plan file's entries hold: the `"fields"` member of
/// `$defs` in `schema/plan-file.schema.json`, as its text.
pub fn saved_fields_schema() -> String {
    field::saved_fields_schema(
        &FIELDS,
        "What a create or update sends (normalised; request_content_type only when the server knows it).",
    )
}

impl StageFields {
    /// A stage with `name`, `public_key` and every optional field at authentik's default.
    pub fn with_defaults(name: impl Into<String>, public_key: impl Into<String>) -> Self {
        StageFields {
            name: name.into(),
            public_key: public_key.into(),
            ..field::defaults(&FIELDS)
        }
    }

    /// The same values as authentik would store them (strings trimmed, `-0.0` as `0.0`).
    pub fn normalized(mut self) -> Self {
        field::normalise(&FIELDS, &mut self);
        self
    }

    /// The fields where `live` (self) differs from `desired`, in table order.
    /// `compared` decides which fields take part (version-dependent ones may not).
    pub(crate) fn changes_to(
        &self,
        desired: &StageFields,
        compared: impl Fn(&FieldSpec<StageFields>) -> bool,
    ) -> Vec<FieldChange> {
        field::changes(&FIELDS, self, desired, compared)
    }

    /// The value of the field `key` (`Absent` for a key that is not a field).
    pub(crate) fn value(&self, key: &str) -> Value {
        FIELDS
            .iter()
            .find(|f| f.key == key)
            .map_or(Value::Absent, |f| f.get(self))
    }

    /// The keys of the fields `capabilities`' server knows, in table order:
    /// what is compared, shown and sent.
    pub(crate) fn known_keys(capabilities: Capabilities) -> Vec<&'static str> {
        FIELDS
            .iter()
            .filter(|f| f.known_by(capabilities))
            .map(|f| f.key)
            .collect()
    }

    /// These fields without those `capabilities`' server does not know, so a
    /// write sends exactly the fields the plan compared.
    pub fn sendable(mut self, capabilities: Capabilities) -> Self {
        field::cut_to(&FIELDS, capabilities, &mut self);
        self
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
    /// What it guards; `None` when the manifest has no `guards` key (where
    /// the stage is used is then not managed).
    pub guards: Option<Vec<crate::kinds::guard::DesiredGuard>>,
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
            guards: None,
        }
    }
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
    use crate::kinds::field::Value;

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
                field: "score_min_threshold",
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
            live.changes_to(&desired, |f| f.key != REQUEST_CONTENT_TYPE.key)
                .is_empty()
        );
    }

    #[test]
    fn the_defaults_are_authentiks() {
        let fields = StageFields::with_defaults("login", "site");
        assert_eq!(fields.js_url, DEFAULT_JS_URL);
        assert_eq!(fields.api_url, DEFAULT_API_URL);
        assert!(!fields.interactive);
        assert_eq!(
            (fields.score_min_threshold, fields.score_max_threshold),
            (0.5, 1.0)
        );
        assert!(fields.error_on_invalid_score);
        assert_eq!(
            fields.request_content_type.as_deref(),
            Some(DEFAULT_REQUEST_CONTENT_TYPE)
        );
    }

    #[test]
    fn only_2026_8_and_later_know_request_content_type() {
        let old = Capabilities::for_version(ServerVersion::new(2026, 5, 6));
        let new = Capabilities::for_version(ServerVersion::new(2026, 8, 0));
        assert!(!REQUEST_CONTENT_TYPE.known_by(old));
        assert!(REQUEST_CONTENT_TYPE.known_by(new));
        assert!(PUBLIC_KEY.known_by(old));
        let fields = StageFields::with_defaults("a", "p");
        assert_eq!(fields.clone().sendable(old).request_content_type, None);
        assert_eq!(fields.clone().sendable(new), fields);
    }
}
