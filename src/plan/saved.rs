//! Saved plan files: `plan --out FILE` writes one; `apply --plan FILE` applies
//! exactly its entries, or nothing.
//!
//! A plan file is versioned JSON ([`PLAN_FILE_FORMAT_VERSION`]; schema in
//! `schema/plan-file.schema.json`). It holds no secret: per entry the action,
//! the fields to write, where the key comes from (`!Env NAME`, `!File path`,
//! `literal value`, never the value) and digests pinning what the plan was
//! made from:
//!
//! - `live`: SHA-256 of the live stage as listed: its uuid and every compared
//!   field, normalised as the planner compares them;
//! - `desired`: SHA-256 of the manifest's stage: every field (normalised), the
//!   uuid pin and the key source;
//! - `key`: the key's salted fingerprint, `SHA-256(salt || entry id || key)`
//!   with the file's random `salt`, so a file never holds the bare SHA of a key
//!   and two entries with the same key have unrelated fingerprints.
//!
//! The file as a whole pins the server (`url` as normalised, `version`), its
//! creation time, and `digest`: SHA-256 of the canonical JSON of everything
//! else (keys sorted, no whitespace), so an edited file is detected.
//!
//! The flow is pure on both sides: [`SavedPlan::from_plan`] then
//! [`SavedPlan::to_json`] when saving; [`SavedPlan::parse`] (version, digest,
//! shape) then [`check`] against fresh manifests and live state when applying.
//! `check` returns [`Verified`] (which entries write, with which manifest's key)
//! or a [`Refusal`]; reading the file, the clock and authentik stay with the caller.
//!
//! Traps:
//! - The whole-file digest catches an edited or damaged file, not a forged one
//!   (anyone can recompute a SHA-256). So [`check`] also requires that what an
//!   entry would write is exactly what the fresh manifest says: a hand-made
//!   file can only write what the manifests and the operator's keys already allow.
//! - Entries in sync when planned write nothing. If their stage drifted since
//!   (live edited, manifest changed, gone), they are left alone and reported in
//!   [`Verified::left_alone`], never refused: they were not reviewed, and the
//!   next plan shows them. Manifests that are not in the file at all are
//!   [`Verified::unplanned`] and left alone too.
//! - Entry ids are positions and `after` refers to one: entries are never
//!   reordered or dropped between saving and applying.
//! - `delete` is a reserved action: the format, the schema and [`check`] know
//!   it (a delete pins only the live stage), but no plan makes one yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::authentik::{Capabilities, ServerVersion};
use crate::kinds::Origin;
use crate::kinds::captcha::{DesiredStage, LiveStage, StageFields};
use crate::kinds::field::FieldChange;
use crate::plan::{Action, EntryId, KeyStatus, Plan, StagePlan, Write};
use crate::secret::{KeySource, PrivateKey};
use crate::state;
use crate::text::escape;

/// The `format_version` this build writes and reads.
pub const PLAN_FILE_FORMAT_VERSION: u64 = 1;

/// The default of `apply --plan --max-age`: a reviewed plan is applied the
/// same day or planned again.
#[cfg(test)]
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How far in the future a plan file's creation time may be (clocks of the CI
/// runner that planned and of the one that applies differ a little).
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A plan file, as written and as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub(crate) format_version: u64,
    /// RFC 3339, UTC, whole seconds.
    pub(crate) created_at: String,
    pub(crate) server: SavedServer,
    /// 16 random bytes, hex: the salt of every `key` fingerprint in the file.
    pub(crate) salt: String,
    pub(crate) entries: Vec<SavedEntry>,
    /// `sha256:<hex>` of the canonical JSON of the file without this key.
    pub(crate) digest: String,
}

/// The authentik the plan was made against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedServer {
    /// The API root as the client normalised it (`https://auth.example.com`).
    pub(crate) url: String,
    /// authentik's version, e.g. `2025.12.4`; it decides the compared fields.
    pub(crate) version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SavedAction {
    Create,
    Update,
    InSync,
    /// Reserved for prune; no plan makes one yet.
    Delete,
}

impl SavedAction {
    fn writes(self) -> bool {
        !matches!(self, SavedAction::InSync)
    }
}

