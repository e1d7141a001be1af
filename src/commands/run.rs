//! `stagesync run`: the long-running reconciler.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cli::RunConfig;
use crate::commands::connect;
use crate::daemon::health::Health;
use crate::daemon::metrics::Metrics;
use crate::daemon::pass::{Keys, Reconciler};
use crate::daemon::{self, Settings, http};
use crate::exit::Outcome;
use crate::state::StateFile;

pub async fn run(cfg: RunConfig) -> Result<Outcome> {
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
        Keys::Writable(StateFile::open_for_write(&cfg.reconcile.state_file)?)
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
        prune = cfg.reconcile.prune.enabled,
        listen = %cfg.listen.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        "stagesync run starting"
    );

    let reconciler = Arc::new(Mutex::new(
        Reconciler::new(
            cfg.reconcile.dir.clone(),
            Arc::new(cfg.reconcile.policy.clone()),
            client,
            keys,
            cfg.concurrency,
            metrics.clone(),
            health.clone(),
        )
        .with_prune(cfg.reconcile.prune, cfg.debounce),
    ));
    let settings = Settings {
        dir: cfg.reconcile.dir,
        interval: cfg.interval,
        debounce: cfg.debounce,
        listener,
        health,
        metrics,
        handle_signals: true,
    };
    daemon::run(settings, CancellationToken::new(), move |ctx| {
        let reconciler = reconciler.clone();
        async move { reconciler.lock().await.pass(ctx).await }
    })
    .await?;
    tracing::info!("stagesync run stopped");
    Ok(Outcome::Success)
}
