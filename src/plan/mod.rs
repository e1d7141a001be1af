//! Planning: a pure function of (desired objects, live objects, recorded key
//! fingerprints, what may be pruned) to a [`Plan`], and its renderings
//! ([`render_text`], [`render_json`], [`render_markdown`]). No I/O, no clock:
//! `apply` executes a plan, it does not decide one.
//!
//! Written once for every kind: which live object a manifest means is the
//! kind's own rule ([`crate::kinds::captcha::matching`]); comparing, writing,
//! deleting and waiting are the same for all.
//!
//! # The contract with `apply`
//!
//! A [`Plan`] is one list of [`Entry`]s, each with a stable [`EntryId`] (its
//! position): first one per manifest, in input order, then one per managed
//! object no manifest declares any more (a delete, decided by [`prune`]). An
//! entry that acts holds everything [`crate::apply::apply`] needs: its
//! [`Action`] says what ([`Action::target`]), a write carries a [`Write`] (the
//! object to send, normalised and cut to what the server knows, and its
//! resolved secret), and [`Entry::after`] says which entries must succeed
//! first and why ([`Dependency`]). `apply` never looks back at the
//! manifests, the live objects or the planner's inputs, so a plan can be
//! applied as it was shown.
//!
//! Dependencies are how everything is ordered, across kinds too:
//! - a write that takes a name another entry's rename frees waits for that
//!   rename ([`Why::FreesName`]);
//! - a delete waits for every create and update ([`Dependency::EveryWrite`]):
//!   a manifest renamed without a pin is a create plus a delete, and deleting
//!   the old object when the new one failed would leave neither;
//! - a pruned stage's delete also waits for the removal of each of its own
//!   guards ([`Why::RemovesGuard`]); those removals wait for every write, and
//!   are made only when the delete is (a delete held back holds them too).
//!
//! If an entry it waits for is not made (failed, held back, cancelled),
//! `apply` skips it and says why.
//!
//! A delete that may not be made is still an entry, with its reason
//! ([`Held`]: `--prune` not given, in use, held back by a guard); it
//! executes nothing. A saved plan file serialises the entries with their ids;
//! the secret is not serialised (only [`Entry::key_source`]) and is resolved
//! again at apply time, when the plan is made again and compared.
//!
//! # Traps
//! - The private key is write-only: its drift comes from the state file
//!   ([`crate::state::KeyState`]). A stage whose only difference is a rotated
//!   or unknown key is still an `Update`, with no field changes.
//! - Fields the server does not know are neither compared nor shown nor sent
//!   (the field table's `since`), or an old server would show drift forever.

pub(crate) mod key_check;
pub(crate) mod prune;
mod render;
pub mod saved;
mod warnings;

pub(crate) use prune::PruneSettings;
#[cfg(test)]
use render::JSON_FORMAT_VERSION;
pub(crate) use render::{
    MarkdownFit, render_json, render_markdown, render_markdown_fit, render_text,
};
pub(crate) use warnings::{Warning, warnings};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::capabilities::Capabilities;
use crate::drift::ChangedBy;
use crate::kinds::captcha::matching::{self, Matched};
use crate::kinds::captcha::{DesiredStage, LiveStage};
use crate::kinds::field::FieldChange;
use crate::kinds::guard::{
    self,
    matching::{Change as GuardChange, LiveGuards},
};
use crate::kinds::{Kind, Object, Origin};
use crate::secret::{ExposeSecret, KeySource, PrivateKey};
use crate::state::KeyState;
/// Re-exported: plans show it, but it is decided by the key state.
pub use crate::state::KeyStatus;
use key_check::{KeyCheck, KeyProbe};

/// Everything a plan of the manifests' entries is a function of.
pub struct PlanInputs<'a> {
    /// The manifests, private keys resolved.
    pub desired: &'a [DesiredStage],
    /// Every live captcha stage.
    pub live: &'a [LiveStage],
    /// Fingerprints of the keys stagesync last wrote.
    pub keys: &'a KeyState,
    /// Only fields the server knows are compared and shown.
    pub capabilities: Capabilities,
    /// name -> kind (e.g. `identification`) for the names from
    /// [`names_to_check`] that a stage of another type holds.
    pub foreign_names: &'a BTreeMap<String, String>,
}