/// One plan entry, without its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedEntry {
    /// Its position in `entries`.
    pub(crate) id: usize,
    pub(crate) action: SavedAction,
    /// The desired name, trimmed (for a delete: the live name).
    pub(crate) name: String,
    pub(crate) origin: Option<SavedOrigin>,
    /// The live stage written to or matched; `None` for a create.
    pub(crate) uuid: Option<Uuid>,
    /// The manifest's `uuid` pin, if it has one.
    pub(crate) pinned_uuid: Option<Uuid>,
    /// The entry that must be written first: it renames a stage away from
    /// the name this one takes.
    pub(crate) after: Option<usize>,
    /// `!Env NAME`, `!File path` or `literal value`; `None` for a delete.
    pub(crate) key_source: Option<String>,
    /// What was known of the key when planned (shown, not checked).
    pub(crate) private_key: Option<KeyStatus>,
    /// live -> desired, for a reader of the file (not checked: `digests.live`
    /// pins the live side and `fields` the desired one).
    #[serde(default, skip_deserializing)]
    pub(crate) changes: Vec<FieldChange>,
    /// What a create or an update sends, cut to the fields the server knows.
    pub(crate) fields: Option<StageFields>,
    pub(crate) digests: SavedDigests,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedOrigin {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// `sha256:<hex>` each; see the module docs for what each covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedDigests {
    pub(crate) live: Option<String>,
    pub(crate) desired: Option<String>,
    pub(crate) key: Option<String>,
}

/// Why a plan file is not written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveError {
    #[error(
        "the plan has {0} stage(s) in error; fix them first (a plan file holds only plans that can be applied whole)"
    )]
    PlanHasErrors(usize),
}

/// Why a plan file is not applied. Nothing was written in every case.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("the plan file is not valid: {0}")]
    Corrupt(String),
    #[error("the plan file was edited after it was made (its digest does not match its content)")]
    Edited,
    #[error(
        "the plan file has format version {0}; this stagesync reads version {PLAN_FILE_FORMAT_VERSION}"
    )]
    UnsupportedVersion(u64),
    #[error("the plan file was made at {created_at}, {} ago: older than --max-age {}", humantime::format_duration(*age), humantime::format_duration(*max_age))]
    Expired {
        created_at: String,
        age: Duration,
        max_age: Duration,
    },
    #[error(
        "the plan file was made at {0}, in the future by this machine's clock; check the clocks"
    )]
    FromTheFuture(String),
    #[error(
        "the plan file was made against {}, not {}",
        escape(planned),
        escape(now)
    )]
    OtherServer { planned: String, now: String },
    #[error(
        "the plan file was made against authentik {planned}, the server now runs {now}; the compared fields may differ"
    )]
    ServerVersionChanged { planned: String, now: String },
    #[error("{} planned stage(s) changed since the plan was made", .0.len())]
    Stale(Vec<StageReport>),
}

/// What changed since the plan, for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The live stage's compared fields differ from those planned against.
    LiveEdited,
    /// The live stage the entry writes to no longer exists.
    StageGone,
    /// The manifest's fields, uuid pin or key source differ; `detail` says how
    /// when it is more than that.
    ManifestChanged { detail: Option<String> },
    /// The private key the manifest points to is not the one planned with.
    KeyChanged,
    /// The name the entry takes is now held by another stage; `message` says
    /// which, as a plan would.
    NameTaken { message: String },
}

impl Change {
    /// A stable word for JSON and tests.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Change::LiveEdited => "live_edited",
            Change::StageGone => "stage_gone",
            Change::ManifestChanged { .. } => "manifest_changed",
            Change::KeyChanged => "key_changed",
            Change::NameTaken { .. } => "name_taken",
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::LiveEdited => f.write_str("live edited: the stage changed in authentik"),
            Change::StageGone => f.write_str("stage gone: it was deleted in authentik"),
            Change::ManifestChanged { detail: None } => {
                f.write_str("manifest changed: it no longer says what was planned")
            }
            Change::ManifestChanged {
                detail: Some(detail),
            } => write!(f, "manifest changed: {}", escape(detail)),
            Change::KeyChanged => {
                f.write_str("key changed: the private key it points to is not the planned one")
            }
            Change::NameTaken { message } => write!(f, "name taken: {}", escape(message)),
        }
    }
}

