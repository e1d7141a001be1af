//! `stagesync plan`: show what apply would change, without writing anything.

use anyhow::Result;

use crate::cli::{Format, PlanConfig};
use crate::commands::{connect, load_desired};
use crate::exit::Outcome;
use crate::output;
use crate::plan::{self, Plan};
use crate::reconcile;
use crate::state::StateFile;

pub async fn run(cfg: PlanConfig, color: bool) -> Result<Outcome> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy)?;
    let (keys, inventory) = StateFile::read_only_with_inventory(&cfg.reconcile.state_file)?;
    let client = connect(&cfg.reconcile.client)?;
    let planned = reconcile::fetch_and_plan(&client, desired, &keys).await?;
    // The one-shot commands only get here with every manifest valid.
    let mut plan = reconcile::add_prune(&client, planned, &inventory, cfg.reconcile.prune, true)
        .await?
        .plan;
    if cfg.ignore_unknown_keys {
        plan = plan.ignoring_unknown_keys();
    }
    output::print_stdout(&render(&plan, cfg.format, color))?;
    Ok(outcome(&plan))
}

/// Renders a plan in the chosen format.
pub fn render(plan: &Plan, format: Format, color: bool) -> String {
    match format {
        Format::Text => plan::render_text(plan, color),
        Format::Json => plan::render_json(plan),
        Format::Markdown => plan::render_markdown(plan),
    }
}

/// Failed when a stage cannot be planned or a prune is refused (blocked, held
/// back), else whether changes are pending.
pub fn outcome(plan: &Plan) -> Outcome {
    if plan.summary().error > 0 || plan.prune_refused() {
        Outcome::Failed
    } else if plan.has_changes() {
        Outcome::ChangesPending
    } else {
        Outcome::Success
    }
}
