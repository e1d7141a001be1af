//! What one load may read: the manifest directory and the `--secrets-dir`
//! directories, each opened once as a handle ([`crate::confined`]), and the
//! files that are never a key (stagesync's own token and state files).
//!
//! A `!File` path is resolved by its text to the allowed directory it lies in
//! (relative paths from the manifest's folder; `..` counted by the text), then
//! opened beneath that directory's handle: a symlink on the way that leads out
//! of it (or a folder swapped for one between two reads) is refused, never
//! followed. The kind, size and identity are checked on the opened descriptor,
//! and that descriptor is read.
//!
//! Traps:
//! - A path that leaves every allowed directory, by its text or through a
//!   symlink, gets the same refusal whether or not the file exists: no
//!   existence oracle. Only beneath an allowed directory does a missing file
//!   read "cannot read ... No such file".
//! - stagesync's own files are compared by identity (device and inode) on the
//!   descriptor that was read, so a hard link, a symlink or a bind mount of the
//!   token file is refused like the file itself.

use std::io;
use std::path::{Component, Path, PathBuf};

use secrecy::SecretString;

use super::SourceError;
use super::discover::{MAX_FILE_BYTES, io_message};
use crate::confined::{Confined, Identity, ReadError};
use crate::policy::{AllowedDir, OwnFile, Policy, lexical_normal};

/// One allowed directory, opened.
struct Opened {
    names: AllowedDir,
    dir: io::Result<Confined>,
}

/// What one load may read (see the module docs).
pub(crate) struct Scope {
    /// The manifest directory as the user gave it: messages start with it.
    shown_root: PathBuf,
    root: Confined,
    root_names: AllowedDir,
    secrets_dirs: Vec<Opened>,
    own_files: Vec<(Identity, OwnFile)>,
}

/// Where a `!File` path lies: an allowed directory and the path below it.
struct Located<'a> {
    names: &'a AllowedDir,
    dir: Result<&'a Confined, &'a io::Error>,
    rel: PathBuf,
}

