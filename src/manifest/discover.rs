//! Finding manifest files under a directory (I/O).
//!
//! Traps:
//! - Kubernetes mounts a ConfigMap as symlinks into a hidden `..data` folder, so
//!   symlinks are followed while hidden names (`.git`, `..data`) are skipped.
//! - A symlink to an ancestor folder would recurse forever: every folder is
//!   canonicalised and a folder already on the current path is a loop, reported
//!   once and not entered. A folder reached a second time by another route is
//!   skipped silently so its files are not read twice.
//! - A FIFO or device named `x.yaml` would block or never end when read: only
//!   regular files are opened.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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

/// Walks `root` (which the caller has checked is a directory).
pub(crate) fn walk(root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let mut ancestors = Vec::new();
    if let Ok(canonical) = fs::canonicalize(root) {
        visited.insert(canonical.clone());
        ancestors.push(canonical);
    }
    let mut budget = MAX_ENTRIES + 1;
    walk_dir(root, &mut ancestors, &mut visited, &mut budget, &mut out);
    out
}

fn walk_dir(
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
    budget: &mut usize,
    out: &mut Vec<Found>,
) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            out.push(Found::Problem {
                is_file: false,
                path: dir.to_path_buf(),
                message: format!("cannot read directory: {}", io_message(&err)),
            });
            return;
        }
    };
    let mut names = Vec::new();
    for entry in entries.take(MAX_ENTRIES + 1) {
        match entry {
            Ok(entry) => names.push(entry.file_name()),
            // An entry that cannot be read may be a folder of manifests: the
            // set is not complete, and saying nothing would let prune take
            // its stages for removed.
            Err(err) => out.push(Found::Problem {
                is_file: false,
                path: dir.to_path_buf(),
                message: format!("cannot read a folder entry: {}", io_message(&err)),
            }),
        }
    }
    names.sort();
    for name in names {
        *budget = budget.saturating_sub(1);
        if *budget == 0 {
            out.push(Found::Problem {
                is_file: false,
                path: dir.to_path_buf(),
                message: format!("more than {MAX_ENTRIES} folder entries; stopped looking"),
            });
            return;
        }
        if is_hidden_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        let is_manifest_name = is_manifest_name(&name);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(err) => {
                // Whatever it is (a dangling symlink to an unmounted folder, a
                // file without permission), it may hold manifests: an error,
                // so that nothing reads the set as complete.
                let is_loop = err.raw_os_error() == Some(40); // ELOOP
                out.push(Found::Problem {
                    is_file: is_manifest_name && !is_loop,
                    message: if is_loop {
                        "symlink loop; not followed".into()
                    } else {
                        format!("cannot read: {}", io_message(&err))
                    },
                    path,
                });
                continue;
            }
        };
        if meta.is_dir() {
            let canonical = match fs::canonicalize(&path) {
                Ok(c) => c,
                Err(err) => {
                    out.push(Found::Problem {
                        is_file: false,
                        path,
                        message: format!("cannot read directory: {}", io_message(&err)),
                    });
                    continue;
                }
            };
            // A folder that contains one we are in (`..`, `/`) leads back here.
            if ancestors.iter().any(|a| a.starts_with(&canonical)) {
                out.push(Found::Problem {
                    is_file: false,
                    path,
                    message: "symlink loop: it leads back to a folder above it; not followed"
                        .into(),
                });
                continue;
            }
            if ancestors.len() >= MAX_DIR_DEPTH {
                out.push(Found::Problem {
                    is_file: false,
                    path,
                    message: format!(
                        "folders nested deeper than {MAX_DIR_DEPTH} levels; not followed"
                    ),
                });
                continue;
            }
            if !visited.insert(canonical.clone()) {
                continue;
            }
            ancestors.push(canonical);
            walk_dir(&path, ancestors, visited, budget, out);
            if *budget == 0 {
                return;
            }
            ancestors.pop();
        } else if is_manifest_name {
            out.push(read_manifest(path, &meta));
        }
    }
}

fn read_manifest(path: PathBuf, meta: &fs::Metadata) -> Found {
    if !meta.is_file() {
        return Found::Problem {
            is_file: true,
            path,
            message: "not a regular file".into(),
        };
    }
    if meta.len() > MAX_FILE_BYTES {
        return too_large(path, meta.len());
    }
    let read = fs::File::open(&path).and_then(|file| {
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    match read {
        // The file may have grown since `metadata`.
        Ok(bytes) if bytes.len() as u64 > MAX_FILE_BYTES => too_large(path, bytes.len() as u64),
        Ok(bytes) => Found::File { path, bytes },
        Err(err) => Found::Problem {
            is_file: true,
            path,
            message: format!("cannot read: {}", io_message(&err)),
        },
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
