//! Executes a plan: one request per entry that acts (a create, an update, a
//! delete), a bounded number at a time, each when the entries it waits for
//! are made.
//!
//! `apply` does not decide anything, and needs nothing but the [`Plan`]: every
//! entry that acts carries its [`Action::target`], its [`crate::plan::Write`]
//! and the entries it waits for ([`Entry::after`]). It is written once for
//! every kind: the requests themselves are the kind's ([`crate::kinds`]). The
//! contract, which the daemon and the `apply` command rely on:
//!
//! - [`ApplyReport::outcomes`] has exactly one [`Outcome`] per entry that
//!   acts, in plan order, each naming its [`EntryId`]. Entries that act on
//!   nothing (in sync, errors, held deletes) have no outcome.
//! - An outcome ([`Ended`]) is written (authentik's answer), deleted (or found
//!   already gone: a 404 is not a failure), in use (a delete that `used_by`,
//!   asked again right before it, refuses: the plan may be minutes old),
//!   failed (authentik's error, or an internal error if the task panicked: the
//!   request may or may not have reached authentik, so a key is not recorded)
//!   or skipped with a [`SkipReason`].
//! - An entry whose dependency was not made (failed, held back, skipped) is
//!   skipped, naming it: a write that takes a name another's rename frees
//!   would only fail on authentik's unique names; a delete waits for every
//!   write, since a manifest renamed without a pin is a create plus a delete.
//!   This follows chains.
//! - The caller may hold entries back (the daemon: stages in backoff); they are
//!   skipped with [`SkipReason::HeldBack`], and their dependants with them.
//! - [`Stop::cancel`] stops *starting* requests; the ones in flight go on.
//!   Every entry not started is [`SkipReason::Cancelled`]. [`Stop::abandon`]
//!   (the grace period is over) gives up the requests in flight:
//!   [`WriteError::Abandoned`].
//!
//! It keeps the record true as it goes, through the [`KeyStore`] it is given
//! (the state file, write-ahead, see [`crate::state`]): before a wave is sent,
//! the keys it changes are marked in flight and the file is saved; a write
//! that succeeds records the fingerprint of the key it sent, a created object
//! enters the inventory, a deleted one's key is forgotten; a write that fails,
//! is abandoned or panics leaves the mark, so its key reads as unknown and is
//! sent again next time. Outcomes are saved in batches as they come, and each
//! is handed to the caller's `on_outcome` at once (progress, log lines); the
//! caller records the rest (adoptions, [`crate::reconcile`]) and saves once
//! more at the end.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::authentik::{ApiError, Client};
use crate::kinds::{self, Kind, Object, Origin, Written};
use crate::plan::{Action, Dependency, Entry, EntryId, Plan, Target, Why, prune};
use crate::state::{KeyMark, KeyState, KeyStatus, KeyStore};

/// What a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn of(target: Target) -> Self {
        match target {
            Target::Create => Operation::Create,
            Target::Update(_) => Operation::Update,
            Target::Delete(_) => Operation::Delete,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    /// "created" / "updated" / "deleted", for reports and logs.
    pub(crate) fn past_tense(self) -> &'static str {
        match self {
            Operation::Create => "created",
            Operation::Update => "updated",
            Operation::Delete => "deleted",
        }
    }
}

/// What one entry came to.
#[derive(Debug)]
pub struct Outcome {
    /// The plan entry this is the outcome of.
    pub(crate) entry: EntryId,
    pub(crate) kind: Kind,
    pub name: String,
    /// Its manifest; `None` for a delete.
    pub(crate) origin: Option<Origin>,
    /// The live object it targets (an update's, a delete's); `None` for a create.
    pub(crate) uuid: Option<Uuid>,
    pub(crate) operation: Operation,
    pub(crate) result: Ended,
}

impl Outcome {
    /// Whether the entry was made: written, deleted, or found already gone.
    pub(crate) fn made(&self) -> bool {
        matches!(self.result, Ended::Written(_) | Ended::Deleted { .. })
    }
}

