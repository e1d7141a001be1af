//! The shared path of `plan`, `apply` and the daemon: fetch live state, then plan.
//!
//! This is the I/O wrapped around the pure planner. It makes the minimum of
//! calls: one version call, one list call per 100 live stages, and one name look
//! up per would-be create (a name may be held by a stage of another type, which
//! the captcha list cannot show). Never one GET per stage.

use std::collections::BTreeMap;

use crate::authentik::{ApiError, Client};
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

/// How many name look-ups run at once: enough that 1,000 new stages do not
/// cost 1,000 round trips in a row, few enough not to load authentik.
const NAME_CHECK_CONCURRENCY: usize = 8;

/// Looks `names` up among every stage type; returns those held by a stage that
/// is not a captcha stage, with that stage's kind.
async fn foreign_names(
    client: &Client,
    names: Vec<String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut found = BTreeMap::new();
    let mut pending = names.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < NAME_CHECK_CONCURRENCY {
            let Some(name) = pending.next() else { break };
            let client = client.clone();
            tasks.spawn(async move {
                let holder = client.find_stage_by_name(&name).await;
                (name, holder)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        // A look-up task only ends without a result if it panicked (a bug; the
        // set is never aborted): raise it here, as if the look-up had run
        // inline, rather than plan as if the name were free.
        let (name, holder) = match joined {
            Ok(found) => found,
            Err(err) => match err.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(err) => panic!("a name look-up stopped without an answer: {err}"),
            },
        };
        if let Some(holder) = holder?
            && !holder.is_captcha
        {
            found.insert(name, holder.kind);
        }
    }
    Ok(found)
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

    let foreign_names = foreign_names(client, plan::names_to_check(&desired, &live)).await?;

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
