//! The daemon's reconcile pass: the pipeline of `stagesync apply`
//! ([`crate::reconcile::Session`]: load, fetch, plan, execute, record, save),
//! with memory between passes.
//!
//! A pass reads as its steps ([`Passes::run`]), each a short function; the
//! decisions are pure, so each has unit tests:
//! - load ([`Passes::load`]): read the manifests, keep the last valid stages
//!   of a broken file, watch the `!File` keys;
//! - fetch and plan ([`Passes::fetch_and_plan`]), as `apply` does;
//! - [`decide`] (pure): which entries to write, and which to hold back and
//!   why ([`Hold`]: backed off, dry run); prune's two-pass guard
//!   ([`crate::daemon::prune`]);
//! - execute ([`Passes::execute`]): the one call that writes;
//! - record ([`Passes::record`]): the inventory and the state file;
//! - [`summarize`] (pure): what the pass amounts to, as a [`PassReport`]
//!   (counts, readiness, every entry's end, what failed);
//! - publish ([`Passes::publish`]): the report into metrics, health, backoff
//!   and the failure log, logging what is news.
//!
//! Every entry is named by its [`EntryId`] from plan to report; names are for
//! logs and backoff subjects only.
//!
//! Key checks (`--verify-keys`, [`KeyChecks`]) sit beside these steps, not in
//! them: right after the manifests are read, the pass hands the keys that are
//! due to a background task and goes on; a check's result never decides a
//! write.
//!
//! What it remembers, and why:
//! - the last valid stages of every manifest file: a file that turns invalid
//!   keeps them (its error is logged with file:line), everything else goes on;
//! - that the source was seen: a directory that vanishes or empties (a git-sync
//!   swap in progress, an unmounted volume) is "source unavailable" and the
//!   last desired state stays in force. It is never taken as "nothing is
//!   desired";
//! - per-[`Subject`] backoff and last error (authentik, the source, each
//!   stage), so a failing stage is retried on a growing delay and logged when it
//!   starts or stops failing, not on every pass.
//!
//! Backoff and hints: a file event forgets the backoff of the changed files'
//! own stages (and of stages whose `!File` key changed), so a fixed manifest is
//! tried at once; other stages and authentik keep theirs. A swap of the whole
//! directory counts as every file changed. SIGHUP forgets every backoff,
//! authentik's included: it is the operator asking for a try of everything,
//! now. Stages no longer in any manifest are forgotten too.
//!
//! A stop signal abandons the read of live state (nothing is written yet, and
//! with authentik failing the client's retries would hold the exit for tens
//! of seconds); writes already started get the grace period of
//! `--shutdown-timeout`, then are abandoned with their keys unknown (see
//! [`apply::Stop`]), and the state file is saved before the pass returns.
//!
//! Logs: one INFO line per change made, as soon as it is made; WARN/ERROR per
//! new failure once the writes are done; each naming the stage and its file; a
//! pass that changes nothing logs at DEBUG.
//!
//! Prune (`--prune`, see [`crate::daemon::prune`]): deletes are entries of the
//! plan like writes, made after them, only when this pass read a complete,
//! valid manifest set, and only for stages whose manifest two passes a
//! debounce apart found gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::apply::{self, ApplyReport, Ended, Operation};
use crate::daemon::PassContext;
use crate::daemon::backoff::{Backoff, FailureLog, Subject};
use crate::daemon::health::{Health, PassHealth};
use crate::daemon::key_checks::KeyChecks;
use crate::daemon::metrics::{Counts, Metrics, ResultLabel, WriteOperation};
use crate::daemon::notify::Notifier;
use crate::daemon::prune::PruneMemory;
use crate::daemon::scheduler::{ChangedFiles, PassOutcome, Trigger};
use crate::drift::ChangedBy;
use crate::drift::freeze::{self, Frozen, Window};
use crate::drift::notify::{Event, Notification};
use crate::kinds::Kind;
use crate::kinds::captcha::DesiredStage;
use crate::manifest::{self, Manifests, SourceError};
use crate::plan::{Action, EntryId, Held, Plan, PruneSettings};
use crate::reconcile::{Planned, Session};
use crate::secret::KeySource;
use crate::text::escape;

/// The longest wait before reading live state again after a failure. Lower
/// than the per-stage cap (5 min): a failed read is one cheap GET, and after an
/// outage authentik should be reconverged within half a minute, not five.
const AUTHENTIK_RETRY_CAP: Duration = Duration::from_secs(30);

/// What the plan wants for one entry, as far as the pass is concerned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Wanted {
    InSync,
    /// A create or an update; `change` describes it for a dry run's log line.
    Write {
        change: String,
    },
    /// The planner could not decide (authentik's message, a name conflict...).
    PlanError(String),
}

impl Wanted {
    fn of(action: &Action) -> Self {
        match action {
            // A held delete does nothing. A manifest's delete (a guard its
            // list no longer names) is a write like any other: held by a dry
            // run, a freeze or a backoff.
            Action::InSync { .. } | Action::Delete { held: Some(_), .. } => Wanted::InSync,
            Action::Error { message, .. } => Wanted::PlanError(message.clone()),
            Action::Create { .. } | Action::Update { .. } | Action::Delete { held: None, .. } => {
                Wanted::Write {
                    change: describe(action, Tense::Pending),
                }
            }
        }
    }
}

/// A manifest entry of the plan, as [`decide`] sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlannedStage {
    pub(crate) entry: EntryId,
    /// A captcha stage, or one of its guards: what notifications say it is.
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) wanted: Wanted,
    /// Who made the drift, when the event log names someone other than
    /// stagesync, or could not be read.
    pub(crate) changed_by: Option<ChangedByNote>,
}

/// Who made a drift, as logs and notifications say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChangedByNote {
    Known(ChangedBy),
    /// The event log could not be read.
    Unknown,
}

impl ChangedByNote {
    /// `alice from 192.0.2.7 at ...` or `unknown`, escaped for a log line.
    fn log_text(&self) -> String {
        match self {
            ChangedByNote::Known(by) => escape(&by.who()).into_owned(),
            ChangedByNote::Unknown => "unknown".to_owned(),
        }
    }

    /// Fills a notification's `changed_by` / `changed_by_unknown`.
    fn fill(note: Option<&ChangedByNote>, n: &mut Notification) {
        match note {
            Some(ChangedByNote::Known(by)) => n.changed_by = Some(by.clone()),
            Some(ChangedByNote::Unknown) => n.changed_by_unknown = true,
            None => {}
        }
    }
}

impl PlannedStage {
    /// The manifest entries of `plan`.
    fn of_plan(plan: &Plan) -> Vec<PlannedStage> {
        plan.manifest_entries()
            .map(|entry| PlannedStage {
                entry: entry.id,
                kind: entry.kind,
                name: entry.name.clone(),
                file: entry
                    .origin
                    .as_ref()
                    .map(|o| o.file.clone())
                    .unwrap_or_default(),
                wanted: Wanted::of(&entry.action),
                changed_by: changed_by(plan, entry.id),
            })
            .collect()
    }
}

