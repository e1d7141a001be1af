//! `stagesync plan`: show what apply would change, without writing anything.
//! With `--verify-keys`, each entry that writes its key also shows whether its
//! captcha provider accepts that key (see [`crate::verify`]); the exit code
//! does not change (`stagesync verify` is the gate).

use std::time::SystemTime;

use anyhow::{Context, Result};
use rand::RngCore;

use crate::cli::{Format, PlanConfig};
use crate::commands::{connect, load_desired};
use crate::exit::{CommandError, Outcome};
use crate::output;
use crate::plan::saved::SavedPlan;
use crate::plan::{self, Plan};
use crate::reconcile;
use crate::state::{StateFile, write_private_file};
use crate::text::escape;
use crate::verify::{ProbeSettings, Prober, allowed_by};

pub(crate) async fn run(cfg: PlanConfig, color: bool) -> Result<Outcome> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy)?;
    let (keys, inventory) = StateFile::read_only_with_inventory(&cfg.reconcile.state_file)?;
    for line in keys.damage_report(&cfg.reconcile.state_file) {
        eprintln!("warning: {}", escape(&line));
    }
    let client = connect(&cfg.reconcile.client)?;
    let planned = reconcile::fetch_and_plan(&client, desired, &keys).await?;
    // The one-shot commands only get here with every manifest valid.
    let reconcile::Planned {
        mut plan,
        desired,
        live,
        ..
    } = reconcile::add_prune(&client, planned, &inventory, cfg.reconcile.prune, true).await?;
    if cfg.ignore_unknown_keys {
        plan = plan.ignoring_unknown_keys();
    }
    if cfg.verify_keys {
        let (entries, probes): (Vec<_>, Vec<_>) = plan.key_probes().into_iter().unzip();
        let prober = Prober::new(ProbeSettings::default())?;
        let checks = prober
            .verify(&probes, &allowed_by(&cfg.reconcile.policy.hosts))
            .await;
        plan.key_checks = entries.into_iter().zip(checks).collect();
    }
    output::print_stdout(&render(&plan, cfg.format, color))?;
    if let Some(path) = &cfg.out {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let file = SavedPlan::from_plan(
            &plan,
            &desired,
            &live,
            client.base_url(),
            SystemTime::now(),
            salt,
        )
        .map_err(|reason| CommandError::PlanNotSaved {
            path: path.clone(),
            reason,
        })?;
        // Atomically, readable by the owner only, as the state file.
        write_private_file(path, file.to_json().as_bytes()).with_context(|| {
            format!(
                "cannot write the plan file {}",
                escape(&path.display().to_string())
            )
        })?;
        if plan.deletes().next().is_some() {
            eprintln!(
                "note: the plan file holds no deletes: `apply --plan` never prunes; prune with `apply --prune`"
            );
        }
    }
    Ok(outcome(&plan))
}

/// Renders a plan in the chosen format.
pub(crate) fn render(plan: &Plan, format: Format, color: bool) -> String {
    match format {
        Format::Text => plan::render_text(plan, color),
        Format::Json => plan::render_json(plan),
        Format::Markdown => plan::render_markdown(plan),
    }
}

/// Failed when a stage cannot be planned or a prune is refused (blocked, held
/// back), else whether changes are pending.
pub(crate) fn outcome(plan: &Plan) -> Outcome {
    if plan.summary().error > 0 || plan.prune_refused() {
        Outcome::Failed
    } else if plan.has_changes() {
        Outcome::ChangesPending
    } else {
        Outcome::Success
    }
}
