//! `stagesync export`: one manifest per live captcha stage, to adopt stages that
//! were clicked together in the UI.
//!
//! authentik never returns a private key, so each manifest references one with
//! `!Env CAPTCHA_<NAME>_PRIVATE_KEY` (never `STAGESYNC_*`: manifests may not
//! read stagesync's own variables); fields at authentik's defaults are left
//! out so the manifests stay short. Nothing is written if any target file exists
//! (without `--force`): an export is all or nothing.
//!
//! Traps:
//! - An export never writes outside `--dir`: a symlink where a manifest would
//!   go (dangling or not) is refused, with or without `--force`. A new file is
//!   created with `create_new` (which does not follow a symlink planted after
//!   the check); `--force` writes a temporary file and renames it over the
//!   target, which replaces a link rather than writing through it.
//! - All or nothing ([`write_all`]): every manifest is written to a
//!   temporary file first (where a full disk fails), then each is moved into
//!   place; a move that fails removes the files this export created.
//! - A stage name may be 255 characters, more than many file systems take in
//!   a file name: file names and key variables are cut to
//!   [`MAX_STEM_CHARS`] (and made unique again).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::ExportConfig;
use crate::commands::connect;
use crate::exit::{CommandError, Exit};
use crate::kinds::captcha::LiveStage;
use crate::kinds::captcha::api::Stages;
use crate::kinds::captcha::export::manifest_for;
use crate::kinds::guard::{self, matching::LiveGuards};
use crate::manifest::{self, Severity};
use crate::output::Console;
use crate::reconcile::fetch_guards;
use crate::text::escape;

pub(crate) async fn run(cfg: ExportConfig, console: &Console) -> Result<Exit> {
    let client = connect(&cfg.client)?;
    let mut live = Stages::new(&client).list().await?;
    live.sort_by(|a, b| a.fields.name.cmp(&b.fields.name));
    // What each stage guards: one paged list of bindings and one of
    // identification stages, only when there is a stage to export.
    // (`fetch_guards` with nothing declared asks for no flow.)
    let guards = if live.is_empty() {
        LiveGuards::default()
    } else {
        fetch_guards(&client, &[]).await?
    };

    let files = plan_files(&cfg.dir, &live);
    // Checked before anything is written: an export is all or nothing. A
    // link is refused even with --force: it could point anywhere.
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    let links: Vec<PathBuf> = files
        .iter()
        .map(|f| f.path.clone())
        .filter(|p| is_link(p))
        .collect();
    if !links.is_empty() {
        return Err(CommandError::ExportWouldFollowLinks(links).into());
    }
    if !cfg.force {
        let existing: Vec<PathBuf> = files
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| p.exists())
            .collect();
        if !existing.is_empty() {
            return Err(CommandError::ExportWouldOverwrite(existing).into());
        }
    }
    std::fs::create_dir_all(&cfg.dir)
        .with_context(|| format!("cannot create {}", cfg.dir.display()))?;
    let scope = manifest::Scope::open(&cfg.dir, &cfg.policy)
        .with_context(|| format!("cannot read {}", cfg.dir.display()))?;
    let texts: Vec<String> = files
        .iter()
        .map(|f| {
            let mut text = manifest_for(f.stage, &f.key_variable);
            if let Some(lines) = guard::export_lines(
                f.stage.uuid,
                &guards.bindings,
                &guards.identification_stages,
            ) {
                text.push_str(&lines);
            }
            text
        })
        .collect();
    let targets: Vec<(&Path, &str)> = files
        .iter()
        .zip(&texts)
        .map(|(f, text)| (f.path.as_path(), text.as_str()))
        .collect();
    write_all(&targets, cfg.force)?;
    let mut unrepresentable = 0;
    for (file, text) in files.iter().zip(&texts) {
        console.out(&format!(
            "wrote {} ({})\n",
            escape(&file.path.display().to_string()),
            escape(&file.stage.fields.name)
        ))?;
        // authentik accepts values manifests refuse (a relative URL, min > max,
        // a threshold stored as null): say so now rather than at the next plan.
        let (_, diagnostics) = manifest::load_file(
            file.path.clone(),
            text.as_bytes(),
            &scope,
            &cfg.policy,
            &|_| Some(std::ffi::OsString::from("exported")),
        );
        for diagnostic in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            unrepresentable += 1;
            console.errln(&format!(
                "warning: authentik holds a value manifests do not accept: {diagnostic}"
            ));
        }
    }
    if unrepresentable > 0 {
        console.errln(
            "warning: fix the values above before `stagesync plan`; `stagesync validate` shows them again",
        );
    }
    let vars: Vec<&str> = files.iter().map(|f| f.key_variable.as_str()).collect();
    console.errln(&format!(
        "Exported {} stage(s). authentik never returns private keys: set {} before `stagesync plan`.",
        files.len(),
        if vars.is_empty() {
            "nothing".to_owned()
        } else {
            vars.join(", ")
        }
    ));
    Ok(Exit::Success)
}

