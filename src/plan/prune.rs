//! Prune: which managed objects a run deletes, and why each other one is not
//! deleted. Pure: the caller asks authentik's `used_by` for the candidates and
//! passes the answers in; the decisions become the plan's delete entries
//! ([`super::Plan::add_deletes`]), each with its [`Held`] reason when it is
//! not made.
//!
//! The rules, in order:
//! 1. Only stages in the [`Inventory`] (created by stagesync, or matched by a
//!    manifest once) are ever considered. A live stage no manifest ever named
//!    stays unmanaged, whatever the flags.
//! 2. A candidate is a managed, live stage that no manifest matches, names or
//!    pins ([`candidates`]). A managed stage that is no longer live is gone
//!    ([`gone`]): the caller drops it from the inventory.
//! 3. Without `--prune` a candidate is [`Held::NotPruned`].
//! 4. With `--prune`, nothing is deleted unless the manifest set was read
//!    completely and is valid, it declares at least one stage (an empty
//!    directory is a checkout in progress or a lost mount, not "delete
//!    everything"), and the live list is complete: every candidate is then
//!    [`Held::Guard`] with the reason.
//! 5. A candidate that anything uses (`used_by` not empty: a flow binding, an
//!    identification stage embedding it, ...) is [`Held::InUse`],
//!    naming the users: authentik's delete would silently unbind it or strip
//!    the captcha from a login form. A candidate whose `used_by` answer is
//!    missing is held back: no delete without asking. Its own guards do not
//!    count ([`own_guards`]): the bindings and embeddings of it that
//!    stagesync made or kept (they are in the inventory), which the plan
//!    removes first when the stage is deleted. Any other user holds it.
//! 6. The delete guard: at most [`PruneSettings::limit`] deletes per run
//!    (`--max-deletes N`, or 25% of the managed stages, at least 1). Beyond
//!    it, nothing is deleted and every would-be delete is held back, saying
//!    why.
//!
//! Trap: the guard counts only deletes that would happen (not blocked ones),
//! and counts the managed stages that are live before this run.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{Held, Plan};
use crate::kinds::captcha::{DesiredStage, LiveStage};
use crate::kinds::guard::{self, matching::Change as GuardChange, matching::LiveGuards};
use crate::kinds::{Kind, UsedBy};
use crate::state::Inventory;

/// The operator's prune flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PruneSettings {
    /// `--prune`.
    pub(crate) enabled: bool,
    /// `--max-deletes N`; `None` = the default share.
    pub(crate) max_deletes: Option<usize>,
    /// The limit is the number of deletes a saved plan holds (`apply --plan`),
    /// not a flag the operator passed: a refusal says so.
    pub(crate) from_plan_file: bool,
}

/// The default guard: a run deletes at most this share of the managed stages
/// (octoDNS-style), and at least one.
pub(crate) const DEFAULT_MAX_DELETE_PERCENT: usize = 25;

impl PruneSettings {
    /// How many deletes one run may make, given `managed` live managed stages.
    pub(crate) fn limit(&self, managed: usize) -> usize {
        self.max_deletes
            .unwrap_or_else(|| (managed * DEFAULT_MAX_DELETE_PERCENT / 100).max(1))
    }
}

/// Everything a prune decision is a function of.
pub(crate) struct PruneInputs<'a> {
    pub(crate) inventory: &'a Inventory,
    /// Every live captcha stage.
    pub(crate) live: &'a [LiveStage],
    pub(crate) desired: &'a [DesiredStage],
    /// The plan of `desired` against `live` (its matched stages are kept).
    pub(crate) plan: &'a Plan,
    /// `used_by` per candidate, as authentik answered, without its own
    /// guards ([`without_removed_guards`]).
    pub(crate) used_by: &'a BTreeMap<Uuid, Vec<UsedBy>>,
    /// The own guards of each candidate ([`own_guards`]): removed first
    /// when it is deleted.
    pub(crate) guards: &'a BTreeMap<Uuid, Vec<Removal>>,
    /// Every manifest was read and is valid.
    pub(crate) manifests_complete: bool,
    /// The live list was read to its last page.
    pub(crate) live_complete: bool,
    pub(crate) settings: PruneSettings,
}

/// What happens to one managed object whose manifest is gone: deleted, or
/// `held` and why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decided {
    pub(crate) kind: Kind,
    pub(crate) uuid: Uuid,
    /// Its live name.
    pub(crate) name: String,
    pub(crate) held: Option<Held>,
    /// What removes its own guards before it is deleted (only when it is).
    pub(crate) guards: Vec<Removal>,
}

/// One guard of a pruned stage and what removes it: an unbind, or an
/// identification stage made to embed no captcha.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Removal {
    /// The guard's entry name: `<stage> in flow <slug>`.
    pub(crate) name: String,
    pub(crate) change: GuardChange,
}

