//! `stagesync plan`: show what apply would change, without writing anything.

use anyhow::Result;

use crate::cli::{ColorChoice, Format, PlanConfig};
use crate::commands::{connect, load_desired};
use crate::exit;
use crate::output;
use crate::plan::{self, Plan};
use crate::reconcile;
use crate::state::StateFile;

pub async fn run(cfg: PlanConfig, color: ColorChoice) -> Result<i32> {
    let desired = match load_desired(&cfg.dir) {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    let keys = StateFile::read_only(&cfg.state_file)?;
    let client = match connect(&cfg.client) {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let mut plan = reconcile::fetch_and_plan(&client, desired, &keys)
        .await?
        .plan;
    if cfg.ignore_unknown_keys {
        plan = plan.ignoring_unknown_keys();
    }
    output::print_stdout(&render(&plan, cfg.format, output::stdout_color(color)))?;
    Ok(exit_code(&plan))
}

/// Renders a plan in the chosen format.
pub fn render(plan: &Plan, format: Format, color: bool) -> String {
    match format {
        Format::Text => plan::render_text(plan, color),
        Format::Json => plan::render_json(plan),
        Format::Markdown => plan::render_markdown(plan),
    }
}

/// 1 when a stage cannot be planned, 2 when changes are pending, 0 in sync.
pub fn exit_code(plan: &Plan) -> i32 {
    let summary = plan.summary();
    if summary.error > 0 {
        exit::FAILURE
    } else if plan.has_changes() {
        exit::CHANGES_PENDING
    } else {
        exit::SUCCESS
    }
}
