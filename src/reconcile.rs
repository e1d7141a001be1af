//! The one pipeline of `plan`, `apply`, `apply --plan`, `run` and `demo`: a
//! [`Session`] (the client, the state, the policy) whose steps are
//!
//! load -> fetch -> plan -> execute -> record -> save
//!
//! - [`Session::load`]: the manifests (I/O); the one-shot commands refuse an
//!   invalid set ([`crate::commands`]), the daemon keeps the last valid stages
//!   of a broken file ([`crate::daemon::pass`]);
//! - [`Session::fetch`]: live state with the fewest calls: one version call,
//!   one list call per 100 live stages, and, for the would-be creates, either
//!   one name look-up each or one call per 100 stages of every type, whichever
//!   is fewer ([`crate::authentik::name_check`]: a name may be held by a stage
//!   of another type, which the captcha list cannot show). Never one GET per
//!   stage;
//! - [`Session::plan`]: the pure planner ([`crate::plan::plan`]), then, for
//!   prune, one `used_by` per candidate (and only then) and the prune
//!   decisions ([`crate::plan::prune::decide`]);
//! - [`Session::execute`]: [`crate::apply::apply`], keeping the state file
//!   true as it goes;
//! - [`Session::record`]: the inventory brought up to date ([`record_inventory`]);
//! - [`Session::save`]: the state file, once more at the end.
//!
//! Each caller adds only its own: `plan` renders, `apply` asks, `apply --plan`
//! compares with the saved file, the daemon decides what to hold back and
//! sums a pass up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::apply::{self, ApplyReport, Ended, Operation, Outcome};
use crate::authentik::{ApiError, Client, name_check};
use crate::capabilities::Capabilities;
use crate::drift::{Attribution, Own, attribution};
use crate::kinds::captcha::api::Stages;
use crate::kinds::captcha::{DesiredStage, LiveStage};
use crate::kinds::guard::api::Guards;
use crate::kinds::guard::matching::LiveGuards;
use crate::kinds::guard::{self, Guard};
use crate::kinds::{self, Kind, Object};
use crate::manifest::{self, Manifests, SourceError};
use crate::plan::prune::{self, PruneInputs, PruneSettings};
use crate::plan::{self, Action, EntryId, Plan, PlanInputs};
use crate::policy::Policy;
use crate::state::{Inventory, KeyState, KeyStore, ManagedAs, StateError, StateFile};

/// How many event queries attribution makes at once: each is a few hundred
/// milliseconds on a large log (CONTRACT.md), and a plan with many drifted
/// objects should not flood authentik.
const ATTRIBUTION_CONCURRENCY: usize = 4;

/// What authentik has, as one fetch sees it.
pub struct Live {
    pub(crate) capabilities: Capabilities,
    /// Every live captcha stage.
    pub(crate) stages: Vec<LiveStage>,
    /// name -> kind for the names looked up that a stage of another type holds.
    pub(crate) foreign_names: BTreeMap<String, String>,
    /// What captcha stages guard; fetched only when a manifest declares
    /// `guards` (or, at plan time, when a stage to prune may have some).
    pub(crate) guards: Option<LiveGuards>,
}

/// A plan together with what it was made from, ready to show or to execute.
pub struct Planned {
    pub plan: Plan,
    pub(crate) desired: Vec<DesiredStage>,
    pub(crate) live: Vec<LiveStage>,
    /// What captcha stages guard, when it was fetched.
    pub(crate) guards: Option<LiveGuards>,
}

/// The state a session keeps the keys and the inventory in.
pub(crate) enum State {
    /// Locked for writing for the session's life (`apply`, `run`).
    Locked(StateFile),
    /// Read without a lock: `plan`, and a dry-run daemon (it must not block
    /// an `apply`, whose writes it should then see: it reads again each pass).
    ReadOnly {
        path: PathBuf,
        keys: KeyState,
        inventory: Inventory,
    },
}

impl State {
    /// Locks and reads the state file.
    pub(crate) fn locked(path: &Path) -> Result<State, StateError> {
        StateFile::open_for_write(path).map(State::Locked)
    }

    /// Reads the state file without locking it.
    pub(crate) fn read_only(path: &Path) -> Result<State, StateError> {
        let (keys, inventory) = StateFile::read_only_with_inventory(path)?;
        Ok(State::ReadOnly {
            path: path.to_owned(),
            keys,
            inventory,
        })
    }

    pub(crate) fn keys(&self) -> &KeyState {
        match self {
            State::Locked(file) => file.keys(),
            State::ReadOnly { keys, .. } => keys,
        }
    }

    pub(crate) fn inventory(&self) -> &Inventory {
        match self {
            State::Locked(file) => file.inventory(),
            State::ReadOnly { inventory, .. } => inventory,
        }
    }