/// How an entry ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// A create or an update: authentik accepted it and answered with the object.
    Written(Written),
    /// A delete: authentik deleted it, or it was gone already (404).
    Deleted { already_gone: bool },
    /// A delete not made: `used_by`, asked right before it, lists these users.
    InUse(Vec<String>),
    /// authentik (or the network) refused it, or stagesync failed; the message
    /// is the user's.
    Failed(WriteError),
    /// Never sent.
    Skipped(SkipReason),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A bug in stagesync (the task panicked). Whether authentik received the
    /// request is unknown.
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

/// Why an entry was not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// The caller held it back (the daemon: the stage is in backoff).
    HeldBack,
    /// Cancelled before it started.
    Cancelled,
    /// Its key change could not be recorded in the state file first (the
    /// message says why), so it was not sent.
    StateNotSaved(String),
    /// It waits for entry `entry` (named `name`), which was not made: it
    /// `failed`, or was not sent. `taken` is this entry's own name.
    Waited {
        entry: EntryId,
        name: String,
        why: Why,
        taken: String,
        failed: bool,
    },
    /// A delete: a create or update of this apply was not made.
    WritesIncomplete,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HeldBack => f.write_str("held back until its retry is due"),
            SkipReason::Cancelled => f.write_str("interrupted"),
            SkipReason::StateNotSaved(why) => {
                write!(f, "its key change could not be recorded first ({why})")
            }
            SkipReason::Waited {
                name,
                why: Why::FreesName,
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
            SkipReason::Waited {
                name,
                why: Why::CreatesStage,
                failed,
                ..
            } => {
                let what = if *failed { "failed" } else { "was not sent" };
                write!(
                    f,
                    "it guards with captcha stage {name}, whose create {what}"
                )
            }
            SkipReason::Waited {
                name,
                why: Why::RemovesGuard,
                failed,
                ..
            } => {
                let what = if *failed { "failed" } else { "was not made" };
                write!(
                    f,
                    "its guard {name} is removed first; that removal {what}"
                )
            }
            SkipReason::WritesIncomplete => f.write_str(
                "a create or update of this run was not made; deletes wait for a run where every write succeeds",
            ),
        }
    }
}

/// Every outcome of one apply, in plan order.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<Outcome>,
}

impl ApplyReport {
    pub fn failed(&self) -> impl Iterator<Item = (&Outcome, &WriteError)> {
        self.outcomes.iter().filter_map(|o| match &o.result {
            Ended::Failed(e) => Some((o, e)),
            _ => None,
        })
    }

    /// How many entries were not sent.
    pub fn skipped(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.result, Ended::Skipped(_)))
            .count()
    }

    /// True when every entry that acts was made.
    pub fn converged(&self) -> bool {
        self.outcomes.iter().all(Outcome::made)
    }

    /// The outcome of entry `id`, if it acts.
    pub(crate) fn of(&self, id: EntryId) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.entry == id)
    }
}

/// How an apply is stopped early. [`Stop::abandon`] implies [`Stop::cancel`].
#[derive(Clone, Debug)]
pub struct Stop {
    /// No request starts once this fires; the ones in flight go on.
    pub(crate) cancel: CancellationToken,
    /// The requests in flight are given up once this fires (the grace period
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

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

/// What one entry waits for, resolved to the entries that act.
#[derive(Clone, Debug)]
enum Waits {
    /// An entry of this apply (its index), or one that does not act here.
    On(Result<usize, EntryId>, Why),
    /// Every create and update of this apply.
    EveryWrite,
}

/// One entry of this apply, as the scheduler tracks it.
struct Pending<'p> {
    entry: &'p Entry,
    target: Target,
    waits: Vec<Waits>,
    /// `None` until the entry is settled.
    outcome: Option<Outcome>,
    /// Set while its key is marked in flight (write-ahead).
    mark: Option<KeyMark>,
}