/// The changes of one entry since the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageReport {
    pub(crate) entry: usize,
    pub(crate) name: String,
    /// `file:line` of the manifest when planned, if the entry had one.
    pub(crate) origin: Option<String>,
    pub(crate) changes: Vec<Change>,
}

impl fmt::Display for StageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", escape(&self.name))?;
        if let Some(origin) = &self.origin {
            write!(f, " ({})", escape(origin))?;
        }
        f.write_str(": ")?;
        for (i, change) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{change}")?;
        }
        Ok(())
    }
}

/// A plan file that passed [`check`]: apply its writing entries, nothing else.
#[derive(Debug, PartialEq)]
pub(crate) struct Verified {
    /// Entry id -> index of the fresh manifest stage it matched (where its
    /// key comes from), for every entry that has a manifest.
    pub(crate) desired_of: BTreeMap<usize, usize>,
    /// Entries in sync when planned that changed since: not written.
    pub(crate) left_alone: Vec<StageReport>,
    /// Names of manifest stages the file has no entry for: not written.
    pub(crate) unplanned: Vec<String>,
}

/// Everything [`check`] compares a plan file with, read just before applying.
pub(crate) struct Fresh<'a> {
    /// The manifests, keys resolved.
    pub(crate) desired: &'a [DesiredStage],
    /// Every live captcha stage.
    pub(crate) live: &'a [LiveStage],
    /// name -> kind for the names from [`SavedPlan::names_to_check`] that a
    /// stage of another type holds.
    pub(crate) foreign_names: &'a BTreeMap<String, String>,
    /// The API root the client will write to, normalised.
    pub(crate) url: &'a str,
    pub(crate) version: ServerVersion,
    pub(crate) now: SystemTime,
    pub(crate) max_age: Duration,
}

fn sha256_tagged(bytes: &[u8]) -> String {
    format!("sha256:{}", state::hex(&Sha256::digest(bytes)))
}

/// Canonical JSON: object keys sorted, no whitespace, numbers and strings as
/// serde_json writes them. Deterministic for a given value, whatever the key
/// order it was built or parsed with.
fn canonical(value: &Json, out: &mut String) {
    match value {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn digest_of(value: &impl Serialize) -> String {
    let json = serde_json::to_value(value).unwrap_or(Json::Null);
    let mut text = String::new();
    canonical(&json, &mut text);
    sha256_tagged(text.as_bytes())
}

/// The digest of a whole file: everything but `digest` itself.
fn file_digest(document: &serde_json::Map<String, Json>) -> String {
    let mut rest = document.clone();
    rest.remove("digest");
    let mut text = String::new();
    canonical(&Json::Object(rest), &mut text);
    sha256_tagged(text.as_bytes())
}

/// The fields of `fields` that `capabilities` compares, normalised.
fn compared(fields: &StageFields, capabilities: Capabilities) -> BTreeMap<&'static str, Json> {
    let fields = fields.clone().normalized();
    StageFields::known_keys(capabilities)
        .into_iter()
        .map(|f| {
            (
                f,
                serde_json::to_value(fields.value(f)).unwrap_or(Json::Null),
            )
        })
        .collect()
}

fn live_digest(live: &LiveStage, capabilities: Capabilities) -> String {
    #[derive(Serialize)]
    struct Pinned<'a> {
        uuid: Uuid,
        fields: BTreeMap<&'a str, Json>,
    }
    digest_of(&Pinned {
        uuid: live.uuid,
        fields: compared(&live.fields, capabilities),
    })
}

fn desired_digest(desired: &DesiredStage) -> String {
    #[derive(Serialize)]
    struct Pinned<'a> {
        pinned_uuid: Option<Uuid>,
        fields: &'a StageFields,
        key_source: String,
    }
    digest_of(&Pinned {
        pinned_uuid: desired.uuid,
        fields: &desired.fields.clone().normalized(),
        key_source: desired.key_source.to_string(),
    })
}

fn key_digest(salt: &[u8], entry: usize, key: &PrivateKey) -> String {
    let mut entry_salt = salt.to_vec();
    entry_salt.extend_from_slice(&(entry as u64).to_be_bytes());
    format!("sha256:{}", state::hex(&state::digest(&entry_salt, key)))
}

