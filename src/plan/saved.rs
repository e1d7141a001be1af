//! Saved plan files: `plan --out FILE` writes one; `apply --plan FILE` applies
//! exactly its entries, or nothing.
//!
//! A plan file is versioned JSON ([`PLAN_FILE_FORMAT_VERSION`]; schema in
//! `schema/plan-file.schema.json`). It holds no secret: per entry its kind,
//! the action, the fields to write, where the key comes from (`!Env NAME`,
//! `!File path`, `literal value`, never the value) and digests pinning what
//! the plan was made from:
//!
//! - `live`: SHA-256 of the live object as listed: its uuid and every compared
//!   field, normalised as the planner compares them;
//! - `desired`: SHA-256 of the manifest's object: every field (normalised), the
//!   uuid pin and the key source;
//! - `key`: the key's salted fingerprint, `SHA-256(salt || entry id || key)`
//!   with the file's random `salt`, so a file never holds the bare SHA of a key
//!   and two entries with the same key have unrelated fingerprints.
//!
//! A `delete` entry (a prune) pins only its live object. The file as a whole
//! pins the server (`url` as normalised, `version`), its creation time, and
//! `digest`: SHA-256 of the canonical JSON of everything else (keys sorted, no
//! whitespace), so an edited file is detected.
//!
//! The flow is pure on both sides: [`SavedPlan::from_plan`] then
//! [`SavedPlan::to_json`] when saving; [`SavedPlan::parse`] (version, digest,
//! shape) then [`check`] when applying. `check` compares the file with a plan
//! made again from the manifests and live state of now ([`Fresh::plan`], by
//! the same planner: no second matcher) and returns [`Verified`] (which of the
//! fresh plan's entries to apply) or a [`Refusal`]; [`to_plan`] is then the
//! fresh plan cut to them. Reading the file, the clock and authentik stay with
//! the caller.
//!
//! Traps:
//! - The whole-file digest catches an edited or damaged file, not a forged one
//!   (anyone can recompute a SHA-256). So [`check`] requires every entry to be
//!   exactly what the manifests plan now: it targets the object its manifest
//!   matches now (uuid pin or name), writes what the manifest says, waits for
//!   what the manifests make it wait for, and an entry saved as in sync must
//!   be in sync (it may not hide a change the manifests ask for); a delete
//!   must be a delete the manifests and the inventory allow now (`used_by`
//!   asked again). A hand-made file can only make stagesync do less than the
//!   manifests ask, never something else.
//! - Entries in sync when planned write nothing. If their object drifted since
//!   (live edited, manifest changed, gone), they are left alone and reported in
//!   [`Verified::left_alone`], never refused: they were not reviewed, and the
//!   next plan shows them. Manifests that are not in the file at all are
//!   [`Verified::unplanned`] and left alone too.
//! - Entry ids are positions, `after` refers to one and the key fingerprint
//!   mixes one in: entries are never reordered or dropped between saving and
//!   applying. A saved id is not the fresh plan's id: entries are paired by
//!   their manifest (a delete by its uuid).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::authentik::{Capabilities, ServerVersion};
use crate::kinds::captcha::{DesiredStage, LiveStage, StageFields};
use crate::kinds::field::FieldChange;
use crate::kinds::{Kind, Object};
use crate::plan::{Action, Dependency, Entry, EntryId, Held, KeyStatus, Plan, Why};
use crate::secret::PrivateKey;
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
    /// A prune: the managed object is deleted.
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
    /// The kind of object; files from before kinds existed hold captcha
    /// stages only.
    #[serde(default)]
    pub(crate) kind: Kind,
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
    pub(crate) fields: Option<SavedFields>,
    pub(crate) digests: SavedDigests,
}

/// The fields an entry writes, as its kind's table names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum SavedFields {
    CaptchaStage(StageFields),
    /// A guard's write as plans show it (flow slug and binding fields, or
    /// identification stage and captcha): compared with the fresh plan's as
    /// JSON, since the uuids it resolves to are looked up again.
    Guard(serde_json::Value),
}

impl SavedFields {
    fn of(object: &Object) -> Self {
        match object {
            Object::CaptchaStage(fields) => SavedFields::CaptchaStage(fields.clone()),
            Object::Guard(write) => {
                SavedFields::Guard(serde_json::to_value(write).unwrap_or_default())
            }
        }
    }

