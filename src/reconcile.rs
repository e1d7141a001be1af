//! The shared path of `plan`, `apply` and the daemon: fetch live state, then
//! plan; `apply --plan` fetches the same live state ([`fetch_live`]) to check a
//! saved plan against.
//!
//! This is the I/O wrapped around the pure planner. It makes the minimum of
//! calls: one version call, one list call per 100 live stages, and, for the
//! would-be creates, either one name look-up each or one call per 100 stages of
//! every type, whichever is fewer ([`crate::authentik::name_check`]: a name may
//! be held by a stage of another type, which the captcha list cannot show).
//! Never one GET per stage.

use std::collections::BTreeMap;

use crate::authentik::{ApiError, Client, name_check};
use crate::capabilities::Capabilities;
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
pub struct Live {
    pub capabilities: Capabilities,
    /// Every live captcha stage.
    pub stages: Vec<LiveStage>,
    /// name -> kind for the names looked up that a stage of another type holds.
    pub foreign_names: BTreeMap<String, String>,
}

/// Fetches the server version and every captcha stage, then looks up the
/// names `names_to_check` picks from them among all stage types.
pub async fn fetch_live(
    client: &Client,
    names_to_check: impl FnOnce(&[LiveStage]) -> Vec<String>,
) -> Result<Live, ApiError> {
    let version = client.version().await?;
    let stages = client.list_captcha_stages().await?;
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
        capabilities,
    })
}
