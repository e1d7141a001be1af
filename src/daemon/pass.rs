//! The daemon's reconcile pass: the same load -> fetch-and-plan -> apply path
//! as `stagesync apply`, with memory between passes.
//!
//! What it remembers, and why:
//! - the last valid stages of every manifest file: a file that turns invalid
//!   keeps them (its error is logged with file:line), everything else goes on;
//! - that the source was seen: a directory that vanishes or empties (a git-sync
//!   swap in progress, an unmounted volume) is "source unavailable" and the
//!   last desired state stays in force. It is never taken as "nothing is
//!   desired";
//! - per-stage backoff and the last error per stage, so a failing stage is
//!   retried on a growing delay and logged when it starts or stops failing, not
//!   on every pass.
//!
//! A stop signal abandons the read of live state (nothing is written yet, and
//! with authentik failing the client's retries would hold the exit for tens
//! of seconds); writes already started finish (see [`apply::apply`]).
//!
//! Logs: one INFO line per change made, WARN/ERROR per new failure, each naming
//! the stage and its file; a pass that changes nothing logs at DEBUG.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::apply::{self, Operation, WriteResult};
use crate::authentik::Client;
use crate::daemon::PassContext;
use crate::daemon::backoff::{Backoff, FailureLog};
use crate::daemon::health::{Health, PassHealth};
use crate::daemon::metrics::{Metrics, Outcome, StageCounts, WriteOperation};
use crate::daemon::scheduler::{PassOutcome, Trigger};
use crate::manifest::{self, Manifests, SourceError};
use crate::output::escape;
use crate::plan::Action;
use crate::reconcile;
use crate::stage::DesiredStage;
use crate::state::{KeyState, StateFile};

/// The key under which authentik-wide failures (unreachable, 403) are logged.
const AUTHENTIK: &str = "\0authentik";
/// The longest wait before reading live state again after a failure. Lower
/// than the per-stage cap (5 min): a failed read is one cheap GET, and after an
/// outage authentik should be reconverged within half a minute, not five.
const AUTHENTIK_RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(30);
/// The key under which an unavailable manifest directory is logged.
const SOURCE: &str = "\0source";

/// The key fingerprints. A dry run only reads the state file, each pass (it
/// must not block `apply`, whose writes it should then see); a writing daemon
/// holds the file's lock for its whole life.
pub enum Keys {
    Writable(StateFile),
    ReadOnly(PathBuf),
}

/// Everything a pass needs and remembers.
pub struct Reconciler {
    pub dir: PathBuf,
    pub client: Client,
    pub keys: Keys,
    pub concurrency: usize,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The last valid stages of each manifest file, by path.
    last_valid: BTreeMap<PathBuf, Vec<DesiredStage>>,
    /// Whether manifests were ever read; before that there is nothing to keep.
    seen_source: bool,
    backoff: Backoff,
    failures: FailureLog,
    /// The `!File` paths of the last successful read, kept while the source is
    /// unavailable so key rotation is still noticed.
    last_secret_files: Vec<PathBuf>,
    /// The diagnostics last logged per file, to log a broken file once.
    logged_diagnostics: BTreeMap<PathBuf, Vec<String>>,
}

impl Reconciler {
    pub fn new(
        dir: PathBuf,
        client: Client,
        keys: Keys,
        concurrency: usize,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Reconciler {
            dir,
            client,
            keys,
            last_secret_files: Vec::new(),
            concurrency,
            metrics,
            health,
            last_valid: BTreeMap::new(),
            seen_source: false,
            backoff: Backoff::new(),
            failures: FailureLog::new(),
            logged_diagnostics: BTreeMap::new(),
        }
    }

