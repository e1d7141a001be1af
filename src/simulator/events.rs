//! authentik's event log, as far as a reconciler reads it (recorded in
//! exchanges-2025.12.4-guards.json): every change of a model through the API
//! or the UI is an event written in the same request, with the acting user,
//! the client's IP and user agent, and the model's app, name and pk (the uuid
//! without dashes). Also `core/users/me/`: the token's user.
//!
//! `GET /events/events/` filters by `action`, `context_model_app`,
//! `context_model_name`, `context_model_pk` (dashed or not) and `username`,
//! orders by `created` (newest first unless `ordering=created`) and pages as
//! every list does. An event log the token may not read answers 403 with
//! authentik's permission message.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use uuid::Uuid;

/// How long authentik keeps an event (its default: a year).
const EVENT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A user of the install, as events show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) pk: u64,
    pub(crate) username: String,
    pub(crate) email: String,
}

/// Who makes a change out of band: a user in authentik's UI, from an address,
/// with a browser. The simulator's control API takes one for its "UI edits".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub client_ip: String,
    pub user_agent: String,
}

impl Actor {
    /// `username` editing in a browser from `client_ip`.
    pub fn ui(username: &str, client_ip: &str) -> Actor {
        Actor {
            username: username.to_owned(),
            client_ip: client_ip.to_owned(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:146.0) Gecko/20100101 Firefox/146.0"
                .to_owned(),
        }
    }
}

/// The model an event is about.
#[derive(Clone, Debug)]
pub(crate) struct ModelRef {
    pub(crate) pk: Uuid,
    pub(crate) app: &'static str,
    pub(crate) model_name: &'static str,
    pub(crate) name: String,
}

impl ModelRef {
    pub(crate) fn captcha_stage(pk: Uuid, name: &str) -> ModelRef {
        ModelRef {
            pk,
            app: "authentik_stages_captcha",
            model_name: "captchastage",
            name: name.to_owned(),
        }
    }

    pub(crate) fn flow_stage_binding(pk: Uuid, name: &str) -> ModelRef {
        ModelRef {
            pk,
            app: "authentik_flows",
            model_name: "flowstagebinding",
            name: name.to_owned(),
        }
    }

    /// The API path a change of this model goes to.
    fn path(&self) -> String {
        match self.model_name {
            "flowstagebinding" => format!("/api/v3/flows/bindings/{}/", self.pk),
            _ => format!("/api/v3/stages/captcha/{}/", self.pk),
        }
    }
}

#[derive(Clone, Debug)]
struct Event {
    pk: Uuid,
    user: User,
    action: &'static str,
    model: ModelRef,
    method: String,
    path: String,
    user_agent: String,
    client_ip: String,
    created: SystemTime,
}

/// The log, and who may read it.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: Vec<Event>,
    users: Vec<User>,
    /// The token's user.
    pub(crate) token_user: User,
    /// Whether the token may read the log (`view_event`).
    pub(crate) readable: bool,
}

impl Default for EventLog {
    fn default() -> Self {
        let token_user = User {
            pk: 3,
            username: "akadmin".to_owned(),
            email: "admin@example.com".to_owned(),
        };
        EventLog {
            events: Vec::new(),
            users: vec![token_user.clone()],
            token_user,
            readable: true,
        }
    }
}

/// What a write changed, for its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    fn action(self) -> &'static str {
        match self {
            Change::Created => "model_created",
            Change::Updated => "model_updated",
            Change::Deleted => "model_deleted",
        }
    }
}

/// The request a change came with.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) user_agent: &'a str,
    pub(crate) client_ip: &'a str,
}

impl EventLog {
    /// The user named `username`, made on first use.
    fn user(&mut self, username: &str) -> User {
        if let Some(u) = self.users.iter().find(|u| u.username == username) {
            return u.clone();
        }
        let user = User {
            pk: self.users.iter().map(|u| u.pk).max().unwrap_or(0) + 1,
            username: username.to_owned(),
            email: String::new(),
        };
        self.users.push(user.clone());
        user
    }

    /// A change made with the token (an API write).
    pub(crate) fn record_api(&mut self, change: Change, model: ModelRef, request: &Request<'_>) {
        let user = self.token_user.clone();
        self.push(user, change, model, request);
    }

