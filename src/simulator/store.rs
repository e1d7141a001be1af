//! The simulator's data and authentik's write semantics, without HTTP.
//!
//! What it reproduces (see CONTRACT.md and the recorded exchanges): DRF's field
//! validation and lenient coercion, trimming, write-only `private_key`, PUT
//! keeping omitted optional fields, names unique across every stage type,
//! server-chosen uuids, thresholds stored as NaN read back as `null`, and
//! `request_content_type` only from 2026.8. Flows, flow-stage bindings and
//! identification stages embedding a captcha (`captcha_stage`) exist as far as
//! `used_by` and a delete see them (recorded in exchanges-2025.12.4-used-by.json):
//! a delete is 204 whatever uses the stage, cascades the bindings and sets
//! `captcha_stage` to null.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::events::EventLog;
use crate::authentik::{Capabilities, ServerVersion};
use crate::kinds::captcha::{FIELDS, LiveStage, StageFields};
use crate::kinds::field::{self, FieldType, Value as FieldValue};

/// The component of authentik's identification stages.
pub(crate) const IDENTIFICATION_COMPONENT: &str = "ak-stage-identification-form";

/// Names longer than this (bytes) overflow authentik's unique index: the real
/// server answers with its empty 405 internal error.
pub(crate) const NAME_INDEX_LIMIT: usize = 2700;
/// DRF's FloatField refuses longer strings.
const FLOAT_STRING_LIMIT: usize = 1000;

#[derive(Clone, Debug)]
pub(crate) struct CaptchaRecord {
    pub(crate) uuid: Uuid,
    /// `request_content_type` is always `Some` here; it is shown only from 2026.8.
    pub(crate) fields: StageFields,
    pub(crate) private_key: String,
}

#[derive(Clone, Debug)]
pub(crate) struct OtherRecord {
    pub(crate) uuid: Uuid,
    pub(crate) name: String,
    pub(crate) component: String,
    /// An identification stage's embedded captcha stage.
    pub(crate) captcha_stage: Option<Uuid>,
    /// An identification stage's `user_fields`.
    pub(crate) user_fields: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct FlowRecord {
    pub(crate) uuid: Uuid,
    pub(crate) ptr: Uuid,
    pub(crate) name: String,
    pub(crate) slug: String,
    pub(crate) title: String,
}

#[derive(Clone, Debug)]
pub(crate) struct FlowBinding {
    pub(crate) flow: Uuid,
    pub(crate) binding_uuid: Uuid,
    /// `policybindingmodel_ptr_id`: what policies bound to the binding hang on.
    pub(crate) ptr: Uuid,
    pub(crate) stage: Uuid,
    pub(crate) order: i64,
    pub(crate) evaluate_on_plan: bool,
    pub(crate) re_evaluate_policies: bool,
    pub(crate) policy_engine_mode: String,
    pub(crate) invalid_response_action: String,
}

impl FlowBinding {
    /// A binding with authentik's defaults for its options.
    pub(crate) fn new(flow: Uuid, stage: Uuid, order: i64) -> FlowBinding {
        FlowBinding {
            flow,
            binding_uuid: Uuid::new_v4(),
            ptr: Uuid::new_v4(),
            stage,
            order,
            evaluate_on_plan: false,
            re_evaluate_policies: true,
            policy_engine_mode: "any".into(),
            invalid_response_action: "retry".into(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) version: String,
    pub(crate) token: String,
    pub(crate) default_page_size: usize,
    pub(crate) max_page_size: usize,
    pub(crate) captcha: Vec<CaptchaRecord>,
    pub(crate) others: Vec<OtherRecord>,
    pub(crate) flows: Vec<FlowRecord>,
    pub(crate) bindings: Vec<FlowBinding>,
    /// Who changed what (`events/events/`), and the token's user.
    pub(crate) events: EventLog,
}

/// How a write validates its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMode {
    Create,
    Replace,
    Partial,
}

/// Validated values of a write: the fields given (by key), and the key.
#[derive(Debug, Default)]
pub(crate) struct Validated {
    pub(crate) fields: Vec<(&'static str, FieldValue)>,
    pub(crate) private_key: Option<String>,
}

impl Validated {
    /// The name given, if any.
    pub(crate) fn name(&self) -> Option<&str> {
        self.fields.iter().find_map(|(key, value)| match value {
            FieldValue::Str(name) if *key == NAME_KEY => Some(name.as_str()),
            _ => None,
        })
    }
}

/// The key of the field that is the object's name (unique across stage types).
const NAME_KEY: &str = "name";

pub(crate) type FieldErrors = Map<String, Value>;

impl Store {
    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::for_version(
            ServerVersion::parse(&self.version).unwrap_or(ServerVersion::new(2025, 12, 4)),
        )
    }

