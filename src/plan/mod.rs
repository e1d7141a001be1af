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
//! Traps:
//! - Stage names are unique across *every* stage type. Names this plan would
//!   create or rename to, and that no captcha stage holds, must be looked up by
//!   the caller ([`names_to_check`]) and passed as `foreign_names`; a hit is an
//!   error here rather than a failed write later.
//! - A rename (or a create) may take a name that another managed stage is being
//!   renamed away from in the same plan. That entry has `after: Some(uuid)` and
//!   must be written only once the stage `uuid` has been updated; cycles of
//!   renames (swaps) are errors, since authentik's unique index would refuse
//!   every order.
//! - The private key is write-only: its drift comes from the state file
//!   ([`crate::state::KeyState`]). A stage whose only difference is a rotated or
//!   unknown key is still an `Update`, with no field changes.
//! - Fields the server does not know ([`Capabilities::knows`]) are neither
//!   compared nor shown, or an old server would show drift forever.

mod render;

pub use render::{JSON_FORMAT_VERSION, render_json, render_markdown, render_text};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use uuid::Uuid;

use crate::authentik::Capabilities;
use crate::secret::KeySource;
use crate::stage::{DesiredStage, Field, FieldChange, LiveStage, Origin, StageFields};
use crate::state::KeyState;

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

/// What to do with one manifest's stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StagePlan {
    /// The desired name, trimmed.
    pub name: String,
    pub origin: Origin,
    /// Index into [`PlanInputs::desired`], so `apply` can reach the private key.
    pub desired_index: usize,
    pub key_source: KeySource,
    /// The stage whose update must succeed before this entry is written: it
    /// frees the name this entry takes.
    pub after: Option<Uuid>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A new stage; `key` is always [`KeyStatus::Unknown`].
    Create {
        fields: StageFields,
        key: KeyStatus,
    },
    /// `changes` are live -> desired for the compared fields; may be empty when
    /// only the key differs. `fields` is the full desired state to send.
    Update {
        uuid: Uuid,
        changes: Vec<FieldChange>,
        fields: StageFields,
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

/// What is known about the write-only private key of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key is what stagesync last wrote.
    Unchanged,
    /// stagesync wrote a different key: it will be updated.
    Rotated,
    /// stagesync never wrote this stage's key (or the state file was lost).
    Unknown,
}

