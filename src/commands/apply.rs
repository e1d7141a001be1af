//! `stagesync apply`: plan, show the plan, confirm, then converge authentik.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::apply::{self, ApplyReport, DeleteResult, WriteError, WriteOutcome, WriteResult};
use crate::authentik::Client;
use crate::cli::{ApplyConfig, Format};
use crate::commands::{connect, load_desired, plan::render};
use crate::daemon::signals::DELIBERATE_SECOND_SIGNAL;
use crate::exit::{CommandError, Outcome};
use crate::kinds::captcha::LiveStage;
use crate::output;
use crate::plan::Plan;
use crate::reconcile;
use crate::state::StateFile;
use crate::text::escape;

pub(crate) async fn run(cfg: ApplyConfig, color: bool) -> Result<Outcome> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy)?;
    let client = connect(&cfg.reconcile.client)?;
    // Lock the state file before planning, so the key status the plan shows is
    // the one this apply will act on.
    let mut state = StateFile::open_for_write(&cfg.reconcile.state_file)?;
    for line in state.keys().damage_report(&cfg.reconcile.state_file) {
        eprintln!("warning: {}", escape(&line));
    }
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
        if reconcile::record_inventory(state.inventory_mut(), &planned.plan, &planned.live, None) {
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

    let writes = write(
        &client,
        &planned.plan,
        &planned.live,
        &mut state,
        cfg.concurrency,
        cfg.format,
        cfg.shutdown_timeout,
    )
    .await?;
    Ok(writes.outcome(plan_errors))
}

/// What [`write`] did: every write's outcome, and the stop signal that ended
/// it early, if one did.
pub(crate) struct Writes {
    pub(crate) report: ApplyReport,
    stopped: Option<StopSignal>,
}

impl Writes {
    /// A stop signal decides the exit (130/143); otherwise success only when
    /// every write landed and the plan had no errors.
    pub(crate) fn outcome(&self, plan_errors: usize) -> Outcome {
        match self.stopped {
            Some(signal) => signal.outcome(),
            None if self.report.converged() && plan_errors == 0 => Outcome::Success,
            None => Outcome::Failed,
        }
    }
}

/// Executes `plan`'s writes, with the progress shown as they complete, stop
/// signals handled (see [`stop_on_signals`]), the state file saved, and the
/// summary printed (on stderr under `--format json`, so stdout stays one JSON
/// document). The report is printed before a failed save is returned.
pub(crate) async fn write(
    client: &Client,
    plan: &Plan,
    live: &[LiveStage],
    state: &mut StateFile,
    concurrency: usize,
    format: Format,
    shutdown_timeout: Duration,
) -> Result<Writes> {
    let stop = apply::Stop::new();
    let stopped_by = stop_on_signals(&stop, shutdown_timeout)?;
    let writes = plan
        .stages
        .iter()
        .filter(|e| e.action.write().is_some())
        .count();
    let mut progress = Progress::new(writes, format);
    let report = apply::apply(
        client,
        plan,
        state,
        concurrency,
        &stop,
        |_| false,
        |outcome| progress.record(outcome),
    )
    .await;
    let printed_lines = progress.finish();
    reconcile::record_inventory(state.inventory_mut(), plan, live, Some(&report));
    let saved = state.save();

    let mut text = render_summary(&report);
    if !printed_lines {
        text.insert(0, '\n');
    }
    let stopped = stopped_by.get().copied();
    if let Some(signal) = stopped {
        text.push_str(&render_stop(&report, signal, state.path(), saved.is_ok()));
    }
    if format == Format::Json {
        eprint!("{text}");
    } else {
        output::print_stdout(&text)?;
    }
    saved?;
    Ok(Writes { report, stopped })
}

/// The stop signal that ended an apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            StopSignal::Interrupt => Outcome::Interrupted,
            StopSignal::Terminate => Outcome::Terminated,
        }
    }
}

