//! A kind's fields as a table: one [`FieldSpec`] row per field says its key,
//! its [`FieldType`], authentik's default, the first authentik version that
//! knows it, a sentence for the JSON schema, and where the kind's struct holds
//! it ([`Access`]). Everything else is derived from the rows:
//!
//! - the keys a manifest may hold, and each key's check (by type, in
//!   [`crate::manifest`]);
//! - defaults and normalisation ([`defaults`], [`normalise`]), so both sides
//!   of a comparison are the same kind of thing;
//! - the diff ([`changes`]) and the lines plans show ([`FieldSpec::get`]);
//! - the wire body and how a live answer is read (by type, in the kind's
//!   `api` module), and how the simulator coerces a request (as DRF does);
//! - the JSON schemas' lists of properties ([`schema_properties`]).
//!
//! Pure: no I/O. A type the table does not know yet is added here once (its
//! check, its wire form, its DRF coercion and its schema), then every kind
//! may use it.

use std::fmt;

use serde::Serialize;
use serde_json::json;

use crate::capabilities::{Capabilities, ServerVersion};

/// A field's value, for diffs, plan output and the wire. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Bool(bool),
    Num(f64),
    Int(i64),
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
            Value::Int(n) => write!(f, "{n}"),
            Value::Absent => f.write_str("(not reported)"),
        }
    }
}

/// A value written in a table (a `const`): authentik's default of a field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Literal {
    Str(&'static str),
    Bool(bool),
    Num(f64),
    Int(i64),
}

impl Literal {
    pub(crate) fn value(self) -> Value {
        match self {
            Literal::Str(s) => Value::Str(s.to_owned()),
            Literal::Bool(b) => Value::Bool(b),
            Literal::Num(n) => Value::Num(n),
            Literal::Int(n) => Value::Int(n),
        }
    }
}

/// What a field holds. The type decides the manifest check, the wire form,
/// the simulator's coercion and the JSON schema.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldType {
    /// The object's name: non-empty text without control characters, at most
    /// `max_chars` characters; surrounding whitespace (which authentik trims)
    /// is normalised away with a warning.
    Name {
        max_chars: usize,
    },
    /// Non-empty text without control characters, trimmed with a warning.
    Text,
    /// An absolute `http(s)` URL whose host the operator's policy allows
    /// (it decides where authentik sends a key or which script a page runs).
    Url,
    Bool,
    /// A finite number from 0 to 1 (captcha providers score from 0 to 1: a
    /// threshold outside can never be met, which is a typo rather than a policy).
    Fraction,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A whole number that fits authentik's integer columns (32 bits).
    Integer,
}

impl FieldType {
    /// What a value of this type looks like, for messages ("a boolean").
    pub(crate) fn expected(self) -> &'static str {
        match self {
            FieldType::Name { .. } | FieldType::Text | FieldType::Url | FieldType::Choice(_) => {
                "a string"
            }
            FieldType::Bool => "a boolean (true or false)",
            FieldType::Fraction => "a number",
            FieldType::Integer => "an integer",
        }
    }
}

/// Where a kind's struct holds a field: a getter and a setter per Rust type.
pub enum Access<T> {
    Str(fn(&T) -> &String, fn(&mut T) -> &mut String),
    /// `None` on the live side when the server does not report the field.
    OptStr(fn(&T) -> &Option<String>, fn(&mut T) -> &mut Option<String>),
    Bool(fn(&T) -> &bool, fn(&mut T) -> &mut bool),
    Num(fn(&T) -> &f64, fn(&mut T) -> &mut f64),
    Int(fn(&T) -> &i64, fn(&mut T) -> &mut i64),
}

