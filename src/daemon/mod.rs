//! `stagesync run`: the machinery around the reconcile pass.
//!
//! The daemon is a loop around the same pass `apply` runs once. This module holds
//! everything around that pass and nothing of it, so each piece is testable alone:
//!
//! - [`scheduler`]: *when* a pass runs. At start, on every hint, on SIGHUP and
//!   every interval (with jitter); one pass at a time; triggers that arrive
//!   during a pass coalesce into one follow-up pass; stops on a
//!   [`CancellationToken`] after the
//!   in-flight pass has finished.
//! - [`watch`]: turns file-system events under the manifest directory (and the
//!   secret files manifests reference) into debounced hints for the scheduler.
//!   Events are hints; the pass re-reads everything, and the periodic pass
//!   repairs anything an event missed.
//! - stop signals are the command's input ([`crate::signals::Shutdown`]: the
//!   token [`run`] stops on); SIGHUP triggers a pass.
//! - [`backoff`]: per-stage exponential backoff, and "log on state change" so a
//!   failing stage is logged when it starts or stops failing, not on every retry.
//! - [`metrics`]: the Prometheus registry and one method per thing to record.
//! - [`health`]: what `/readyz` answers, decided from the last pass.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`prune`]: prune in the daemon: deletes confirmed by two passes, their logs.
//! - [`pass`]: the reconcile pass itself (the pipeline of
//!   [`crate::reconcile::Session`] plus decide and summarize), with what it
//!   remembers between passes.
//! - [`event_poll`]: polls authentik's event log and asks for a pass when
//!   someone else changed a managed object (`--event-poll`).
//! - [`notify`]: `--notify`: notifications delivered to webhooks from bounded
//!   queues, never delaying a pass.
//! - [`key_checks`]: `--verify-keys`, each stage's key checked with its captcha
//!   provider when first seen and when it changes, beside the pass.
//!
//! # Wiring
//!
//! [`run`] puts the pieces together around the caller's pass; the caller keeps
//! the [`Health`] and [`Metrics`] (the API client records its requests in the
//! same [`Metrics`]) and binds the listener first, so "address in use" fails
//! the start instead of a background task:
//!
//! ```text
//! let listener = daemon::http::bind(addr).await?;
//! daemon::run(Settings { dir, interval, debounce, listener: Some(listener),
//!                        health, metrics, hangup: true },
//!             shutdown.stop.cancel.clone(),
//!             |ctx: PassContext| async move { /* load, plan, apply, record */ }).await?;
//! ```
//!
//! What the pass is expected to do with these pieces (it owns the decisions):
//! - load the manifests; when the directory is unavailable, keep the last
//!   desired state (never "nothing is desired"); when one file is invalid, keep
//!   that file's last valid stages and go on with the rest;
//! - skip stages for which [`backoff::Backoff::should_attempt`] is false, record
//!   each write's result there and in a [`backoff::FailureLog`], logging only
//!   when [`backoff::Change::is_news`];
//! - report [`health::PassHealth`] to [`Health::record_pass`] and the counts,
//!   writes and duration to [`Metrics`];
//! - call [`Watcher::set_extra_paths`] with the `!File` paths the manifests
//!   reference, so key rotation is noticed;
//! - return [`PassOutcome::retry_in`] with [`backoff::Backoff::next_attempt_in`],
//!   so backed-off stages are retried on time rather than at the next interval.

pub mod backoff;
pub mod event_poll;
pub mod health;
pub mod http;
pub mod key_checks;
pub mod metrics;
pub mod notify;
pub mod pass;
pub mod prune;
pub mod scheduler;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::health::Health;
use self::metrics::Metrics;
use self::scheduler::{ChangedFiles, PassOutcome, Trigger};
use self::watch::Watcher;

/// What [`run`] needs besides the pass.
#[derive(Debug)]
pub struct Settings {
    /// The manifest directory (need not exist yet).
    pub dir: PathBuf,
    /// The periodic resync (jittered ±10%).
    pub interval: Duration,
    /// Quiet time after file events before a pass.
    pub debounce: Duration,
    /// Where to serve `/healthz`, `/readyz`, `/metrics`; `None` for `--listen off`.
    pub listener: Option<TcpListener>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Install the SIGHUP handler (off in tests that share a process).
    pub hangup: bool,
    /// Poll authentik's event log for changes made by others; `None` for
    /// `--event-poll off`.
    pub event_poll: Option<event_poll::EventPoll>,
}

/// What a pass gets besides its closure's captures.
#[derive(Clone, Debug)]
pub struct PassContext {
    /// Why this pass runs (for the log line; SIGHUP also resets backoff).
    pub(crate) trigger: Trigger,
    /// The files the watcher saw change since the last pass.
    pub(crate) changed: ChangedFiles,
    /// The watcher, to [`Watcher::set_extra_paths`] to the secret files the
    /// manifests just read reference.
    pub(crate) watcher: Arc<Watcher>,
    /// Fires on the first stop signal: finish the writes in flight, start no
    /// new ones.
    pub(crate) cancel: CancellationToken,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Signals(#[from] crate::signals::SignalError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// Runs the daemon until `cancel` fires (the first stop signal): watcher,
/// SIGHUP handler, HTTP server and the reconcile loop around `pass`. Returns
/// after the pass in flight has finished and the HTTP server has stopped.
pub async fn run<F, Fut, O>(
    settings: Settings,
    cancel: CancellationToken,
    mut pass: F,
) -> Result<(), DaemonError>
where
    F: FnMut(PassContext) -> Fut,
    Fut: std::future::Future<Output = O>,
    O: Into<PassOutcome>,
{
    let (triggers, receiver) = scheduler::trigger_channel();
    let hangup_task = if settings.hangup {
        let triggers = triggers.clone();
        Some(crate::signals::on_hangup(move || {
            tracing::info!("SIGHUP received, reconciling now");
            triggers.send(Trigger::Signal);
        })?)
    } else {
        None
    };
    let watcher = Arc::new(Watcher::spawn(
        &settings.dir,
        settings.debounce,
        triggers.clone(),
    )?);
    let poll_task = settings
        .event_poll
        .map(|poll| tokio::spawn(event_poll::run(poll, triggers.clone(), cancel.clone())));
    drop(triggers);
    let server = settings.listener.map(|listener| {
        let state = http::AppState {
            health: settings.health.clone(),
            metrics: settings.metrics.clone(),
        };
        tokio::spawn(http::serve(listener, state, cancel.clone()))
    });

    scheduler::run_loop(
        receiver,
        settings.interval,
        cancel.clone(),
        |trigger, changed| {
            pass(PassContext {
                trigger,
                changed,
                watcher: watcher.clone(),
                cancel: cancel.clone(),
            })
        },
    )
    .await;

    // The loop only ends on cancellation; make sure the server sees it too.
    cancel.cancel();
    if let Some(server) = server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "HTTP server stopped with an error"),
            Err(err) => tracing::warn!(error = %err, "HTTP server task failed"),
        }
    }
    if let Some(task) = hangup_task {
        task.abort();
    }
    if let Some(task) = poll_task {
        task.abort();
    }
    Ok(())
}