/// Who made entry `id`'s drift: someone named, or unknown when the event
/// log could not be read; `None` when nobody else is to be named.
fn changed_by(plan: &Plan, id: EntryId) -> Option<ChangedByNote> {
    match (plan.changed_by.get(&id), &plan.changed_by_unknown) {
        (Some(by), _) => Some(ChangedByNote::Known(by.clone())),
        (None, Some(_))
            if matches!(
                plan.entry(id).map(|e| &e.action),
                Some(Action::Update { .. })
            ) =>
        {
            Some(ChangedByNote::Unknown)
        }
        (None, _) => None,
    }
}

/// Why a stage that needs a write is not written this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// It failed recently; its delay has not passed.
    BackedOff,
    /// `--dry-run`: drift is reported, never written. `change` says what.
    DryRun { change: String },
    /// A freeze holds writes until it ends; then they are made.
    Frozen { change: String },
}

/// What a pass does with each stage of the plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WriteDecision {
    /// Every stage, in plan order, with what happens to it.
    pub(crate) stages: Vec<(PlannedStage, Step)>,
}

/// What happens to one stage this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to write.
    InSync,
    /// The plan failed for it; nothing to write.
    PlanError(String),
    /// Write it.
    Write,
    /// It needs a write that is held back.
    Hold(Hold),
}

impl WriteDecision {
    /// The entries to write.
    pub(crate) fn writes(&self) -> BTreeSet<EntryId> {
        self.stages
            .iter()
            .filter(|(_, step)| *step == Step::Write)
            .map(|(stage, _)| stage.entry)
            .collect()
    }
}

/// Decides what to write (pure): every stage the plan wants written, except
/// those whose backoff has not passed at `now`, and nothing in a dry run or
/// while `frozen`.
pub(crate) fn decide(
    stages: Vec<PlannedStage>,
    backoff: &Backoff,
    now: Instant,
    dry_run: bool,
    frozen: bool,
) -> WriteDecision {
    let stages = stages
        .into_iter()
        .map(|stage| {
            let step = match &stage.wanted {
                Wanted::InSync => Step::InSync,
                Wanted::PlanError(message) => Step::PlanError(message.clone()),
                Wanted::Write { change } if dry_run => Step::Hold(Hold::DryRun {
                    change: change.clone(),
                }),
                Wanted::Write { change } if frozen => Step::Hold(Hold::Frozen {
                    change: change.clone(),
                }),
                Wanted::Write { .. } => {
                    if backoff.should_attempt(&Subject::stage(&stage.name), now) {
                        Step::Write
                    } else {
                        Step::Hold(Hold::BackedOff)
                    }
                }
            };
            (stage, step)
        })
        .collect();
    WriteDecision { stages }
}

/// How one attempted write ended, as the summary needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    /// authentik accepted it; `change` describes what was done.
    Written {
        operation: Operation,
        uuid: String,
        change: String,
    },
    Failed {
        operation: Operation,
        message: String,
    },
    /// Never sent: cancelled, or the write it depends on was not made.
    Skipped(String),
}

impl WriteEnd {
    /// The end of a write's outcome; `change_of` describes the entry's change.
    fn of(outcome: &apply::Outcome, change: String) -> Option<WriteEnd> {
        Some(match &outcome.result {
            Ended::Written(written) => WriteEnd::Written {
                operation: outcome.operation,
                uuid: written.uuid.to_string(),
                change,
            },
            Ended::Failed(err) => WriteEnd::Failed {
                operation: outcome.operation,
                message: err.to_string(),
            },
            Ended::Skipped(why) => WriteEnd::Skipped(why.to_string()),
            // A guard its list no longer names, unbound.
            Ended::Deleted { .. } => WriteEnd::Written {
                operation: outcome.operation,
                uuid: outcome.uuid.map(|u| u.to_string()).unwrap_or_default(),
                change,
            },
            Ended::InUse(_) => return None,
        })
    }
}

/// Whether and how live state was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Not asked: there is nothing desired yet (the source was never seen).
    NotAsked,
    Read,
    /// Why not, in the user's words.
    Failed(String),
}

/// Where one stage ended this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StageEnd {
    InSync,
    Written {
        operation: Operation,
        uuid: String,
        change: String,
    },
    PlanFailed(String),
    WriteFailed {
        operation: Operation,
        message: String,
    },
    /// Drift left as it is this pass.
    Drifted(Drift),
}

/// Why drift was left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Drift {
    Held(Hold),
    Skipped(String),
}

/// What one pass amounts to: the input of metrics, `/readyz`, backoff and logs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PassReport {
    pub(crate) source_available: bool,
    pub(crate) manifest_errors: usize,
    pub(crate) authentik: Reading,
    /// Per-state counts of each kind; `None` when live state was not read (the
    /// counts stay as last seen: zeroing `failed` during an outage would
    /// silence the alerts built on it).
    pub(crate) counts: Option<BTreeMap<Kind, Counts>>,
    /// Every stage of the plan, with its file.
    pub(crate) stages: Vec<(PlannedStage, StageEnd)>,
}

impl PassReport {
    /// A pass that did not get as far as reading live state.
    pub(crate) fn unread(
        source_available: bool,
        manifest_errors: usize,
        authentik: Reading,
    ) -> Self {
        PassReport {
            source_available,
            manifest_errors,
            authentik,
            counts: None,
            stages: Vec::new(),
        }
    }

    /// Live state was read and no stage failed.
    pub(crate) fn success(&self) -> bool {
        self.authentik == Reading::Read
            && self
                .counts
                .as_ref()
                .is_some_and(|c| c.values().all(|c| c.failed == 0))
    }

    /// What `/readyz` is decided from. Not asking authentik is no reason to be
    /// unready: the source is.
    pub(crate) fn health(&self) -> PassHealth {
        PassHealth {
            source_available: self.source_available,
            manifest_errors: self.manifest_errors,
            authentik: match &self.authentik {
                Reading::Failed(message) => Err(message.clone()),
                Reading::NotAsked | Reading::Read => Ok(()),
            },
        }
    }

    /// What failed this pass, with the message.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> Vec<(Subject, &str)> {
        let mut failed = Vec::new();
        if let Reading::Failed(message) = &self.authentik {
            failed.push((Subject::Authentik, message.as_str()));
        }
        for (stage, end) in &self.stages {
            match end {
                StageEnd::PlanFailed(message) | StageEnd::WriteFailed { message, .. } => {
                    failed.push((Subject::stage(&stage.name), message.as_str()));
                }
                _ => {}
            }
        }
        failed
    }
}