impl Removal {
    /// The binding or identification stage it writes to.
    pub(crate) fn uuid(&self) -> Option<Uuid> {
        match &self.change {
            GuardChange::Unbind { uuid } | GuardChange::Update { uuid, .. } => Some(*uuid),
            _ => None,
        }
    }
}

/// The guards of the candidate `stage` that stagesync made or kept: each
/// live binding and embedding of it that the inventory records under the
/// same name, stage and target (a binding moved to this stage or to another
/// flow in the UI, or an identification stage made to embed it, is someone
/// else's), and that no manifest entry of `plan` writes (an identification
/// stage another captcha now takes over is that one's). What its delete
/// removes first; any other user keeps the stage.
pub(crate) fn own_guards(
    inventory: &Inventory,
    stage: &LiveStage,
    live: &LiveGuards,
    plan: &Plan,
) -> Vec<Removal> {
    let declared: BTreeSet<Uuid> = plan
        .manifest_entries()
        .filter(|e| e.kind == Kind::Guard)
        .filter_map(|e| e.uuid())
        .collect();
    guard::matching::removals(stage.fields.name.trim(), stage.uuid, live)
        .into_iter()
        .map(|(name, change)| Removal { name, change })
        .filter(|r| {
            r.uuid().is_some_and(|uuid| {
                !declared.contains(&uuid)
                    && inventory
                        .get(uuid)
                        .is_some_and(|m| m.kind == Kind::Guard && m.name == r.name)
            })
        })
        .collect()
}

/// Managed, live stages that no manifest matches, names or pins: the only
/// stages prune may delete. Sorted by name.
pub(crate) fn candidates<'a>(
    inventory: &Inventory,
    live: &'a [LiveStage],
    desired: &[DesiredStage],
    plan: &Plan,
) -> Vec<&'a LiveStage> {
    let matched: BTreeSet<Uuid> = plan.manifest_entries().filter_map(|e| e.uuid()).collect();
    let pinned: BTreeSet<Uuid> = desired.iter().filter_map(|d| d.uuid).collect();
    let named: BTreeSet<&str> = desired.iter().map(|d| d.fields.name.trim()).collect();
    let mut out: Vec<&LiveStage> = live
        .iter()
        .filter(|l| inventory.contains(Kind::CaptchaStage, l.uuid))
        .filter(|l| !matched.contains(&l.uuid) && !pinned.contains(&l.uuid))
        .filter(|l| !named.contains(l.fields.name.trim()))
        .collect();
    out.sort_by(|a, b| a.fields.name.cmp(&b.fields.name).then(a.uuid.cmp(&b.uuid)));
    out
}

/// Bindings and identification stages that are removed (unbound, or made
/// to embed another captcha or none), by the pk `used_by` names them with.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Removed {
    unbound: BTreeSet<String>,
    reembedded: BTreeSet<String>,
}

impl Removed {
    /// The own guards `own` of a stage.
    pub(crate) fn of(own: &[Removal]) -> Removed {
        let mut removed = Removed::default();
        for removal in own {
            match &removal.change {
                GuardChange::Unbind { uuid } => removed.unbind(*uuid),
                GuardChange::Update { uuid, .. } => removed.reembed(*uuid),
                _ => {}
            }
        }
        removed
    }

    pub(crate) fn unbind(&mut self, binding: Uuid) {
        self.unbound.insert(binding.to_string());
    }

    pub(crate) fn reembed(&mut self, identification_stage: Uuid) {
        self.reembedded.insert(identification_stage.to_string());
    }

    /// `users` without the removed ones, and without the flows no binding
    /// left is in (authentik lists a flow beside each binding, and names a
    /// binding `Flow-stage binding #<order> to <flow uuid>`; a binding named
    /// otherwise keeps every flow).
    pub(crate) fn left_of(&self, users: Vec<UsedBy>) -> Vec<UsedBy> {
        let mut left: Vec<UsedBy> = users
            .into_iter()
            .filter(|u| match u.model_name.as_str() {
                "flowstagebinding" => !self.unbound.contains(&u.pk),
                "identificationstage" => !self.reembedded.contains(&u.pk),
                _ => true,
            })
            .collect();
        let flows_left: Option<BTreeSet<String>> = left
            .iter()
            .filter(|u| u.model_name == "flowstagebinding")
            .map(|u| u.name.rsplit_once(" to ").map(|(_, flow)| flow.to_owned()))
            .collect();
        if let Some(flows_left) = flows_left {
            left.retain(|u| u.model_name != "flow" || flows_left.contains(&u.pk));
        }
        left
    }
}

