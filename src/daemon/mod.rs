//! `stagesync run`: the machinery around the reconcile pass.
//!
//! The daemon is a loop around the same pass `apply` runs once. This module holds
//! everything around that pass and nothing of it, so each piece is testable alone:
//!
//! - [`scheduler`]: *when* a pass runs. At start, on every hint, on SIGHUP and
//!   every interval (with jitter); one pass at a time; triggers that arrive
//!   during a pass coalesce into one follow-up pass; stops on a
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) after the
//!   in-flight pass has finished.
//! - [`watch`]: turns file-system events under the manifest directory (and the
//!   secret files manifests reference) into debounced hints for the scheduler.
//!   Events are hints; the pass re-reads everything, and the periodic pass
//!   repairs anything an event missed.
//! - [`signals`]: SIGTERM/SIGINT cancel (a second one exits at once), SIGHUP
//!   triggers a pass.
//! - [`backoff`]: per-stage exponential backoff, and "log on state change" so a
//!   failing stage is logged when it starts or stops failing, not on every retry.
//! - [`metrics`]: the Prometheus registry and one method per thing to record.
//! - [`health`]: what `/readyz` answers, decided from the last pass.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics`.
//!
//! # Wiring
//!
//! ```text
//! let (tx, rx) = scheduler::trigger_channel();
//! let cancel = CancellationToken::new();
//! signals::spawn(cancel.clone(), tx.clone())?;
//! let watcher = watch::Watcher::spawn(&dir, debounce, tx.clone())?;
//! let listener = http::bind(addr).await?;            // fails early: address in use
//! tokio::spawn(http::serve(listener, http::AppState { health, metrics }, cancel.clone()));
//! scheduler::run_loop(rx, interval, cancel, |trigger| async { /* load, plan, apply */ }).await;
//! ```

pub mod backoff;
pub mod health;
pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod signals;
pub mod watch;
