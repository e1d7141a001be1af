//! The kinds of objects stagesync manages, each a table plus a few functions.
//!
//! A kind says, in one folder, how a manifest entry matches a live object
//! (identity), its fields with defaults and normalisation ([`field`]: one
//! table from which the manifest keys, the checks, the diff, the wire body and
//! the JSON schemas are derived), its wire format and endpoints, and what its
//! writes depend on. The pipeline (manifests, plan, apply, state, saved plans,
//! renderers, the daemon, export, the simulator) is written once and asks the
//! kind; it never spells out a kind's fields. The model is kube-rs's
//! `Resource`: each kind says only what is its own.
//!
//! - [`captcha`]: authentik's Captcha Stage, the first kind.
//! - [`guard`]: what a captcha stage guards (flow bindings, identification
//!   stages embedding it), declared inside the stage's manifest.
//!
//! Adding a kind is a recipe in `CONTRIBUTING.md` ("Adding a kind"): a
//! variant of [`Kind`] and a folder beside [`captcha`]; the compiler then
//! names every `match` on [`Kind`] that must learn it.

pub mod captcha;
pub mod field;
pub mod guard;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authentik::{ApiError, Client};
use crate::capabilities::{Capabilities, ServerVersion};
use crate::secret::PrivateKey;
use field::Value;

/// Every kind of object stagesync manages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// authentik's Captcha Stage (`/stages/captcha/`).
    #[default]
    CaptchaStage,
    /// What a captcha stage guards: a flow stage binding
    /// (`/flows/bindings/`) or an identification stage's embedded captcha.
    Guard,
}

impl Kind {
    /// Every kind, in the order plans and metrics list them.
    pub const ALL: [Kind; 2] = [Kind::CaptchaStage, Kind::Guard];

    /// The metric a pass counts this kind's objects in, by status, and its
    /// help text.
    pub(crate) fn counted_as(self) -> (&'static str, &'static str) {
        match self {
            Kind::CaptchaStage => (
                "stagesync_stages",
                "Managed stages after the last pass, by status",
            ),
            Kind::Guard => (
                "stagesync_guards",
                "Declared guards (flow bindings and identification stage embeddings of captcha stages) after the last pass, by status",
            ),
        }
    }

    /// Where authentik's event log files changes of this kind's objects.
    pub(crate) fn logged_as(self) -> crate::authentik::events::LoggedAs {
        match self {
            Kind::CaptchaStage => crate::authentik::events::LoggedAs {
                app: "authentik_stages_captcha",
                model_name: "captchastage",
            },
            // A guard's object is a flow stage binding, or (for an embedding)
            // an identification stage. One model per kind keeps attribution to
            // one query per drifted object: bindings, the common case, are
            // named and polled; a replaced embedding reads "changed by:
            // unknown" and is restored at the resync.
            Kind::Guard => crate::authentik::events::LoggedAs {
                app: "authentik_flows",
                model_name: "flowstagebinding",
            },
        }
    }

    /// The kind in the user's words, for messages: `captcha stage`.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::CaptchaStage => "captcha stage",
            Kind::Guard => "guard",
        }
    }

    /// Whether the inventory records objects of this kind. Captcha stages:
    /// what prune may delete. Guards: the bindings and embeddings stagesync
    /// made or kept, which prune removes with their stage (any other holds
    /// the stage back); while the stage has a manifest, its `guards` list
    /// says which to remove.
    pub(crate) fn inventoried(self) -> bool {
        match self {
            Kind::CaptchaStage | Kind::Guard => true,
        }
    }
}

/// What a write sends: a kind's fields, normalised and cut to what the
/// server knows. Serialised as the fields alone (a saved plan's `fields`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    CaptchaStage(captcha::StageFields),
    Guard(guard::GuardWrite),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::CaptchaStage(_) => Kind::CaptchaStage,
            Object::Guard(_) => Kind::Guard,
        }
    }

    /// The value of the field `key`.
    pub(crate) fn value(&self, key: &str) -> Value {
        match self {
            Object::CaptchaStage(fields) => fields.value(key),
            Object::Guard(write) => write.value(key),
        }
    }
}