/// One row of a kind's field table.
pub struct FieldSpec<T: 'static> {
    /// The key, as written in manifests and in authentik's API.
    pub key: &'static str,
    pub ty: FieldType,
    /// authentik's default, used when a manifest omits the field; `None` for a
    /// field a manifest must give.
    pub default: Option<Literal>,
    /// The first authentik version that knows the field; older servers neither
    /// report it nor accept it, so it is not compared or sent to them.
    pub since: Option<ServerVersion>,
    /// One sentence for the JSON schema and the docs.
    pub doc: &'static str,
    pub access: Access<T>,
}

impl<T> FieldSpec<T> {
    /// The field's value in `object`.
    pub(crate) fn get(&self, object: &T) -> Value {
        match &self.access {
            Access::Str(get, _) => Value::Str(get(object).clone()),
            Access::OptStr(get, _) => match get(object) {
                Some(s) => Value::Str(s.clone()),
                None => Value::Absent,
            },
            Access::Bool(get, _) => Value::Bool(*get(object)),
            Access::Num(get, _) => Value::Num(*get(object)),
            Access::Int(get, _) => Value::Int(*get(object)),
        }
    }

    /// Sets the field in `object`. A value of another type than the field's
    /// is a bug of the caller: it is ignored.
    pub(crate) fn set(&self, object: &mut T, value: Value) {
        match (&self.access, value) {
            (Access::Str(_, slot), Value::Str(s)) => *slot(object) = s,
            (Access::OptStr(_, slot), Value::Str(s)) => *slot(object) = Some(s),
            (Access::OptStr(_, slot), Value::Absent) => *slot(object) = None,
            (Access::Bool(_, slot), Value::Bool(b)) => *slot(object) = b,
            (Access::Num(_, slot), Value::Num(n)) => *slot(object) = n,
            (Access::Int(_, slot), Value::Int(n)) => *slot(object) = n,
            _ => {}
        }
    }

    /// Whether a manifest must give the field: one without a default,
    /// unless the kind holds it as an `Option` (absent is a value then).
    pub(crate) fn required(&self) -> bool {
        self.default.is_none() && !matches!(self.access, Access::OptStr(..))
    }

    /// Whether the server knows the field (and so reports, accepts and compares it).
    pub(crate) fn known_by(&self, capabilities: Capabilities) -> bool {
        self.since.is_none_or(|since| capabilities.version >= since)
    }
}

/// What a manifest document of a kind holds: its fields, and the keys that
/// are not fields of the object (a secret, a pin to a live object), plus the
/// rules that span fields. [`crate::manifest`] checks a document against it.
pub struct ManifestSpec<T: 'static> {
    pub fields: &'static [FieldSpec<T>],
    /// How many of `fields` (the identity) are listed before the secret and
    /// the pin in messages and docs.
    pub lead: usize,
    /// The write-only secret (`!Env VAR`, `!File path` or a literal), required.
    pub secret: Option<KeyDoc>,
    /// A uuid that pins the document to a live object, optional.
    pub pin: Option<KeyDoc>,
    /// A key whose value is a list of another kind's objects declared inside
    /// this one (a captcha stage's `guards`), optional; the document check
    /// hands its node on, to be checked item by item with that kind's spec.
    pub list: Option<ListDoc>,
    /// Rules across fields, on the checked values; `given` says whether the
    /// manifest wrote a key (or left it at its default).
    pub rules: Rules<T>,
    /// What a document must be, for the message when it is not a mapping.
    pub what: &'static str,
}

/// A kind's rules across fields: the checked values, and whether the manifest
/// wrote a key (or left it at its default), to the problems found.
pub type Rules<T> = fn(&T, given: &dyn Fn(&str) -> bool) -> Vec<Violation>;

/// A manifest key that is not a field of the object, with its sentence for
/// the JSON schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    pub key: &'static str,
    pub doc: &'static str,
}

/// A manifest key whose value is a list of another kind's objects, with its
/// sentence and the JSON schema of one item.
#[derive(Clone, Copy, Debug)]
pub struct ListDoc {
    pub key: &'static str,
    pub doc: &'static str,
    pub items: fn() -> serde_json::Value,
}