/// Sums up a pass that read live state (pure): `writes` are the ends of the
/// writes `decision` asked for, by entry; a decided write without an end (the
/// write step skipped it) counts as drift not started. `plan` and `report`
/// give the deletes: made (`pruned`) and in use (`blocked`).
pub(crate) fn summarize(
    decision: WriteDecision,
    mut writes: BTreeMap<EntryId, WriteEnd>,
    plan: &Plan,
    report: Option<&ApplyReport>,
    source_available: bool,
    manifest_errors: usize,
) -> PassReport {
    let mut counts: BTreeMap<Kind, Counts> = BTreeMap::new();
    let stages = decision
        .stages
        .into_iter()
        .map(|(stage, step)| {
            let end = match step {
                Step::InSync => StageEnd::InSync,
                Step::PlanError(message) => StageEnd::PlanFailed(message),
                Step::Hold(hold) => StageEnd::Drifted(Drift::Held(hold)),
                Step::Write => match writes.remove(&stage.entry) {
                    Some(WriteEnd::Written {
                        operation,
                        uuid,
                        change,
                    }) => StageEnd::Written {
                        operation,
                        uuid,
                        change,
                    },
                    Some(WriteEnd::Failed { operation, message }) => {
                        StageEnd::WriteFailed { operation, message }
                    }
                    Some(WriteEnd::Skipped(why)) => StageEnd::Drifted(Drift::Skipped(why)),
                    None => StageEnd::Drifted(Drift::Skipped("not attempted".into())),
                },
            };
            let kind = plan
                .entry(stage.entry)
                .map_or(Kind::CaptchaStage, |e| e.kind);
            let count = counts.entry(kind).or_default();
            match end {
                StageEnd::InSync | StageEnd::Written { .. } => count.in_sync += 1,
                StageEnd::PlanFailed(_) | StageEnd::WriteFailed { .. } => count.failed += 1,
                StageEnd::Drifted(_) => count.drifted += 1,
            }
            (stage, end)
        })
        .collect();
    for entry in plan.prune_entries() {
        let count = counts.entry(entry.kind).or_default();
        match &entry.action {
            Action::Delete {
                held: Some(Held::InUse { .. }),
                ..
            } => count.blocked += 1,
            Action::Delete { held: None, .. } if pruned(report, entry.id) => count.pruned += 1,
            _ => {}
        }
    }
    counts.entry(Kind::CaptchaStage).or_default();
    PassReport {
        source_available,
        manifest_errors,
        authentik: Reading::Read,
        counts: Some(counts),
        stages,
    }
}

/// Whether `report` says entry `id`'s delete was made (not found gone).
fn pruned(report: Option<&ApplyReport>, id: EntryId) -> bool {
    report.and_then(|r| r.of(id)).is_some_and(|o| {
        matches!(
            o.result,
            Ended::Deleted {
                already_gone: false
            }
        )
    })
}

/// The stages whose backoff a change forgets (pure but for `known_as`): those
/// of the manifest files `changed` holds, and those whose `!File` key it holds.
/// `known_as` gives the paths the watcher may name a file by (it reports real
/// paths, the manifests keep the paths as typed).
pub(crate) fn stages_in_changed_files(
    files: &BTreeMap<PathBuf, Vec<DesiredStage>>,
    changed: &ChangedFiles,
    known_as: impl Fn(&Path) -> Vec<PathBuf>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if changed.is_empty() {
        return names;
    }
    let touched =
        |path: &Path| changed.is_everything() || known_as(path).iter().any(|p| changed.contains(p));
    for (file, stages) in files {
        let whole_file = touched(file);
        let base = file.parent().unwrap_or(Path::new(""));
        for stage in stages {
            let key_changed = match &stage.key_source {
                KeySource::File(key) => touched(&base.join(key)),
                KeySource::Env(_) | KeySource::Literal => false,
            };
            if whole_file || key_changed {
                names.insert(stage.fields.name.trim().to_owned());
            }
        }
    }
    names
}

/// Forgets the backoff a pass's trigger makes moot (pure): every subject's on
/// SIGHUP; otherwise that of the `changed` stages only. Stages no longer
/// `desired` are forgotten in both (and their last error with them).
pub(crate) fn forget_backoff(
    backoff: &mut Backoff,
    failures: &mut FailureLog,
    trigger: Trigger,
    changed: &BTreeSet<String>,
    desired: &BTreeSet<&str>,
) {
    if trigger == Trigger::Signal {
        *backoff = Backoff::new();
    }
    for name in changed {
        backoff.forget(&Subject::stage(name));
    }
    let managed = |subject: &Subject| match subject {
        Subject::Stage(name) => desired.contains(name.as_str()),
        Subject::Authentik | Subject::Source => true,
    };
    backoff.retain(managed);
    failures.retain(managed);
}

/// The paths the watcher may report for `path`: under its real folder, and
/// where it leads when it is a symlink.
fn known_as(path: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut names = Vec::new();
    if let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name())
        && let Ok(real) = std::fs::canonicalize(parent)
    {
        names.push(real.join(name));
    }
    if let Ok(real) = std::fs::canonicalize(&absolute) {
        names.push(real);
    }
    names
}

/// Everything the daemon's passes need and remember between them.
pub(crate) struct Passes {
    pub(crate) dir: PathBuf,
    /// The client, the state and the operator's policy the manifests are
    /// checked against on every read.
    pub(crate) session: Session,
    /// `--dry-run`: drift is reported, nothing is written (the state file is
    /// then read each pass, never locked).
    pub(crate) dry_run: bool,
    pub(crate) concurrency: usize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
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
    /// `--verify-keys`: checks each stage's key with its provider, beside the pass.
    key_checks: Option<KeyChecks>,
    /// Fires when the grace period after a stop signal is over: writes still
    /// in flight are abandoned (see [`apply::Stop`]).
    abandon: CancellationToken,
    prune: PruneMemory,
    /// The event log could not be read at the last drift: said once, when
    /// that starts and when it ends.
    event_log_unreadable: bool,
    /// `--notify`: where events worth attention go.
    notifier: Option<Notifier>,
    /// Stages whose write failed and was notified, to notify the recovery.
    writes_failing: BTreeSet<String>,
    /// Blocked deletes already notified, by uuid.
    prune_blocked_notified: BTreeSet<uuid::Uuid>,
    /// Scheduled freeze windows and the requested-freeze file.
    freeze: FreezeSettings,
    /// The freeze in force at the last look, to log its start and end once.
    frozen: Option<Frozen>,
}

/// Where freezes come from.
#[derive(Clone, Debug, Default)]
pub(crate) struct FreezeSettings {
    pub(crate) windows: Vec<Window>,
    /// `stagesync freeze` writes the time it ends here; `None`: no file.
    pub(crate) file: Option<PathBuf>,
}

impl FreezeSettings {
    /// The end of a requested freeze, from the file (absent or unreadable:
    /// none; an unreadable time is logged).
    fn requested(&self) -> Option<SystemTime> {
        let text = std::fs::read_to_string(self.file.as_ref()?).ok()?;
        let until = freeze::parse_requested(&text);
        if until.is_none() {
            warn!(file = %self.file.as_ref()?.display(), "the freeze file does not hold a time (RFC 3339): ignored");
        }
        until
    }
}

/// What a load found: whether the source was available, how many manifest
/// errors it has, and the secret files to watch.
struct Loaded {
    source_available: bool,
    manifest_errors: usize,
    secret_files: Vec<PathBuf>,
}

impl Passes {
    pub(crate) fn new(
        dir: PathBuf,
        session: Session,
        dry_run: bool,
        concurrency: usize,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Passes {
            dir,
            session,
            dry_run,
            last_secret_files: Vec::new(),
            concurrency,
            metrics,
            health,
            last_valid: BTreeMap::new(),
            seen_source: false,
            backoff: Backoff::new(),
            failures: FailureLog::new(),
            logged_diagnostics: BTreeMap::new(),
            key_checks: None,
            abandon: CancellationToken::new(),
            prune: PruneMemory::new(PruneSettings::default(), Duration::ZERO),
            event_log_unreadable: false,
            notifier: None,
            writes_failing: BTreeSet::new(),
            prune_blocked_notified: BTreeSet::new(),
            freeze: FreezeSettings::default(),
            frozen: None,
        }
    }