    /// Whether `object` writes what these fields say.
    fn same_as(&self, object: &Object) -> bool {
        match (self, object) {
            (SavedFields::CaptchaStage(fields), Object::CaptchaStage(other)) => fields == other,
            (SavedFields::Guard(saved), Object::Guard(write)) => {
                serde_json::to_value(write).is_ok_and(|fresh| &fresh == saved)
            }
            _ => false,
        }
    }

    /// The name of the object written, for a kind whose fields hold it.
    fn name(&self) -> Option<&str> {
        match self {
            SavedFields::CaptchaStage(fields) => Some(fields.name.trim()),
            SavedFields::Guard(_) => None,
        }
    }
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
    #[error(
        "{} of the plan file {} not what the manifests plan (a plan file edited by hand?)",
        if .0.len() == 1 { "1 entry".to_owned() } else { format!("{} entries", .0.len()) },
        if .0.len() == 1 { "is" } else { "are" }
    )]
    NotFromManifests(Vec<StageReport>),
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
    /// A delete that is no delete now: something uses the object (`used_by`
    /// asked again), a guard holds it back, or a manifest declares it again.
    NotDeleted { reason: String },
    /// Not what the manifests plan now, though nothing it was made from
    /// changed: the entry was not made by `plan --out`.
    Forged { message: String },
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
            Change::NotDeleted { .. } => "not_deleted",
            Change::Forged { .. } => "forged",
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
            Change::NotDeleted { reason } => write!(f, "not a delete now: {}", escape(reason)),
            Change::Forged { message } => write!(f, "{}", escape(message)),
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
    /// The fresh plan's entries the file lists, in the file's order, and
    /// whether each is applied (a write or a delete the file carries, still as
    /// planned) or only shown (saved in sync).
    pub(crate) entries: Vec<(EntryId, bool)>,
    /// Entries in sync when planned that changed since: not written.
    pub(crate) left_alone: Vec<StageReport>,
    /// Names of manifest stages the file has no entry for: not written.
    pub(crate) unplanned: Vec<String>,
}

/// Everything [`check`] compares a plan file with, read just before applying.
pub(crate) struct Fresh<'a> {
    /// The plan made now from `desired` and `live`, as `plan` would make it
    /// (with prune when the file holds deletes: [`SavedPlan::prune_settings`]).
    pub(crate) plan: &'a Plan,
    /// The manifests, keys resolved, in the order the plan was made from.
    pub(crate) desired: &'a [DesiredStage],
    /// Every live captcha stage.
    pub(crate) live: &'a [LiveStage],
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

