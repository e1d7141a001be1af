//! One parsed YAML document to a specification of a kind's object, checked
//! against the kind's [`ManifestSpec`], collecting every problem.
//!
//! Generic: the structure of a document (a mapping of plain keys, none
//! unknown or given twice, only known tags) and each field by its
//! [`FieldType`]. What a kind adds (its fields, its secret and pin keys, its
//! rules across fields) is data in its table; nothing here names a field.
//!
//! Pure: no file system, no environment. Secret references are only recorded
//! here ([`KeySpec`]); reading them is the caller's I/O.
//!
//! Traps:
//! - A literal secret is a secret in git: it is accepted with a warning, and
//!   its value never appears in any message (nor does any other value that
//!   could be a key: messages name keys and types, not contents).
//! - A rule across fields (`score_min_threshold <= score_max_threshold`) sees
//!   authentik's default for an omitted field, since that is what the object
//!   will end up with.
//! - [`FieldType::Url`] decides where authentik sends a key and which script a
//!   login page runs: it is checked against the operator's
//!   [`crate::policy::ProviderHosts`], never against anything the manifest says.
//! - authentik trims names and text: surrounding whitespace is normalised away
//!   here, with a warning, so the plan never shows a change that every apply
//!   would make again.

use secrecy::SecretString;
use uuid::Uuid;

use super::yaml::{Kind, Node};
use super::{Diagnostic, Severity};
use crate::kinds::field::{self, FieldSpec, FieldType, ManifestSpec, Value};
use crate::policy::Policy;
use crate::secret::KeySource;

/// The longest `!Env` variable name accepted, in characters, and the longest
/// `!File` path, in bytes (Linux's `PATH_MAX`). Real ones are far shorter; a
/// longer one is refused without being echoed, so a manifest cannot fill a
/// terminal or a log with one error.
pub(crate) const MAX_ENV_NAME_CHARS: usize = 255;
pub(crate) const MAX_FILE_PATH_BYTES: usize = 4096;

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
pub(crate) struct Spec<T> {
    pub(crate) origin: Pos,
    pub(crate) uuid: Option<(Uuid, Pos)>,
    pub(crate) fields: T,
    /// `None` for a kind without a secret.
    pub(crate) key: Option<KeySpec>,
    /// The value of the spec's list key, when the document gives it.
    pub(crate) list: Option<Node>,
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

    /// Errors found so far, those past the cap included.
    pub(crate) fn error_count(&self) -> usize {
        self.errors
    }

    /// An error at a line and column of the file.
    pub(crate) fn error_at(
        &mut self,
        line: usize,
        column: usize,
        field: Option<&str>,
        message: String,
    ) {
        self.error(Pos { line, column }, field, message);
    }

    fn error(&mut self, pos: Pos, field: Option<&str>, message: String) {
        self.push(Severity::Error, pos, field, message);
    }
}

/// Checks one document against a kind's [`ManifestSpec`]. `None` when it has
/// errors (all of them are in `problems`).
pub(crate) fn check_document<T: Default>(
    doc: &Node,
    spec: &ManifestSpec<T>,
    policy: &Policy,
    problems: &mut Problems<'_>,
) -> Option<Spec<T>> {
    let errors_before = problems.errors;
    let keys = spec.keys();
    let secret_key = spec.secret.map(|s| s.key);
    let seen = document_keys(doc, spec.what, &keys, secret_key, problems)?;
    let get = |key: &str| seen.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);

    let mut fields = field::defaults(spec.fields);
    let mut key = None;
    let mut uuid = None;
    // The fields whose value the manifest gave and that passed their check.
    let mut valid: Vec<&str> = Vec::new();
    for name in &keys {
        if Some(*name) == secret_key {
            key = required(get(name), name, doc, problems)
                .and_then(|node| secret(node, name, policy, problems));
        } else if Some(*name) == spec.pin.map(|p| p.key) {
            uuid = get(name).and_then(|node| pin(node, name, problems));
        } else if let Some(field) = spec.fields.iter().find(|f| f.key == *name) {
            let node = if field.required() {
                required(get(name), name, doc, problems)
            } else {
                get(name)
            };
            if let Some(value) = node.and_then(|node| field_value(node, field, policy, problems)) {
                field.set(&mut fields, value);
                valid.push(name);
            }
        }
    }
    let given = |key: &str| valid.contains(&key);
    for violation in (spec.rules)(&fields, &given) {
        let pos = violation.at.and_then(get).map_or(Pos::of(doc), Pos::of);
        problems.error(pos, Some(violation.field), violation.message);
    }

    if problems.errors > errors_before {
        return None;
    }
    field::normalise(spec.fields, &mut fields);
    if spec.secret.is_some() && key.is_none() {
        return None;
    }
    Some(Spec {
        origin: Pos::of(doc),
        uuid,
        fields,
        key,
        list: spec.list.and_then(|l| get(l.key)).cloned(),
    })
}

