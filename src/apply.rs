//! Executes a plan: one write per entry that writes, a bounded number at a time.
//!
//! `apply` does not decide anything, and needs nothing but the [`Plan`]: every
//! entry that writes carries its [`Write`] (target, fields, key, the entry it
//! waits for). The contract, which the daemon and the `apply` command rely on:
//!
//! - [`ApplyReport::outcomes`] has exactly one [`WriteOutcome`] per entry whose
//!   [`crate::plan::Action::write`] is `Some`, in plan order, each naming its
//!   [`EntryId`].
//!   Entries that write nothing (in sync, errors) have no outcome.
//! - An outcome is [`WriteResult::Written`] (authentik's answer),
//!   [`WriteResult::Failed`] (authentik's error, or an internal error if the
//!   write task panicked: the write may or may not have reached authentik, so
//!   its key is not recorded) or [`WriteResult::Skipped`] with a [`SkipReason`].
//! - A write whose `after` entry was not written (failed, held back, skipped) is
//!   skipped, naming that entry: sending it would only fail on authentik's
//!   unique names. This follows chains.
//! - The caller may hold entries back (the daemon: stages in backoff); they are
//!   skipped with [`SkipReason::HeldBack`], and their dependants with them.
//! - [`Stop::cancel`] stops *starting* writes; the ones in flight go on. Every
//!   write not started is [`SkipReason::Cancelled`]. [`Stop::abandon`] (the
//!   grace period is over) gives up the writes in flight:
//!   [`WriteError::Abandoned`].
//! - The state file tells the truth at every moment (write-ahead, see
//!   [`crate::state`]): before a wave is sent, the keys it changes are marked
//!   in flight and the file is saved; a write that succeeds records the
//!   fingerprint of the key it sent; one that fails, is abandoned or panics
//!   leaves the mark, so its key reads as unknown and is sent again next time.
//!   Outcomes are saved in batches as they come, and each is handed to the
//!   caller's `on_outcome` at once (progress, log lines); the caller saves
//!   once more at the end.
//!
//!
//! Deletes (prune, [`Plan::prune`]) run after every create and update, one at
//! a time, each in [`ApplyReport::deletes`]:
//! - none runs if any write of this apply was not made (failed, held back,
//!   skipped): a manifest renamed without a pin is a create plus a delete, and
//!   deleting the old stage when the new one failed would leave neither;
//! - `used_by` is asked again right before each delete (the plan may be
//!   minutes old, the operator may have bound the stage since): anything in it
//!   and the stage is not deleted ([`DeleteResult::InUse`]);
//! - a stage already gone (404) is [`DeleteResult::AlreadyGone`], not a failure;
//!   either way its key fingerprint is forgotten.
//!
//! Adding an action kind: one more arm in [`Operation`] and in `send`; the
//! ordering, the skipping and the outcomes above stay as they are.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::authentik::{ApiError, Client};
use crate::kinds::Kind;
use crate::kinds::Origin;
use crate::kinds::captcha::LiveStage;
use crate::kinds::captcha::api::{StageWrite, Stages};
use crate::plan::{EntryId, Plan, StagePlan, Target, Write, prune};
use crate::state::{KeyMark, KeyState, KeyStatus, KeyStore};

/// What a write was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
}

impl Operation {
    fn of(target: Target) -> Self {
        match target {
            Target::Create => Operation::Create,
            Target::Update(_) => Operation::Update,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
        }
    }

    /// "created" / "updated", for reports and logs.
    pub(crate) fn past_tense(self) -> &'static str {
        match self {
            Operation::Create => "created",
            Operation::Update => "updated",
        }
    }
}

/// The result of one entry's write.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The plan entry this is the outcome of.
    #[cfg(test)]
    pub(crate) entry: EntryId,
    pub name: String,
    pub(crate) origin: Origin,
    pub(crate) operation: Operation,
    pub(crate) result: WriteResult,
}

#[derive(Debug)]
pub(crate) enum WriteResult {
    /// authentik accepted the write and answered with the stage.
    Written(LiveStage),
    /// authentik (or the network) refused it, or stagesync failed; the message
    /// is the user's.
    Failed(WriteError),
    /// Never sent.
    Skipped(SkipReason),
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A bug in stagesync (the write task panicked). Whether authentik received
    /// the write is unknown.
    #[error(
        "internal error: the write stopped unexpectedly ({0}); whether authentik received it is unknown, the next plan will show"
    )]
    Internal(String),
    /// Still unanswered when the grace period after a stop signal ended.
    #[error(
        "abandoned at shutdown without an answer; whether authentik made it is unknown, the next apply sends it again"
    )]
    Abandoned,
}

