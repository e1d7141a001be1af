//! Who changed an object, from authentik's event log (pure).
//!
//! authentik logs every change of a model in the request that makes it, with
//! the acting user, the client's address and user agent, and the time
//! (CONTRACT.md, "The event log"). The newest event of an object tells who
//! made its live state what it is:
//! - made by stagesync itself: nobody else changed it since stagesync last
//!   wrote it; a difference is the manifests' doing, and nobody is named;
//! - made by anyone else: that user is named.
//!
//! stagesync's own write is an event whose user agent is stagesync's
//! (`stagesync/VERSION`) and, when the token's user is known
//! (`core/users/me/`), whose user is the token's user. Both are asked for:
//! someone editing in the UI with the token's user (an admin who also owns
//! the token) is still named, and so is another program under another user
//! that happens to send stagesync's user agent.
//!
//! Traps: events expire (a year by default), and a token may lack the
//! permission to read them; then there is no attribution, which is said once
//! and is never an error.

use std::fmt;

use serde::Serialize;

use crate::authentik::events::Event;

/// The user agent every request of stagesync sends starts with this.
pub const USER_AGENT_PREFIX: &str = "stagesync/";

/// What marks stagesync's own writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Own {
    /// The token's user (`core/users/me/`); `None` when it could not be read
    /// (the user agent alone then decides).
    pub user_pk: Option<u64>,
}

impl Own {
    /// Whether `event` is a write stagesync made.
    pub fn wrote(&self, event: &Event) -> bool {
        let agent = event
            .context
            .http_request
            .as_ref()
            .is_some_and(|r| r.user_agent.starts_with(USER_AGENT_PREFIX));
        agent && self.user_pk.is_none_or(|pk| event.user.pk == Some(pk))
    }
}

/// The last change of an object made by someone other than stagesync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangedBy {
    /// `None` for an event without a user (written through the API by
    /// authentik itself).
    pub username: Option<String>,
    pub client_ip: Option<String>,
    /// When, to the second, RFC 3339 in UTC (as authentik sent it when it
    /// cannot be read as a time).
    pub at: String,
    /// authentik's action: `model_updated`, `model_deleted`, ...
    pub action: String,
}

impl ChangedBy {
    /// `alice from 192.0.2.7 at 2026-12-04T14:02:11Z`: the log field.
    pub fn who(&self) -> String {
        let mut who = match &self.username {
            Some(user) => user.clone(),
            None => "an event without a user".to_owned(),
        };
        if let Some(ip) = &self.client_ip {
            who.push_str(&format!(" from {ip}"));
        }
        who.push_str(&format!(" at {}", self.at));
        who
    }
}

/// `changed by alice from 192.0.2.7 at 2026-12-04T14:02:11Z`. Not escaped:
/// the names come from authentik, and each renderer escapes for its output.
/// `deleted by ...` when the last change was a delete.
impl fmt::Display for ChangedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.action == "model_deleted" {
            "deleted"
        } else {
            "changed"
        };
        write!(f, "{verb} by {}", self.who())
    }
}

/// What the event log says about one drifted object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// Someone else made the last change.
    By(ChangedBy),
    /// The last change was stagesync's own: nobody else changed it since.
    Ours,
    /// The log has no event of it (expired, or changed outside the API).
    NoEvent,
}

/// Who made the object what it is, from its newest event.
pub fn attribute(newest: Option<&Event>, own: &Own) -> Attribution {
    let Some(event) = newest else {
        return Attribution::NoEvent;
    };
    if own.wrote(event) {
        return Attribution::Ours;
    }
    Attribution::By(ChangedBy {
        username: event.user.username.clone().filter(|u| !u.is_empty()),
        client_ip: event.client_ip.clone().filter(|ip| !ip.is_empty()),
        at: to_the_second(&event.created),
        action: event.action.clone(),
    })
}

/// `2026-12-04T14:16:19.343176Z` -> `2026-12-04T14:16:19Z`.
fn to_the_second(created: &str) -> String {
    match humantime::parse_rfc3339_weak(created.trim_end_matches('Z')) {
        Ok(t) if created.ends_with('Z') => humantime::format_rfc3339_seconds(t).to_string(),
        _ => created.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authentik::events::{EventContext, EventRequest, EventUser};

    fn event(user: Option<(u64, &str)>, agent: &str) -> Event {
        Event {
            pk: uuid::Uuid::nil(),
            user: EventUser {
                pk: user.map(|u| u.0),
                username: user.map(|u| u.1.to_owned()),
            },
            action: "model_updated".into(),
            context: EventContext {
                model: None,
                http_request: Some(EventRequest {
                    method: "PATCH".into(),
                    path: "/".into(),
                    user_agent: agent.into(),
                }),
            },
            client_ip: Some("192.0.2.7".into()),
            created: "2026-12-04T14:02:11.343176Z".into(),
        }
    }

    const OURS: &str = "stagesync/0.1.0";
    const BROWSER: &str = "Mozilla/5.0";

    #[test]
    fn someone_else_is_named_with_address_and_time_to_the_second() {
        let own = Own { user_pk: Some(3) };
        let got = attribute(Some(&event(Some((5, "alice")), BROWSER)), &own);
        let Attribution::By(by) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            by.to_string(),
            "changed by alice from 192.0.2.7 at 2026-12-04T14:02:11Z"
        );
        assert_eq!(by.action, "model_updated");
    }

    #[test]
    fn stagesyncs_own_write_names_nobody() {
        let own = Own { user_pk: Some(3) };
        assert_eq!(
            attribute(Some(&event(Some((3, "akadmin")), OURS)), &own),
            Attribution::Ours
        );
        // Without the token's user, the user agent alone decides.
        let unknown_user = Own { user_pk: None };
        assert_eq!(
            attribute(Some(&event(Some((9, "x")), OURS)), &unknown_user),
            Attribution::Ours
        );
        assert_eq!(attribute(None, &own), Attribution::NoEvent);
    }

    #[test]
    fn the_tokens_user_in_a_browser_and_our_agent_under_another_user_are_named() {
        let own = Own { user_pk: Some(3) };
        for e in [
            event(Some((3, "akadmin")), BROWSER),
            event(Some((7, "bot")), OURS),
        ] {
            assert!(
                matches!(attribute(Some(&e), &own), Attribution::By(_)),
                "{e:?}"
            );
        }
    }

    #[test]
    fn an_event_without_user_or_address_still_reads() {
        let mut e = event(None, "");
        e.client_ip = None;
        e.created = "not a time".into();
        let Attribution::By(by) = attribute(Some(&e), &Own::default()) else {
            panic!()
        };
        assert_eq!(
            by.to_string(),
            "changed by an event without a user at not a time"
        );
    }
}