/// Names a plan may create or rename to that no live captcha stage holds:
/// the caller looks them up among every stage type ([`PlanInputs::foreign_names`]).
pub(crate) use matching::names_to_check;

/// The position of an entry in [`Plan::entries`]; how entries refer to each
/// other (one that waits for another) and how `apply` reports outcomes.
/// Stable for a given plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EntryId(pub usize);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What to do with one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub(crate) id: EntryId,
    pub(crate) kind: Kind,
    /// The desired name, trimmed (a delete: the live name).
    pub name: String,
    /// Where its manifest declares it; `None` for a delete (its manifest is gone).
    pub(crate) origin: Option<Origin>,
    /// Where its secret comes from: what a plan shows instead of the secret.
    /// `None` for a delete, or a kind without a secret.
    pub(crate) key_source: Option<KeySource>,
    pub action: Action,
    /// The entries that must be made first, and why.
    pub(crate) after: Vec<Dependency>,
}

impl Entry {
    /// The live object this entry writes to, matched or deletes, if any.
    pub(crate) fn uuid(&self) -> Option<Uuid> {
        match &self.action {
            Action::Create { .. } => None,
            Action::Update { uuid, .. } | Action::InSync { uuid } | Action::Delete { uuid, .. } => {
                Some(*uuid)
            }
            Action::Error { uuid, .. } => *uuid,
        }
    }

    /// Whether a manifest declares this entry (every entry but a delete).
    pub(crate) fn is_manifest(&self) -> bool {
        self.origin.is_some()
    }

    /// Whether this entry removes a guard of a pruned stage, before its
    /// delete ([`Plan::add_deletes`]): the only guard entries no manifest
    /// declares.
    pub(crate) fn is_guard_removal(&self) -> bool {
        self.kind == Kind::Guard && !self.is_manifest()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A new object; `key` is always [`KeyStatus::Unknown`].
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
    /// Nothing will be written for this object.
    Error {
        uuid: Option<Uuid>,
        message: String,
    },
    /// A managed object no manifest declares any more. Deleted unless `held`
    /// says why not.
    Delete {
        uuid: Uuid,
        held: Option<Held>,
    },
}

/// Why a delete is not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// `--prune` was not given.
    NotPruned,
    /// Something uses it; `users` in the user's words ("bound to flow `x`").
    InUse { users: Vec<String> },
    /// A guard holds it back (an incomplete or invalid manifest set, the
    /// delete limit, ...); `reason` says which.
    Guard { reason: String },
}

impl Action {
    /// What `apply` does for this action, if anything.
    pub(crate) fn target(&self) -> Option<Target> {
        match self {
            Action::Create { .. } => Some(Target::Create),
            Action::Update { uuid, .. } => Some(Target::Update(*uuid)),
            Action::Delete { uuid, held: None } => Some(Target::Delete(*uuid)),
            Action::InSync { .. } | Action::Error { .. } | Action::Delete { .. } => None,
        }
    }

    /// What a create or an update sends, to complete it (a guard's stage).
    pub(crate) fn write_mut(&mut self) -> Option<&mut Write> {
        match self {
            Action::Create { write, .. } | Action::Update { write, .. } => Some(write),
            _ => None,
        }
    }

    /// What a create or an update sends.
    pub(crate) fn write(&self) -> Option<&Write> {
        match self {
            Action::Create { write, .. } | Action::Update { write, .. } => Some(write),
            _ => None,
        }
    }
}

/// What `apply` does for an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `POST`: a new object; authentik picks its uuid.
    Create,
    /// `PUT` over the live object with this uuid.
    Update(Uuid),
    /// `DELETE` of the live object with this uuid, once nothing uses it.
    Delete(Uuid),
}

impl Target {
    /// The live object it acts on; `None` for a create.
    pub(crate) fn uuid(self) -> Option<Uuid> {
        match self {
            Target::Create => None,
            Target::Update(uuid) | Target::Delete(uuid) => Some(uuid),
        }
    }
}

/// One write, complete: what `apply` sends for an entry, with nothing to look
/// up elsewhere.
#[derive(Clone, Debug)]
pub struct Write {
    /// Normalised, and cut to the fields the server knows.
    pub(crate) object: Object,
    /// The resolved secret (a secret type: never printed). A saved plan does
    /// not store it; it resolves [`Entry::key_source`] again.
    pub(crate) secret: Option<PrivateKey>,
}