impl Pending<'_> {
    fn result(&self) -> Option<&Ended> {
        self.outcome.as_ref().map(|o| &o.result)
    }

    /// A create or update that deletes wait for: one that waits for every
    /// write itself (a pruned stage's guard made to embed no captcha) is
    /// part of the deletes, not a write they wait for.
    fn is_write(&self) -> bool {
        !matches!(self.target, Target::Delete(_))
            && !self.waits.iter().any(|w| matches!(w, Waits::EveryWrite))
    }

    /// The object whose key this write changes, when stagesync does not
    /// already know authentik holds that key: its entry must be marked in
    /// flight before the write is sent. A create has no uuid before its
    /// answer; a lost create leaves no entry, which reads as unknown just the
    /// same.
    fn key_to_mark(&self, keys: &KeyState) -> Option<Uuid> {
        let secret = self.entry.action.write()?.secret.as_ref()?;
        match self.target {
            Target::Update(uuid) => {
                (keys.status(uuid, secret) != KeyStatus::Unchanged).then_some(uuid)
            }
            Target::Create | Target::Delete(_) => None,
        }
    }
}

/// The entries of one apply and where their outcomes go.
struct Run<'p, F> {
    pending: Vec<Pending<'p>>,
    state: &'p mut dyn KeyStore,
    on_outcome: F,
    /// Whether a batched save already failed (warned about once).
    save_failed: bool,
}

