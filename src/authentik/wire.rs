//! The JSON authentik sends for every kind: pages of lists, the version,
//! stages of every type (for name look-ups) and the shape of a 400. Each
//! kind's own objects are read and written by its `api` module.
//!
//! Pure functions, no I/O.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

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
