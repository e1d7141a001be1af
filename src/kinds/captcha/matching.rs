//! Which live captcha stage each manifest means (the kind's identity), and
//! which renames must wait for which. Pure: the planner ([`crate::plan`])
//! turns each [`Matched`] into an entry of the plan.
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
//! - Stage names are unique across *every* stage type. Names a plan would
//!   create or rename to, and that no captcha stage holds, must be looked up by
//!   the caller ([`names_to_check`]) and passed as `foreign_names`; a hit is an
//!   error here rather than a failed write later.
//! - A rename (or a create) may take a name that another managed stage is being
//!   renamed away from in the same plan: it is matched with `after` naming that
//!   manifest, and waits for its write. Cycles of renames (swaps) are errors,
//!   since authentik's unique index would refuse every order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::{DesiredStage, LiveStage};

/// What one manifest means. `after` is the index of the manifest whose
/// rename frees the name this one takes: its write must come first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Matched {
    /// The live stage `uuid`: compared field by field.
    Live { uuid: Uuid, after: Option<usize> },
    /// A new stage.
    New { after: Option<usize> },
    /// It cannot be planned. `uuid` is the live stage shown with the error;
    /// `claims` the live stage it keeps from being taken by another manifest
    /// or listed as unmanaged.
    Error {
        uuid: Option<Uuid>,
        claims: Option<Uuid>,
        message: String,
    },
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

/// What each of `desired` means among `live` (in input order), and every live
/// stage a manifest claims (matched or pinned): the others are unmanaged.
/// `foreign_names` is name -> kind for the names a stage of another type holds.
pub(crate) fn match_all(
    desired: &[DesiredStage],
    live: &[LiveStage],
    foreign_names: &BTreeMap<String, String>,
) -> (Vec<Matched>, BTreeSet<Uuid>) {
    let mut matcher = Matcher::new(desired, live, foreign_names);
    let mut claimed = matcher.pinned.clone();
    let mut out = Vec::with_capacity(desired.len());
    for i in 0..desired.len() {
        let matched = matcher.match_one(i);
        match &matched {
            Matched::Live { uuid, .. } => {
                claimed.insert(*uuid);
            }
            Matched::Error {
                claims: Some(uuid), ..
            } => {
                claimed.insert(*uuid);
            }
            Matched::New { .. } | Matched::Error { claims: None, .. } => {}
        }
        out.push(matched);
    }
    (out, claimed)
}

/// `name "x" is already used by an identification stage; ...`.
pub(crate) fn foreign_message(name: &str, kind: &str) -> String {
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
    /// A rename to a name the manifest at this index renames its stage away from.
    After(usize),
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

struct Matcher<'a> {
    desired: &'a [DesiredStage],
    foreign_names: &'a BTreeMap<String, String>,
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

impl<'a> Matcher<'a> {
    fn new(
        desired: &'a [DesiredStage],
        live: &'a [LiveStage],
        foreign_names: &'a BTreeMap<String, String>,
    ) -> Self {
        let names: Vec<String> = desired
            .iter()
            .map(|d| d.fields.name.trim().to_owned())
            .collect();
        let live_by_uuid = live.iter().map(|l| (l.uuid, l)).collect();
        let live_by_name = live.iter().map(|l| (l.fields.name.trim(), l)).collect();

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

        let mut matcher = Matcher {
            desired,
            foreign_names,
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
            if matcher.live_by_uuid.contains_key(&u) {
                matcher.pinned.insert(u);
                if !matcher.duplicate.contains_key(&i) {
                    matcher.pin_of.insert(u, i);
                }
            }
        }
        matcher
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
        let result = if let Some(kind) = self.foreign_names.get(&target) {
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
                Rename::Free | Rename::After(_) => Rename::After(holder_index),
                Rename::Blocked(cycle @ Blocked::Cycle(_)) => Rename::Blocked(cycle),
                Rename::Blocked(Blocked::Other(_)) => {
                    blocked(", whose rename away is itself blocked")
                }
            },
        }
    }

    fn match_one(&mut self, i: usize) -> Matched {
        let desired = &self.desired[i];
        let name = self.names[i].clone();
        let error = |claims: Option<Uuid>, uuid: Option<Uuid>, message: String| Matched::Error {
            uuid,
            claims,
            message,
        };
        if let Some(message) = self.duplicate.get(&i) {
            let uuid = desired
                .uuid
                .or_else(|| self.live_by_name.get(name.as_str()).map(|l| l.uuid));
            return error(uuid, uuid, message.clone());
        }
        if let Some(uuid) = desired.uuid {
            if !self.live_by_uuid.contains_key(&uuid) {
                let message = format!(
                    "no captcha stage has uuid {uuid}; authentik chooses the uuid of a new stage, so remove the `uuid` line to create it"
                );
                return error(None, Some(uuid), message);
            }
            return match self.rename(uuid, &mut BTreeSet::new()) {
                Rename::Blocked(why) => {
                    let message = format!("cannot rename to {name:?}: {}", why.into_message());
                    error(Some(uuid), Some(uuid), message)
                }
                Rename::Free => Matched::Live { uuid, after: None },
                Rename::After(after) => Matched::Live {
                    uuid,
                    after: Some(after),
                },
            };
        }
        match self.live_by_name.get(name.as_str()).copied() {
            Some(live) if !self.pinned.contains(&live.uuid) => Matched::Live {
                uuid: live.uuid,
                after: None,
            },
            Some(holder) => match self.freed_by(holder, &name, &mut BTreeSet::new()) {
                Rename::After(after) => Matched::New { after: Some(after) },
                Rename::Free => Matched::New { after: None },
                Rename::Blocked(why) => error(None, None, why.into_message()),
            },
            None => match self.foreign_names.get(&name) {
                Some(kind) => error(None, None, foreign_message(&name, kind)),
                None => Matched::New { after: None },
            },
        }
    }
}