impl Scope {
    /// Opens the manifest directory `dir` and the policy's secrets
    /// directories. Only the manifest directory must open; a secrets
    /// directory that cannot is reported at the `!File` that needs it.
    pub(crate) fn open(dir: &Path, policy: &Policy) -> Result<Scope, SourceError> {
        let root = Confined::open(dir).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => SourceError::Missing(dir.to_path_buf()),
            _ if err.raw_os_error() == Some(libc::ENOTDIR) => {
                SourceError::NotADirectory(dir.to_path_buf())
            }
            _ => SourceError::Unreadable(dir.to_path_buf(), err),
        })?;
        let canonical = std::fs::canonicalize(dir)
            .map_err(|err| SourceError::Unreadable(dir.to_path_buf(), err))?;
        let given = lexical_normal(&std::path::absolute(dir).unwrap_or_else(|_| dir.into()));
        let secrets_dirs = policy
            .secrets
            .secrets_dirs()
            .iter()
            .map(|names| Opened {
                dir: Confined::open(&names.given),
                names: names.clone(),
            })
            .collect();
        // Looked up now, by the operator's paths: a file that does not exist
        // yet (the state file before the first apply) holds nothing to protect.
        let own_files = policy
            .secrets
            .own_files()
            .iter()
            .filter_map(|(path, what)| Some((Identity::of_path(path).ok()?, *what)))
            .collect();
        Ok(Scope {
            shown_root: dir.to_path_buf(),
            root,
            root_names: AllowedDir { given, canonical },
            secrets_dirs,
            own_files,
        })
    }

    /// The manifest directory's handle, for the walk.
    pub(crate) fn root(&self) -> &Confined {
        &self.root
    }

    /// The manifest directory as the user gave it.
    pub(crate) fn shown_root(&self) -> &Path {
        &self.shown_root
    }

    /// Reads the key `!File target` names in the manifest at `manifest` (a path
    /// below [`Self::shown_root`]), if the policy allows it. The error names
    /// the path as written, never a value.
    pub(crate) fn read_key(
        &self,
        manifest: &Path,
        target: &Path,
        policy: &Policy,
    ) -> Result<SecretString, String> {
        let full = manifest.parent().unwrap_or(Path::new("")).join(target);
        let refused = || policy.secrets.refuse_file(&full).to_string();
        let place = self.locate(manifest, target, &full).ok_or_else(refused)?;
        let shown = full.display();
        let dir = place.dir.map_err(|e| {
            format!(
                "cannot read `!File` {shown}: cannot open {}: {}",
                place.names.given.display(),
                io_message(e)
            )
        })?;
        let read = match dir.read(&place.rel, MAX_FILE_BYTES) {
            Ok(read) => read,
            Err(ReadError::Outside) => return Err(refused()),
            Err(ReadError::NotRegular) => {
                return Err(format!("`!File` {shown} is not a regular file"));
            }
            Err(ReadError::TooLarge(_)) => {
                return Err(format!("`!File` {shown} is larger than 1 MiB"));
            }
            Err(ReadError::Io(e)) => {
                return Err(format!("cannot read `!File` {shown}: {}", io_message(&e)));
            }
        };
        if let Some((_, what)) = self.own_files.iter().find(|(id, _)| *id == read.identity) {
            return Err(format!(
                "`!File` {shown} is refused: it is {what}, never a captcha key"
            ));
        }
        let text = String::from_utf8(read.bytes)
            .map_err(|_| format!("`!File` {shown} is not valid UTF-8"))?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("`!File` {shown} is empty"));
        }
        Ok(SecretString::from(trimmed.to_owned()))
    }

    /// The allowed directory `target` lies in, by its text, and the path
    /// below it. A relative path is taken from the manifest's folder and, as
    /// long as its `..` do not climb out, opened beneath the manifest
    /// directory as written (so a `..` after a symlinked folder is resolved
    /// where that folder really is, still inside). Otherwise its absolute form
    /// is matched against every allowed directory.
    fn locate(&self, manifest: &Path, target: &Path, full: &Path) -> Option<Located<'_>> {
        let in_root = |rel: PathBuf| Located {
            names: &self.root_names,
            dir: Ok(&self.root),
            rel,
        };
        if target.is_relative()
            && let Ok(below_root) = manifest.strip_prefix(&self.shown_root)
        {
            let rel = below_root.parent().unwrap_or(Path::new("")).join(target);
            if stays_inside(&rel) {
                return Some(in_root(rel));
            }
        }
        let absolute = lexical_normal(&std::path::absolute(full).ok()?);
        if let Some(rel) = self.root_names.below(&absolute) {
            return Some(in_root(rel.to_path_buf()));
        }
        self.secrets_dirs.iter().find_map(|opened| {
            Some(Located {
                names: &opened.names,
                dir: opened.dir.as_ref(),
                rel: opened.names.below(&absolute)?.to_path_buf(),
            })
        })
    }
}

