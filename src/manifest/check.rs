//! One parsed YAML document to a stage specification, collecting every problem.
//!
//! Pure: no file system, no environment. Secret references are only recorded
//! here ([`KeySpec`]); reading them is the caller's I/O.
//!
//! Traps:
//! - A literal `private_key` is a secret in git: it is accepted with a warning,
//!   and its value never appears in any message (nor does any other value that
//!   could be a key: messages name keys and types, not contents).
//! - `score_min_threshold > score_max_threshold` is checked against authentik's
//!   default for the omitted one, since that is what the stage will end up with.
//! - `js_url` and `api_url` decide where authentik sends the key and which
//!   script the login page runs: they are checked against the operator's
//!   [`crate::policy::ProviderHosts`], never against anything the manifest says.
//! - authentik trims `name` and `public_key`: surrounding whitespace is
//!   normalised away here, with a warning, so the plan never shows a change
//!   that every apply would make again.

use secrecy::SecretString;
use uuid::Uuid;

use super::yaml::{Kind, Node};
use super::{Diagnostic, Severity};
use crate::policy::Policy;
use crate::secret::KeySource;
use crate::stage::{Field, StageFields};

/// Every key a manifest may hold, in documentation order.
pub(crate) const KEYS: [&str; 11] = [
    "name",
    "public_key",
    "private_key",
    "uuid",
    "js_url",
    "api_url",
    "interactive",
    "score_min_threshold",
    "score_max_threshold",
    "error_on_invalid_score",
    "request_content_type",
];

/// The values `request_content_type` accepts.
pub(crate) const REQUEST_CONTENT_TYPES: [&str; 2] =
    ["application/x-www-form-urlencoded", "application/json"];

/// The longest stage name accepted, in characters. authentik stores names in a
/// unique index whose entries fail above about 2.7 KB (it then answers an empty
/// 405); 255 characters are at most 1,020 bytes of UTF-8, well below, and more
/// than any name a person reads in a list.
pub(crate) const MAX_NAME_CHARS: usize = 255;

/// Problems reported per file before the rest of the file is skipped.
pub(crate) const MAX_PROBLEMS_PER_FILE: usize = 100;

const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// A position in the manifest file (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    fn of(node: &Node) -> Pos {
        Pos {
            line: node.line,
            column: node.column,
        }
    }
}

/// Where the private key comes from, before it is read.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub(crate) source: KeySource,
    pub(crate) pos: Pos,
    /// Only for [`KeySource::Literal`].
    pub(crate) literal: Option<SecretString>,
}

/// A document that passed every check of its own.
#[derive(Debug)]
pub(crate) struct StageSpec {
    pub(crate) origin: Pos,
    pub(crate) uuid: Option<(Uuid, Pos)>,
    pub(crate) fields: StageFields,
    pub(crate) key: KeySpec,
}

/// Collects the problems of one document.
pub(crate) struct Problems<'a> {
    file: &'a std::path::Path,
    pub(crate) list: Vec<Diagnostic>,
    /// Every error found, including those past the cap that `list` dropped.
    errors: usize,
    /// Warnings past the cap, counted but not listed.
    pub(crate) warnings_not_shown: usize,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a std::path::Path) -> Self {
        Problems {
            file,
            list: Vec::new(),
            errors: 0,
            warnings_not_shown: 0,
        }
    }

    /// Enough errors for one file: more would only bury the first ones (and
    /// a hostile file could make millions). Only errors count: a file of many
    /// stages that each earn a warning must still be checked to its end.
    pub(crate) fn full(&self) -> bool {
        self.errors >= MAX_PROBLEMS_PER_FILE
    }

    fn push(&mut self, severity: Severity, pos: Pos, field: Option<&str>, message: String) {
        if severity == Severity::Error {
            if self.full() {
                return;
            }
            self.errors += 1;
        } else if self.list.len() >= MAX_PROBLEMS_PER_FILE {
            self.warnings_not_shown += 1;
            return;
        }
        self.list.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: Some(pos.line),
            column: Some(pos.column),
            field: field.map(str::to_owned),
            message,
        });
    }

    fn error(&mut self, pos: Pos, field: Option<&str>, message: String) {
        self.push(Severity::Error, pos, field, message);
    }
}

