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

use crate::text::escape;

/// How many characters of a body, or of one of authentik's messages, an error
/// quotes: enough for any message authentik writes, short enough to read.
pub(crate) const EXCERPT_CHARS: usize = 300;

/// The largest answer read from authentik, in bytes. A page of 100 captcha
/// stages is about 50 KB and a page of `stages/all/` with long flow lists a few
/// times that, so 8 MiB is over a hundred times what a real answer needs; a
/// body that goes on (an endless stream, a proxy's dump) is cut off here, which
/// keeps memory bounded whatever the server sends.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

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

    /// The answer went on past [`MAX_BODY_BYTES`]: not something authentik
    /// sends (an endless stream, a proxy's dump, a runaway error message).
    #[error(
        "the answer from {url} (HTTP {status}) is larger than {}, the most stagesync reads of one answer (a page of 100 stages is about 50 KB): a proxy or the server is sending something else; it starts with: {excerpt}",
        Bytes(*limit)
    )]
    BodyTooLarge {
        url: String,
        status: u16,
        limit: usize,
        excerpt: String,
    },

    /// A list changed between its pages every time it was read.
    #[error(
        "the list at {route} changed while it was read, {reads} times in a row (stages being created or deleted meanwhile?): try again"
    )]
    ListKeptChanging { route: &'static str, reads: u32 },

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
                | ApiError::ListKeptChanging { .. }
        )
    }

    /// A configuration mistake found before anything was contacted.
    pub(crate) fn is_config(&self) -> bool {
        matches!(
            self,
            ApiError::BadUrl { .. }
                | ApiError::HttpNotAllowed { .. }
                | ApiError::CaFile { .. }
                | ApiError::ClientSetup { .. }
        )
    }
}

/// A short, escaped, single-line quote of a whole response body. An HTML page
/// (a proxy's error page, a login form) is quoted by its `<title>` only, never
/// as markup.
pub(crate) fn excerpt(body: &[u8]) -> String {
    quote_body(body, true)
}

/// [`excerpt`] of the first bytes of a body that was not read to its end.
pub(crate) fn excerpt_of_start(start: &[u8]) -> String {
    quote_body(start, false)
}

fn quote_body(body: &[u8], complete: bool) -> String {
    let text = String::from_utf8_lossy(body);
    if looks_like_markup(&text) {
        return match html_title(&text) {
            Some(title) if !title.trim().is_empty() => format!("title \"{}\"", cut(&title)),
            _ => "(an HTML page without a title)".to_owned(),
        };
    }
    if text.trim().is_empty() {
        return "(empty body)".to_owned();
    }
    match (shorten(&text), complete) {
        ((shown, Some(more)), true) => format!("{shown}…({more} bytes more)"),
        ((shown, _), false) => format!("{shown}…"),
        ((shown, None), true) => shown,
    }
}

/// `text` on one line, runs of white space as one space, cut after
/// [`EXCERPT_CHARS`] characters with `…(N bytes more)`, control characters
/// escaped. For any text from authentik that reaches a message.
pub(crate) fn cut(text: &str) -> String {
    match shorten(text) {
        (shown, Some(more)) => format!("{shown}…({more} bytes more)"),
        (shown, None) => shown,
    }
}

/// The first [`EXCERPT_CHARS`] characters of `text`, white space collapsed and
/// control characters escaped, and how many bytes of `text` they leave out.
fn shorten(text: &str) -> (String, Option<usize>) {
    let mut out = String::new();
    let mut chars = 0;
    let mut rest_at = None;
    for (at, word) in words(text) {
        if chars > 0 {
            if chars + 1 > EXCERPT_CHARS {
                rest_at = Some(at);
                break;
            }
            out.push(' ');
            chars += 1;
        }
        let fits = EXCERPT_CHARS - chars;
        match word.char_indices().nth(fits) {
            Some((split, _)) => {
                out.push_str(&word[..split]);
                rest_at = Some(at + split);
                break;
            }
            None => {
                out.push_str(word);
                chars += word.chars().count();
            }
        }
    }
    let shown = escape(out.trim_end()).into_owned();
    (shown, rest_at.map(|at| text.len() - at))
}

