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
    let keys = StateFile::read_only(&cfg.reconcile.state_file)?;
    for line in keys.damage_report(&cfg.reconcile.state_file) {
        eprintln!("warning: {}", output::escape(&line));
    }
    let client = connect(&cfg.reconcile.client)?;
    let mut plan = reconcile::fetch_and_plan(&client, desired, &keys)
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

/// Failed when a stage cannot be planned, else whether changes are pending.
pub fn outcome(plan: &Plan) -> Outcome {
    if plan.summary().error > 0 {
        Outcome::Failed
    } else if plan.has_changes() {
        Outcome::ChangesPending
    } else {
        Outcome::Success
    }
}