fn origin_text(origin: &SavedOrigin) -> String {
    format!("{}:{}", origin.file, origin.line)
}

impl SavedPlan {
    /// The plan file for `plan`, made from `desired` (keys resolved, in the
    /// order the plan was made from) against `live` on the server at `url`.
    /// `salt` is 16 random bytes from the caller.
    pub fn from_plan(
        plan: &Plan,
        desired: &[DesiredStage],
        live: &[LiveStage],
        url: &str,
        now: SystemTime,
        salt: [u8; 16],
    ) -> Result<SavedPlan, SaveError> {
        let capabilities = plan.capabilities;
        let errors = plan.summary().error;
        if errors > 0 {
            return Err(SaveError::PlanHasErrors(errors));
        }
        let live_by_uuid: HashMap<Uuid, &LiveStage> = live.iter().map(|l| (l.uuid, l)).collect();
        let entries = plan
            .stages
            .iter()
            .map(|stage| {
                // An entry of a manifest has its index as id (entries are in
                // input order); an entry with no manifest (a delete, once plans
                // make them) pins only its live stage.
                let id = stage.id.0;
                let manifest = desired.get(id);
                let (action, uuid, write, changes, key) = match &stage.action {
                    Action::Create { write, key } => {
                        (SavedAction::Create, None, Some(write), &[][..], *key)
                    }
                    Action::Update {
                        uuid,
                        changes,
                        write,
                        key,
                    } => (
                        SavedAction::Update,
                        Some(*uuid),
                        Some(write),
                        &changes[..],
                        *key,
                    ),
                    Action::InSync { uuid } => (
                        SavedAction::InSync,
                        Some(*uuid),
                        None,
                        &[][..],
                        KeyStatus::Unchanged,
                    ),
                    Action::Error { .. } => unreachable!("plans with errors are refused above"),
                };
                SavedEntry {
                    id,
                    action,
                    name: stage.name.clone(),
                    origin: Some(SavedOrigin {
                        file: stage.origin.file.display().to_string(),
                        line: stage.origin.line,
                        column: stage.origin.column,
                    }),
                    uuid,
                    pinned_uuid: manifest.and_then(|m| m.uuid),
                    after: write.and_then(|w| w.after).map(|a| a.0),
                    key_source: Some(stage.key_source.to_string()),
                    private_key: Some(key),
                    changes: changes.to_vec(),
                    fields: write.map(|w| w.fields.clone()),
                    digests: SavedDigests {
                        live: uuid
                            .and_then(|u| live_by_uuid.get(&u))
                            .map(|l| live_digest(l, capabilities)),
                        desired: manifest.map(desired_digest),
                        key: manifest.map(|m| key_digest(&salt, id, &m.private_key)),
                    },
                }
            })
            .collect();
        let mut saved = SavedPlan {
            format_version: PLAN_FILE_FORMAT_VERSION,
            created_at: humantime::format_rfc3339_seconds(now).to_string(),
            server: SavedServer {
                url: url.to_owned(),
                version: capabilities.version.to_string(),
            },
            salt: state::hex(&salt),
            entries,
            digest: String::new(),
        };
        saved.digest = saved.computed_digest();
        Ok(saved)
    }

