//! Planning: a pure function of (desired stages, live stages, recorded key
//! fingerprints) to a [`Plan`], and its renderings ([`render_text`],
//! [`render_json`], [`render_markdown`]). No I/O, no clock: `apply` executes a
//! plan, it does not decide one.
//!
//! Matching, in this order:
//! 1. A manifest with `uuid` matches the live stage with that uuid; a different
//!    live name is a rename (a change of `name`). A pinned uuid that is not live
//!    is an error for that stage: authentik picks the uuid of a new stage, so the
//!    pin has to go before the stage can be created.
//! 2. A manifest without `uuid` matches the live captcha stage with the same
//!    name (trimmed, case-sensitive, as authentik compares names), unless a
//!    uuid-pinned manifest already claims that live stage.
//! 3. Live captcha stages matched by nothing are `unmanaged`: listed, never touched.
//!
//! # The contract with `apply`
//!
//! A [`Plan`] has one [`StagePlan`] entry per manifest, in input order, each with
//! a stable [`EntryId`] (its position). An entry that writes holds everything
//! [`crate::apply::apply`] needs in its [`Action`]: the write variants carry a
//! [`Write`] (the [`Target`], the fields to send, the resolved private key and
//! the entry it must wait for). `apply` never looks back at the manifests, the
//! live stages or the planner's inputs, so a plan can be applied as it was shown.
//!
//! - [`Write::fields`] are normalised and cut to what the server knows by
//!   [`Capabilities::sendable`], the one place that filter is decided;
//!   [`Plan::capabilities`] says for which server the plan was made.
//! - [`Write::after`] names the entry that must be written first: it frees the
//!   name this write takes. If that entry is not written (failed, held back,
//!   cancelled), `apply` skips this one and says why.
//!
//! Adding an action kind (e.g. a delete for prune): add a variant to [`Action`]
//! (`Delete { uuid }`: no fields, no key) and to [`Target`] (`Delete(uuid)`),
//! count it in [`Summary`] and render it; [`Action::write`] then returns the
//! target with an optional [`Write`] (a delete sends no body), and `apply`
//! gets one more arm where it sends the request. Entry ids, waiting on another
//! entry, skipping dependants and the per-entry outcomes do not change: a
//! create that takes the name of a deleted stage simply has `after` = the
//! delete's id.
//! A saved plan file serialises the entries with their ids; the private key is
//! not serialised (only [`StagePlan::key_source`]) and is resolved again at
//! apply time, and the plan is checked against live state before it is applied.
//!
//! # Traps
//! - Stage names are unique across *every* stage type. Names this plan would
//!   create or rename to, and that no captcha stage holds, must be looked up by
//!   the caller ([`names_to_check`]) and passed as `foreign_names`; a hit is an
//!   error here rather than a failed write later.
//! - A rename (or a create) may take a name that another managed stage is being
//!   renamed away from in the same plan. That entry's write has
//!   `after: Some(id)` of the renaming entry; cycles of renames (swaps) are
//!   errors, since authentik's unique index would refuse every order.
//! - The private key is write-only: its drift comes from the state file
//!   ([`crate::state::KeyState`]). A stage whose only difference is a rotated or
//!   unknown key is still an `Update`, with no field changes.
//! - Fields the server does not know ([`Capabilities::knows`]) are neither
//!   compared nor shown nor sent, or an old server would show drift forever.

pub(crate) mod key_check;
pub(crate) mod prune;
mod render;
pub mod saved;
mod warnings;

pub(crate) use prune::{PruneDecision, PruneEntry, PruneSettings};
#[cfg(test)]
use render::JSON_FORMAT_VERSION;
pub(crate) use render::{render_json, render_markdown, render_text};
pub(crate) use warnings::{Warning, warnings};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::capabilities::Capabilities;
use crate::kinds::Origin;
use crate::kinds::captcha::{DesiredStage, LiveStage, StageFields};
use crate::kinds::field::FieldChange;
use crate::secret::{ExposeSecret, KeySource, PrivateKey};
use crate::state::KeyState;
/// Re-exported: plans show it, but it is decided by the key state.
pub use crate::state::KeyStatus;
use key_check::{KeyCheck, KeyProbe};

