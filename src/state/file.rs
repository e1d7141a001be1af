//! The state file on disk: its format (and older ones it still reads),
//! the writer's lock, and atomic, durable saves.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::inventory::Inventory;
use super::keys::{Entry, KeyState};

/// The version of the state file format this build writes.
pub(crate) const STATE_FORMAT_VERSION: u32 = 2;
/// The older versions this build reads (and rewrites as the current one).
const READABLE_VERSIONS: [u32; 2] = [1, STATE_FORMAT_VERSION];

/// The longest a recorded outcome waits for [`StateFile::save_if_due`]: one
/// atomic save (two fsyncs) a second costs nothing next to 300 writes, and a
/// crash loses at most this much of the record (which then reads as unknown).
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How many symlinks [`resolve`] follows before giving up (as Linux's `ELOOP`).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another stagesync (apply or run) is using {}; wait for it to finish", path.display())]
    Locked { path: PathBuf },
    #[error("state file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state file {} is not valid ({source}); fix or remove it (removing it makes the next apply rewrite every private key once)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "state file {} has format version {found}, this stagesync reads versions 1 to {STATE_FORMAT_VERSION}",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file. Entries are JSON values first, so that one damaged entry is
/// reported and kept rather than failing the whole file. Add optional
/// top-level fields with `#[serde(default)]`.
#[derive(Serialize, Deserialize)]
pub(super) struct OnDisk {
    version: u32,
    #[serde(default)]
    stages: BTreeMap<Uuid, Value>,
    #[serde(default, skip_serializing_if = "Inventory::is_empty")]
    inventory: Inventory,
}

impl OnDisk {
    pub(super) fn of(keys: &KeyState, inventory: &Inventory) -> OnDisk {
        OnDisk {
            version: STATE_FORMAT_VERSION,
            stages: keys
                .stages
                .iter()
                .map(|(uuid, entry)| (*uuid, entry.to_value()))
                .collect(),
            inventory: inventory.clone(),
        }
    }

    fn into_parts(self) -> (KeyState, Inventory) {
        let keys = KeyState {
            stages: self
                .stages
                .into_iter()
                .map(|(uuid, raw)| (uuid, Entry::from_value(raw)))
                .collect(),
        };
        (keys, self.inventory)
    }
}

/// Just the version, read first so a newer format is reported as such and not
/// as a corrupt file.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn parse(path: &Path, text: &str) -> Result<(KeyState, Inventory), StateError> {
    let corrupt = |source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let VersionOnly { version } = serde_json::from_str(text).map_err(corrupt)?;
    if !READABLE_VERSIONS.contains(&version) {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let on_disk: OnDisk = serde_json::from_str(text).map_err(corrupt)?;
    Ok(on_disk.into_parts())
}

fn load(path: &Path) -> Result<(KeyState, Inventory), StateError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// The state file opened for writing, holding its lock until dropped.
#[derive(Debug)]
pub struct StateFile {
    /// As the operator gave it, for messages.
    path: PathBuf,
    /// Symlinks followed: where the file really is, and what is locked and replaced.
    resolved: PathBuf,
    keys: KeyState,
    inventory: Inventory,
    /// Whether `keys` or `inventory` may differ from the file.
    dirty: bool,
    last_saved: Option<Instant>,
    /// Held for the lock; the lock is released when the file is closed.
    _lock: File,
}

impl StateFile {
    /// Resolves `path` (following symlinks, creating missing parent directories
    /// with mode 0700), locks `<resolved>.lock`, removes temp files an
    /// interrupted save left, and loads the file; a missing file is an empty state.
    pub fn open_for_write(path: &Path) -> Result<StateFile, StateError> {
        let resolved = resolve(path).map_err(io_error(path))?;
        let lock_path = lock_path(&resolved);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    path: path.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let removed = remove_leftovers(&resolved).map_err(io_error(path))?;
        if removed > 0 {
            tracing::info!(
                state_file = %path.display(),
                removed,
                "removed the temporary files of an interrupted save of the state file"
            );
        }
        let (keys, inventory) = load(&resolved).map_err(|e| rename_path(e, path))?;
        Ok(StateFile {
            path: path.to_owned(),
            resolved,
            keys,
            inventory,
            dirty: false,
            last_saved: None,
            _lock: lock,
        })
    }

    /// Loads the file without locking (for `plan`); a missing file is an empty state.
    pub fn read_only(path: &Path) -> Result<KeyState, StateError> {
        load(path).map(|(keys, _)| keys)
    }

    /// [`Self::read_only`] with the inventory (for `plan --prune`).
    pub(crate) fn read_only_with_inventory(
        path: &Path,
    ) -> Result<(KeyState, Inventory), StateError> {
        load(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &KeyState {
        &self.keys
    }

    /// The keys, to change them; the next [`StateFile::save_if_due`] saves.
    pub(crate) fn keys_mut(&mut self) -> &mut KeyState {
        self.dirty = true;
        &mut self.keys
    }

    pub(crate) fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The inventory, to change it; the next [`StateFile::save_if_due`] saves.
    pub(crate) fn inventory_mut(&mut self) -> &mut Inventory {
        self.dirty = true;
        &mut self.inventory
    }

    /// Saves now if anything changed since the last save (always, the first
    /// time): before keys are sent, and at the end.
    pub fn save(&mut self) -> Result<(), StateError> {
        if self.dirty || self.last_saved.is_none() {
            self.write_file()?;
        }
        Ok(())
    }

    /// Saves if something changed and the last save is [`SAVE_INTERVAL`] old:
    /// after each write that completes. Returns whether it saved.
    pub(crate) fn save_if_due(&mut self) -> Result<bool, StateError> {
        let due = self
            .last_saved
            .is_none_or(|at| at.elapsed() >= SAVE_INTERVAL);
        if self.dirty && due {
            self.write_file()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the state atomically: a 0600 temp file beside the resolved file,
    /// fsync, rename over it, fsync of the directory.
    fn write_file(&mut self) -> Result<(), StateError> {
        let mut text = serde_json::to_string_pretty(&OnDisk::of(&self.keys, &self.inventory))
            .map_err(|e| io_error(&self.path)(io::Error::other(e)))?;
        text.push('\n');

        write_private_file(&self.resolved, text.as_bytes()).map_err(io_error(&self.path))?;
        self.dirty = false;
        self.last_saved = Some(Instant::now());
        Ok(())
    }
}

/// Errors name the path as the operator gave it.
fn rename_path(err: StateError, given: &Path) -> StateError {
    match err {
        StateError::Io { source, .. } => StateError::Io {
            path: given.to_owned(),
            source,
        },
        StateError::Corrupt { source, .. } => StateError::Corrupt {
            path: given.to_owned(),
            source,
        },
        StateError::UnsupportedVersion { found, .. } => StateError::UnsupportedVersion {
            path: given.to_owned(),
            found,
        },
        locked @ StateError::Locked { .. } => locked,
    }
}

/// Replaces `path` atomically with `bytes`, readable by the owner only: a
/// 0600 temp file in the same directory, fsync, rename over `path`, fsync of
/// the directory. A crash leaves the old file or the new one, never half.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        "{}{:016x}",
        temp_prefix(path),
        rand::rng().next_u64()
    ));
    let written = write_synced(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    sync_dir(dir)
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Where `path` really is: symlinks followed (also one that points to a file
/// not created yet), the parent directory created and made absolute. Two
/// paths to the same file resolve alike, so they share one lock.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_owned();
    let mut followed = 0;
    while fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        followed += 1;
        if followed > MAX_SYMLINKS {
            return Err(io::Error::other("too many levels of symbolic links"));
        }
        let target = fs::read_link(&path)?;
        // A relative target is relative to the link's folder; `join` keeps an
        // absolute one as it is.
        path = match parent_dir(&path) {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?
        .to_owned();
    let dir = parent_dir(&path).unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    Ok(fs::canonicalize(dir)?.join(name))
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// `.<file name>.tmp-`: the start of the name of a save's temp file.
fn temp_prefix(path: &Path) -> String {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.json".to_owned());
    format!(".{file_name}.tmp-")
}

/// Removes the temp files of saves that never got to their rename (the
/// process was killed). Only under the lock: no other save is running.
fn remove_leftovers(resolved: &Path) -> io::Result<usize> {
    let dir = parent_dir(resolved).unwrap_or(Path::new("."));
    let prefix = temp_prefix(resolved);
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_leftover = entry.file_name().to_str().is_some_and(|name| {
            name.strip_prefix(&prefix)
                .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if is_leftover && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
