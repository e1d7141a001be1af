//! The shared path of `plan`, `apply` and the daemon: fetch live state, then
//! plan; `apply --plan` fetches the same live state ([`fetch_live`]) to check a
//! saved plan against.
//!
//! This is the I/O wrapped around the pure planner. It makes the minimum of
//! calls: one version call, one list call per 100 live stages, and, for the
//! would-be creates, either one name look-up each or one call per 100 stages of
//! every type, whichever is fewer ([`crate::authentik::name_check`]: a name may
//! be held by a stage of another type, which the captcha list cannot show).
//! Never one GET per stage. With `--prune`, one `used_by` per prune candidate
//! ([`add_prune`]), and only then.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::apply::{ApplyReport, DeleteResult, Operation, WriteResult};
use crate::authentik::{ApiError, Client, name_check};
use crate::capabilities::Capabilities;
use crate::kinds::Kind;
use crate::kinds::captcha::api::Stages;
use crate::kinds::captcha::{DesiredStage, LiveStage};
use crate::plan::prune::{self, PruneInputs};
use crate::plan::{self, Action, Plan, PlanInputs, PruneSettings};
use crate::state::{Inventory, KeyState, ManagedAs};

/// A plan together with what it was made from, ready to show or to apply.
pub struct Planned {
    pub plan: Plan,
    pub(crate) desired: Vec<DesiredStage>,
    pub(crate) live: Vec<LiveStage>,
}

/// Looks `names` up among every stage type; returns those held by a stage that
/// is not a captcha stage, with that stage's kind.
async fn foreign_names(
    client: &Client,
    names: Vec<String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(name_check::holders_of(client, names)
        .await?
        .into_iter()
        .filter(|(_, holder)| !holder.is_captcha)
        .map(|(name, holder)| (name, holder.kind))
        .collect())
}

/// What authentik has, as one pass sees it.
pub(crate) struct Live {
    pub(crate) capabilities: Capabilities,
    /// Every live captcha stage.
    pub(crate) stages: Vec<LiveStage>,
    /// name -> kind for the names looked up that a stage of another type holds.
    pub(crate) foreign_names: BTreeMap<String, String>,
}

/// Fetches the server version and every captcha stage, then looks up the
/// names `names_to_check` picks from them among all stage types.
pub(crate) async fn fetch_live(
    client: &Client,
    names_to_check: impl FnOnce(&[LiveStage]) -> Vec<String>,
) -> Result<Live, ApiError> {
    let version = client.version().await?;
    let stages = Stages::new(client).list().await?;
    let foreign_names = foreign_names(client, names_to_check(&stages)).await?;
    Ok(Live {
        capabilities: Capabilities::for_version(version),
        stages,
        foreign_names,
    })
}

/// Fetches live state from authentik and plans `desired` against it.
pub async fn fetch_and_plan(
    client: &Client,
    desired: Vec<DesiredStage>,
    keys: &KeyState,
) -> Result<Planned, ApiError> {
    let Live {
        capabilities,
        stages: live,
        foreign_names,
    } = fetch_live(client, |live| plan::names_to_check(&desired, live)).await?;

    let plan = plan::plan(&PlanInputs {
        desired: &desired,
        live: &live,
        keys,
        capabilities,
        foreign_names: &foreign_names,
    });
    Ok(Planned {
        plan,
        desired,
        live,
    })
}

/// Adds the prune decisions to `planned` ([`prune::decide`]). `used_by` is
/// asked for each candidate only when prune may delete at all (`--prune`, a
/// complete and valid manifest set that declares something); the live list is
/// complete here, or fetching it would have failed. A candidate that vanished
/// meanwhile is left out (it is gone).
pub(crate) async fn add_prune(
    client: &Client,
    mut planned: Planned,
    inventory: &Inventory,
    settings: PruneSettings,
    manifests_complete: bool,
) -> Result<Planned, ApiError> {
    let mut used_by = BTreeMap::new();
    let mut vanished = Vec::new();
    if settings.enabled && manifests_complete && !planned.desired.is_empty() {
        let candidates: Vec<uuid::Uuid> =
            prune::candidates(inventory, &planned.live, &planned.desired, &planned.plan)
                .into_iter()
                .map(|l| l.uuid)
                .collect();
        for uuid in candidates {
            match Stages::new(client).used_by(uuid).await {
                Ok(users) => {
                    used_by.insert(uuid, users);
                }
                Err(ApiError::StageNotFound { .. }) => vanished.push(uuid),
                Err(e) => return Err(e),
            }
        }
    }
    planned.live.retain(|l| !vanished.contains(&l.uuid));
    let entries = prune::decide(&PruneInputs {
        inventory,
        live: &planned.live,
        desired: &planned.desired,
        plan: &planned.plan,
        used_by: &used_by,
        manifests_complete,
        live_complete: true,
        settings,
    });
    planned.plan.set_prune(entries);
    Ok(planned)
}

/// Brings the inventory up to date after a pass or an apply: managed stages no
/// longer live are dropped, every stage a manifest matched is adopted, every
/// stage written is recorded (created ones as such), every deleted (or found
/// gone) stage is dropped. Returns whether anything changed.
pub(crate) fn record_inventory(
    inventory: &mut Inventory,
    plan: &Plan,
    live: &[LiveStage],
    report: Option<&ApplyReport>,
) -> bool {
    let before = inventory.clone();
    for uuid in prune::gone(inventory, live) {
        inventory.forget(uuid);
    }
    // Only stages that are live now: a saved plan's in-sync entry may name a
    // stage deleted since (it is left alone, not adopted again).
    let is_live = |uuid: Uuid| live.iter().any(|l| l.uuid == uuid);
    for entry in &plan.stages {
        if let Action::InSync { uuid } | Action::Update { uuid, .. } = entry.action
            && is_live(uuid)
        {
            inventory.manage(Kind::CaptchaStage, uuid, &entry.name, ManagedAs::Adopted);
        }
    }
    if let Some(report) = report {
        for outcome in &report.outcomes {
            if let WriteResult::Written(live) = &outcome.result {
                let how = match outcome.operation {
                    Operation::Create => ManagedAs::Created,
                    Operation::Update => ManagedAs::Adopted,
                };
                inventory.manage(Kind::CaptchaStage, live.uuid, &live.fields.name, how);
            }
        }
        for delete in &report.deletes {
            if matches!(
                delete.result,
                DeleteResult::Deleted | DeleteResult::AlreadyGone
            ) {
                inventory.forget(delete.uuid);
            }
        }
    }
    *inventory != before
}
