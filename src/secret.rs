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
//!
//! A server can still repeat a secret it was sent (`{"detail": "auth was
//! Bearer ..."}`, a validation message quoting the key). [`Redactor`] holds
//! the values a client sent; every answer passes through it before anything
//! reads, parses or quotes it, so an echo never reaches a message or a log.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, MatchKind};

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

/// What replaces a secret found in a server's answer.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// The secret values a server must not get to repeat into stagesync's output
/// (see the module docs). Shared by the clones of a client; cheap to search.
///
/// Traps:
/// - Each value is searched as sent and as JSON and form encoding write it;
///   a server that encodes it another way (base64, `\u` escapes) is not
///   caught: this stops an echo, not a server bent on leaking.
/// - Values shorter than [`Redactor::SHORTEST`] are not searched for: a
///   one-letter test key would otherwise turn every answer to mush. No real
///   token or captcha key is that short.
#[derive(Default)]
pub(crate) struct Redactor {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    secrets: Vec<SecretString>,
    /// Built on first use after a change.
    matcher: Option<AhoCorasick>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").finish_non_exhaustive()
    }
}

impl Redactor {
    /// The shortest value searched for.
    pub(crate) const SHORTEST: usize = 8;

    /// A redactor for `secret` alone.
    pub(crate) fn of(secret: &SecretString) -> Redactor {
        let redactor = Redactor::default();
        redactor.add(secret);
        redactor
    }

    /// Adds `secret` (once; a short one is ignored).
    pub(crate) fn add(&self, secret: &SecretString) {
        let value = secret.expose_secret();
        if value.chars().count() < Self::SHORTEST {
            return;
        }
        let mut known = self.lock();
        if known.secrets.iter().any(|s| s.expose_secret() == value) {
            return;
        }
        known.secrets.push(secret.clone());
        known.matcher = None;
    }

    /// `bytes` with every known secret replaced by [`REDACTED`].
    pub(crate) fn redact<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut known = self.lock();
        if known.secrets.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let Known { secrets, matcher } = &mut *known;
        let matcher = matcher.get_or_insert_with(|| build(secrets));
        if !matcher.is_match(bytes) {
            return Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        matcher.replace_all_with_bytes(bytes, &mut out, |_, _, out| {
            out.extend_from_slice(REDACTED.as_bytes());
            true
        });
        Cow::Owned(out)
    }

    /// [`Self::redact`] of text.
    pub(crate) fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // A panic elsewhere while holding the lock leaves a list that is still
        // whole (a push or a cleared matcher): go on with it.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One matcher for every form of every secret: as sent, inside a JSON
/// string, form-encoded.
fn build(secrets: &[SecretString]) -> AhoCorasick {
    let mut patterns: Vec<String> = Vec::new();
    for secret in secrets {
        let raw = secret.expose_secret();
        let quoted = serde_json::to_string(raw).unwrap_or_default();
        let json = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or(&quoted)
            .to_owned();
        let form: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        for form in [raw.to_owned(), json, form] {
            if !patterns.contains(&form) {
                patterns.push(form);
            }
        }
    }
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .expect("patterns of bounded size build")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn every_echo_of_a_known_secret_is_replaced() {
        let r = Redactor::default();
        r.add(&secret("tok-en/123+\"quoted\""));
        r.add(&secret("second-key-99"));
        r.add(&secret("short"));
        r.add(&secret("second-key-99"));
        let body = r#"{"detail":"Bearer tok-en/123+\"quoted\" and tok-en/123+"quoted" or tok-en%2F123%2B%22quoted%22","k":["second-key-99 is not valid"],"short":1}"#;
        assert_eq!(
            r.redact_str(body),
            r#"{"detail":"Bearer [REDACTED] and [REDACTED] or [REDACTED]","k":["[REDACTED] is not valid"],"short":1}"#
        );
        assert!(matches!(r.redact(b"nothing here"), Cow::Borrowed(_)));
        assert_eq!(
            r.lock().secrets.len(),
            2,
            "short and repeated values are not added"
        );
        assert_eq!(format!("{r:?}"), "Redactor { .. }");
    }

    #[test]
    fn an_empty_redactor_changes_nothing() {
        let r = Redactor::default();
        assert_eq!(r.redact_str("anything at all"), "anything at all");
        let one = Redactor::of(&secret("abcdefgh"));
        assert_eq!(one.redact_str("xabcdefghx"), "x[REDACTED]x");
        assert_eq!(one.redact_str("abcdefg"), "abcdefg");
    }
}