/// Equal when they would send the same thing (the secrets are compared too).
impl PartialEq for Write {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object
            && self.secret.as_ref().map(|k| k.expose_secret())
                == other.secret.as_ref().map(|k| k.expose_secret())
    }
}

/// An entry waits for another: the other must be made first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dependency {
    /// Entry `on` must be made first, for the reason `why`.
    Entry { on: EntryId, why: Why },
    /// Every create and update of the plan must be made first (deletes).
    EveryWrite,
}

/// Why an entry waits for another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The other renames its object away from the name this one takes.
    FreesName,
    /// The other creates the captcha stage this guard binds or embeds.
    CreatesStage,
    /// The other removes a guard of the stage this entry deletes (prune):
    /// the stage is deleted once nothing of its own uses it.
    RemovesGuard,
}

/// A live object no manifest names (and that is not managed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Unmanaged {
    #[serde(skip)]
    pub(crate) kind: Kind,
    pub(crate) uuid: Uuid,
    pub(crate) name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per manifest object in input order, then the deletes.
    pub entries: Vec<Entry>,
    /// Sorted by name.
    pub(crate) unmanaged: Vec<Unmanaged>,
    /// The server the plan was made for: which fields it knows.
    pub(crate) capabilities: Capabilities,
    /// `plan --verify-keys`: the key check of each entry that writes its key
    /// (see [`Plan::key_probes`]). Empty when keys were not checked; the
    /// renderings then show nothing about them.
    pub(crate) key_checks: BTreeMap<EntryId, KeyCheck>,
    /// Who made each drifted entry's object what it is, when the event log
    /// names someone other than stagesync ([`crate::drift`]). Filled after
    /// planning, by [`crate::reconcile::Session::attribute`]; empty otherwise.
    pub(crate) changed_by: BTreeMap<EntryId, ChangedBy>,
    /// Why nobody could be named (the event log cannot be read): said once
    /// for the whole plan, as "changed by: unknown".
    pub(crate) changed_by_unknown: Option<String>,
    /// Drifted entries whose newest event is stagesync's own write: nobody
    /// changed them since; the difference comes from the manifests.
    pub(crate) unchanged_since_written: BTreeSet<EntryId>,
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
    pub(crate) fn entry(&self, id: EntryId) -> Option<&Entry> {
        self.entries.get(id.0)
    }

    /// The entries whose object drifted: an update of a live object, whose
    /// live state differs from the manifest or from what stagesync last
    /// wrote. The ones [`crate::reconcile::Session::attribute`] asks about.
    pub(crate) fn drifted(&self) -> impl Iterator<Item = (EntryId, Kind, Uuid)> + '_ {
        self.manifest_entries().filter_map(|e| match &e.action {
            Action::Update { uuid, .. } => Some((e.id, e.kind, *uuid)),
            _ => None,
        })
    }

    /// The entries a manifest declares (every entry but the deletes), in order.
    pub(crate) fn manifest_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.is_manifest())
    }

    /// The manifest entries in the order plans show them: each stage
    /// followed by its guards (a guard entry is named `<stage> in ...` and
    /// declared in its stage's file), then any guard whose stage has no entry.
    pub(crate) fn shown_entries(&self) -> Vec<&Entry> {
        let (guards, stages): (Vec<&Entry>, Vec<&Entry>) =
            self.manifest_entries().partition(|e| e.kind == Kind::Guard);
        let stage_of = |guard: &Entry| {
            stages
                .iter()
                .filter(|s| {
                    s.origin.as_ref().map(|o| &o.file) == guard.origin.as_ref().map(|o| &o.file)
                        && guard
                            .name
                            .strip_prefix(s.name.as_str())
                            .is_some_and(|rest| rest.starts_with(" in "))
                })
                .max_by_key(|s| s.name.len())
                .map(|s| s.id)
        };
        let owners: Vec<Option<EntryId>> = guards.iter().map(|g| stage_of(g)).collect();
        let mut out = Vec::with_capacity(guards.len() + stages.len());
        for stage in &stages {
            out.push(*stage);
            out.extend(
                guards
                    .iter()
                    .zip(&owners)
                    .filter(|(_, owner)| **owner == Some(stage.id))
                    .map(|(g, _)| *g),
            );
        }
        out.extend(
            guards
                .iter()
                .zip(&owners)
                .filter(|(_, owner)| owner.is_none())
                .map(|(g, _)| *g),
        );
        out
    }

    /// The entries for managed objects no manifest declares (deletes, made or
    /// held), sorted by name; the guards a delete removes first are its own
    /// ([`Plan::removed_with`]), not listed here.
    pub(crate) fn prune_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| !e.is_manifest() && !e.is_guard_removal())
    }

    /// The entries that remove the guards of the stage `delete` deletes,
    /// before it (prune), in order.
    pub(crate) fn removed_with<'a>(&'a self, delete: &'a Entry) -> impl Iterator<Item = &'a Entry> {
        delete.after.iter().filter_map(|d| match d {
            Dependency::Entry {
                on,
                why: Why::RemovesGuard,
            } => self.entry(*on),
            _ => None,
        })
    }

    /// The guard removals that are not to be made: their stage's delete is
    /// not made (held back after planning: a dry run, a freeze, the daemon's
    /// second look) or not in the plan at all (a saved plan's file without
    /// it). A guard is never removed without its stage going.
    pub(crate) fn removals_without_their_delete(&self) -> BTreeSet<EntryId> {
        let acting: BTreeSet<EntryId> = self
            .entries
            .iter()
            .filter(|d| d.action.target().is_some())
            .flat_map(|d| self.removed_with(d).map(|r| r.id))
            .collect();
        self.entries
            .iter()
            .filter(|e| e.is_guard_removal() && !acting.contains(&e.id))
            .map(|e| e.id)
            .collect()
    }

    /// The live object `entry` waits for (it is renamed away from the name
    /// the entry takes), as plans show it.
    pub(crate) fn waits_for(&self, entry: &Entry) -> Option<Uuid> {
        entry.after.iter().find_map(|dependency| match dependency {
            Dependency::Entry {
                on,
                why: Why::FreesName,
            } => self.entry(*on)?.uuid(),
            Dependency::Entry {
                why: Why::CreatesStage | Why::RemovesGuard,
                ..
            }
            | Dependency::EveryWrite => None,
        })
    }

    /// The fields of `kind` the server knows, in display order.
    pub(crate) fn known_fields(&self, kind: Kind) -> Vec<&'static str> {
        kind.known_keys(self.capabilities)
    }

    pub(crate) fn summary(&self) -> Summary {
        let mut s = Summary {
            unmanaged: self.unmanaged.len(),
            warnings: warnings(self).len(),
            ..Summary::default()
        };
        for entry in &self.entries {
            match &entry.action {
                Action::Create { .. } => s.create += 1,
                Action::Update { .. } => s.update += 1,
                Action::InSync { .. } => s.in_sync += 1,
                Action::Error { .. } => s.error += 1,
                Action::Delete { held: None, .. } => s.delete += 1,
                Action::Delete {
                    held: Some(Held::InUse { .. }),
                    ..
                } => s.blocked += 1,
                Action::Delete {
                    held: Some(Held::Guard { .. }),
                    ..
                } => s.held_back += 1,
                Action::Delete {
                    held: Some(Held::NotPruned),
                    ..
                } => s.not_pruned += 1,
            }
        }
        s
    }

    /// What a key check sends for each entry that writes a captcha stage's
    /// key (every such write sends it): the fields as written, so the body is
    /// encoded as this server version would encode it.
    pub(crate) fn key_probes(&self) -> Vec<(EntryId, KeyProbe)> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let write = entry.action.write()?;
                let Object::CaptchaStage(fields) = &write.object else {
                    return None;
                };
                Some((entry.id, KeyProbe::new(fields, write.secret.as_ref()?)))
            })
            .collect()
    }

    /// Whether applying would write or delete anything.
    pub(crate) fn has_changes(&self) -> bool {
        self.entries.iter().any(|e| e.action.target().is_some())
    }

    /// The entries that delete, in order.
    pub(crate) fn deletes(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.action.target(), Some(Target::Delete(_))))
    }

    /// Whether prune was asked for something it may not do (an object in use,
    /// or a guard holding deletes back): the run does not converge.
    pub(crate) fn prune_refused(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.action,
                Action::Delete {
                    held: Some(Held::InUse { .. } | Held::Guard { .. }),
                    ..
                }
            )
        })
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.action, Action::Error { .. }))
    }

    /// The plan as seen by someone without the state file (a CI job checking a
    /// pull request): an object whose only difference is a key stagesync has
    /// no record of counts as in sync. Field drift and rotated keys still show.
    pub(crate) fn ignoring_unknown_keys(mut self) -> Plan {
        for entry in &mut self.entries {
            if let Action::Update {
                uuid,
                changes,
                key: KeyStatus::Unknown,
                ..
            } = &entry.action
                && changes.is_empty()
            {
                entry.action = Action::InSync { uuid: *uuid };
            }
        }
        self
    }

    /// Adds one entry per guard of each stage whose manifest has a `guards`
    /// key ([`guard::matching`]), after the stages' entries and before any
    /// delete: a guard of a stage to be created waits for that create; a
    /// stage that cannot be planned plans no guards. `live` is `None` when no
    /// manifest declares guards (nothing was fetched, nothing is added).
    pub(crate) fn add_guards(
        &mut self,
        desired: &[DesiredStage],
        live: Option<&LiveGuards>,
        live_stages: &[LiveStage],
    ) {
        let Some(live) = live else { return };
        let names: BTreeMap<Uuid, String> = live_stages
            .iter()
            .map(|l| (l.uuid, l.fields.name.trim().to_owned()))
            .collect();
        let stages: Vec<(EntryId, Option<Uuid>)> = self
            .entries
            .iter()
            .filter(|e| e.kind == Kind::CaptchaStage && e.is_manifest())
            .map(|e| (e.id, e.uuid()))
            .collect();
        for (desired, (stage_entry, stage_uuid)) in desired.iter().zip(stages) {
            let Some(guards) = &desired.guards else {
                continue;
            };
            if matches!(self.entries[stage_entry.0].action, Action::Error { .. }) {
                continue;
            }
            let name = desired.fields.name.trim();
            for planned in
                guard::matching::plan_stage(name, stage_uuid, &desired.origin, guards, live, &names)
            {
                let action = guard_action(planned.change);
                let after = if planned.waits_for_stage {
                    vec![Dependency::Entry {
                        on: stage_entry,
                        why: Why::CreatesStage,
                    }]
                } else {
                    Vec::new()
                };
                self.entries.push(Entry {
                    id: EntryId(self.entries.len()),
                    kind: Kind::Guard,
                    name: planned.name,
                    origin: Some(planned.origin),
                    key_source: None,
                    action,
                    after,
                });
            }
        }
    }

    /// Adds `deletes` ([`prune::decide`]) after the manifest entries, each
    /// with the next id and waiting for every write; their objects leave
    /// [`Plan::unmanaged`] (they are managed, only their manifests are gone).
    /// A delete's own guards come just before it, each removal waiting for
    /// every write, and the delete waiting for each removal.
    pub(crate) fn add_deletes(&mut self, deletes: Vec<prune::Decided>) {
        let pruned: BTreeSet<Uuid> = deletes.iter().map(|d| d.uuid).collect();
        self.unmanaged.retain(|u| !pruned.contains(&u.uuid));
        for decided in deletes {
            let mut after = vec![Dependency::EveryWrite];
            for removal in decided.guards {
                // Removals are unbinds and updates only.
                let action @ (Action::Delete { .. } | Action::Update { .. }) =
                    guard_action(removal.change)
                else {
                    continue;
                };
                let id = EntryId(self.entries.len());
                self.entries.push(Entry {
                    id,
                    kind: Kind::Guard,
                    name: removal.name,
                    origin: None,
                    key_source: None,
                    action,
                    after: vec![Dependency::EveryWrite],
                });
                after.push(Dependency::Entry {
                    on: id,
                    why: Why::RemovesGuard,
                });
            }
            let id = EntryId(self.entries.len());
            self.entries.push(Entry {
                id,
                kind: decided.kind,
                name: decided.name,
                origin: None,
                key_source: None,
                action: Action::Delete {
                    uuid: decided.uuid,
                    held: decided.held,
                },
                after,
            });
        }
    }
}

