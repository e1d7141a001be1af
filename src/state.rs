//! The state file: salted fingerprints of the private keys stagesync last wrote.
//!
//! authentik never returns a captcha stage's `private_key`, so drift of the key
//! cannot be read back. Instead, after every successful write stagesync records
//! per stage uuid a [`Fingerprint`]: a random 16-byte salt and
//! `SHA-256(salt || key)`, both hex. The key itself is never stored, and the
//! per-entry salt means two stages with the same key have unrelated
//! fingerprints. The key is trimmed before hashing, because authentik trims it
//! on write: `" k\n"` and `"k"` are the same stored key.
//!
//! File format (`version` 1):
//!
//! ```json
//! {"version": 1, "stages": {"<uuid>": {"salt": "<32 hex>", "sha256": "<64 hex>"}}}
//! ```
//!
//! The file also holds the [`Inventory`] (key `inventory`, left out while
//! empty, so a file without it reads as an empty inventory): the stages
//! stagesync manages, the only ones `--prune` may ever delete.
//!
//! ```json
//! {"version": 1, "stages": {...},
//!  "inventory": {"<uuid>": {"name": "rec-login", "managed_as": "created"}}}
//! ```
//!
//! Traps:
//! - Losing the file forgets the inventory too: nothing is pruned until the
//!   manifests have matched (adopted) their stages again.
//! - Losing the file is safe but noisy: every key becomes "unknown" and the next
//!   apply rewrites every key once. A corrupt file is an error naming the path,
//!   never silently reset (that would hide a real problem behind a full rewrite).
//! - Writers (`apply`, `run`) take an exclusive lock on a sibling `<file>.lock`
//!   for as long as the [`StateFile`] lives; a second writer is refused with
//!   [`StateError::Locked`]. `plan` only reads ([`StateFile::read_only`]) and
//!   takes no lock: at worst it sees the file from before a concurrent apply.
//! - Saving is atomic (temp file in the same directory, fsync, rename, fsync of
//!   the directory), so a crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::secret::{ExposeSecret, PrivateKey};

/// The version of the state file format this build reads and writes.
pub const STATE_FORMAT_VERSION: u32 = 1;

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
        "state file {} has format version {found}, this stagesync reads version {STATE_FORMAT_VERSION}",
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
pub struct Fingerprint {
    /// 16 random bytes, hex.
    salt: String,
    /// `SHA-256(salt bytes || trimmed key bytes)`, hex.
    sha256: String,
}

impl Fingerprint {
    fn new(key: &PrivateKey) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Fingerprint {
            salt: hex(&salt),
            sha256: hex(&digest(&salt, key)),
        }
    }

    /// Whether `key` is the key this fingerprint was made from. A malformed salt
    /// (hand-edited file) never matches, so the key is written again.
    fn matches(&self, key: &PrivateKey) -> bool {
        match unhex(&self.salt) {
            Some(salt) => hex(&digest(&salt, key)) == self.sha256.to_ascii_lowercase(),
            None => false,
        }
    }
}

fn digest(salt: &[u8], key: &PrivateKey) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key.expose_secret().trim().as_bytes());
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What is known about the write-only private key of a stage, from its
/// fingerprint in [`KeyState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key is what stagesync last wrote.
    Unchanged,
    /// stagesync wrote a different key: it will be updated.
    Rotated,
    /// stagesync never wrote this stage's key (or the state file was lost).
    Unknown,
}

/// The fingerprints of the keys stagesync last wrote, per stage uuid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    stages: BTreeMap<Uuid, Fingerprint>,
}

impl KeyState {
    /// Whether `key` is what stagesync last wrote to stage `uuid`.
    pub fn status(&self, uuid: Uuid, key: &PrivateKey) -> KeyStatus {
        match self.stages.get(&uuid) {
            None => KeyStatus::Unknown,
            Some(fp) if fp.matches(key) => KeyStatus::Unchanged,
            Some(_) => KeyStatus::Rotated,
        }
    }

    /// Remembers that `key` was written to stage `uuid` (with a fresh salt).
    pub fn record(&mut self, uuid: Uuid, key: &PrivateKey) {
        self.stages.insert(uuid, Fingerprint::new(key));
    }

    pub fn forget(&mut self, uuid: Uuid) {
        self.stages.remove(&uuid);
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

/// How a stage came to be managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedAs {
    /// stagesync created it.
    Created,
    /// It existed and a manifest matched it (by name or pinned uuid).
    Adopted,
}

/// A stage stagesync manages, as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedStage {
    /// Its name when last created, matched or written.
    pub name: String,
    pub managed_as: ManagedAs,
}

