//! What a captcha stage guards, as authentik 2025.12.4 answers it (recorded in
//! exchanges-2025.12.4-guards.json): flows looked up by slug
//! (`/flows/instances/{slug}/`), flow-stage bindings (`/flows/bindings/`) and
//! identification stages (`/stages/identification/`, whose `captcha_stage`
//! embeds a captcha).
//!
//! The quirks reproduced:
//! - a flow's detail route takes its slug; its uuid there is 404;
//! - a binding's `target` must be the flow's uuid (a slug is "is not a valid
//!   UUID"), `order` is required, `(target, stage, order)` is unique while one
//!   stage may be bound twice to a flow at two orders;
//! - the two evaluation flags are checked from the request alone (a PATCH of
//!   `re_evaluate_policies: false` without `evaluate_on_plan: true` is 400);
//! - PATCH and PUT keep the binding's `pk` (a PUT may even move it to another
//!   stage); the answer of a POST or a PUT shows `stage_obj` as the generic
//!   `Stage`, a read or a PATCH the stage's own type;
//! - an identification stage's `user_fields` are checked from the request
//!   alone: a PATCH of `captcha_stage` without them is 400;
//! - field errors come before the checks across fields (DRF's order).

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Body, Incoming, Reply, Route, body_object, page, stage_fields_only};
use crate::kinds::guard::{INVALID_RESPONSE_ACTIONS, POLICY_ENGINE_MODES};
use crate::simulator::store::{
    FlowBinding, FlowRecord, IDENTIFICATION_COMPONENT, OtherRecord, Store, WriteMode,
};
use crate::simulator::store::{boolean_field, char_field, choice_field, integer_field};

const USER_FIELDS: [&str; 3] = ["email", "username", "upn"];
const EVALUATION_NEEDED: &str = "Either evaluation on plan or evaluation on run must be enabled";
const UNIQUE_BINDING: &str = "The fields target, stage, order must make a unique set.";
const NO_USER_FIELDS: &str =
    "When no user fields are selected, at least one source must be selected";

/// Answers a request on one of the guard routes.
pub(crate) fn answer(
    store: &mut Store,
    route: &Route,
    req: &Incoming<'_>,
    q: &HashMap<String, String>,
) -> Reply {
    match (route, req.method) {
        (Route::FlowList, "GET") => list_flows(store, route, q),
        (Route::FlowList, "POST") => create_flow(store, route, req),
        (Route::FlowOne(slug), "GET") => match store.flows.iter().find(|f| &f.slug == slug) {
            Some(flow) => Reply::json(200, route, render_flow(store, flow)),
            None => Reply::detail(404, route, "No Flow matches the given query."),
        },
        (Route::BindingList, "GET") => list_bindings(store, route, q),
        (Route::BindingList, "POST") => write_binding(store, route, req, None, WriteMode::Create),
        (Route::BindingOne(id), method @ ("GET" | "PUT" | "PATCH" | "DELETE")) => {
            let index = match find_binding(store, route, id) {
                Ok(i) => i,
                Err(reply) => return reply,
            };
            match method {
                "GET" => Reply::json(
                    200,
                    route,
                    render_binding(store, &store.bindings[index], false),
                ),
                "PUT" => write_binding(store, route, req, Some(index), WriteMode::Replace),
                "PATCH" => write_binding(store, route, req, Some(index), WriteMode::Partial),
                _ => {
                    store.bindings.remove(index);
                    Reply::empty(204, route)
                }
            }
        }
        // Policies bound to a binding would be listed; the simulator binds none.
        (Route::BindingUsedBy(id), "GET") => match find_binding(store, route, id) {
            Ok(_) => Reply::json(200, route, json!([])),
            Err(reply) => reply,
        },
        (Route::IdentificationList, "GET") => list_identification(store, route, q),
        (Route::IdentificationList, "POST") => {
            write_identification(store, route, req, None, WriteMode::Create)
        }
        (Route::IdentificationOne(id), method @ ("GET" | "PUT" | "PATCH" | "DELETE")) => {
            let index = match find_identification(store, route, id) {
                Ok(i) => i,
                Err(reply) => return reply,
            };
            match method {
                "GET" => Reply::json(
                    200,
                    route,
                    render_identification(store, &store.others[index]),
                ),
                "PUT" => write_identification(store, route, req, Some(index), WriteMode::Replace),
                "PATCH" => write_identification(store, route, req, Some(index), WriteMode::Partial),
                _ => {
                    let uuid = store.others[index].uuid;
                    store.others.remove(index);
                    store.bindings.retain(|b| b.stage != uuid);
                    Reply::empty(204, route)
                }
            }
        }
        (_, method) => Reply::detail(405, route, &format!("Method \"{method}\" not allowed.")),
    }
}