/// Why a write was not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// The caller held it back (the daemon: the stage is in backoff).
    HeldBack,
    /// Cancelled before it started.
    Cancelled,
    /// Its key change could not be recorded in the state file first (the
    /// message says why), so it was not sent.
    StateNotSaved(String),
    /// It takes the name `taken`, which entry `entry` (named `name`) renames
    /// its stage away from, and that write was not made.
    Dependency {
        entry: EntryId,
        name: String,
        taken: String,
        failed: bool,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HeldBack => f.write_str("held back until its retry is due"),
            SkipReason::Cancelled => f.write_str("interrupted"),
            SkipReason::StateNotSaved(why) => {
                write!(f, "its key change could not be recorded first ({why})")
            }
            SkipReason::Dependency {
                name,
                taken,
                failed,
                ..
            } => {
                let what = if *failed { "failed" } else { "was not sent" };
                write!(
                    f,
                    "it takes the name {taken:?}, which {name} is being renamed away from; that update {what}"
                )
            }
        }
    }
}

/// The result of one prune delete.
#[derive(Debug)]
pub(crate) struct DeleteOutcome {
    pub(crate) uuid: uuid::Uuid,
    pub(crate) name: String,
    pub(crate) result: DeleteResult,
}

#[derive(Debug)]
pub(crate) enum DeleteResult {
    Deleted,
    /// 404: someone else deleted it; nothing to do.
    AlreadyGone,
    /// `used_by` right before the delete listed users: not deleted.
    InUse(Vec<String>),
    Failed(ApiError),
    /// Not sent: interrupted, or a write of this apply was not made.
    Skipped(DeleteSkip),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeleteSkip {
    Cancelled,
    /// Still waiting on authentik when the grace period after a stop signal
    /// ended: whether the stage was deleted is unknown (the next run sees).
    Abandoned,
    /// A create or update of the same apply was not made.
    WritesIncomplete,
}

impl fmt::Display for DeleteSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteSkip::Cancelled => "interrupted",
            DeleteSkip::Abandoned => {
                "abandoned at shutdown without an answer; whether authentik deleted it is unknown, the next run sees"
            }
            DeleteSkip::WritesIncomplete => {
                "a create or update of this run was not made; deletes wait for a run where every write succeeds"
            }
        })
    }
}

/// Every write of one apply, in plan order, then every delete.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<WriteOutcome>,
    pub(crate) deletes: Vec<DeleteOutcome>,
}

impl ApplyReport {
    pub fn failed(&self) -> impl Iterator<Item = (&WriteOutcome, &WriteError)> {
        self.outcomes.iter().filter_map(|o| match &o.result {
            WriteResult::Failed(e) => Some((o, e)),
            _ => None,
        })
    }

    /// How many writes were not sent.
    pub fn skipped(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.result, WriteResult::Skipped(_)))
            .count()
    }

    /// True when every planned write and delete succeeded.
    pub fn converged(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| matches!(o.result, WriteResult::Written(_)))
            && self
                .deletes
                .iter()
                .all(|d| matches!(d.result, DeleteResult::Deleted | DeleteResult::AlreadyGone))
    }
}

/// How an apply is stopped early. [`Stop::abandon`] implies [`Stop::cancel`].
#[derive(Clone, Debug)]
pub struct Stop {
    /// No write starts once this fires; the ones in flight go on.
    pub(crate) cancel: CancellationToken,
    /// The writes in flight are given up once this fires (the grace period
    /// after a stop signal is over): they are reported as
    /// [`WriteError::Abandoned`] and their keys stay unknown.
    pub(crate) abandon: CancellationToken,
}

impl Stop {
    pub fn new() -> Self {
        let abandon = CancellationToken::new();
        Stop {
            cancel: abandon.child_token(),
            abandon,
        }
    }
}

/// How much of a shutdown timeout is kept for saving the state and exiting
/// once the writes in flight are abandoned (at most a second).
pub(crate) fn grace_period(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout - (shutdown_timeout / 4).min(Duration::from_secs(1))
}

