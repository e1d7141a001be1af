//! What a captcha stage guards: the flows it is bound into (authentik's flow
//! stage bindings) and the identification stages that embed it (their
//! `captcha_stage`). Declared in the stage's manifest under `guards:`, the
//! second kind.
//!
//! - [`BindingFields`] and [`FIELDS`]: a binding's fields, one table row each
//!   (the order and the options authentik evaluates the stage with).
//! - [`ITEM`]: what one item of a `guards:` list holds, and its rules (a
//!   flow or an identification stage, never both; a flow's order required).
//! - [`api`]: the endpoints: flows looked up by slug, one paged list of
//!   bindings, one of identification stages; PATCH of a binding keeps its pk
//!   (and the policies bound to it), an identification stage's PATCH carries
//!   its live `user_fields`.
//!
//! Traps (recorded from authentik 2025.12.4, CONTRACT.md):
//! - a binding's `target` is the flow's uuid, but a flow is looked up by its
//!   slug, which is what a manifest names;
//! - `(flow, stage, order)` is unique, yet one stage may be bound twice to a
//!   flow at two orders: a binding is matched by (flow, stage), and two live
//!   bindings of the stage in one flow are reported, never guessed between;
//! - authentik checks the two evaluation flags from the request alone: they
//!   are always sent together.

pub mod api;
pub(crate) mod matching;

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use super::Origin;
use super::field::{self, Access, FieldSpec, FieldType, ListDoc, Literal, ManifestSpec, Violation};

/// A binding's fields, as a manifest gives them (authentik's defaults for
/// the options it omits) and as authentik reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BindingFields {
    pub order: i64,
    pub evaluate_on_plan: bool,
    pub re_evaluate_policies: bool,
    pub policy_engine_mode: String,
    pub invalid_response_action: String,
}

pub const POLICY_ENGINE_MODES: [&str; 2] = ["all", "any"];
pub const INVALID_RESPONSE_ACTIONS: [&str; 3] = ["retry", "restart", "restart_with_context"];

/// The binding's fields, in the order plans show them.
pub const FIELDS: [FieldSpec<BindingFields>; 5] = [
    FieldSpec {
        key: "order",
        ty: FieldType::Integer,
        default: None,
        since: None,
        doc: "Where in the flow the captcha runs (authentik runs a flow's stages by ascending order).",
        access: Access::Int(|b| &b.order, |b| &mut b.order),
    },
    FieldSpec {
        key: "evaluate_on_plan",
        ty: FieldType::Bool,
        default: Some(Literal::Bool(false)),
        since: None,
        doc: "Evaluate the policies bound to the binding when the flow is planned.",
        access: Access::Bool(|b| &b.evaluate_on_plan, |b| &mut b.evaluate_on_plan),
    },
    FieldSpec {
        key: "re_evaluate_policies",
        ty: FieldType::Bool,
        default: Some(Literal::Bool(true)),
        since: None,
        doc: "Evaluate the policies bound to the binding again when the stage is reached.",
        access: Access::Bool(|b| &b.re_evaluate_policies, |b| &mut b.re_evaluate_policies),
    },
    FieldSpec {
        key: "policy_engine_mode",
        ty: FieldType::Choice(&POLICY_ENGINE_MODES),
        default: Some(Literal::Str("any")),
        since: None,
        doc: "Whether any or all of the policies bound to the binding must pass.",
        access: Access::Str(|b| &b.policy_engine_mode, |b| &mut b.policy_engine_mode),
    },
    FieldSpec {
        key: "invalid_response_action",
        ty: FieldType::Choice(&INVALID_RESPONSE_ACTIONS),
        default: Some(Literal::Str("retry")),
        since: None,
        doc: "What the flow does when the captcha's answer is invalid.",
        access: Access::Str(
            |b| &b.invalid_response_action,
            |b| &mut b.invalid_response_action,
        ),
    },
];

/// One item of a `guards:` list as checked: a flow's slug with the binding's
/// fields, or an identification stage's name. Both targets are fields of the
/// item's table so that the generic checks read them; [`ItemFields::guard`]
/// turns a checked item into what it means.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemFields {
    pub flow: Option<String>,
    pub identification_stage: Option<String>,
    pub binding: BindingFields,
}