    fn computed_digest(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Json::Object(map)) => file_digest(&map),
            _ => String::new(),
        }
    }

    /// The file's text: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads a plan file: its version first (a newer format is reported as
    /// such), then its digest, then its shape.
    pub(crate) fn parse(text: &str) -> Result<SavedPlan, Refusal> {
        let corrupt = |why: String| Refusal::Corrupt(why);
        let document: Json =
            serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON ({e})")))?;
        let Json::Object(map) = &document else {
            return Err(corrupt("not a JSON object".into()));
        };
        match map.get("format_version").map(Json::as_u64) {
            Some(Some(PLAN_FILE_FORMAT_VERSION)) => {}
            Some(Some(other)) => return Err(Refusal::UnsupportedVersion(other)),
            _ => return Err(corrupt("no format_version number".into())),
        }
        match map.get("digest").and_then(Json::as_str) {
            Some(digest) if digest == file_digest(map) => {}
            Some(_) => return Err(Refusal::Edited),
            None => return Err(corrupt("no digest".into())),
        }
        let saved: SavedPlan = serde_json::from_value(document)
            .map_err(|e| corrupt(format!("unexpected content ({e})")))?;
        saved.check_shape().map_err(corrupt)?;
        Ok(saved)
    }

    /// What a well-formed file has beyond its types: ids in order, `after`
    /// pointing at another entry, each action with the pins it needs.
    fn check_shape(&self) -> Result<(), String> {
        let salt_ok = state::unhex(&self.salt).is_some_and(|s| s.len() == 16);
        if !salt_ok {
            return Err("salt is not 16 bytes of hex".into());
        }
        humantime::parse_rfc3339(&self.created_at)
            .map_err(|e| format!("created_at {:?}: {e}", self.created_at))?;
        if ServerVersion::parse(&self.server.version).is_none() {
            return Err(format!("server version {:?}", self.server.version));
        }
        for (position, entry) in self.entries.iter().enumerate() {
            let at = |what: &str| format!("entry {position} ({:?}): {what}", entry.name);
            if entry.id != position {
                return Err(at("its id is not its position"));
            }
            // Only a rename frees a name: `after` names another entry's update.
            if let Some(after) = entry.after
                && (after == position
                    || self.entries.get(after).map(|a| a.action) != Some(SavedAction::Update))
            {
                return Err(at("`after` names no other entry's update"));
            }
            let d = &entry.digests;
            let needs = match entry.action {
                SavedAction::Create => {
                    entry.uuid.is_none()
                        && entry.fields.is_some()
                        && entry.key_source.is_some()
                        && d.desired.is_some()
                        && d.key.is_some()
                }
                SavedAction::Update => {
                    entry.uuid.is_some()
                        && entry.fields.is_some()
                        && entry.key_source.is_some()
                        && d.live.is_some()
                        && d.desired.is_some()
                        && d.key.is_some()
                }
                SavedAction::InSync => {
                    entry.uuid.is_some()
                        && entry.fields.is_none()
                        && d.live.is_some()
                        && d.desired.is_some()
                        && d.key.is_some()
                }
                SavedAction::Delete => {
                    entry.uuid.is_some() && entry.fields.is_none() && d.live.is_some()
                }
            };
            if !needs {
                return Err(at(
                    "missing or unexpected uuid, fields or digests for its action",
                ));
            }
        }
        Ok(())
    }

    /// The server the plan was made for.
    pub(crate) fn capabilities(&self) -> Option<Capabilities> {
        ServerVersion::parse(&self.server.version).map(Capabilities::for_version)
    }

    /// Whether applying would write anything.
    #[cfg(test)]
    pub(crate) fn has_changes(&self) -> bool {
        self.entries.iter().any(|e| e.action.writes())
    }

    /// Names that writing entries take and no live captcha stage holds: the
    /// caller looks them up among all stage types for [`Fresh::foreign_names`].
    pub(crate) fn names_to_check(&self, live: &[LiveStage]) -> Vec<String> {
        let held: BTreeSet<&str> = live.iter().map(|l| l.fields.name.trim()).collect();
        let mut names: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| e.fields.as_ref())
            .map(|f| f.name.trim())
            .filter(|n| !held.contains(n))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Whether `saved` may be applied now: the file is fresh, for this server,
