//! The state file: what stagesync knows of the private keys it wrote.
//!
//! authentik never returns a captcha stage's `private_key`, so drift of the key
//! cannot be read back. Instead stagesync records per stage uuid what it knows
//! of the key authentik holds, an [`Entry`]:
//!
//! - *written*: a [`Fingerprint`], a random 16-byte salt and
//!   `SHA-256(salt || key)`, both hex, of the key authentik confirmed it
//!   stored. The key itself is never stored, and the per-entry salt means two
//!   stages with the same key have unrelated fingerprints. The key is trimmed
//!   before hashing, because authentik trims it on write: `" k\n"` and `"k"`
//!   are the same stored key.
//! - *in flight*: a write that changes the key was about to be sent, and its
//!   answer was never seen (lost, abandoned at shutdown, the process killed).
//!   authentik may hold the old key or the new one: the key reads as
//!   [`KeyStatus::Unknown`], so the next apply sends it again.
//! - *damaged*: an entry that cannot be read (a hand-edited salt, say). It reads
//!   as unknown, is reported ([`KeyState::damaged`]) and is kept as it was
//!   until the stage's key is written again.
//!
//! # Write-ahead
//!
//! The invariant: the state never says *unchanged* for a key that may differ
//! from authentik's. So before a write that changes a key is sent, its entry
//! is marked in flight ([`KeyState::mark_in_flight`]) and the file is saved
//! ([`StateFile::save`], durable); after the answer, the new fingerprint is
//! recorded ([`KeyState::record`]). A write whose answer says it failed keeps
//! the mark: "failed" may follow an attempt that reached authentik. Outcomes
//! are saved in batches ([`StateFile::save_if_due`], at most every
//! [`SAVE_INTERVAL`]): losing the last batch to a crash only loses fingerprints,
//! which reads as unknown, never as a wrong *unchanged*.
//!
//! # File format (`version` 2; version 1 is read too)
//!
//! ```json
//! {"version": 2, "stages": {
//!   "<uuid>": {"salt": "<32 hex>", "sha256": "<64 hex>"},
//!   "<uuid>": {"in_flight": true}
//! }}
//! ```
//!
//! The file also holds the [`Inventory`] (key `inventory`, left out while
//! empty, so a file without it reads as an empty inventory): the stages
//! stagesync manages, the only ones `--prune` may ever delete.
//!
//! ```json
//! {"version": 2, "stages": {...},
//!  "inventory": {"<uuid>": {"name": "rec-login", "managed_as": "created"}}}
//! ```
//!
//! # Traps
//!
//! - Losing the file forgets the inventory too: nothing is pruned until the
//!   manifests have matched (adopted) their stages again.
//! - Losing the file is safe but noisy: every key becomes "unknown" and the next
//!   apply rewrites every key once. A corrupt file is an error naming the path,
//!   never silently reset (that would hide a real problem behind a full rewrite).
//! - Writers (`apply`, `run`) take an exclusive lock on `<file>.lock` beside the
//!   file the path *resolves* to (symlinks followed), for as long as the
//!   [`StateFile`] lives; a second writer is refused with [`StateError::Locked`],
//!   also when it names the same file by another path. `plan` only reads
//!   ([`StateFile::read_only`]) and takes no lock: at worst it sees the file
//!   from before a concurrent apply.
//! - Saving is atomic (temp file beside the resolved file, fsync, rename, fsync
//!   of the directory), so a crash leaves either the old or the new file. A
//!   state file reached through a symlink stays a symlink, to the updated file.
//!   Temp files left by a save that was interrupted are removed by the next
//!   writer, under the lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::secret::{ExposeSecret, PrivateKey};

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

/// A salted SHA-256 of a private key. Safe to print and to store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    /// 16 random bytes, hex.
    salt: String,
    /// `SHA-256(salt bytes || trimmed key bytes)`, hex.
    sha256: String,
}

impl Fingerprint {
    pub(crate) fn new(key: &PrivateKey) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Fingerprint {
            salt: hex(&salt),
            sha256: hex(&digest(&salt, key)),
        }
    }

    /// Whether `key` is the key this fingerprint was made from. Only checked
    /// fingerprints ([`Fingerprint::problem`] is `None`) get here.
    pub(crate) fn matches(&self, key: &PrivateKey) -> bool {
        unhex(&self.salt).is_some_and(|salt| hex(&digest(&salt, key)) == self.sha256)
    }

    /// What is wrong with a fingerprint read from a file, if anything.
    fn problem(&self) -> Option<&'static str> {
        let is_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !is_hex(&self.salt, 32) {
            Some("its salt is not 32 lowercase hex digits")
        } else if !is_hex(&self.sha256, 64) {
            Some("its sha256 is not 64 lowercase hex digits")
        } else {
            None
        }
    }
}

