//! Drift you can see: who made a change stagesync reverts or reports.
//!
//! - [`attribution`]: pure: from the newest event of an object in
//!   authentik's event log to "changed by alice from 192.0.2.7 at ...",
//!   recognising stagesync's own writes.
//! - [`freeze`]: pure: when writes are held (scheduled cron windows, a
//!   requested freeze until a time).
//! - [`notify`]: pure: what a notification says, as JSON or as a Slack
//!   `{"text": ...}` body.
//! - [`poll`]: pure: the event poll's cursor, which new events are someone
//!   else's change of a managed object, and how long to wait between polls.
//!
//! The event log is read by [`crate::authentik::events`]; the pipeline asks it
//! only about drifted objects ([`crate::reconcile::Session::attribute`]).

pub mod attribution;
pub mod freeze;
pub mod notify;
pub mod poll;

pub use attribution::{Attribution, ChangedBy, Own};

/// How stagesync's own writes are recognised: the token's user
/// (`core/users/me/`), or, when it cannot be read, the user agent alone.
pub(crate) async fn own_writes(client: &crate::authentik::Client) -> Own {
    match client.token_user().await {
        Ok(user) => Own { user_pk: user.pk },
        Err(err) => {
            tracing::debug!(error = %err, "the token's user is unknown: stagesync's writes are recognised by their user agent");
            Own::default()
        }
    }
}
