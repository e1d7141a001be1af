//! `run`'s event poll: reverts a change made in authentik's UI within seconds
//! instead of at the next resync. Every `--event-poll` (5 s by default) it asks
//! authentik for its newest event, one small request; when someone other than
//! stagesync changed an object of a managed kind since the last look, it asks
//! the scheduler for a pass ([`Trigger::EventLog`]) at once. What to make of
//! the events is pure ([`crate::drift::poll`]).
//!
//! The poll keeps its share of authentik small: it waits at least
//! [`poll::WAIT_FACTOR`] times as long as its last request took (the cursor
//! query grows with the event table). `stagesync_event_poll_duration_seconds`
//! and `stagesync_event_poll_interval_seconds` show both.
//!
//! A log that cannot be read (no permission, authentik down) is logged when
//! that starts and ends, and polled again after [`FAILURE_WAIT`]; the periodic
//! resync still finds every drift.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::authentik::events::LoggedAs;
use crate::authentik::{ApiError, Client};
use crate::daemon::metrics::{Metrics, ResultLabel};
use crate::daemon::scheduler::{Trigger, TriggerSender};
use crate::drift::Own;
use crate::drift::poll::{self, Cursor, Head, NewEvents};
use crate::kinds::Kind;

/// How long to wait after a poll failed: a token without the permission
/// stays without it; once a minute notices a fix soon enough.
pub const FAILURE_WAIT: Duration = Duration::from_secs(60);

/// What the poll needs.
#[derive(Debug)]
pub struct EventPoll {
    pub client: Client,
    pub every: Duration,
    pub metrics: Arc<Metrics>,
}

/// Polls until `cancel` fires, sending [`Trigger::EventLog`] on `triggers`.
pub(crate) async fn run(poll: EventPoll, triggers: TriggerSender, cancel: CancellationToken) {
    let own = crate::drift::own_writes(&poll.client).await;
    let kinds: Vec<LoggedAs> = Kind::ALL.iter().map(|k| k.logged_as()).collect();
    let mut cursor = Cursor::default();
    let mut failing = false;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = look(&poll.client, &mut cursor, &own, &kinds) => r,
            () = cancel.cancelled() => return,
        };
        let took = started.elapsed();
        wait = poll::next_wait(poll.every, took);
        match result {
            Ok(news) => {
                if failing {
                    info!("the event log can be read again: changes are noticed within seconds");
                    failing = false;
                }
                match news {
                    NewEvents::Changed(uuids) => {
                        debug!(
                            objects = uuids.len(),
                            "changed by someone else: reconciling now"
                        );
                        triggers.send(Trigger::EventLog);
                    }
                    NewEvents::Gap => {
                        debug!("more new events than one page: reconciling to be sure");
                        triggers.send(Trigger::EventLog);
                    }
                    NewEvents::Nothing => {}
                }
            }
            Err(err) => {
                if !failing {
                    warn!(error = %err, retry_in = ?FAILURE_WAIT, "cannot poll the event log; drift is still found by the periodic resync");
                    failing = true;
                }
                wait = wait.max(FAILURE_WAIT);
            }
        }
        poll.metrics
            .record_event_poll(ResultLabel::of(!failing), took, wait);
    }
}

/// One poll: the newest event; the new ones only when it moved.
async fn look(
    client: &Client,
    cursor: &mut Cursor,
    own: &Own,
    kinds: &[LoggedAs],
) -> Result<NewEvents, ApiError> {
    let since = cursor.newest;
    let newest = client.newest_events(1).await?;
    match cursor.observe(newest.first()) {
        Head::First | Head::Unchanged => Ok(NewEvents::Nothing),
        Head::Moved => {
            let page = match client.newest_events(poll::NEW_EVENTS_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    // The new events are still unread: the next poll looks again.
                    cursor.newest = since;
                    return Err(err);
                }
            };
            if let Some(first) = page.first() {
                cursor.newest = Some(first.pk);
            }
            Ok(poll::classify(&page, since, own, kinds))
        }
    }
}