/// Whether a relative path, read by its text, stays below where it starts
/// (`a/../b` does, `a/../../b` does not) and names something there.
fn stays_inside(rel: &Path) -> bool {
    let mut depth = 0usize;
    for component in rel.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SecretsPolicy;
    use secrecy::ExposeSecret;

    /// `root/stages` (the manifest directory, with `a/m.yaml` in it),
    /// `root/secrets` (a --secrets-dir) and `root/outside`, each holding `k`.
    fn tree() -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        for (folder, key) in [
            ("stages/a", "in-a"),
            ("stages", "in-stages"),
            ("secrets", "in-secrets"),
            ("outside", "in-outside"),
        ] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            std::fs::write(dir.path().join(folder).join("k"), format!("{key}\n")).unwrap();
        }
        let secrets = dir.path().join("secrets");
        let policy = Policy {
            secrets: SecretsPolicy::new(
                vec![AllowedDir {
                    given: secrets.clone(),
                    canonical: secrets.canonicalize().unwrap(),
                }],
                &[],
            )
            .unwrap(),
            ..Policy::default()
        };
        (dir, policy)
    }

    fn read(scope: &Scope, policy: &Policy, target: &str) -> Result<String, String> {
        let manifest = scope.shown_root().join("a/m.yaml");
        scope
            .read_key(&manifest, Path::new(target), policy)
            .map(|k| k.expose_secret().to_owned())
    }

    #[test]
    fn keys_are_read_beneath_the_manifest_directory_or_a_secrets_dir_only() {
        let (dir, policy) = tree();
        let scope = Scope::open(&dir.path().join("stages"), &policy).unwrap();
        let abs = |rel: &str| dir.path().join(rel).display().to_string();
        assert_eq!(read(&scope, &policy, "k").as_deref(), Ok("in-a"));
        assert_eq!(read(&scope, &policy, "../k").as_deref(), Ok("in-stages"));
        assert_eq!(
            read(&scope, &policy, &abs("stages/k")).as_deref(),
            Ok("in-stages")
        );
        assert_eq!(
            read(&scope, &policy, "../../secrets/k").as_deref(),
            Ok("in-secrets")
        );
        assert_eq!(
            read(&scope, &policy, &abs("secrets/k")).as_deref(),
            Ok("in-secrets")
        );
        for outside in ["../../outside/k", &abs("outside/k"), &abs("secrets")] {
            let refused = read(&scope, &policy, outside).unwrap_err();
            assert!(
                refused.contains("is refused: it lies outside"),
                "{outside}: {refused}"
            );
        }
        // Beneath an allowed directory, a missing file may say so.
        let missing = read(&scope, &policy, "nothing").unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        assert!(read(&scope, &policy, "..").unwrap_err().contains("refused"));
    }

    #[test]
    fn stagesyncs_own_files_are_refused_by_identity() {
        let (dir, mut policy) = tree();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").unwrap();
        std::fs::hard_link(&token, dir.path().join("secrets/linked")).unwrap();
        policy.secrets.protect(token, OwnFile::Token);
        policy
            .secrets
            .protect(dir.path().join("stages/k"), OwnFile::State);
        policy
            .secrets
            .protect(dir.path().join("not-there-yet"), OwnFile::State);
        let scope = Scope::open(&dir.path().join("stages"), &policy).unwrap();
        assert_eq!(
            read(&scope, &policy, "../../secrets/linked").unwrap_err(),
            format!(
                "`!File` {} is refused: it is stagesync's API token file (--token-file), never a captcha key",
                dir.path().join("stages/a/../../secrets/linked").display()
            )
        );
        assert!(
            read(&scope, &policy, "../k")
                .unwrap_err()
                .contains("stagesync's state file")
        );
        assert_eq!(read(&scope, &policy, "k").as_deref(), Ok("in-a"));
    }

    #[test]
    fn the_manifest_directory_must_open() {
        let (dir, policy) = tree();
        assert!(matches!(
            Scope::open(&dir.path().join("none"), &policy),
            Err(SourceError::Missing(_))
        ));
        assert!(matches!(
            Scope::open(&dir.path().join("stages/k"), &policy),
            Err(SourceError::NotADirectory(_))
        ));
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert!(matches!(
            Scope::open(&dir.path().join("loop"), &policy),
            Err(SourceError::Unreadable(..))
        ));
    }

    #[test]
    fn a_relative_path_stays_inside_only_while_its_dots_do() {
        assert!(stays_inside(Path::new("key")));
        assert!(stays_inside(Path::new("a/../key")));
        assert!(stays_inside(Path::new("./a/./b")));
        assert!(!stays_inside(Path::new("../key")));
        assert!(!stays_inside(Path::new("a/../../key")));
        assert!(!stays_inside(Path::new("a/..")));
        assert!(!stays_inside(Path::new("")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
    }
}