/// Writes every `(path, text)` or none. Each text goes to a temporary file in
/// its target's folder first (a full disk, a read-only folder fail here, before
/// any target is touched); then each is moved into place without following a
/// symlink at the target: a new file by a hard link that fails on any existing
/// entry (a dangling link included), with `force` by a rename, which replaces
/// the directory entry, whatever it is, and never writes through it. A move
/// that fails removes the files moved into place before it, unless they
/// replaced one (`force`): those are named in the error.
fn write_all(targets: &[(&Path, &str)], force: bool) -> Result<()> {
    use std::io::Write as _;
    let mut staged = Vec::with_capacity(targets.len());
    for (path, text) in targets {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut temp = tempfile::Builder::new()
            .prefix(".stagesync-export-")
            .tempfile_in(dir)
            .and_then(|mut temp| temp.write_all(text.as_bytes()).map(|()| temp))
            .with_context(|| {
                format!(
                    "cannot write {}; nothing was written",
                    escape(&path.display().to_string())
                )
            })?;
        temp.as_file_mut().sync_all().ok();
        staged.push((*path, temp));
    }
    let mut placed: Vec<(&Path, bool)> = Vec::new();
    for (path, temp) in staged {
        let replaced = force && std::fs::symlink_metadata(path).is_ok();
        let moved = if !force {
            temp.persist_noclobber(path).map(drop).map_err(|e| e.error)
        } else if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            Err(std::io::Error::other(
                "it became a symbolic link; not written through",
            ))
        } else {
            temp.persist(path).map(drop).map_err(|e| e.error)
        };
        if let Err(err) = moved {
            let mut kept = Vec::new();
            for (done, replaced) in placed {
                if replaced {
                    kept.push(escape(&done.display().to_string()).into_owned());
                } else {
                    let _ = std::fs::remove_file(done);
                }
            }
            let undone = if kept.is_empty() {
                "nothing was written".to_owned()
            } else {
                format!("already replaced: {}", kept.join(", "))
            };
            return Err(anyhow::Error::new(err).context(format!(
                "cannot write {}; {undone}",
                escape(&path.display().to_string())
            )));
        }
        placed.push((path, replaced));
    }
    Ok(())
}

/// One manifest to write.
struct ExportFile<'a> {
    path: PathBuf,
    /// The `!Env` variable of its private key.
    key_variable: String,
    stage: &'a LiveStage,
}

/// The file and key variable of each stage (`live` sorted by name): the name
/// made safe, with a numeric suffix where two names map to the same file or the
/// same variable (`Sign Up` and `sign-up`), so no stage is given another's key.
fn plan_files<'a>(dir: &Path, live: &'a [LiveStage]) -> Vec<ExportFile<'a>> {
    let mut stems = BTreeSet::new();
    let mut variables = BTreeSet::new();
    live.iter()
        .map(|stage| {
            let stem = unique(&mut stems, &file_stem(&stage.fields.name), |base, n| {
                format!("{base}-{n}")
            });
            let variable = variable_part(&stage.fields.name);
            let variable = cut(&variable, '_');
            let key_variable = unique(&mut variables, variable, |base, n| format!("{base}_{n}"));
            ExportFile {
                path: dir.join(format!("{stem}.yaml")),
                key_variable: format!("CAPTCHA_{key_variable}_PRIVATE_KEY"),
                stage,
            }
        })
        .collect()
}

/// `base`, or the first `suffixed(base, n)` (n = 2, 3, ...) not in `taken`; taken from then on.
fn unique(
    taken: &mut BTreeSet<String>,
    base: &str,
    suffixed: impl Fn(&str, usize) -> String,
) -> String {
    let mut candidate = base.to_owned();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = suffixed(base, n);
        n += 1;
    }
    candidate
}