// ---------------------------------------------------------------------------
// Flows.

/// A flow as `/flows/instances/` shows it. `stages` lists the stages bound
/// to it, in binding order.
pub(crate) fn render_flow(store: &Store, f: &FlowRecord) -> Value {
    let stages: Vec<Value> = store
        .bindings
        .iter()
        .filter(|b| b.flow == f.uuid)
        .map(|b| json!(b.stage))
        .collect();
    json!({
        "pk": f.uuid,
        "policybindingmodel_ptr_id": f.ptr,
        "name": f.name,
        "slug": f.slug,
        "title": f.title,
        "designation": "authentication",
        "background": "",
        "background_url": "/static/dist/assets/images/flow_background.jpg",
        "background_themed_urls": null,
        "stages": stages,
        "policies": [],
        "cache_count": 0,
        "policy_engine_mode": "any",
        "compatibility_mode": false,
        "export_url": format!("/api/v3/flows/instances/{}/export/", f.slug),
        "layout": "stacked",
        "denied_action": "message_continue",
        "authentication": "none",
    })
}

fn list_flows(store: &Store, route: &Route, q: &HashMap<String, String>) -> Reply {
    let mut flows: Vec<&FlowRecord> = store
        .flows
        .iter()
        .filter(|f| q.get("slug").is_none_or(|s| &f.slug == s))
        .filter(|f| q.get("name").is_none_or(|n| &f.name == n))
        .collect();
    flows.sort_by(|a, b| a.slug.cmp(&b.slug));
    let rows = flows
        .into_iter()
        .map(|f| Box::new(move || render_flow(store, f)) as Box<dyn Fn() -> Value + '_>)
        .collect();
    page(store, route, q, rows)
}

/// A new flow: `name`, `slug`, `title` and `designation` required, the slug
/// unique. Only what the recorded exchanges create.
fn create_flow(store: &mut Store, route: &Route, req: &Incoming<'_>) -> Reply {
    let body = match body_object(route, req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let mut errors = Map::new();
    let mut text = |key: &str| match body.get(key).map(char_field) {
        None => {
            errors.insert(key.into(), json!(["This field is required."]));
            String::new()
        }
        Some(Err(msg)) => {
            errors.insert(key.into(), json!([msg]));
            String::new()
        }
        Some(Ok(s)) => s,
    };
    let (name, slug, title, _designation) = (
        text("name"),
        text("slug"),
        text("title"),
        text("designation"),
    );
    if store.flows.iter().any(|f| f.slug == slug) {
        errors.insert(
            "slug".into(),
            json!(["flow with this slug already exists."]),
        );
    }
    if !errors.is_empty() {
        return Reply::json(400, route, Value::Object(errors));
    }
    let flow = FlowRecord {
        uuid: Uuid::new_v4(),
        ptr: Uuid::new_v4(),
        name,
        slug,
        title,
    };
    let rendered = render_flow(store, &flow);
    store.flows.push(flow);
    Reply::json(201, route, rendered)
}

// ---------------------------------------------------------------------------
// Bindings.

/// A binding as authentik shows it. `stage_obj` is the stage as its own type
/// in a read and a PATCH's answer, and as the generic `Stage` in the answer
/// of a POST or a PUT (as recorded).
pub(crate) fn render_binding(store: &Store, b: &FlowBinding, generic: bool) -> Value {
    let stage_obj = if generic {
        let name = stage_name(store, b.stage).unwrap_or_default();
        store.stage_base(b.stage, &name, "", "stage", "authentik_flows.stage")
    } else if let Some(rec) = store.find(b.stage) {
        stage_fields_only(store.render(rec))
    } else if let Some(other) = store.others.iter().find(|o| o.uuid == b.stage) {
        store.render_other(other)
    } else {
        Value::Null
    };
    json!({
        "pk": b.binding_uuid,
        "policybindingmodel_ptr_id": b.ptr,
        "target": b.flow,
        "stage": b.stage,
        "stage_obj": stage_obj,
        "evaluate_on_plan": b.evaluate_on_plan,
        "re_evaluate_policies": b.re_evaluate_policies,
        "order": b.order,
        "policy_engine_mode": b.policy_engine_mode,
        "invalid_response_action": b.invalid_response_action,
    })
}

fn stage_name(store: &Store, uuid: Uuid) -> Option<String> {
    store.find(uuid).map(|r| r.fields.name.clone()).or_else(|| {
        store
            .others
            .iter()
            .find(|o| o.uuid == uuid)
            .map(|o| o.name.clone())
    })
}

/// Bindings filtered by any field given (`target`, `stage`, `order`, ...),
/// ordered by `order`, then `pk`.
fn list_bindings(store: &Store, route: &Route, q: &HashMap<String, String>) -> Reply {
    let mut bindings: Vec<&FlowBinding> = store
        .bindings
        .iter()
        .filter(|b| q.get("target").is_none_or(|t| b.flow.to_string() == *t))
        .filter(|b| q.get("stage").is_none_or(|s| b.stage.to_string() == *s))
        .filter(|b| q.get("order").is_none_or(|o| b.order.to_string() == *o))
        .collect();
    bindings.sort_by(|a, b| {
        (a.order, a.binding_uuid.to_string()).cmp(&(b.order, b.binding_uuid.to_string()))
    });
    let rows = bindings
        .into_iter()
        .map(|b| Box::new(move || render_binding(store, b, false)) as Box<dyn Fn() -> Value + '_>)
        .collect();
    page(store, route, q, rows)
}

fn find_binding(store: &Store, route: &Route, id: &str) -> Result<usize, Reply> {
    let uuid = Uuid::parse_str(id).map_err(|_| Reply::detail(404, route, "Not found."))?;
    store
        .bindings
        .iter()
        .position(|b| b.binding_uuid == uuid)
        .ok_or_else(|| Reply::detail(404, route, "No FlowStageBinding matches the given query."))
}

/// A related object's uuid as DRF reads it: a malformed one is Django's
/// "is not a valid UUID", an unknown one "Invalid pk".
fn related(v: &Value, exists: impl Fn(Uuid) -> bool) -> Result<Uuid, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let uuid = Uuid::parse_str(text.trim())
        .map_err(|_| format!("\u{201c}{text}\u{201d} is not a valid UUID."))?;
    if exists(uuid) {
        Ok(uuid)
    } else {
        Err(format!("Invalid pk \"{text}\" - object does not exist."))
    }
}

fn write_binding(
    store: &mut Store,
    route: &Route,
    req: &Incoming<'_>,
    index: Option<usize>,
    mode: WriteMode,
) -> Reply {
    let body = match body_object(route, req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let mut errors = Map::new();
    let required = mode != WriteMode::Partial;
    let mut next = match index {
        Some(i) => store.bindings[i].clone(),
        None => FlowBinding::new(Uuid::nil(), Uuid::nil(), 0),
    };
    let field = |key: &str, errors: &mut Map<String, Value>| -> Option<Value> {
        match body.get(key) {
            None if required && matches!(key, "target" | "stage" | "order") => {
                errors.insert(key.into(), json!(["This field is required."]));
                None
            }
            None => None,
            Some(Value::Null) => {
                errors.insert(key.into(), json!(["This field may not be null."]));
                None
            }
            Some(v) => Some(v.clone()),
        }
    };
    let put = |errors: &mut Map<String, Value>, key: &str, r: Result<(), String>| {
        if let Err(msg) = r {
            errors.insert(key.into(), json!([msg]));
        }
    };
    if let Some(v) = field("target", &mut errors) {
        let r = related(&v, |u| store.flows.iter().any(|f| f.uuid == u)).map(|u| next.flow = u);
        put(&mut errors, "target", r);
    }
    if let Some(v) = field("stage", &mut errors) {
        let r = related(&v, |u| stage_name(store, u).is_some()).map(|u| next.stage = u);
        put(&mut errors, "stage", r);
    }
    if let Some(v) = field("evaluate_on_plan", &mut errors) {
        let r = boolean_field(&v).map(|b| next.evaluate_on_plan = b);
        put(&mut errors, "evaluate_on_plan", r);
    }
    if let Some(v) = field("re_evaluate_policies", &mut errors) {
        let r = boolean_field(&v).map(|b| next.re_evaluate_policies = b);
        put(&mut errors, "re_evaluate_policies", r);
    }
    if let Some(v) = field("order", &mut errors) {
        let r = integer_field(&v).map(|o| next.order = o);
        put(&mut errors, "order", r);
    }
    if let Some(v) = field("policy_engine_mode", &mut errors) {
        let r = choice_field(&v, &POLICY_ENGINE_MODES).map(|m| next.policy_engine_mode = m);
        put(&mut errors, "policy_engine_mode", r);
    }
    if let Some(v) = field("invalid_response_action", &mut errors) {
        let r =
            choice_field(&v, &INVALID_RESPONSE_ACTIONS).map(|a| next.invalid_response_action = a);
        put(&mut errors, "invalid_response_action", r);
    }
    if !errors.is_empty() {
        return Reply::json(400, route, Value::Object(errors));
    }
    let this = index.map(|i| store.bindings[i].binding_uuid);
    if store.bindings.iter().any(|b| {
        Some(b.binding_uuid) != this
            && (b.flow, b.stage, b.order) == (next.flow, next.stage, next.order)
    }) {
        return Reply::json(400, route, json!({ "non_field_errors": [UNIQUE_BINDING] }));
    }
    // From the request alone, as authentik's serializer checks them.
    let on_plan = body.get("evaluate_on_plan").map(boolean_field) == Some(Ok(true));
    let on_run = body.get("re_evaluate_policies").map(boolean_field) != Some(Ok(false));
    if !on_plan && !on_run {
        return Reply::json(
            400,
            route,
            json!({ "non_field_errors": [EVALUATION_NEEDED] }),
        );
    }
    match index {
        Some(i) => {
            store.bindings[i] = next;
            let generic = mode == WriteMode::Replace;
            Reply::json(
                200,
                route,
                render_binding(store, &store.bindings[i], generic),
            )
        }
        None => {
            next.binding_uuid = Uuid::new_v4();
            next.ptr = Uuid::new_v4();
            store.bindings.push(next);
            let last = store.bindings.len() - 1;
            Reply::json(
                201,
                route,
                render_binding(store, &store.bindings[last], true),
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Identification stages.

fn is_identification(o: &OtherRecord) -> bool {
    o.component == IDENTIFICATION_COMPONENT
}

/// An identification stage as `/stages/identification/` shows it.
pub(crate) fn render_identification(store: &Store, rec: &OtherRecord) -> Value {
    let mut v = store.render_other(rec);
    if let Some(o) = v.as_object_mut() {
        let extra = json!({
            "user_fields": rec.user_fields,
            "password_stage": null,
            "captcha_stage": rec.captcha_stage,
            "case_insensitive_matching": true,
            "show_matched_user": true,
            "enrollment_flow": null,
            "recovery_flow": null,
            "passwordless_flow": null,
            "sources": [],
            "show_source_labels": false,
            "pretend_user_exists": true,
            "enable_remember_me": false,
            "webauthn_stage": null,
        });
        if let Value::Object(extra) = extra {
            o.extend(extra);
        }
    }
    v
}

fn list_identification(store: &Store, route: &Route, q: &HashMap<String, String>) -> Reply {
    let mut stages: Vec<&OtherRecord> = store
        .others
        .iter()
        .filter(|o| is_identification(o))
        .filter(|o| q.get("name").is_none_or(|n| &o.name == n))
        .collect();
    stages.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let rows = stages
        .into_iter()
        .map(|o| Box::new(move || render_identification(store, o)) as Box<dyn Fn() -> Value + '_>)
        .collect();
    page(store, route, q, rows)
}

fn find_identification(store: &Store, route: &Route, id: &str) -> Result<usize, Reply> {
    let uuid = Uuid::parse_str(id).map_err(|_| Reply::detail(404, route, "Not found."))?;
    store
        .others
        .iter()
        .position(|o| o.uuid == uuid && is_identification(o))
        .ok_or_else(|| {
            Reply::detail(
                404,
                route,
                "No IdentificationStage matches the given query.",
            )
        })
}

fn write_identification(
    store: &mut Store,
    route: &Route,
    req: &Incoming<'_>,
    index: Option<usize>,
    mode: WriteMode,
) -> Reply {
    let body = match body_object(route, req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let mut errors = Map::new();
    let mut next = match index {
        Some(i) => store.others[i].clone(),
        None => OtherRecord {
            uuid: Uuid::new_v4(),
            name: String::new(),
            component: IDENTIFICATION_COMPONENT.into(),
            captcha_stage: None,
            user_fields: Vec::new(),
        },
    };
    let this = index.map(|i| store.others[i].uuid);
    match body.get("name") {
        None if mode != WriteMode::Partial => {
            errors.insert("name".into(), json!(["This field is required."]));
        }
        None => {}
        Some(v) => match char_field(v) {
            Ok(name)
                if store.captcha.iter().any(|c| c.fields.name == name)
                    || store
                        .others
                        .iter()
                        .any(|o| o.name == name && Some(o.uuid) != this) =>
            {
                errors.insert(
                    "name".into(),
                    json!(["stage with this name already exists."]),
                );
            }
            Ok(name) => next.name = name,
            Err(msg) => {
                errors.insert("name".into(), json!([msg]));
            }
        },
    }
    let user_fields = body.get("user_fields");
    match user_fields {
        None => {}
        Some(Value::Array(items)) => {
            let mut fields = Vec::new();
            for item in items {
                match choice_field(item, &USER_FIELDS) {
                    Ok(f) => fields.push(f),
                    Err(msg) => {
                        errors.insert("user_fields".into(), json!({ "0": [msg] }));
                    }
                }
            }
            next.user_fields = fields;
        }
        Some(v) => {
            errors.insert(
                "user_fields".into(),
                json!([format!(
                    "Expected a list of items but got type \"{}\".",
                    json_type(v)
                )]),
            );
        }
    }
    match body.get("captcha_stage") {
        None => {}
        Some(Value::Null) => next.captcha_stage = None,
        Some(v) => match related(v, |u| store.find(u).is_some()) {
            Ok(u) => next.captcha_stage = Some(u),
            Err(msg) => {
                errors.insert("captcha_stage".into(), json!([msg]));
            }
        },
    }
    if !errors.is_empty() {
        return Reply::json(400, route, Value::Object(errors));
    }
    // From the request alone, as authentik's serializer checks them.
    let given_fields = matches!(user_fields, Some(Value::Array(items)) if !items.is_empty());
    let given_sources =
        matches!(body.get("sources"), Some(Value::Array(items)) if !items.is_empty());
    if !given_fields && !given_sources {
        return Reply::json(400, route, json!({ "non_field_errors": [NO_USER_FIELDS] }));
    }
    match index {
        Some(i) => {
            store.others[i] = next;
            Reply::json(200, route, render_identification(store, &store.others[i]))
        }
        None => {
            let rendered = render_identification(store, &next);
            store.others.push(next);
            Reply::json(201, route, rendered)
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "str",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Object(_) => "dict",
        _ => "list",
    }
}

impl Reply {
    fn empty(status: u16, route: &Route) -> Reply {
        Reply {
            status,
            allow: route.allow(),
            body: Body::Empty,
        }
    }
}