/// `SHA-256(salt || trimmed key)`: the one way a key is fingerprinted (the
/// state file and saved plan files both use it).
pub(crate) fn digest(salt: &[u8], key: &PrivateKey) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key.expose_secret().trim().as_bytes());
    hasher.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What is known about the write-only private key of a stage, from its
/// entry in [`KeyState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key is what stagesync last wrote.
    Unchanged,
    /// stagesync wrote a different key: it will be updated.
    Rotated,
    /// stagesync never wrote this stage's key, a write of it was interrupted
    /// or failed, or the state file (or its entry) was lost or damaged.
    Unknown,
}

/// What the state file says about one stage's key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// authentik confirmed it stored the key with this fingerprint.
    Written(Fingerprint),
    /// A write changing the key was sent (or about to be); its answer was not seen.
    InFlight,
    /// An entry that cannot be read, kept as it was in the file.
    Damaged { raw: Value, problem: String },
}

impl Entry {
    fn from_value(raw: Value) -> Entry {
        if let Some(object) = raw.as_object()
            && object.len() == 1
            && object.get("in_flight") == Some(&Value::Bool(true))
        {
            return Entry::InFlight;
        }
        let problem = match serde_json::from_value::<Fingerprint>(raw.clone()) {
            Ok(fingerprint) => match fingerprint.problem() {
                None => return Entry::Written(fingerprint),
                Some(problem) => problem.to_owned(),
            },
            Err(_) => "it is neither a fingerprint (salt, sha256) nor an in-flight mark".to_owned(),
        };
        Entry::Damaged { raw, problem }
    }

    fn to_value(&self) -> Value {
        match self {
            Entry::Written(fingerprint) => serde_json::to_value(fingerprint).unwrap_or(Value::Null),
            Entry::InFlight => serde_json::json!({ "in_flight": true }),
            Entry::Damaged { raw, .. } => raw.clone(),
        }
    }
}

/// What [`KeyState::mark_in_flight`] replaced, for [`KeyState::unmark`].
#[derive(Debug)]
pub(crate) struct KeyMark {
    uuid: Uuid,
    previous: Option<Entry>,
}

/// What stagesync knows of the keys it wrote, per stage uuid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    stages: BTreeMap<Uuid, Entry>,
}

impl KeyState {
    /// Whether `key` is what authentik holds for stage `uuid`, as far as
    /// stagesync knows.
    pub(crate) fn status(&self, uuid: Uuid, key: &PrivateKey) -> KeyStatus {
        match self.stages.get(&uuid) {
            Some(Entry::Written(fp)) if fp.matches(key) => KeyStatus::Unchanged,
            Some(Entry::Written(_)) => KeyStatus::Rotated,
            None | Some(Entry::InFlight | Entry::Damaged { .. }) => KeyStatus::Unknown,
        }
    }

    /// Remembers that authentik confirmed it stored `key` on stage `uuid`
    /// (with a fresh salt).
    pub fn record(&mut self, uuid: Uuid, key: &PrivateKey) {
        self.stages
            .insert(uuid, Entry::Written(Fingerprint::new(key)));
    }

    /// Marks stage `uuid`'s key as being written: it reads as unknown until
    /// [`KeyState::record`]. Save the file after this and before sending.
    pub(crate) fn mark_in_flight(&mut self, uuid: Uuid) -> KeyMark {
        KeyMark {
            uuid,
            previous: self.stages.insert(uuid, Entry::InFlight),
        }
    }

    /// Takes a mark back: the write was not sent after all (cancelled before
    /// it started), so what was known before still holds.
    pub(crate) fn unmark(&mut self, mark: KeyMark) {
        if self.stages.get(&mark.uuid) == Some(&Entry::InFlight) {
            match mark.previous {
                Some(previous) => self.stages.insert(mark.uuid, previous),
                None => self.stages.remove(&mark.uuid),
            };
        }
    }

    pub(crate) fn forget(&mut self, uuid: Uuid) {
        self.stages.remove(&uuid);
    }

