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
//!
//! Adding a kind is a recipe in `CONTRIBUTING.md` ("Adding a kind"): a
//! variant of [`Kind`] and a folder beside [`captcha`]; the compiler then
//! names every `match` on [`Kind`] that must learn it.

pub mod captcha;
pub mod field;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every kind of object stagesync manages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// authentik's Captcha Stage (`/stages/captcha/`).
    #[default]
    CaptchaStage,
}

impl Kind {
    /// The kind in the user's words, for messages: `captcha stage`.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::CaptchaStage => "captcha stage",
        }
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