/// Everything a plan is a function of.
pub struct PlanInputs<'a> {
    /// The manifests, private keys resolved.
    pub desired: &'a [DesiredStage],
    /// Every live captcha stage.
    pub live: &'a [LiveStage],
    /// Fingerprints of the keys stagesync last wrote.
    pub keys: &'a KeyState,
    /// Only fields the server knows are compared and shown.
    pub capabilities: Capabilities,
    /// name -> kind (e.g. `identification`) for the names from [`names_to_check`]
    /// that a stage of another type holds.
    pub foreign_names: &'a BTreeMap<String, String>,
}

/// The position of an entry in [`Plan::stages`]; how entries refer to each
/// other (a write that waits for another) and how `apply` reports outcomes.
/// Stable for a given plan: a saved plan keeps its entries in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub(crate) struct EntryId(pub usize);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What to do with one manifest's stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StagePlan {
    pub(crate) id: EntryId,
    /// The desired name, trimmed.
    pub name: String,
    pub(crate) origin: Origin,
    /// Where the private key came from: what a plan shows instead of the key.
    pub(crate) key_source: KeySource,
    pub action: Action,
}

impl StagePlan {
    /// The live stage this entry writes to or matched, if any.
    pub(crate) fn uuid(&self) -> Option<Uuid> {
        match &self.action {
            Action::Create { .. } => None,
            Action::Update { uuid, .. } | Action::InSync { uuid } => Some(*uuid),
            Action::Error { uuid, .. } => *uuid,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A new stage; `key` is always [`KeyStatus::Unknown`].
    Create {
        write: Write,
        key: KeyStatus,
    },
    /// `changes` are live -> desired for the compared fields; may be empty when
    /// only the key differs. The write sends the full desired state (PUT).
    Update {
        uuid: Uuid,
        changes: Vec<FieldChange>,
        write: Write,
        key: KeyStatus,
    },
    InSync {
        uuid: Uuid,
    },
    /// Nothing will be written for this stage.
    Error {
        uuid: Option<Uuid>,
        message: String,
    },
}

impl Action {
    /// Where the write goes and what it sends, for the actions that write.
    pub(crate) fn write(&self) -> Option<(Target, &Write)> {
        match self {
            Action::Create { write, .. } => Some((Target::Create, write)),
            Action::Update { uuid, write, .. } => Some((Target::Update(*uuid), write)),
            Action::InSync { .. } | Action::Error { .. } => None,
        }
    }
}

/// Where a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `POST`: a new stage; authentik picks its uuid.
    Create,
    /// `PUT` over the live stage with this uuid.
    Update(Uuid),
}

/// One write, complete: what `apply` sends for an entry, with nothing to look
/// up elsewhere.
#[derive(Clone, Debug)]
pub struct Write {
    /// Normalised, and cut to the fields the server knows
    /// ([`Capabilities::sendable`]).
    pub(crate) fields: StageFields,
    /// The resolved key (a secret type: never printed). A saved plan does not
    /// store it; it resolves [`StagePlan::key_source`] again.
    pub(crate) private_key: PrivateKey,
    /// The entry that must be written first: it renames a stage away from the
    /// name this write takes. If it is not written, neither is this one.
    pub(crate) after: Option<EntryId>,
}

/// Equal when they would send the same thing (the keys are compared too).
impl PartialEq for Write {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
            && self.after == other.after
            && self.private_key.expose_secret() == other.private_key.expose_secret()
    }
}

