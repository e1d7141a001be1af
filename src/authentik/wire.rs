//! The JSON authentik sends and expects, turned into and out of [`StageFields`].
//!
//! Pure functions, no I/O. The traps handled here:
//! - thresholds stored as NaN/infinity come back as `null`: read as NaN so the
//!   plan shows a difference and an apply repairs it; never sent;
//! - `flow_set` and `pk` are never sent (`flow_set` is an error before 2025.12,
//!   `pk` is ignored);
//! - a field the server does not know is not sent, because it is not in the
//!   [`StageWrite`]: its fields come cut
//!   ([`Capabilities::sendable`](crate::capabilities::Capabilities::sendable)) and the
//!   body sends them as they are;
//! - `request_content_type` is `None` when the server does not report it.

use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ApiError;
use crate::secret::{ExposeSecret, PrivateKey};
use crate::stage::{self, Field, LiveStage, StageFields};

/// What to write to a captcha stage: every managed field the server knows and
/// the private key.
pub struct StageWrite<'a> {
    /// Sent as they are: cut to what the server knows first
    /// ([`Capabilities::sendable`](crate::capabilities::Capabilities::sendable),
    /// as the planner cuts a plan's writes), or
    /// a field the server does not know goes on the wire.
    pub fields: &'a StageFields,
    pub private_key: &'a PrivateKey,
}

/// One captcha stage as authentik's `CaptchaStage` schema reports it.
#[derive(Debug, Deserialize)]
pub(crate) struct WireCaptchaStage {
    pub(crate) pk: Uuid,
    pub(crate) name: String,
    pub(crate) public_key: String,
    #[serde(default = "default_js_url")]
    pub(crate) js_url: String,
    #[serde(default = "default_api_url")]
    pub(crate) api_url: String,
    #[serde(default)]
    pub(crate) interactive: bool,
    #[serde(default = "default_min")]
    pub(crate) score_min_threshold: Option<f64>,
    #[serde(default = "default_max")]
    pub(crate) score_max_threshold: Option<f64>,
    #[serde(default = "default_error_on_invalid")]
    pub(crate) error_on_invalid_score: bool,
    #[serde(default)]
    pub(crate) request_content_type: Option<String>,
}

fn default_js_url() -> String {
    stage::DEFAULT_JS_URL.to_owned()
}
fn default_api_url() -> String {
    stage::DEFAULT_API_URL.to_owned()
}
fn default_min() -> Option<f64> {
    Some(stage::DEFAULT_SCORE_MIN_THRESHOLD)
}
fn default_max() -> Option<f64> {
    Some(stage::DEFAULT_SCORE_MAX_THRESHOLD)
}
fn default_error_on_invalid() -> bool {
    stage::DEFAULT_ERROR_ON_INVALID_SCORE
}

impl WireCaptchaStage {
    pub(crate) fn into_live(self) -> LiveStage {
        LiveStage {
            uuid: self.pk,
            fields: StageFields {
                name: self.name,
                public_key: self.public_key,
                js_url: self.js_url,
                api_url: self.api_url,
                interactive: self.interactive,
                score_min_threshold: self.score_min_threshold.unwrap_or(f64::NAN),
                score_max_threshold: self.score_max_threshold.unwrap_or(f64::NAN),
                error_on_invalid_score: self.error_on_invalid_score,
                request_content_type: self.request_content_type,
            }
            .normalized(),
        }
    }
}

/// authentik's `Pagination`: `next`/`previous` are 0 when there is no such page.
/// `count` (items in the whole list) and `total_pages` are always sent by
/// authentik; a stand-in server may leave them out.
#[derive(Debug, Deserialize)]
pub(crate) struct Pagination {
    pub(crate) next: f64,
    #[serde(default)]
    pub(crate) count: Option<f64>,
    #[serde(default)]
    pub(crate) total_pages: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Page<T> {
    pub(crate) pagination: Pagination,
    pub(crate) results: Vec<T>,
}

/// A stage of any type, from `/stages/all/`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireAnyStage {
    pub(crate) pk: Uuid,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) component: String,
    #[serde(default)]
    pub(crate) verbose_name: String,
    #[serde(default)]
    pub(crate) meta_model_name: String,
}

/// The model name of captcha stages in `/stages/all/`.
pub(crate) const CAPTCHA_MODEL: &str = "authentik_stages_captcha.captchastage";
/// The UI component of captcha stages.
pub(crate) const CAPTCHA_COMPONENT: &str = "ak-stage-captcha-form";

/// A stage of any type that holds a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedStage {
    pub uuid: Uuid,
    pub(crate) name: String,
    /// What kind of stage it is, for messages ("Identification Stage").
    pub kind: String,
    pub is_captcha: bool,
}

impl WireAnyStage {
    pub(crate) fn to_named(&self) -> NamedStage {
        WireAnyStage {
            pk: self.pk,
            name: self.name.clone(),
            component: self.component.clone(),
            verbose_name: self.verbose_name.clone(),
            meta_model_name: self.meta_model_name.clone(),
        }
        .into_named()
    }

