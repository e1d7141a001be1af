//! Secrets as a type, not a string.
//!
//! A [`PrivateKey`] or [`Token`] is a [`secrecy::SecretString`]: its `Debug` prints
//! `[REDACTED]`, it has no `Display` and no `Serialize`, so it cannot reach a log
//! line, a plan or a JSON document by accident. The only way to read one is
//! `expose_secret()`, which appears where a key is put on the wire and where it is
//! fingerprinted, nowhere else.
//!
//! A manifest never holds the key itself, only a [`KeySource`] that says where to
//! read it (`!Env VAR`, `!File path`); a literal string is accepted with a warning.

use std::fmt;
use std::path::PathBuf;

pub use secrecy::{ExposeSecret, SecretString};

/// A captcha provider's secret key, as sent to authentik.
pub(crate) type PrivateKey = SecretString;
/// An authentik API token.
pub(crate) type Token = SecretString;

/// Where a manifest says its private key comes from. Safe to print: it names a
/// variable or a path, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `!Env VAR`: the value of an environment variable.
    Env(String),
    /// `!File path`: the trimmed content of a file (path as written, resolved
    /// relative to the manifest's directory when relative).
    File(PathBuf),
    /// A literal string in the manifest (discouraged: secrets do not belong in git).
    Literal,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(var) => write!(f, "!Env {var}"),
            KeySource::File(path) => write!(f, "!File {}", path.display()),
            KeySource::Literal => f.write_str("literal value"),
        }
    }
}