/// and every writing entry's live stage, manifest, key and name are as planned.
pub(crate) fn check(saved: &SavedPlan, fresh: &Fresh) -> Result<Verified, Refusal> {
    if saved.server.url != fresh.url {
        return Err(Refusal::OtherServer {
            planned: saved.server.url.clone(),
            now: fresh.url.to_owned(),
        });
    }
    let created = humantime::parse_rfc3339(&saved.created_at)
        .map_err(|e| Refusal::Corrupt(format!("created_at: {e}")))?;
    match fresh.now.duration_since(created) {
        Ok(age) if age > fresh.max_age => {
            return Err(Refusal::Expired {
                created_at: saved.created_at.clone(),
                age: Duration::from_secs(age.as_secs()),
                max_age: fresh.max_age,
            });
        }
        Ok(_) => {}
        Err(ahead) if ahead.duration() > CLOCK_SKEW => {
            return Err(Refusal::FromTheFuture(saved.created_at.clone()));
        }
        Err(_) => {}
    }
    let planned_version = ServerVersion::parse(&saved.server.version);
    if planned_version != Some(fresh.version) {
        return Err(Refusal::ServerVersionChanged {
            planned: saved.server.version.clone(),
            now: fresh.version.to_string(),
        });
    }
    let capabilities = Capabilities::for_version(fresh.version);
    let salt =
        state::unhex(&saved.salt).ok_or_else(|| Refusal::Corrupt("salt is not hex".into()))?;

    let live_by_uuid: HashMap<Uuid, &LiveStage> = fresh.live.iter().map(|l| (l.uuid, l)).collect();
    let live_by_name: HashMap<&str, &LiveStage> = fresh
        .live
        .iter()
        .map(|l| (l.fields.name.trim(), l))
        .collect();
    let desired_by_pin: HashMap<Uuid, usize> = fresh
        .desired
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.uuid.map(|u| (u, i)))
        .collect();
    let desired_by_name: HashMap<&str, usize> = fresh
        .desired
        .iter()
        .enumerate()
        .map(|(i, d)| (d.fields.name.trim(), i))
        .collect();

    let mut verified = Verified {
        desired_of: BTreeMap::new(),
        left_alone: Vec::new(),
        unplanned: Vec::new(),
    };
    let mut stale = Vec::new();
    for entry in &saved.entries {
        let mut changes = Vec::new();

        if let Some(uuid) = entry.uuid {
            match live_by_uuid.get(&uuid) {
                None => changes.push(Change::StageGone),
                Some(live) => {
                    if entry.digests.live.as_deref() != Some(&live_digest(live, capabilities)) {
                        changes.push(Change::LiveEdited);
                    }
                }
            }
        }

        if let Some(desired_digest_then) = &entry.digests.desired {
            let found = entry
                .pinned_uuid
                .and_then(|u| desired_by_pin.get(&u))
                .or_else(|| desired_by_name.get(entry.name.as_str()))
                .copied();
            match found {
                None => changes.push(Change::ManifestChanged {
                    detail: Some("no manifest declares this stage any more".into()),
                }),
                Some(index) => {
                    verified.desired_of.insert(entry.id, index);
                    let manifest = &fresh.desired[index];
                    if desired_digest(manifest) != *desired_digest_then {
                        changes.push(Change::ManifestChanged { detail: None });
                    } else if let Some(fields) = &entry.fields
                        && *fields != manifest.fields.clone().normalized().sendable(capabilities)
                    {
                        // The manifest is as planned but the file would write
                        // something else: a made-up file with a recomputed digest.
                        return Err(Refusal::Corrupt(format!(
                            "entry {} ({:?}) would write fields its manifest does not say",
                            entry.id, entry.name
                        )));
                    }
                    if entry.digests.key.as_deref()
                        != Some(&key_digest(&salt, entry.id, &manifest.private_key))
                    {
                        changes.push(Change::KeyChanged);
                    }
                }
            }
        }

        if let Some(fields) = entry.fields.as_ref().filter(|_| entry.action.writes()) {
            let name = fields.name.trim();
            // The stage the entry writes, and the one whose rename frees the
            // name, may hold it; anything else is in the way.
            let freed_by = entry
                .after
                .and_then(|a| saved.entries.get(a))
                .and_then(|a| a.uuid);
            match live_by_name.get(name) {
                Some(holder)
                    if Some(holder.uuid) != entry.uuid && Some(holder.uuid) != freed_by =>
                {
                    changes.push(Change::NameTaken {
                        message: format!(
                            "name {name:?} is already used by captcha stage {}",
                            holder.uuid
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    if let Some(kind) = fresh.foreign_names.get(name) {
                        changes.push(Change::NameTaken {
                            message: super::foreign_message(name, kind),
                        });
                    }
                }
            }
        }

        if changes.is_empty() {
            continue;
        }
        let report = StageReport {
            entry: entry.id,
            name: entry.name.clone(),
            origin: entry.origin.as_ref().map(origin_text),
            changes,
        };
        if entry.action.writes() {
            stale.push(report);
        } else {
            verified.left_alone.push(report);
        }
    }
    if !stale.is_empty() {
        return Err(Refusal::Stale(stale));
    }

    let planned: std::collections::BTreeSet<usize> =
        verified.desired_of.values().copied().collect();
    verified.unplanned = fresh
        .desired
        .iter()
        .enumerate()
        .filter(|(i, _)| !planned.contains(i))
        .map(|(_, d)| d.fields.name.trim().to_owned())
        .collect();
    Ok(verified)
}

/// The plan to execute for a file that passed [`check`]: its entries in
/// order, each writing entry's fields as saved and its key from the manifest
/// `verified` matched it to. Entries in sync when planned write nothing, even
/// if they drifted since. `live` is the state `check` saw.
pub(crate) fn to_plan(
    saved: &SavedPlan,
    verified: &Verified,
    desired: &[DesiredStage],
    live: &[LiveStage],
) -> Result<Plan, Refusal> {
    let capabilities = saved
        .capabilities()
        .ok_or_else(|| Refusal::Corrupt(format!("server version {:?}", saved.server.version)))?;
    let live_by_uuid: HashMap<Uuid, &LiveStage> = live.iter().map(|l| (l.uuid, l)).collect();
    let mut stages = Vec::with_capacity(saved.entries.len());
    for entry in &saved.entries {
        let manifest = verified.desired_of.get(&entry.id).map(|&i| &desired[i]);
        let unmatched = || Refusal::Corrupt(format!("entry {} has no manifest", entry.id));
        let write = |fields: &StageFields| -> Result<Write, Refusal> {
            Ok(Write {
                fields: fields.clone(),
                private_key: manifest.ok_or_else(unmatched)?.private_key.clone(),
                after: entry.after.map(EntryId),
            })
        };
        let key = entry.private_key.unwrap_or(KeyStatus::Unknown);
        let action = match (entry.action, &entry.fields, entry.uuid) {
            (SavedAction::Create, Some(fields), None) => Action::Create {
                write: write(fields)?,
                key,
            },
            (SavedAction::Update, Some(fields), Some(uuid)) => {
                let live = live_by_uuid.get(&uuid).ok_or_else(unmatched)?;
                Action::Update {
                    uuid,
                    // The live digest matched: these are the changes reviewed.
                    changes: live
                        .fields
                        .clone()
                        .normalized()
                        .changes_to(fields, |f| f.known_by(capabilities)),
                    write: write(fields)?,
                    key,
                }
            }
            (SavedAction::InSync, None, Some(uuid)) => Action::InSync { uuid },
            (SavedAction::Delete, ..) => {
                return Err(Refusal::Corrupt(format!(
                    "entry {} ({:?}) deletes a stage; this stagesync does not apply deletes",
                    entry.id, entry.name
                )));
            }
            _ => return Err(Refusal::Corrupt(format!("entry {} is malformed", entry.id))),
        };
        let (origin, key_source) = match manifest {
            Some(m) => (m.origin.clone(), m.key_source.clone()),
            None => (
                entry
                    .origin
                    .as_ref()
                    .map(SavedOrigin::to_origin)
                    .unwrap_or(Origin {
                        file: PathBuf::new(),
                        line: 0,
                        column: 0,
                    }),
                entry
                    .key_source
                    .as_deref()
                    .map(parse_key_source)
                    .unwrap_or(KeySource::Literal),
            ),
        };
        stages.push(StagePlan {
            id: EntryId(entry.id),
            name: entry.name.clone(),
            origin,
            key_source,
            action,
        });
    }
    let claimed: BTreeSet<Uuid> = saved.entries.iter().filter_map(|e| e.uuid).collect();
    Ok(Plan::assemble(stages, live, &claimed, capabilities))
}

impl SavedOrigin {
    fn to_origin(&self) -> Origin {
        Origin {
            file: PathBuf::from(&self.file),
            line: self.line,
            column: self.column,
        }
    }
}

/// The inverse of [`KeySource`]'s `Display`, for entries whose manifest is gone.
fn parse_key_source(text: &str) -> KeySource {
    if let Some(var) = text.strip_prefix("!Env ") {
        KeySource::Env(var.to_owned())
    } else if let Some(path) = text.strip_prefix("!File ") {
        KeySource::File(PathBuf::from(path))
    } else {
        KeySource::Literal
    }
}

#[cfg(test)]
mod tests;