/// A live captcha stage no manifest names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unmanaged {
    pub uuid: Uuid,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per desired stage, in the order of the inputs.
    pub stages: Vec<StagePlan>,
    /// Sorted by name.
    pub unmanaged: Vec<Unmanaged>,
    /// The fields the server knows, in display order: what was compared and
    /// what a write sends.
    pub known_fields: Vec<Field>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub in_sync: usize,
    pub error: usize,
    pub unmanaged: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            unmanaged: self.unmanaged.len(),
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
        s
    }

    /// Whether applying would write anything.
    pub fn has_changes(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.action, Action::Create { .. } | Action::Update { .. }))
    }

    pub fn has_errors(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.action, Action::Error { .. }))
    }

    /// The plan as seen by someone without the state file (a CI job checking a
    /// pull request): a stage whose only difference is a key stagesync has no
    /// record of counts as in sync. Field drift and rotated keys still show.
    pub fn ignoring_unknown_keys(mut self) -> Plan {
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
pub fn names_to_check(desired: &[DesiredStage], live: &[LiveStage]) -> Vec<String> {
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
    /// A rename to a name another stage is being renamed away from.
    After(Uuid),
    Blocked(String),
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
            return Rename::Blocked(format!("stage {uuid} is not pinned by a valid manifest"));
        };
        let target = self.names[i].clone();
        if live.fields.name.trim() == target {
            return Rename::Free;
        }
        if !visiting.insert(uuid) {
            return Rename::Blocked(format!(
                "renaming to {target:?} is part of a cycle of renames; authentik's unique names refuse every order, so rename through a temporary name in two steps"
            ));
        }
        let result = if let Some(kind) = self.inputs.foreign_names.get(&target) {
            Rename::Blocked(foreign_message(&target, kind))
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
            Rename::Blocked(format!(
                "name {name:?} is already used by captcha stage {}{why}",
                holder.uuid
            ))
        };
        match self.pin_of.get(&holder.uuid) {
            None if self.pinned.contains(&holder.uuid) => {
                blocked(" (pinned by a manifest in error)")
            }
            None => blocked(""),
            Some(_) => match self.rename(holder.uuid, visiting) {
                Rename::Free | Rename::After(_) => Rename::After(holder.uuid),
                Rename::Blocked(why) => {
                    if why.contains("cycle of renames") {
                        Rename::Blocked(why)
                    } else {
                        blocked(", whose rename away is itself blocked")
                    }
                }
            },
        }
    }

    fn compare(&self, desired: &DesiredStage, live: &LiveStage) -> Action {
        let caps = self.inputs.capabilities;
        let mut fields = desired.fields.clone().normalized();
        let changes = live
            .fields
            .clone()
            .normalized()
            .changes_to(&fields, |f| caps.knows(f));
        if !caps.knows(Field::RequestContentType) {
            fields.request_content_type = None;
        }
        let key = self.inputs.keys.status(live.uuid, &desired.private_key);
        if changes.is_empty() && key == KeyStatus::Unchanged {
            Action::InSync { uuid: live.uuid }
        } else {
            Action::Update {
                uuid: live.uuid,
                changes,
                fields,
                key,
            }
        }
    }

    fn plan_one(&mut self, i: usize) -> (Option<Uuid>, Action, Option<Uuid>) {
        let desired = &self.inputs.desired[i];
        let name = self.names[i].clone();
        if let Some(message) = self.duplicate.get(&i) {
            let uuid = desired
                .uuid
                .or_else(|| self.live_by_name.get(name.as_str()).map(|l| l.uuid));
            return (
                uuid,
                Action::Error {
                    uuid,
                    message: message.clone(),
                },
                None,
            );
        }
        if let Some(uuid) = desired.uuid {
            let Some(live) = self.live_by_uuid.get(&uuid).copied() else {
                let message = format!(
                    "no captcha stage has uuid {uuid}; authentik chooses the uuid of a new stage, so remove the `uuid` line to create it"
                );
                return (
                    None,
                    Action::Error {
                        uuid: Some(uuid),
                        message,
                    },
                    None,
                );
            };
            return match self.rename(uuid, &mut BTreeSet::new()) {
                Rename::Blocked(message) => (
                    Some(uuid),
                    Action::Error {
                        uuid: Some(uuid),
                        message: format!("cannot rename to {name:?}: {message}"),
                    },
                    None,
                ),
                Rename::Free => (Some(uuid), self.compare(desired, live), None),
                Rename::After(after) => (Some(uuid), self.compare(desired, live), Some(after)),
            };
        }
        match self.live_by_name.get(name.as_str()).copied() {
            Some(live) if !self.pinned.contains(&live.uuid) => {
                (Some(live.uuid), self.compare(desired, live), None)
            }
            Some(holder) => match self.freed_by(holder, &name, &mut BTreeSet::new()) {
                Rename::After(after) => (None, self.create(desired), Some(after)),
                Rename::Free => (None, self.create(desired), None),
                Rename::Blocked(message) => (
                    None,
                    Action::Error {
                        uuid: None,
                        message,
                    },
                    None,
                ),
            },
            None => match self.inputs.foreign_names.get(&name) {
                Some(kind) => (
                    None,
                    Action::Error {
                        uuid: None,
                        message: foreign_message(&name, kind),
                    },
                    None,
                ),
                None => (None, self.create(desired), None),
            },
        }
    }

    fn create(&self, desired: &DesiredStage) -> Action {
        let mut fields = desired.fields.clone().normalized();
        if !self.inputs.capabilities.knows(Field::RequestContentType) {
            fields.request_content_type = None;
        }
        Action::Create {
            fields,
            key: KeyStatus::Unknown,
        }
    }
}

/// Compares desired with live; see the module docs for the rules.
pub fn plan(inputs: &PlanInputs) -> Plan {
    let mut planner = Planner::new(inputs);
    let mut claimed: BTreeSet<Uuid> = planner.pinned.clone();
    let mut stages = Vec::with_capacity(inputs.desired.len());
    for (i, desired) in inputs.desired.iter().enumerate() {
        let (matched, action, after) = planner.plan_one(i);
        if let Some(u) = matched {
            claimed.insert(u);
        }
        stages.push(StagePlan {
            name: planner.names[i].clone(),
            origin: desired.origin.clone(),
            desired_index: i,
            key_source: desired.key_source.clone(),
            after,
            action,
        });
    }
    let mut unmanaged: Vec<Unmanaged> = inputs
        .live
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
        known_fields: Field::ALL
            .into_iter()
            .filter(|f| inputs.capabilities.knows(*f))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