    /// Where the state file is, as the operator named it.
    pub(crate) fn path(&self) -> &Path {
        match self {
            State::Locked(file) => file.path(),
            State::ReadOnly { path, .. } => path,
        }
    }

    /// One warning line per damaged key entry, naming the file.
    pub(crate) fn damage_report(&self) -> Vec<String> {
        self.keys().damage_report(self.path()).collect()
    }
}

/// A client, a state and a policy: everything the steps share.
pub struct Session {
    pub(crate) client: Client,
    pub(crate) state: State,
    pub(crate) policy: Policy,
    /// What marks stagesync's own writes in the event log: asked once
    /// (`core/users/me/`), on the first drift.
    own: tokio::sync::OnceCell<Own>,
}

impl Session {
    pub(crate) fn new(client: Client, state: State, policy: Policy) -> Session {
        Session {
            client,
            state,
            policy,
            own: tokio::sync::OnceCell::new(),
        }
    }

    /// Load: every manifest under `dir`, checked against the operator's
    /// policy, read off the async threads. A panic while reading is a bug, not
    /// a missing directory: it is raised here as if the read had run inline
    /// (its message reaches stderr).
    pub(crate) async fn load(&self, dir: &Path) -> Result<Manifests, SourceError> {
        let shown = dir.to_owned();
        let (dir, policy) = (dir.to_owned(), self.policy.clone());
        let read = tokio::task::spawn_blocking(move || manifest::load(&dir, &policy));
        match read.await {
            Ok(read) => read,
            Err(err) => match err.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(err) => Err(SourceError::Unreadable(
                    shown,
                    std::io::Error::other(format!("reading the manifests stopped: {err}")),
                )),
            },
        }
    }

    /// Reads the state file again, when it is not held locked (a dry-run
    /// daemon, each pass). A file that cannot be read keeps what was read
    /// before, and says why.
    pub(crate) fn refresh_state(&mut self) -> Result<(), StateError> {
        if let State::ReadOnly { path, .. } = &self.state {
            self.state = State::read_only(&path.clone())?;
        }
        Ok(())
    }

    /// Fetch: the server version and every captcha stage, then the names
    /// `desired` would create or rename to, among all stage types.
    pub(crate) async fn fetch(&self, desired: &[DesiredStage]) -> Result<Live, ApiError> {
        let version = self.client.version().await?;
        let stages = Stages::new(&self.client).list().await?;
        let names = plan::names_to_check(desired, &stages);
        let foreign_names = name_check::holders_of(&self.client, names)
            .await?
            .into_iter()
            .filter(|(_, holder)| !holder.is_captcha)
            .map(|(name, holder)| (name, holder.kind))
            .collect();
        let guards = if desired.iter().any(|d| d.guards.is_some()) {
            Some(fetch_guards(&self.client, desired).await?)
        } else {
            None
        };
        Ok(Live {
            capabilities: Capabilities::for_version(version),
            stages,
            foreign_names,
            guards,
        })
    }

    /// Plan: `desired` against `live`, with the prune decisions. `used_by` is
    /// asked for each candidate only when prune may delete at all (`--prune`,
    /// a complete and valid manifest set that declares something); the live
    /// list is complete here, or fetching it would have failed. A candidate
    /// that vanished meanwhile is left out (it is gone). A candidate's own
    /// guards (the inventory's bindings and embeddings of it) are removed
    /// with it: the guards are fetched for them when no manifest needed them.
    pub(crate) async fn plan(
        &self,
        desired: Vec<DesiredStage>,
        live: Live,
        settings: PruneSettings,
        manifests_complete: bool,
    ) -> Result<Planned, ApiError> {
        let mut plan = plan::plan(&PlanInputs {
            desired: &desired,
            live: &live.stages,
            keys: self.state.keys(),
            capabilities: live.capabilities,
            foreign_names: &live.foreign_names,
        });
        plan.add_guards(&desired, live.guards.as_ref(), &live.stages);
        let mut guards = live.guards;
        let mut live = live.stages;
        let inventory = self.state.inventory();
        let mut used_by = BTreeMap::new();
        let mut own_guards = BTreeMap::new();
        let mut vanished = Vec::new();
        if settings.enabled && manifests_complete && !desired.is_empty() {
            let candidates: Vec<&LiveStage> = prune::candidates(inventory, &live, &desired, &plan);
            if guards.is_none()
                && !candidates.is_empty()
                && inventory.of_kind(Kind::Guard).next().is_some()
            {
                guards = Some(fetch_guards(&self.client, &desired).await?);
            }
            for stage in candidates {
                let own = guards
                    .as_ref()
                    .map(|g| prune::own_guards(inventory, stage, g, &plan))
                    .unwrap_or_default();
                match kinds::used_by(&self.client, Kind::CaptchaStage, stage.uuid).await {
                    Ok(users) => {
                        used_by.insert(
                            stage.uuid,
                            prune::without_removed_guards(users, &plan, &own),
                        );
                        own_guards.insert(stage.uuid, own);
                    }
                    Err(ApiError::StageNotFound { .. }) => vanished.push(stage.uuid),
                    Err(e) => return Err(e),
                }
            }
        }
        live.retain(|l| !vanished.contains(&l.uuid));
        let deletes = prune::decide(&PruneInputs {
            inventory,
            live: &live,
            desired: &desired,
            plan: &plan,
            used_by: &used_by,
            guards: &own_guards,
            manifests_complete,
            live_complete: true,
            settings,
        });
        plan.add_deletes(deletes);
        Ok(Planned {
            plan,
            desired,
            live,
            guards,
        })
    }

    /// Fetch and plan, for the callers that take both at once.
    pub(crate) async fn fetch_and_plan(
        &self,
        desired: Vec<DesiredStage>,
        settings: PruneSettings,
        manifests_complete: bool,
    ) -> Result<Planned, ApiError> {
        let live = self.fetch(&desired).await?;
        self.plan(desired, live, settings, manifests_complete).await
    }

    /// Attribute: for each drifted entry ([`Plan::drifted`]), who made its
    /// object what it is, from its newest event in authentik's event log
    /// ([`crate::drift::attribution`]). One query per drifted object, a few
    /// at a time; none when nothing drifted. A log that cannot be read
    /// (no permission, authentik failing) leaves the plan's
    /// `changed_by_unknown` saying why, once; it is never an error.
    pub(crate) async fn attribute(&self, plan: &mut Plan) {
        let mut drifted: Vec<(EntryId, Kind, Uuid)> = plan.drifted().collect();
        // A create of an object stagesync managed under that name: it was
        // deleted (or renamed) since; its last event says by whom.
        let inventory = self.state.inventory();
        for entry in &plan.entries {
            if let Action::Create { .. } = entry.action
                && let Some((uuid, _)) = inventory
                    .of_kind(entry.kind)
                    .find(|(_, managed)| managed.name == entry.name)
            {
                drifted.push((entry.id, entry.kind, uuid));
            }
        }
        if drifted.is_empty() {
            return;
        }
        let own = *self
            .own
            .get_or_init(|| crate::drift::own_writes(&self.client))
            .await;
        let mut wanted = drifted.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < ATTRIBUTION_CONCURRENCY {
                let Some((id, kind, uuid)) = wanted.next() else {
                    break;
                };
                let client = self.client.clone();
                tasks.spawn(
                    async move { (id, client.newest_event_of(kind.logged_as(), uuid).await) },
                );
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (id, result) = joined
                .unwrap_or_else(|e| crate::authentik::transport::raise_panic(e, "an event query"));
            match result {
                Ok(newest) => match attribution::attribute(newest.as_ref(), &own) {
                    Attribution::By(by) => {
                        plan.changed_by.insert(id, by);
                    }
                    Attribution::Ours => {
                        plan.unchanged_since_written.insert(id);
                    }
                    Attribution::NoEvent => {}
                },
                Err(err) => {
                    // The same answer awaits every other query: stop asking.
                    tasks.abort_all();
                    plan.changed_by_unknown = Some(format!("the event log cannot be read: {err}"));
                    return;
                }
            }
        }
    }

    /// Execute: the plan's entries that act, through [`apply::apply`]; in a
    /// read-only session nothing is sent.
    pub(crate) async fn execute(
        &mut self,
        plan: &Plan,
        concurrency: usize,
        stop: &apply::Stop,
        hold_back: impl Fn(EntryId) -> bool,
        on_outcome: impl FnMut(&Outcome),
    ) -> ApplyReport {
        match &mut self.state {
            State::Locked(file) => {
                apply::apply(
                    &self.client,
                    plan,
                    file,
                    concurrency,
                    stop,
                    hold_back,
                    on_outcome,
                )
                .await
            }
            State::ReadOnly { .. } => ApplyReport::default(),
        }
    }

    /// Record: the inventory brought up to date with the plan and what its
    /// execution made ([`record_inventory`]). Returns whether it changed.
    pub(crate) fn record(&mut self, planned: &Planned, report: Option<&ApplyReport>) -> bool {
        match &mut self.state {
            State::Locked(file) => record_inventory(
                file.inventory_mut(),
                &planned.plan,
                &planned.live,
                planned.guards.as_ref(),
                report,
            ),
            State::ReadOnly { .. } => false,
        }
    }

    /// Save: the state file, durably; nothing for a read-only session.
    pub(crate) fn save(&mut self) -> Result<(), StateError> {
        match &mut self.state {
            State::Locked(file) => KeyStore::save(file),
            State::ReadOnly { .. } => Ok(()),
        }
    }
}

