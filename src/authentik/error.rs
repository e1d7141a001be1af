//! Everything that can go wrong talking to authentik, in the user's words.
//!
//! Each variant says what the user should think about: a 403 is about the token,
//! an HTML 404 is about the URL, a 400 lists every field authentik complained
//! about. Messages never contain the token or a private key: the token is only
//! in a sensitive header, and bodies are only quoted from responses, which never
//! carry the write-only `private_key`.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::output::escape;

/// How many characters of an unexpected body an error quotes.
pub const EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The URL given with `--url` / `AUTHENTIK_URL` cannot be used.
    #[error("invalid authentik URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    /// Plain `http://` to a host that is not loopback, without `--allow-http`.
    #[error(
        "refusing to send the API token over plain http to {host}: use https://, or pass --allow-http if the network is trusted (http is allowed without it only for loopback hosts)"
    )]
    HttpNotAllowed { host: String },

    /// `--ca-file` cannot be read or holds no usable certificate.
    #[error("cannot use the CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },

    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the HTTP client: {reason}")]
    ClientSetup { reason: String },

    /// A value that must never be sent (NaN or infinity in a threshold).
    #[error("refusing to send {field} = {value}: authentik would store it as null")]
    InvalidValue { field: &'static str, value: String },

    /// 403: authentik has no 401; a missing, unknown or expired token and a token
    /// without permission all end here.
    #[error(
        "authentik refused the request (HTTP 403): the API token is rejected or lacks permission (authentik says: {detail})"
    )]
    Forbidden { detail: String },

    /// A 403 that is not authentik's JSON: most likely a proxy or firewall in
    /// front of authentik, possibly an unusual authentik error page.
    #[error(
        "the request was refused (HTTP 403) with a page that is not authentik's JSON: a proxy or firewall in front of authentik may block it, or the API token is rejected ({excerpt})"
    )]
    ForbiddenPage { excerpt: String },

    /// An HTML page where JSON was expected (a 404 for an unknown path, or a
    /// 200 from a login page or another web server): the URL does not lead to
    /// an authentik API.
    #[error(
        "no authentik API at {url} (wrong URL?): HTTP {status} with an HTML page instead of JSON: {excerpt}"
    )]
    NotAnApi {
        url: String,
        status: u16,
        excerpt: String,
    },

    /// A JSON 404 on a stage's uuid.
    #[error("captcha stage {uuid} does not exist in authentik (HTTP 404)")]
    StageNotFound { uuid: Uuid },

    /// 400: every field and its messages, as authentik listed them.
    #[error("authentik rejected the stage (HTTP 400): {}", ValidationList(fields, detail.as_deref()))]
    Validation {
        fields: Vec<(String, Vec<String>)>,
        detail: Option<String>,
    },

    /// Nothing listens at the address, or the network refused.
    #[error("cannot connect to {url}: connection refused or unreachable ({reason})")]
    Connect { url: String, reason: String },

    /// The host name does not resolve.
    #[error("cannot resolve the host of {url} (DNS lookup failed: {reason})")]
    Dns { url: String, reason: String },

    /// The TLS handshake failed (unknown CA, wrong host name, expired
    /// certificate, or a port that does not speak TLS at all); `hint` says
    /// what to try.
    #[error("TLS handshake with {url} failed: {reason} ({hint})")]
    Tls {
        url: String,
        reason: String,
        hint: &'static str,
    },

    /// No answer in time.
    #[error("authentik at {url} did not answer in time (timeout: {reason})")]
    Timeout { url: String, reason: String },

    /// The connection broke mid-exchange (reset, truncated body).
    #[error("the connection to {url} broke during the request: {reason}")]
    Transport { url: String, reason: String },

    /// A status or body the client does not expect.
    #[error("unexpected response from authentik (HTTP {status}): {excerpt}")]
    UnexpectedResponse { status: u16, excerpt: String },

    /// A transient server failure that outlasted every retry.
    #[error("authentik failed with HTTP {status}{}: {excerpt}", AfterAttempts(*attempts))]
    Server {
        status: u16,
        attempts: u32,
        excerpt: String,
    },
}

impl ApiError {
    /// Whether trying again later may succeed (network trouble, an overloaded or
    /// restarting server). Configuration, permission and validation errors are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Connect { .. }
                | ApiError::Dns { .. }
                | ApiError::Timeout { .. }
                | ApiError::Transport { .. }
                | ApiError::Server { .. }
        )
    }

    /// A configuration mistake found before anything was contacted.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ApiError::BadUrl { .. }
                | ApiError::HttpNotAllowed { .. }
                | ApiError::CaFile { .. }
                | ApiError::ClientSetup { .. }
        )
    }
}

/// A short, escaped, single-line quote of a response body; runs of white space
/// (an HTML page's indentation) become one space.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if trimmed.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut cut: String = trimmed.chars().take(EXCERPT_CHARS).collect();
    if trimmed.chars().count() > EXCERPT_CHARS {
        cut.push('…');
    }
    escape(&cut).into_owned()
}

/// ` after N attempts`, or nothing when there was only one.
struct AfterAttempts(u32);

impl fmt::Display for AfterAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 | 1 => Ok(()),
            n => write!(f, " after {n} attempts"),
        }
    }
}

struct ValidationList<'a>(&'a [(String, Vec<String>)], Option<&'a str>);

impl fmt::Display for ValidationList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if let Some(detail) = self.1 {
            write!(f, "{}", escape(detail))?;
            first = false;
        }
        for (field, messages) in self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{}: {}", escape(field), escape(&messages.join(" ")))?;
        }
        if first {
            f.write_str("(no details given)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_lists_every_field() {
        let e = ApiError::Validation {
            fields: vec![
                (
                    "name".into(),
                    vec!["stage with this name already exists.".into()],
                ),
                (
                    "public_key".into(),
                    vec!["This field may not be blank.".into()],
                ),
            ],
            detail: None,
        };
        assert_eq!(
            e.to_string(),
            "authentik rejected the stage (HTTP 400): name: stage with this name already exists.; public_key: This field may not be blank."
        );
    }

    #[test]
    fn excerpt_is_short_escaped_and_one_line() {
        let long = format!("<html>\n{}\u{1b}[31m", "x".repeat(500));
        let e = excerpt(long.as_bytes());
        assert!(e.chars().count() <= EXCERPT_CHARS + 10);
        assert!(!e.contains('\n'));
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b"  "), "(empty body)");
        assert_eq!(excerpt(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn transient_errors_are_network_and_server_trouble() {
        assert!(
            ApiError::Server {
                status: 503,
                attempts: 5,
                excerpt: String::new()
            }
            .is_transient()
        );
        assert!(!ApiError::Forbidden { detail: "x".into() }.is_transient());
        assert!(
            !ApiError::Validation {
                fields: vec![],
                detail: None
            }
            .is_transient()
        );
    }
}