    /// One reconcile: read the manifests, fetch live state, plan, apply.
    pub async fn pass(&mut self, ctx: PassContext) -> PassOutcome {
        let started = Instant::now();
        debug!(trigger = ctx.trigger.as_str(), "reconcile starting");
        if matches!(ctx.trigger, Trigger::FilesChanged | Trigger::Signal) {
            // A fixed manifest (or an operator's SIGHUP) deserves an immediate
            // try, not the rest of a backoff.
            self.backoff = Backoff::new();
        }

        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || manifest::load(&dir))
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::Unreadable(
                    self.dir.clone(),
                    std::io::Error::other("reading the manifests failed unexpectedly"),
                ))
            });
        let (source_available, manifest_errors, secret_files) = self.absorb(loaded);
        ctx.watcher.set_extra_paths(secret_files);
        self.metrics.set_source_available(source_available);
        self.metrics.set_manifest_errors(manifest_errors);

        if !self.seen_source {
            self.finish(
                started,
                source_available,
                manifest_errors,
                // authentik was not asked (there is nothing to ask it yet), so
                // it is no reason for /readyz: the directory is.
                None,
                None,
            );
            return PassOutcome::done();
        }

        let desired: Vec<DesiredStage> = self.last_valid.values().flatten().cloned().collect();
        let read_only_keys;
        let keys = match &self.keys {
            Keys::Writable(state) => state.keys(),
            Keys::ReadOnly(path) => match StateFile::read_only(path) {
                Ok(keys) => {
                    read_only_keys = keys;
                    &read_only_keys
                }
                Err(err) => {
                    read_only_keys = KeyState::default();
                    warn!(error = %err, "cannot read the state file; key status shows as unknown");
                    &read_only_keys
                }
            },
        };
        // Reading live state writes nothing, so a stop signal abandons it at
        // once: with authentik failing, the client's retries would otherwise
        // hold the exit for as long as they last (tens of seconds).
        let fetched = tokio::select! {
            fetched = reconcile::fetch_and_plan(&self.client, desired, keys) => fetched,
            () = ctx.cancel.cancelled() => {
                debug!("stopping: reading live state abandoned, nothing was written");
                return PassOutcome::done();
            }
        };
        let planned = match fetched {
            Ok(planned) => {
                if self.failures.success(AUTHENTIK).is_news() {
                    info!(url = self.client.base_url(), "authentik is reachable again");
                }
                planned
            }
            Err(err) => {
                let message = err.to_string();
                if self.failures.failure(AUTHENTIK, &message).is_news() {
                    error!(url = self.client.base_url(), error = %message, "cannot read live state from authentik; retrying");
                } else {
                    debug!(error = %message, "authentik still failing");
                }
                let delay = self
                    .backoff
                    .record_failure(AUTHENTIK, Instant::now())
                    .min(AUTHENTIK_RETRY_CAP);
                // The stage counts stay as last seen: zeroing `failed` during an
                // outage would silence the alerts built on it.
                self.finish(
                    started,
                    source_available,
                    manifest_errors,
                    Some(Err(message)),
                    None,
                );
                return PassOutcome::retry_in(delay);
            }
        };
        self.backoff.record_success(AUTHENTIK);

        let mut counts = StageCounts::default();
        let mut pending = Vec::new();
        for entry in &planned.plan.stages {
            let file = entry.origin.file.display().to_string();
            match &entry.action {
                Action::InSync { .. } => {
                    counts.in_sync += 1;
                    if self.failures.success(&entry.name).is_news() {
                        info!(stage = %entry.name, file, "stage is in sync again");
                    }
                }
                Action::Error { message, .. } => {
                    counts.failed += 1;
                    if self.failures.failure(&entry.name, message).is_news() {
                        error!(stage = %entry.name, file, error = %message, "cannot plan stage");
                    }
                }
                Action::Create { .. } | Action::Update { .. } => pending.push(entry),
            }
        }

        if let Keys::ReadOnly(_) = self.keys {
            for entry in &pending {
                counts.drifted += 1;
                let what = describe(&entry.action, Tense::Pending);
                if self
                    .failures
                    .failure(&entry.name, &format!("drift: {what}"))
                    .is_news()
                {
                    info!(stage = %entry.name, file = %entry.origin.file.display(), drift = %what, "drift found (dry run: not written)");
                }
            }
        } else if let Reconciler {
            client,
            keys: Keys::Writable(state),
            backoff,
            concurrency,
            ..
        } = self
            && !pending.is_empty()
        {
            let now = Instant::now();
            let report = apply::apply(
                client,
                &planned.plan,
                state.keys_mut(),
                *concurrency,
                &ctx.cancel,
                |name| !backoff.should_attempt(name, now),
            )
            .await;
            let attempted: BTreeSet<&str> =
                report.outcomes.iter().map(|o| o.name.as_str()).collect();
            counts.drifted += pending
                .iter()
                .filter(|e| !attempted.contains(e.name.as_str()))
                .count();
            let planned_by_name: std::collections::HashMap<&str, &Action> = planned
                .plan
                .stages
                .iter()
                .map(|e| (e.name.as_str(), &e.action))
                .collect();
            for outcome in &report.outcomes {
                let file = outcome.origin.file.display().to_string();
                let operation = match outcome.operation {
                    Operation::Create => WriteOperation::Create,
                    Operation::Update => WriteOperation::Update,
                };
                match &outcome.result {
                    WriteResult::Written(live) => {
                        counts.in_sync += 1;
                        self.metrics.record_write(operation, Outcome::Success);
                        self.backoff.record_success(&outcome.name);
                        self.failures.success(&outcome.name);
                        let what = planned_by_name
                            .get(outcome.name.as_str())
                            .map(|action| describe(action, Tense::Done))
                            .unwrap_or_default();
                        info!(stage = %outcome.name, file, uuid = %live.uuid, change = %what, "{} stage", outcome.operation.past_tense());
                    }
                    WriteResult::Failed(err) => {
                        counts.failed += 1;
                        self.metrics.record_write(operation, Outcome::Failure);
                        let delay = self.backoff.record_failure(&outcome.name, Instant::now());
                        let message = err.to_string();
                        if self.failures.failure(&outcome.name, &message).is_news() {
                            warn!(stage = %outcome.name, file, error = %message, retry_in = ?delay, "write failed");
                        }
                    }
                    WriteResult::Skipped(why) => {
                        counts.drifted += 1;
                        debug!(stage = %outcome.name, file, why = %why, "write not started");
                    }
                }
            }
            if let Keys::Writable(state) = &self.keys
                && let Err(err) = state.save()
            {
                error!(error = %err, "cannot save the state file; key status may show as unknown next time");
            }
        }
        if pending.is_empty() {
            debug!("reconcile: everything in sync");
        }

        let retry = self.backoff.next_attempt_in(Instant::now());
        self.finish(
            started,
            source_available,
            manifest_errors,
            Some(Ok(())),
            Some(counts),
        );
        retry.map_or_else(PassOutcome::done, PassOutcome::retry_in)
    }

    /// Takes what was read into the last valid state. Returns whether the
    /// source was available, how many manifest errors there are, and the
    /// secret files to watch.
    fn absorb(&mut self, loaded: Result<Manifests, SourceError>) -> (bool, usize, Vec<PathBuf>) {
        let manifests = match loaded {
            // An empty directory after manifests were seen is a swap in progress
            // or a lost mount, not "nothing is desired".
            Ok(m) if !m.files.is_empty() || self.last_valid.is_empty() => m,
            Ok(_) => {
                self.source_unavailable("the manifest directory is empty");
                return (false, 0, self.last_secret_files.clone());
            }
            Err(err) => {
                self.source_unavailable(&err.to_string());
                return (false, 0, self.last_secret_files.clone());
            }
        };
        if self.failures.success(SOURCE).is_news() {
            info!(dir = %self.dir.display(), "manifest directory is available again");
        }
        self.seen_source = true;

        let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for diagnostic in &manifests.diagnostics {
            by_file
                .entry(diagnostic.file.clone())
                .or_default()
                .push(diagnostic.to_string());
        }
        for (file, lines) in &by_file {
            if self.logged_diagnostics.get(file) != Some(lines) {
                for line in lines {
                    warn!(file = %file.display(), "{line}");
                }
            }
        }
        self.logged_diagnostics = by_file;

        let present: BTreeSet<PathBuf> = manifests.files.iter().map(|f| f.path.clone()).collect();
        self.last_valid.retain(|path, _| present.contains(path));
        let mut secrets = Vec::new();
        for file in manifests.files {
            secrets.extend(file.secret_files.iter().cloned());
            if file.valid {
                self.last_valid.insert(file.path, file.stages);
            } else if self.last_valid.contains_key(&file.path) {
                debug!(file = %file.path.display(), "invalid file: keeping its last valid stages");
            }
        }
        self.last_secret_files = secrets.clone();
        (
            true,
            manifests
                .diagnostics
                .iter()
                .filter(|d| d.severity == manifest::Severity::Error)
                .count(),
            secrets,
        )
    }

    fn source_unavailable(&mut self, why: &str) {
        if self.failures.failure(SOURCE, why).is_news() {
            if self.seen_source {
                warn!(dir = %self.dir.display(), reason = why, "source unavailable: keeping the last desired state");
            } else {
                warn!(dir = %self.dir.display(), reason = why, "source unavailable: nothing loaded yet, waiting for it");
            }
        }
    }

    /// Records the pass in metrics and health. `authentik` is `None` when the
    /// pass did not get as far as asking it (which is not a success).
    fn finish(
        &self,
        started: Instant,
        source_available: bool,
        manifest_errors: usize,
        authentik: Option<Result<(), String>>,
        counts: Option<StageCounts>,
    ) {
        let success = matches!(authentik, Some(Ok(()))) && counts.is_some_and(|c| c.failed == 0);
        let authentik = authentik.unwrap_or(Ok(()));
        self.metrics
            .record_reconcile(Outcome::of(success), started.elapsed(), SystemTime::now());
        if let Some(counts) = counts {
            self.metrics.set_stage_counts(counts);
        }
        self.health.record_pass(&PassHealth {
            source_available,
            manifest_errors,
            authentik,
        });
        debug!(elapsed = ?started.elapsed(), ?counts, "reconcile finished");
    }
}

/// Whether a change was made or is only reported (dry run).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tense {
    Done,
    Pending,
}

/// A one-line description of a change, for logs: which fields, and the key.
fn describe(action: &Action, tense: Tense) -> String {
    match action {
        Action::Create { .. } => "create".to_owned(),
        Action::Update { changes, key, .. } => {
            let mut parts: Vec<String> = changes
                .iter()
                .map(|c| format!("{}: {} -> {}", c.field, c.old, c.new))
                .collect();
            if *key != crate::plan::KeyStatus::Unchanged {
                parts.push(format!(
                    "private_key: {}",
                    match (key, tense) {
                        (crate::plan::KeyStatus::Rotated, _) => "rotated",
                        (_, Tense::Done) => "unknown, written",
                        // A dry run writes nothing: "written" would be a lie.
                        (_, Tense::Pending) => "unknown, would be written",
                    }
                ));
            }
            escape(&parts.join(", ")).into_owned()
        }
        Action::InSync { .. } => "in sync".to_owned(),
        Action::Error { message, .. } => message.clone(),
    }
}