/// What the manifests' guards need, with the fewest calls: one paged list of
/// every binding, one of identification stages, and the flows named (a
/// look-up per slug, or the flow list when that is fewer calls; a slug
/// without a flow is a plan error).
pub(crate) async fn fetch_guards(
    client: &Client,
    desired: &[DesiredStage],
) -> Result<LiveGuards, ApiError> {
    let api = Guards::new(client);
    let bindings = api.bindings().await?;
    // Listed even when no identification stage is declared: one that
    // embeds a stage whose list does not name it is a guard to remove.
    let identification_stages = api.identification_stages().await?;
    let slugs: std::collections::BTreeSet<&str> = desired
        .iter()
        .flat_map(|d| d.guards.iter().flatten())
        .filter_map(|g| match &g.guard {
            Guard::Flow { slug, .. } => Some(slug.as_str()),
            Guard::IdentificationStage { .. } => None,
        })
        .collect();
    let flows = api.flows(&slugs).await?;
    Ok(LiveGuards {
        flows,
        bindings,
        identification_stages,
    })
}

/// Fetches live state from authentik and plans `desired` against it, with
/// `keys` as the record of keys and without prune: the library's short way to
/// a plan (what the property tests drive).
pub async fn fetch_and_plan(
    client: &Client,
    desired: Vec<DesiredStage>,
    keys: &KeyState,
) -> Result<Planned, ApiError> {
    let session = Session::new(
        client.clone(),
        State::ReadOnly {
            path: PathBuf::new(),
            keys: keys.clone(),
            inventory: Inventory::default(),
        },
        Policy::default(),
    );
    session
        .fetch_and_plan(desired, PruneSettings::default(), true)
        .await
}

