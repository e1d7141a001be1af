//! `stagesync apply --plan FILE [DIR]`: apply exactly a saved plan, or nothing.
//!
//! The file is read and checked first (version, digest), then the manifests
//! are loaded (for the keys, which the file does not hold), the state file is
//! locked, and the plan is made again from live state, as `apply` makes it
//! (with prune when the file holds deletes); [`check`] compares the two. Any
//! refusal is a [`CommandError::PlanRefused`] (exit 4) before a single write.
//! There is no confirmation prompt: the reviewed file is the confirmation.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::cli::ApplyConfig;
use crate::commands::apply::write;
use crate::commands::{connect, load_desired, plan::render};
use crate::confined;
use crate::exit::{CommandError, Exit};
use crate::output::Console;
use crate::plan::saved::{self, Fresh, Refusal, SavedPlan, check};
use crate::reconcile::{Planned, Session, State};
use crate::signals::Shutdown;
use crate::text::escape;

/// A plan file larger than this is refused unread: 10,000 stages make ~20 MiB.
const MAX_PLAN_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) async fn run(
    cfg: ApplyConfig,
    path: &Path,
    console: &Console,
    shutdown: &Shutdown,
    color: bool,
) -> Result<Exit> {
    let refused = |refusal| CommandError::PlanRefused {
        path: path.to_owned(),
        refusal,
    };
    let text = read_bounded(path).map_err(|err| match err {
        ReadError::Io(source) => CommandError::PlanFileUnreadable {
            path: path.to_owned(),
            source,
        },
        ReadError::Refused(refusal) => refused(refusal),
    })?;
    let saved = SavedPlan::parse(&text).map_err(refused)?;
    let desired = load_desired(&cfg.reconcile.dir, &cfg.reconcile.policy, console)?;
    let client = connect(&cfg.reconcile.client)?;
    // Locked before reading live state, as a plain apply does: no other apply
    // or daemon writes between the check and the writes.
    let state = State::locked(&cfg.reconcile.state_file)?;
    for line in state.damage_report() {
        console.errln(&format!("warning: {}", escape(&line)));
    }
    let mut session = Session::new(client, state, cfg.reconcile.policy.clone());
    let fresh = session
        .fetch_and_plan(desired, saved.prune_settings(), true)
        .await?;
    let verified = check(
        &saved,
        &Fresh {
            plan: &fresh.plan,
            desired: &fresh.desired,
            live: &fresh.live,
            url: session.client.base_url(),
            version: fresh.plan.capabilities.version,
            now: SystemTime::now(),
            max_age: cfg.max_age,
        },
    )
    .map_err(refused)?;
    let planned = Planned {
        plan: saved::to_plan(&fresh.plan, &verified),
        desired: fresh.desired,
        live: fresh.live,
        guards: fresh.guards,
    };

    console.out(&render(&planned.plan, cfg.format, color))?;
    for report in &verified.left_alone {
        console.errln(&format!(
            "note: left alone: {report} (in sync when planned, changed since: not reviewed; the next plan shows it)"
        ));
    }
    for name in &verified.unplanned {
        console.errln(&format!(
            "note: left alone: {} is not in the plan file (the next plan shows it)",
            escape(name)
        ));
    }
    if !planned.plan.has_changes() {
        return Ok(Exit::Success);
    }
    let writes = write(&mut session, &planned, &cfg, console, shutdown).await?;
    // A saved plan holds no error entries: it is saved only when it has none.
    Ok(writes.exit(0))
}

enum ReadError {
    Io(std::io::Error),
    Refused(Refusal),
}

/// Reads at most [`MAX_PLAN_FILE_BYTES`]; a larger or non-UTF-8 file is not
/// a plan file stagesync wrote. Only a regular file is read: a FIFO or
/// `/dev/stdin` on a pipe or a terminal is refused at once, not waited on.
fn read_bounded(path: &Path) -> Result<String, ReadError> {
    let bytes = match confined::read_regular(path, MAX_PLAN_FILE_BYTES) {
        Ok(read) => read.bytes,
        Err(confined::ReadError::Io(e)) => return Err(ReadError::Io(e)),
        Err(confined::ReadError::TooLarge(_)) => {
            return Err(ReadError::Refused(Refusal::Corrupt(format!(
                "larger than {} MiB",
                MAX_PLAN_FILE_BYTES / 1024 / 1024
            ))));
        }
        // (A path the operator gives is not confined: only `NotRegular` is met here.)
        Err(confined::ReadError::NotRegular | confined::ReadError::Outside) => {
            return Err(ReadError::Io(std::io::Error::other(
                "not a regular file (a pipe, a terminal or a device is refused: pass the file `plan --out` wrote)",
            )));
        }
    };
    String::from_utf8(bytes)
        .map_err(|_| ReadError::Refused(Refusal::Corrupt("not UTF-8 text".into())))
}
