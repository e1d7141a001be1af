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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::ExportConfig;
use crate::commands::connect;
use crate::exit::{CommandError, Exit};
use crate::kinds::captcha::LiveStage;
use crate::kinds::captcha::api::Stages;
use crate::kinds::captcha::export::manifest_for;
use crate::manifest::{self, Severity};
use crate::output::Console;
use crate::text::escape;

pub(crate) async fn run(cfg: ExportConfig, console: &Console) -> Result<Exit> {
    let client = connect(&cfg.client)?;
    let mut live = Stages::new(&client).list().await?;
    live.sort_by(|a, b| a.fields.name.cmp(&b.fields.name));

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
    let root = std::fs::canonicalize(&cfg.dir)
        .with_context(|| format!("cannot read {}", cfg.dir.display()))?;
    let mut unrepresentable = 0;
    for file in &files {
        let text = manifest_for(file.stage, &file.key_variable);
        write_inside(&file.path, &text, cfg.force)
            .with_context(|| format!("cannot write {}", file.path.display()))?;
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
            &root,
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

/// Writes `text` to `path` without following a symlink at `path`: a new file
/// with `create_new` (fails on any existing entry, a dangling link included);
/// with `force`, a temporary file beside it renamed over it (a rename replaces
/// the directory entry, whatever it is, and never writes through it).
fn write_inside(path: &Path, text: &str, force: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    if !force {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        return file.write_all(text.as_bytes());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(text.as_bytes())?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(
            "it became a symbolic link; not written through",
        ));
    }
    temp.persist(path).map(|_| ()).map_err(|e| e.error)
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
            let key_variable = unique(
                &mut variables,
                &variable_part(&stage.fields.name),
                |base, n| format!("{base}_{n}"),
            );
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

/// A safe file name: lower-case letters, digits, `-` and `_`; anything else becomes `-`.
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
    let stem = stem.trim_matches('-').to_owned();
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
    format!("CAPTCHA_{}_PRIVATE_KEY", variable_part(name))
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