/// A broken rule across fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key the problem is reported at: one the manifest wrote, or `None`
    /// for the document itself.
    pub at: Option<&'static str>,
    /// The key the problem is about.
    pub field: &'static str,
    pub message: String,
}

impl<T> ManifestSpec<T> {
    /// Every key a document may hold, in documentation order: the lead
    /// fields, the secret, the pin, then the other fields.
    pub(crate) fn keys(&self) -> Vec<&'static str> {
        let (lead, rest) = self.fields.split_at(self.lead.min(self.fields.len()));
        lead.iter()
            .map(|f| f.key)
            .chain(self.secret.map(|s| s.key))
            .chain(self.pin.map(|p| p.key))
            .chain(rest.iter().map(|f| f.key))
            .chain(self.list.map(|l| l.key))
            .collect()
    }
}

/// One field that differs: live (`old`) to desired (`new`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field's key.
    pub field: &'static str,
    pub(crate) old: Value,
    pub(crate) new: Value,
}

/// `object` with every field that has a default set to it (the others keep
/// what `T::default()` gives them).
pub(crate) fn defaults<T: Default>(fields: &[FieldSpec<T>]) -> T {
    let mut object = T::default();
    for field in fields {
        if let Some(default) = field.default {
            field.set(&mut object, default.value());
        }
    }
    object
}

/// Every field of `object` that has a default and no value set to it: what
/// a store holds for a field its clients did not report.
pub(crate) fn fill_absent<T>(fields: &[FieldSpec<T>], object: &mut T) {
    for field in fields {
        if let (Value::Absent, Some(default)) = (field.get(object), field.default) {
            field.set(object, default.value());
        }
    }
}

/// The same values as authentik would store them: strings trimmed, `-0.0` as `0.0`.
pub(crate) fn normalise<T>(fields: &[FieldSpec<T>], object: &mut T) {
    for field in fields {
        match &field.access {
            Access::Str(_, slot) => trim(slot(object)),
            Access::OptStr(_, slot) => {
                if let Some(s) = slot(object).as_mut() {
                    trim(s);
                }
            }
            Access::Num(_, slot) => *slot(object) += 0.0,
            Access::Bool(..) | Access::Int(..) => {}
        }
    }
}

fn trim(s: &mut String) {
    let t = s.trim();
    if t.len() != s.len() {
        *s = t.to_owned();
    }
}

/// `object` without the values of the fields this server does not know, so
/// a write sends exactly the fields a plan compared. Only optional fields
/// depend on the version, so this clears `Option`s.
pub(crate) fn cut_to<T>(fields: &[FieldSpec<T>], capabilities: Capabilities, object: &mut T) {
    for field in fields.iter().filter(|f| !f.known_by(capabilities)) {
        field.set(object, Value::Absent);
    }
}

/// The fields where `live` differs from `desired`, in table order, among
/// those `compared` lets take part (version-dependent ones may not).
pub(crate) fn changes<T>(
    fields: &[FieldSpec<T>],
    live: &T,
    desired: &T,
    compared: impl Fn(&FieldSpec<T>) -> bool,
) -> Vec<FieldChange> {
    fields
        .iter()
        .filter(|f| compared(f))
        .filter_map(|field| {
            let old = field.get(live);
            let new = field.get(desired);
            (!old.same_as(&new)).then_some(FieldChange {
                field: field.key,
                old,
                new,
            })
        })
        .collect()
}

/// A value that must never be sent: NaN or infinity in a number, which
/// authentik would store as null.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NotSendable {
    pub(crate) field: &'static str,
    pub(crate) value: String,
}