/// The plan action of what one guard needs.
fn guard_action(change: GuardChange) -> Action {
    let write = |write| Write {
        object: Object::Guard(write),
        secret: None,
    };
    match change {
        GuardChange::InSync { uuid } => Action::InSync { uuid },
        GuardChange::Bind { write: w } => Action::Create {
            write: write(w),
            key: KeyStatus::Unchanged,
        },
        GuardChange::Update {
            uuid,
            changes,
            write: w,
        } => Action::Update {
            uuid,
            changes,
            write: write(w),
            key: KeyStatus::Unchanged,
        },
        GuardChange::Unbind { uuid } => Action::Delete { uuid, held: None },
        GuardChange::Error { uuid, message } => Action::Error { uuid, message },
    }
}

/// Compares desired with live: one entry per manifest (see
/// [`crate::kinds::captcha::matching`] for which live stage each means).
pub fn plan(inputs: &PlanInputs) -> Plan {
    let (matched, claimed) = matching::match_all(inputs.desired, inputs.live, inputs.foreign_names);
    let live_by_uuid: BTreeMap<Uuid, &LiveStage> =
        inputs.live.iter().map(|l| (l.uuid, l)).collect();
    let entries = inputs
        .desired
        .iter()
        .zip(matched)
        .enumerate()
        .map(|(i, (desired, matched))| {
            let (action, after) = match matched {
                Matched::Live { uuid, after } => match live_by_uuid.get(&uuid) {
                    Some(live) => (compare(inputs, desired, live), after),
                    None => (
                        Action::Error {
                            uuid: Some(uuid),
                            message: format!("no captcha stage has uuid {uuid}"),
                        },
                        None,
                    ),
                },
                Matched::New { after } => (
                    Action::Create {
                        write: write(inputs, desired),
                        key: KeyStatus::Unknown,
                    },
                    after,
                ),
                Matched::Error { uuid, message, .. } => (Action::Error { uuid, message }, None),
            };
            Entry {
                id: EntryId(i),
                kind: Kind::CaptchaStage,
                name: desired.fields.name.trim().to_owned(),
                origin: Some(desired.origin.clone()),
                key_source: Some(desired.key_source.clone()),
                action,
                after: after
                    .map(|on| Dependency::Entry {
                        on: EntryId(on),
                        why: Why::FreesName,
                    })
                    .into_iter()
                    .collect(),
            }
        })
        .collect();
    Plan::assemble(entries, inputs.live, &claimed, inputs.capabilities)
}