/// The keys of a `guards:` item: the two targets, then the binding's fields.
pub const ITEM_FIELDS: [FieldSpec<ItemFields>; 7] = [
    FieldSpec {
        key: "flow",
        ty: FieldType::Text,
        default: None,
        since: None,
        doc: "The slug of a flow the captcha is bound into (never created: it must exist).",
        access: Access::OptStr(|i| &i.flow, |i| &mut i.flow),
    },
    FieldSpec {
        key: "identification_stage",
        ty: FieldType::Text,
        default: None,
        since: None,
        doc: "The name of an identification stage that embeds the captcha (its `captcha_stage`; never created: it must exist).",
        access: Access::OptStr(|i| &i.identification_stage, |i| &mut i.identification_stage),
    },
    item_field(
        0,
        Access::Int(|i| &i.binding.order, |i| &mut i.binding.order),
    ),
    item_field(
        1,
        Access::Bool(
            |i| &i.binding.evaluate_on_plan,
            |i| &mut i.binding.evaluate_on_plan,
        ),
    ),
    item_field(
        2,
        Access::Bool(
            |i| &i.binding.re_evaluate_policies,
            |i| &mut i.binding.re_evaluate_policies,
        ),
    ),
    item_field(
        3,
        Access::Str(
            |i| &i.binding.policy_engine_mode,
            |i| &mut i.binding.policy_engine_mode,
        ),
    ),
    item_field(
        4,
        Access::Str(
            |i| &i.binding.invalid_response_action,
            |i| &mut i.binding.invalid_response_action,
        ),
    ),
];

/// Row `i` of [`FIELDS`] as a row of the item's table. `order` is optional
/// here (an identification stage has none); the item's rules require it for
/// a flow.
const fn item_field(i: usize, access: Access<ItemFields>) -> FieldSpec<ItemFields> {
    let row = &FIELDS[i];
    FieldSpec {
        key: row.key,
        ty: row.ty,
        default: match row.default {
            Some(d) => Some(d),
            None => Some(Literal::Int(0)),
        },
        since: row.since,
        doc: row.doc,
        access,
    }
}

/// What one `guards:` item holds.
pub(crate) const ITEM: ManifestSpec<ItemFields> = ManifestSpec {
    fields: &ITEM_FIELDS,
    lead: 2,
    secret: None,
    pin: None,
    list: None,
    rules: one_target,
    what: "a guard must be a mapping (`flow:` with `order:`, or `identification_stage:`)",
};

/// The `guards:` key of a captcha stage's manifest.
pub(crate) const GUARDS_KEY: ListDoc = ListDoc {
    key: "guards",
    doc: "What the captcha guards: flows it is bound into (`flow:` slug, `order:`, and the binding's options) and identification stages that embed it (`identification_stage:` name). Absent: not managed. An empty list: it guards nothing (bindings and embeddings of it are removed).",
    items: item_schema,
};

/// The JSON schema of one `guards:` item: a flow with its order (and the
/// binding's options), or an identification stage.
fn item_schema() -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    for (key, schema) in field::schema_properties(&ITEM_FIELDS[..2])
        .into_iter()
        .chain(field::schema_properties(&FIELDS))
    {
        properties.insert(key.to_owned(), schema);
    }
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "oneOf": [
            {"required": ["flow", "order"]},
            {"required": ["identification_stage"]},
        ],
    })
}

/// A flow or an identification stage, never both; a flow's `order` given;
/// the binding's options only with a flow; a flow named by a slug (what
/// authentik's slugs are made of: letters, digits, `-` and `_`).
fn one_target(item: &ItemFields, given: &dyn Fn(&str) -> bool) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(flow) = &item.flow
        && !flow
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        out.push(Violation {
            field: "flow",
            at: Some("flow"),
            message: "`flow` is a flow's slug: letters, digits, `-` and `_` only".into(),
        });
    }
    match (&item.flow, &item.identification_stage) {
        (Some(_), Some(_)) => out.push(Violation {
            field: "identification_stage",
            at: Some("identification_stage"),
            message: "a guard is a `flow` or an `identification_stage`, not both: write two items"
                .into(),
        }),
        (None, None) => out.push(Violation {
            field: "flow",
            at: None,
            message: "a guard names a `flow` (by slug) or an `identification_stage` (by name)"
                .into(),
        }),
        (Some(_), None) if !given("order") => out.push(Violation {
            field: "order",
            at: None,
            message: "`order` is required for a flow: where in the flow the captcha runs".into(),
        }),
        (Some(_), None) => {}
        (None, Some(_)) => {
            for row in &FIELDS {
                if given(row.key) {
                    out.push(Violation {
                        field: row.key,
                        at: Some(row.key),
                        message: format!(
                            "`{}` belongs to a flow binding; an identification stage has none",
                            row.key
                        ),
                    });
                }
            }
        }
    }
    out
}