/// `users` of a prune candidate without those the same plan removes first:
/// a binding its guards unbind, an identification stage a guard makes embed
/// another captcha (or none), its `own` guards (removed with it), and the
/// flows when no binding is left. Such a stage may be pruned in the same
/// plan: its delete waits for those writes, and `apply` asks `used_by` again
/// before it.
pub(crate) fn without_removed_guards(
    users: Vec<UsedBy>,
    plan: &Plan,
    own: &[Removal],
) -> Vec<UsedBy> {
    use crate::plan::Action;
    let mut removed = Removed::of(own);
    for entry in plan.manifest_entries().filter(|e| e.kind == Kind::Guard) {
        match &entry.action {
            Action::Delete { uuid, held: None } => removed.unbind(*uuid),
            Action::Update { uuid, write, .. }
                if matches!(
                    &write.object,
                    crate::kinds::Object::Guard(crate::kinds::guard::GuardWrite::Embedding(_))
                ) =>
            {
                removed.reembed(*uuid)
            }
            _ => {}
        }
    }
    removed.left_of(users)
}

/// Managed stages that are not live any more (deleted out of band): to be
/// dropped from the inventory. Only meaningful with a complete live list.
pub(crate) fn gone(inventory: &Inventory, live: &[LiveStage]) -> Vec<Uuid> {
    let live: BTreeSet<Uuid> = live.iter().map(|l| l.uuid).collect();
    inventory
        .of_kind(Kind::CaptchaStage)
        .map(|(uuid, _)| uuid)
        .filter(|u| !live.contains(u))
        .collect()
}

/// The guards that exist: every live binding, and every live
/// identification stage that embeds a captcha.
pub(crate) fn live_guards(live: &LiveGuards) -> BTreeSet<Uuid> {
    live.bindings
        .iter()
        .map(|b| b.uuid)
        .chain(
            live.identification_stages
                .iter()
                .filter(|s| s.captcha_stage.is_some())
                .map(|s| s.uuid),
        )
        .collect()
}

/// Managed guards that are not live any more (unbound or replaced out of
/// band, or gone with their stage): to be dropped from the inventory, so that
/// a guard made again by someone else is never taken for stagesync's.
pub(crate) fn guards_gone(inventory: &Inventory, live: &LiveGuards) -> Vec<Uuid> {
    let live = live_guards(live);
    inventory
        .of_kind(Kind::Guard)
        .map(|(uuid, _)| uuid)
        .filter(|u| !live.contains(u))
        .collect()
}

/// Decides every candidate; see the module docs for the rules.
pub(crate) fn decide(inputs: &PruneInputs) -> Vec<Decided> {
    let candidates = candidates(inputs.inventory, inputs.live, inputs.desired, inputs.plan);
    let entry = |stage: &LiveStage, held: Option<Held>| Decided {
        kind: Kind::CaptchaStage,
        uuid: stage.uuid,
        name: stage.fields.name.trim().to_owned(),
        guards: match held {
            None => inputs.guards.get(&stage.uuid).cloned().unwrap_or_default(),
            Some(_) => Vec::new(),
        },
        held,
    };
    if !inputs.settings.enabled {
        return candidates
            .into_iter()
            .map(|s| entry(s, Some(Held::NotPruned)))
            .collect();
    }
    let unsafe_source = if !inputs.manifests_complete {
        Some("the manifests were not all read and valid; nothing is pruned")
    } else if inputs.desired.is_empty() {
        Some("the manifests declare no stage at all (an empty directory?); nothing is pruned")
    } else if !inputs.live_complete {
        Some("authentik's stages could not be listed completely; nothing is pruned")
    } else if inputs.plan.has_errors() {
        // A stage in error may be the new home of a candidate (a manifest
        // renamed without a pin is a create plus a delete): deleting the old
        // stage while the new one cannot be written would leave neither.
        Some("a stage of the manifests cannot be planned (see its error); nothing is pruned")
    } else {
        None
    };
    if let Some(reason) = unsafe_source {
        return candidates
            .into_iter()
            .map(|s| {
                entry(
                    s,
                    Some(Held::Guard {
                        reason: reason.to_owned(),
                    }),
                )
            })
            .collect();
    }

    let mut entries: Vec<Decided> = candidates
        .into_iter()
        .map(|s| {
            let held = match inputs.used_by.get(&s.uuid) {
                None => Some(Held::Guard {
                    reason: "what uses it is not known (used_by was not asked); nothing is deleted without asking".to_owned(),
                }),
                Some(users) if users.is_empty() => None,
                Some(users) => Some(Held::InUse {
                    users: describe_users(users),
                }),
            };
            entry(s, held)
        })
        .collect();

    let deletes = entries.iter().filter(|e| e.held.is_none()).count();
    let managed = inputs
        .live
        .iter()
        .filter(|l| inputs.inventory.contains(Kind::CaptchaStage, l.uuid))
        .count();
    let limit = inputs.settings.limit(managed);
    if deletes > limit {
        let reason = match inputs.settings.max_deletes {
            Some(n) if inputs.settings.from_plan_file => format!(
                "this run would delete {deletes} stages, more than the {n} the plan file holds; nothing is deleted (make a new plan)"
            ),
            Some(n) => format!(
                "this run would delete {deletes} stages, more than the --max-deletes {n} allowed; nothing is deleted (pass --max-deletes {deletes} to allow it)"
            ),
            None => format!(
                "this run would delete {deletes} stages, more than the {limit} ({DEFAULT_MAX_DELETE_PERCENT}% of {managed} managed stages, at least 1) allowed; nothing is deleted (pass --max-deletes {deletes} to allow it)"
            ),
        };
        for e in entries.iter_mut().filter(|e| e.held.is_none()) {
            e.held = Some(Held::Guard {
                reason: reason.clone(),
            });
            e.guards.clear();
        }
    }
    entries
}