/// The write of `desired`: its fields as they are sent (normalised, cut to
/// what the server knows) and its key.
fn write(inputs: &PlanInputs, desired: &DesiredStage) -> Write {
    Write {
        object: Object::CaptchaStage(
            desired
                .fields
                .clone()
                .normalized()
                .sendable(inputs.capabilities),
        ),
        secret: Some(desired.private_key.clone()),
    }
}

fn compare(inputs: &PlanInputs, desired: &DesiredStage, live: &LiveStage) -> Action {
    let caps = inputs.capabilities;
    let write = write(inputs, desired);
    let Object::CaptchaStage(fields) = &write.object else {
        unreachable!("a captcha stage's write holds its fields")
    };
    let changes = live
        .fields
        .clone()
        .normalized()
        .changes_to(fields, |f| f.known_by(caps));
    let key = inputs.keys.status(live.uuid, &desired.private_key);
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

impl Plan {
    /// The plan of `entries` for a server with `capabilities`: the `live`
    /// captcha stages none of them claims are listed as unmanaged, sorted by name.
    pub(crate) fn assemble(
        entries: Vec<Entry>,
        live: &[LiveStage],
        claimed: &BTreeSet<Uuid>,
        capabilities: Capabilities,
    ) -> Plan {
        let mut unmanaged: Vec<Unmanaged> = live
            .iter()
            .filter(|l| !claimed.contains(&l.uuid))
            .map(|l| Unmanaged {
                kind: Kind::CaptchaStage,
                uuid: l.uuid,
                name: l.fields.name.trim().to_owned(),
            })
            .collect();
        unmanaged.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        Plan {
            entries,
            unmanaged,
            capabilities,
            key_checks: BTreeMap::new(),
            changed_by: BTreeMap::new(),
            changed_by_unknown: None,
            unchanged_since_written: BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests;