/// A live captcha stage no manifest names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Unmanaged {
    pub(crate) uuid: Uuid,
    pub(crate) name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per desired stage, in the order of the inputs.
    pub stages: Vec<StagePlan>,
    /// Sorted by name.
    pub(crate) unmanaged: Vec<Unmanaged>,
    /// The fields the server knows, in display order: what was compared and
    /// what a write sends.
    pub(crate) known_fields: Vec<&'static str>,
    /// The server the plan was made for.
    pub(crate) capabilities: Capabilities,
    /// `plan --verify-keys`: the key check of each entry that writes its key
    /// (see [`Plan::key_probes`]). Empty when keys were not checked; the
    /// renderings then show nothing about them.
    pub(crate) key_checks: BTreeMap<EntryId, KeyCheck>,
    /// Managed stages no manifest declares any more, sorted by name, and what
    /// happens to each ([`prune`]); empty until [`Plan::with_prune`]. Deletes
    /// run after every create and update.
    pub(crate) prune: Vec<PruneEntry>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    pub(crate) create: usize,
    pub(crate) update: usize,
    pub(crate) in_sync: usize,
    pub(crate) error: usize,
    pub(crate) unmanaged: usize,
    /// Security-relevant changes ([`warnings`]): a key or the login page's
    /// script moving to another host.
    pub(crate) warnings: usize,
    /// Prune counts: shown (and serialised) only when not zero, so plans
    /// without anything to prune read as before.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) delete: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) blocked: usize,
    /// Held back by a guard.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) held_back: usize,
    /// Not pruned because `--prune` was not given.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) not_pruned: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Plan {
    /// The entry with this id.
    pub(crate) fn entry(&self, id: EntryId) -> Option<&StagePlan> {
        self.stages.get(id.0)
    }

    /// The live stage `entry`'s write waits for (it is renamed away from the
    /// name the write takes), as plans show it.
    pub(crate) fn waits_for(&self, entry: &StagePlan) -> Option<Uuid> {
        let (_, write) = entry.action.write()?;
        self.entry(write.after?)?.uuid()
    }

    pub(crate) fn summary(&self) -> Summary {
        let mut s = Summary {
            unmanaged: self.unmanaged.len(),
            warnings: warnings(self).len(),
            ..Summary::default()
        };
        for stage in &self.stages {
            match stage.action {
                Action::Create { .. } => s.create += 1,
                Action::Update { .. } => s.update += 1,
                Action::InSync { .. } => s.in_sync += 1,
                Action::Error { .. } => s.error += 1,
            }
        }
        for entry in &self.prune {
            match entry.decision {
                PruneDecision::Delete => s.delete += 1,
                PruneDecision::Blocked { .. } => s.blocked += 1,
                PruneDecision::HeldBack { .. } => s.held_back += 1,
                PruneDecision::NotPruned => s.not_pruned += 1,
            }
        }
        s
    }

    /// What a key check sends for each entry that writes (every write sends
    /// the key): the fields as written, so the body is encoded as this server
    /// version would encode it.
    pub(crate) fn key_probes(&self) -> Vec<(EntryId, KeyProbe)> {
        self.stages
            .iter()
            .filter_map(|entry| {
                let (_, write) = entry.action.write()?;
                Some((entry.id, KeyProbe::new(&write.fields, &write.private_key)))
            })
            .collect()
    }

    /// Whether applying would write (or delete) anything.
    pub(crate) fn has_changes(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.action, Action::Create { .. } | Action::Update { .. }))
            || self.deletes().next().is_some()
    }

    /// The stages this plan deletes, in order.
    pub(crate) fn deletes(&self) -> impl Iterator<Item = &PruneEntry> {
        self.prune
            .iter()
            .filter(|e| e.decision == PruneDecision::Delete)
    }

    /// Whether prune was asked for something it may not do (a stage in use,
    /// or a guard holding deletes back): the run does not converge.
    pub(crate) fn prune_refused(&self) -> bool {
        self.prune.iter().any(|e| {
            matches!(
                e.decision,
                PruneDecision::Blocked { .. } | PruneDecision::HeldBack { .. }
            )
        })
    }

    /// Adds the prune decisions ([`prune::decide`]); their stages leave
    /// [`Plan::unmanaged`] (they are managed, only their manifests are gone).
    #[cfg(test)]
    pub(crate) fn with_prune(mut self, entries: Vec<PruneEntry>) -> Plan {
        self.set_prune(entries);
        self
    }

    /// [`Self::with_prune`] in place.
    pub(crate) fn set_prune(&mut self, entries: Vec<PruneEntry>) {
        let pruned: BTreeSet<Uuid> = entries.iter().map(|e| e.uuid).collect();
        self.unmanaged.retain(|u| !pruned.contains(&u.uuid));
        self.prune = entries;
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.action, Action::Error { .. }))
    }

    /// The plan as seen by someone without the state file (a CI job checking a
    /// pull request): a stage whose only difference is a key stagesync has no
    /// record of counts as in sync. Field drift and rotated keys still show.
    pub(crate) fn ignoring_unknown_keys(mut self) -> Plan {
        for stage in &mut self.stages {
            if let Action::Update {
                uuid,
                changes,
                key: KeyStatus::Unknown,
                ..
            } = &stage.action
                && changes.is_empty()
            {
                stage.action = Action::InSync { uuid: *uuid };
            }
        }
        self
    }
}