/// The JSON body of a write: every field of `object` the server knows (the
/// ones it does not know were cut to [`Value::Absent`] and are left out).
pub(crate) fn to_json<T>(
    fields: &[FieldSpec<T>],
    object: &T,
) -> Result<serde_json::Map<String, serde_json::Value>, NotSendable> {
    let mut body = serde_json::Map::new();
    for field in fields {
        let value = match field.get(object) {
            Value::Absent => continue,
            Value::Str(s) => json!(s),
            Value::Bool(b) => json!(b),
            Value::Int(n) => json!(n),
            Value::Num(n) => match serde_json::Number::from_f64(n) {
                Some(number) if n.is_finite() => serde_json::Value::Number(number),
                _ => {
                    return Err(NotSendable {
                        field: field.key,
                        value: n.to_string(),
                    });
                }
            },
        };
        body.insert(field.key.to_owned(), value);
    }
    Ok(body)
}

/// An object as authentik reports it: each field read by its type, a field
/// not in the answer at authentik's default (or [`Value::Absent`] for one
/// without a default that may be missing), a number stored as NaN or
/// infinity (answered as `null`) read as NaN so the plan shows a difference
/// and an apply repairs it. `Err` names the field that is missing or has the
/// wrong type.
pub(crate) fn from_json<T: Default>(
    fields: &[FieldSpec<T>],
    answer: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    let mut object = T::default();
    for field in fields {
        let value = match (answer.get(field.key), &field.access) {
            (None | Some(serde_json::Value::Null), Access::OptStr(..)) => Value::Absent,
            (None, _) => match field.default {
                Some(default) => default.value(),
                None => return Err(format!("missing field `{}`", field.key)),
            },
            (Some(serde_json::Value::Null), Access::Num(..)) => Value::Num(f64::NAN),
            (Some(serde_json::Value::String(s)), Access::Str(..) | Access::OptStr(..)) => {
                Value::Str(s.clone())
            }
            (Some(serde_json::Value::Bool(b)), Access::Bool(..)) => Value::Bool(*b),
            (Some(serde_json::Value::Number(n)), Access::Num(..)) => {
                Value::Num(n.as_f64().unwrap_or(f64::NAN))
            }
            (Some(serde_json::Value::Number(n)), Access::Int(..)) if n.is_i64() => {
                Value::Int(n.as_i64().unwrap_or_default())
            }
            (Some(other), _) => {
                return Err(format!(
                    "field `{}` is {}, not {}",
                    field.key,
                    json_type(other),
                    field.ty.expected()
                ));
            }
        };
        field.set(&mut object, value);
    }
    normalise(fields, &mut object);
    Ok(object)
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The JSON schema of one field's value (no description).
pub(crate) fn schema_of(ty: FieldType) -> serde_json::Value {
    match ty {
        FieldType::Name { max_chars } => {
            json!({"type": "string", "pattern": "\\S", "maxLength": max_chars})
        }
        FieldType::Text => json!({"type": "string", "pattern": "\\S"}),
        FieldType::Url => {
            json!({"type": "string", "pattern": "^\\s*[Hh][Tt][Tt][Pp][Ss]?://[^/?#\\s]+"})
        }
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Fraction => json!({"type": "number", "minimum": 0, "maximum": 1}),
        FieldType::Choice(choices) => json!({"type": "string", "enum": choices}),
        FieldType::Integer => {
            json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX})
        }
    }
}

/// `properties` entries of a JSON schema for `fields`, each with its
/// description (the row's `doc`, and its default).
pub(crate) fn schema_properties<T>(
    fields: &[FieldSpec<T>],
) -> Vec<(&'static str, serde_json::Value)> {
    fields
        .iter()
        .map(|field| {
            let mut schema = schema_of(field.ty);
            let mut description = field.doc.to_owned();
            if let Some(default) = field.default {
                description.push_str(&format!(" Default: {}", literal_text(default)));
            }
            schema["description"] = json!(description);
            (field.key, schema)
        })
        .collect()
}