    /// A change made by `actor` in the UI; its path is the API path the UI calls.
    pub(crate) fn record_ui(&mut self, actor: &Actor, change: Change, model: ModelRef) {
        let user = self.user(&actor.username);
        let path = model.path();
        let method = match change {
            Change::Created => "POST",
            Change::Updated => "PATCH",
            Change::Deleted => "DELETE",
        };
        let request = Request {
            method,
            path: &path,
            user_agent: &actor.user_agent,
            client_ip: &actor.client_ip,
        };
        self.push(user, change, model, &request);
    }

    fn push(&mut self, user: User, change: Change, model: ModelRef, request: &Request<'_>) {
        // Strictly increasing times, so "newest first" is well defined even
        // for two changes within the clock's resolution.
        let now = SystemTime::now();
        let created = match self.events.last() {
            Some(last) if last.created >= now => last.created + Duration::from_micros(1),
            _ => now,
        };
        self.events.push(Event {
            pk: Uuid::new_v4(),
            user,
            action: change.action(),
            model,
            method: request.method.to_owned(),
            path: request.path.to_owned(),
            user_agent: request.user_agent.to_owned(),
            client_ip: request.client_ip.to_owned(),
            created,
        });
    }

    /// Forgets every event (they expired).
    pub(crate) fn clear(&mut self) {
        self.events.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// `core/users/me/`, as recorded (fields a client does not read are
    /// shown with the recording's values).
    pub(crate) fn me(&self) -> Value {
        let u = &self.token_user;
        json!({
            "user": {
                "pk": u.pk,
                "username": u.username,
                "name": "authentik Default Admin",
                "is_active": true,
                "is_superuser": true,
                "groups": [],
                "roles": [],
                "email": u.email,
                "avatar": "/static/dist/assets/images/user_default.png",
                "uid": "7a762e3b40c0776e884805577b19c4fe74a6834b01f8d3008251eb0c016b6831",
                "settings": {},
                "type": "internal",
                "system_permissions": [],
            }
        })
    }

    /// The events matching the query's filters, in its order.
    pub(crate) fn select(&self, q: &HashMap<String, String>) -> Vec<Value> {
        let wanted_pk = q
            .get("context_model_pk")
            .map(|pk| pk.replace('-', "").to_ascii_lowercase());
        let mut rows: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| q.get("action").is_none_or(|a| a == e.action))
            .filter(|e| q.get("context_model_app").is_none_or(|a| a == e.model.app))
            .filter(|e| {
                q.get("context_model_name")
                    .is_none_or(|n| n == e.model.model_name)
            })
            .filter(|e| {
                wanted_pk
                    .as_ref()
                    .is_none_or(|pk| *pk == e.model.pk.simple().to_string())
            })
            .filter(|e| q.get("username").is_none_or(|u| *u == e.user.username))
            .collect();
        rows.sort_by_key(|e| e.created);
        if q.get("ordering").map(String::as_str) != Some("created") {
            rows.reverse();
        }
        rows.into_iter().map(render).collect()
    }
}

fn render(e: &Event) -> Value {
    json!({
        "pk": e.pk.to_string(),
        "user": {"pk": e.user.pk, "email": e.user.email, "username": e.user.username},
        "action": e.action,
        "app": "authentik.events.middleware",
        "context": {
            "model": {
                "pk": e.model.pk.simple().to_string(),
                "app": e.model.app,
                "name": e.model.name,
                "model_name": e.model.model_name,
            },
            "http_request": {
                "args": {},
                "path": e.path,
                "method": e.method,
                "request_id": Uuid::new_v4().simple().to_string(),
                "user_agent": e.user_agent,
            },
        },
        "client_ip": e.client_ip,
        "created": humantime::format_rfc3339_micros(e.created).to_string(),
        "expires": humantime::format_rfc3339_micros(e.created + EVENT_LIFETIME).to_string(),
        "brand": {
            "pk": "c143ab48d21f4242931dec7deab4faea",
            "app": "authentik_brands",
            "name": "Brand fallback",
            "model_name": "brand",
        },
    })
}