/// Checks one document. `None` when it has errors (all of them are in `problems`).
pub(crate) fn check_document(
    doc: &Node,
    policy: &Policy,
    problems: &mut Problems<'_>,
) -> Option<StageSpec> {
    let errors_before = problems.errors;
    check_tag(doc, None, problems);
    let Kind::Map(entries) = &doc.kind else {
        problems.error(
            Pos::of(doc),
            None,
            format!(
                "a manifest document must be a mapping of stage fields, found {}",
                doc.kind.type_name()
            ),
        );
        return None;
    };

    let mut seen: Vec<(&str, Pos, &Node)> = Vec::new();
    for (key, value) in entries {
        if problems.full() {
            return None;
        }
        let name = match (&key.kind, key.tag.as_deref()) {
            (Kind::Str(s), None) => s.as_str(),
            (Kind::Str(s), Some("tag:yaml.org,2002:str")) => s.as_str(),
            (Kind::Str(_), Some(tag)) => {
                problems.error(
                    Pos::of(key),
                    None,
                    format!("unknown tag `{tag}` on a key; keys must be plain strings"),
                );
                continue;
            }
            _ => {
                problems.error(
                    Pos::of(key),
                    None,
                    format!("keys must be plain strings, found {}", key.kind.type_name()),
                );
                continue;
            }
        };
        if let Some((_, first, _)) = seen.iter().find(|(k, _, _)| *k == name) {
            problems.error(
                Pos::of(key),
                Some(name),
                format!(
                    "duplicate key `{name}` (first given at line {}, column {})",
                    first.line, first.column
                ),
            );
            continue;
        }
        if !KEYS.contains(&name) {
            let name = &*shorten(name);
            let message = match closest_key(name) {
                Some(suggestion) => format!("unknown key `{name}`; did you mean `{suggestion}`?"),
                None => format!("unknown key `{name}`; known keys: {}", KEYS.join(", ")),
            };
            problems.error(Pos::of(key), Some(name), message);
            continue;
        }
        check_tag(value, Some(name), problems);
        seen.push((name, Pos::of(key), value));
    }

    let get = |key: &str| seen.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
    let mut fields = StageFields::with_defaults("", "");

    let name_node = required(get("name"), "name", doc, problems);
    if let Some(node) = name_node
        && let Some(s) = non_empty_string(node, "name", problems)
    {
        fields.name = identifier(s, node, "name", problems);
        if fields.name.chars().count() > MAX_NAME_CHARS {
            problems.error(
                Pos::of(node),
                Some("name"),
                format!(
                    "`name` is {} characters long; at most {MAX_NAME_CHARS} are accepted",
                    fields.name.chars().count()
                ),
            );
        }
    }
    if let Some(node) = required(get("public_key"), "public_key", doc, problems)
        && let Some(s) = non_empty_string(node, "public_key", problems)
    {
        fields.public_key = identifier(s, node, "public_key", problems);
    }
    let key = required(get("private_key"), "private_key", doc, problems)
        .and_then(|node| private_key(node, policy, problems));

    let uuid = get("uuid").and_then(|node| {
        let s = non_empty_string(node, "uuid", problems)?;
        let text = s.trim();
        let plain_form = text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        match Uuid::try_parse(text) {
            Ok(u) if plain_form => Some((u, Pos::of(node))),
            _ => {
                problems.error(
                    Pos::of(node),
                    Some("uuid"),
                    "`uuid` is not a valid UUID (expected the form 6ba7b810-9dad-11d1-80b4-00c04fd430c8)".into(),
                );
                None
            }
        }
    });
    for (field, slot) in [
        (Field::JsUrl, &mut fields.js_url),
        (Field::ApiUrl, &mut fields.api_url),
    ] {
        if let Some(node) = get(field.key())
            && let Some(s) = non_empty_string(node, field.key(), problems)
        {
            if let Err(why) = check_http_url(s.trim()) {
                problems.error(
                    Pos::of(node),
                    Some(field.key()),
                    format!("`{}` must be an absolute http(s) URL: {why}", field.key()),
                );
            } else if let Err(why) = policy.hosts.check_str(s.trim()) {
                problems.error(
                    Pos::of(node),
                    Some(field.key()),
                    format!("`{}` is refused: {why}", field.key()),
                );
            }
            *slot = s;
        }
    }
    for (field, slot) in [
        (Field::Interactive, &mut fields.interactive),
        (
            Field::ErrorOnInvalidScore,
            &mut fields.error_on_invalid_score,
        ),
    ] {
        if let Some(node) = get(field.key()) {
            match node.kind {
                Kind::Bool(b) => *slot = b,
                _ => type_error(node, field.key(), "a boolean (true or false)", problems),
            }
        }
    }
    let min = get("score_min_threshold").and_then(|n| number(n, "score_min_threshold", problems));
    let max = get("score_max_threshold").and_then(|n| number(n, "score_max_threshold", problems));
    if let Some((v, _)) = min {
        fields.score_min_threshold = v;
    }
    if let Some((v, _)) = max {
        fields.score_max_threshold = v;
    }
    if fields.score_min_threshold > fields.score_max_threshold {
        let (pos, field) = match (min, max) {
            (Some((_, p)), _) => (p, "score_min_threshold"),
            (None, Some((_, p))) => (p, "score_max_threshold"),
            (None, None) => (Pos::of(doc), "score_min_threshold"),
        };
        let shown = |value: f64, given: bool| {
            let value = crate::stage::Value::Num(value);
            if given {
                value.to_string()
            } else {
                format!("{value}, authentik's default")
            }
        };
        problems.error(
            pos,
            Some(field),
            format!(
                "score_min_threshold ({}) is greater than score_max_threshold ({})",
                shown(fields.score_min_threshold, min.is_some()),
                shown(fields.score_max_threshold, max.is_some()),
            ),
        );
    }
    if let Some(node) = get("request_content_type")
        && let Some(s) = non_empty_string(node, "request_content_type", problems)
    {
        if REQUEST_CONTENT_TYPES.contains(&s.as_str()) {
            fields.request_content_type = Some(s);
        } else {
            problems.error(
                Pos::of(node),
                Some("request_content_type"),
                format!(
                    "`request_content_type` must be one of {}",
                    REQUEST_CONTENT_TYPES.map(|t| format!("`{t}`")).join(", ")
                ),
            );
        }
    }

    if problems.errors > errors_before {
        return None;
    }
    Some(StageSpec {
        origin: Pos::of(doc),
        uuid,
        fields: fields.normalized(),
        key: key?,
    })
}