    /// The entries that could not be read, and why. Each reads as unknown.
    pub(crate) fn damaged(&self) -> impl Iterator<Item = (Uuid, &str)> {
        self.stages.iter().filter_map(|(uuid, entry)| match entry {
            Entry::Damaged { problem, .. } => Some((*uuid, problem.as_str())),
            _ => None,
        })
    }

    /// One line per damaged entry, naming the file (given as `path`), for
    /// stderr or the log.
    pub(crate) fn damage_report<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = String> + 'a {
        self.damaged().map(move |(uuid, problem)| {
            format!(
                "state file {}: the entry of stage {uuid} is damaged ({problem}); its key reads as unknown and the next apply writes it again",
                path.display()
            )
        })
    }

    /// The stages whose key write was never answered.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.stages
            .iter()
            .filter(|(_, e)| matches!(e, Entry::InFlight))
            .map(|(uuid, _)| *uuid)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stages.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

/// How a stage came to be managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ManagedAs {
    /// stagesync created it.
    Created,
    /// It existed and a manifest matched it (by name or pinned uuid).
    Adopted,
}

/// A stage stagesync manages, as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManagedStage {
    /// Its name when last created, matched or written.
    pub(crate) name: String,
    pub(crate) managed_as: ManagedAs,
}

/// The stages stagesync manages, by uuid: created by it or matched by a
/// manifest. Prune only ever considers these; a stage no manifest ever named
/// (clicked together in the UI) is never in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Inventory {
    stages: BTreeMap<Uuid, ManagedStage>,
}

impl Inventory {
    /// Records `uuid` as managed under `name`. A stage once created stays
    /// `Created` when it is matched later.
    pub(crate) fn manage(&mut self, uuid: Uuid, name: &str, managed_as: ManagedAs) {
        let managed_as = match self.stages.get(&uuid) {
            Some(known) if known.managed_as == ManagedAs::Created => ManagedAs::Created,
            _ => managed_as,
        };
        self.stages.insert(
            uuid,
            ManagedStage {
                name: name.trim().to_owned(),
                managed_as,
            },
        );
    }

    /// Drops `uuid` (deleted, or found gone).
    pub(crate) fn forget(&mut self, uuid: Uuid) {
        self.stages.remove(&uuid);
    }

    #[cfg(test)]
    pub(crate) fn get(&self, uuid: Uuid) -> Option<&ManagedStage> {
        self.stages.get(&uuid)
    }

    pub(crate) fn contains(&self, uuid: Uuid) -> bool {
        self.stages.contains_key(&uuid)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Uuid, &ManagedStage)> {
        self.stages.iter().map(|(u, s)| (*u, s))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stages.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

/// Where [`crate::apply::apply`] keeps the keys: the [`StateFile`] (saved
/// durably, write-ahead) or a [`KeyState`] in memory alone (tests, whose
/// saves do nothing).
pub trait KeyStore {
    fn keys(&self) -> &KeyState;
    fn keys_mut(&mut self) -> &mut KeyState;
    /// Makes what is recorded durable now.
    fn save(&mut self) -> Result<(), StateError>;
    /// Saves if a batched save is due.
    fn save_if_due(&mut self) -> Result<bool, StateError>;
    /// Records a stage this run created in the inventory, so it is saved with
    /// the next batched save rather than only at the end (a crash in between
    /// must not make the stage unmanaged). Nothing for a store without one.
    fn record_created(&mut self, _uuid: Uuid, _name: &str) {}
}

impl KeyStore for KeyState {
    fn keys(&self) -> &KeyState {
        self
    }
    fn keys_mut(&mut self) -> &mut KeyState {
        self
    }
    fn save(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    fn save_if_due(&mut self) -> Result<bool, StateError> {
        Ok(false)
    }
}

impl KeyStore for StateFile {
    fn keys(&self) -> &KeyState {
        StateFile::keys(self)
    }
    fn keys_mut(&mut self) -> &mut KeyState {
        StateFile::keys_mut(self)
    }
    fn save(&mut self) -> Result<(), StateError> {
        StateFile::save(self)
    }
    fn save_if_due(&mut self) -> Result<bool, StateError> {
        StateFile::save_if_due(self)
    }
    fn record_created(&mut self, uuid: Uuid, name: &str) {
        self.inventory_mut().manage(uuid, name, ManagedAs::Created);
    }
}

/// The file. Entries are JSON values first, so that one damaged entry is
/// reported and kept rather than failing the whole file. Add optional
/// top-level fields with `#[serde(default)]`.
#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(default)]
    stages: BTreeMap<Uuid, Value>,
    #[serde(default, skip_serializing_if = "Inventory::is_empty")]
    inventory: Inventory,
}

impl OnDisk {
    fn of(keys: &KeyState, inventory: &Inventory) -> OnDisk {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn key(s: &str) -> PrivateKey {
        SecretString::from(s)
    }

    #[test]
    fn status_follows_what_was_recorded() {
        let uuid = Uuid::from_u128(1);
        let mut keys = KeyState::default();
        assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unknown);
        keys.record(uuid, &key("k"));
        assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unchanged);
        assert_eq!(keys.status(uuid, &key(" k\n")), KeyStatus::Unchanged);
        assert_eq!(keys.status(uuid, &key("k2")), KeyStatus::Rotated);
        keys.forget(uuid);
        assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unknown);
    }