/// `used_by` in the user's words: "bound to flow `slug`", "captcha of
/// identification stage `name`", others by model name. A binding is not named
/// when its flow is (it says the same thing).
pub(crate) fn describe_users(users: &[UsedBy]) -> Vec<String> {
    let has_flow = users.iter().any(|u| u.model_name == "flow");
    users
        .iter()
        .filter(|u| !(has_flow && u.model_name == "flowstagebinding"))
        .map(|u| match u.model_name.as_str() {
            "flow" => format!("bound to flow `{}`", flow_slug(&u.name)),
            "identificationstage" => format!(
                "captcha of identification stage `{}`",
                u.name.strip_prefix("Stage ").unwrap_or(&u.name)
            ),
            model => format!("used by {model} `{}`", u.name),
        })
        .fold(Vec::new(), |mut lines, line| {
            // authentik lists a flow once per binding: a stage bound twice
            // to one flow is said once.
            if !lines.contains(&line) {
                lines.push(line);
            }
            lines
        })
}

/// authentik names a flow `Flow <name> (<slug>)`: the slug, as users know it.
fn flow_slug(name: &str) -> &str {
    name.strip_prefix("Flow ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.rsplit_once(" ("))
        .map_or(name, |(_, slug)| slug)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Capabilities;
    use crate::capabilities::ServerVersion;
    use crate::kinds::captcha::StageFields;
    use crate::plan::{PlanInputs, plan};
    use crate::state::{KeyState, ManagedAs};

    #[test]
    fn a_flow_listed_once_per_binding_is_said_once() {
        let flow = |pk: &str| UsedBy {
            app: "authentik_flows".into(),
            model_name: "flow".into(),
            pk: pk.into(),
            name: "Flow login (login)".into(),
            action: "cascade_many".into(),
        };
        assert_eq!(
            describe_users(&[flow("1"), flow("1")]),
            ["bound to flow `login`"]
        );
    }

    fn live(name: &str, n: u128) -> LiveStage {
        LiveStage {
            uuid: Uuid::from_u128(n),
            fields: StageFields::with_defaults(name, "site"),
        }
    }

    fn desired(name: &str) -> DesiredStage {
        DesiredStage::for_test(name, None)
    }

    fn user(model_name: &str, name: &str, action: &str) -> UsedBy {
        UsedBy {
            app: "authentik_flows".into(),
            model_name: model_name.into(),
            pk: "1".into(),
            name: name.into(),
            action: action.into(),
        }
    }

    /// A world of `live` stages, all managed unless listed in `unmanaged`,
    /// with manifests for `kept`.
    struct World {
        live: Vec<LiveStage>,
        desired: Vec<DesiredStage>,
        inventory: Inventory,
        used_by: BTreeMap<Uuid, Vec<UsedBy>>,
        manifests_complete: bool,
        live_complete: bool,
    }

    impl World {
        fn new(live: Vec<LiveStage>, kept: &[&str], unmanaged: &[&str]) -> World {
            let mut inventory = Inventory::default();
            for l in &live {
                if !unmanaged.contains(&l.fields.name.as_str()) {
                    inventory.manage(
                        Kind::CaptchaStage,
                        l.uuid,
                        &l.fields.name,
                        ManagedAs::Created,
                    );
                }
            }
            let used_by = live.iter().map(|l| (l.uuid, Vec::new())).collect();
            World {
                desired: kept.iter().map(|n| desired(n)).collect(),
                live,
                inventory,
                used_by,
                manifests_complete: true,
                live_complete: true,
            }
        }

        /// The plan of the world's manifests against its live stages.
        fn plan(&self) -> Plan {
            plan(&PlanInputs {
                desired: &self.desired,
                live: &self.live,
                keys: &KeyState::default(),
                capabilities: Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
                foreign_names: &BTreeMap::new(),
            })
        }

        fn decide(&self, settings: PruneSettings) -> Vec<(String, Option<Held>)> {
            let plan = self.plan();
            decide(&PruneInputs {
                inventory: &self.inventory,
                live: &self.live,
                desired: &self.desired,
                plan: &plan,
                used_by: &self.used_by,
                guards: &BTreeMap::new(),
                manifests_complete: self.manifests_complete,
                live_complete: self.live_complete,
                settings,
            })
            .into_iter()
            .map(|e| (e.name, e.held))
            .collect()
        }
    }

    const PRUNE: PruneSettings = PruneSettings {
        enabled: true,
        max_deletes: None,
        from_plan_file: false,
    };

    fn held(d: &Option<Held>) -> &str {
        match d {
            Some(Held::Guard { reason }) => reason,
            other => panic!("expected held back, got {other:?}"),
        }
    }

    /// Stage 2 (`b`) bound into flow 100 by binding 7 and embedded by
    /// identification stage 8; `managed` guards are in the inventory under
    /// the names `b in ...` (or another stage's name, `other`).
    fn guarded_world(managed: &[(u128, &str)]) -> (World, LiveGuards) {
        let mut world = World::new(vec![live("a", 1), live("b", 2)], &["a"], &[]);
        for (uuid, name) in managed {
            world.inventory.manage(
                Kind::Guard,
                Uuid::from_u128(*uuid),
                name,
                ManagedAs::Created,
            );
        }
        let binding = |uuid: u128, stage: u128| guard::LiveBinding {
            uuid: Uuid::from_u128(uuid),
            flow: Uuid::from_u128(100),
            flow_slug: Some("login".into()),
            stage: Uuid::from_u128(stage),
            fields: guard::BindingFields::default(),
        };
        let live = LiveGuards {
            flows: BTreeMap::new(),
            bindings: vec![binding(7, 2), binding(9, 1)],
            identification_stages: vec![guard::LiveIdentificationStage {
                uuid: Uuid::from_u128(8),
                name: "ident".into(),
                captcha_stage: Some(Uuid::from_u128(2)),
                user_fields: vec!["username".into()],
                sources: Vec::new(),
            }],
        };
        (world, live)
    }

    /// A plan without entries, or with a manifest's guard entry in sync
    /// with the object `declared`.
    fn no_plan() -> Plan {
        plan_declaring(None)
    }

    fn plan_declaring(declared: Option<u128>) -> Plan {
        let entries = declared
            .map(|uuid| crate::plan::Entry {
                id: crate::plan::EntryId(0),
                kind: Kind::Guard,
                name: "c in identification stage ident".into(),
                origin: Some(crate::kinds::Origin {
                    file: "c.yaml".into(),
                    line: 1,
                    column: 1,
                }),
                key_source: None,
                action: crate::plan::Action::InSync {
                    uuid: Uuid::from_u128(uuid),
                },
                after: Vec::new(),
            })
            .into_iter()
            .collect();
        Plan::assemble(
            entries,
            &[],
            &BTreeSet::new(),
            Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
        )
    }

    fn binding_user(pk: u128) -> UsedBy {
        UsedBy {
            pk: Uuid::from_u128(pk).to_string(),
            ..user("flowstagebinding", "Flow-stage binding #10", "cascade")
        }
    }

    fn ident_user(pk: u128) -> UsedBy {
        UsedBy {
            pk: Uuid::from_u128(pk).to_string(),
            ..user("identificationstage", "Stage ident", "set_null")
        }
    }

    #[test]
    fn own_guards_are_the_inventorys_bindings_and_embeddings_of_the_stage_under_its_name() {
        let (world, live) = guarded_world(&[
            (7, "b in flow login"),
            (8, "b in identification stage ident"),
            (9, "a in flow login"),
        ]);
        let own = own_guards(&world.inventory, &world.live[1], &live, &no_plan());
        let names: Vec<(&str, Option<Uuid>)> =
            own.iter().map(|r| (r.name.as_str(), r.uuid())).collect();
        assert_eq!(
            names,
            [
                ("b in flow login", Some(Uuid::from_u128(7))),
                ("b in identification stage ident", Some(Uuid::from_u128(8))),
            ]
        );
        assert!(matches!(own[0].change, GuardChange::Unbind { .. }));
        assert!(
            matches!(&own[1].change, GuardChange::Update { write, .. } if guard::matching::removes(write))
        );

        // Recorded in another flow (moved there in the UI), or taken over by
        // another manifest's guard in the same plan: not its own.
        let (world, live) = guarded_world(&[
            (7, "b in flow elsewhere"),
            (8, "b in identification stage ident"),
        ]);
        let own = own_guards(
            &world.inventory,
            &world.live[1],
            &live,
            &plan_declaring(Some(8)),
        );
        assert!(own.is_empty(), "{own:?}");

        // Not in the inventory, or recorded for another stage: someone else's.
        let (world, live) = guarded_world(&[(7, "other in flow login")]);
        assert!(own_guards(&world.inventory, &world.live[1], &live, &no_plan()).is_empty());
        let (world, live) = guarded_world(&[(8, "b in identification stage ident")]);
        let own = own_guards(&world.inventory, &world.live[1], &live, &no_plan());
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].uuid(), Some(Uuid::from_u128(8)));
    }

    #[test]
    fn a_manifests_own_unbind_or_replaced_embedding_counts_as_removed_and_nothing_else_does() {
        let (world, live) = guarded_world(&[
            (7, "b in flow login"),
            (8, "b in identification stage ident"),
        ]);
        // The same unbind and replaced embedding, as a guards list plans them.
        let own = own_guards(&world.inventory, &world.live[1], &live, &no_plan());
        let plan_of = |entries: Vec<(Kind, crate::plan::Action)>| {
            let entries = entries
                .into_iter()
                .enumerate()
                .map(|(i, (kind, action))| crate::plan::Entry {
                    id: crate::plan::EntryId(i),
                    kind,
                    name: format!("entry {i}"),
                    origin: Some(crate::kinds::Origin {
                        file: "b.yaml".into(),
                        line: 1,
                        column: 1,
                    }),
                    key_source: None,
                    action,
                    after: Vec::new(),
                })
                .collect();
            Plan::assemble(
                entries,
                &[],
                &BTreeSet::new(),
                Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
            )
        };
        let as_entries = |kind: Kind| {
            own.iter()
                .map(|r| (kind, crate::plan::guard_action(r.change.clone())))
                .collect::<Vec<_>>()
        };
        let users = vec![binding_user(7), ident_user(8), binding_user(11)];

        let guards = plan_of(as_entries(Kind::Guard));
        assert_eq!(
            without_removed_guards(users.clone(), &guards, &[]),
            [binding_user(11)]
        );
        // The same actions on stage entries remove no guard.
        let stages = plan_of(as_entries(Kind::CaptchaStage));
        assert_eq!(without_removed_guards(users.clone(), &stages, &[]), users);
        // Nor does a binding's order change (the binding stays).
        let reordered = plan_of(vec![(
            Kind::Guard,
            crate::plan::guard_action(GuardChange::Update {
                uuid: Uuid::from_u128(7),
                changes: Vec::new(),
                write: guard::GuardWrite::Binding(guard::BindingWrite {
                    flow: "login".into(),
                    flow_uuid: Uuid::from_u128(100),
                    stage: Some(Uuid::from_u128(2)),
                    fields: guard::BindingFields::default(),
                }),
            }),
        )]);
        assert_eq!(
            without_removed_guards(users.clone(), &reordered, &[]),
            users
        );
        // Nor does an unbind held back.
        let held = plan_of(vec![(
            Kind::Guard,
            crate::plan::Action::Delete {
                uuid: Uuid::from_u128(7),
                held: Some(Held::NotPruned),
            },
        )]);
        assert_eq!(without_removed_guards(users.clone(), &held, &[]), users);
    }

    #[test]
    fn a_stage_used_only_by_its_own_guards_is_deleted_with_them_and_anything_else_blocks_it() {
        let flow = user("flow", "Flow login (login)", "cascade_many");
        let (mut world, live) = guarded_world(&[
            (7, "b in flow login"),
            (8, "b in identification stage ident"),
        ]);
        let own = own_guards(&world.inventory, &world.live[1], &live, &no_plan());
        let empty = Plan::assemble(
            Vec::new(),
            &[],
            &BTreeSet::new(),
            Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
        );
        let users = vec![flow.clone(), binding_user(7), ident_user(8)];
        assert!(without_removed_guards(users, &empty, &own).is_empty());
        // A second binding of the stage (made in the UI): it and the flows stay.
        let users = vec![
            flow.clone(),
            binding_user(7),
            binding_user(11),
            ident_user(8),
        ];
        assert_eq!(
            without_removed_guards(users, &empty, &own),
            [flow, binding_user(11)]
        );

        let guards = BTreeMap::from([(Uuid::from_u128(2), own.clone())]);
        let decide = |world: &World, settings| {
            let plan = world.plan();
            decide(&PruneInputs {
                inventory: &world.inventory,
                live: &world.live,
                desired: &world.desired,
                plan: &plan,
                used_by: &world.used_by,
                guards: &guards,
                manifests_complete: true,
                live_complete: true,
                settings,
            })
        };
        let decided = decide(&world, PRUNE);
        assert_eq!(
            (decided[0].held.as_ref(), decided[0].guards.len()),
            (None, 2)
        );
        // Held back (the delete limit, no --prune, in use): its guards stay.
        let limited = PruneSettings {
            max_deletes: Some(0),
            ..PRUNE
        };
        assert!(decide(&world, limited)[0].guards.is_empty());
        assert!(
            decide(&world, PruneSettings::default())[0]
                .guards
                .is_empty()
        );
        world
            .used_by
            .insert(Uuid::from_u128(2), vec![binding_user(11)]);
        assert!(decide(&world, PRUNE)[0].guards.is_empty());
    }

    #[test]
    fn managed_guards_no_longer_live_are_gone() {
        let (world, live) = guarded_world(&[
            (7, "b in flow login"),
            (8, "b in identification stage ident"),
            (12, "b in flow old"),
        ]);
        assert_eq!(guards_gone(&world.inventory, &live), [Uuid::from_u128(12)]);
        let mut unembedded = live.clone();
        unembedded.identification_stages[0].captcha_stage = None;
        assert_eq!(
            guards_gone(&world.inventory, &unembedded),
            [Uuid::from_u128(8), Uuid::from_u128(12)]
        );
    }

    #[test]
    fn only_managed_stages_without_a_manifest_are_candidates() {
        let world = World::new(
            vec![live("kept", 1), live("gone", 2), live("clicked", 3)],
            &["kept"],
            &["clicked"],
        );
        assert_eq!(world.decide(PRUNE), vec![("gone".to_owned(), None)]);
        assert_eq!(
            world.decide(PruneSettings::default()),
            vec![("gone".to_owned(), Some(Held::NotPruned))]
        );
    }

    #[test]
    fn a_used_stage_is_blocked_and_its_users_named() {
        let mut world = World::new(vec![live("a", 1), live("b", 2), live("c", 3)], &["a"], &[]);
        world.used_by.insert(
            Uuid::from_u128(2),
            vec![
                user(
                    "flow",
                    "Flow default-authentication-flow (default-authentication-flow)",
                    "cascade_many",
                ),
                user("flowstagebinding", "Flow-stage binding #10 to x", "cascade"),
                user("identificationstage", "Stage login-ident", "set_null"),
                user("somethingelse", "Thing t", "cascade"),
            ],
        );
        let decided = world.decide(PRUNE);
        assert_eq!(
            decided[0],
            (
                "b".to_owned(),
                Some(Held::InUse {
                    users: vec![
                        "bound to flow `default-authentication-flow`".into(),
                        "captcha of identification stage `login-ident`".into(),
                        "used by somethingelse `Thing t`".into(),
                    ]
                })
            )
        );
        assert_eq!(decided[1], ("c".to_owned(), None));
    }

    #[test]
    fn no_used_by_answer_means_no_delete() {
        let mut world = World::new(vec![live("a", 1), live("b", 2)], &["a"], &[]);
        world.used_by.clear();
        assert!(held(&world.decide(PRUNE)[0].1).contains("used_by was not asked"));
    }

    #[test]
    fn incomplete_or_empty_sources_hold_every_delete_back() {
        let base = || World::new(vec![live("a", 1), live("b", 2)], &["a"], &[]);
        let mut w = base();
        w.manifests_complete = false;
        assert!(held(&w.decide(PRUNE)[0].1).contains("manifests were not all read"));
        let mut w = base();
        w.live_complete = false;
        assert!(held(&w.decide(PRUNE)[0].1).contains("could not be listed completely"));
        let w = World::new(vec![live("a", 1), live("b", 2)], &[], &[]);
        let decided = w.decide(PRUNE);
        assert_eq!(decided.len(), 2);
        assert!(
            decided
                .iter()
                .all(|(_, d)| held(d).contains("declare no stage at all"))
        );
    }

    #[test]
    fn a_stage_in_error_holds_every_delete_back() {
        // Two manifests name `a` (an error for both): `b`, managed and named by
        // none, is not deleted while the plan has an error.
        let w = World::new(vec![live("a", 1), live("b", 2)], &["a", "a"], &[]);
        let decided = w.decide(PRUNE);
        assert_eq!(decided.len(), 1, "{decided:?}");
        assert_eq!(decided[0].0, "b");
        assert!(
            held(&decided[0].1).contains("cannot be planned"),
            "{decided:?}"
        );
    }

    #[test]
    fn the_guard_allows_a_quarter_of_the_managed_stages_and_at_least_one() {
        assert_eq!(PRUNE.limit(0), 1);
        assert_eq!(PRUNE.limit(7), 1);
        assert_eq!(PRUNE.limit(8), 2);
        assert_eq!(PRUNE.limit(100), 25);
        let allow = |n| PruneSettings {
            enabled: true,
            max_deletes: Some(n),
            from_plan_file: false,
        };
        assert_eq!(allow(0).limit(100), 0);

        // 8 managed stages, 2 gone: at the limit, both deleted.
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let stages = || {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| live(n, i as u128 + 1))
                .collect::<Vec<_>>()
        };
        let keep = |k: usize| names[..k].iter().map(String::as_str).collect::<Vec<_>>();
        let w = World::new(stages(), &keep(6), &[]);
        assert!(w.decide(PRUNE).iter().all(|(_, d)| d.is_none()));
        // 3 gone: one over, nothing deleted, and the plan says why.
        let w = World::new(stages(), &keep(5), &[]);
        let decided = w.decide(PRUNE);
        assert_eq!(decided.len(), 3);
        assert_eq!(
            held(&decided[0].1),
            "this run would delete 3 stages, more than the 2 (25% of 8 managed stages, at least 1) allowed; nothing is deleted (pass --max-deletes 3 to allow it)"
        );
        assert!(decided.iter().all(|(_, d)| held(d) == held(&decided[0].1)));
        assert!(w.decide(allow(3)).iter().all(|(_, d)| d.is_none()));
        assert!(held(&w.decide(allow(2))[0].1).contains("more than the --max-deletes 2 allowed"));
        // Applying a saved plan: its own count is the limit, and no flag is named.
        let from_file = PruneSettings {
            from_plan_file: true,
            ..allow(2)
        };
        assert_eq!(
            held(&w.decide(from_file)[0].1),
            "this run would delete 3 stages, more than the 2 the plan file holds; nothing is deleted (make a new plan)"
        );
    }

    #[test]
    fn blocked_stages_do_not_count_against_the_guard() {
        let mut w = World::new(
            vec![live("a", 1), live("b", 2), live("c", 3), live("d", 4)],
            &["a", "b"],
            &[],
        );
        w.used_by.insert(
            Uuid::from_u128(3),
            vec![user("identificationstage", "Stage x", "set_null")],
        );
        let decided = w.decide(PRUNE);
        assert!(matches!(decided[0].1, Some(Held::InUse { .. })));
        assert_eq!(decided[1].1, None);
    }

    #[test]
    fn a_stage_a_manifest_names_or_pins_is_never_a_candidate() {
        let mut w = World::new(vec![live("a", 1), live("b", 2)], &["a"], &[]);
        // An erroneous manifest pinning b (unknown uuid elsewhere) still keeps it.
        let mut pin = desired("renamed-b");
        pin.uuid = Some(Uuid::from_u128(2));
        w.desired.push(pin);
        assert!(w.decide(PRUNE).is_empty());
    }

    #[test]
    fn a_stage_the_plan_matches_or_a_manifest_pins_is_each_on_its_own_never_a_candidate() {
        let w = World::new(vec![live("a", 1), live("b", 2)], &["a", "b"], &[]);
        let matched_b = w.plan();
        let names = |c: Vec<&LiveStage>| -> Vec<String> {
            c.iter().map(|l| l.fields.name.clone()).collect()
        };
        // Matched by the plan, though no manifest names or pins it.
        assert_eq!(
            names(candidates(
                &w.inventory,
                &w.live,
                &[desired("a")],
                &matched_b
            )),
            Vec::<String>::new()
        );
        // Pinned by a manifest the plan does not match (it is in error).
        let mut pin = desired("renamed-b");
        pin.uuid = Some(Uuid::from_u128(2));
        assert_eq!(
            names(candidates(&w.inventory, &w.live, &[pin], &no_plan())),
            ["a"]
        );
        // Neither: a candidate.
        assert_eq!(
            names(candidates(&w.inventory, &w.live, &[], &no_plan())),
            ["a", "b"]
        );
    }

    #[test]
    fn gone_lists_managed_stages_no_longer_live() {
        let w = World::new(vec![live("a", 1)], &["a"], &[]);
        let mut inventory = w.inventory.clone();
        inventory.manage(
            Kind::CaptchaStage,
            Uuid::from_u128(9),
            "deleted-in-ui",
            ManagedAs::Adopted,
        );
        assert_eq!(gone(&inventory, &w.live), vec![Uuid::from_u128(9)]);
    }

    #[test]
    fn flow_slugs_come_from_authentiks_flow_names() {
        assert_eq!(flow_slug("Flow Login (default-login)"), "default-login");
        assert_eq!(flow_slug("Flow a (b) (c)"), "c");
        assert_eq!(flow_slug("odd"), "odd");
    }
}