    pub(crate) fn name_taken(&self, name: &str, except: Option<Uuid>) -> bool {
        self.captcha
            .iter()
            .any(|s| s.fields.name == name && Some(s.uuid) != except)
            || self.others.iter().any(|s| s.name == name)
    }

    /// DRF's validation of a `CaptchaStageRequest`, every field of the
    /// kind's table the server knows coerced as DRF coerces its type, plus the
    /// write-only `private_key`. A field without a default is required, except
    /// in a partial update.
    pub(crate) fn validate(
        &self,
        body: &Map<String, Value>,
        mode: WriteMode,
        except: Option<Uuid>,
    ) -> Result<Validated, FieldErrors> {
        let mut errors = Map::new();
        let mut out = Validated::default();
        let required = mode != WriteMode::Partial;
        let mut fail = |key: &str, msg: String| {
            errors.insert(key.to_owned(), json!([msg]));
        };
        let given = |key: &str, is_required: bool, fail: &mut dyn FnMut(&str, String)| match body
            .get(key)
        {
            None if is_required => {
                fail(key, "This field is required.".into());
                None
            }
            None => None,
            Some(Value::Null) => {
                fail(key, "This field may not be null.".into());
                None
            }
            Some(v) => Some(v),
        };
        let capabilities = self.capabilities();
        for spec in FIELDS.iter().filter(|f| f.known_by(capabilities)) {
            let Some(raw) = given(spec.key, required && spec.required(), &mut fail) else {
                continue;
            };
            let coerced = match spec.ty {
                FieldType::Name { .. } | FieldType::Text | FieldType::Url => {
                    char_field(raw).map(FieldValue::Str)
                }
                FieldType::Bool => boolean_field(raw).map(FieldValue::Bool),
                FieldType::Fraction => float_field(raw).map(FieldValue::Num),
                FieldType::Integer => integer_field(raw).map(FieldValue::Int),
                FieldType::Choice(choices) => choice_field(raw, choices).map(FieldValue::Str),
            };
            match coerced {
                Ok(FieldValue::Str(name))
                    if matches!(spec.ty, FieldType::Name { .. })
                        && self.name_taken(&name, except) =>
                {
                    fail(spec.key, "stage with this name already exists.".into());
                }
                Ok(value) => out.fields.push((spec.key, value)),
                Err(msg) => fail(spec.key, msg),
            }
        }
        if let Some(raw) = given("private_key", required, &mut fail) {
            match char_field(raw) {
                Ok(key) => out.private_key = Some(key),
                Err(msg) => fail("private_key", msg),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Creates a stage from validated values (defaults for what is missing).
    pub(crate) fn create(&mut self, v: Validated) -> Uuid {
        let mut fields: StageFields = field::defaults(&FIELDS);
        set_given(&mut fields, v.fields);
        let uuid = Uuid::new_v4();
        self.captcha.push(CaptchaRecord {
            uuid,
            fields,
            private_key: v.private_key.unwrap_or_default(),
        });
        uuid
    }

    /// Applies given values; omitted ones keep their current value (PUT too).
    pub(crate) fn update(&mut self, uuid: Uuid, v: Validated) {
        let Some(rec) = self.captcha.iter_mut().find(|s| s.uuid == uuid) else {
            return;
        };
        set_given(&mut rec.fields, v.fields);
        if let Some(x) = v.private_key {
            rec.private_key = x;
        }
    }

    /// authentik's delete: no protection; bindings cascade, an identification
    /// stage's `captcha_stage` is set to null.
    pub(crate) fn delete(&mut self, uuid: Uuid) -> bool {
        let before = self.captcha.len();
        self.captcha.retain(|s| s.uuid != uuid);
        self.bindings.retain(|b| b.stage != uuid);
        for other in &mut self.others {
            if other.captcha_stage == Some(uuid) {
                other.captcha_stage = None;
            }
        }
        before != self.captcha.len()
    }

    pub(crate) fn find(&self, uuid: Uuid) -> Option<&CaptchaRecord> {
        self.captcha.iter().find(|s| s.uuid == uuid)
    }

    /// A captcha stage as the API shows it.
    pub(crate) fn render(&self, rec: &CaptchaRecord) -> Value {
        let f = &rec.fields;
        let mut v = self.stage_base(
            rec.uuid,
            &f.name,
            "ak-stage-captcha-form",
            "Captcha Stage",
            "authentik_stages_captcha.captchastage",
        );
        let o = v.as_object_mut().expect("stage_base builds an object");
        let capabilities = self.capabilities();
        for spec in FIELDS
            .iter()
            .filter(|f| !matches!(f.ty, FieldType::Name { .. }) && f.known_by(capabilities))
        {
            let value = match spec.get(f) {
                FieldValue::Str(s) => json!(s),
                FieldValue::Bool(b) => json!(b),
                FieldValue::Num(n) => number(n),
                FieldValue::Int(n) => json!(n),
                FieldValue::Absent => Value::Null,
            };
            o.insert(spec.key.into(), value);
        }
        v
    }

    /// The fields every stage type shows (authentik's `Stage`).
    pub(crate) fn stage_base(
        &self,
        uuid: Uuid,
        name: &str,
        component: &str,
        verbose: &str,
        model: &str,
    ) -> Value {
        json!({
            "pk": uuid,
            "name": name,
            "component": component,
            "verbose_name": verbose,
            "verbose_name_plural": format!("{verbose}s"),
            "meta_model_name": model,
            "flow_set": self.flow_set(uuid),
        })
    }

    pub(crate) fn render_other(&self, rec: &OtherRecord) -> Value {
        let kind = rec
            .component
            .trim_start_matches("ak-stage-")
            .trim_end_matches("-form")
            .to_owned();
        let word = kind.replace('-', "");
        let mut verbose: String = kind
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                match c.next() {
                    Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        verbose.push_str(" Stage");
        self.stage_base(
            rec.uuid,
            &rec.name,
            &rec.component,
            &verbose,
            &format!("authentik_stages_{word}.{word}stage"),
        )
    }

    /// The flows `stage` is bound to, once per binding (a stage bound twice
    /// to one flow lists it twice, as recorded), in binding order.
    fn flows_of(&self, stage: Uuid) -> Vec<&FlowRecord> {
        self.bindings
            .iter()
            .filter(|b| b.stage == stage)
            .filter_map(|b| self.flows.iter().find(|f| f.uuid == b.flow))
            .collect()
    }

    pub(crate) fn flow_set(&self, stage: Uuid) -> Value {
        Value::Array(
            self.flows_of(stage)
                .into_iter()
                .map(|f| {
                    json!({
                        "pk": f.uuid,
                        "policybindingmodel_ptr_id": f.ptr,
                        "name": f.name,
                        "slug": f.slug,
                        "title": f.title,
                        "designation": "authentication",
                        "background_url": "/static/dist/assets/images/flow_background.jpg",
                        "policy_engine_mode": "any",
                        "compatibility_mode": false,
                        "export_url": format!("/api/v3/flows/instances/{}/export/", f.slug),
                        "layout": "stacked",
                        "denied_action": "message_continue",
                    })
                })
                .collect(),
        )
    }

    /// `used_by`, grouped by model as authentik's collector lists them: the
    /// flows (`cascade_many`), the bindings (`cascade`), then the
    /// identification stages embedding the captcha (`set_null`).
    pub(crate) fn used_by(&self, stage: Uuid) -> Value {
        let mut out = Vec::new();
        for f in self.flows_of(stage) {
            out.push(json!({
                "app": "authentik_flows", "model_name": "flow", "pk": f.uuid.to_string(),
                "name": format!("Flow {} ({})", f.name, f.slug), "action": "cascade_many",
            }));
        }
        for b in self.bindings.iter().filter(|b| b.stage == stage) {
            out.push(json!({
                "app": "authentik_flows", "model_name": "flowstagebinding", "pk": b.binding_uuid.to_string(),
                "name": format!("Flow-stage binding #{} to {}", b.order, b.flow), "action": "cascade",
            }));
        }
        for other in self
            .others
            .iter()
            .filter(|o| o.captcha_stage == Some(stage))
        {
            out.push(json!({
                "app": "authentik_stages_identification", "model_name": "identificationstage",
                "pk": other.uuid.to_string(), "name": format!("Stage {}", other.name), "action": "set_null",
            }));
        }
        Value::Array(out)
    }

    /// Every captcha stage as a client reads it (without the fields this
    /// version does not report).
    pub(crate) fn live_stages(&self) -> Vec<LiveStage> {
        let capabilities = self.capabilities();
        self.captcha
            .iter()
            .map(|rec| LiveStage {
                uuid: rec.uuid,
                fields: rec.fields.clone().sendable(capabilities),
            })
            .collect()
    }
}

/// Sets each given value in `fields`.
fn set_given(fields: &mut StageFields, given: Vec<(&'static str, FieldValue)>) {
    for (key, value) in given {
        if let Some(spec) = FIELDS.iter().find(|f| f.key == key) {
            spec.set(fields, value);
        }
    }
}

/// A float as authentik renders it: NaN and infinity become `null`.
fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// DRF `CharField` (trim_whitespace, no blank): numbers are stringified, a
/// boolean or a container is refused.
pub(crate) fn char_field(v: &Value) -> Result<String, String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => python_str(n),
        _ => return Err("Not a valid string.".into()),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err("This field may not be blank.".into());
    }
    Ok(t.to_owned())
}

/// Python's `str()` of a JSON number.
fn python_str(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

/// DRF `BooleanField`: its TRUE_VALUES and FALSE_VALUES, nothing else.
pub(crate) fn boolean_field(v: &Value) -> Result<bool, String> {
    const TRUE: [&str; 14] = [
        "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1",
    ];
    const FALSE: [&str; 14] = [
        "f", "F", "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "0",
    ];
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) if TRUE.contains(&s.as_str()) => Ok(true),
        Value::String(s) if FALSE.contains(&s.as_str()) => Ok(false),
        _ => Err("Must be a valid boolean.".into()),
    }
}

/// DRF `FloatField`: Python's `float()`, so `"0.9"`, `"nan"`, `"inf"` and
/// `true` pass.
fn float_field(v: &Value) -> Result<f64, String> {
    const INVALID: &str = "A valid number is required.";
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| INVALID.to_owned()),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::String(s) if s.len() > FLOAT_STRING_LIMIT => Err("String value too large.".into()),
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| INVALID.to_owned()),
        _ => Err(INVALID.into()),
    }
}

/// DRF `IntegerField`: integers, and strings or floats that are whole numbers.
pub(crate) fn integer_field(v: &Value) -> Result<i64, String> {
    const INVALID: &str = "A valid integer is required.";
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| INVALID.to_owned()),
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| INVALID.to_owned()),
        _ => Err(INVALID.into()),
    }
}

