//! authentik's event log (`/events/events/`) and the token's user
//! (`/core/users/me/`), as the drift report reads them. What the events mean
//! is decided elsewhere ([`crate::drift::attribution`], pure); this module
//! only asks and reads.
//!
//! Cost (CONTRACT.md, "The event log"): authentik's pagination counts every
//! matching row, so each query costs more as the log grows (a per-object query
//! 290 ms at 500,000 events). Callers ask only what they need: one event per
//! drifted object, one per poll.

use serde::Deserialize;
use uuid::Uuid;

use super::ApiError;
use super::transport::Client;
use super::wire::Page;

const ROUTE_EVENTS: &str = "/api/v3/events/events/";
const ROUTE_ME: &str = "/api/v3/core/users/me/";

/// The user an event names; empty for an event written through the API
/// without a user.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventUser {
    #[serde(default)]
    pub pk: Option<u64>,
    #[serde(default)]
    pub username: Option<String>,
}

/// The model an event is about (`context.model`): `pk` is the uuid without
/// dashes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventModel {
    #[serde(default)]
    pub pk: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub model_name: String,
    #[serde(default)]
    pub name: String,
}

/// The request a change came with (`context.http_request`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventRequest {
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub user_agent: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventContext {
    #[serde(default)]
    pub model: Option<EventModel>,
    #[serde(default)]
    pub http_request: Option<EventRequest>,
}

/// One event, as far as stagesync reads it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub pk: Uuid,
    #[serde(default)]
    pub user: EventUser,
    pub action: String,
    #[serde(default)]
    pub context: EventContext,
    #[serde(default)]
    pub client_ip: Option<String>,
    /// RFC 3339, as authentik writes it.
    pub created: String,
}

impl Event {
    /// The uuid of the model it is about, if it is about one.
    pub fn model_uuid(&self) -> Option<Uuid> {
        self.context
            .model
            .as_ref()
            .and_then(|m| Uuid::parse_str(&m.pk).ok())
    }
}

#[derive(Debug, Deserialize)]
struct WireMe {
    user: EventUser,
}

/// Where a kind's objects are logged: `context_model_app` and
/// `context_model_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedAs {
    pub app: &'static str,
    pub model_name: &'static str,
}

impl Client {
    /// `core/users/me/`: the token's user.
    pub async fn token_user(&self) -> Result<EventUser, ApiError> {
        let url = self.endpoint("core/users/me/")?;
        let me: WireMe = self.get_json(url, ROUTE_ME).await?;
        Ok(me.user)
    }

    /// The newest event about one object, if the log still has one.
    pub async fn newest_event_of(
        &self,
        logged_as: LoggedAs,
        uuid: Uuid,
    ) -> Result<Option<Event>, ApiError> {
        let mut url = self.endpoint("events/events/")?;
        url.query_pairs_mut()
            .append_pair("context_model_app", logged_as.app)
            .append_pair("context_model_name", logged_as.model_name)
            .append_pair("context_model_pk", &uuid.to_string())
            .append_pair("ordering", "-created")
            .append_pair("page_size", "1");
        let page: Page<Event> = self.get_json(url, ROUTE_EVENTS).await?;
        Ok(page.results.into_iter().next())
    }

    /// The newest `page_size` events of any kind, newest first: the poll's
    /// cursor (`page_size=1`) and what came after it.
    pub async fn newest_events(&self, page_size: u32) -> Result<Vec<Event>, ApiError> {
        let mut url = self.endpoint("events/events/")?;
        url.query_pairs_mut()
            .append_pair("ordering", "-created")
            .append_pair("page_size", &page_size.to_string());
        let page: Page<Event> = self.get_json(url, ROUTE_EVENTS).await?;
        Ok(page.results)
    }
}
