//! Which live binding or identification stage each declared guard means, and
//! what must change: pure, a function of one stage's `guards:` list and what
//! authentik has.
//!
//! - A binding is matched by (flow, stage); its order and options are its
//!   fields, so a change is a PATCH of the same binding.
//! - Two live bindings of the stage in one flow: an error entry that says so;
//!   neither binding is touched (which one the manifest means is a guess).
//! - A live binding or embedding the list does not name is removed (the stage
//!   has a `guards` key, so the list is the whole truth): a removal, which
//!   plans flag because a login flow loses its captcha.
//! - A flow or identification stage that does not exist is an error entry
//!   naming it: stagesync never creates them.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{
    BindingWrite, DesiredGuard, EmbeddingWrite, FIELDS, Guard, GuardTarget, GuardWrite,
    LiveBinding, LiveFlow, LiveIdentificationStage, entry_name,
};
use crate::kinds::Origin;
use crate::kinds::field::{self, FieldChange, Value};

/// What authentik has of what captcha stages guard, fetched only when a
/// manifest declares `guards`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveGuards {
    /// The flows the manifests name, by slug (a slug missing here does not exist).
    pub flows: BTreeMap<String, LiveFlow>,
    /// Every flow stage binding.
    pub bindings: Vec<LiveBinding>,
    /// Every identification stage.
    pub identification_stages: Vec<LiveIdentificationStage>,
}

/// What one guard of a stage needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// Nothing: the binding or embedding `uuid` is as declared.
    InSync { uuid: Uuid },
    /// A new binding.
    Bind { write: GuardWrite },
    /// The binding or identification stage `uuid`, written with `write`.
    Update {
        uuid: Uuid,
        changes: Vec<FieldChange>,
        write: GuardWrite,
    },
    /// The binding `uuid` is removed.
    Unbind { uuid: Uuid },
    /// Nothing is written; `message` says why.
    Error { uuid: Option<Uuid>, message: String },
}

/// One guard of a stage in a plan: its name (`login in flow default-authentication-flow`),
/// where it is declared, and what it needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    pub(crate) name: String,
    pub(crate) origin: Origin,
    pub(crate) change: Change,
    /// Its write needs the stage's uuid, which the stage's create gives.
    pub(crate) waits_for_stage: bool,
}