    #[test]
    fn same_key_on_two_stages_gives_unrelated_fingerprints() {
        let mut keys = KeyState::default();
        keys.record(Uuid::from_u128(1), &key("same"));
        keys.record(Uuid::from_u128(2), &key("same"));
        let fingerprint = |n| match &keys.stages[&Uuid::from_u128(n)] {
            Entry::Written(fp) => fp.clone(),
            other => panic!("not written: {other:?}"),
        };
        let (a, b) = (fingerprint(1), fingerprint(2));
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.salt.len(), 32);
        assert_eq!(a.sha256.len(), 64);
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/state.json");
        let mut state = StateFile::open_for_write(&path).unwrap();
        assert!(state.keys().is_empty());
        state.keys_mut().record(Uuid::from_u128(7), &key("seven"));
        state.save().unwrap();
        drop(state);

        let keys = StateFile::read_only(&path).unwrap();
        assert_eq!(
            keys.status(Uuid::from_u128(7), &key("seven")),
            KeyStatus::Unchanged
        );
        let reopened = StateFile::open_for_write(&path).unwrap();
        assert_eq!(reopened.keys(), &keys);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn the_inventory_round_trips_and_an_old_file_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, r#"{"version": 1, "stages": {}}"#).unwrap();
        let mut state = StateFile::open_for_write(&path).unwrap();
        assert!(state.inventory().is_empty());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        state
            .inventory_mut()
            .manage(a, " made ", ManagedAs::Created);
        state.inventory_mut().manage(a, "made", ManagedAs::Adopted);
        state.inventory_mut().manage(b, "found", ManagedAs::Adopted);
        state.save().unwrap();
        drop(state);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""managed_as": "created""#), "{text}");
        let (_, inventory) = StateFile::read_only_with_inventory(&path).unwrap();
        assert_eq!(inventory.len(), 2);
        assert_eq!(
            inventory.get(a),
            Some(&ManagedStage {
                name: "made".into(),
                managed_as: ManagedAs::Created
            })
        );
        assert_eq!(inventory.get(b).unwrap().managed_as, ManagedAs::Adopted);
        // An empty inventory is not written at all.
        let mut state = StateFile::open_for_write(&dir.path().join("other.json")).unwrap();
        state.save().unwrap();
        let text = fs::read_to_string(dir.path().join("other.json")).unwrap();
        assert!(!text.contains("inventory"), "{text}");
    }

    #[test]
    fn read_only_of_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let keys = StateFile::read_only(&dir.path().join("absent.json")).unwrap();
        assert!(keys.is_empty());
        assert!(!dir.path().join("absent.json.lock").exists());
    }

    #[test]
    fn save_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = StateFile::open_for_write(&path).unwrap();
        for i in 0..3 {
            state.keys_mut().record(Uuid::from_u128(i), &key("k"));
            state.save().unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.json.lock"]);
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let first = StateFile::open_for_write(&path).unwrap();
        let err = StateFile::open_for_write(&path).unwrap_err();
        assert!(matches!(&err, StateError::Locked { path: p } if p == &path));
        assert_eq!(
            err.to_string(),
            format!(
                "another stagesync (apply or run) is using {}; wait for it to finish",
                path.display()
            )
        );
        // Readers are never blocked.
        assert!(StateFile::read_only(&path).is_ok());
        drop(first);
        assert!(StateFile::open_for_write(&path).is_ok());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{\"version\": 1, \"stages\": [").unwrap();
        let err = StateFile::read_only(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(matches!(
            StateFile::open_for_write(&path).unwrap_err(),
            StateError::Corrupt { .. }
        ));
        // Never silently reset.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"version\": 1, \"stages\": ["
        );

        fs::write(&path, "{\"version\": 9, \"stages\": {}}").unwrap();
        assert!(matches!(
            StateFile::read_only(&path).unwrap_err(),
            StateError::UnsupportedVersion { found: 9, .. }
        ));
    }

    #[test]
    fn the_file_and_debug_output_never_contain_the_key() {
        let secret = "6LeSuperSecretPrivateKeyValue";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = StateFile::open_for_write(&path).unwrap();
        state.keys_mut().record(Uuid::from_u128(1), &key(secret));
        state.save().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(secret));
        assert!(!text.contains(&hex(secret.as_bytes())));
        assert!(!format!("{state:?}").contains(secret));
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["version"], 2);
        assert!(parsed["stages"][Uuid::from_u128(1).to_string()]["sha256"].is_string());
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_in_flight_key_reads_as_unknown_until_its_answer_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let uuid = Uuid::from_u128(3);
        let mut state = StateFile::open_for_write(&path).unwrap();
        state.keys_mut().record(uuid, &key("old"));
        state.keys_mut().mark_in_flight(uuid);
        state.save().unwrap();
        drop(state);

        // What a crash between sending and the answer leaves: neither the old
        // key nor the new one reads as unchanged.
        let keys = StateFile::read_only(&path).unwrap();
        assert_eq!(keys.status(uuid, &key("old")), KeyStatus::Unknown);
        assert_eq!(keys.status(uuid, &key("new")), KeyStatus::Unknown);
        assert_eq!(keys.in_flight().collect::<Vec<_>>(), [uuid]);
        let text = fs::read_to_string(&path).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed["stages"][uuid.to_string()],
            serde_json::json!({"in_flight": true})
        );

        let mut state = StateFile::open_for_write(&path).unwrap();
        state.keys_mut().record(uuid, &key("new"));
        state.save().unwrap();
        let keys = StateFile::read_only(&path).unwrap();
        assert_eq!(keys.status(uuid, &key("new")), KeyStatus::Unchanged);
        assert_eq!(keys.in_flight().count(), 0);
    }

    #[test]
    fn a_created_stage_enters_the_inventory_with_the_next_batched_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let uuid = Uuid::from_u128(9);
        let mut state = StateFile::open_for_write(&path).unwrap();
        KeyStore::record_created(&mut state, uuid, "signup");
        // The first save is always due: what a kill -9 after it finds.
        assert!(state.save_if_due().unwrap());
        let (_, inventory) = StateFile::read_only_with_inventory(&path).unwrap();
        assert_eq!(
            inventory.get(uuid).map(|m| (m.name.as_str(), m.managed_as)),
            Some(("signup", ManagedAs::Created))
        );
    }

    #[test]
    fn a_version_1_file_is_read_and_saved_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let uuid = Uuid::from_u128(5);
        let mut keys = KeyState::default();
        keys.record(uuid, &key("five"));
        let Entry::Written(fp) = &keys.stages[&uuid] else {
            unreachable!()
        };
        let v1 = serde_json::json!({"version": 1, "stages": {uuid.to_string(): fp}});
        fs::write(&path, v1.to_string()).unwrap();

        let read = StateFile::read_only(&path).unwrap();
        assert_eq!(read.status(uuid, &key("five")), KeyStatus::Unchanged);
        let mut state = StateFile::open_for_write(&path).unwrap();
        state.save().unwrap();
        let parsed: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(parsed["version"], 2);
        assert_eq!(
            parsed["stages"][uuid.to_string()],
            v1["stages"][uuid.to_string()]
        );
    }

    #[test]
    fn a_damaged_entry_is_reported_reads_as_unknown_and_is_kept_until_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (bad_salt, not_a_fingerprint, good) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut keys = KeyState::default();
        keys.record(bad_salt, &key("k"));
        keys.record(good, &key("k"));
        let mut file = serde_json::to_value(OnDisk::of(&keys, &Inventory::default())).unwrap();
        // A hand edit that loses one hex digit of the salt.
        let salt = &mut file["stages"][bad_salt.to_string()]["salt"];
        *salt = serde_json::Value::String(salt.as_str().unwrap()[1..].to_owned());
        file["stages"][not_a_fingerprint.to_string()] = serde_json::json!("oops");
        fs::write(&path, file.to_string()).unwrap();

        let mut state = StateFile::open_for_write(&path).unwrap();
        let damaged: Vec<(Uuid, String)> = state
            .keys()
            .damaged()
            .map(|(u, why)| (u, why.to_owned()))
            .collect();
        assert_eq!(
            damaged,
            [
                (
                    bad_salt,
                    "its salt is not 32 lowercase hex digits".to_owned()
                ),
                (
                    not_a_fingerprint,
                    "it is neither a fingerprint (salt, sha256) nor an in-flight mark".to_owned()
                ),
            ]
        );
        // Unknown, not "rotated": nothing says stagesync wrote another key.
        assert_eq!(state.keys().status(bad_salt, &key("k")), KeyStatus::Unknown);
        assert_eq!(state.keys().status(good, &key("k")), KeyStatus::Unchanged);

        // Saving keeps the damaged entries as they were, until rewritten.
        state.keys_mut().record(not_a_fingerprint, &key("k"));
        state.save().unwrap();
        let saved: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            saved["stages"][bad_salt.to_string()],
            file["stages"][bad_salt.to_string()]
        );
        let keys = StateFile::read_only(&path).unwrap();
        assert_eq!(keys.damaged().count(), 1);
        assert_eq!(
            keys.status(not_a_fingerprint, &key("k")),
            KeyStatus::Unchanged
        );
    }

    #[test]
    fn the_leftovers_of_an_interrupted_save_are_removed_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let leftover = dir.path().join(".state.json.tmp-00000000deadbeef");
        let unrelated = dir.path().join(".other.json.tmp-00000000deadbeef");
        fs::write(&leftover, "{\"version\": 2").unwrap();
        fs::write(&unrelated, "not ours").unwrap();

        StateFile::read_only(&path).unwrap();
        assert!(
            leftover.exists(),
            "a reader takes no lock and removes nothing"
        );
        let state = StateFile::open_for_write(&path).unwrap();
        assert!(!leftover.exists());
        assert!(unrelated.exists());
        drop(state);
    }

    #[cfg(unix)]
    #[test]
    fn a_state_file_reached_through_a_symlink_stays_a_symlink_to_the_updated_file() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("state.json");
        let link = dir.path().join("state.json");
        std::os::unix::fs::symlink("real/state.json", &link).unwrap();

        // The target does not exist yet: the first save creates it.
        let mut state = StateFile::open_for_write(&link).unwrap();
        state.keys_mut().record(Uuid::from_u128(1), &key("k"));
        state.save().unwrap();
        drop(state);
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::symlink_metadata(&real).unwrap().file_type().is_file());
        assert_eq!(
            StateFile::read_only(&real)
                .unwrap()
                .status(Uuid::from_u128(1), &key("k")),
            KeyStatus::Unchanged
        );
        // The lock and the temp files live beside the real file.
        assert_eq!(names_in(&real_dir), ["state.json", "state.json.lock"]);
        assert_eq!(names_in(dir.path()), ["real", "state.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn two_paths_to_the_same_file_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("a/state.json");
        fs::create_dir_all(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link.json")).unwrap();

        let first = StateFile::open_for_write(&real).unwrap();
        for other in [
            dir.path().join("b/state.json"),
            dir.path().join("link.json"),
            dir.path().join("a/../a/state.json"),
        ] {
            let err = StateFile::open_for_write(&other).unwrap_err();
            assert!(
                matches!(&err, StateError::Locked { path } if path == &other),
                "{other:?}: {err}"
            );
        }
        drop(first);
        assert!(StateFile::open_for_write(&dir.path().join("link.json")).is_ok());
    }

    #[test]
    fn saves_are_batched_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = StateFile::open_for_write(&path).unwrap();
        let on_disk = || StateFile::read_only(&path).unwrap().len();

        state.keys_mut().record(Uuid::from_u128(1), &key("k"));
        assert!(state.save_if_due().unwrap(), "the first save is always due");
        assert_eq!(on_disk(), 1);
        state.keys_mut().record(Uuid::from_u128(2), &key("k"));
        assert!(
            !state.save_if_due().unwrap(),
            "within the interval: batched"
        );
        assert_eq!(on_disk(), 1);
        state.save().unwrap();
        assert_eq!(on_disk(), 2);
        assert!(!state.save_if_due().unwrap(), "nothing changed");
    }
}