    /// Checks each stage's key with its captcha provider when it is first seen
    /// and whenever it changes (see [`KeyChecks`]); the pass does not wait.
    pub(crate) fn with_key_checks(mut self, key_checks: KeyChecks) -> Self {
        self.key_checks = Some(key_checks);
        self
    }

    /// Prunes with `settings`; a delete needs two passes `debounce` apart.
    pub(crate) fn with_prune(mut self, settings: PruneSettings, debounce: Duration) -> Self {
        self.prune = PruneMemory::new(settings, debounce);
        self
    }

    /// Sends a notification of each event worth attention through `notifier`.
    pub(crate) fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Holds writes during `freeze`'s windows and requested freezes.
    pub(crate) fn with_freeze(mut self, freeze: FreezeSettings) -> Self {
        self.freeze = freeze;
        self
    }

    /// The freeze in force now, its start and end logged once and shown in
    /// the metrics.
    fn frozen_now(&mut self) -> Option<Frozen> {
        let frozen = freeze::frozen_at(
            &self.freeze.windows,
            self.freeze.requested(),
            SystemTime::now(),
        );
        match (&self.frozen, &frozen) {
            (None, Some(f)) => {
                info!(until = %f.until_text(), reason = %f.reason, "freeze started: writes are held, drift is reported");
            }
            (Some(_), None) => info!("freeze ended: held drift is written now"),
            (Some(old), Some(new)) if old != new => {
                info!(until = %new.until_text(), reason = %new.reason, "freeze extended");
            }
            _ => {}
        }
        self.metrics.set_frozen(frozen.as_ref().map(|f| f.until));
        self.frozen = frozen.clone();
        frozen
    }

    /// How long until the freeze state may change (a freeze ends, a window
    /// opens): a pass then writes what was held, or starts holding.
    fn freeze_changes_in(&self) -> Option<Duration> {
        let now = SystemTime::now();
        // The freeze this pass saw (its file read once, by `frozen_now`)
        // ends, or the next window opens.
        self.frozen
            .as_ref()
            .map(|f| f.until)
            .or_else(|| freeze::next_change(&self.freeze.windows, None, now))
            .map(|t| t.duration_since(now).unwrap_or_default())
    }

    fn notify(&self, n: &Notification) {
        if let Some(notifier) = &self.notifier {
            notifier.send(n);
        }
    }

    /// A stage whose write failing was notified is written or in sync again.
    fn write_recovered(&mut self, stage: &PlannedStage, file: &str) {
        if self.writes_failing.remove(&stage.name) {
            let mut n = Notification::new(Event::WriteRecovered, stage.kind, &stage.name);
            n.file = Some(file.to_owned());
            self.notify(&n);
        }
    }

    /// Prune's events: a delete made, a delete blocked (once, until it is
    /// no longer blocked).
    fn notify_prune(&mut self, plan: &Plan, report: Option<&ApplyReport>) {
        let mut blocked = BTreeSet::new();
        for entry in plan.prune_entries() {
            match &entry.action {
                Action::Delete {
                    uuid,
                    held: Some(Held::InUse { users }),
                } => {
                    blocked.insert(*uuid);
                    if !self.prune_blocked_notified.contains(uuid) {
                        let mut n = Notification::new(Event::PruneBlocked, entry.kind, &entry.name);
                        n.uuid = Some(*uuid);
                        n.reason = Some(format!("in use: {}", users.join(", ")));
                        self.notify(&n);
                    }
                }
                Action::Delete { uuid, held: None } if pruned(report, entry.id) => {
                    let mut n = Notification::new(Event::PruneDone, entry.kind, &entry.name);
                    n.uuid = Some(*uuid);
                    self.notify(&n);
                }
                _ => {}
            }
        }
        self.prune_blocked_notified = blocked;
    }

    /// Writes still in flight when `abandon` fires are given up, their keys
    /// left unknown, so that a stop signal ends the pass in bounded time.
    pub(crate) fn with_abandon(mut self, abandon: CancellationToken) -> Self {
        self.abandon = abandon;
        self
    }

    /// One reconcile: load, fetch and plan, decide, execute, record,
    /// summarize, publish.
    pub(crate) async fn run(&mut self, ctx: PassContext) -> PassOutcome {
        let started = Instant::now();
        debug!(trigger = ctx.trigger.as_str(), "reconcile starting");
        let loaded = self.load(&ctx).await;
        if !self.seen_source {
            let reading = Reading::NotAsked;
            let report =
                PassReport::unread(loaded.source_available, loaded.manifest_errors, reading);
            return self.publish(&report, started);
        }
        // Prune only from a complete, valid manifest set read by this pass.
        let complete = loaded.source_available && loaded.manifest_errors == 0;
        let mut planned = match self.fetch_and_plan(complete, &ctx.cancel).await {
            Some(Ok(planned)) => planned,
            Some(Err(reading)) => {
                let report =
                    PassReport::unread(loaded.source_available, loaded.manifest_errors, reading);
                return self.publish(&report, started);
            }
            None => return PassOutcome::done(),
        };
        self.attribute(&mut planned, &ctx.cancel).await;
        let (decision, confirm_prune_in) = self.decide(&mut planned);
        let (writes, report) = self.execute(&planned, &decision, &ctx).await;
        self.record(&planned, report.as_ref());
        self.notify_prune(&planned.plan, report.as_ref());
        let summary = summarize(
            decision,
            writes,
            &planned.plan,
            report.as_ref(),
            loaded.source_available,
            loaded.manifest_errors,
        );
        let outcome = self.publish(&summary, started);
        [outcome.retry_in, confirm_prune_in, self.freeze_changes_in()]
            .into_iter()
            .flatten()
            .min()
            .map_or_else(PassOutcome::done, PassOutcome::retry_in)
    }

    /// Load: the manifests (off the async threads), taken into the last valid
    /// state; forgets the backoff the trigger makes moot and schedules the key
    /// checks that are due.
    async fn load(&mut self, ctx: &PassContext) -> Loaded {
        // A changed file's stages, as they were and as they are now.
        let mut changed_stages = stages_in_changed_files(&self.last_valid, &ctx.changed, known_as);
        let read = self.session.load(&self.dir).await;
        let loaded = self.absorb(read);
        ctx.watcher.set_extra_paths(loaded.secret_files.clone());
        self.metrics.set_source_available(loaded.source_available);
        self.metrics.set_manifest_errors(loaded.manifest_errors);
        changed_stages.extend(stages_in_changed_files(
            &self.last_valid,
            &ctx.changed,
            known_as,
        ));
        let desired_names: BTreeSet<&str> = self
            .last_valid
            .values()
            .flatten()
            .map(|s| s.fields.name.trim())
            .collect();
        forget_backoff(
            &mut self.backoff,
            &mut self.failures,
            ctx.trigger,
            &changed_stages,
            &desired_names,
        );
        // Before the authentik part of the pass, which does not wait for them:
        // a key is checked even while authentik is unreachable.
        if let Some(key_checks) = &self.key_checks {
            key_checks.schedule(
                self.last_valid
                    .values()
                    .flatten()
                    .map(|s| (&s.fields, &s.private_key)),
            );
        }
        loaded
    }