/// What a write made, as authentik answered: the object's uuid and name, and
/// whether the answer confirms the secret that was sent (a create found by
/// name after a lost answer does not: someone else may have made it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub uuid: Uuid,
    pub name: String,
    pub(crate) secret_confirmed: bool,
}

impl Kind {
    /// The fields of this kind that only newer authentik versions know, with
    /// the first version that knows each, in table order.
    pub(crate) fn fields_since(self) -> Vec<(&'static str, ServerVersion)> {
        match self {
            Kind::CaptchaStage => captcha::FIELDS
                .iter()
                .filter_map(|f| Some((f.key, f.since?)))
                .collect(),
            // Every binding and identification-stage field is known since 2025.12.
            Kind::Guard => Vec::new(),
        }
    }

    /// The keys of the fields of this kind the server knows, in table order:
    /// what is compared, shown and sent.
    pub(crate) fn known_keys(self, capabilities: Capabilities) -> Vec<&'static str> {
        match self {
            Kind::CaptchaStage => captcha::StageFields::known_keys(capabilities),
            Kind::Guard => guard::SHOWN_KEYS.to_vec(),
        }
    }
}

/// `POST`s `object` (with its secret) to its kind's list.
pub(crate) async fn create(
    client: &Client,
    object: &Object,
    secret: Option<&PrivateKey>,
) -> Result<Written, ApiError> {
    match object {
        Object::CaptchaStage(fields) => captcha::api::write(client, None, fields, secret).await,
        Object::Guard(write) => guard::api::write(client, None, write).await,
    }
}

/// Writes `object` (with its secret) over the live object `uuid`.
pub(crate) async fn update(
    client: &Client,
    uuid: Uuid,
    object: &Object,
    secret: Option<&PrivateKey>,
) -> Result<Written, ApiError> {
    match object {
        Object::CaptchaStage(fields) => {
            captcha::api::write(client, Some(uuid), fields, secret).await
        }
        Object::Guard(write) => guard::api::write(client, Some(uuid), write).await,
    }
}

/// What uses the live object `uuid` of `kind` (an empty list: nothing).
pub(crate) async fn used_by(
    client: &Client,
    kind: Kind,
    uuid: Uuid,
) -> Result<Vec<UsedBy>, ApiError> {
    match kind {
        Kind::CaptchaStage => captcha::api::Stages::new(client).used_by(uuid).await,
        // A binding's users are the policies bound to it, which go with it:
        // a declared removal is not refused for them (and costs no call).
        Kind::Guard => Ok(Vec::new()),
    }
}

/// Deletes the live object `uuid` of `kind`.
pub(crate) async fn delete(client: &Client, kind: Kind, uuid: Uuid) -> Result<(), ApiError> {
    match kind {
        Kind::CaptchaStage => captcha::api::Stages::new(client).delete(uuid).await,
        Kind::Guard => guard::api::Guards::new(client).unbind(uuid).await,
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Where a desired object was declared: the file as the user would type it,
/// and the 1-based line and column of its YAML document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One thing that uses an object, as authentik's `used_by` lists it: a flow
/// (`model_name` `flow`, action `cascade_many`), a flow-stage binding
/// (`flowstagebinding`, `cascade`), an identification stage embedding a
/// captcha (`identificationstage`, `set_null`), or anything else.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct UsedBy {
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub model_name: String,
    /// Not always a uuid (authentik's primary keys vary by model).
    #[serde(default)]
    pub pk: String,
    #[serde(default)]
    pub name: String,
    /// What a delete does to it: `cascade`, `cascade_many`, `set_null`, ...
    #[serde(default)]
    pub action: String,
}
