//! The event poll's decisions (pure): has anything happened since the last
//! look, was it someone else changing an object of a kind stagesync manages,
//! and how long to wait before looking again.
//!
//! One poll is one request: the newest event (`?ordering=-created&page_size=1`),
//! compared with the one seen last (the cursor). Only when it moved are the
//! newest [`NEW_EVENTS_PAGE`] events read, to find what came after the cursor.
//!
//! Traps: the cursor is an event's pk, not a time (authentik's clock and ours
//! differ). More new events than one page holds is a gap: something may have
//! been missed, so a pass is asked for anyway. Events are hints; the daemon's
//! periodic resync stays the guarantee (events expire, a token may not read
//! them).

use std::time::Duration;

use uuid::Uuid;

use super::attribution::Own;
use crate::authentik::events::{Event, LoggedAs};

/// The shortest `--event-poll`: each poll is a request to authentik.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// How many events are read when the newest one moved.
pub const NEW_EVENTS_PAGE: u32 = 20;

/// The share of authentik's time the poll may take: it waits at least this
/// many times as long as its last request took. The cursor query costs 45 ms
/// on a small log and 350 ms at 2.5 million events (CONTRACT.md), so a poll
/// every 5 s becomes one every 17.5 s there.
pub const WAIT_FACTOR: u32 = 50;

/// The event the poll saw last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Whether the log was looked at yet: the first look is the baseline
    /// (what happened before the daemon started is the start-up pass's).
    pub looked: bool,
    /// The newest event seen; `None` while the log was empty.
    pub newest: Option<Uuid>,
}

/// What the newest event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// The first look: nothing to compare with; the cursor is set.
    First,
    Unchanged,
    /// Something happened since: read the new events.
    Moved,
}

impl Cursor {
    /// Compares the newest event with the cursor, and moves the cursor there.
    pub fn observe(&mut self, newest: Option<&Event>) -> Head {
        let pk = newest.map(|e| e.pk);
        let head = match (self.looked, self.newest, pk) {
            (false, _, _) => Head::First,
            (true, None, None) => Head::Unchanged,
            (true, Some(old), Some(new)) if old == new => Head::Unchanged,
            (true, _, _) => Head::Moved,
        };
        self.looked = true;
        if pk.is_some() {
            self.newest = pk;
        }
        head
    }
}

/// What the new events amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewEvents {
    /// Someone other than stagesync changed objects of a managed kind: their
    /// uuids, newest first.
    Changed(Vec<Uuid>),
    /// More new events than the page holds: a pass is due, to be sure.
    Gap,
    /// Nothing stagesync manages was changed by anyone else.
    Nothing,
}

/// Which of `page` (newest first) came after the event `since`, and whether
/// one of them is someone else's change of an object `kinds` are logged as.
pub fn classify(page: &[Event], since: Option<Uuid>, own: &Own, kinds: &[LoggedAs]) -> NewEvents {
    let end = match since.and_then(|pk| page.iter().position(|e| e.pk == pk)) {
        Some(end) => end,
        None if since.is_some() && page.len() >= NEW_EVENTS_PAGE as usize => return NewEvents::Gap,
        None => page.len(),
    };
    let changed: Vec<Uuid> = page[..end]
        .iter()
        .filter(|e| e.action.starts_with("model_") && !own.wrote(e))
        .filter(|e| {
            e.context.model.as_ref().is_some_and(|m| {
                kinds
                    .iter()
                    .any(|k| k.app == m.app && k.model_name == m.model_name)
            })
        })
        .filter_map(Event::model_uuid)
        .collect();
    if changed.is_empty() {
        NewEvents::Nothing
    } else {
        NewEvents::Changed(changed)
    }
}