    /// Fetch and plan the last valid desired state, as `apply` does. `None`
    /// when a stop signal abandoned it: reading live state writes nothing, so
    /// a stop abandons it at once (with authentik failing, the client's
    /// retries would otherwise hold the exit for as long as they last).
    async fn fetch_and_plan(
        &mut self,
        manifests_complete: bool,
        cancel: &CancellationToken,
    ) -> Option<Result<Planned, Reading>> {
        if let Err(err) = self.session.refresh_state() {
            warn!(error = %err, "cannot read the state file; key status shows as unknown");
        }
        let desired: Vec<DesiredStage> = self.last_valid.values().flatten().cloned().collect();
        let settings = self.prune.settings;
        tokio::select! {
            planned = self.session.fetch_and_plan(desired, settings, manifests_complete) => {
                Some(planned.map_err(|err| Reading::Failed(err.to_string())))
            }
            () = cancel.cancelled() => {
                debug!("stopping: reading live state abandoned, nothing was written");
                None
            }
        }
    }

    /// Attribute: who made each drift ([`Session::attribute`]); an event log
    /// that cannot be read is logged when that starts and when it ends, and
    /// the drift is still reverted. A stop signal abandons it (it only reads).
    async fn attribute(&mut self, planned: &mut Planned, cancel: &CancellationToken) {
        tokio::select! {
            () = self.session.attribute(&mut planned.plan) => {}
            () = cancel.cancelled() => return,
        }
        if planned.plan.drifted().next().is_none() {
            return;
        }
        let unreadable = planned.plan.changed_by_unknown.is_some();
        match &planned.plan.changed_by_unknown {
            Some(why) if !self.event_log_unreadable => {
                warn!(reason = %escape(why), "changed by: unknown (drift is still reverted)");
            }
            None if self.event_log_unreadable => {
                info!("the event log can be read again: drift names who made it");
            }
            _ => {}
        }
        self.event_log_unreadable = unreadable;
    }

    /// Decide: which writes to make (backoff, dry run) and which deletes
    /// (a dry run makes none; prune's two-pass guard). Returns when a pass
    /// should run to confirm a delete.
    fn decide(&mut self, planned: &mut Planned) -> (WriteDecision, Option<Duration>) {
        let stages = PlannedStage::of_plan(&planned.plan);
        let frozen = self.frozen_now();
        let decision = decide(
            stages,
            &self.backoff,
            Instant::now(),
            self.dry_run,
            frozen.is_some(),
        );
        let hold_deletes = if self.dry_run {
            Some("dry run: would be deleted".to_owned())
        } else {
            frozen.map(|f| format!("frozen until {} ({})", f.until_text(), f.reason))
        };
        let confirm_prune_in = if let Some(reason) = hold_deletes {
            // A pruned stage's guard removals are held with its delete.
            for entry in planned
                .plan
                .entries
                .iter_mut()
                .filter(|e| !e.is_guard_removal())
            {
                if let Action::Delete {
                    held: held @ None, ..
                } = &mut entry.action
                {
                    *held = Some(Held::Guard {
                        reason: reason.clone(),
                    });
                }
            }
            None
        } else {
            self.prune.confirm(&mut planned.plan, Instant::now())
        };
        self.prune.log_decisions(&planned.plan);
        (decision, confirm_prune_in)
    }

    /// Execute: the decided writes and the plan's deletes, each change
    /// logged as soon as it is made (a kill in the middle of a long pass
    /// loses none). Returns the ends of the writes, by entry, and the report.
    async fn execute(
        &mut self,
        planned: &Planned,
        decision: &WriteDecision,
        ctx: &PassContext,
    ) -> (BTreeMap<EntryId, WriteEnd>, Option<ApplyReport>) {
        let to_write = decision.writes();
        if self.dry_run || (to_write.is_empty() && planned.plan.deletes().next().is_none()) {
            return (BTreeMap::new(), None);
        }
        let plan = &planned.plan;
        let change_of = |id: EntryId| {
            plan.entry(id)
                .map(|e| describe(&e.action, Tense::Done))
                .unwrap_or_default()
        };
        let stop = apply::Stop {
            cancel: ctx.cancel.clone(),
            abandon: self.abandon.clone(),
        };
        let notifier = self.notifier.as_ref();
        let writes_held = |id: EntryId| {
            plan.entry(id)
                .is_some_and(|e| e.is_manifest() && !to_write.contains(&id))
        };
        let report = self
            .session
            .execute(plan, self.concurrency, &stop, writes_held, |outcome| {
                let by = changed_by(plan, outcome.entry);
                let removes = removes_guard(plan, outcome.entry);
                log_outcome(
                    outcome,
                    &change_of(outcome.entry),
                    by.as_ref().map(ChangedByNote::log_text).as_deref(),
                    removes,
                );
                let notification = if removes {
                    guard_removed(outcome)
                } else {
                    reverted(plan, outcome, by.as_ref())
                };
                if let (Some(notifier), Some(n)) = (notifier, notification) {
                    notifier.send(&n);
                }
            })
            .await;
        let writes = report
            .outcomes
            .iter()
            .filter_map(|o| Some((o.entry, WriteEnd::of(o, change_of(o.entry))?)))
            .collect();
        (writes, Some(report))
    }

    /// Record: the inventory, and the state file saved.
    fn record(&mut self, planned: &Planned, report: Option<&ApplyReport>) {
        let changed = self.session.record(planned, report);
        if (changed || report.is_some())
            && let Err(err) = self.session.save()
        {
            error!(error = %err, "cannot save the state file; key status may show as unknown next time");
        }
    }

    /// Publish: `report` into metrics, health, backoff and the failure log,
    /// logging what is news; says when the next pass should run.
    fn publish(&mut self, report: &PassReport, started: Instant) -> PassOutcome {
        let now = Instant::now();
        let url = self.session.client.base_url().to_owned();
        match &report.authentik {
            Reading::NotAsked => {}
            Reading::Read => {
                self.backoff.record_success(&Subject::Authentik);
                if self.failures.success(&Subject::Authentik).is_news() {
                    info!(url, "authentik is reachable again");
                }
            }
            Reading::Failed(message) => {
                if self
                    .failures
                    .failure(&Subject::Authentik, message)
                    .is_news()
                {
                    error!(url, error = %message, "cannot read live state from authentik; retrying");
                } else {
                    debug!(error = %message, "authentik still failing");
                }
            }
        }
        for (stage, end) in &report.stages {
            self.publish_stage(stage, end, now);
        }
        if report
            .counts
            .as_ref()
            .is_some_and(|c| c.values().all(|c| c.drifted == 0 && c.failed == 0))
        {
            debug!("reconcile: everything in sync");
        }

        // Readiness first: whoever sees the pass counted in /metrics then reads
        // this pass's readiness too.
        self.health.record_pass(&report.health());
        self.metrics.record_reconcile(
            ResultLabel::of(report.success()),
            started.elapsed(),
            SystemTime::now(),
        );
        for (kind, counts) in report.counts.iter().flatten() {
            self.metrics.set_counts(*kind, *counts);
        }
        debug!(elapsed = ?started.elapsed(), counts = ?report.counts, "reconcile finished");

        match &report.authentik {
            Reading::Failed(_) => PassOutcome::retry_in(self.backoff.record_failure_capped(
                &Subject::Authentik,
                now,
                AUTHENTIK_RETRY_CAP,
            )),
            Reading::NotAsked => PassOutcome::done(),
            Reading::Read => self
                .backoff
                .next_attempt_in(now)
                .map_or_else(PassOutcome::done, PassOutcome::retry_in),
        }
    }