/// The words of `text` with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

/// Markup rather than text: the body opens with a tag (`<!DOCTYPE html>`,
/// `<html>`, `<h1>`...).
fn looks_like_markup(text: &str) -> bool {
    text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .starts_with('<')
}

/// The text of the first `<title>` element, its common entities decoded.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let raw = &html[start..end];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&amp;", "&"),
    )
}

/// A byte count in the unit it is written in (`8 MiB`, `300 KiB`, `12 bytes`).
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: usize = 1024;
        const MIB: usize = 1024 * KIB;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
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
            f.write_str(&cut(detail))?;
            first = false;
        }
        for (field, messages) in self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{}: {}", cut(field), cut(&messages.join(" ")))?;
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
        let long = format!("error:\n{}\u{1b}[31m", "x".repeat(500));
        let e = excerpt(long.as_bytes());
        let (shown, more) = e.split_once('…').expect("cut");
        assert_eq!(shown.chars().count(), EXCERPT_CHARS);
        assert!(shown.starts_with("error: xxx"), "{e}");
        // 512 bytes of text; the first 300 (a newline shown as a space) are shown.
        assert_eq!(more, "(212 bytes more)");
        assert!(!e.contains('\n') && !e.contains('\u{1b}'));
        assert_eq!(excerpt(b"  "), "(empty body)");
        assert_eq!(excerpt(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
        assert_eq!(excerpt("short \u{1b}[31m".as_bytes()), "short \\u{1b}[31m");
    }

    #[test]
    fn cut_counts_characters_not_bytes_and_keeps_short_text_whole() {
        let text = "é".repeat(EXCERPT_CHARS + 4);
        assert_eq!(
            cut(&text),
            format!("{}…(8 bytes more)", "é".repeat(EXCERPT_CHARS))
        );
        assert_eq!(cut("  a \n\t b  "), "a b");
        let words = "word ".repeat(100);
        let e = cut(&words);
        assert!(
            e.ends_with("bytes more)") && e.starts_with("word word"),
            "{e}"
        );
    }

    #[test]
    fn an_html_page_is_quoted_by_its_title_or_not_at_all() {
        let page = b"\n<!DOCTYPE html>\n<html><head><TITLE>\n502 Bad &amp; Gateway\n</TITLE></head><body><script>x</script></body></html>";
        assert_eq!(excerpt(page), "title \"502 Bad & Gateway\"");
        assert_eq!(
            excerpt(b"<html><h1>403 Forbidden</h1></html>"),
            "(an HTML page without a title)"
        );
        assert_eq!(
            excerpt(b"<html><title>\x1b[2J&lt;b&gt;</title>"),
            "title \"\\u{1b}[2J<b>\""
        );
        assert_eq!(
            excerpt_of_start(b"<html><head><title>t</title>"),
            "title \"t\""
        );
        assert_eq!(excerpt_of_start(b"{\"detail\": \"xx"), "{\"detail\": \"xx…");
        let long_start = format!("[{}", "1,".repeat(1_000));
        let e = excerpt_of_start(long_start.as_bytes());
        assert!(e.ends_with(",1…") && !e.contains("more"), "{e}");
    }

    #[test]
    fn validation_messages_are_cut() {
        let e = ApiError::Validation {
            fields: vec![("name".into(), vec!["y".repeat(10_000)])],
            detail: Some("d".repeat(50_000)),
        };
        let text = e.to_string();
        assert!(text.len() < 1_000, "{}", text.len());
        assert!(text.contains("…(49700 bytes more); name: yyy"), "{text}");
        assert!(text.ends_with("…(9700 bytes more)"), "{text}");
    }

    #[test]
    fn a_too_large_answer_names_the_limit() {
        let e = ApiError::BodyTooLarge {
            url: "https://a.example".into(),
            status: 200,
            limit: MAX_BODY_BYTES,
            excerpt: excerpt_of_start(b"[1,2"),
        };
        assert!(e.to_string().contains("larger than 8 MiB"), "{e}");
        assert_eq!(Bytes(300 * 1024).to_string(), "300 KiB");
        assert_eq!(Bytes(12).to_string(), "12 bytes");
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
