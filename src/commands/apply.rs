//! `stagesync apply`: plan, show the plan, confirm, then converge authentik:
//! the pipeline ([`Session`]) with a question before the writes, and the
//! report of what was made.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::apply::{ApplyReport, Ended, Operation, Outcome, WriteError};
use crate::cli::{ApplyConfig, Format};
use crate::commands::{connect, load_desired, plan::render};
use crate::exit::{CommandError, Exit};
use crate::output::Console;
use crate::reconcile::{Planned, Session, State};
use crate::signals::{Announce, Shutdown, StopSignal};
use crate::text::escape;

pub(crate) async fn run(
    cfg: ApplyConfig,
    console: &Console,
    shutdown: &Shutdown,
    color: bool,
) -> Result<Exit> {
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy, console)?;
    let client = connect(&cfg.reconcile.client)?;
    // Lock the state file before planning, so the key status the plan shows is
    // the one this apply will act on.
    let state = State::locked(&cfg.reconcile.state_file)?;
    for line in state.damage_report() {
        console.errln(&format!("warning: {}", escape(&line)));
    }
    let mut session = Session::new(client, state, cfg.reconcile.policy.clone());
    // The one-shot commands only get here with every manifest valid.
    let mut planned = session
        .fetch_and_plan(desired, cfg.reconcile.prune, true)
        .await?;
    session.attribute(&mut planned.plan).await;
    console.out(&render(&planned.plan, cfg.format, color))?;

    // A blocked or held-back prune is not converged: it fails, like an error.
    let plan_errors = planned.plan.summary().error + usize::from(planned.plan.prune_refused());
    if !planned.plan.has_changes() {
        // Nothing to write, but matched stages are adopted into the inventory.
        if session.record(&planned, None) {
            session.save()?;
        }
        return Ok(if plan_errors > 0 {
            Exit::Failed
        } else {
            Exit::Success
        });
    }
    if !cfg.yes && !confirm(console).await? {
        return Ok(Exit::Declined);
    }
    let writes = write(&mut session, &planned, &cfg, console, shutdown).await?;
    Ok(writes.exit(plan_errors))
}

/// What [`write`] did: every entry's outcome, and the stop signal that ended
/// it early, if one did.
pub(crate) struct Writes {
    pub(crate) report: ApplyReport,
    stopped: Option<StopSignal>,
}

impl Writes {
    /// A stop signal decides the exit (130/143); otherwise success only when
    /// every entry was made and the plan had no errors.
    pub(crate) fn exit(&self, plan_errors: usize) -> Exit {
        match self.stopped {
            Some(signal) => signal.exit(),
            None if self.report.converged() && plan_errors == 0 => Exit::Success,
            None => Exit::Failed,
        }
    }
}

/// Executes `planned`, with the progress shown as writes complete, stop
/// signals handled (see [`crate::signals`]), the inventory recorded and the
/// state file saved, and the summary printed (on stderr under `--format
/// json`, so stdout stays one JSON document). The report is printed before a
/// failed save is returned.
pub(crate) async fn write(
    session: &mut Session,
    planned: &Planned,
    cfg: &ApplyConfig,
    console: &Console,
    shutdown: &Shutdown,
) -> Result<Writes> {
    shutdown.listen(
        cfg.shutdown_timeout,
        Announce::Console(console.clone()),
        false,
    )?;
    let writes = planned
        .plan
        .entries
        .iter()
        .filter(|e| e.action.write().is_some())
        .count();
    let mut progress = Progress::new(writes, cfg.format, console);
    let report = session
        .execute(
            &planned.plan,
            cfg.concurrency,
            &shutdown.stop,
            |_| false,
            |outcome| progress.record(outcome),
        )
        .await;
    let printed_lines = progress.finish();
    session.record(planned, Some(&report));
    let saved = session.save();

    let mut text = render_summary(&report);
    if !printed_lines {
        text.insert(0, '\n');
    }
    let stopped = shutdown.stopped_by();
    if let Some(signal) = stopped {
        text.push_str(&render_stop(
            &report,
            signal,
            session.state.path(),
            saved.is_ok(),
        ));
    }
    if cfg.format == Format::Json {
        console.err(&text);
    } else {
        console.out(&text)?;
    }
    saved?;
    Ok(Writes { report, stopped })
}

/// Asks on the terminal; refuses when there is none (a CI job must say `--yes`).
async fn confirm(console: &Console) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(CommandError::NoTerminalToConfirm.into());
    }
    console.err("\nApply these changes? Only 'yes' is accepted: ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    if answer.trim() == "yes" {
        Ok(true)
    } else {
        console.errln("Apply cancelled; nothing was written.");
        Ok(false)
    }
}

/// One line per entry (as [`Progress`] prints writes), then the summary line.
pub(crate) fn render_report(report: &ApplyReport) -> String {
    let mut out = String::from("\n");
    for outcome in report
        .outcomes
        .iter()
        .filter(|o| o.operation != Operation::Delete)
    {
        out.push_str(&render_outcome(outcome));
    }
    out.push_str(&render_summary(report));
    out
}

