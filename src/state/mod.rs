//! The state file: what stagesync knows of the private keys it wrote, and the
//! inventory of the objects it manages.
//!
//! authentik never returns a captcha stage's `private_key`, so drift of the key
//! cannot be read back. Instead stagesync records per stage uuid what it knows
//! of the key authentik holds, an entry (`keys::Entry`):
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
//! [`file::SAVE_INTERVAL`]): losing the last batch to a crash only loses fingerprints,
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
//! empty, so a file without it reads as an empty inventory): the objects
//! stagesync manages, of every kind, the only ones `--prune` may ever delete.
//! An entry without `kind` (written before kinds existed) is a captcha stage,
//! so the format stays version 2.
//!
//! ```json
//! {"version": 2, "stages": {...},
//!  "inventory": {"<uuid>": {"kind": "captcha_stage", "name": "rec-login", "managed_as": "created"}}}
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
//!
//! # Layout
//!
//! - `fingerprint`: salted fingerprints of keys ([`Fingerprint`], pure);
//! - `keys`: [`KeyState`], what is known of each key, and its write-ahead marks;
//! - `inventory`: [`Inventory`], the objects stagesync manages, by kind and uuid;
//! - `file`: the file itself ([`StateFile`]): format, lock, atomic saves.

mod file;
mod fingerprint;
mod inventory;
mod keys;

pub(crate) use file::write_private_file;
pub use file::{StateError, StateFile};
pub(crate) use fingerprint::{Fingerprint, digest, hex, unhex};
pub(crate) use inventory::{Inventory, ManagedAs};
pub(crate) use keys::KeyMark;
pub use keys::{KeyState, KeyStatus};

use uuid::Uuid;

use crate::kinds::Kind;

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
    fn record_created(&mut self, _kind: Kind, _uuid: Uuid, _name: &str) {}
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
    fn record_created(&mut self, kind: Kind, uuid: Uuid, name: &str) {
        self.inventory_mut()
            .manage(kind, uuid, name, ManagedAs::Created);
    }
}

#[cfg(test)]
mod tests;