/// Desired names (trimmed, sorted, deduplicated) that no live captcha stage
/// holds: the names a plan may create or rename to. The caller looks them up
/// among all stage types and passes the hits as `foreign_names`.
pub(crate) fn names_to_check(desired: &[DesiredStage], live: &[LiveStage]) -> Vec<String> {
    let held: BTreeSet<&str> = live.iter().map(|l| l.fields.name.trim()).collect();
    desired
        .iter()
        .map(|d| d.fields.name.trim())
        .filter(|n| !held.contains(n))
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn foreign_message(name: &str, kind: &str) -> String {
    // authentik names a stage type by its verbose name ("Identification
    // Stage"), the simulator by its model ("identification"): both read
    // "an identification stage".
    let kind = kind.trim().to_lowercase();
    let kind = kind.strip_suffix(" stage").unwrap_or(&kind);
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!(
        "name {name:?} is already used by {article} {kind} stage; stage names are unique across all stage types"
    )
}

fn origins(desired: &[DesiredStage], indices: &[usize]) -> String {
    indices
        .iter()
        .map(|&i| {
            let o = &desired[i].origin;
            format!("{}:{}", o.file.display(), o.line)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a pinned manifest's rename can happen, and after which other rename.
#[derive(Clone, Debug)]
enum Rename {
    /// Not a rename, or a rename to a free name.
    Free,
    /// A rename to a name the entry `EntryId` renames its stage away from.
    After(EntryId),
    Blocked(Blocked),
}

/// Why a rename cannot happen.
#[derive(Clone, Debug)]
enum Blocked {
    /// The rename is part of a cycle of renames: every stage on the cycle
    /// reports the cycle itself, not "blocked by a blocked rename".
    Cycle(String),
    /// Any other reason, in the user's words.
    Other(String),
}

impl Blocked {
    fn into_message(self) -> String {
        match self {
            Blocked::Cycle(message) | Blocked::Other(message) => message,
        }
    }
}

/// What the planner decided for one manifest.
struct Decision {
    /// The live stage the manifest matched (claimed: not unmanaged).
    matched: Option<Uuid>,
    action: Action,
}

struct Planner<'a> {
    inputs: &'a PlanInputs<'a>,
    names: Vec<String>,
    live_by_uuid: HashMap<Uuid, &'a LiveStage>,
    live_by_name: HashMap<&'a str, &'a LiveStage>,
    /// Manifests with a duplicate name or uuid, with their error message.
    duplicate: HashMap<usize, String>,
    /// Live uuid -> the one valid manifest pinning it.
    pin_of: HashMap<Uuid, usize>,
    /// Live uuids pinned by any manifest, valid or not.
    pinned: BTreeSet<Uuid>,
    renames: HashMap<Uuid, Rename>,
}

impl<'a> Planner<'a> {
    fn new(inputs: &'a PlanInputs<'a>) -> Self {
        let desired = inputs.desired;
        let names: Vec<String> = desired
            .iter()
            .map(|d| d.fields.name.trim().to_owned())
            .collect();
        let live_by_uuid = inputs.live.iter().map(|l| (l.uuid, l)).collect();
        let live_by_name = inputs
            .live
            .iter()
            .map(|l| (l.fields.name.trim(), l))
            .collect();

        let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut by_uuid: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
        for (i, d) in desired.iter().enumerate() {
            by_name.entry(names[i].as_str()).or_default().push(i);
            if let Some(u) = d.uuid {
                by_uuid.entry(u).or_default().push(i);
            }
        }
        let mut duplicate = HashMap::new();
        for (name, indices) in by_name.iter().filter(|(_, v)| v.len() > 1) {
            let msg = format!(
                "name {name:?} is declared by more than one manifest ({})",
                origins(desired, indices)
            );
            for &i in indices {
                duplicate.insert(i, msg.clone());
            }
        }
        for (uuid, indices) in by_uuid.iter().filter(|(_, v)| v.len() > 1) {
            let msg = format!(
                "uuid {uuid} is pinned by more than one manifest ({})",
                origins(desired, indices)
            );
            for &i in indices {
                duplicate.entry(i).or_insert_with(|| msg.clone());
            }
        }

        let mut planner = Planner {
            inputs,
            names,
            live_by_uuid,
            live_by_name,
            duplicate,
            pin_of: HashMap::new(),
            pinned: BTreeSet::new(),
            renames: HashMap::new(),
        };
        for (i, d) in desired.iter().enumerate() {
            let Some(u) = d.uuid else { continue };
            if planner.live_by_uuid.contains_key(&u) {
                planner.pinned.insert(u);
                if !planner.duplicate.contains_key(&i) {
                    planner.pin_of.insert(u, i);
                }
            }
        }
        planner
    }

    /// Resolves the rename of the live stage `uuid` by its pinning manifest,
    /// following chains of renames; `visiting` detects cycles.
    fn rename(&mut self, uuid: Uuid, visiting: &mut BTreeSet<Uuid>) -> Rename {
        if let Some(r) = self.renames.get(&uuid) {
            return r.clone();
        }
        let (Some(&i), Some(live)) = (self.pin_of.get(&uuid), self.live_by_uuid.get(&uuid)) else {
            return Rename::Blocked(Blocked::Other(format!(
                "stage {uuid} is not pinned by a valid manifest"
            )));
        };
        let target = self.names[i].clone();
        if live.fields.name.trim() == target {
            return Rename::Free;
        }
        if !visiting.insert(uuid) {
            return Rename::Blocked(Blocked::Cycle(format!(
                "renaming to {target:?} is part of a cycle of renames; authentik's unique names refuse every order, so rename through a temporary name in two steps"
            )));
        }
        let result = if let Some(kind) = self.inputs.foreign_names.get(&target) {
            Rename::Blocked(Blocked::Other(foreign_message(&target, kind)))
        } else {
            match self.live_by_name.get(target.as_str()).copied() {
                None => Rename::Free,
                Some(holder) => self.freed_by(holder, &target, visiting),
            }
        };
        visiting.remove(&uuid);
        self.renames.insert(uuid, result.clone());
        result
    }

    /// Whether the live stage `holder`, which holds `name`, is renamed away
    /// from it in this plan.
    fn freed_by(
        &mut self,
        holder: &LiveStage,
        name: &str,
        visiting: &mut BTreeSet<Uuid>,
    ) -> Rename {
        let blocked = |why: &str| {
            Rename::Blocked(Blocked::Other(format!(
                "name {name:?} is already used by captcha stage {}{why}",
                holder.uuid
            )))
        };
        match self.pin_of.get(&holder.uuid) {
            None if self.pinned.contains(&holder.uuid) => {
                blocked(" (pinned by a manifest in error)")
            }
            None => blocked(""),
            Some(&holder_index) => match self.rename(holder.uuid, visiting) {
                Rename::Free | Rename::After(_) => Rename::After(EntryId(holder_index)),
                Rename::Blocked(cycle @ Blocked::Cycle(_)) => Rename::Blocked(cycle),
                Rename::Blocked(Blocked::Other(_)) => {
                    blocked(", whose rename away is itself blocked")
                }
            },
        }
    }

    /// The write of `desired`: its fields as they are sent (normalised, cut to
    /// what the server knows), its key, and the entry it waits for.
    fn write(&self, desired: &DesiredStage, after: Option<EntryId>) -> Write {
        Write {
            fields: desired
                .fields
                .clone()
                .normalized()
                .sendable(self.inputs.capabilities),
            private_key: desired.private_key.clone(),
            after,
        }
    }

    fn compare(&self, desired: &DesiredStage, live: &LiveStage, after: Option<EntryId>) -> Action {
        let caps = self.inputs.capabilities;
        let write = self.write(desired, after);
        let changes = live
            .fields
            .clone()
            .normalized()
            .changes_to(&write.fields, |f| f.known_by(caps));
        let key = self.inputs.keys.status(live.uuid, &desired.private_key);
        if changes.is_empty() && key == KeyStatus::Unchanged {
            Action::InSync { uuid: live.uuid }
        } else {
            Action::Update {
                uuid: live.uuid,
                changes,
                write,
                key,
            }
        }
    }

    fn create(&self, desired: &DesiredStage, after: Option<EntryId>) -> Action {
        Action::Create {
            write: self.write(desired, after),
            key: KeyStatus::Unknown,
        }
    }

    fn plan_one(&mut self, i: usize) -> Decision {
        let desired = &self.inputs.desired[i];
        let name = self.names[i].clone();
        let error = |matched: Option<Uuid>, uuid: Option<Uuid>, message: String| Decision {
            matched,
            action: Action::Error { uuid, message },
        };
        if let Some(message) = self.duplicate.get(&i) {
            let uuid = desired
                .uuid
                .or_else(|| self.live_by_name.get(name.as_str()).map(|l| l.uuid));
            return error(uuid, uuid, message.clone());
        }
        if let Some(uuid) = desired.uuid {
            let Some(live) = self.live_by_uuid.get(&uuid).copied() else {
                let message = format!(
                    "no captcha stage has uuid {uuid}; authentik chooses the uuid of a new stage, so remove the `uuid` line to create it"
                );
                return error(None, Some(uuid), message);
            };
            let after = match self.rename(uuid, &mut BTreeSet::new()) {
                Rename::Blocked(why) => {
                    let message = format!("cannot rename to {name:?}: {}", why.into_message());
                    return error(Some(uuid), Some(uuid), message);
                }
                Rename::Free => None,
                Rename::After(after) => Some(after),
            };
            return Decision {
                matched: Some(uuid),
                action: self.compare(desired, live, after),
            };
        }
        match self.live_by_name.get(name.as_str()).copied() {
            Some(live) if !self.pinned.contains(&live.uuid) => Decision {
                matched: Some(live.uuid),
                action: self.compare(desired, live, None),
            },
            Some(holder) => match self.freed_by(holder, &name, &mut BTreeSet::new()) {
                Rename::After(after) => Decision {
                    matched: None,
                    action: self.create(desired, Some(after)),
                },
                Rename::Free => Decision {
                    matched: None,
                    action: self.create(desired, None),
                },
                Rename::Blocked(why) => error(None, None, why.into_message()),
            },
            None => match self.inputs.foreign_names.get(&name) {
                Some(kind) => error(None, None, foreign_message(&name, kind)),
                None => Decision {
                    matched: None,
                    action: self.create(desired, None),
                },
            },
        }
    }
}

/// Compares desired with live; see the module docs for the rules.
pub fn plan(inputs: &PlanInputs) -> Plan {
    let mut planner = Planner::new(inputs);
    let mut claimed: BTreeSet<Uuid> = planner.pinned.clone();
    let mut stages = Vec::with_capacity(inputs.desired.len());
    for (i, desired) in inputs.desired.iter().enumerate() {
        let Decision { matched, action } = planner.plan_one(i);
        if let Some(u) = matched {
            claimed.insert(u);
        }
        stages.push(StagePlan {
            id: EntryId(i),
            name: planner.names[i].clone(),
            origin: desired.origin.clone(),
            key_source: desired.key_source.clone(),
            action,
        });
    }
    Plan::assemble(stages, inputs.live, &claimed, inputs.capabilities)
}

impl Plan {
    /// The plan of `stages` for a server with `capabilities`: the `live`
    /// stages none of them claims are listed as unmanaged, sorted by name.
    pub(crate) fn assemble(
        stages: Vec<StagePlan>,
        live: &[LiveStage],
        claimed: &BTreeSet<Uuid>,
        capabilities: Capabilities,
    ) -> Plan {
        let mut unmanaged: Vec<Unmanaged> = live
            .iter()
            .filter(|l| !claimed.contains(&l.uuid))
            .map(|l| Unmanaged {
                uuid: l.uuid,
                name: l.fields.name.trim().to_owned(),
            })
            .collect();
        unmanaged.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        Plan {
            stages,
            unmanaged,
            known_fields: StageFields::known_keys(capabilities),
            capabilities,
            key_checks: BTreeMap::new(),
            prune: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