/// A guard entry's live side as planned: the object it matched and the live
/// values its diff shows (a binding moved since shows another `old`).
fn guard_live_digest(entry: &Entry) -> Option<String> {
    #[derive(Serialize)]
    struct Pinned<'a> {
        uuid: Uuid,
        old: Vec<(&'a str, String)>,
    }
    let old = match &entry.action {
        Action::Update { changes, .. } => changes
            .iter()
            .map(|c| (c.field, c.old.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    Some(digest_of(&Pinned {
        uuid: entry.uuid()?,
        old,
    }))
}

/// A guard entry's desired side: its name and what it writes (nothing for
/// one in sync or an unbind).
fn guard_desired_digest(entry: &Entry) -> String {
    #[derive(Serialize)]
    struct Pinned<'a> {
        name: &'a str,
        fields: Option<SavedFields>,
    }
    digest_of(&Pinned {
        name: &entry.name,
        fields: entry.action.write().map(|w| SavedFields::of(&w.object)),
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
    /// It holds every manifest entry and every delete that is made (a held
    /// delete does nothing). `salt` is 16 random bytes from the caller.
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
        let saved: Vec<&Entry> = plan
            .entries
            .iter()
            .filter(|e| !matches!(e.action, Action::Delete { held: Some(_), .. }))
            .collect();
        let position: HashMap<EntryId, usize> =
            saved.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        let entries = saved
            .iter()
            .enumerate()
            .map(|(id, entry)| {
                // A manifest entry's plan id is its manifest's index (manifest
                // entries come first, in input order).
                let manifest = entry
                    .origin
                    .as_ref()
                    .filter(|_| entry.kind == Kind::CaptchaStage)
                    .and_then(|_| desired.get(entry.id.0));
                let (action, uuid, write, changes, key) = match &entry.action {
                    Action::Create { write, key } => {
                        (SavedAction::Create, None, Some(write), &[][..], Some(*key))
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
                        Some(*key),
                    ),
                    Action::InSync { uuid } => (
                        SavedAction::InSync,
                        Some(*uuid),
                        None,
                        &[][..],
                        Some(KeyStatus::Unchanged),
                    ),
                    Action::Delete { uuid, .. } => {
                        (SavedAction::Delete, Some(*uuid), None, &[][..], None)
                    }
                    Action::Error { .. } => unreachable!("plans with errors are refused above"),
                };
                // A rename or a stage's create; a pruned stage's own guards
                // are found again with it (the fresh plan says them).
                let after = entry.after.iter().find_map(|d| match d {
                    Dependency::Entry {
                        on,
                        why: Why::FreesName | Why::CreatesStage,
                    } => position.get(on).copied(),
                    Dependency::Entry {
                        why: Why::RemovesGuard,
                        ..
                    }
                    | Dependency::EveryWrite => None,
                });
                SavedEntry {
                    id,
                    kind: entry.kind,
                    action,
                    name: entry.name.clone(),
                    origin: entry.origin.as_ref().map(|o| SavedOrigin {
                        file: o.file.display().to_string(),
                        line: o.line,
                        column: o.column,
                    }),
                    uuid,
                    pinned_uuid: manifest.and_then(|m| m.uuid),
                    after,
                    key_source: entry.key_source.as_ref().map(ToString::to_string),
                    private_key: key.filter(|_| entry.key_source.is_some()),
                    changes: changes.to_vec(),
                    fields: write.map(|w| SavedFields::of(&w.object)),
                    digests: if entry.kind == Kind::Guard {
                        SavedDigests {
                            live: guard_live_digest(entry),
                            desired: Some(guard_desired_digest(entry)),
                            key: None,
                        }
                    } else {
                        SavedDigests {
                            live: uuid
                                .and_then(|u| live_by_uuid.get(&u))
                                .map(|l| live_digest(l, capabilities)),
                            desired: manifest.map(desired_digest),
                            key: manifest.map(|m| key_digest(&salt, id, &m.private_key)),
                        }
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
            // Only a rename frees a name: `after` names another entry's
            // update; a guard waits for its stage's create.
            let waited_for = match entry.kind {
                Kind::CaptchaStage => SavedAction::Update,
                Kind::Guard => SavedAction::Create,
            };
            if let Some(after) = entry.after
                && (after == position
                    || self.entries.get(after).map(|a| a.action) != Some(waited_for))
            {
                return Err(at("`after` names no other entry's update"));
            }
            let d = &entry.digests;
            let needs = match entry.action {
                // A guard has no key; its digests are its own.
                SavedAction::Create | SavedAction::Update if entry.kind == Kind::Guard => {
                    entry.fields.is_some()
                        && entry.key_source.is_none()
                        && d.desired.is_some()
                        && d.key.is_none()
                        && (entry.uuid.is_some() == (entry.action == SavedAction::Update))
                        && (entry.uuid.is_some() == d.live.is_some())
                }
                SavedAction::InSync if entry.kind == Kind::Guard => {
                    entry.uuid.is_some()
                        && entry.fields.is_none()
                        && d.live.is_some()
                        && d.desired.is_some()
                        && d.key.is_none()
                }
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
                    entry.uuid.is_some()
                        && entry.fields.is_none()
                        && entry.after.is_none()
                        && d.live.is_some()
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

    /// Whether applying would write anything.
    #[cfg(test)]
    pub(crate) fn has_changes(&self) -> bool {
        self.entries.iter().any(|e| e.action.writes())
    }

    /// How the fresh plan prunes: as `--prune` with the stage deletes this
    /// file holds as the limit (the reviewer saw exactly these), or not at
    /// all. A guard's unbind is no prune.
    pub(crate) fn prune_settings(&self) -> super::PruneSettings {
        let deletes = self
            .entries
            .iter()
            .filter(|e| e.action == SavedAction::Delete && e.kind == Kind::CaptchaStage)
            .count();
        super::PruneSettings {
            enabled: deletes > 0,
            max_deletes: (deletes > 0).then_some(deletes),
            from_plan_file: true,
        }
    }
}

/// Whether `saved` may be applied now: the file is fresh, for this server,
/// and every entry is what the manifests plan now ([`Fresh::plan`]), made
/// from the same live objects, manifests and keys. See the module docs.
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

    // Each saved entry's fresh entry: a manifest entry's by its manifest (pin,
    // else name), a delete's by its uuid.
    let mut fresh_of: Vec<Option<EntryId>> = Vec::with_capacity(saved.entries.len());
    let mut paired: BTreeSet<EntryId> = BTreeSet::new();
    for entry in &saved.entries {
        let found = match entry.action {
            // A guard: the fresh entry of the same guard (its name says
            // stage and target), declared or removed with its pruned stage.
            _ if entry.kind == Kind::Guard => fresh
                .plan
                .entries
                .iter()
                .find(|e| e.kind == Kind::Guard && e.name == entry.name)
                .map(|e| e.id),
            SavedAction::Delete => fresh
                .plan
                .prune_entries()
                .find(|e| e.uuid() == entry.uuid)
                .map(|e| e.id),
            _ => entry
                .pinned_uuid
                .and_then(|u| desired_by_pin.get(&u))
                .or_else(|| desired_by_name.get(entry.name.as_str()))
                .map(|&i| EntryId(i)),
        };
        if let Some(id) = found
            && !paired.insert(id)
        {
            return Err(Refusal::Corrupt(format!(
                "entry {} ({:?}) is the second entry of one stage",
                entry.id, entry.name
            )));
        }
        fresh_of.push(found);
    }

    let mut verified = Verified {
        entries: Vec::new(),
        left_alone: Vec::new(),
        unplanned: Vec::new(),
    };
    let mut stale = Vec::new();
    let mut forged = Vec::new();
    for (entry, fresh_id) in saved.entries.iter().zip(&fresh_of) {
        let report = |changes| StageReport {
            entry: entry.id,
            name: entry.name.clone(),
            origin: entry.origin.as_ref().map(origin_text),
            changes,
        };
        let mut changes = Vec::new();

        if entry.kind == Kind::Guard {
            match fresh_id.and_then(|id| fresh.plan.entry(id)) {
                None => changes.push(Change::ManifestChanged {
                    detail: Some(
                        "no manifest declares this guard any more, nor is its stage pruned".into(),
                    ),
                }),
                Some(now) => {
                    if entry.digests.live.is_some() && entry.digests.live != guard_live_digest(now)
                    {
                        changes.push(Change::LiveEdited);
                    }
                    if entry.digests.desired.as_deref() != Some(&guard_desired_digest(now)) {
                        changes.push(Change::ManifestChanged { detail: None });
                    }
                }
            }
        } else if let Some(uuid) = entry.uuid {
            match live_by_uuid.get(&uuid) {
                None => changes.push(Change::StageGone),
                Some(live) => {
                    if entry.digests.live.as_deref() != Some(&live_digest(live, capabilities)) {
                        changes.push(Change::LiveEdited);
                    }
                }
            }
        }
        let manifest = match entry.action {
            _ if entry.kind == Kind::Guard => None,
            SavedAction::Delete => None,
            _ => fresh_id.map(|id| &fresh.desired[id.0]),
        };
        if let Some(desired_digest_then) = entry
            .digests
            .desired
            .as_ref()
            .filter(|_| entry.kind != Kind::Guard)
        {
            match manifest {
                None => changes.push(Change::ManifestChanged {
                    detail: Some("no manifest declares this stage any more".into()),
                }),
                Some(manifest) => {
                    if desired_digest(manifest) != *desired_digest_then {
                        changes.push(Change::ManifestChanged { detail: None });
                    }
                    if entry.digests.key.as_deref()
                        != Some(&key_digest(&salt, entry.id, &manifest.private_key))
                    {
                        changes.push(Change::KeyChanged);
                    }
                }
            }
        }
        let fresh_entry = fresh_id.and_then(|id| fresh.plan.entry(id));
        if changes.is_empty()
            && let Some(fresh_entry) = fresh_entry
        {
            match compare(entry, fresh_entry, &fresh_of, fresh.plan) {
                Ok(()) => {}
                Err(Comparison::Changed(change)) => changes.push(change),
                Err(Comparison::Forged(message)) => {
                    forged.push(report(vec![Change::Forged { message }]));
                    continue;
                }
                Err(Comparison::Corrupt(message)) => return Err(Refusal::Corrupt(message)),
            }
        } else if changes.is_empty() && entry.action == SavedAction::Delete {
            changes.push(Change::NotDeleted {
                reason: "it is not a managed stage whose manifest is gone (not in the inventory, or a manifest declares it)".into(),
            });
        }

        if changes.is_empty() {
            if let Some(id) = *fresh_id {
                let acts = entry.action.writes()
                    && fresh_entry.is_some_and(|e| e.action.target().is_some());
                verified.entries.push((id, acts));
            }
            continue;
        }
        if entry.action.writes() {
            stale.push(report(changes));
        } else {
            if let Some(id) = *fresh_id {
                verified.entries.push((id, false));
            }
            verified.left_alone.push(report(changes));
        }
    }
    if !stale.is_empty() {
        return Err(Refusal::Stale(stale));
    }
    if !forged.is_empty() {
        return Err(Refusal::NotFromManifests(forged));
    }

    let planned: BTreeSet<EntryId> = fresh_of.iter().flatten().copied().collect();
    verified.unplanned = fresh
        .plan
        .manifest_entries()
        .filter(|e| !planned.contains(&e.id))
        .map(|e| e.name.clone())
        .collect();
    Ok(verified)
}

/// Why a saved entry that nothing changed for is not what the fresh plan says.
enum Comparison {
    /// Something changed that the digests do not cover (a name taken, a
    /// stage in use): a stale plan.
    Changed(Change),
    /// The file says something the manifests never planned.
    Forged(String),
    /// The entry writes something its manifest does not say.
    Corrupt(String),
}

/// Whether the saved `entry` is what the manifests plan now (`fresh_entry`):
/// the same action on the same object, the same fields, waiting for the same
/// entry. Only for entries whose live object, manifest and key are as planned.
fn compare(
    entry: &SavedEntry,
    fresh_entry: &Entry,
    fresh_of: &[Option<EntryId>],
    plan: &Plan,
) -> Result<(), Comparison> {
    let what = |uuid: Option<Uuid>| match uuid {
        Some(uuid) => format!("captcha stage {uuid}"),
        None => "a new stage".to_owned(),
    };
    let targets = |uuid: Option<Uuid>| {
        Comparison::Forged(format!(
            "the file {} {}, but its manifest means {} now",
            match entry.action {
                SavedAction::Create => "creates",
                SavedAction::Update => "writes",
                SavedAction::InSync | SavedAction::Delete => "keeps",
            },
            what(entry.uuid),
            what(uuid),
        ))
    };
    match (&entry.action, &fresh_entry.action) {
        (SavedAction::Delete, Action::Delete { held: None, .. }) => {
            // A pruned stage's guards removed first: the file must hold each
            // one the manifests plan now (one bound since would otherwise
            // keep the stage while the others go).
            return match plan
                .removed_with(fresh_entry)
                .find(|guard| !fresh_of.contains(&Some(guard.id)))
            {
                Some(guard) => Err(Comparison::Changed(Change::NotDeleted {
                    reason: format!(
                        "its guard {} is to be removed with it now, which the plan did not say",
                        guard.name
                    ),
                })),
                None => Ok(()),
            };
        }
        (
            SavedAction::Delete,
            Action::Delete {
                held: Some(held), ..
            },
        ) => {
            let reason = match held {
                Held::InUse { users } => format!("in use now: {}", users.join(", ")),
                Held::Guard { reason } => reason.clone(),
                Held::NotPruned => "--prune is not in force".into(),
            };
            return Err(Comparison::Changed(Change::NotDeleted { reason }));
        }
        // The name the entry takes is held now (by another captcha stage, or
        // one of another type): what a plan would say.
        (SavedAction::Create | SavedAction::Update, Action::Error { message, .. }) => {
            return Err(Comparison::Changed(Change::NameTaken {
                message: message.clone(),
            }));
        }
        (SavedAction::Create, Action::Update { uuid, .. } | Action::InSync { uuid }) => {
            return Err(Comparison::Changed(Change::NameTaken {
                message: format!(
                    "name {:?} is already used by captcha stage {uuid}",
                    entry.name
                ),
            }));
        }
        // In sync when planned, and not any more (a manifest added since
        // declares the same name): left alone, as any change since.
        (_, Action::Error { message, .. }) => {
            return Err(Comparison::Changed(Change::ManifestChanged {
                detail: Some(format!("the manifests cannot plan it now: {message}")),
            }));
        }
        (SavedAction::Create, Action::Create { .. }) => {}
        (
            SavedAction::Update | SavedAction::InSync,
            Action::Update { uuid, .. } | Action::InSync { uuid },
        ) if Some(*uuid) == entry.uuid => {}
        (_, action) => {
            let uuid = match action {
                Action::Update { uuid, .. } | Action::InSync { uuid } => Some(*uuid),
                _ => None,
            };
            return Err(targets(uuid));
        }
    }
    // Saved in sync: the fresh plan may find its key unknown (a plan made
    // without the state file), never a field to change.
    if entry.action == SavedAction::InSync {
        if let Action::Update { changes, .. } = &fresh_entry.action
            && !changes.is_empty()
        {
            let fields: Vec<&str> = changes.iter().map(|c| c.field).collect();
            return Err(Comparison::Forged(format!(
                "saved as in sync, but its manifest asks for a change ({})",
                fields.join(", ")
            )));
        }
        return Ok(());
    }
    if let (Some(fields), Some(write)) = (&entry.fields, fresh_entry.action.write())
        && !fields.same_as(&write.object)
    {
        // The manifest is as planned but the file would write something
        // else: a made-up file with a recomputed digest.
        return Err(Comparison::Corrupt(format!(
            "entry {} ({:?}) would write fields its manifest does not say",
            entry.id, entry.name
        )));
    }
    if entry
        .fields
        .as_ref()
        .and_then(SavedFields::name)
        .is_some_and(|name| name != entry.name)
    {
        return Err(Comparison::Corrupt(format!(
            "entry {} ({:?}) is named otherwise than the stage it writes",
            entry.id, entry.name
        )));
    }
    let saved_after = entry.after.and_then(|a| fresh_of.get(a).copied().flatten());
    let fresh_after = fresh_entry.after.iter().find_map(|d| match d {
        Dependency::Entry {
            on,
            why: Why::FreesName | Why::CreatesStage,
        } => Some(*on),
        Dependency::Entry {
            why: Why::RemovesGuard,
            ..
        }
        | Dependency::EveryWrite => None,
    });
    if saved_after != fresh_after {
        let name = |id: Option<EntryId>| {
            id.and_then(|id| plan.entry(id))
                .map_or("nothing".to_owned(), |e| format!("{:?}", e.name))
        };
        return Err(Comparison::Forged(format!(
            "the file makes it wait for {}, the manifests for {}",
            name(saved_after),
            name(fresh_after)
        )));
    }
    Ok(())
}

/// The plan to execute for a file that passed [`check`]: the fresh plan's
/// entries the file lists, in the file's order, renumbered; those the file
/// does not make (saved in sync, in sync now) shown as in sync, acting on
/// nothing.
pub(crate) fn to_plan(fresh: &Plan, verified: &Verified) -> Plan {
    // What the file lists, as it is to be shown: an entry it does not make
    // acts on nothing (in sync, when it has a live stage; left out if not).
    let mut kept: Vec<Entry> = Vec::with_capacity(verified.entries.len());
    let mut old_ids = Vec::with_capacity(verified.entries.len());
    for (id, acts) in &verified.entries {
        let Some(entry) = fresh.entry(*id) else {
            continue;
        };
        let mut entry = entry.clone();
        if !acts && entry.action.target().is_some() || matches!(entry.action, Action::Error { .. })
        {
            match (&entry.action, entry.uuid()) {
                (Action::Delete { .. }, _) | (_, None) => continue,
                (_, Some(uuid)) => entry.action = Action::InSync { uuid },
            }
        }
        old_ids.push(*id);
        kept.push(entry);
    }
    let renumbered: HashMap<EntryId, EntryId> = old_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, EntryId(i)))
        .collect();
    for (i, entry) in kept.iter_mut().enumerate() {
        entry.id = EntryId(i);
        entry.after = entry
            .after
            .iter()
            .map(|d| match d {
                Dependency::Entry { on, why } => Dependency::Entry {
                    // One the file does not list: waited for, never made.
                    on: renumbered.get(on).copied().unwrap_or(EntryId(usize::MAX)),
                    why: why.clone(),
                },
                Dependency::EveryWrite => Dependency::EveryWrite,
            })
            .collect();
    }
    Plan {
        entries: kept,
        unmanaged: fresh.unmanaged.clone(),
        capabilities: fresh.capabilities,
        key_checks: BTreeMap::new(),
        changed_by: BTreeMap::new(),
        changed_by_unknown: None,
        unchanged_since_written: BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests;
