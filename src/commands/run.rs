//! `stagesync run`: the long-running reconciler: the pipeline ([`Session`])
//! in the daemon's passes ([`Passes`]), around which [`daemon::run`] puts the
//! watcher, the scheduler, the HTTP endpoints and SIGHUP.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Mutex;

use crate::cli::RunConfig;
use crate::commands::connect;
use crate::daemon::event_poll::EventPoll;
use crate::daemon::health::Health;
use crate::daemon::key_checks::KeyChecks;
use crate::daemon::metrics::Metrics;
use crate::daemon::notify::Notifier;
use crate::daemon::pass::{FreezeSettings, Passes};
use crate::daemon::{self, Settings, http};
use crate::exit::Exit;
use crate::reconcile::{Session, State};
use crate::signals::{Announce, Shutdown, StopSignal};
use crate::verify::{ProbeSettings, Prober};

pub(crate) async fn run(cfg: RunConfig, shutdown: &Shutdown) -> Result<Exit> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let observed = metrics.clone();
    let client = connect(&cfg.reconcile.client)?;
    let client = client
        .with_quiet_retries()
        .with_observer(Arc::new(move |r| {
            observed.record_api_request(r.method, r.status)
        }));
    // A dry run only reads the state file, each pass: it must not block
    // `apply`, whose writes it should then see. A writing daemon holds the
    // file's lock for its whole life.
    let state = if cfg.dry_run {
        State::read_only(&cfg.reconcile.state_file)?
    } else {
        let state = State::locked(&cfg.reconcile.state_file)?;
        for line in state.damage_report() {
            tracing::warn!("{line}");
        }
        state
    };
    let listener = match cfg.listen {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let event_client = client.clone();
    let session = Session::new(client, state, cfg.reconcile.policy.clone());
    tracing::info!(
        dir = %cfg.reconcile.dir.display(),
        url = session.client.base_url(),
        interval = ?cfg.interval,
        event_poll = %cfg.event_poll.map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string()),
        dry_run = cfg.dry_run,
        verify_keys = cfg.verify_keys,
        notify_receivers = cfg.notify.len(),
        freeze_windows = cfg.freeze_windows.len(),
        prune = cfg.reconcile.prune.enabled,
        listen = %cfg.listen.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        "stagesync run starting"
    );

    // A stop signal cancels; the writes in flight then get the grace period,
    // and a backstop ends the process at the shutdown timeout whatever still
    // runs (the state file is saved atomically, so it is whole either way).
    shutdown.listen(cfg.shutdown_timeout, Announce::Log, true)?;
    let mut passes = Passes::new(
        cfg.reconcile.dir.clone(),
        session,
        cfg.dry_run,
        cfg.concurrency,
        metrics.clone(),
        health.clone(),
    )
    .with_abandon(shutdown.stop.abandon.clone())
    .with_prune(cfg.reconcile.prune, cfg.debounce);
    let notifier = if cfg.notify.is_empty() {
        None
    } else {
        Some(Notifier::start(
            cfg.notify,
            cfg.notify_format,
            metrics.clone(),
        )?)
    };
    if cfg.verify_keys {
        let prober = Prober::new(ProbeSettings::default())?;
        let hosts = cfg.reconcile.policy.hosts.clone();
        passes = passes.with_key_checks(
            KeyChecks::new(prober, hosts, metrics.clone()).with_notifier(notifier.clone()),
        );
    }
    let event_poll = cfg.event_poll.map(|every| EventPoll {
        client: event_client.clone(),
        every,
        metrics: metrics.clone(),
    });
    passes = passes.with_freeze(FreezeSettings {
        windows: cfg.freeze_windows.clone(),
        file: Some(crate::cli::freeze_file(&cfg.reconcile.state_file)),
    });
    if let Some(notifier) = notifier {
        passes = passes.with_notifier(notifier);
    }
    let passes = Arc::new(Mutex::new(passes));
    let settings = Settings {
        dir: cfg.reconcile.dir,
        interval: cfg.interval,
        debounce: cfg.debounce,
        listener,
        health,
        metrics,
        hangup: true,
        event_poll,
    };
    daemon::run(settings, shutdown.stop.cancel.clone(), move |ctx| {
        let passes = passes.clone();
        async move { passes.lock().await.run(ctx).await }
    })
    .await?;
    tracing::info!("stagesync run stopped");
    // A second stop signal abandoned the writes in flight: the operator
    // insisted, as 128 + the signal number says; a first one is a finished
    // shutdown.
    Ok(shutdown
        .abandoned_by()
        .map_or(Exit::Success, StopSignal::exit))
}
