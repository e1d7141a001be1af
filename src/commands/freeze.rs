//! `stagesync freeze`: holds a running daemon's writes until a time, or lifts
//! the hold. It writes the time into the freeze file beside the state file
//! (owner-only, as the state file: whoever may write the state may freeze);
//! the daemon reads it at every pass ([`crate::drift::freeze`]). Nothing
//! listens on a network for it.

use anyhow::{Context, Result};

use crate::cli::FreezeConfig;
use crate::exit::Exit;
use crate::output::Console;
use crate::state::write_private_file;
use crate::text::escape;

pub(crate) fn run(cfg: &FreezeConfig, console: &Console) -> Result<Exit> {
    let shown = escape(&cfg.file.display().to_string()).into_owned();
    match cfg.until {
        Some(until) => {
            if let Some(dir) = cfg.file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the folder of {shown}"))?;
            }
            let text = humantime::format_rfc3339_seconds(until).to_string();
            write_private_file(&cfg.file, format!("{text}\n").as_bytes())
                .with_context(|| format!("cannot write the freeze file {shown}"))?;
            console.out(&format!(
                "Frozen until {text} ({shown}). A `stagesync run` with this state file holds its writes from its next pass (SIGHUP starts one now) and writes the held drift when the freeze ends.\n"
            ))?;
        }
        None => {
            match std::fs::remove_file(&cfg.file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot remove the freeze file {shown}"));
                }
            }
            console.out(&format!(
                "Freeze lifted ({shown}). The daemon writes held drift at its next pass (SIGHUP starts one now); scheduled --freeze-window windows still hold.\n"
            ))?;
        }
    }
    Ok(Exit::Success)
}