/// The line of one write.
fn render_outcome(outcome: &Outcome) -> String {
    let name = escape(&outcome.name);
    match &outcome.result {
        Ended::Written(written) => {
            let verb = outcome.operation.past_tense();
            format!("{verb} {name} ({})\n", written.uuid)
        }
        // The manifest as the plan names it (file:line), so the two read alike.
        Ended::Failed(err) => format!(
            "failed to {} {name} ({}): {}\n",
            outcome.operation.as_str(),
            escape(
                &outcome
                    .origin
                    .as_ref()
                    .map(|o| format!("{}:{}", o.file.display(), o.line))
                    .unwrap_or_default()
            ),
            escape(&err.to_string())
        ),
        Ended::Skipped(why) => format!("not started: {name}: {}\n", escape(&why.to_string())),
        Ended::Deleted { .. } | Ended::InUse(_) => String::new(),
    }
}

/// The lines of the deletes, then
/// `Apply: 1 created, 2 updated[, 1 deleted], 0 failed[, 3 not started].`
fn render_summary(report: &ApplyReport) -> String {
    let (mut created, mut updated, mut deleted) = (0, 0, 0);
    let mut failed = 0;
    let mut skipped = 0;
    let mut out = String::new();
    let mut any_delete = false;
    for outcome in &report.outcomes {
        let name = escape(&outcome.name);
        match (outcome.operation, &outcome.result) {
            (Operation::Create, Ended::Written(_)) => created += 1,
            (Operation::Update, Ended::Written(_)) => updated += 1,
            (Operation::Delete, result) => {
                any_delete = true;
                match result {
                    Ended::Deleted {
                        already_gone: false,
                    } => {
                        deleted += 1;
                        out.push_str(&format!("deleted {name} ({})\n", delete_uuid(outcome)));
                    }
                    Ended::Deleted { already_gone: true } => {
                        out.push_str(&format!(
                            "already gone: {name} ({})\n",
                            delete_uuid(outcome)
                        ));
                    }
                    Ended::InUse(users) => {
                        failed += 1;
                        out.push_str(&format!(
                            "not deleted {name} ({}): in use now: {}\n",
                            delete_uuid(outcome),
                            escape(&users.join(", "))
                        ));
                    }
                    // Abandoned at shutdown: not started, as far as anyone knows.
                    Ended::Failed(WriteError::Abandoned) => {
                        skipped += 1;
                        out.push_str(&format!(
                            "not started: delete {name}: abandoned at shutdown without an answer; whether authentik deleted it is unknown, the next run sees\n"
                        ));
                    }
                    Ended::Failed(err) => {
                        failed += 1;
                        out.push_str(&format!(
                            "failed to delete {name} ({}): {}\n",
                            delete_uuid(outcome),
                            escape(&err.to_string())
                        ));
                    }
                    Ended::Skipped(why) => {
                        skipped += 1;
                        out.push_str(&format!("not started: delete {name}: {why}\n"));
                    }
                    Ended::Written(_) => {}
                }
            }
            (_, Ended::Failed(_)) => failed += 1,
            (_, Ended::Skipped(_)) => skipped += 1,
            _ => {}
        }
    }
    out.push_str(&format!("Apply: {created} created, {updated} updated, "));
    if any_delete {
        out.push_str(&format!("{deleted} deleted, "));
    }
    out.push_str(&format!("{failed} failed"));
    if skipped > 0 {
        out.push_str(&format!(", {skipped} not started"));
    }
    out.push_str(".\n");
    out
}

/// The live stage a delete's outcome is about.
fn delete_uuid(outcome: &Outcome) -> String {
    outcome.uuid.map(|u| u.to_string()).unwrap_or_default()
}

/// What a stop signal did: what was not started, what was abandoned, and
/// whether the state file has it.
fn render_stop(report: &ApplyReport, signal: StopSignal, state_file: &Path, saved: bool) -> String {
    let abandoned = report
        .failed()
        .filter(|(o, e)| o.operation != Operation::Delete && matches!(e, WriteError::Abandoned))
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
struct Progress<'c> {
    bar: Option<ProgressBar>,
    to_stderr: bool,
    console: &'c Console,
    started: bool,
    failed: usize,
}

impl<'c> Progress<'c> {
    fn new(total: usize, format: Format, console: &'c Console) -> Self {
        let bar = console.err_is_terminal().then(|| {
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
            console,
            started: false,
            failed: 0,
        }
    }

    /// Shows a write's line as soon as it is settled (deletes are listed in
    /// the summary).
    fn record(&mut self, outcome: &Outcome) {
        if outcome.operation == Operation::Delete {
            return;
        }
        let mut line = render_outcome(outcome);
        if !std::mem::replace(&mut self.started, true) {
            line.insert(0, '\n');
        }
        let (to_stderr, console) = (self.to_stderr, self.console);
        let print = || {
            if to_stderr {
                console.err(&line);
            } else {
                // A closed stdout (`| head`) must not stop the apply.
                let _ = console.out(&line);
            }
        };
        match &self.bar {
            Some(bar) => {
                bar.suspend(print);
                if matches!(outcome.result, Ended::Failed(_)) {
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