/// Brings the inventory up to date after a pass or an apply: managed stages
/// no longer live are dropped; a stage a manifest matched is adopted when it
/// was in sync already or its write succeeded (a write that failed, was
/// abandoned or was held back does not make it managed: removing its manifest
/// must not propose deleting a stage stagesync never got to write); every
/// stage created is recorded as such; every deleted (or found gone) stage is
/// dropped. Guards alike: one in sync or written is managed, one removed
/// (unbound, or made to embed no captcha) or no longer live is dropped.
/// Returns whether anything changed.
pub(crate) fn record_inventory(
    inventory: &mut Inventory,
    plan: &Plan,
    live: &[LiveStage],
    guards: Option<&LiveGuards>,
    report: Option<&ApplyReport>,
) -> bool {
    let before = inventory.clone();
    for uuid in prune::gone(inventory, live) {
        inventory.forget(uuid);
    }
    if let Some(guards) = guards {
        for uuid in prune::guards_gone(inventory, guards) {
            inventory.forget(uuid);
        }
    }
    // Only stages that are live now: a saved plan's in-sync entry may name a
    // stage deleted since (it is left alone, not adopted again).
    let live_guards = guards.map(prune::live_guards).unwrap_or_default();
    let is_live = |kind: Kind, uuid: Uuid| match kind {
        Kind::CaptchaStage => live.iter().any(|l| l.uuid == uuid),
        Kind::Guard => live_guards.contains(&uuid),
    };
    for entry in plan.manifest_entries() {
        if let Action::InSync { uuid } = entry.action
            && entry.kind.inventoried()
            && is_live(entry.kind, uuid)
        {
            inventory.manage(entry.kind, uuid, &entry.name, ManagedAs::Adopted);
        }
    }
    for outcome in report
        .into_iter()
        .flat_map(|r| &r.outcomes)
        .filter(|o| o.kind.inventoried())
    {
        let removes = plan
            .entry(outcome.entry)
            .and_then(|e| e.action.write())
            .is_some_and(|w| matches!(&w.object, Object::Guard(g) if guard::matching::removes(g)));
        match &outcome.result {
            Ended::Written(written) if removes => inventory.forget(written.uuid),
            Ended::Written(written) => {
                let how = match outcome.operation {
                    Operation::Create => ManagedAs::Created,
                    Operation::Update | Operation::Delete => ManagedAs::Adopted,
                };
                inventory.manage(outcome.kind, written.uuid, &outcome.name, how);
            }
            Ended::Deleted { .. } => {
                if let Some(uuid) = plan.entry(outcome.entry).and_then(|e| e.uuid()) {
                    inventory.forget(uuid);
                }
            }
            Ended::InUse(_) | Ended::Failed(_) | Ended::Skipped(_) => {}
        }
    }
    *inventory != before
}
