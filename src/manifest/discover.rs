//! Finding manifest files under a directory (I/O).
//!
//! Traps:
//! - Everything is opened beneath the manifest directory's handle
//!   ([`crate::confined`]): a symlink is followed only while it stays inside
//!   (relative, no way out by `..`). One that leads out, to a file or a folder,
//!   is an error, never read: an outside file shaped like a manifest would
//!   otherwise become a stage, and its content would be quoted in errors.
//! - Kubernetes mounts a ConfigMap as symlinks into a hidden `..data` folder, so
//!   symlinks are followed while hidden names (`.git`, `..data`) are skipped.
//! - A symlink to an ancestor folder would recurse forever: every folder is
//!   known by its identity (device and inode) and a folder already on the
//!   current path is a loop, reported once and not entered. A folder reached a
//!   second time by another route is skipped silently so its files are not
//!   read twice.
//! - A FIFO or device named `x.yaml` would block or never end when read: files
//!   are opened without blocking, and only regular files are read.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::confined::{Confined, Entry, Identity, ReadError};

/// Files larger than this are refused unread.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Folder nesting beyond this is reported rather than followed.
const MAX_DIR_DEPTH: usize = 32;
/// A symlink to a large unrelated tree (`/usr`) must not make a check take
/// minutes: after this many folder entries the walk stops with an error. Ten
/// times the largest directories seen in practice.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// A candidate manifest, as found.
#[derive(Debug)]
pub(crate) enum Found {
    /// Its content (at most [`MAX_FILE_BYTES`]).
    File { path: PathBuf, bytes: Vec<u8> },
    /// A manifest file (`is_file`) or a folder could not be used; the message says why.
    Problem {
        path: PathBuf,
        is_file: bool,
        message: String,
    },
}