impl ItemFields {
    /// What a checked item means.
    pub(crate) fn guard(self) -> Option<Guard> {
        match (self.flow, self.identification_stage) {
            (Some(flow), None) => Some(Guard::Flow {
                slug: flow,
                binding: self.binding,
            }),
            (None, Some(name)) => Some(Guard::IdentificationStage { name }),
            _ => None,
        }
    }
}

/// One thing a captcha stage guards, as its manifest declares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// Bound into the flow `slug` with `binding`'s order and options.
    Flow {
        slug: String,
        binding: BindingFields,
    },
    /// Embedded in the identification stage `name`.
    IdentificationStage { name: String },
}

impl Guard {
    /// The flow or the identification stage, in the user's words.
    pub fn target(&self) -> GuardTarget<'_> {
        match self {
            Guard::Flow { slug, .. } => GuardTarget::Flow(slug),
            Guard::IdentificationStage { name } => GuardTarget::IdentificationStage(name),
        }
    }
}

/// What a guard is about: a flow (by slug) or an identification stage (by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GuardTarget<'a> {
    Flow(&'a str),
    IdentificationStage(&'a str),
}

impl fmt::Display for GuardTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardTarget::Flow(slug) => write!(f, "flow {slug}"),
            GuardTarget::IdentificationStage(name) => write!(f, "identification stage {name}"),
        }
    }
}

/// A declared guard with where its item is.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredGuard {
    pub origin: Origin,
    pub guard: Guard,
}

/// A flow as authentik reports it: its uuid (what a binding's `target`
/// takes) and its slug (what manifests name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveFlow {
    pub uuid: Uuid,
    pub slug: String,
}

/// A flow stage binding as authentik reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveBinding {
    pub uuid: Uuid,
    /// The flow's uuid (`target`).
    pub flow: Uuid,
    /// The flow's slug, as the binding's `stage_obj.flow_set` names it.
    pub flow_slug: Option<String>,
    pub stage: Uuid,
    pub fields: BindingFields,
}

/// An identification stage as authentik reports it: what a write of its
/// `captcha_stage` must carry along (`user_fields`, `sources`) and the
/// captcha it embeds.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveIdentificationStage {
    pub uuid: Uuid,
    pub name: String,
    pub captcha_stage: Option<Uuid>,
    pub user_fields: Vec<String>,
    pub sources: Vec<serde_json::Value>,
}

/// What a guard's write sends: a binding (created, or PATCHed with every
/// field), or the captcha an identification stage embeds. Serialised as the
/// fields a saved plan shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GuardWrite {
    Binding(BindingWrite),
    Embedding(EmbeddingWrite),
}

/// A binding of the captcha into a flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BindingWrite {
    /// The flow's slug, as the manifest names it.
    pub flow: String,
    #[serde(skip)]
    pub flow_uuid: Uuid,
    /// The captcha stage; `None` until the create of the stage in the same
    /// apply has made it (the entry waits for it).
    #[serde(skip)]
    pub stage: Option<Uuid>,
    #[serde(flatten)]
    pub fields: BindingFields,
}

/// The captcha an identification stage embeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbeddingWrite {
    /// The identification stage's name.
    pub identification_stage: String,
    /// The captcha stage's name it will embed; `None` to embed none.
    pub captcha_stage: Option<String>,
    /// Its uuid; `None` while the stage waits to be created (or to embed none).
    #[serde(skip)]
    pub captcha_uuid: Option<Uuid>,
    /// The identification stage as read: a write carries its `user_fields`
    /// and `sources` along.
    #[serde(skip)]
    pub live: LiveIdentificationStage,
}

impl Serialize for LiveIdentificationStage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

/// The keys plans show for a guard, in order (those a guard does not have
/// are not shown).
pub(crate) const SHOWN_KEYS: [&str; 8] = [
    "flow",
    "order",
    "evaluate_on_plan",
    "re_evaluate_policies",
    "policy_engine_mode",
    "invalid_response_action",
    "identification_stage",
    "captcha_stage",
];

/// What an identification stage embeds, as plans show it.
pub(crate) const NO_CAPTCHA: &str = "(none)";

impl GuardWrite {
    /// The value of `key`, as plans show it; [`field::Value::Absent`] for a
    /// key this guard does not have.
    pub(crate) fn value(&self, key: &str) -> field::Value {
        match self {
            GuardWrite::Binding(b) if key == "flow" => field::Value::Str(b.flow.clone()),
            GuardWrite::Binding(b) => FIELDS
                .iter()
                .find(|f| f.key == key)
                .map_or(field::Value::Absent, |f| f.get(&b.fields)),
            GuardWrite::Embedding(e) => match key {
                "identification_stage" => field::Value::Str(e.identification_stage.clone()),
                "captcha_stage" => {
                    field::Value::Str(e.captcha_stage.clone().unwrap_or_else(|| NO_CAPTCHA.into()))
                }
                _ => field::Value::Absent,
            },
        }
    }