impl<F: FnMut(&Outcome)> Run<'_, F> {
    /// Settles entry `index`: records what the outcome changes in the state
    /// (a written key, a created object, a deleted object's key), hands the
    /// outcome to the caller and saves the state when a save is due.
    fn settle(&mut self, index: usize, result: Ended) {
        let pending = &mut self.pending[index];
        match &result {
            Ended::Written(written) => {
                if written.secret_confirmed
                    && let Some(secret) =
                        pending.entry.action.write().and_then(|w| w.secret.as_ref())
                {
                    self.state.keys_mut().record(written.uuid, secret);
                }
                if pending.target == Target::Create && pending.entry.kind.inventoried() {
                    self.state.record_created(
                        pending.entry.kind,
                        written.uuid,
                        &pending.entry.name,
                    );
                }
            }
            Ended::Deleted { .. } => {
                if let Target::Delete(uuid) = pending.target {
                    self.state.keys_mut().forget(uuid);
                }
            }
            // Never sent: what was known before still holds.
            Ended::Skipped(_) | Ended::InUse(_) => {
                if let Some(mark) = pending.mark.take() {
                    self.state.keys_mut().unmark(mark);
                }
            }
            // Maybe made: the mark stays, the key reads as unknown.
            Ended::Failed(_) => {}
        }
        let outcome = Outcome {
            entry: pending.entry.id,
            kind: pending.entry.kind,
            name: pending.entry.name.clone(),
            origin: pending.entry.origin.clone(),
            uuid: pending.target.uuid(),
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

    /// The uuid of the captcha stage entry `index` waits to be created
    /// ([`Why::CreatesStage`]), once that create is made.
    fn created_stage_for(&self, index: usize) -> Option<Uuid> {
        self.pending[index].waits.iter().find_map(|w| match w {
            Waits::On(Ok(on), Why::CreatesStage) => match self.pending[*on].result() {
                Some(Ended::Written(written)) => Some(written.uuid),
                _ => None,
            },
            _ => None,
        })
    }

    fn unsettled(&self) -> Vec<usize> {
        (0..self.pending.len())
            .filter(|&i| self.pending[i].outcome.is_none())
            .collect()
    }

    /// Where the creates and updates stand: `None` while one is unsettled,
    /// else whether every one was made (what a delete waits for).
    fn writes_made(&self) -> Option<bool> {
        let mut made = true;
        for write in self.pending.iter().filter(|p| p.is_write()) {
            match write.result() {
                None => return None,
                Some(Ended::Written(_)) => {}
                Some(_) => made = false,
            }
        }
        Some(made)
    }

    /// Whether entry `i` may start now (`Some(None)`), must be skipped
    /// (`Some(Some(reason))`), or still waits (`None`). `writes_made` is
    /// [`Self::writes_made`], asked once per round.
    fn readiness(
        &self,
        i: usize,
        writes_made: Option<bool>,
        name_of: &dyn Fn(EntryId) -> String,
    ) -> Option<Option<SkipReason>> {
        let pending = &self.pending[i];
        for waits in &pending.waits {
            match waits {
                Waits::On(Err(missing), why) => {
                    return Some(Some(SkipReason::Waited {
                        entry: *missing,
                        name: name_of(*missing),
                        why: why.clone(),
                        taken: pending.entry.name.clone(),
                        failed: false,
                    }));
                }
                Waits::On(Ok(j), why) => match self.pending[*j].result() {
                    None => return None,
                    Some(Ended::Written(_) | Ended::Deleted { .. }) => {}
                    Some(other) => {
                        let on = self.pending[*j].entry;
                        return Some(Some(SkipReason::Waited {
                            entry: on.id,
                            name: on.name.clone(),
                            why: why.clone(),
                            taken: pending.entry.name.clone(),
                            failed: matches!(other, Ended::Failed(_)),
                        }));
                    }
                },
                Waits::EveryWrite => match writes_made {
                    None => return None,
                    Some(true) => {}
                    Some(false) => return Some(Some(SkipReason::WritesIncomplete)),
                },
            }
        }
        Some(None)
    }
}

/// How much of a shutdown timeout is kept for saving the state and exiting
/// once the requests in flight are abandoned (at most a second).
pub(crate) fn grace_period(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout - (shutdown_timeout / 4).min(Duration::from_secs(1))
}

/// Runs the entries of `plan` that act, at most `concurrency` at once,
/// keeping `state` true as they go (write-ahead: see [`crate::state`]).
/// `hold_back(id)` lets the daemon keep entries in backoff from being made
/// this time; `on_outcome` sees each outcome as soon as it is settled (for
/// progress and log lines), the report has them all in plan order.
///
/// Entries run in waves: one that waits for another starts once that one is
/// made. Before a wave is sent, the keys it changes are marked in flight and
/// the state is saved; if that save fails, the wave's key changes are not
/// sent. See the module docs for the outcomes.
pub async fn apply(
    client: &Client,
    plan: &Plan,
    state: &mut dyn KeyStore,
    concurrency: usize,
    stop: &Stop,
    hold_back: impl Fn(EntryId) -> bool,
    on_outcome: impl FnMut(&Outcome),
) -> ApplyReport {
    let without_delete = plan.removals_without_their_delete();
    let own_guards = own_guards_of(plan);
    let acting: Vec<(&Entry, Target)> = plan
        .entries
        .iter()
        .filter(|entry| !without_delete.contains(&entry.id))
        .filter_map(|entry| entry.action.target().map(|t| (entry, t)))
        .collect();
    // Every key of this apply, before the first is sent: an answer to one
    // write cannot show another's key either.
    client.never_repeat(
        acting
            .iter()
            .filter_map(|(entry, _)| entry.action.write()?.secret.as_ref()),
    );
    let position: HashMap<EntryId, usize> = acting
        .iter()
        .enumerate()
        .map(|(i, (entry, _))| (entry.id, i))
        .collect();
    let name_of = |id: EntryId| {
        plan.entry(id)
            .map_or_else(|| id.to_string(), |e| e.name.clone())
    };
    let mut run = Run {
        pending: acting
            .iter()
            .map(|&(entry, target)| Pending {
                entry,
                target,
                waits: entry
                    .after
                    .iter()
                    .map(|dependency| match dependency {
                        // One that does not act in this plan cannot be made.
                        Dependency::Entry { on, why } => {
                            Waits::On(position.get(on).copied().ok_or(*on), why.clone())
                        }
                        Dependency::EveryWrite => Waits::EveryWrite,
                    })
                    .collect(),
                outcome: None,
                mark: None,
            })
            .collect(),
        state,
        on_outcome,
        save_failed: false,
    };
    for i in 0..run.pending.len() {
        if hold_back(run.pending[i].entry.id) {
            run.settle(i, Ended::Skipped(SkipReason::HeldBack));
        }
    }

    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    loop {
        if stop.cancel.is_cancelled() {
            for i in run.unsettled() {
                run.settle(i, Ended::Skipped(SkipReason::Cancelled));
            }
            break;
        }
        // Entries whose dependencies are settled: skipped if one was not
        // made (which may settle others: a skip follows chains).
        let mut wave = Vec::new();
        let mut in_wave = vec![false; run.pending.len()];
        let mut progress = true;
        while progress {
            progress = false;
            let writes_made = run.writes_made();
            for i in run.unsettled() {
                if in_wave[i] {
                    continue;
                }
                match run.readiness(i, writes_made, &name_of) {
                    None => {}
                    Some(Some(reason)) => {
                        run.settle(i, Ended::Skipped(reason));
                        progress = true;
                    }
                    Some(None) => {
                        in_wave[i] = true;
                        wave.push(i);
                    }
                }
            }
        }
        if wave.is_empty() {
            // Unsettled entries left here wait on each other: a cycle, which
            // the planner refuses. Skip them rather than wait forever.
            for i in run.unsettled() {
                let on = run.pending[i].waits.iter().find_map(|w| match w {
                    Waits::On(Ok(j), why) => Some((*j, why.clone())),
                    _ => None,
                });
                let reason = match on {
                    Some((j, why)) => SkipReason::Waited {
                        entry: run.pending[j].entry.id,
                        name: run.pending[j].entry.name.clone(),
                        why,
                        taken: run.pending[i].entry.name.clone(),
                        failed: false,
                    },
                    None => SkipReason::WritesIncomplete,
                };
                run.settle(i, Ended::Skipped(reason));
            }
            break;
        }

        // Write-ahead: the keys this wave changes read as unknown on disk
        // before any of them is sent.
        let mut marked = false;
        for &i in &wave {
            if let Some(uuid) = run.pending[i].key_to_mark(run.state.keys()) {
                run.pending[i].mark = Some(run.state.keys_mut().mark_in_flight(uuid));
                marked = true;
            }
        }
        if marked && let Err(err) = run.state.save() {
            let message = err.to_string();
            tracing::error!(error = %message, "cannot save the state file: not sending the key changes that need it");
            for &i in &wave {
                if run.pending[i].mark.is_some() {
                    run.settle(
                        i,
                        Ended::Skipped(SkipReason::StateNotSaved(message.clone())),
                    );
                }
            }
            wave.retain(|&i| run.pending[i].outcome.is_none());
        }

        // Start requests as slots free up, and settle each as it completes.
        let mut queue = wave.into_iter().peekable();
        let mut tasks: JoinSet<Ended> = JoinSet::new();
        let mut index_of_task = HashMap::new();
        while queue.peek().is_some() || !tasks.is_empty() {
            tokio::select! {
                biased;
                () = stop.abandon.cancelled() => {
                    // Dropping a request closes its connection; whether
                    // authentik made it is unknown, and its key stays
                    // marked in flight.
                    tasks.abort_all();
                    let mut abandoned: Vec<usize> = index_of_task.values().copied().collect();
                    abandoned.sort_unstable();
                    for index in abandoned {
                        if run.pending[index].outcome.is_none() {
                            run.settle(index, Ended::Failed(WriteError::Abandoned));
                        }
                    }
                    // The next turn of the outer loop marks the rest cancelled.
                    break;
                }
                Some(joined) = tasks.join_next_with_id() => {
                    let (index, result) = match joined {
                        Ok((id, result)) => (index_of_task[&id], result),
                        // A task only ends without a result if it panicked (a
                        // bug): reported as failed, never skipped in silence.
                        Err(err) => {
                            let index = index_of_task[&err.id()];
                            let entry = run.pending[index].entry;
                            let why = if err.is_panic() { "panicked" } else { "was aborted" };
                            let file = entry.origin.as_ref().map(|o| o.file.display().to_string()).unwrap_or_default();
                            tracing::error!(stage = %entry.name, file = %file, "internal error: the write task {why}");
                            (index, Ended::Failed(WriteError::Internal(format!("the write task {why}"))))
                        }
                    };
                    run.settle(index, result);
                }
                // Cancelled: start nothing more; the requests in flight go on.
                () = stop.cancel.cancelled(), if queue.peek().is_some() => {
                    for index in queue.by_ref() {
                        run.settle(index, Ended::Skipped(SkipReason::Cancelled));
                    }
                }
                permit = permits.clone().acquire_owned(), if queue.peek().is_some() => {
                    let (Ok(permit), Some(index)) = (permit, queue.next()) else {
                        continue;
                    };
                    let client = client.clone();
                    let mut entry = run.pending[index].entry.clone();
                    // A guard of a stage created in this apply: the
                    // create's answer gives the stage's uuid.
                    if let Some(stage) = run.created_stage_for(index)
                        && let Some(write) = entry.action.write_mut()
                        && let Object::Guard(guard) = &mut write.object
                    {
                        guard.fill_stage(stage);
                    }
                    let target = run.pending[index].target;
                    let own = own_guards.get(&entry.id).cloned();
                    let task = tasks.spawn(async move {
                        let result = match own {
                            Some(own) => remove_own_guard(&client, &entry, target, &own).await,
                            None => send(&client, &entry, target).await,
                        };
                        drop(permit);
                        result
                    });
                    index_of_task.insert(task.id(), index);
                }
            }
        }
    }

    let outcomes = run
        .pending
        .into_iter()
        .map(|p| {
            // Every entry is settled by now (cancelled, skipped or sent).
            p.outcome.unwrap_or_else(|| Outcome {
                entry: p.entry.id,
                kind: p.entry.kind,
                name: p.entry.name.clone(),
                origin: p.entry.origin.clone(),
                uuid: p.target.uuid(),
                operation: Operation::of(p.target),
                result: Ended::Skipped(SkipReason::Cancelled),
            })
        })
        .collect();
    ApplyReport { outcomes }
}

/// For each removal of a pruned stage's own guard: the stage, and all the
/// guards removed with it.
fn own_guards_of(plan: &Plan) -> HashMap<EntryId, Arc<(Uuid, prune::Removed)>> {
    let mut out = HashMap::new();
    for delete in plan.entries.iter().filter(|e| e.kind == Kind::CaptchaStage) {
        let Some(Target::Delete(stage)) = delete.action.target() else {
            continue;
        };
        let mut removed = prune::Removed::default();
        for guard in plan.removed_with(delete) {
            match guard.action {
                Action::Delete { uuid, .. } => removed.unbind(uuid),
                Action::Update { uuid, .. } => removed.reembed(uuid),
                _ => {}
            }
        }
        let own = Arc::new((stage, removed));
        for guard in plan.removed_with(delete) {
            out.insert(guard.id, Arc::clone(&own));
        }
    }
    out
}

/// One removal of a pruned stage's own guard, once the stage's `used_by`
/// (asked again: someone may have bound it since the plan) lists nothing
/// but its own guards: otherwise the stage is kept, so its guards stay.
async fn remove_own_guard(
    client: &Client,
    entry: &Entry,
    target: Target,
    own: &(Uuid, prune::Removed),
) -> Ended {
    let (stage, removed) = own;
    match kinds::used_by(client, Kind::CaptchaStage, *stage).await {
        Ok(users) => {
            let left = removed.left_of(users);
            if !left.is_empty() {
                return Ended::InUse(prune::describe_users(&left));
            }
        }
        // Gone with its stage (authentik's delete removes both).
        Err(ApiError::StageNotFound { .. }) => return Ended::Deleted { already_gone: true },
        Err(e) => return Ended::Failed(WriteError::Api(e)),
    }
    send(client, entry, target).await
}

/// The requests of one entry: its write, or its delete once `used_by` (asked
/// again: the operator may have bound the object since the plan) is empty.
async fn send(client: &Client, entry: &Entry, target: Target) -> Ended {
    let result = match (target, &entry.action) {
        (Target::Create, Action::Create { write, .. }) => {
            kinds::create(client, &write.object, write.secret.as_ref())
                .await
                .map(Ended::Written)
        }
        (Target::Update(uuid), Action::Update { write, .. }) => {
            kinds::update(client, uuid, &write.object, write.secret.as_ref())
                .await
                .map(Ended::Written)
        }
        (Target::Delete(uuid), _) => delete(client, entry.kind, uuid).await,
        _ => Err(ApiError::ClientSetup {
            reason: format!("entry {} has no request to send", entry.id),
        }),
    };
    result.unwrap_or_else(|err| Ended::Failed(WriteError::Api(err)))
}

async fn delete(client: &Client, kind: Kind, uuid: Uuid) -> Result<Ended, ApiError> {
    match kinds::used_by(client, kind, uuid).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => return Ok(Ended::InUse(prune::describe_users(&users))),
        Err(ApiError::StageNotFound { .. }) => return Ok(Ended::Deleted { already_gone: true }),
        Err(e) => return Err(e),
    }
    match kinds::delete(client, kind, uuid).await {
        Ok(()) => Ok(Ended::Deleted {
            already_gone: false,
        }),
        Err(ApiError::StageNotFound { .. }) => Ok(Ended::Deleted { already_gone: true }),
        Err(e) => Err(e),
    }
}