/// A key as shown in a message: at most 60 characters, so a hostile key
/// cannot flood the terminal.
fn shorten(key: &str) -> String {
    const MAX: usize = 60;
    match key.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &key[..i]),
        None => key.to_owned(),
    }
}

/// The known key closest to `unknown`, if it is close enough to be a typo.
pub(crate) fn closest_key(unknown: &str) -> Option<&'static str> {
    let lowered = unknown.to_lowercase().replace('-', "_");
    KEYS.iter()
        .map(|k| (*k, strsim::jaro_winkler(&lowered, k)))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// `Ok` for an absolute `http`/`https` URL with a host.
pub(crate) fn check_http_url(s: &str) -> Result<(), String> {
    // The URL parser repairs what it can (`http:/host`, `https:///path`), so
    // the text itself is checked first: what is sent is this text, unrepaired.
    if let Some(c) = s
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || crate::text::is_invisible(c))
    {
        return Err(format!("it contains the character U+{:04X}", c as u32));
    }
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    if rest.is_some_and(|r| r.is_empty() || r.starts_with('/')) {
        return Err("it has no host".into());
    }
    if rest.is_none() && (lower.starts_with("http:") || lower.starts_with("https:")) {
        return Err("it must start with http:// or https://".into());
    }
    let url = reqwest::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme is `{}`", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(())
}

fn check_tag(node: &Node, key: Option<&str>, problems: &mut Problems<'_>) {
    let Some(tag) = node.tag.as_deref() else {
        return;
    };
    // The plain types only: `!!binary`, `!!timestamp` and the like would be
    // read as text that is not what the author wrote.
    if let Some(core) = tag.strip_prefix(CORE_TAG_PREFIX)
        && matches!(
            core,
            "str" | "int" | "float" | "bool" | "null" | "map" | "seq"
        )
    {
        return;
    }
    if key == Some("private_key") && matches!(tag, "!Env" | "!File") {
        return;
    }
    let hint = if matches!(tag, "!Env" | "!File") {
        " (`!Env` and `!File` are only allowed on `private_key`)"
    } else {
        " (known tags: `!Env VAR` and `!File path`, on `private_key`)"
    };
    problems.error(Pos::of(node), key, format!("unknown tag `{tag}`{hint}"));
}

fn required<'n>(
    node: Option<&'n Node>,
    key: &str,
    doc: &Node,
    problems: &mut Problems<'_>,
) -> Option<&'n Node> {
    if node.is_none() {
        problems.error(
            Pos::of(doc),
            Some(key),
            format!("missing required key `{key}`"),
        );
    }
    node
}

fn type_error(node: &Node, key: &str, expected: &str, problems: &mut Problems<'_>) {
    problems.error(
        Pos::of(node),
        Some(key),
        format!(
            "`{key}` must be {expected}, found {}",
            node.kind.type_name()
        ),
    );
}

fn non_empty_string(node: &Node, key: &str, problems: &mut Problems<'_>) -> Option<String> {
    match &node.kind {
        Kind::Str(s) if s.trim().is_empty() => {
            problems.error(
                Pos::of(node),
                Some(key),
                format!("`{key}` must not be empty"),
            );
            None
        }
        Kind::Str(s) => Some(s.clone()),
        _ => {
            type_error(node, key, "a string", problems);
            None
        }
    }
}