/// The most characters of a stage name kept in a file name or a key variable:
/// file systems take 255 bytes per name, and a variable of a few dozen
/// characters is as unique in practice. A suffix (`-2`) makes cut names unique.
const MAX_STEM_CHARS: usize = 100;

/// `s` (ASCII by then) cut to [`MAX_STEM_CHARS`], without a trailing `sep`
/// where it was cut.
fn cut(s: &str, sep: char) -> &str {
    if s.len() <= MAX_STEM_CHARS {
        s
    } else {
        s[..MAX_STEM_CHARS].trim_end_matches(sep)
    }
}

/// A safe file name: lower-case letters, digits, `-` and `_`; anything else
/// becomes `-`; at most [`MAX_STEM_CHARS`] characters.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let stem = cut(stem.trim_matches('-'), '-').to_owned();
    if stem.is_empty() {
        "stage".to_owned()
    } else {
        stem
    }
}

/// `CAPTCHA_<NAME>_PRIVATE_KEY`, with the name upper-cased and anything that
/// cannot be in a variable name turned into `_`. Two names can map to one
/// variable; `export` makes them unique with a suffix.
#[cfg(test)]
pub(crate) fn key_variable(name: &str) -> String {
    format!("CAPTCHA_{}_PRIVATE_KEY", cut(&variable_part(name), '_'))
}

fn variable_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::captcha::StageFields;
    use uuid::Uuid;

    #[test]
    fn variable_and_file_names_are_safe() {
        assert_eq!(key_variable("rec-login"), "CAPTCHA_REC_LOGIN_PRIVATE_KEY");
        assert_eq!(
            key_variable("Sign up (v2)"),
            "CAPTCHA_SIGN_UP__V2__PRIVATE_KEY"
        );
        assert_eq!(file_stem("Sign up/../x"), "sign-up----x");
        assert_eq!(file_stem("///"), "stage");
    }

    #[test]
    fn long_names_are_cut_and_stay_unique() {
        let long = "x".repeat(299);
        let stages: Vec<LiveStage> = [format!("{long}a"), format!("{long}b"), "ab cd".into()]
            .into_iter()
            .map(|name| LiveStage {
                uuid: Uuid::nil(),
                fields: StageFields::with_defaults(&name, "p"),
            })
            .collect();
        let files = plan_files(Path::new("out"), &stages);
        let x100 = "x".repeat(MAX_STEM_CHARS);
        let x100_upper = "X".repeat(MAX_STEM_CHARS);
        assert_eq!(files[0].path, PathBuf::from(format!("out/{x100}.yaml")));
        assert_eq!(files[1].path, PathBuf::from(format!("out/{x100}-2.yaml")));
        assert_eq!(
            files[1].key_variable,
            format!("CAPTCHA_{x100_upper}_2_PRIVATE_KEY")
        );
        assert_eq!(files[2].path, PathBuf::from("out/ab-cd.yaml"));
        // A cut never leaves a separator at the end.
        assert_eq!(file_stem(&format!("{}-y", "a".repeat(99))), "a".repeat(99));
        assert_eq!(cut(&format!("{}__", "a".repeat(99)), '_'), "a".repeat(99));
        assert_eq!(cut("ab__", '_'), "ab__");
    }

    #[test]
    fn colliding_file_names_get_a_suffix() {
        let a = LiveStage {
            uuid: Uuid::nil(),
            fields: StageFields::with_defaults("A b", "p"),
        };
        let b = LiveStage {
            uuid: Uuid::nil(),
            fields: StageFields::with_defaults("a-b", "p"),
        };
        let c = LiveStage {
            uuid: Uuid::nil(),
            fields: StageFields::with_defaults("a_b_2", "p"),
        };
        let live = [a, b, c];
        let files = plan_files(Path::new("out"), &live);
        assert_eq!(files[0].path, PathBuf::from("out/a-b.yaml"));
        assert_eq!(files[1].path, PathBuf::from("out/a-b-2.yaml"));
        assert_eq!(files[0].key_variable, "CAPTCHA_A_B_PRIVATE_KEY");
        assert_eq!(files[1].key_variable, "CAPTCHA_A_B_2_PRIVATE_KEY");
        // A name whose own variable is a suffixed one already taken.
        assert_eq!(files[2].path, PathBuf::from("out/a_b_2.yaml"));
        assert_eq!(files[2].key_variable, "CAPTCHA_A_B_2_2_PRIVATE_KEY");
    }
}