/// Once [`Stop::cancel`] fires, fires [`Stop::abandon`] when the
/// [`grace_period`] of `shutdown_timeout` is over.
impl Stop {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::authentik::{ClientSettings, RetryPolicy, ServerVersion};
    use crate::capabilities::Capabilities;
    use crate::kinds::captcha::{DesiredStage, LiveStage, StageFields};
    use crate::plan::{self, Held, PlanInputs};
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
                    Ended::Written(_) => "written".to_owned(),
                    Ended::Failed(e) => format!("failed: {e}"),
                    Ended::Skipped(why) => format!("skipped: {why}"),
                    Ended::Deleted { .. } => "deleted".to_owned(),
                    Ended::InUse(users) => format!("in use: {}", users.join(", ")),
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
        let held = |id: EntryId| plan.entry(id).is_some_and(|e| hold_back(&e.name));
        let report = apply(client, plan, &mut keys, concurrency, stop, held, |_| {}).await;
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
            Ended::Skipped(SkipReason::Waited {
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

    /// `plan` with a delete of each of `uuids` (made, not held) added.
    fn with_deletes(mut plan: Plan, uuids: &[(Uuid, &str)]) -> Plan {
        plan.add_deletes(
            uuids
                .iter()
                .map(|(uuid, name)| crate::plan::prune::Decided {
                    kind: Kind::CaptchaStage,
                    uuid: *uuid,
                    name: (*name).to_owned(),
                    held: None,
                    guards: Vec::new(),
                })
                .collect(),
        );
        plan
    }

    /// `plan` with the delete of `stage` (made, or `held`) whose own
    /// binding `binding` is unbound first.
    fn with_pruned_guard(mut plan: Plan, stage: Uuid, binding: Uuid, held: Option<Held>) -> Plan {
        plan.add_deletes(vec![crate::plan::prune::Decided {
            kind: Kind::CaptchaStage,
            uuid: stage,
            name: "old".to_owned(),
            held,
            guards: vec![crate::plan::prune::Removal {
                name: "old in flow login".to_owned(),
                change: crate::kinds::guard::matching::Change::Unbind { uuid: binding },
            }],
        }]);
        plan
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pruned_stage_is_deleted_after_its_own_guard_is_removed_and_never_without() {
        let (sim, client) = sim().await;
        let old = sim.seed_captcha(StageFields::with_defaults("old", "site"), "k");
        let flow = sim.seed_flow("login", "Welcome");
        let binding = sim.bind(flow, old, 10);

        // The unbind fails: the stage stays, and says why.
        sim.inject(Fault::status(400).on("DELETE", "/api/v3/flows/bindings/"));
        let plan = with_pruned_guard(plan_for(&[], &[]), old, binding, None);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        let got = summary(&report);
        assert!(got[0].2.starts_with("failed: "), "{got:?}");
        assert_eq!(
            got[1].2,
            "skipped: its guard old in flow login is removed first; that removal failed"
        );
        assert_eq!(sim.captcha_stages().len(), 1);

        // Held back after planning (a freeze, the daemon's second look): the
        // unbind is not sent either.
        sim.reset_counts();
        let held = Some(Held::Guard {
            reason: "frozen".into(),
        });
        let plan = with_pruned_guard(plan_for(&[], &[]), old, binding, held);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        assert!(report.outcomes.is_empty(), "{:?}", summary(&report));
        assert_eq!(sim.request_counts().total(), 0);
        assert_eq!(sim.bindings_of_stage(old).len(), 1);

        // Bound in the UI since the plan: nothing is removed, the stage stays.
        let ui = sim.seed_flow("signup", "Sign up");
        let ui_binding = sim.bind(ui, old, 20);
        let plan = with_pruned_guard(plan_for(&[], &[]), old, binding, None);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        let got = summary(&report);
        assert_eq!(got[0].2, "in use: bound to flow `signup`", "{got:?}");
        assert!(
            got[1].2.starts_with("skipped: its guard old in flow login"),
            "{got:?}"
        );
        assert_eq!(sim.bindings_of_stage(old).len(), 2);
        assert!(sim.unbind(ui_binding));

        // Made: the unbind first, then used_by is empty and the stage goes.
        let plan = with_pruned_guard(plan_for(&[], &[]), old, binding, None);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        let got = summary(&report);
        assert_eq!(got[0].2, "deleted", "{got:?}");
        assert_eq!(got[1].2, "deleted", "{got:?}");
        assert!(sim.captcha_stages().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deletes_wait_for_every_write_and_ask_used_by_again() {
        let (sim, client) = sim().await;
        let gone = sim.seed_captcha(StageFields::with_defaults("gone", "site"), "k");
        let bound = sim.seed_captcha(StageFields::with_defaults("bound", "site"), "k");
        let vanished = sim.seed_captcha(StageFields::with_defaults("vanished", "site"), "k");
        let deletes = [(gone, "gone"), (bound, "bound"), (vanished, "vanished")];

        // A write of the same apply fails: no delete is made.
        sim.inject(
            Fault::new(FaultKind::Status {
                status: 400,
                retry_after: None,
                body: r#"{"name": ["refused"]}"#.to_owned(),
            })
            .on("POST", CAPTCHA),
        );
        let plan = with_deletes(plan_for(&[desired("new", None)], &[]), &deletes);
        let (report, _) = run(&client, &plan, 4, &Stop::new(), |_| false).await;
        let got = summary(&report);
        assert!(got[0].2.starts_with("failed: "), "{got:?}");
        for (_, name, what) in &got[1..] {
            assert_eq!(
                what,
                "skipped: a create or update of this run was not made; deletes wait for a run where every write succeeds",
                "{name}"
            );
        }
        assert_eq!(sim.captcha_stages().len(), 3, "nothing deleted");

        // Every write made: each delete asks used_by first.
        sim.seed_flow_binding(bound, "default-authentication-flow", "Welcome", 10);
        sim.delete(vanished);
        let mut keys = KeyState::default();
        keys.record(gone, &SecretString::from("k"));
        keys.record(vanished, &SecretString::from("k"));
        let plan = with_deletes(plan_for(&[], &[]), &deletes);
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
        assert!(matches!(
            report.outcomes[0].result,
            Ended::Deleted {
                already_gone: false
            }
        ));
        assert!(
            matches!(&report.outcomes[1].result, Ended::InUse(users) if users == &["bound to flow `default-authentication-flow`"]),
            "{:?}",
            report.outcomes[1]
        );
        assert!(matches!(
            report.outcomes[2].result,
            Ended::Deleted { already_gone: true }
        ));
        assert_eq!(report.outcomes[1].uuid, Some(bound));
        assert!(!report.converged(), "a delete in use is not converged");
        let names: Vec<String> = sim
            .captcha_stages()
            .into_iter()
            .map(|s| s.fields.name)
            .collect();
        assert_eq!(names, ["bound"]);
        for uuid in [gone, vanished] {
            assert_eq!(
                keys.status(uuid, &SecretString::from("k")),
                crate::state::KeyStatus::Unknown,
                "a deleted stage's key is forgotten"
            );
        }
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

        assert!(matches!(report.outcomes[0].result, Ended::Failed(_)));
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
                Ended::Failed(WriteError::Abandoned)
            ),
            "{report:?}"
        );
        assert_eq!(*seen_by_callback.lock().unwrap(), ["a"]);
        state.save().unwrap();
        let after = crate::state::StateFile::read_only(&path).unwrap();
        assert_eq!(after.in_flight().collect::<Vec<_>>(), [uuid]);
    }
}