/// The text of a manifest JSON schema for `spec`: `head` (`$id`, `title`,
/// `description`, in order) then the keys, `required` and `properties` in
/// documentation order. What `schema/*.schema.json` hold, regenerated by
/// `UPDATE_SCHEMAS=1 cargo test --test schemas`.
pub(crate) fn manifest_schema<T>(spec: &ManifestSpec<T>, head: &[(&str, &str)]) -> String {
    let mut properties: Vec<(String, serde_json::Value)> = Vec::new();
    let fields = schema_properties(spec.fields);
    let (lead, rest) = fields.split_at(spec.lead.min(fields.len()));
    properties.extend(lead.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    if let Some(secret) = spec.secret {
        properties.push((
            secret.key.to_owned(),
            json!({"description": secret.doc, "type": "string", "pattern": "\\S"}),
        ));
    }
    if let Some(pin) = spec.pin {
        properties.push((
            pin.key.to_owned(),
            json!({
                "description": pin.doc,
                "type": "string",
                "pattern": "^\\s*([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32})\\s*$",
            }),
        ));
    }
    properties.extend(rest.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    if let Some(list) = spec.list {
        properties.push((
            list.key.to_owned(),
            json!({"description": list.doc, "type": "array", "items": (list.items)()}),
        ));
    }
    let required: Vec<&str> = spec
        .keys()
        .into_iter()
        .filter(|key| {
            spec.secret.is_some_and(|s| s.key == *key)
                || spec.fields.iter().any(|f| f.key == *key && f.required())
        })
        .collect();
    let mut out =
        String::from("{\n  \"$schema\": \"https://json-schema.org/draft/2020-12/schema\",\n");
    for (key, value) in head {
        out.push_str(&format!("  {}: {},\n", json!(key), json!(value)));
    }
    out.push_str("  \"type\": \"object\",\n  \"additionalProperties\": false,\n");
    let required: Vec<String> = required.iter().map(|k| json!(k).to_string()).collect();
    out.push_str(&format!("  \"required\": [{}],\n", required.join(", ")));
    out.push_str("  \"properties\": {\n");
    for (i, (key, schema)) in properties.iter().enumerate() {
        let comma = if i + 1 < properties.len() { "," } else { "" };
        out.push_str(&format!(
            "    {}: {}{comma}\n",
            json!(key),
            one_line(schema)
        ));
    }
    out.push_str("  }\n}\n");
    out
}

/// The `"fields": {...}` member a plan file's `$defs` holds, as the text of
/// `schema/plan-file.schema.json` (four spaces in, trailing comma): every key
/// in table order with its JSON type, and the fields every server knows as
/// required.
pub(crate) fn saved_fields_schema<T>(fields: &[FieldSpec<T>], description: &str) -> String {
    let json_type = |ty: FieldType| match ty {
        FieldType::Bool => "boolean",
        FieldType::Fraction => "number",
        FieldType::Integer => "integer",
        FieldType::Name { .. } | FieldType::Text | FieldType::Url | FieldType::Choice(_) => {
            "string"
        }
    };
    let required: Vec<String> = fields
        .iter()
        .filter(|f| f.since.is_none())
        .map(|f| format!("        {}", json!(f.key)))
        .collect();
    let properties: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "        {}: {{ \"type\": \"{}\" }}",
                json!(f.key),
                json_type(f.ty)
            )
        })
        .collect();
    format!(
        "    \"fields\": {{\n      \"description\": {},\n      \"type\": \"object\",\n      \"additionalProperties\": false,\n      \"required\": [\n{}\n      ],\n      \"properties\": {{\n{}\n      }}\n    }},\n",
        json!(description),
        required.join(",\n"),
        properties.join(",\n"),
    )
}

/// A schema fragment on one line, `description` first (the rest sorted).
fn one_line(schema: &serde_json::Value) -> String {
    let Some(map) = schema.as_object() else {
        return schema.to_string();
    };
    let mut parts = Vec::new();
    if let Some(description) = map.get("description") {
        parts.push(format!("\"description\": {description}"));
    }
    for (key, value) in map.iter().filter(|(k, _)| *k != "description") {
        parts.push(format!("{}: {value}", json!(key)));
    }
    format!("{{ {} }}", parts.join(", "))
}