/// The keys of a document, each with its position and value: a mapping of
/// plain strings, each known and given once. Problems are reported (an
/// unknown key with the closest known one); `None` when it is not a mapping.
fn document_keys<'n>(
    doc: &'n Node,
    what: &str,
    keys: &[&'static str],
    secret_key: Option<&str>,
    problems: &mut Problems<'_>,
) -> Option<Vec<(&'static str, Pos, &'n Node)>> {
    check_tag(doc, None, secret_key, problems);
    let Kind::Map(entries) = &doc.kind else {
        problems.error(
            Pos::of(doc),
            None,
            format!("{what}, found {}", doc.kind.type_name()),
        );
        return None;
    };

    let mut seen: Vec<(&'static str, Pos, &Node)> = Vec::new();
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
        let Some(known) = keys.iter().find(|k| **k == name) else {
            let name = &*shorten(name);
            let message = match closest_key(name, keys) {
                Some(suggestion) => format!("unknown key `{name}`; did you mean `{suggestion}`?"),
                None => format!("unknown key `{name}`; known keys: {}", keys.join(", ")),
            };
            problems.error(Pos::of(key), Some(name), message);
            continue;
        };
        check_tag(value, Some(name), secret_key, problems);
        seen.push((known, Pos::of(key), value));
    }
    Some(seen)
}