impl Stop {
    /// Once [`Stop::cancel`] fires, fires [`Stop::abandon`] when the
    /// [`grace_period`] of `shutdown_timeout` is over.
    pub(crate) fn abandon_after_grace(&self, shutdown_timeout: Duration) {
        let stop = self.clone();
        tokio::spawn(async move {
            stop.cancel.cancelled().await;
            tokio::select! {
                () = tokio::time::sleep(grace_period(shutdown_timeout)) => {
                    tracing::warn!("shutdown: the grace period is over, abandoning the writes still in flight");
                    stop.abandon.cancel();
                }
                () = stop.abandon.cancelled() => {}
            }
        });
    }
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

/// One write of this apply, as the scheduler tracks it.
struct Pending<'p> {
    entry: &'p StagePlan,
    target: Target,
    write: &'p Write,
    /// Index (into the outcomes) of the write that must succeed first.
    after: Option<Result<usize, EntryId>>,
    /// `None` until the write is decided.
    outcome: Option<WriteOutcome>,
    /// Set while its key is marked in flight (write-ahead).
    mark: Option<KeyMark>,
    /// False when authentik's answer did not confirm the key (a lost create
    /// found by name): the key is then not recorded, it reads as unknown.
    key_confirmed: bool,
}

impl Pending<'_> {
    fn result(&self) -> Option<&WriteResult> {
        self.outcome.as_ref().map(|o| &o.result)
    }

    /// The stage whose key this write changes, when stagesync does not already
    /// know authentik holds that key: its entry must be marked in flight
    /// before the write is sent. A create has no uuid before its answer; a
    /// lost create leaves no entry, which reads as unknown just the same.
    fn key_to_mark(&self, keys: &KeyState) -> Option<Uuid> {
        match self.target {
            Target::Update(uuid) => {
                (keys.status(uuid, &self.write.private_key) != KeyStatus::Unchanged).then_some(uuid)
            }
            Target::Create => None,
        }
    }
}

/// The writes of one apply and where their outcomes go.
struct Run<'p, F> {
    writes: Vec<Pending<'p>>,
    state: &'p mut dyn KeyStore,
    on_outcome: F,
    /// Whether a batched save already failed (warned about once).
    save_failed: bool,
}

impl<F: FnMut(&WriteOutcome)> Run<'_, F> {
    /// Settles write `index`: records the key of a successful write, reports
    /// the outcome and saves the state when a save is due.
    fn decide(&mut self, index: usize, result: WriteResult) {
        let pending = &mut self.writes[index];
        match &result {
            WriteResult::Written(live) => {
                if pending.key_confirmed {
                    self.state
                        .keys_mut()
                        .record(live.uuid, &pending.write.private_key);
                }
                if pending.target == Target::Create {
                    self.state
                        .record_created(Kind::CaptchaStage, live.uuid, &live.fields.name);
                }
            }
            // Never sent: what was known before still holds.
            WriteResult::Skipped(_) => {
                if let Some(mark) = pending.mark.take() {
                    self.state.keys_mut().unmark(mark);
                }
            }
            // Maybe made: the mark stays, the key reads as unknown.
            WriteResult::Failed(_) => {}
        }
        let outcome = WriteOutcome {
            #[cfg(test)]
            entry: pending.entry.id,
            name: pending.entry.name.clone(),
            origin: pending.entry.origin.clone(),
            operation: Operation::of(pending.target),
            result,
        };
        (self.on_outcome)(&outcome);
        pending.outcome = Some(outcome);
        if let Err(err) = self.state.save_if_due()
            && !std::mem::replace(&mut self.save_failed, true)
        {
            tracing::warn!(error = %err, "cannot save the state file; trying again at the end");
        }
    }

    fn undecided(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.writes.len()).filter(|&i| self.writes[i].outcome.is_none())
    }
}