/// A default as the docs show it: strings bare, numbers with their decimal.
fn literal_text(literal: Literal) -> String {
    match literal {
        Literal::Str(s) => s.to_owned(),
        other => other.value().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Thing {
        name: String,
        note: Option<String>,
        on: bool,
        level: f64,
    }

    const FIELDS: [FieldSpec<Thing>; 4] = [
        FieldSpec {
            key: "name",
            ty: FieldType::Name { max_chars: 10 },
            default: None,
            since: None,
            doc: "Its name.",
            access: Access::Str(|t| &t.name, |t| &mut t.name),
        },
        FieldSpec {
            key: "note",
            ty: FieldType::Choice(&["a", "b"]),
            default: Some(Literal::Str("a")),
            since: Some(ServerVersion::new(2026, 8, 0)),
            doc: "A note.",
            access: Access::OptStr(|t| &t.note, |t| &mut t.note),
        },
        FieldSpec {
            key: "on",
            ty: FieldType::Bool,
            default: Some(Literal::Bool(true)),
            since: None,
            doc: "On.",
            access: Access::Bool(|t| &t.on, |t| &mut t.on),
        },
        FieldSpec {
            key: "level",
            ty: FieldType::Fraction,
            default: Some(Literal::Num(0.5)),
            since: None,
            doc: "A level.",
            access: Access::Num(|t| &t.level, |t| &mut t.level),
        },
    ];

    fn caps(year: u32, month: u32) -> Capabilities {
        Capabilities::for_version(ServerVersion::new(year, month, 0))
    }

    #[test]
    fn defaults_fill_every_field_that_has_one() {
        let thing = defaults(&FIELDS);
        assert_eq!(
            thing,
            Thing {
                name: String::new(),
                note: Some("a".into()),
                on: true,
                level: 0.5
            }
        );
        assert!(FIELDS[0].required());
        assert!(!FIELDS[1].required());
    }

    #[test]
    fn normalising_trims_strings_and_the_sign_of_zero() {
        let mut thing = Thing {
            name: " n ".into(),
            note: Some("\tb\n".into()),
            on: false,
            level: -0.0,
        };
        normalise(&FIELDS, &mut thing);
        assert_eq!(thing.name, "n");
        assert_eq!(thing.note.as_deref(), Some("b"));
        assert!(thing.level.is_sign_positive());
    }

    #[test]
    fn changes_compare_as_authentik_stores_and_only_known_fields() {
        let live = Thing {
            name: " n".into(),
            note: None,
            on: true,
            level: 1.0,
        };
        let desired = Thing {
            name: "n".into(),
            note: Some("b".into()),
            on: false,
            level: 1.0,
        };
        let all = changes(&FIELDS, &live, &desired, |_| true);
        let keys: Vec<&str> = all.iter().map(|c| c.field).collect();
        assert_eq!(keys, ["note", "on"]);
        assert_eq!(all[0].old, Value::Absent);
        assert_eq!(all[1].new, Value::Bool(false));
        let old = changes(&FIELDS, &live, &desired, |f| f.known_by(caps(2025, 12)));
        assert_eq!(old.len(), 1, "note is unknown before 2026.8");
        assert!(FIELDS[1].known_by(caps(2026, 8)));
    }

    #[test]
    fn cutting_clears_what_the_server_does_not_know() {
        let mut thing = defaults(&FIELDS);
        cut_to(&FIELDS, caps(2026, 8), &mut thing);
        assert_eq!(thing.note.as_deref(), Some("a"));
        cut_to(&FIELDS, caps(2025, 12), &mut thing);
        assert_eq!(thing.note, None);
        assert!(thing.on, "fields every version knows stay");
    }

    #[test]
    fn set_ignores_a_value_of_another_type_and_get_reads_back() {
        let mut thing = Thing::default();
        FIELDS[2].set(&mut thing, Value::Str("yes".into()));
        assert!(!thing.on);
        FIELDS[2].set(&mut thing, Value::Bool(true));
        assert_eq!(FIELDS[2].get(&thing), Value::Bool(true));
        FIELDS[3].set(&mut thing, Value::Num(0.25));
        assert_eq!(FIELDS[3].get(&thing), Value::Num(0.25));
        FIELDS[0].set(&mut thing, Value::Str("x".into()));
        assert_eq!(FIELDS[0].get(&thing), Value::Str("x".into()));
    }

    #[test]
    fn schemas_come_from_the_types_with_their_defaults_described() {
        let properties = schema_properties(&FIELDS);
        assert_eq!(properties[0].0, "name");
        assert_eq!(properties[0].1["maxLength"], 10);
        assert_eq!(properties[0].1["description"], "Its name.");
        assert_eq!(properties[1].1["enum"], json!(["a", "b"]));
        assert_eq!(properties[1].1["description"], "A note. Default: a");
        assert_eq!(properties[2].1["description"], "On. Default: true");
        assert_eq!(properties[3].1["description"], "A level. Default: 0.5");
        assert_eq!(properties[3].1["maximum"], 1);
    }

    #[test]
    fn the_wire_form_round_trips_and_refuses_what_cannot_be_sent() {
        let thing = Thing {
            name: "n".into(),
            note: None,
            on: false,
            level: 0.25,
        };
        let body = to_json(&FIELDS, &thing).unwrap();
        assert_eq!(
            serde_json::Value::Object(body.clone()),
            json!({"name": "n", "on": false, "level": 0.25}),
            "an absent field is not sent"
        );
        assert_eq!(from_json::<Thing>(&FIELDS, &body).unwrap(), thing);
        let nan = Thing {
            level: f64::NAN,
            ..Thing::default()
        };
        assert_eq!(
            to_json(&FIELDS, &nan).unwrap_err(),
            NotSendable {
                field: "level",
                value: "NaN".into()
            }
        );
    }

    #[test]
    fn an_answer_fills_defaults_reads_null_numbers_as_nan_and_names_bad_fields() {
        let answer = |v: serde_json::Value| v.as_object().unwrap().clone();
        let read: Thing =
            from_json(&FIELDS, &answer(json!({"name": " n ", "level": null}))).unwrap();
        assert_eq!(read.name, "n", "normalised");
        assert_eq!(read.note, None);
        assert!(read.on, "the default");
        assert!(read.level.is_nan());
        assert_eq!(
            from_json::<Thing>(&FIELDS, &answer(json!({"on": true}))).unwrap_err(),
            "missing field `name`"
        );
        assert_eq!(
            from_json::<Thing>(&FIELDS, &answer(json!({"name": "n", "on": "yes"}))).unwrap_err(),
            "field `on` is a string, not a boolean (true or false)"
        );
    }

    #[test]
    fn a_stored_object_gets_the_defaults_of_what_it_lacks() {
        let mut thing = Thing {
            name: "n".into(),
            note: None,
            on: false,
            level: 0.25,
        };
        fill_absent(&FIELDS, &mut thing);
        assert_eq!(thing.note.as_deref(), Some("a"), "absent: its default");
        assert!(!thing.on, "set values are kept");
        assert_eq!(thing.level, 0.25);
    }

    #[test]
    fn each_type_says_what_it_expects_and_its_schema() {
        assert_eq!(FieldType::Bool.expected(), "a boolean (true or false)");
        assert_eq!(FieldType::Fraction.expected(), "a number");
        for text in [
            FieldType::Name { max_chars: 1 },
            FieldType::Text,
            FieldType::Url,
            FieldType::Choice(&["x"]),
        ] {
            assert_eq!(text.expected(), "a string");
            assert_eq!(schema_of(text)["type"], "string");
        }
        assert_eq!(schema_of(FieldType::Bool), json!({"type": "boolean"}));
        assert_eq!(schema_of(FieldType::Text)["pattern"], "\\S");
        assert!(
            schema_of(FieldType::Url)["pattern"]
                .as_str()
                .is_some_and(|p| p.contains("[Hh][Tt][Tt][Pp][Ss]?://"))
        );
        assert_eq!(schema_of(FieldType::Fraction)["minimum"], 0);
    }

    fn spec() -> ManifestSpec<Thing> {
        ManifestSpec {
            fields: &FIELDS,
            lead: 1,
            secret: Some(KeyDoc {
                key: "secret",
                doc: "The secret.",
            }),
            pin: Some(KeyDoc {
                key: "pin",
                doc: "The pin.",
            }),
            list: None,
            rules: |_, _| Vec::new(),
            what: "a thing must be a mapping",
        }
    }

    #[test]
    fn a_documents_keys_are_the_lead_fields_the_secret_the_pin_then_the_rest() {
        assert_eq!(
            spec().keys(),
            ["name", "secret", "pin", "note", "on", "level"]
        );
        let schema: serde_json::Value =
            serde_json::from_str(&manifest_schema(&spec(), &[("title", "Things")])).unwrap();
        assert_eq!(schema["title"], "Things");
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["required"],
            json!(["name", "secret"]),
            "the fields without a default and the secret; never the pin"
        );
        assert_eq!(schema["properties"]["secret"]["description"], "The secret.");
        assert!(schema["properties"]["pin"]["pattern"].is_string());
        assert_eq!(schema["properties"]["on"]["type"], "boolean");
    }

    #[test]
    fn a_plan_files_fields_are_every_key_with_the_versionless_ones_required() {
        let text = saved_fields_schema(&FIELDS, "What is sent.");
        assert!(text.starts_with("    \"fields\": {\n"), "{text}");
        assert!(text.ends_with("    },\n"), "{text}");
        let member: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", text.trim_end().trim_end_matches(',')))
                .unwrap();
        let fields = &member["fields"];
        assert_eq!(fields["description"], "What is sent.");
        assert_eq!(fields["required"], json!(["name", "on", "level"]));
        assert_eq!(fields["properties"]["note"], json!({"type": "string"}));
        assert_eq!(fields["properties"]["on"], json!({"type": "boolean"}));
        assert_eq!(fields["properties"]["level"], json!({"type": "number"}));
    }

    #[test]
    fn an_answer_with_a_value_of_the_wrong_type_names_what_it_is() {
        let answer = |v: serde_json::Value| v.as_object().unwrap().clone();
        for (value, what) in [
            (json!(null), "null"),
            (json!(true), "a boolean"),
            (json!(1), "a number"),
            (json!([1]), "an array"),
            (json!({}), "an object"),
        ] {
            let err = from_json::<Thing>(&FIELDS, &answer(json!({"name": value}))).unwrap_err();
            assert_eq!(err, format!("field `name` is {what}, not a string"));
        }
    }

    #[test]
    fn values_display_as_plans_show_them() {
        assert_eq!(Value::Num(1.0).to_string(), "1.0");
        assert_eq!(Value::Num(0.25).to_string(), "0.25");
        assert_eq!(Value::Str("a".into()).to_string(), "\"a\"");
        assert_eq!(Value::Absent.to_string(), "(not reported)");
        assert!(Value::Str(" a ".into()).same_as(&Value::Str("a".into())));
        assert!(Value::Num(f64::NAN).same_as(&Value::Num(f64::NAN)));
        assert!(!Value::Num(f64::NAN).same_as(&Value::Num(0.5)));
        assert!(!Value::Num(0.5).same_as(&Value::Num(f64::NAN)));
        assert!(Value::Num(-0.0).same_as(&Value::Num(0.0)));
        assert!(!Value::Num(0.5).same_as(&Value::Str("0.5".into())));
        assert!(!Value::Str("a".into()).same_as(&Value::Str("b".into())));
        assert!(Value::Bool(true).same_as(&Value::Bool(true)));
        assert!(!Value::Absent.same_as(&Value::Str(String::new())));
    }
}
