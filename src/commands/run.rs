//! `stagesync run`: the long-running reconciler.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::apply;
use crate::cli::RunConfig;
use crate::commands::connect;
use crate::daemon::health::Health;
use crate::daemon::key_checks::KeyChecks;
use crate::daemon::metrics::Metrics;
use crate::daemon::pass::{Keys, Reconciler};
use crate::daemon::{self, Settings, http};
use crate::exit::{self, Outcome};
use crate::state::StateFile;
use crate::verify::{ProbeSettings, Prober};

pub(crate) async fn run(cfg: RunConfig) -> Result<Outcome> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let observed = metrics.clone();
    let client = connect(&cfg.reconcile.client)?;
    let client = client
        .with_quiet_retries()
        .with_observer(Arc::new(move |r| {
            observed.record_api_request(r.method, r.status)
        }));
    let keys = if cfg.dry_run {
        Keys::ReadOnly(cfg.reconcile.state_file.clone())
    } else {
        let state = StateFile::open_for_write(&cfg.reconcile.state_file)?;
        for line in state.keys().damage_report(&cfg.reconcile.state_file) {
            tracing::warn!("{line}");
        }
        Keys::Writable(state)
    };
    let listener = match cfg.listen {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    tracing::info!(
        dir = %cfg.reconcile.dir.display(),
        url = client.base_url(),
        interval = ?cfg.interval,
        dry_run = cfg.dry_run,
        verify_keys = cfg.verify_keys,
        prune = cfg.reconcile.prune.enabled,
        listen = %cfg.listen.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        "stagesync run starting"
    );

    // A stop signal cancels; the writes in flight then get the grace period,
    // and a backstop ends the process at the shutdown timeout whatever still
    // runs (the state file is saved atomically, so it is whole either way).
    let stop = apply::Stop::new();
    stop.abandon_after_grace(cfg.shutdown_timeout);
    exit_at_shutdown_timeout(stop.cancel.clone(), cfg.shutdown_timeout);
    let mut reconciler = Reconciler::new(
        cfg.reconcile.dir.clone(),
        Arc::new(cfg.reconcile.policy.clone()),
        client,
        keys,
        cfg.concurrency,
        metrics.clone(),
        health.clone(),
    )
    .with_abandon(stop.abandon.clone())
    .with_prune(cfg.reconcile.prune, cfg.debounce);
    if cfg.verify_keys {
        let prober = Prober::new(ProbeSettings::default())?;
        let hosts = cfg.reconcile.policy.hosts.clone();
        reconciler = reconciler.with_key_checks(KeyChecks::new(prober, hosts, metrics.clone()));
    }
    let reconciler = Arc::new(Mutex::new(reconciler));
    let settings = Settings {
        dir: cfg.reconcile.dir,
        interval: cfg.interval,
        debounce: cfg.debounce,
        listener,
        health,
        metrics,
        handle_signals: true,
    };
    daemon::run(settings, stop.cancel.clone(), move |ctx| {
        let reconciler = reconciler.clone();
        async move { reconciler.lock().await.pass(ctx).await }
    })
    .await?;
    tracing::info!("stagesync run stopped");
    Ok(Outcome::Success)
}

/// Once `cancel` fires, exits the process (0, as a finished shutdown would) if
/// it is still running `shutdown_timeout` later.
fn exit_at_shutdown_timeout(cancel: CancellationToken, shutdown_timeout: Duration) {
    tokio::spawn(async move {
        cancel.cancelled().await;
        tokio::time::sleep(shutdown_timeout).await;
        tracing::error!(timeout = ?shutdown_timeout, "the shutdown timeout passed, exiting now");
        std::process::exit(exit::SUCCESS);
    });
}