/// Runs the writes of `plan`, at most `concurrency` at once, keeping `state`
/// true as they go (write-ahead: see [`crate::state`]). `hold_back(name)` lets
/// the daemon keep stages in backoff from being written this time;
/// `on_outcome` sees each outcome as soon as it is decided (for progress and
/// log lines), the report has them all in plan order.
///
/// Writes run in waves: one whose name is being freed by another entry's
/// rename waits for that rename (authentik's names are unique). Before a wave
/// is sent, the keys it changes are marked in flight and the state is saved;
/// if that save fails, the wave's key changes are not sent. See the module
/// docs for the outcomes.
pub async fn apply(
    client: &Client,
    plan: &Plan,
    state: &mut dyn KeyStore,
    concurrency: usize,
    stop: &Stop,
    hold_back: impl Fn(&str) -> bool,
    on_outcome: impl FnMut(&WriteOutcome),
) -> ApplyReport {
    let entries: Vec<_> = plan
        .stages
        .iter()
        .filter_map(|entry| entry.action.write().map(|(t, w)| (entry, t, w)))
        .collect();
    let position: HashMap<EntryId, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (entry, ..))| (entry.id, i))
        .collect();
    let name_of = |id: EntryId| {
        plan.entry(id)
            .map_or_else(|| id.to_string(), |e| e.name.clone())
    };
    let mut run = Run {
        writes: entries
            .iter()
            .map(|&(entry, target, write)| Pending {
                entry,
                target,
                write,
                // An `after` that is not a write of this plan cannot be satisfied.
                after: write.after.map(|id| position.get(&id).copied().ok_or(id)),
                outcome: None,
                mark: None,
                key_confirmed: true,
            })
            .collect(),
        state,
        on_outcome,
        save_failed: false,
    };
    for i in 0..run.writes.len() {
        if hold_back(&run.writes[i].entry.name) {
            run.decide(i, WriteResult::Skipped(SkipReason::HeldBack));
        }
    }

    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    loop {
        if stop.cancel.is_cancelled() {
            for i in run.undecided().collect::<Vec<_>>() {
                run.decide(i, WriteResult::Skipped(SkipReason::Cancelled));
            }
            break;
        }
        // Writes whose dependency is decided: skipped if it was not written.
        let mut wave = Vec::new();
        for i in run.undecided().collect::<Vec<_>>() {
            let skip = match run.writes[i].after {
                None => None,
                Some(Err(missing)) => Some(SkipReason::Dependency {
                    entry: missing,
                    name: name_of(missing),
                    taken: entries[i].0.name.clone(),
                    failed: false,
                }),
                Some(Ok(j)) => match run.writes[j].result() {
                    None => continue,
                    Some(WriteResult::Written(_)) => None,
                    Some(other) => Some(SkipReason::Dependency {
                        entry: entries[j].0.id,
                        name: entries[j].0.name.clone(),
                        taken: entries[i].0.name.clone(),
                        failed: matches!(other, WriteResult::Failed(_)),
                    }),
                },
            };
            match skip {
                Some(reason) => run.decide(i, WriteResult::Skipped(reason)),
                None => wave.push(i),
            }
        }
        if wave.is_empty() {
            // Undecided writes left here wait on each other: a cycle, which the
            // planner refuses. Skip them rather than wait forever.
            for i in run.undecided().collect::<Vec<_>>() {
                if let Some(Ok(j)) = run.writes[i].after {
                    let entry = entries[j].0;
                    run.decide(
                        i,
                        WriteResult::Skipped(SkipReason::Dependency {
                            entry: entry.id,
                            name: entry.name.clone(),
                            taken: entries[i].0.name.clone(),
                            failed: false,
                        }),
                    );
                }
            }
            break;
        }

        // Write-ahead: the keys this wave changes read as unknown on disk
        // before any of them is sent.
        let mut marked = false;
        for &i in &wave {
            if let Some(uuid) = run.writes[i].key_to_mark(run.state.keys()) {
                run.writes[i].mark = Some(run.state.keys_mut().mark_in_flight(uuid));
                marked = true;
            }
        }
        if marked && let Err(err) = run.state.save() {
            let message = err.to_string();
            tracing::error!(error = %message, "cannot save the state file: not sending the key changes that need it");
            for &i in &wave {
                if run.writes[i].mark.is_some() {
                    run.decide(
                        i,
                        WriteResult::Skipped(SkipReason::StateNotSaved(message.clone())),
                    );
                }
            }
            wave.retain(|&i| run.writes[i].outcome.is_none());
        }

        // Start writes as slots free up, and settle each as it completes.
        let mut queue = wave.into_iter().peekable();
        let mut tasks: JoinSet<Result<(LiveStage, bool), ApiError>> = JoinSet::new();
        let mut index_of_task = HashMap::new();
        while queue.peek().is_some() || !tasks.is_empty() {
            tokio::select! {
                biased;
                () = stop.abandon.cancelled() => {
                    // Dropping a request closes its connection; whether
                    // authentik made the write is unknown, and its key stays
                    // marked in flight.
                    tasks.abort_all();
                    let mut abandoned: Vec<usize> = index_of_task.values().copied().collect();
                    abandoned.sort_unstable();
                    for index in abandoned {
                        if run.writes[index].outcome.is_none() {
                            run.decide(index, WriteResult::Failed(WriteError::Abandoned));
                        }
                    }
                    // The next turn of the outer loop marks the rest cancelled.
                    break;
                }
                Some(joined) = tasks.join_next_with_id() => {
                    let (index, result) = match joined {
                        Ok((id, result)) => {
                            let index = index_of_task[&id];
                            let result = result.map(|(live, key_confirmed)| {
                                run.writes[index].key_confirmed = key_confirmed;
                                live
                            });
                            (index, result.map_err(WriteError::from))
                        }
                        // A write task only ends without a result if it
                        // panicked (a bug): reported as failed, never skipped
                        // in silence.
                        Err(err) => {
                            let index = index_of_task[&err.id()];
                            let entry = entries[index].0;
                            let why = if err.is_panic() { "panicked" } else { "was aborted" };
                            tracing::error!(stage = %entry.name, file = %entry.origin.file.display(), "internal error: the write task {why}");
                            (index, Err(WriteError::Internal(format!("the write task {why}"))))
                        }
                    };
                    run.decide(
                        index,
                        match result {
                            Ok(live) => WriteResult::Written(live),
                            Err(err) => WriteResult::Failed(err),
                        },
                    );
                }
                // Cancelled: start nothing more; the writes in flight go on.
                () = stop.cancel.cancelled(), if queue.peek().is_some() => {
                    for index in queue.by_ref() {
                        run.decide(index, WriteResult::Skipped(SkipReason::Cancelled));
                    }
                }
                permit = permits.clone().acquire_owned(), if queue.peek().is_some() => {
                    let (Ok(permit), Some(index)) = (permit, queue.next()) else {
                        continue;
                    };
                    let client = client.clone();
                    let target = run.writes[index].target;
                    let write = run.writes[index].write.clone();
                    let task = tasks.spawn(async move {
                        let result = send(&client, target, &write).await;
                        drop(permit);
                        result
                    });
                    index_of_task.insert(task.id(), index);
                }
            }
        }
    }

    let Run { writes, state, .. } = run;
    let outcomes = writes
        .into_iter()
        .map(|w| {
            // Every write is decided by now (cancelled, skipped or sent).
            w.outcome.unwrap_or_else(|| WriteOutcome {
                #[cfg(test)]
                entry: w.entry.id,
                name: w.entry.name.clone(),
                origin: w.entry.origin.clone(),
                operation: Operation::of(w.target),
                result: WriteResult::Skipped(SkipReason::Cancelled),
            })
        })
        .collect::<Vec<_>>();
    let writes_made = outcomes
        .iter()
        .all(|o| matches!(o.result, WriteResult::Written(_)));
    let deletes = delete_pruned(client, plan, writes_made, stop).await;
    for delete in &deletes {
        if matches!(
            delete.result,
            DeleteResult::Deleted | DeleteResult::AlreadyGone
        ) {
            state.keys_mut().forget(delete.uuid);
        }
    }
    ApplyReport { outcomes, deletes }
}

