//! The shared path of `plan`, `apply` and the daemon: fetch live state, then plan.
//!
//! This is the I/O wrapped around the pure planner. It makes the minimum of
//! calls: one version call, one list call per 100 live stages, and one name look
//! up per would-be create (a name may be held by a stage of another type, which
//! the captcha list cannot show). Never one GET per stage.

use std::collections::BTreeMap;

use crate::authentik::{ApiError, Capabilities, Client};
use crate::plan::{self, Plan, PlanInputs};
use crate::stage::{DesiredStage, LiveStage};
use crate::state::KeyState;

/// A plan together with what it was made from, ready to show or to apply.
pub struct Planned {
    pub plan: Plan,
    pub desired: Vec<DesiredStage>,
    pub live: Vec<LiveStage>,
    pub capabilities: Capabilities,
}

/// Fetches live state from authentik and plans `desired` against it.
pub async fn fetch_and_plan(
    client: &Client,
    desired: Vec<DesiredStage>,
    keys: &KeyState,
) -> Result<Planned, ApiError> {
    let version = client.version().await?;
    let capabilities = Capabilities::for_version(version);
    let live = client.list_captcha_stages().await?;

    let mut foreign_names = BTreeMap::new();
    for name in plan::names_to_check(&desired, &live) {
        if let Some(holder) = client.find_stage_by_name(&name).await?
            && !holder.is_captcha
        {
            foreign_names.insert(name, holder.kind);
        }
    }

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
        capabilities,
    })
}