/// How long to wait before the next poll: `every`, or [`WAIT_FACTOR`] times
/// the last poll's duration when that is longer.
pub fn next_wait(every: Duration, last: Duration) -> Duration {
    every.max(last.saturating_mul(WAIT_FACTOR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authentik::events::{EventContext, EventModel, EventRequest, EventUser};

    const CAPTCHA: LoggedAs = LoggedAs {
        app: "authentik_stages_captcha",
        model_name: "captchastage",
    };

    fn event(n: u128, app: &str, agent: &str) -> Event {
        Event {
            pk: Uuid::from_u128(n),
            user: EventUser {
                pk: Some(5),
                username: Some("alice".into()),
            },
            action: "model_updated".into(),
            context: EventContext {
                model: Some(EventModel {
                    pk: Uuid::from_u128(1000 + n).simple().to_string(),
                    app: app.into(),
                    model_name: "captchastage".into(),
                    name: "login".into(),
                }),
                http_request: Some(EventRequest {
                    user_agent: agent.into(),
                    ..EventRequest::default()
                }),
            },
            client_ip: None,
            created: String::new(),
        }
    }

    #[test]
    fn the_cursor_moves_with_the_newest_event() {
        let mut cursor = Cursor::default();
        let e1 = event(1, "a", "x");
        assert_eq!(cursor.observe(Some(&e1)), Head::First);
        assert_eq!(cursor.observe(Some(&e1)), Head::Unchanged);
        let e2 = event(2, "a", "x");
        assert_eq!(cursor.observe(Some(&e2)), Head::Moved);
        assert_eq!(cursor.newest, Some(e2.pk));
        // A log emptied (expired) keeps the cursor.
        assert_eq!(cursor.observe(None), Head::Moved);
        assert_eq!(cursor.newest, Some(e2.pk));
    }

    #[test]
    fn events_after_a_first_look_at_an_empty_log_are_new() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.observe(None), Head::First);
        assert_eq!(cursor.observe(None), Head::Unchanged);
        assert_eq!(cursor.observe(Some(&event(1, "a", "x"))), Head::Moved);
        assert_eq!(
            classify(
                &[event(1, "authentik_stages_captcha", "Mozilla")],
                None,
                &Own::default(),
                &[CAPTCHA]
            ),
            NewEvents::Changed(vec![Uuid::from_u128(1001)])
        );
    }

    #[test]
    fn only_someone_elses_changes_of_managed_kinds_after_the_cursor_count() {
        let own = Own { user_pk: Some(3) };
        let page = vec![
            event(4, "authentik_core", "Mozilla"),
            event(3, "authentik_stages_captcha", "Mozilla"),
            event(2, "authentik_stages_captcha", "Mozilla"),
        ];
        assert_eq!(
            classify(&page, Some(Uuid::from_u128(3)), &own, &[CAPTCHA]),
            NewEvents::Nothing,
            "the captcha change is at or before the cursor"
        );
        assert_eq!(
            classify(&page, Some(Uuid::from_u128(2)), &own, &[CAPTCHA]),
            NewEvents::Changed(vec![Uuid::from_u128(1003)])
        );
        let mut ours = event(5, "authentik_stages_captcha", "stagesync/0.1.0");
        ours.user.pk = Some(3);
        assert_eq!(
            classify(&[ours], Some(Uuid::from_u128(4)), &own, &[CAPTCHA]),
            NewEvents::Nothing,
            "stagesync's own write"
        );
    }

    #[test]
    fn a_full_page_without_the_cursor_is_a_gap() {
        let page: Vec<Event> = (0..u128::from(NEW_EVENTS_PAGE))
            .map(|n| event(100 + n, "authentik_core", "x"))
            .collect();
        assert_eq!(
            classify(&page, Some(Uuid::from_u128(1)), &Own::default(), &[CAPTCHA]),
            NewEvents::Gap
        );
        // A short page without the cursor: the log was smaller; all are new.
        assert_eq!(
            classify(
                &page[..3],
                Some(Uuid::from_u128(1)),
                &Own::default(),
                &[CAPTCHA]
            ),
            NewEvents::Nothing
        );
    }

    #[test]
    fn the_wait_keeps_the_polls_share_of_the_server_small() {
        let every = Duration::from_secs(5);
        assert_eq!(next_wait(every, Duration::from_millis(45)), every);
        assert_eq!(
            next_wait(every, Duration::from_millis(350)),
            Duration::from_millis(17_500)
        );
    }
}