/// The guards of the captcha stage `stage_name` (`stage`: its uuid, `None`
/// while it is to be created), declared by `guards` in the manifest at
/// `stage_origin`, against `live`. `captcha_names` names the captcha stages
/// by uuid (what an identification stage embeds now).
pub(crate) fn plan_stage(
    stage_name: &str,
    stage: Option<Uuid>,
    stage_origin: &Origin,
    guards: &[DesiredGuard],
    live: &LiveGuards,
    captcha_names: &BTreeMap<Uuid, String>,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let bindings_in = |flow: Uuid| -> Vec<&LiveBinding> {
        live.bindings
            .iter()
            .filter(|b| Some(b.stage) == stage && b.flow == flow)
            .collect()
    };
    let twice = |slug: &str, bindings: &[&LiveBinding]| Change::Error {
        uuid: None,
        message: format!(
            "bound {} times to flow {slug} (orders {}): neither binding is touched; remove all but one in authentik",
            bindings.len(),
            bindings
                .iter()
                .map(|b| b.fields.order.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut declared_flows = BTreeSet::new();
    let mut declared_stages = BTreeSet::new();
    for declared in guards {
        let name = entry_name(stage_name, declared.guard.target());
        let (change, waits) = match &declared.guard {
            Guard::Flow { slug, binding } => match live.flows.get(slug) {
                None => (
                    Change::Error {
                        uuid: None,
                        message: format!("flow \"{slug}\" not found"),
                    },
                    false,
                ),
                Some(flow) => {
                    declared_flows.insert(flow.uuid);
                    let write = GuardWrite::Binding(BindingWrite {
                        flow: slug.clone(),
                        flow_uuid: flow.uuid,
                        stage,
                        fields: binding.clone(),
                    });
                    match bindings_in(flow.uuid).as_slice() {
                        [] => (Change::Bind { write }, stage.is_none()),
                        [one] => {
                            let changes = field::changes(&FIELDS, &one.fields, binding, |_| true);
                            if changes.is_empty() {
                                (Change::InSync { uuid: one.uuid }, false)
                            } else {
                                (
                                    Change::Update {
                                        uuid: one.uuid,
                                        changes,
                                        write,
                                    },
                                    false,
                                )
                            }
                        }
                        many => (twice(slug, many), false),
                    }
                }
            },
            Guard::IdentificationStage { name: ident } => {
                match live.identification_stages.iter().find(|s| &s.name == ident) {
                    None => (
                        Change::Error {
                            uuid: None,
                            message: format!("identification stage \"{ident}\" not found"),
                        },
                        false,
                    ),
                    Some(live_ident) => {
                        declared_stages.insert(live_ident.uuid);
                        if stage.is_some() && live_ident.captcha_stage == stage {
                            (
                                Change::InSync {
                                    uuid: live_ident.uuid,
                                },
                                false,
                            )
                        } else {
                            let now = embedded_name(live_ident.captcha_stage, captcha_names);
                            let write = GuardWrite::Embedding(EmbeddingWrite {
                                identification_stage: ident.clone(),
                                captcha_stage: Some(stage_name.to_owned()),
                                captcha_uuid: stage,
                                live: live_ident.clone(),
                            });
                            (
                                Change::Update {
                                    uuid: live_ident.uuid,
                                    changes: vec![FieldChange {
                                        field: "captcha_stage",
                                        old: Value::Str(now),
                                        new: Value::Str(stage_name.to_owned()),
                                    }],
                                    write,
                                },
                                stage.is_none(),
                            )
                        }
                    }
                }
            }
        };
        out.push(Planned {
            name,
            origin: declared.origin.clone(),
            change,
            waits_for_stage: waits,
        });
    }

    // What the list does not name: removed (a new stage has nothing yet).
    let Some(stage) = stage else { return out };
    let mut undeclared: BTreeMap<Uuid, Vec<&LiveBinding>> = BTreeMap::new();
    for b in live
        .bindings
        .iter()
        .filter(|b| b.stage == stage && !declared_flows.contains(&b.flow))
    {
        undeclared.entry(b.flow).or_default().push(b);
    }
    for bindings in undeclared.values() {
        let slug = bindings[0]
            .flow_slug
            .clone()
            .unwrap_or_else(|| bindings[0].flow.to_string());
        let change = match bindings.as_slice() {
            [one] => Change::Unbind { uuid: one.uuid },
            many => twice(&slug, many),
        };
        out.push(Planned {
            name: entry_name(stage_name, GuardTarget::Flow(&slug)),
            origin: stage_origin.clone(),
            change,
            waits_for_stage: false,
        });
    }
    for ident in live
        .identification_stages
        .iter()
        .filter(|s| s.captcha_stage == Some(stage) && !declared_stages.contains(&s.uuid))
    {
        out.push(Planned {
            name: entry_name(stage_name, GuardTarget::IdentificationStage(&ident.name)),
            origin: stage_origin.clone(),
            change: unembed(stage_name, ident),
            waits_for_stage: false,
        });
    }
    out
}

/// What removes every guard of the live captcha stage `stage` (named
/// `stage_name`) that authentik has: an unbind per binding, an update per
/// identification stage that embeds it (to embed no captcha), each with its
/// entry name. What prune removes before it deletes the stage.
pub(crate) fn removals(stage_name: &str, stage: Uuid, live: &LiveGuards) -> Vec<(String, Change)> {
    let bindings = live.bindings.iter().filter(|b| b.stage == stage).map(|b| {
        let slug = b.flow_slug.clone().unwrap_or_else(|| b.flow.to_string());
        (
            entry_name(stage_name, GuardTarget::Flow(&slug)),
            Change::Unbind { uuid: b.uuid },
        )
    });
    let embeddings = live
        .identification_stages
        .iter()
        .filter(|s| s.captcha_stage == Some(stage))
        .map(|ident| {
            (
                entry_name(stage_name, GuardTarget::IdentificationStage(&ident.name)),
                unembed(stage_name, ident),
            )
        });
    bindings.chain(embeddings).collect()
}

/// The update that makes `ident` embed no captcha instead of `stage_name`.
fn unembed(stage_name: &str, ident: &LiveIdentificationStage) -> Change {
    Change::Update {
        uuid: ident.uuid,
        changes: vec![FieldChange {
            field: "captcha_stage",
            old: Value::Str(stage_name.to_owned()),
            new: Value::Str(super::NO_CAPTCHA.into()),
        }],
        write: GuardWrite::Embedding(EmbeddingWrite {
            identification_stage: ident.name.clone(),
            captcha_stage: None,
            captcha_uuid: None,
            live: ident.clone(),
        }),
    }
}

/// The name of the captcha an identification stage embeds now.
fn embedded_name(captcha: Option<Uuid>, names: &BTreeMap<Uuid, String>) -> String {
    match captcha {
        None => super::NO_CAPTCHA.to_owned(),
        Some(uuid) => names
            .get(&uuid)
            .cloned()
            .unwrap_or_else(|| uuid.to_string()),
    }
}

/// Whether a guard write removes a guard: an embedding of no captcha.
pub(crate) fn removes(write: &GuardWrite) -> bool {
    matches!(write, GuardWrite::Embedding(e) if e.captcha_stage.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::guard::BindingFields;
    use std::path::PathBuf;

    fn origin(line: usize) -> Origin {
        Origin {
            file: PathBuf::from("login.yaml"),
            line,
            column: 1,
        }
    }

    /// The guards of the captcha stage "login", declared at line 1.
    fn plan_login(
        stage: Option<Uuid>,
        guards: &[DesiredGuard],
        live: &LiveGuards,
        names: &BTreeMap<Uuid, String>,
    ) -> Vec<Planned> {
        plan_stage("login", stage, &origin(1), guards, live, names)
    }

    fn binding(order: i64) -> BindingFields {
        BindingFields {
            order,
            evaluate_on_plan: false,
            re_evaluate_policies: true,
            policy_engine_mode: "any".into(),
            invalid_response_action: "retry".into(),
        }
    }

    fn flow_guard(slug: &str, order: i64) -> DesiredGuard {
        DesiredGuard {
            origin: origin(5),
            guard: Guard::Flow {
                slug: slug.into(),
                binding: binding(order),
            },
        }
    }

    fn live(stage: Uuid, bindings: &[(u128, i64)]) -> LiveGuards {
        let flow = Uuid::from_u128(100);
        LiveGuards {
            flows: [(
                "login-flow".to_owned(),
                LiveFlow {
                    uuid: flow,
                    slug: "login-flow".into(),
                },
            )]
            .into(),
            bindings: bindings
                .iter()
                .map(|(id, order)| LiveBinding {
                    uuid: Uuid::from_u128(*id),
                    flow,
                    flow_slug: Some("login-flow".into()),
                    stage,
                    fields: binding(*order),
                })
                .collect(),
            identification_stages: Vec::new(),
        }
    }

    #[test]
    fn in_sync_order_change_and_missing_flow() {
        let stage = Uuid::from_u128(1);
        let names = BTreeMap::new();
        let l = live(stage, &[(7, 10)]);
        let same = plan_login(Some(stage), &[flow_guard("login-flow", 10)], &l, &names);
        assert_eq!(
            same[0].change,
            Change::InSync {
                uuid: Uuid::from_u128(7)
            }
        );
        let moved = plan_login(Some(stage), &[flow_guard("login-flow", 20)], &l, &names);
        assert!(
            matches!(&moved[0].change, Change::Update { uuid, changes, .. } if *uuid == Uuid::from_u128(7) && changes.len() == 1),
            "{moved:?}"
        );
        let missing = plan_login(Some(stage), &[flow_guard("nope", 1)], &l, &names);
        assert!(
            matches!(&missing[0].change, Change::Error { message, .. } if message == "flow \"nope\" not found")
        );
    }

    #[test]
    fn an_undeclared_binding_is_unbound_and_two_bindings_in_a_flow_are_left_alone() {
        let stage = Uuid::from_u128(1);
        let names = BTreeMap::new();
        let removed = plan_login(Some(stage), &[], &live(stage, &[(7, 10)]), &names);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].name, "login in flow login-flow");
        assert_eq!(
            removed[0].change,
            Change::Unbind {
                uuid: Uuid::from_u128(7)
            }
        );
        let twice = plan_login(
            Some(stage),
            &[flow_guard("login-flow", 10)],
            &live(stage, &[(7, 10), (8, 30)]),
            &names,
        );
        assert!(
            matches!(&twice[0].change, Change::Error { message, .. } if message.contains("bound 2 times to flow login-flow (orders 10, 30)")),
            "{twice:?}"
        );
        assert_eq!(twice.len(), 1, "the second binding is not unbound either");
    }

    #[test]
    fn a_new_stage_binds_after_its_create() {
        let names = BTreeMap::new();
        let planned = plan_login(
            None,
            &[flow_guard("login-flow", 10)],
            &live(Uuid::from_u128(1), &[]),
            &names,
        );
        assert!(planned[0].waits_for_stage);
        assert!(matches!(planned[0].change, Change::Bind { .. }));
    }

    fn ident(id: u128, name: &str, captcha: Option<Uuid>) -> LiveIdentificationStage {
        LiveIdentificationStage {
            uuid: Uuid::from_u128(id),
            name: name.into(),
            captcha_stage: captcha,
            user_fields: vec!["username".into()],
            sources: Vec::new(),
        }
    }

    fn ident_guard(name: &str) -> DesiredGuard {
        DesiredGuard {
            origin: origin(8),
            guard: Guard::IdentificationStage { name: name.into() },
        }
    }

    #[test]
    fn another_stages_binding_and_this_stages_binding_in_another_flow_are_not_its_own() {
        let stage = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        let mut l = live(stage, &[(7, 10)]);
        // Another captcha in the login flow, and this one in a flow the list
        // does not name.
        let mut others = live(other, &[(8, 20)]).bindings;
        let mut elsewhere = live(stage, &[(9, 30)]).bindings;
        elsewhere[0].flow = Uuid::from_u128(101);
        elsewhere[0].flow_slug = Some("enrollment".into());
        l.bindings.append(&mut others);
        l.bindings.append(&mut elsewhere);
        let planned = plan_login(
            Some(stage),
            &[flow_guard("login-flow", 10)],
            &l,
            &BTreeMap::new(),
        );
        let changes: Vec<_> = planned.iter().map(|p| (&p.name[..], &p.change)).collect();
        assert_eq!(
            changes,
            [
                (
                    "login in flow login-flow",
                    &Change::InSync {
                        uuid: Uuid::from_u128(7)
                    }
                ),
                (
                    "login in flow enrollment",
                    &Change::Unbind {
                        uuid: Uuid::from_u128(9)
                    }
                ),
            ]
        );
    }

    #[test]
    fn an_identification_stage_is_matched_by_name_and_only_its_own_embedding_is_removed() {
        let stage = Uuid::from_u128(1);
        let other = Uuid::from_u128(2);
        let names: BTreeMap<_, _> = [(other, "old-captcha".to_owned())].into();
        let mut l = live(stage, &[]);
        l.identification_stages = vec![
            ident(50, "signup-identification", Some(other)),
            ident(51, "login-identification", Some(stage)),
            ident(52, "recovery-identification", Some(stage)),
            ident(53, "plain-identification", None),
        ];
        let planned = plan_login(
            Some(stage),
            &[ident_guard("login-identification")],
            &l,
            &names,
        );
        assert_eq!(planned.len(), 2, "{planned:?}");
        assert_eq!(
            planned[0].name,
            "login in identification stage login-identification"
        );
        assert_eq!(
            planned[0].change,
            Change::InSync {
                uuid: Uuid::from_u128(51)
            }
        );
        // The one embedding it that the list does not name: unembedded. The
        // one embedding another captcha and the one embedding none: not its own.
        assert_eq!(
            planned[1].change,
            unembed("login", &l.identification_stages[2])
        );

        // Declared where another captcha is embedded: replaced, naming it.
        let replaced = plan_login(
            Some(stage),
            &[ident_guard("signup-identification")],
            &l,
            &names,
        );
        assert!(
            matches!(&replaced[0].change, Change::Update { uuid, changes, .. }
                if *uuid == Uuid::from_u128(50)
                && changes[0].old == Value::Str("old-captcha".into())
                && changes[0].new == Value::Str("login".into())),
            "{replaced:?}"
        );
        assert!(!replaced[0].waits_for_stage);
    }

    #[test]
    fn a_new_stage_embeds_after_its_create_even_where_no_captcha_is_embedded() {
        let mut l = live(Uuid::from_u128(1), &[]);
        l.identification_stages = vec![ident(53, "plain-identification", None)];
        let planned = plan_login(
            None,
            &[ident_guard("plain-identification")],
            &l,
            &BTreeMap::new(),
        );
        assert!(planned[0].waits_for_stage);
        assert!(
            matches!(&planned[0].change, Change::Update { uuid, .. } if *uuid == Uuid::from_u128(53)),
            "{planned:?}"
        );
    }
}
