//! What stagesync knows of each key it wrote ([`KeyState`]), and the
//! write-ahead marks that keep it true while a write is in flight. Pure.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::fingerprint::Fingerprint;
use crate::secret::PrivateKey;

/// What is known about the write-only private key of a stage, from its
/// entry in [`KeyState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key is what stagesync last wrote.
    Unchanged,
    /// stagesync wrote a different key: it will be updated.
    Rotated,
    /// stagesync never wrote this stage's key, a write of it was interrupted
    /// or failed, or the state file (or its entry) was lost or damaged.
    Unknown,
}

/// What the state file says about one stage's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    /// authentik confirmed it stored the key with this fingerprint.
    Written(Fingerprint),
    /// A write changing the key was sent (or about to be); its answer was not seen.
    InFlight,
    /// An entry that cannot be read, kept as it was in the file.
    Damaged { raw: Value, problem: String },
}

impl Entry {
    pub(super) fn from_value(raw: Value) -> Entry {
        if let Some(object) = raw.as_object()
            && object.len() == 1
            && object.get("in_flight") == Some(&Value::Bool(true))
        {
            return Entry::InFlight;
        }
        let problem = match serde_json::from_value::<Fingerprint>(raw.clone()) {
            Ok(fingerprint) => match fingerprint.problem() {
                None => return Entry::Written(fingerprint),
                Some(problem) => problem.to_owned(),
            },
            Err(_) => "it is neither a fingerprint (salt, sha256) nor an in-flight mark".to_owned(),
        };
        Entry::Damaged { raw, problem }
    }

    pub(super) fn to_value(&self) -> Value {
        match self {
            Entry::Written(fingerprint) => serde_json::to_value(fingerprint).unwrap_or(Value::Null),
            Entry::InFlight => serde_json::json!({ "in_flight": true }),
            Entry::Damaged { raw, .. } => raw.clone(),
        }
    }
}

/// What [`KeyState::mark_in_flight`] replaced, for [`KeyState::unmark`].
#[derive(Debug)]
pub(crate) struct KeyMark {
    uuid: Uuid,
    previous: Option<Entry>,
}

/// What stagesync knows of the keys it wrote, per stage uuid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    pub(super) stages: BTreeMap<Uuid, Entry>,
}

impl KeyState {
    /// Whether `key` is what authentik holds for stage `uuid`, as far as
    /// stagesync knows.
    pub(crate) fn status(&self, uuid: Uuid, key: &PrivateKey) -> KeyStatus {
        match self.stages.get(&uuid) {
            Some(Entry::Written(fp)) if fp.matches(key) => KeyStatus::Unchanged,
            Some(Entry::Written(_)) => KeyStatus::Rotated,
            None | Some(Entry::InFlight | Entry::Damaged { .. }) => KeyStatus::Unknown,
        }
    }

    /// Remembers that authentik confirmed it stored `key` on stage `uuid`
    /// (with a fresh salt).
    pub fn record(&mut self, uuid: Uuid, key: &PrivateKey) {
        self.stages
            .insert(uuid, Entry::Written(Fingerprint::new(key)));
    }

    /// Marks stage `uuid`'s key as being written: it reads as unknown until
    /// [`KeyState::record`]. Save the file after this and before sending.
    pub(crate) fn mark_in_flight(&mut self, uuid: Uuid) -> KeyMark {
        KeyMark {
            uuid,
            previous: self.stages.insert(uuid, Entry::InFlight),
        }
    }

    /// Takes a mark back: the write was not sent after all (cancelled before
    /// it started), so what was known before still holds.
    pub(crate) fn unmark(&mut self, mark: KeyMark) {
        if self.stages.get(&mark.uuid) == Some(&Entry::InFlight) {
            match mark.previous {
                Some(previous) => self.stages.insert(mark.uuid, previous),
                None => self.stages.remove(&mark.uuid),
            };
        }
    }

    pub(crate) fn forget(&mut self, uuid: Uuid) {
        self.stages.remove(&uuid);
    }

    /// The entries that could not be read, and why. Each reads as unknown.
    pub(crate) fn damaged(&self) -> impl Iterator<Item = (Uuid, &str)> {
        self.stages.iter().filter_map(|(uuid, entry)| match entry {
            Entry::Damaged { problem, .. } => Some((*uuid, problem.as_str())),
            _ => None,
        })
    }

    /// One line per damaged entry, naming the file (given as `path`), for
    /// stderr or the log.
    pub(crate) fn damage_report<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = String> + 'a {
        self.damaged().map(move |(uuid, problem)| {
            format!(
                "state file {}: the entry of stage {uuid} is damaged ({problem}); its key reads as unknown and the next apply writes it again",
                path.display()
            )
        })
    }

    /// The stages whose key write was never answered.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.stages
            .iter()
            .filter(|(_, e)| matches!(e, Entry::InFlight))
            .map(|(uuid, _)| *uuid)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stages.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}