    pub(crate) fn into_named(self) -> NamedStage {
        let is_captcha =
            self.meta_model_name == CAPTCHA_MODEL || self.component == CAPTCHA_COMPONENT;
        let kind = if self.verbose_name.is_empty() {
            self.component
        } else {
            self.verbose_name
        };
        NamedStage {
            uuid: self.pk,
            name: self.name,
            kind,
            is_captcha,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireVersion {
    pub(crate) version_current: String,
}

/// The request body for POST and PUT: every field [`StageWrite::fields`]
/// holds (so the fields the plan compared) and the private key. This is the
/// one place a private key is exposed for the wire.
pub(crate) fn write_body(write: &StageWrite<'_>) -> Result<Value, ApiError> {
    let f = write.fields;
    let mut body = Map::new();
    for field in Field::ALL {
        let value = match field {
            Field::Name => Value::from(f.name.as_str()),
            Field::PublicKey => Value::from(f.public_key.as_str()),
            Field::JsUrl => Value::from(f.js_url.as_str()),
            Field::ApiUrl => Value::from(f.api_url.as_str()),
            Field::Interactive => Value::from(f.interactive),
            Field::ScoreMinThreshold => finite(field, f.score_min_threshold)?,
            Field::ScoreMaxThreshold => finite(field, f.score_max_threshold)?,
            Field::ErrorOnInvalidScore => Value::from(f.error_on_invalid_score),
            Field::RequestContentType => match &f.request_content_type {
                Some(ct) => Value::from(ct.as_str()),
                None => continue,
            },
        };
        body.insert(field.key().to_owned(), value);
    }
    body.insert(
        "private_key".to_owned(),
        Value::from(write.private_key.expose_secret()),
    );
    Ok(Value::Object(body))
}

fn finite(field: Field, n: f64) -> Result<Value, ApiError> {
    match serde_json::Number::from_f64(n) {
        Some(num) if n.is_finite() => Ok(Value::Number(num)),
        _ => Err(ApiError::InvalidValue {
            field: field.key(),
            value: n.to_string(),
        }),
    }
}

/// The field messages of a 400 body: `{"field": ["msg", ..], ..}` or
/// `{"detail": "..."}`. `None` when the body has neither shape.
/// Field messages and the `detail`, as a 400 body lists them.
pub(crate) type ValidationBody = (Vec<(String, Vec<String>)>, Option<String>);

pub(crate) fn validation_errors(body: &Value) -> Option<ValidationBody> {
    let map = body.as_object()?;
    let mut fields = Vec::new();
    let mut detail = None;
    for (key, value) in map {
        match (key.as_str(), value) {
            ("detail", Value::String(s)) => detail = Some(s.clone()),
            (_, Value::Array(items)) => {
                fields.push((key.clone(), items.iter().map(message).collect()))
            }
            (_, Value::String(s)) => fields.push((key.clone(), vec![s.clone()])),
            (_, other) => fields.push((key.clone(), vec![other.to_string()])),
        }
    }
    Some((fields, detail))
}

fn message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// authentik's `{"detail": "..."}`.
pub(crate) fn detail(body: &Value) -> Option<String> {
    body.get("detail")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authentik::ServerVersion;
    use crate::capabilities::Capabilities;
    use crate::secret::SecretString;

    fn caps(y: u32, m: u32) -> Capabilities {
        Capabilities::for_version(ServerVersion::new(y, m, 0))
    }

    #[test]
    fn body_has_every_known_field_and_the_key_but_never_pk_or_flow_set() {
        let fields = StageFields::with_defaults("login", "site");
        let key = SecretString::from("k".to_owned());
        let old = write_body(&StageWrite {
            fields: &caps(2025, 12).sendable(fields.clone()),
            private_key: &key,
        })
        .unwrap();
        let obj = old.as_object().unwrap();
        assert_eq!(obj.len(), 9);
        assert_eq!(obj["private_key"], "k");
        assert!(!obj.contains_key("request_content_type"));
        assert!(!obj.contains_key("pk") && !obj.contains_key("flow_set"));
        let new = write_body(&StageWrite {
            fields: &caps(2026, 8).sendable(fields.clone()),
            private_key: &key,
        })
        .unwrap();
        assert_eq!(
            new["request_content_type"],
            stage::DEFAULT_REQUEST_CONTENT_TYPE
        );
    }

    #[test]
    fn non_finite_thresholds_are_refused() {
        let key = SecretString::from("k".to_owned());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let fields = StageFields {
                score_max_threshold: bad,
                ..StageFields::with_defaults("a", "b")
            };
            let err = write_body(&StageWrite {
                fields: &fields,
                private_key: &key,
            })
            .unwrap_err();
            assert!(matches!(
                err,
                ApiError::InvalidValue {
                    field: "score_max_threshold",
                    ..
                }
            ));
        }
    }

    #[test]
    fn null_thresholds_read_as_nan_and_absent_content_type_as_none() {
        let v: WireCaptchaStage = serde_json::from_value(serde_json::json!({
            "pk": "db44783d-b6a4-4fc0-bae4-2a08e5151f2e", "name": " a ", "public_key": "p",
            "score_min_threshold": null, "score_max_threshold": 1.0, "flow_set": []
        }))
        .unwrap();
        let live = v.into_live();
        assert!(live.fields.score_min_threshold.is_nan());
        assert_eq!(live.fields.name, "a");
        assert_eq!(live.fields.request_content_type, None);
    }

    #[test]
    fn validation_bodies_keep_every_field() {
        let (fields, detail) = validation_errors(&serde_json::json!({
            "interactive": ["Must be a valid boolean."],
            "score_min_threshold": ["A valid number is required."]
        }))
        .unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(detail, None);
        let (_, detail) =
            validation_errors(&serde_json::json!({"detail": "JSON parse error"})).unwrap();
        assert_eq!(detail.as_deref(), Some("JSON parse error"));
    }
}
