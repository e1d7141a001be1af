//! `stagesync apply`: plan, show the plan, confirm, then converge authentik.

use std::io::{BufRead, IsTerminal};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApplyReport, DeleteResult, WriteResult};
use crate::cli::{ApplyConfig, Format};
use crate::commands::{connect, load_desired, plan::render};
use crate::exit::{self, CommandError, Outcome};
use crate::output::{self, escape};
use crate::reconcile;
use crate::state::StateFile;

pub async fn run(cfg: ApplyConfig, color: bool) -> Result<Outcome> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy)?;
    let client = connect(&cfg.reconcile.client)?;
    // Lock the state file before planning, so the key status the plan shows is
    // the one this apply will act on.
    let mut state = StateFile::open_for_write(&cfg.reconcile.state_file)?;
    let planned = reconcile::fetch_and_plan(&client, desired, state.keys()).await?;
    // The one-shot commands only get here with every manifest valid.
    let planned = reconcile::add_prune(
        &client,
        planned,
        state.inventory(),
        cfg.reconcile.prune,
        true,
    )
    .await?;
    output::print_stdout(&render(&planned.plan, cfg.format, color))?;

    // A blocked or held-back prune is not converged: it fails, like an error.
    let plan_errors = planned.plan.summary().error + usize::from(planned.plan.prune_refused());
    if !planned.plan.has_changes() {
        // Nothing to write, but matched stages are adopted into the inventory.
        if reconcile::record_inventory(state.inventory_mut(), &planned, None) {
            state.save()?;
        }
        return Ok(if plan_errors > 0 {
            Outcome::Failed
        } else {
            Outcome::Success
        });
    }
    if !cfg.yes && !confirm().await? {
        return Ok(Outcome::Declined);
    }

    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "interrupted: finishing the writes in flight, starting no more (Ctrl-C again to quit at once)"
            );
            on_ctrl_c.cancel();
        }
        // A write can sit in retries for minutes; a second Ctrl-C must not be
        // swallowed (Tokio keeps SIGINT's default action off once listened to).
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted again: exiting without waiting for the writes in flight");
            std::process::exit(exit::INTERRUPTED);
        }
    });
    let report = apply::apply(
        &client,
        &planned.plan,
        state.keys_mut(),
        cfg.concurrency,
        &cancel,
        |_| false,
    )
    .await;
    reconcile::record_inventory(state.inventory_mut(), &planned, Some(&report));
    state.save()?;

    let text = render_report(&report);
    if cfg.format == Format::Json {
        eprint!("{text}");
    } else {
        output::print_stdout(&text)?;
    }
    Ok(if report.converged() && plan_errors == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// Asks on the terminal; refuses when there is none (a CI job must say `--yes`).
async fn confirm() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(CommandError::NoTerminalToConfirm.into());
    }
    eprint!("\nApply these changes? Only 'yes' is accepted: ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    if answer.trim() == "yes" {
        Ok(true)
    } else {
        eprintln!("Apply cancelled; nothing was written.");
        Ok(false)
    }
}

/// One line per write, then a summary line.
pub fn render_report(report: &ApplyReport) -> String {
    let mut out = String::from("\n");
    let (mut created, mut updated) = (0, 0);
    for outcome in &report.outcomes {
        let name = escape(&outcome.name);
        match &outcome.result {
            WriteResult::Written(live) => {
                match outcome.operation {
                    apply::Operation::Create => created += 1,
                    apply::Operation::Update => updated += 1,
                }
                let verb = outcome.operation.past_tense();
                out.push_str(&format!("{verb} {name} ({})\n", live.uuid));
            }
            // The manifest as the plan names it (file:line), so the two read alike.
            WriteResult::Failed(err) => out.push_str(&format!(
                "failed to {} {name} ({}): {}\n",
                outcome.operation.as_str(),
                escape(&format!(
                    "{}:{}",
                    outcome.origin.file.display(),
                    outcome.origin.line
                )),
                escape(&err.to_string())
            )),
            WriteResult::Skipped(why) => out.push_str(&format!(
                "not started: {name}: {}\n",
                escape(&why.to_string())
            )),
        }
    }
    let mut deleted = 0;
    let mut failed = report.failed().count();
    let mut skipped = report.skipped();
    for delete in &report.deletes {
        let name = escape(&delete.name);
        let uuid = delete.uuid;
        match &delete.result {
            DeleteResult::Deleted => {
                deleted += 1;
                out.push_str(&format!("deleted {name} ({uuid})\n"));
            }
            DeleteResult::AlreadyGone => {
                out.push_str(&format!("already gone: {name} ({uuid})\n"));
            }
            DeleteResult::InUse(users) => {
                failed += 1;
                out.push_str(&format!(
                    "not deleted {name} ({uuid}): in use now: {}\n",
                    escape(&users.join(", "))
                ));
            }
            DeleteResult::Failed(err) => {
                failed += 1;
                out.push_str(&format!(
                    "failed to delete {name} ({uuid}): {}\n",
                    escape(&err.to_string())
                ));
            }
            DeleteResult::Skipped(why) => {
                skipped += 1;
                out.push_str(&format!("not started: delete {name}: {why}\n"));
            }
        }
    }
    out.push_str(&format!("Apply: {created} created, {updated} updated, "));
    if !report.deletes.is_empty() {
        out.push_str(&format!("{deleted} deleted, "));
    }
    out.push_str(&format!("{failed} failed"));
    if skipped > 0 {
        out.push_str(&format!(", {skipped} not started"));
    }
    out.push_str(".\n");
    out
}