    /// One stage's end in metrics, backoff, the failure log and the log.
    fn publish_stage(&mut self, stage: &PlannedStage, end: &StageEnd, now: Instant) {
        let subject = Subject::stage(&stage.name);
        let (name, file) = (&stage.name, stage.file.display().to_string());
        match end {
            StageEnd::InSync => {
                if self.failures.success(&subject).is_news() {
                    info!(stage = %name, file, "stage is in sync again");
                }
                self.write_recovered(stage, &file);
            }
            // Its line was logged when the write completed (see `execute`).
            StageEnd::Written { operation, .. } => {
                self.metrics
                    .record_write(write_operation(*operation), ResultLabel::Success);
                self.backoff.record_success(&subject);
                self.failures.success(&subject);
                self.write_recovered(stage, &file);
            }
            StageEnd::PlanFailed(message) => {
                if self.failures.failure(&subject, message).is_news() {
                    error!(stage = %name, file, error = %message, "cannot plan stage");
                }
            }
            StageEnd::WriteFailed { operation, message } => {
                self.metrics
                    .record_write(write_operation(*operation), ResultLabel::Failure);
                let delay = self.backoff.record_failure(&subject, now);
                if self.failures.failure(&subject, message).is_news() {
                    warn!(stage = %name, file, error = %message, retry_in = ?delay, "write failed");
                }
                if self.writes_failing.insert(name.clone()) {
                    let mut n = Notification::new(Event::WriteFailed, stage.kind, name);
                    n.file = Some(file.clone());
                    n.reason = Some(message.clone());
                    self.notify(&n);
                }
            }
            StageEnd::Drifted(Drift::Held(
                hold @ (Hold::DryRun { change } | Hold::Frozen { change }),
            )) => {
                if self
                    .failures
                    .failure(&subject, &format!("drift: {change}"))
                    .is_news()
                {
                    let held = match hold {
                        Hold::Frozen { .. } => "frozen: written when the freeze ends",
                        _ => "dry run: not written",
                    };
                    match &stage.changed_by {
                        Some(by) => {
                            info!(stage = %name, file, drift = %change, changed_by = %by.log_text(), "drift found ({held})")
                        }
                        None => info!(stage = %name, file, drift = %change, "drift found ({held})"),
                    }
                    let mut n = Notification::new(Event::DriftDetected, stage.kind, name);
                    n.file = Some(file.clone());
                    n.change = Some(change.clone());
                    n.reason = Some(held.into());
                    ChangedByNote::fill(stage.changed_by.as_ref(), &mut n);
                    self.notify(&n);
                }
            }
            StageEnd::Drifted(Drift::Held(Hold::BackedOff)) => {
                debug!(stage = %name, file, "write held back: backing off after a failure");
            }
            StageEnd::Drifted(Drift::Skipped(why)) => {
                debug!(stage = %name, file, why = %why, "write skipped");
            }
        }
    }

    /// Takes what was read into the last valid state.
    fn absorb(&mut self, loaded: Result<Manifests, SourceError>) -> Loaded {
        let manifests = match loaded {
            // An empty directory after manifests were seen is a swap in progress
            // or a lost mount, not "nothing is desired".
            Ok(m) if !m.files.is_empty() || self.last_valid.is_empty() => m,
            Ok(_) => {
                self.source_unavailable("the manifest directory is empty");
                return self.unavailable();
            }
            Err(err) => {
                self.source_unavailable(&err.to_string());
                return self.unavailable();
            }
        };
        if self.failures.success(&Subject::Source).is_news() {
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
        Loaded {
            source_available: true,
            manifest_errors: manifests
                .diagnostics
                .iter()
                .filter(|d| d.severity == manifest::Severity::Error)
                .count(),
            secret_files: secrets,
        }
    }

    /// What a load that found no usable source keeps: the secret files to
    /// watch from the last read.
    fn unavailable(&self) -> Loaded {
        Loaded {
            source_available: false,
            manifest_errors: 0,
            secret_files: self.last_secret_files.clone(),
        }
    }

    fn source_unavailable(&mut self, why: &str) {
        if self.failures.failure(&Subject::Source, why).is_news() {
            if self.seen_source {
                warn!(dir = %self.dir.display(), reason = why, "source unavailable: keeping the last desired state");
            } else {
                warn!(dir = %self.dir.display(), reason = why, "source unavailable: nothing loaded yet, waiting for it");
            }
        }
    }
}

/// The notification of a drift reverted: an update written whose live state
/// someone other than stagesync made (or whose author is unknown); `None` for
/// other outcomes, and for an update the manifests asked for (the newest
/// event was stagesync's own write).
fn reverted(
    plan: &Plan,
    outcome: &apply::Outcome,
    by: Option<&ChangedByNote>,
) -> Option<Notification> {
    let Ended::Written(written) = &outcome.result else {
        return None;
    };
    let entry = plan.entry(outcome.entry)?;
    let changes = match &entry.action {
        Action::Update { changes, .. } => changes.clone(),
        // Created again after someone deleted (or renamed) the managed one.
        Action::Create { .. } if plan.changed_by.contains_key(&entry.id) => Vec::new(),
        _ => return None,
    };
    if plan.unchanged_since_written.contains(&entry.id) {
        return None;
    }
    let mut n = Notification::new(Event::DriftReverted, entry.kind, &entry.name);
    n.file = entry.origin.as_ref().map(|o| o.file.display().to_string());
    n.uuid = Some(written.uuid);
    n.changes = changes;
    n.change = Some(describe(&entry.action, Tense::Done));
    ChangedByNote::fill(by, &mut n);
    Some(n)
}

/// Whether entry `id` removes a guard: an unbind, or an identification
/// stage made to embed no captcha (declared, or with a pruned stage).
fn removes_guard(plan: &Plan, id: EntryId) -> bool {
    plan.entry(id).is_some_and(|e| {
        e.kind == Kind::Guard
            && match &e.action {
                Action::Delete { .. } => true,
                Action::Update { write, .. } => matches!(
                    &write.object,
                    crate::kinds::Object::Guard(g) if crate::kinds::guard::matching::removes(g)
                ),
                _ => false,
            }
    })
}

/// The notification of a guard removed: a login flow runs without this
/// captcha from now on. `None` when nothing was removed.
fn guard_removed(outcome: &apply::Outcome) -> Option<Notification> {
    if matches!(outcome.result, Ended::Deleted { already_gone: true }) {
        return None;
    }
    let line = guard_line(outcome, true)?;
    let mut n = Notification::new(Event::GuardRemoved, outcome.kind, &outcome.name);
    n.file = outcome
        .origin
        .as_ref()
        .map(|o| o.file.display().to_string());
    n.uuid = outcome.uuid;
    n.change = Some(line);
    Some(n)
}

/// Whether a change was made or is only reported (dry run).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tense {
    Done,
    Pending,
}

fn write_operation(operation: Operation) -> WriteOperation {
    match operation {
        Operation::Create => WriteOperation::Create,
        Operation::Update | Operation::Delete => WriteOperation::Update,
    }
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
        Action::Delete { .. } => "delete".to_owned(),
    }
}