/// A field's value, checked as its [`FieldType`] says.
fn field_value<T>(
    node: &Node,
    field: &FieldSpec<T>,
    policy: &Policy,
    problems: &mut Problems<'_>,
) -> Option<Value> {
    let key = field.key;
    match field.ty {
        FieldType::Name { max_chars } => {
            let s = non_empty_string(node, key, problems)?;
            let name = identifier(s, node, key, problems);
            let chars = name.chars().count();
            if chars > max_chars {
                problems.error(
                    Pos::of(node),
                    Some(key),
                    format!("`{key}` is {chars} characters long; at most {max_chars} are accepted"),
                );
            }
            Some(Value::Str(name))
        }
        FieldType::Text => {
            let s = non_empty_string(node, key, problems)?;
            Some(Value::Str(identifier(s, node, key, problems)))
        }
        FieldType::Url => {
            let s = non_empty_string(node, key, problems)?;
            if let Err(why) = check_http_url(s.trim()) {
                problems.error(
                    Pos::of(node),
                    Some(key),
                    format!("`{key}` must be an absolute http(s) URL: {why}"),
                );
            } else if let Err(why) = policy.hosts.check_str(s.trim()) {
                problems.error(
                    Pos::of(node),
                    Some(key),
                    format!("`{key}` is refused: {why}"),
                );
            }
            Some(Value::Str(s))
        }
        FieldType::Bool => match node.kind {
            Kind::Bool(b) => Some(Value::Bool(b)),
            _ => {
                type_error(node, key, field.ty.expected(), problems);
                None
            }
        },
        FieldType::Fraction => fraction(node, key, problems).map(Value::Num),
        FieldType::Integer => match node.kind {
            Kind::Int(n) if i32::try_from(n).is_ok() => Some(Value::Int(n as i64)),
            Kind::Int(_) => {
                problems.error(
                    Pos::of(node),
                    Some(key),
                    format!(
                        "`{key}` must be from {} to {} (authentik stores a 32-bit integer)",
                        i32::MIN,
                        i32::MAX
                    ),
                );
                None
            }
            _ => {
                type_error(node, key, field.ty.expected(), problems);
                None
            }
        },
        FieldType::Choice(choices) => {
            let s = non_empty_string(node, key, problems)?;
            if choices.contains(&s.as_str()) {
                Some(Value::Str(s))
            } else {
                problems.error(
                    Pos::of(node),
                    Some(key),
                    format!(
                        "`{key}` must be one of {}",
                        choices
                            .iter()
                            .map(|t| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        }
    }
}

/// A uuid pin: the plain hyphenated (or 32-digit) form only.
fn pin(node: &Node, key: &str, problems: &mut Problems<'_>) -> Option<(Uuid, Pos)> {
    let s = non_empty_string(node, key, problems)?;
    let text = s.trim();
    let plain_form = text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    match Uuid::try_parse(text) {
        Ok(u) if plain_form => Some((u, Pos::of(node))),
        _ => {
            problems.error(
                Pos::of(node),
                Some(key),
                format!(
                    "`{key}` is not a valid UUID (expected the form 6ba7b810-9dad-11d1-80b4-00c04fd430c8)"
                ),
            );
            None
        }
    }
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
pub(crate) fn closest_key(unknown: &str, keys: &[&'static str]) -> Option<&'static str> {
    let lowered = unknown.to_lowercase().replace('-', "_");
    keys.iter()
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

fn check_tag(
    node: &Node,
    key: Option<&str>,
    secret_key: Option<&str>,
    problems: &mut Problems<'_>,
) {
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
    if key.is_some() && key == secret_key && matches!(tag, "!Env" | "!File") {
        return;
    }
    let on = secret_key.unwrap_or("private_key");
    let hint = if matches!(tag, "!Env" | "!File") {
        format!(" (`!Env` and `!File` are only allowed on `{on}`)")
    } else {
        format!(" (known tags: `!Env VAR` and `!File path`, on `{on}`)")
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

fn fraction(node: &Node, key: &str, problems: &mut Problems<'_>) -> Option<f64> {
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
    Some(value)
}

/// The write-only secret: `!Env VAR` (a name the policy allows), `!File
/// path`, or a literal (with a warning: secrets do not belong in git).
fn secret(node: &Node, key: &str, policy: &Policy, problems: &mut Problems<'_>) -> Option<KeySpec> {
    let pos = Pos::of(node);
    let tag = node.tag.as_deref();
    let Kind::Str(s) = &node.kind else {
        type_error(
            node,
            key,
            "`!Env VARIABLE`, `!File path` or a string",
            problems,
        );
        return None;
    };
    let value = s.trim();
    match tag {
        Some("!Env") if value.chars().count() > MAX_ENV_NAME_CHARS => {
            problems.error(
                pos,
                Some(key),
                format!(
                    "`!Env` names a variable of {} characters; at most {MAX_ENV_NAME_CHARS} are accepted",
                    value.chars().count()
                ),
            );
            None
        }
        Some("!File") if value.len() > MAX_FILE_PATH_BYTES => {
            problems.error(
                pos,
                Some(key),
                format!(
                    "`!File` names a path of {} bytes; at most {MAX_FILE_PATH_BYTES} are accepted",
                    value.len()
                ),
            );
            None
        }
        Some("!Env") => {
            if value.is_empty()
                || value.contains(['=', '\0'])
                || value.chars().any(char::is_whitespace)
            {
                problems.error(
                    pos,
                    Some(key),
                    "`!Env` needs an environment variable name, such as `!Env HCAPTCHA_SECRET`"
                        .into(),
                );
                return None;
            }
            // Here as well as before the variable is read, so the refusal is
            // reported even when another field of the document is wrong.
            if let Err(refused) = policy.secrets.check_env(value) {
                problems.error(pos, Some(key), refused.to_string());
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
                    Some(key),
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
            problems.error(pos, Some(key), format!("`{key}` must not be empty"));
            None
        }
        _ => {
            problems.push(
                Severity::Warning,
                pos,
                Some(key),
                format!("`{key}` is a literal value; secrets do not belong in git, use `!Env VARIABLE` or `!File path`"),
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
        let keys = crate::kinds::captcha::MANIFEST.keys();
        assert_eq!(closest_key("nmae", &keys), Some("name"));
        assert_eq!(
            closest_key("score_min_treshold", &keys),
            Some("score_min_threshold")
        );
        assert_eq!(closest_key("Public-Key", &keys), Some("public_key"));
        assert_eq!(closest_key("favourite_colour", &keys), None);
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