/// Whether the walk skips an entry called `name`, wherever it meets it: hidden
/// names (`.git`, `.github`, the kubelet's `..data`; a ConfigMap's manifests
/// are read through the symlinks beside `..data`).
pub(crate) fn is_hidden_name(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Whether the walk reads a file called `name` as a manifest: `*.yaml` or
/// `*.yml` (any case), not hidden.
pub(crate) fn is_manifest_name(name: &OsStr) -> bool {
    !is_hidden_name(name)
        && Path::new(name)
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Whether a walk of `root` gets to `path` (a path under `root`), judging by
/// names: none below `root` is hidden. Whether `path` exists is not asked.
pub(crate) fn walk_reaches(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .is_ok_and(|below| !below.iter().any(is_hidden_name))
}

/// Walks the manifest directory `root` (opened by the caller from
/// `shown_root`, the path as the user gave it, which messages start with).
pub(crate) fn walk(root: &Confined, shown_root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let mut ancestors = Vec::new();
    if let Ok(identity) = root.identity() {
        visited.insert(identity);
        ancestors.push(identity);
    }
    let mut walk = Walk {
        root,
        shown_root,
        ancestors,
        visited,
        budget: MAX_ENTRIES + 1,
        out: &mut out,
    };
    walk.dir(Path::new(""));
    out
}

/// One walk's state. Every path is relative to the root and opened beneath
/// it, so no entry (a symlink, a folder swapped for one) leads out of it.
struct Walk<'a> {
    root: &'a Confined,
    shown_root: &'a Path,
    /// The folders on the current path, by identity: a folder met again
    /// among them is a loop.
    ancestors: Vec<Identity>,
    visited: HashSet<Identity>,
    budget: usize,
    out: &'a mut Vec<Found>,
}

impl Walk<'_> {
    /// `rel` as the user would type it: the directory as given, joined.
    fn shown(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.shown_root.to_path_buf()
        } else {
            self.shown_root.join(rel)
        }
    }

    fn problem(&mut self, rel: &Path, is_file: bool, message: String) {
        self.out.push(Found::Problem {
            path: self.shown(rel),
            is_file,
            message,
        });
    }

    fn dir(&mut self, rel: &Path) {
        let entries = match self.root.names(rel) {
            Ok(entries) => entries,
            Err(err) => {
                self.problem(
                    rel,
                    false,
                    format!("cannot read directory: {}", message(&err)),
                );
                return;
            }
        };
        let mut names = Vec::new();
        for entry in entries.into_iter().take(MAX_ENTRIES + 1) {
            match entry {
                Ok(name) => names.push(name),
                // An entry that cannot be read may be a folder of manifests: the
                // set is not complete, and saying nothing would let prune take
                // its stages for removed.
                Err(err) => self.problem(
                    rel,
                    false,
                    format!("cannot read a folder entry: {}", io_message(&err)),
                ),
            }
        }
        names.sort();
        for name in names {
            self.budget = self.budget.saturating_sub(1);
            if self.budget == 0 {
                self.problem(
                    rel,
                    false,
                    format!("more than {MAX_ENTRIES} folder entries; stopped looking"),
                );
                return;
            }
            if is_hidden_name(&name) {
                continue;
            }
            let child = rel.join(&name);
            let is_manifest_name = is_manifest_name(&name);
            let identity = match self.root.entry(&child) {
                Ok(Entry::Folder(identity)) => identity,
                Ok(Entry::Other) => {
                    if is_manifest_name {
                        let found = self.read_manifest(&child);
                        self.out.push(found);
                    }
                    continue;
                }
                Err(err) => {
                    // Whatever it is (a dangling symlink to an unmounted folder, a
                    // file without permission, a link out of the directory), it
                    // may hold manifests: an error, so that nothing reads the set
                    // as complete.
                    let (is_file, message) = match &err {
                        ReadError::Outside => (is_manifest_name, OUTSIDE.to_owned()),
                        ReadError::Io(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                            (false, "symlink loop; not followed".to_owned())
                        }
                        _ => (is_manifest_name, format!("cannot read: {}", message(&err))),
                    };
                    self.problem(&child, is_file, message);
                    continue;
                }
            };
            // A folder we are in, reached again (`up -> ..`), leads back here.
            if self.ancestors.contains(&identity) {
                self.problem(
                    &child,
                    false,
                    "symlink loop: it leads back to a folder above it; not followed".into(),
                );
                continue;
            }
            if self.ancestors.len() >= MAX_DIR_DEPTH {
                self.problem(
                    &child,
                    false,
                    format!("folders nested deeper than {MAX_DIR_DEPTH} levels; not followed"),
                );
                continue;
            }
            if !self.visited.insert(identity) {
                continue;
            }
            self.ancestors.push(identity);
            self.dir(&child);
            if self.budget == 0 {
                return;
            }
            self.ancestors.pop();
        }
    }

    /// Reads a manifest through one descriptor: what is checked (a regular
    /// file, its size) is what is read.
    fn read_manifest(&self, rel: &Path) -> Found {
        let path = self.shown(rel);
        match self.root.read(rel, MAX_FILE_BYTES) {
            Ok(read) => Found::File {
                path,
                bytes: read.bytes,
            },
            Err(ReadError::TooLarge(len)) => too_large(path, len),
            Err(err) => Found::Problem {
                is_file: true,
                path,
                message: match err {
                    ReadError::NotRegular => "not a regular file".into(),
                    ReadError::Outside => OUTSIDE.into(),
                    err => format!("cannot read: {}", message(&err)),
                },
            },
        }
    }
}

/// Why an entry whose symlinks lead out of the manifest directory is not read.
const OUTSIDE: &str = "a symlink leads outside the manifest directory; not followed (only links that stay inside are)";

/// The words for a read that failed.
fn message(err: &ReadError) -> String {
    match err {
        ReadError::Outside => OUTSIDE.to_owned(),
        ReadError::NotRegular => "not a regular file".to_owned(),
        ReadError::TooLarge(len) => format!("larger than the limit ({len} bytes)"),
        ReadError::Io(e) => io_message(e),
    }
}

fn too_large(path: PathBuf, len: u64) -> Found {
    Found::Problem {
        is_file: true,
        path,
        message: format!("file is larger than the 1 MiB limit for manifests ({len} bytes)"),
    }
}

/// The OS message without Rust's " (os error N)" suffix.
pub(crate) fn io_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