/// The stages stagesync manages, by uuid: created by it or matched by a
/// manifest. Prune only ever considers these; a stage no manifest ever named
/// (clicked together in the UI) is never in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inventory {
    stages: BTreeMap<Uuid, ManagedStage>,
}

impl Inventory {
    /// Records `uuid` as managed under `name`. A stage once created stays
    /// `Created` when it is matched later.
    pub fn manage(&mut self, uuid: Uuid, name: &str, managed_as: ManagedAs) {
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
    pub fn forget(&mut self, uuid: Uuid) {
        self.stages.remove(&uuid);
    }

    pub fn get(&self, uuid: Uuid) -> Option<&ManagedStage> {
        self.stages.get(&uuid)
    }

    pub fn contains(&self, uuid: Uuid) -> bool {
        self.stages.contains_key(&uuid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Uuid, &ManagedStage)> {
        self.stages.iter().map(|(u, s)| (*u, s))
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(default)]
    stages: BTreeMap<Uuid, Fingerprint>,
    #[serde(default, skip_serializing_if = "Inventory::is_empty")]
    inventory: Inventory,
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
    if version != STATE_FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let on_disk: OnDisk = serde_json::from_str(text).map_err(corrupt)?;
    Ok((
        KeyState {
            stages: on_disk.stages,
        },
        on_disk.inventory,
    ))
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
    path: PathBuf,
    keys: KeyState,
    inventory: Inventory,
    /// Held for the lock; the lock is released when the file is closed.
    _lock: File,
}

impl StateFile {
    /// Locks `<path>.lock` (creating parent directories with mode 0700) and loads
    /// the file; a missing file is an empty state.
    pub fn open_for_write(path: &Path) -> Result<StateFile, StateError> {
        if let Some(dir) = parent_dir(path) {
            create_private_dir(dir).map_err(io_error(dir))?;
        }
        let lock_path = lock_path(path);
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
        let (keys, inventory) = load(path)?;
        Ok(StateFile {
            path: path.to_owned(),
            keys,
            inventory,
            _lock: lock,
        })
    }

    /// Loads the file without locking (for `plan`); a missing file is an empty state.
    pub fn read_only(path: &Path) -> Result<KeyState, StateError> {
        load(path).map(|(keys, _)| keys)
    }

    /// [`Self::read_only`] with the inventory (for `plan --prune`).
    pub fn read_only_with_inventory(path: &Path) -> Result<(KeyState, Inventory), StateError> {
        load(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &KeyState {
        &self.keys
    }

    pub fn keys_mut(&mut self) -> &mut KeyState {
        &mut self.keys
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn inventory_mut(&mut self) -> &mut Inventory {
        &mut self.inventory
    }

    /// Both halves at once, for an apply that records keys and the inventory.
    pub fn keys_and_inventory_mut(&mut self) -> (&mut KeyState, &mut Inventory) {
        (&mut self.keys, &mut self.inventory)
    }

    /// Writes the state atomically: a 0600 temp file in the same directory,
    /// fsync, rename over the file, fsync of the directory.
    pub fn save(&self) -> Result<(), StateError> {
        let on_disk = OnDisk {
            version: STATE_FORMAT_VERSION,
            stages: self.keys.stages.clone(),
            inventory: self.inventory.clone(),
        };
        let mut text = serde_json::to_string_pretty(&on_disk)
            .map_err(|e| io_error(&self.path)(io::Error::other(e)))?;
        text.push('\n');

        let dir = parent_dir(&self.path).unwrap_or(Path::new("."));
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state.json".to_owned());
        let tmp = dir.join(format!(".{file_name}.tmp-{:016x}", rand::rng().next_u64()));
        let written = write_synced(&tmp, text.as_bytes())
            .and_then(|()| fs::rename(&tmp, &self.path))
            .map_err(io_error(&self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return written;
        }
        sync_dir(dir).map_err(io_error(dir))
    }
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
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
        let a = &keys.stages[&Uuid::from_u128(1)];
        let b = &keys.stages[&Uuid::from_u128(2)];
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
        let state = StateFile::open_for_write(&dir.path().join("other.json")).unwrap();
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
        assert_eq!(parsed["version"], 1);
        assert!(parsed["stages"][Uuid::from_u128(1).to_string()]["sha256"].is_string());
    }
}