/// The plan's deletes, one at a time, each after asking `used_by` again.
async fn delete_pruned(
    client: &Client,
    plan: &Plan,
    writes_made: bool,
    stop: &Stop,
) -> Vec<DeleteOutcome> {
    let mut out = Vec::new();
    for entry in plan.deletes() {
        let result = if !writes_made {
            DeleteResult::Skipped(DeleteSkip::WritesIncomplete)
        } else if stop.cancel.is_cancelled() {
            DeleteResult::Skipped(DeleteSkip::Cancelled)
        } else {
            // A delete in flight gets the same grace period as a write.
            tokio::select! {
                biased;
                () = stop.abandon.cancelled() => DeleteResult::Skipped(DeleteSkip::Abandoned),
                result = delete_one(client, entry.uuid) => result,
            }
        };
        out.push(DeleteOutcome {
            uuid: entry.uuid,
            name: entry.name.clone(),
            result,
        });
    }
    out
}

async fn delete_one(client: &Client, uuid: uuid::Uuid) -> DeleteResult {
    let stages = Stages::new(client);
    match stages.used_by(uuid).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => return DeleteResult::InUse(prune::describe_users(&users)),
        Err(ApiError::StageNotFound { .. }) => return DeleteResult::AlreadyGone,
        Err(e) => return DeleteResult::Failed(e),
    }
    match stages.delete(uuid).await {
        Ok(()) => DeleteResult::Deleted,
        Err(ApiError::StageNotFound { .. }) => DeleteResult::AlreadyGone,
        Err(e) => DeleteResult::Failed(e),
    }
}