    /// Sets the captcha stage a write waited for, once its create made it.
    pub(crate) fn fill_stage(&mut self, stage: Uuid) {
        match self {
            GuardWrite::Binding(b) if b.stage.is_none() => b.stage = Some(stage),
            GuardWrite::Embedding(e) if e.captcha_stage.is_some() && e.captcha_uuid.is_none() => {
                e.captcha_uuid = Some(stage)
            }
            _ => {}
        }
    }
}

/// A guard entry's name: `<stage> in flow <slug>`,
/// `<stage> in identification stage <name>`; [`split_name`] reads it back.
pub(crate) fn entry_name(stage: &str, target: GuardTarget<'_>) -> String {
    format!("{stage} in {target}")
}

/// The stage and the target of a guard entry's name ([`entry_name`]).
pub(crate) fn split_name(name: &str) -> (&str, &str) {
    // An identification stage's name may hold " in flow ", so that target is
    // looked for first; a slug has no spaces, so the last " in flow " is the
    // one (a stage's own name may hold it too).
    name.find(" in identification stage ")
        .or_else(|| name.rfind(" in flow "))
        .map_or((name, ""), |at| (&name[..at], &name[at + " in ".len()..]))
}

/// The `guards:` lines of an exported manifest for the captcha stage
/// `stage`, from live state: each flow it is bound into (slug, order, the
/// options not at authentik's defaults) and each identification stage
/// embedding it. `None` when it guards nothing (the key is left out: where
/// the stage is used stays unmanaged, as before) or cannot be written as a
/// list (a stage bound twice to one flow: the reason is returned as a
/// comment).
pub(crate) fn export_lines(
    stage: Uuid,
    bindings: &[LiveBinding],
    identification_stages: &[LiveIdentificationStage],
) -> Option<String> {
    use std::fmt::Write as _;
    let mut bound: Vec<&LiveBinding> = bindings.iter().filter(|b| b.stage == stage).collect();
    bound.sort_by_key(|b| (b.fields.order, b.uuid));
    let embedded: Vec<&LiveIdentificationStage> = identification_stages
        .iter()
        .filter(|s| s.captcha_stage == Some(stage))
        .collect();
    if bound.is_empty() && embedded.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, b) in bound.iter().enumerate() {
        if let Some(first) = bound[..i].iter().find(|o| o.flow == b.flow) {
            return Some(format!(
                "# guards not exported: bound twice to flow {} (orders {} and {}); remove one in authentik, then export again\n",
                b.flow_slug.as_deref().unwrap_or("?"),
                first.fields.order,
                b.fields.order,
            ));
        }
    }
    let defaults: BindingFields = field::defaults(&FIELDS);
    let _ = writeln!(out, "guards:");
    for b in bound {
        let Some(slug) = &b.flow_slug else {
            return Some(format!(
                "# guards not exported: the slug of flow {} is unknown\n",
                b.flow
            ));
        };
        let _ = writeln!(out, "  - flow: {}", yaml_text(slug));
        let _ = writeln!(out, "    order: {}", b.fields.order);
        for row in FIELDS.iter().skip(1) {
            let value = row.get(&b.fields);
            if !value.same_as(&row.get(&defaults)) {
                let text = match value {
                    field::Value::Str(s) => yaml_text(&s),
                    other => other.to_string(),
                };
                let _ = writeln!(out, "    {}: {text}", row.key);
            }
        }
    }
    for s in embedded {
        let _ = writeln!(out, "  - identification_stage: {}", yaml_text(&s.name));
    }
    Some(out)
}

/// A YAML scalar: always double-quoted (a JSON string is valid YAML).
fn yaml_text(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_name_reads_back_whatever_the_target_is_called() {
        for (stage, target) in [
            ("login", GuardTarget::Flow("default-authentication-flow")),
            ("login in flow x", GuardTarget::Flow("f")),
            ("login", GuardTarget::IdentificationStage("Step in flow A")),
            ("login", GuardTarget::IdentificationStage("identify")),
        ] {
            let name = entry_name(stage, target);
            assert_eq!(
                split_name(&name),
                (stage, target.to_string().as_str()),
                "{name}"
            );
        }
    }
}
