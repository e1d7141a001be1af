//! The inventory: the objects stagesync manages, by kind and uuid. Prune only
//! ever considers these; an object no manifest ever named (clicked together in
//! the UI) is never in it. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kinds::Kind;

/// How an object came to be managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ManagedAs {
    /// stagesync created it.
    Created,
    /// It existed and a manifest matched it (by name or pinned uuid).
    Adopted,
}

/// An object stagesync manages, as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Managed {
    /// Its kind; files written before kinds existed hold captcha stages only,
    /// so an entry without one is a captcha stage.
    #[serde(default)]
    pub(crate) kind: Kind,
    /// Its name when last created, matched or written.
    pub(crate) name: String,
    pub(crate) managed_as: ManagedAs,
}

/// The objects stagesync manages: created by it or matched by a manifest.
/// Keyed by uuid (authentik's uuids are unique across kinds), each entry
/// saying its kind; [`Inventory::contains`] asks for both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Inventory {
    objects: BTreeMap<Uuid, Managed>,
}

impl Inventory {
    /// Records `uuid`, of `kind`, as managed under `name`. An object once
    /// created stays `Created` when it is matched later.
    pub(crate) fn manage(&mut self, kind: Kind, uuid: Uuid, name: &str, managed_as: ManagedAs) {
        let managed_as = match self.objects.get(&uuid) {
            Some(known) if known.managed_as == ManagedAs::Created => ManagedAs::Created,
            _ => managed_as,
        };
        self.objects.insert(
            uuid,
            Managed {
                kind,
                name: name.trim().to_owned(),
                managed_as,
            },
        );
    }

    /// Drops `uuid` (deleted, or found gone).
    pub(crate) fn forget(&mut self, uuid: Uuid) {
        self.objects.remove(&uuid);
    }

    /// The managed object `uuid`, if it is managed.
    pub(crate) fn get(&self, uuid: Uuid) -> Option<&Managed> {
        self.objects.get(&uuid)
    }

    /// Whether the object `uuid` of `kind` is managed.
    pub(crate) fn contains(&self, kind: Kind, uuid: Uuid) -> bool {
        self.objects.get(&uuid).is_some_and(|m| m.kind == kind)
    }

    /// The managed objects of `kind`.
    pub(crate) fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (Uuid, &Managed)> {
        self.objects
            .iter()
            .filter(move |(_, m)| m.kind == kind)
            .map(|(u, m)| (*u, m))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_a_file_from_before_kinds_is_a_captcha_stage() {
        let read: Inventory = serde_json::from_value(serde_json::json!({
            "4741ba6c-5e37-4168-9f01-ea1b2ec8f560": {"name": "old", "managed_as": "created"}
        }))
        .unwrap();
        let uuid = Uuid::parse_str("4741ba6c-5e37-4168-9f01-ea1b2ec8f560").unwrap();
        assert!(read.contains(Kind::CaptchaStage, uuid));
        assert_eq!(read.of_kind(Kind::CaptchaStage).count(), 1);
        let written = serde_json::to_value(&read).unwrap();
        assert_eq!(
            written[uuid.to_string()]["kind"],
            "captcha_stage",
            "written with its kind"
        );
    }

    #[test]
    fn a_created_object_stays_created_when_matched_later() {
        let mut inventory = Inventory::default();
        let uuid = Uuid::from_u128(1);
        inventory.manage(Kind::CaptchaStage, uuid, " made ", ManagedAs::Created);
        inventory.manage(Kind::CaptchaStage, uuid, "made", ManagedAs::Adopted);
        let managed = inventory.get(uuid).unwrap();
        assert_eq!(
            (managed.name.as_str(), managed.managed_as),
            ("made", ManagedAs::Created)
        );
        inventory.forget(uuid);
        assert!(inventory.is_empty());
    }
}