/// A name or public key: no control characters (a NUL or an escape sequence
/// would reach authentik's pages and every terminal showing a plan), and
/// surrounding whitespace, which authentik trims, normalised away with a warning.
fn identifier(value: String, node: &Node, key: &str, problems: &mut Problems<'_>) -> String {
    if let Some(c) = value.trim().chars().find(|c| c.is_control()) {
        problems.error(
            Pos::of(node),
            Some(key),
            format!("`{key}` contains the control character U+{:04X}", c as u32),
        );
    }
    let trimmed = value.trim();
    if trimmed.len() == value.len() {
        return value;
    }
    problems.push(
        Severity::Warning,
        Pos::of(node),
        Some(key),
        format!(
            "`{key}` has leading or trailing whitespace, which authentik removes; `{}` is used",
            crate::text::escape(&shorten(trimmed))
        ),
    );
    trimmed.to_owned()
}

fn number(node: &Node, key: &str, problems: &mut Problems<'_>) -> Option<(f64, Pos)> {
    let value = match node.kind {
        Kind::Int(i) => i as f64,
        Kind::Float(f) => f,
        _ => {
            type_error(node, key, "a number", problems);
            return None;
        }
    };
    if !value.is_finite() {
        problems.error(
            Pos::of(node),
            Some(key),
            format!("`{key}` must be a finite number, found {value}"),
        );
        return None;
    }
    // Captcha providers score from 0 to 1: a threshold outside can never be
    // met (or always is), which is a typo rather than a policy.
    if !(0.0..=1.0).contains(&value) {
        problems.error(
            Pos::of(node),
            Some(key),
            format!("`{key}` must be between 0 and 1, found {value}"),
        );
        return None;
    }
    Some((value, Pos::of(node)))
}

fn private_key(node: &Node, policy: &Policy, problems: &mut Problems<'_>) -> Option<KeySpec> {
    const KEY: &str = "private_key";
    let pos = Pos::of(node);
    let tag = node.tag.as_deref();
    let Kind::Str(s) = &node.kind else {
        type_error(
            node,
            KEY,
            "`!Env VARIABLE`, `!File path` or a string",
            problems,
        );
        return None;
    };
    let value = s.trim();
    match tag {
        Some("!Env") => {
            if value.is_empty()
                || value.contains(['=', '\0'])
                || value.chars().any(char::is_whitespace)
            {
                problems.error(
                    pos,
                    Some(KEY),
                    "`!Env` needs an environment variable name, such as `!Env HCAPTCHA_SECRET`"
                        .into(),
                );
                return None;
            }
            // Here as well as before the variable is read, so the refusal is
            // reported even when another field of the document is wrong.
            if let Err(refused) = policy.secrets.check_env(value) {
                problems.error(pos, Some(KEY), refused.to_string());
                return None;
            }
            Some(KeySpec {
                source: KeySource::Env(value.to_owned()),
                pos,
                literal: None,
            })
        }
        Some("!File") => {
            if value.is_empty() || value.contains('\0') {
                problems.error(
                    pos,
                    Some(KEY),
                    "`!File` needs a path, such as `!File /run/secrets/hcaptcha`".into(),
                );
                return None;
            }
            Some(KeySpec {
                source: KeySource::File(value.into()),
                pos,
                literal: None,
            })
        }
        Some(t) if !t.starts_with(CORE_TAG_PREFIX) => None, // reported by check_tag
        _ if value.is_empty() => {
            problems.error(pos, Some(KEY), "`private_key` must not be empty".into());
            None
        }
        _ => {
            problems.push(
                Severity::Warning,
                pos,
                Some(KEY),
                "`private_key` is a literal value; secrets do not belong in git, use `!Env VARIABLE` or `!File path`".into(),
            );
            Some(KeySpec {
                source: KeySource::Literal,
                pos,
                literal: Some(SecretString::from(value.to_owned())),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_closest_key_and_nonsense_gets_none() {
        assert_eq!(closest_key("nmae"), Some("name"));
        assert_eq!(
            closest_key("score_min_treshold"),
            Some("score_min_threshold")
        );
        assert_eq!(closest_key("Public-Key"), Some("public_key"));
        assert_eq!(closest_key("favourite_colour"), None);
    }

    #[test]
    fn long_keys_are_shortened_in_messages() {
        assert_eq!(shorten("name"), "name");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(60)));
    }

    #[test]
    fn only_absolute_http_urls_with_a_host_pass() {
        assert!(check_http_url("https://js.hcaptcha.com/1/api.js").is_ok());
        assert!(check_http_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_http_url("/relative").is_err());
        assert!(check_http_url("ftp://x.example").is_err());
        assert!(check_http_url("file:///etc/passwd").is_err());
        assert!(check_http_url("https://").is_err());
        // What the URL parser would silently repair is refused as written.
        assert!(check_http_url("https:///path").is_err());
        assert!(check_http_url("http:/example.com").is_err());
        assert!(check_http_url("https://ex\u{200b}ample.com").is_err());
        assert!(check_http_url("https://example.com/a b").is_err());
        assert!(check_http_url("HTTPS://Example.com/x").is_ok());
    }
}
