//! `stagesync plan`: show what apply would change, without writing anything.
//! With `--verify-keys`, each entry that writes its key also shows whether its
//! captcha provider accepts that key (see [`crate::verify`]); the exit code
//! does not change (`stagesync verify` is the gate).

use std::time::SystemTime;

use anyhow::{Context, Result};
use rand::RngCore;

use crate::cli::{Format, PlanConfig};
use crate::commands::{connect, load_desired};
use crate::exit::{CommandError, Exit};
use crate::output::Console;
use crate::plan::saved::SavedPlan;
use crate::plan::{self, Plan};
use crate::reconcile::{Planned, Session, State};
use crate::state::write_private_file;
use crate::text::escape;
use crate::verify::{ProbeSettings, Prober, allowed_by};

pub(crate) async fn run(cfg: PlanConfig, console: &Console, color: bool) -> Result<Exit> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy, console)?;
    let state = State::read_only(&cfg.reconcile.state_file)?;
    for line in state.damage_report() {
        console.errln(&format!("warning: {}", escape(&line)));
    }
    let client = connect(&cfg.reconcile.client)?;
    let session = Session::new(client, state, cfg.reconcile.policy.clone());
    // The one-shot commands only get here with every manifest valid.
    let Planned {
        mut plan,
        desired,
        live,
        ..
    } = session
        .fetch_and_plan(desired, cfg.reconcile.prune, true)
        .await?;
    if cfg.ignore_unknown_keys {
        plan = plan.ignoring_unknown_keys();
    }
    session.attribute(&mut plan).await;
    if cfg.verify_keys {
        let (entries, probes): (Vec<_>, Vec<_>) = plan.key_probes().into_iter().unzip();
        let prober = Prober::new(ProbeSettings::default())?;
        let checks = prober
            .verify(&probes, &allowed_by(&cfg.reconcile.policy.hosts))
            .await;
        plan.key_checks = entries.into_iter().zip(checks).collect();
    }
    let rendered = match cfg.format {
        Format::Markdown => plan::render_markdown_fit(&plan, &cfg.fit),
        format => render(&plan, format, color),
    };
    console.out(&rendered)?;
    if let Some(path) = &cfg.out {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let file = SavedPlan::from_plan(
            &plan,
            &desired,
            &live,
            session.client.base_url(),
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
pub(crate) fn outcome(plan: &Plan) -> Exit {
    if plan.summary().error > 0 || plan.prune_refused() {
        Exit::Failed
    } else if plan.has_changes() {
        Exit::ChangesPending
    } else {
        Exit::Success
    }
}