/// DRF `ChoiceField` over `choices`.
pub(crate) fn choice_field(v: &Value, choices: &[&str]) -> Result<String, String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => python_str(n),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        other => other.to_string(),
    };
    if choices.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(format!("\"{s}\" is not a valid choice."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store {
            version: "2025.12.4".into(),
            token: "t".into(),
            default_page_size: 20,
            max_page_size: 100,
            captcha: vec![],
            others: vec![],
            flows: vec![],
            bindings: vec![],
            events: EventLog::default(),
        }
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn coercion_as_drf_does_it() {
        assert_eq!(boolean_field(&json!("yes")), Ok(true));
        assert_eq!(boolean_field(&json!(0)), Ok(false));
        assert!(boolean_field(&json!("maybe")).is_err());
        assert_eq!(float_field(&json!("0.9")), Ok(0.9));
        assert!(float_field(&json!("NaN")).unwrap().is_nan());
        assert!(float_field(&json!("inf")).unwrap().is_infinite());
        assert_eq!(
            float_field(&json!("abc")),
            Err("A valid number is required.".into())
        );
        assert_eq!(
            float_field(&json!("1".repeat(1001))),
            Err("String value too large.".into())
        );
        assert_eq!(char_field(&json!(123)), Ok("123".into()));
        assert_eq!(char_field(&json!(1.5)), Ok("1.5".into()));
        assert_eq!(char_field(&json!(true)), Err("Not a valid string.".into()));
        assert_eq!(char_field(&json!(" key \n")), Ok("key".into()));
        assert_eq!(
            char_field(&json!("  ")),
            Err("This field may not be blank.".into())
        );
    }

    #[test]
    fn every_error_is_reported_and_names_are_unique_across_types() {
        let mut s = store();
        s.others.push(OtherRecord {
            uuid: Uuid::new_v4(),
            name: "taken".into(),
            component: IDENTIFICATION_COMPONENT.into(),
            captcha_stage: None,
            user_fields: Vec::new(),
        });
        let errors = s
            .validate(
                &body(json!({"name": "taken", "public_key": ""})),
                WriteMode::Create,
                None,
            )
            .unwrap_err();
        assert_eq!(
            errors["name"],
            json!(["stage with this name already exists."])
        );
        assert_eq!(
            errors["public_key"],
            json!(["This field may not be blank."])
        );
        assert_eq!(errors["private_key"], json!(["This field is required."]));
        assert!(
            s.validate(&body(json!({"js_url": "x"})), WriteMode::Partial, None)
                .is_ok()
        );
    }

    #[test]
    fn put_keeps_omitted_fields_and_nan_reads_back_as_null() {
        let mut s = store();
        let v = s.validate(&body(json!({"name": "a", "public_key": "p", "private_key": "k", "score_min_threshold": "NaN"})), WriteMode::Create, None).unwrap();
        let id = s.create(v);
        assert_eq!(
            s.render(s.find(id).unwrap())["score_min_threshold"],
            Value::Null
        );
        let v = s
            .validate(
                &body(json!({"js_url": "https://x"})),
                WriteMode::Partial,
                Some(id),
            )
            .unwrap();
        s.update(id, v);
        let v = s
            .validate(
                &body(json!({"name": "a", "public_key": "p", "private_key": "k2"})),
                WriteMode::Replace,
                Some(id),
            )
            .unwrap();
        s.update(id, v);
        let rec = s.find(id).unwrap();
        assert_eq!(rec.fields.js_url, "https://x");
        assert_eq!(rec.private_key, "k2");
        assert!(s.render(rec).get("private_key").is_none());
        assert!(s.render(rec).get("request_content_type").is_none());
    }

    #[test]
    fn other_stages_render_with_a_kind() {
        let s = store();
        let v = s.render_other(&OtherRecord {
            uuid: Uuid::nil(),
            name: "n".into(),
            component: IDENTIFICATION_COMPONENT.into(),
            captcha_stage: None,
            user_fields: Vec::new(),
        });
        assert_eq!(v["verbose_name"], "Identification Stage");
        assert_eq!(
            v["meta_model_name"],
            "authentik_stages_identification.identificationstage"
        );
    }
}