/// SIGINT or SIGTERM: no new writes, the writes in flight get the grace
/// period of `shutdown_timeout`. A second one abandons them at once (the
/// state is still saved); a third exits without saving. Returns where the
/// first signal is recorded.
fn stop_on_signals(
    stop: &apply::Stop,
    shutdown_timeout: Duration,
) -> Result<Arc<OnceLock<StopSignal>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stopped_by = Arc::new(OnceLock::new());
    let first = stopped_by.clone();
    let stop = stop.clone();
    stop.abandon_after_grace(shutdown_timeout);
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                Some(()) = term.recv() => StopSignal::Terminate,
                Some(()) = int.recv() => StopSignal::Interrupt,
                else => std::future::pending().await,
            }
        };
        let signal = next().await;
        let _ = first.set(signal);
        eprintln!(
            "{} received: starting no more writes; the writes in flight get {} to finish, then are abandoned (send it again to abandon them now)",
            signal.name(),
            humantime::format_duration(apply::grace_period(shutdown_timeout)),
        );
        stop.cancel.cancel();
        let at = Instant::now();
        loop {
            let again = next().await;
            if at.elapsed() < DELIBERATE_SECOND_SIGNAL {
                continue;
            }
            if !stop.abandon.is_cancelled() {
                eprintln!(
                    "{} received again: abandoning the writes in flight now",
                    again.name()
                );
                stop.abandon.cancel();
            } else {
                eprintln!(
                    "{} received again: exiting without saving the state file",
                    again.name()
                );
                std::process::exit(again.outcome().code());
            }
        }
    });
    Ok(stopped_by)
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

/// One line per write (as [`Progress`] prints them), then the summary line.
pub(crate) fn render_report(report: &ApplyReport) -> String {
    let mut out = String::from("\n");
    for outcome in &report.outcomes {
        out.push_str(&render_outcome(outcome));
    }
    out.push_str(&render_summary(report));
    out
}

/// The line of one write.
fn render_outcome(outcome: &WriteOutcome) -> String {
    let name = escape(&outcome.name);
    match &outcome.result {
        WriteResult::Written(live) => {
            let verb = outcome.operation.past_tense();
            format!("{verb} {name} ({})\n", live.uuid)
        }
        // The manifest as the plan names it (file:line), so the two read alike.
        WriteResult::Failed(err) => format!(
            "failed to {} {name} ({}): {}\n",
            outcome.operation.as_str(),
            escape(&format!(
                "{}:{}",
                outcome.origin.file.display(),
                outcome.origin.line
            )),
            escape(&err.to_string())
        ),
        WriteResult::Skipped(why) => format!("not started: {name}: {}\n", escape(&why.to_string())),
    }
}

/// `Apply: 1 created, 2 updated, 0 failed[, 3 not started].`
fn render_summary(report: &ApplyReport) -> String {
    let (mut created, mut updated) = (0, 0);
    for outcome in &report.outcomes {
        if let WriteResult::Written(_) = outcome.result {
            match outcome.operation {
                apply::Operation::Create => created += 1,
                apply::Operation::Update => updated += 1,
            }
        }
    }
    let mut out = String::new();
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

/// What a stop signal did: what was not started, what was abandoned, and
/// whether the state file has it.
fn render_stop(report: &ApplyReport, signal: StopSignal, state_file: &Path, saved: bool) -> String {
    let abandoned = report
        .failed()
        .filter(|(_, e)| matches!(e, WriteError::Abandoned))
        .count();
    let mut out = format!(
        "Stopped by {}: {} not started, {abandoned} abandoned without an answer",
        signal.name(),
        report.skipped()
    );
    if abandoned > 0 {
        out.push_str(" (their keys are recorded as unknown: the next apply sends them again)");
    }
    let path = escape(&state_file.display().to_string()).into_owned();
    if saved {
        out.push_str(&format!(". The state file {path} is saved.\n"));
    } else {
        out.push_str(&format!(". The state file {path} could not be saved.\n"));
    }
    out
}

/// Shows the writes as they complete. On a terminal (stderr), a progress bar
/// (done of total, failures so far, time left) with the lines printed above
/// it; otherwise one line per write as it completes. The lines go where the
/// summary goes: stdout, or stderr with `--format json` (stdout is the plan).
struct Progress {
    bar: Option<ProgressBar>,
    to_stderr: bool,
    started: bool,
    failed: usize,
}

impl Progress {
    fn new(total: usize, format: Format) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} writes, {msg} (about {eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("0 failed");
            bar
        });
        Progress {
            bar,
            to_stderr: format == Format::Json,
            started: false,
            failed: 0,
        }
    }

    fn record(&mut self, outcome: &WriteOutcome) {
        let mut line = render_outcome(outcome);
        if !std::mem::replace(&mut self.started, true) {
            line.insert(0, '\n');
        }
        let to_stderr = self.to_stderr;
        let print = || {
            if to_stderr {
                eprint!("{line}");
            } else {
                // A closed stdout (`| head`) must not stop the apply.
                let _ = output::print_stdout(&line);
            }
        };
        match &self.bar {
            Some(bar) => {
                bar.suspend(print);
                if matches!(outcome.result, WriteResult::Failed(_)) {
                    self.failed += 1;
                    bar.set_message(format!("{} failed", self.failed));
                }
                bar.inc(1);
            }
            None => print(),
        }
    }

    /// Clears the bar; returns whether any line was printed.
    fn finish(self) -> bool {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started
    }
}