/// The one request of a write, and whether its answer confirms the key.
async fn send(
    client: &Client,
    target: Target,
    write: &Write,
) -> Result<(LiveStage, bool), ApiError> {
    // The plan's fields are already cut to what the server knows.
    let request = StageWrite {
        fields: &write.fields,
        private_key: &write.private_key,
    };
    match target {
        Target::Create => Stages::new(client).create_reporting(&request).await,
        Target::Update(uuid) => Stages::new(client)
            .update(uuid, &request)
            .await
            .map(|live| (live, true)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::authentik::{ClientSettings, RetryPolicy, ServerVersion};
    use crate::capabilities::Capabilities;
    use crate::kinds::captcha::{DesiredStage, StageFields};
    use crate::plan::{self, PlanInputs};
    use crate::secret::SecretString;
    use crate::simulator::{self, Fault, FaultKind, SimConfig, SimHandle};

    const TOKEN: &str = "apply-test-token";
    const VERSION: &str = "2025.12.4";
    const CAPTCHA: &str = "/api/v3/stages/captcha/";

    fn client(url: String) -> Client {
        Client::new(&ClientSettings {
            url,
            token: SecretString::from(TOKEN),
            ca_file: None,
            insecure_skip_tls_verify: false,
            allow_http: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        })
        .expect("loopback settings are valid")
        .with_retry_policy(RetryPolicy::fast(Duration::from_millis(5)))
    }

    async fn sim() -> (SimHandle, Client) {
        let sim = simulator::start(SimConfig {
            token: TOKEN.to_owned(),
            version: VERSION.to_owned(),
            ..SimConfig::default()
        })
        .await
        .expect("the simulator binds a loopback port");
        let client = client(sim.url());
        (sim, client)
    }

    fn desired(name: &str, pin: Option<Uuid>) -> DesiredStage {
        DesiredStage::for_test(name, pin)
    }

    fn plan_for(desired: &[DesiredStage], live: &[LiveStage]) -> Plan {
        plan::plan(&PlanInputs {
            desired,
            live,
            keys: &KeyState::default(),
            capabilities: Capabilities::for_version(ServerVersion::parse(VERSION).unwrap()),
            foreign_names: &BTreeMap::new(),
        })
    }

    /// Live stages `a` and `b`; the plan renames b to c, then a to b (waiting
    /// for entry 2), then creates a new "a" (waiting for entry 1). Returns the
    /// plan and the uuids of the stages first named a and b.
    fn chain_of_renames(sim: &SimHandle) -> (Plan, Uuid, Uuid) {
        let a = sim.seed_captcha(StageFields::with_defaults("a", "site"), "k");
        let b = sim.seed_captcha(StageFields::with_defaults("b", "site"), "k");
        let plan = plan_for(
            &[
                desired("a", None),
                desired("b", Some(a)),
                desired("c", Some(b)),
            ],
            &sim.captcha_stages(),
        );
        (plan, a, b)
    }

    /// (entry, name, what happened) per outcome, for one-line assertions.
    fn summary(report: &ApplyReport) -> Vec<(usize, &str, String)> {
        report
            .outcomes
            .iter()
            .map(|o| {
                let what = match &o.result {
                    WriteResult::Written(_) => "written".to_owned(),
                    WriteResult::Failed(e) => format!("failed: {e}"),
                    WriteResult::Skipped(why) => format!("skipped: {why}"),
                };
                (o.entry.0, o.name.as_str(), what)
            })
            .collect()
    }

    async fn run(
        client: &Client,
        plan: &Plan,
        concurrency: usize,
        stop: &Stop,
        hold_back: impl Fn(&str) -> bool,
    ) -> (ApplyReport, KeyState) {
        let mut keys = KeyState::default();
        let report = apply(
            client,
            plan,
            &mut keys,
            concurrency,
            stop,
            hold_back,
            |_| {},
        )
        .await;
        (report, keys)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_rename_skips_the_write_that_takes_its_name_and_not_the_others() {
        let (sim, client) = sim().await;
        let a = sim.seed_captcha(StageFields::with_defaults("a", "site"), "k");
        // Entry 0 creates "a", which entry 1 renames its stage away from; entry
        // 2 is independent.
        let plan = plan_for(
            &[
                desired("a", None),
                desired("b", Some(a)),
                desired("c", None),
            ],
            &sim.captcha_stages(),
        );
        sim.inject(
            Fault::new(FaultKind::Status {
                status: 400,
                retry_after: None,
                body: r#"{"name": ["injected refusal"]}"#.to_owned(),
            })
            .on("PUT", CAPTCHA),
        );
        let (report, keys) = run(&client, &plan, 4, &Stop::new(), |_| false).await;

        let got = summary(&report);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            (
                0,
                "a",
                "skipped: it takes the name \"a\", which b is being renamed away from; that update failed"
                    .to_owned()
            )
        );
        assert_eq!((got[1].0, got[1].1), (1, "b"));
        assert!(
            got[1].2.starts_with("failed: ") && got[1].2.contains("injected refusal"),
            "{got:?}"
        );
        assert_eq!(got[2], (2, "c", "written".to_owned()));
        assert!(matches!(
            report.outcomes[0].result,
            WriteResult::Skipped(SkipReason::Dependency {
                entry: EntryId(1),
                failed: true,
                ..
            })
        ));
        assert_eq!(sim.request_counts().writes(), 2, "the PUT and c's POST");
        assert_eq!(
            keys.status(a, &SecretString::from("k")),
            crate::state::KeyStatus::Unknown,
            "a failed write records no key"
        );
        assert!(!report.converged());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_back_write_skips_its_dependants_along_the_chain() {
        let (sim, client) = sim().await;
        let (plan, ..) = chain_of_renames(&sim);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |name| name == "c").await;

        assert_eq!(
            summary(&report),
            vec![
                (
                    0,
                    "a",
                    "skipped: it takes the name \"a\", which b is being renamed away from; that update was not sent"
                        .to_owned()
                ),
                (
                    1,
                    "b",
                    "skipped: it takes the name \"b\", which c is being renamed away from; that update was not sent"
                        .to_owned()
                ),
                (
                    2,
                    "c",
                    "skipped: held back until its retry is due".to_owned()
                ),
            ]
        );
        assert_eq!(sim.request_counts().writes(), 0);
        assert_eq!(report.skipped(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_failures_a_chain_is_written_in_order_and_reported_in_plan_order() {
        let (sim, client) = sim().await;
        let (plan, a, b) = chain_of_renames(&sim);
        let (report, keys) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        let got = summary(&report);
        assert!(report.converged(), "{got:?}");
        assert_eq!(
            got.iter().map(|(i, n, _)| (*i, *n)).collect::<Vec<_>>(),
            [(0, "a"), (1, "b"), (2, "c")]
        );
        let mut names: Vec<String> = sim
            .captcha_stages()
            .into_iter()
            .map(|s| s.fields.name)
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        for uuid in [a, b] {
            assert_eq!(
                keys.status(uuid, &SecretString::from("k")),
                crate::state::KeyStatus::Unchanged
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_apply_sends_nothing_and_says_so_for_every_write() {
        let (sim, client) = sim().await;
        let plan = plan_for(&[desired("a", None), desired("b", None)], &[]);
        let stop = Stop::new();
        stop.cancel.cancel();
        let (report, _) = run(&client, &plan, 4, &stop, |_| false).await;
        assert_eq!(
            summary(&report),
            vec![
                (0, "a", "skipped: interrupted".to_owned()),
                (1, "b", "skipped: interrupted".to_owned()),
            ]
        );
        assert_eq!(sim.request_counts().writes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_lets_the_write_in_flight_finish_and_starts_no_other() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(CAPTCHA))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(serde_json::json!({
                        "pk": Uuid::from_u128(7), "name": "a", "public_key": "site"
                    }))
                    // Long enough for the test to see the request arrive and
                    // cancel while it is in flight, even on a loaded machine.
                    .set_delay(Duration::from_secs(2)),
            )
            .mount(&server)
            .await;
        let client = client(server.uri());
        let plan = plan_for(
            &[desired("a", None), desired("b", None), desired("c", None)],
            &[],
        );
        let stop = Stop::new();
        let canceller = {
            let cancel = stop.cancel.clone();
            let server = &server;
            async move {
                while server
                    .received_requests()
                    .await
                    .unwrap_or_default()
                    .is_empty()
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                cancel.cancel();
            }
        };
        let ((report, _), ()) = tokio::join!(run(&client, &plan, 1, &stop, |_| false), canceller);

        assert_eq!(
            summary(&report),
            vec![
                (0, "a", "written".to_owned()),
                (1, "b", "skipped: interrupted".to_owned()),
                (2, "c", "skipped: interrupted".to_owned()),
            ]
        );
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    /// A stage recorded with key "old", planned to get "k": a key change.
    fn rotation(sim: &SimHandle) -> (Plan, Uuid, KeyState) {
        let uuid = sim.seed_captcha(StageFields::with_defaults("a", "site"), "old");
        let mut keys = KeyState::default();
        keys.record(uuid, &SecretString::from("old"));
        let plan = plan::plan(&PlanInputs {
            desired: &[desired("a", Some(uuid))],
            live: &sim.captcha_stages(),
            keys: &keys,
            capabilities: Capabilities::for_version(ServerVersion::parse(VERSION).unwrap()),
            foreign_names: &BTreeMap::new(),
        });
        (plan, uuid, keys)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_change_whose_answer_is_lost_reads_as_unknown_not_as_the_old_key() {
        let (sim, client) = sim().await;
        let (plan, uuid, mut keys) = rotation(&sim);
        sim.inject(
            Fault::new(FaultKind::LostAnswer)
                .on("PUT", CAPTCHA)
                .times(10),
        );
        let report = apply(
            &client,
            &plan,
            &mut keys,
            4,
            &Stop::new(),
            |_| false,
            |_| {},
        )
        .await;

        assert!(matches!(report.outcomes[0].result, WriteResult::Failed(_)));
        assert_eq!(sim.private_key_of(uuid).as_deref(), Some("k"));
        for key in ["old", "k"] {
            assert_eq!(
                keys.status(uuid, &SecretString::from(key)),
                crate::state::KeyStatus::Unknown,
                "{key}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mark_is_on_disk_before_the_key_is_sent_and_an_abandoned_write_keeps_it() {
        let (sim, client) = sim().await;
        let (plan, uuid, keys) = rotation(&sim);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = crate::state::StateFile::open_for_write(&path).unwrap();
        *state.keys_mut() = keys;
        state.save().unwrap();
        sim.inject(Fault::new(FaultKind::HangAfterProcessing).on("PUT", CAPTCHA));

        let stop = Stop::new();
        let (seen_on_disk, seen_by_callback) = (
            std::sync::Mutex::new(None),
            std::sync::Mutex::new(Vec::new()),
        );
        let stopper = async {
            while sim.private_key_of(uuid).as_deref() != Some("k") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // authentik made the write; what does the file say meanwhile?
            let on_disk = crate::state::StateFile::read_only(&path).unwrap();
            *seen_on_disk.lock().unwrap() = Some(on_disk.status(uuid, &SecretString::from("old")));
            stop.cancel.cancel();
            stop.abandon.cancel();
        };
        let (report, ()) = tokio::join!(
            apply(
                &client,
                &plan,
                &mut state,
                4,
                &stop,
                |_| false,
                |o| { seen_by_callback.lock().unwrap().push(o.name.clone()) }
            ),
            stopper
        );

        assert_eq!(
            *seen_on_disk.lock().unwrap(),
            Some(crate::state::KeyStatus::Unknown),
            "the old key no longer read as unchanged once the new one was sent"
        );
        assert!(
            matches!(
                report.outcomes[0].result,
                WriteResult::Failed(WriteError::Abandoned)
            ),
            "{report:?}"
        );
        assert_eq!(*seen_by_callback.lock().unwrap(), ["a"]);
        state.save().unwrap();
        let after = crate::state::StateFile::read_only(&path).unwrap();
        assert_eq!(after.in_flight().collect::<Vec<_>>(), [uuid]);
    }
}