/// The log line of one outcome, as soon as it is settled: a change made
/// (INFO), a delete's end; failures are logged once the writes are done.
/// `removes`: the outcome's entry removes a guard.
fn log_outcome(outcome: &apply::Outcome, change: &str, changed_by: Option<&str>, removes: bool) {
    let file = outcome
        .origin
        .as_ref()
        .map(|o| o.file.display().to_string())
        .unwrap_or_default();
    if outcome.kind == Kind::Guard {
        if let Some(line) = guard_line(outcome, removes) {
            warn!(guard = %escape(&outcome.name), file, "{}", escape(&line));
        }
        // A pruned stage's guard that could not be removed keeps the stage:
        // said here, as it has no manifest to report it under.
        if outcome.origin.is_none() {
            match &outcome.result {
                Ended::InUse(users) => {
                    warn!(guard = %escape(&outcome.name), users = %escape(&users.join(", ")), "not pruned: the stage is in use now; its guards stay");
                }
                Ended::Failed(err) => {
                    warn!(guard = %escape(&outcome.name), error = %escape(&err.to_string()), "not pruned: its guard could not be removed");
                }
                _ => {}
            }
        }
        return;
    }
    match (&outcome.result, outcome.operation) {
        (Ended::Written(written), _) => match changed_by {
            Some(by) => {
                info!(stage = %outcome.name, file, uuid = %written.uuid, change = %change, changed_by = %by, "{} stage", outcome.operation.past_tense());
            }
            None => {
                info!(stage = %outcome.name, file, uuid = %written.uuid, change = %change, "{} stage", outcome.operation.past_tense());
            }
        },
        (result, Operation::Delete) => crate::daemon::prune::log_delete(outcome, result),
        _ => {}
    }
}

/// The daemon's WARN line when a guard was put back as its manifest says
/// (someone changed it in the UI, or it was never there) or removed (its
/// manifest no longer lists it, or its stage is pruned: `removes`), `None`
/// when nothing was made.
fn guard_line(outcome: &apply::Outcome, removes: bool) -> Option<String> {
    let (stage, target) = crate::kinds::guard::split_name(&outcome.name);
    let is_flow = target.starts_with("flow ");
    let pruned = outcome.origin.is_none();
    let line = match (&outcome.result, outcome.operation) {
        (Ended::Deleted { already_gone: true }, _) => return None,
        (Ended::Deleted { .. }, Operation::Delete) if pruned => {
            format!("captcha {stage} is pruned: unbound from {target} first")
        }
        (Ended::Written(_), Operation::Update) if removes && pruned => {
            format!("captcha {stage} is pruned: removed from {target} first")
        }
        (Ended::Written(_), Operation::Update) if removes => {
            format!("{target} embedded captcha {stage}, which its manifest does not list; removed")
        }
        (Ended::Written(_), Operation::Create) => {
            format!("captcha {stage} was unbound from {target}; bound again")
        }
        (Ended::Written(_), Operation::Update) if is_flow => {
            format!("captcha {stage}'s binding to {target} was changed; set back")
        }
        (Ended::Written(_), Operation::Update) => {
            format!("{target} does not embed captcha {stage} as its manifest says; set back")
        }
        (Ended::Deleted { .. }, Operation::Delete) => {
            format!(
                "captcha {stage} was bound to {target}, which its manifest does not list; unbound"
            )
        }
        _ => return None,
    };
    Some(line)
}

#[cfg(test)]
mod tests {
    use crate::kinds::Origin;
    use crate::kinds::captcha::StageFields;
    use crate::secret::SecretString;

    use super::*;

    /// The entry id the tests give the stage `name`.
    fn id(name: &str) -> EntryId {
        const NAMES: [&str; 7] = ["ok", "bad", "new", "held", "refused", "later", "skipped"];
        EntryId(NAMES.iter().position(|n| *n == name).expect("a test name"))
    }

    fn ids(names: &[&str]) -> BTreeSet<EntryId> {
        names.iter().map(|n| id(n)).collect()
    }

    /// A plan without entries: what the summary asks the kind of an entry of.
    fn no_plan() -> Plan {
        Plan::assemble(
            Vec::new(),
            &[],
            &BTreeSet::new(),
            crate::capabilities::Capabilities::for_version(
                crate::capabilities::ServerVersion::new(2025, 12, 4),
            ),
        )
    }

    fn planned(name: &str, wanted: Wanted) -> PlannedStage {
        PlannedStage {
            entry: id(name),
            kind: Kind::CaptchaStage,
            name: name.to_owned(),
            file: PathBuf::from(format!("stages/{name}.yaml")),
            wanted,
            changed_by: None,
        }
    }

    fn write() -> Wanted {
        Wanted::Write {
            change: "create".into(),
        }
    }

    fn desired(name: &str, file: &str, key: KeySource) -> DesiredStage {
        DesiredStage {
            origin: Origin {
                file: PathBuf::from(file),
                line: 1,
                column: 1,
            },
            uuid: None,
            fields: StageFields::with_defaults(name, "site-key"),
            key_source: key,
            private_key: SecretString::from("k"),
            guards: None,
        }
    }

    /// `a` in a.yaml, `b` and ` c ` in b.yaml, `d` in d.yaml with a `!File` key.
    fn files() -> BTreeMap<PathBuf, Vec<DesiredStage>> {
        let env = || KeySource::Env("KEY".into());
        BTreeMap::from([
            ("/m/a.yaml".into(), vec![desired("a", "/m/a.yaml", env())]),
            (
                "/m/b.yaml".into(),
                vec![
                    desired("b", "/m/b.yaml", env()),
                    desired(" c ", "/m/b.yaml", env()),
                ],
            ),
            (
                "/m/d.yaml".into(),
                vec![desired("d", "/m/d.yaml", KeySource::File("keys/d".into()))],
            ),
        ])
    }

    fn same(path: &Path) -> Vec<PathBuf> {
        vec![path.to_owned()]
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn decide_writes_what_the_plan_wants_except_backed_off_stages() {
        let now = Instant::now();
        let mut backoff = Backoff::new();
        backoff.record_failure_with_jitter(&Subject::stage("held"), now, 0.0);
        // A failing authentik holds back no stage: the pass got a plan.
        backoff.record_failure_with_jitter(&Subject::Authentik, now, 0.0);
        let stages = vec![
            planned("ok", Wanted::InSync),
            planned("bad", Wanted::PlanError("name taken".into())),
            planned("new", write()),
            planned("held", write()),
        ];
        let decision = decide(stages.clone(), &backoff, now, false, false);
        let steps: Vec<_> = decision.stages.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(
            steps,
            vec![
                Step::InSync,
                Step::PlanError("name taken".into()),
                Step::Write,
                Step::Hold(Hold::BackedOff),
            ]
        );
        assert_eq!(decision.writes(), ids(&["new"]));

        let later = decide(
            stages,
            &backoff,
            now + crate::daemon::backoff::BASE_DELAY,
            false,
            false,
        );
        assert_eq!(later.writes(), ids(&["held", "new"]), "its delay passed");
    }

    #[test]
    fn a_dry_run_writes_nothing_and_says_what_it_would() {
        let frozen = decide(
            vec![planned("new", write())],
            &Backoff::new(),
            Instant::now(),
            false,
            true,
        );
        assert!(
            matches!(frozen.stages[0].1, Step::Hold(Hold::Frozen { .. })),
            "a freeze holds the write: {frozen:?}"
        );
        assert!(frozen.writes().is_empty());
        let decision = decide(
            vec![planned("new", write()), planned("ok", Wanted::InSync)],
            &Backoff::new(),
            Instant::now(),
            true,
            false,
        );
        assert!(decision.writes().is_empty());
        assert_eq!(
            decision.stages[0].1,
            Step::Hold(Hold::DryRun {
                change: "create".into()
            })
        );
    }

    #[test]
    fn the_summary_counts_every_stage_once_and_names_what_failed() {
        let stages = vec![
            planned("ok", Wanted::InSync),
            planned("bad", Wanted::PlanError("name taken".into())),
            planned("new", write()),
            planned("refused", write()),
            planned("later", write()),
            planned("skipped", write()),
            planned("held", write()),
        ];
        let mut backoff = Backoff::new();
        let now = Instant::now();
        backoff.record_failure_with_jitter(&Subject::stage("held"), now, 0.0);
        let decision = decide(stages, &backoff, now, false, false);
        let writes = BTreeMap::from([
            (
                id("new"),
                WriteEnd::Written {
                    operation: Operation::Create,
                    uuid: "u".into(),
                    change: "create".into(),
                },
            ),
            (
                id("refused"),
                WriteEnd::Failed {
                    operation: Operation::Update,
                    message: "HTTP 403".into(),
                },
            ),
            (id("later"), WriteEnd::Skipped("interrupted".into())),
        ]);
        let report = summarize(decision, writes, &no_plan(), None, true, 2);
        assert_eq!(
            report.counts,
            Some(BTreeMap::from([(
                Kind::CaptchaStage,
                Counts {
                    in_sync: 2,
                    drifted: 3,
                    failed: 2,
                    ..Counts::default()
                }
            )]))
        );
        assert_eq!(
            report.failures(),
            vec![
                (Subject::stage("bad"), "name taken"),
                (Subject::stage("refused"), "HTTP 403")
            ]
        );
        assert!(!report.success(), "a failed stage fails the pass");
        assert_eq!(
            report.stages[5].1,
            StageEnd::Drifted(Drift::Skipped("not attempted".into())),
            "a decided write the write step did not report is drift, not success"
        );
        assert_eq!(
            report.health(),
            PassHealth {
                source_available: true,
                manifest_errors: 2,
                authentik: Ok(())
            }
        );
    }

    #[test]
    fn a_pass_without_live_state_keeps_the_counts_and_is_no_success() {
        let failed = PassReport::unread(true, 0, Reading::Failed("HTTP 503".into()));
        assert_eq!(failed.counts, None);
        assert!(!failed.success());
        assert_eq!(failed.health().authentik, Err("HTTP 503".into()));
        assert_eq!(failed.failures(), vec![(Subject::Authentik, "HTTP 503")]);

        let waiting = PassReport::unread(false, 0, Reading::NotAsked);
        assert!(!waiting.success());
        assert_eq!(
            waiting.health().authentik,
            Ok(()),
            "the source is the reason"
        );
        assert!(waiting.failures().is_empty());

        let clean = summarize(
            decide(
                vec![planned("ok", Wanted::InSync)],
                &Backoff::new(),
                Instant::now(),
                false,
                false,
            ),
            BTreeMap::new(),
            &no_plan(),
            None,
            true,
            0,
        );
        assert!(clean.success());
    }

    #[test]
    fn changed_files_name_their_own_stages_and_those_of_a_changed_key() {
        let files = files();
        let changed =
            |paths: &[&str]| -> ChangedFiles { paths.iter().map(PathBuf::from).collect() };
        assert_eq!(
            stages_in_changed_files(&files, &changed(&["/m/b.yaml"]), same),
            names(&["b", "c"]),
            "names are trimmed as the plan trims them"
        );
        assert_eq!(
            stages_in_changed_files(&files, &changed(&["/m/keys/d"]), same),
            names(&["d"])
        );
        assert_eq!(
            stages_in_changed_files(&files, &changed(&["/m/keys"]), same),
            names(&["d"]),
            "a changed folder covers what is in it"
        );
        assert_eq!(
            stages_in_changed_files(&files, &changed(&["/m/other.yaml"]), same),
            names(&[])
        );
        assert_eq!(
            stages_in_changed_files(&files, &ChangedFiles::none(), same),
            names(&[])
        );
        assert_eq!(
            stages_in_changed_files(&files, &ChangedFiles::everything(), same),
            names(&["a", "b", "c", "d"])
        );
        // The watcher names real paths; a file is matched by any of its names.
        let linked = |p: &Path| {
            vec![
                p.to_owned(),
                Path::new("/real").join(p.file_name().expect("name")),
            ]
        };
        assert_eq!(
            stages_in_changed_files(&files, &changed(&["/real/a.yaml"]), linked),
            names(&["a"])
        );
    }

    #[test]
    fn a_changed_file_forgets_the_backoff_of_its_own_stages_only() {
        let now = Instant::now();
        let mut backoff = Backoff::new();
        let mut failures = FailureLog::new();
        for subject in [
            Subject::Authentik,
            Subject::Source,
            Subject::stage("a"),
            Subject::stage("b"),
            Subject::stage("c"),
        ] {
            backoff.record_failure_with_jitter(&subject, now, 0.0);
            failures.failure(&subject, "HTTP 503");
        }
        let files = files();
        let desired: BTreeSet<&str> = ["a", "b", "c", "d"].into();
        let changed: ChangedFiles = [PathBuf::from("/m/a.yaml")].into_iter().collect();
        let stages = stages_in_changed_files(&files, &changed, same);
        forget_backoff(
            &mut backoff,
            &mut failures,
            Trigger::FilesChanged,
            &stages,
            &desired,
        );

        assert!(backoff.should_attempt(&Subject::stage("a"), now));
        for held in [
            Subject::Authentik,
            Subject::Source,
            Subject::stage("b"),
            Subject::stage("c"),
        ] {
            assert!(
                !backoff.should_attempt(&held, now),
                "{held} keeps its backoff"
            );
        }
        assert_eq!(
            failures.failing().count(),
            5,
            "the last errors stay, to log recoveries"
        );
    }

    #[test]
    fn sighup_forgets_every_backoff_and_undesired_stages_are_forgotten() {
        let now = Instant::now();
        let mut backoff = Backoff::new();
        let mut failures = FailureLog::new();
        for subject in [
            Subject::Authentik,
            Subject::stage("a"),
            Subject::stage("gone"),
        ] {
            backoff.record_failure_with_jitter(&subject, now, 0.0);
            failures.failure(&subject, "HTTP 503");
        }
        let desired: BTreeSet<&str> = ["a"].into();
        forget_backoff(
            &mut backoff,
            &mut failures,
            Trigger::Interval,
            &BTreeSet::new(),
            &desired,
        );
        assert_eq!(
            backoff.failures(&Subject::stage("gone")),
            0,
            "no longer in a manifest"
        );
        assert_eq!(failures.failing().count(), 2);
        assert!(!backoff.should_attempt(&Subject::stage("a"), now));

        forget_backoff(
            &mut backoff,
            &mut failures,
            Trigger::Signal,
            &BTreeSet::new(),
            &desired,
        );
        assert!(backoff.should_attempt(&Subject::Authentik, now));
        assert!(backoff.should_attempt(&Subject::stage("a"), now));
        assert_eq!(backoff.next_attempt_in(now), None);
    }
}
