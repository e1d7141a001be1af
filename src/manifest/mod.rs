//! Manifests: finding `*.yaml` files under a directory, parsing and checking
//! them with a file, line and column for every problem, and resolving the
//! private keys they reference.
//!
//! The flow is `discover` (I/O: walk the folder, read files under 1 MiB) ->
//! `yaml` (text to a positioned tree; parser limits stop hostile input) ->
//! `check` (pure: one document checked against its kind's table, every problem
//! collected) ->
//! key resolution (I/O: `!Env`, `!File`, each first checked against the
//! operator's [`Policy`]) -> cross-file checks (duplicate names and uuids
//! anywhere in the directory, reported at both places).
//!
//! Traps:
//! - [`load`] fails only when the directory itself is unusable ([`SourceError`]);
//!   the daemon then keeps its last desired state. Everything else, including an
//!   unreadable file inside, is a [`Diagnostic`] in [`Manifests`].
//! - A file with errors still lists the stages of its documents that passed, but
//!   `valid` is false: callers that act on manifests must not act on a partial file.
//! - Key values are [`crate::secret::PrivateKey`]s from the moment they are read;
//!   no message ever includes one.
//! - The manifests are untrusted: the directory is opened once and every file
//!   (manifests and `!File` keys) is opened beneath it, or beneath a
//!   `--secrets-dir` ([`Scope`]): no `..` and no symlink leads a read out, even
//!   one swapped in while the directory is read; stagesync's own token and
//!   state files are never a key. An `!Env` variable is read only once the
//!   policy allows its name; `js_url` and `api_url` must name an allowed
//!   provider host. This is the one place `validate`, `plan`, `apply` and
//!   `run` all pass through.

mod check;
mod discover;
mod scope;
mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::kinds::Origin;
use crate::kinds::captcha::{self, DesiredStage};
use crate::kinds::guard::{self, DesiredGuard, Guard};
use crate::policy::Policy;
use crate::secret::KeySource;
use crate::text::escape;

pub(crate) use discover::{is_hidden_name, is_manifest_name, walk_reaches};
pub(crate) use scope::Scope;

/// The manifest directory itself cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: manifest directory not found", escape(&.0.display().to_string()))]
    Missing(PathBuf),
    #[error("{}: not a directory", escape(&.0.display().to_string()))]
    NotADirectory(PathBuf),
    #[error("{}: cannot read manifest directory: {}", escape(&.0.display().to_string()), discover::io_message(.1))]
    Unreadable(PathBuf, #[source] std::io::Error),
}

/// Everything found under a manifest directory.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Every manifest file found, sorted by path.
    pub(crate) files: Vec<ManifestFile>,
    /// All errors and warnings, cross-file ones included, sorted by file, line, column.
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Debug)]
pub(crate) struct ManifestFile {
    /// As the user would type it: the directory joined with the relative path.
    pub(crate) path: PathBuf,
    /// The stages of the documents that passed every check, private keys read.
    pub(crate) stages: Vec<DesiredStage>,
    /// No error is attributed to this file (a duplicate across files makes both invalid).
    pub(crate) valid: bool,
    /// The `!File` paths this file references, resolved, so they can be watched.
    pub(crate) secret_files: Vec<PathBuf>,
    /// Where each stage's `uuid` is written, so a duplicate is reported there.
    pub(crate) uuid_places: Vec<(uuid::Uuid, Origin)>,
}

impl Manifests {
    /// No error-severity diagnostic.
    pub fn is_valid(&self) -> bool {
        !self
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn stages(&self) -> impl Iterator<Item = &DesiredStage> {
        self.files.iter().flat_map(|f| f.stages.iter())
    }

    pub(crate) fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub(crate) fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem, at a place in a file. Never holds a secret value.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub(crate) severity: Severity,
    pub(crate) file: PathBuf,
    pub(crate) line: Option<usize>,
    pub(crate) column: Option<usize>,
    /// The manifest key the problem is about, if any.
    pub(crate) field: Option<String>,
    pub(crate) message: String,
}

impl Diagnostic {
    /// `path:line:column` (or `path` alone), control characters escaped.
    pub(crate) fn place(&self) -> String {
        let mut place = escape(&self.file.display().to_string()).into_owned();
        if let Some(line) = self.line {
            place.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                place.push_str(&format!(":{column}"));
            }
        }
        place
    }
}

/// The most characters of a message shown: a message quotes the manifest (an
/// unknown tag, a URL's host), and no single value may flood a terminal or a
/// log line.
const MAX_MESSAGE_CHARS: usize = 1000;

/// `path:line:column: error: message`, control characters escaped, the
/// message cut after [`MAX_MESSAGE_CHARS`].
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.place(),
            self.severity,
            self.shown_message()
        )
    }
}

impl Diagnostic {
    /// The message as shown: cut after [`MAX_MESSAGE_CHARS`], control
    /// characters escaped.
    pub(crate) fn shown_message(&self) -> String {
        let message = match self.message.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((at, _)) => format!(
                "{}…({} more characters)",
                &self.message[..at],
                self.message[at..].chars().count()
            ),
            None => self.message.clone(),
        };
        escape(&message).into_owned()
    }
}

/// Loads every manifest under `dir`, reading the private keys they reference
/// from the process environment and the file system, as far as `policy` allows.
pub fn load(dir: &Path, policy: &Policy) -> Result<Manifests, SourceError> {
    load_with_env(dir, policy, &|var| std::env::var_os(var))
}

/// [`load`] with the environment given as a lookup (for tests).
pub fn load_with_env(
    dir: &Path,
    policy: &Policy,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Manifests, SourceError> {
    // Opened once: the walk and every `!File` read happen beneath these
    // handles, so nothing under the directory can lead a read out of it.
    let scope = Scope::open(dir, policy)?;

    let mut manifests = Manifests::default();
    for found in discover::walk(scope.root(), scope.shown_root()) {
        match found {
            discover::Found::File { path, bytes } => {
                let (file, diagnostics) = load_file(path, &bytes, &scope, policy, env);
                manifests.files.push(file);
                manifests.diagnostics.extend(diagnostics);
            }
            discover::Found::Problem {
                path,
                is_file,
                message,
            } => {
                if is_file {
                    manifests.files.push(ManifestFile {
                        path: path.clone(),
                        stages: Vec::new(),
                        valid: false,
                        secret_files: Vec::new(),
                        uuid_places: Vec::new(),
                    });
                }
                manifests.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: path,
                    line: None,
                    column: None,
                    field: None,
                    message,
                });
            }
        }
    }
    check_duplicates(&mut manifests);
    manifests.files.sort_by(|a, b| a.path.cmp(&b.path));
    // One pass over the diagnostics, not one per file: 10,000 files each with
    // an error would otherwise cost 10,000 x 10,000 comparisons.
    let invalid: std::collections::HashSet<&Path> = manifests
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.file.as_path())
        .collect();
    for file in &mut manifests.files {
        file.valid = !invalid.contains(file.path.as_path());
    }
    manifests
        .diagnostics
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Ok(manifests)
}

/// Parses, checks and resolves one file's documents (its content already read).
/// `path` (below `scope`'s manifest directory) is used for messages and to
/// resolve relative `!File` paths, which are read beneath the directories of
/// `scope` only.
pub(crate) fn load_file(
    path: PathBuf,
    bytes: &[u8],
    scope: &Scope,
    policy: &Policy,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> (ManifestFile, Vec<Diagnostic>) {
    let mut file = ManifestFile {
        path,
        stages: Vec::new(),
        valid: true,
        secret_files: Vec::new(),
        uuid_places: Vec::new(),
    };
    let error = |file: &Path, line, column, message| Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        column,
        field: None,
        message,
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let (line, column) = line_column(bytes, err.valid_up_to());
            let d = error(
                &file.path,
                Some(line),
                Some(column),
                "file is not valid UTF-8".into(),
            );
            return (file, vec![d]);
        }
    };
    let documents = match yaml::parse_documents(text) {
        Ok(documents) => documents,
        Err(err) => {
            // A tab in the indentation is what the parser stumbled on, but it
            // reports it elsewhere (at the end of the line before, "while
            // scanning a plain scalar"): point at the tab itself.
            if let Some(d) = tab_indentation(&file.path, text).filter(|d| {
                err.message.contains("tab") || err.line.is_none_or(|line| d.line <= Some(line + 1))
            }) {
                return (file, vec![d]);
            }
            let d = error(
                &file.path,
                err.line,
                err.column,
                format!("invalid YAML: {}", err.message),
            );
            return (file, vec![d]);
        }
    };
    let path = file.path.clone();
    let mut problems = check::Problems::new(&path);
    let base = file.path.parent().unwrap_or(Path::new("")).to_path_buf();
    let manifest = file.path.clone();
    for document in &documents {
        if problems.full() {
            break;
        }
        let Some(spec) = check::check_document(document, &captcha::MANIFEST, policy, &mut problems)
        else {
            continue;
        };
        let Some(key) = spec.key else { continue };
        let guards = match &spec.list {
            Some(list) => match check_guards(list, &file.path, policy, &mut problems) {
                Some(guards) => Some(guards),
                None => continue,
            },
            None => None,
        };
        if let KeySource::File(p) = &key.source {
            file.secret_files.push(base.join(p));
        }
        match resolve_key(&key, &manifest, scope, policy, env) {
            Ok(private_key) => {
                if let Some((u, pos)) = spec.uuid {
                    let origin = Origin {
                        file: file.path.clone(),
                        line: pos.line,
                        column: pos.column,
                    };
                    file.uuid_places.push((u, origin));
                }
                file.stages.push(DesiredStage {
                    origin: Origin {
                        file: file.path.clone(),
                        line: spec.origin.line,
                        column: spec.origin.column,
                    },
                    uuid: spec.uuid.map(|(u, _)| u),
                    fields: spec.fields,
                    key_source: key.source,
                    private_key,
                    guards,
                })
            }
            Err(message) => problems.list.push(Diagnostic {
                severity: Severity::Error,
                file: file.path.clone(),
                line: Some(key.pos.line),
                column: Some(key.pos.column),
                field: Some("private_key".into()),
                message: format!("stage `{}`: {message}", spec.fields.name),
            }),
        }
    }
    if problems.full() {
        // At the last problem's position, so the (stable) sort keeps it last.
        let (line, column) = problems
            .list
            .last()
            .map_or((None, None), |d| (d.line, d.column));
        problems.list.push(Diagnostic {
            severity: Severity::Error,
            file: file.path.clone(),
            line,
            column,
            field: None,
            message: format!(
                "stopped after {} errors; the rest of this file was not checked",
                check::MAX_PROBLEMS_PER_FILE
            ),
        });
    }
    if problems.warnings_not_shown > 0 {
        let (line, column) = problems
            .list
            .last()
            .map_or((None, None), |d| (d.line, d.column));
        problems.list.push(Diagnostic {
            severity: Severity::Warning,
            file: file.path.clone(),
            line,
            column,
            field: None,
            message: format!("{} more warnings not shown", problems.warnings_not_shown),
        });
    }
    let list = problems.list;
    (file, list)
}

/// A stage's `guards:` list, item by item against the guard kind's spec:
/// each item a flow or an identification stage, one flow or identification
/// stage named once (a second time is an error naming the first). `None`
/// when any item has an error (the stage is then not planned).
fn check_guards(
    list: &yaml::Node,
    file: &Path,
    policy: &Policy,
    problems: &mut check::Problems<'_>,
) -> Option<Vec<DesiredGuard>> {
    let key = guard::GUARDS_KEY.key;
    let errors_before = problems.error_count();
    let yaml::Kind::Seq(items) = &list.kind else {
        problems.error_at(
            list.line,
            list.column,
            Some(key),
            format!(
                "`{key}` must be a list of guards, found {} (write `{key}: []` for a stage that guards nothing)",
                list.kind.type_name()
            ),
        );
        return None;
    };
    let mut guards: Vec<DesiredGuard> = Vec::new();
    for item in items {
        if problems.full() {
            break;
        }
        let Some(spec) = check::check_document(item, &guard::ITEM, policy, problems) else {
            continue;
        };
        let Some(declared) = spec.fields.guard() else {
            continue;
        };
        let origin = Origin {
            file: file.to_path_buf(),
            line: spec.origin.line,
            column: spec.origin.column,
        };
        if let Some(first) = guards
            .iter()
            .find(|g| g.guard.target() == declared.target())
        {
            let field = match declared {
                Guard::Flow { .. } => "flow",
                Guard::IdentificationStage { .. } => "identification_stage",
            };
            problems.error_at(
                origin.line,
                origin.column,
                Some(field),
                format!(
                    "{} is guarded twice in this list (first at line {}, column {}); one binding per flow: merge them",
                    declared.target(),
                    first.origin.line,
                    first.origin.column
                ),
            );
            continue;
        }
        guards.push(DesiredGuard {
            origin,
            guard: declared,
        });
    }
    (problems.error_count() == errors_before).then_some(guards)
}

/// Reads the key the manifest at `manifest` references, if the policy allows
/// the reference. The error names the variable or the path, never a value.
fn resolve_key(
    key: &check::KeySpec,
    manifest: &Path,
    scope: &Scope,
    policy: &Policy,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<SecretString, String> {
    match &key.source {
        KeySource::Literal => key
            .literal
            .clone()
            .ok_or_else(|| "`private_key` is empty".to_owned()),
        KeySource::Env(var) => {
            policy.secrets.check_env(var).map_err(|e| e.to_string())?;
            read_env(var, env)
        }
        KeySource::File(p) => scope.read_key(manifest, p, policy),
    }
}

fn read_env(
    var: &str,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<SecretString, String> {
    match env(var) {
        None => Err(format!(
            "environment variable `{var}` (from `!Env`) is not set"
        )),
        Some(value) => match value.into_string() {
            Err(_) => Err(format!("environment variable `{var}` is not valid UTF-8")),
            Ok(value) if value.trim().is_empty() => {
                Err(format!("environment variable `{var}` is empty"))
            }
            Ok(value) => Ok(SecretString::from(value.trim().to_owned())),
        },
    }
}

/// The first tab used for indentation, as an error (YAML allows only spaces).
fn tab_indentation(path: &Path, text: &str) -> Option<Diagnostic> {
    let mut in_block_scalar = false;
    for (i, line) in text.lines().enumerate() {
        let indent: &str = &line[..line.len() - line.trim_start_matches([' ', '\t']).len()];
        // Content of a `|` / `>` block scalar may hold tabs after its indentation.
        if in_block_scalar && (indent.starts_with(' ') || line.trim().is_empty()) {
            continue;
        }
        in_block_scalar = false;
        if let Some(column) = indent.find('\t')
            && !line.trim().is_empty()
        {
            return Some(Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: Some(i + 1),
                column: Some(column + 1),
                field: None,
                message: "a tab is used for indentation; YAML allows only spaces".into(),
            });
        }
        let trimmed = line.trim_end();
        if trimmed.ends_with(['|', '>'])
            || trimmed.ends_with("|-")
            || trimmed.ends_with(">-")
            || trimmed.ends_with("|+")
            || trimmed.ends_with(">+")
        {
            in_block_scalar = true;
        }
    }
    None
}

/// Two stages with the same name or uuid anywhere: an error at each, naming the other.
fn check_duplicates(manifests: &mut Manifests) {
    let mut by_name: HashMap<&str, Vec<&Origin>> = HashMap::new();
    let mut by_uuid: HashMap<uuid::Uuid, Vec<&Origin>> = HashMap::new();
    for stage in manifests.stages() {
        by_name
            .entry(stage.fields.name.as_str())
            .or_default()
            .push(&stage.origin);
    }
    for (u, origin) in manifests.files.iter().flat_map(|f| f.uuid_places.iter()) {
        by_uuid.entry(*u).or_default().push(origin);
    }
    // An identification stage embeds one captcha: two stages claiming it
    // would take it from each other at every apply.
    let mut by_embedding: HashMap<&str, Vec<&Origin>> = HashMap::new();
    for stage in manifests.stages() {
        for g in stage.guards.iter().flatten() {
            if let Guard::IdentificationStage { name } = &g.guard {
                by_embedding
                    .entry(name.as_str())
                    .or_default()
                    .push(&g.origin);
            }
        }
    }
    let mut found = Vec::new();
    let mut report = |what: String, field: &str, origins: &[&Origin]| {
        // Each place names the others, the first three of them: ten thousand
        // copies must not print ten thousand squared places.
        const SHOWN: usize = 3;
        for (i, origin) in origins.iter().enumerate() {
            let others: Vec<String> = origins
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| o.to_string())
                .take(SHOWN)
                .collect();
            let more = (origins.len() - 1).saturating_sub(SHOWN);
            let other = if more > 0 {
                format!("{} and {more} more", others.join(", "))
            } else {
                others.join(", ")
            };
            found.push(Diagnostic {
                severity: Severity::Error,
                file: origin.file.clone(),
                line: Some(origin.line),
                column: Some(origin.column),
                field: Some(field.into()),
                message: format!("{what} is also declared at {other}"),
            });
        }
    };
    for (name, origins) in &by_name {
        if origins.len() > 1 {
            report(format!("stage name `{name}`"), "name", origins);
        }
    }
    for (u, origins) in &by_uuid {
        if origins.len() > 1 {
            report(format!("uuid {u}"), "uuid", origins);
        }
    }
    for (name, origins) in &by_embedding {
        if origins.len() > 1 {
            report(
                format!("identification stage `{name}` (it embeds one captcha)"),
                "identification_stage",
                origins,
            );
        }
    }
    manifests.diagnostics.extend(found);
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = 1 + String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count();
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::kinds::captcha::MAX_NAME_CHARS;

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    /// A scope for documents without `!File` keys.
    fn scope() -> Scope {
        Scope::open(Path::new("/"), &Policy::default()).unwrap()
    }

    #[test]
    fn diagnostics_display_with_escaped_control_characters() {
        let d = Diagnostic {
            severity: Severity::Warning,
            file: "stages/a\u{1b}.yaml".into(),
            line: Some(3),
            column: Some(7),
            field: None,
            message: "bad\nthing".into(),
        };
        assert_eq!(
            d.to_string(),
            "stages/a\\u{1b}.yaml:3:7: warning: bad\\nthing"
        );
        let d = Diagnostic {
            line: None,
            column: None,
            severity: Severity::Error,
            ..d
        };
        assert_eq!(d.to_string(), "stages/a\\u{1b}.yaml: error: bad\\nthing");
        let d = Diagnostic {
            message: format!("unknown tag `!{}`", "é".repeat(5_000)),
            ..d
        };
        let shown = d.to_string();
        assert!(
            shown.ends_with(&format!("{}…(4015 more characters)", "é".repeat(985))),
            "{shown}"
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column(b"ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\u{1}".as_bytes(), 2), (1, 2));
        assert_eq!(line_column(b"", 10), (1, 1));
    }

    #[test]
    fn a_good_document_becomes_a_resolved_stage() {
        let env = |var: &str| (var == "K").then(|| " key \n".into());
        let text = b"# c\nname: a \npublic_key: p\nprivate_key: !Env K\nscore_max_threshold: 1\n";
        let (file, diagnostics) =
            load_file("s/a.yaml".into(), text, &scope(), &Policy::default(), &env);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let stage = &file.stages[0];
        assert_eq!(stage.fields.name, "a");
        assert_eq!(stage.fields.score_max_threshold, 1.0);
        assert_eq!(
            stage.fields.request_content_type.as_deref(),
            Some(crate::kinds::captcha::DEFAULT_REQUEST_CONTENT_TYPE)
        );
        assert_eq!((stage.origin.line, stage.origin.column), (2, 1));
        use secrecy::ExposeSecret;
        assert_eq!(stage.private_key.expose_secret(), "key");
    }

    #[test]
    fn a_literal_key_never_appears_in_messages() {
        let text = b"name: a\npublic_key: p\nprivate_key: hunter2\njs_url: nope\n";
        let (_, diagnostics) =
            load_file("a.yaml".into(), text, &scope(), &Policy::default(), &no_env);
        assert_eq!(diagnostics.len(), 2);
        assert!(diagnostics.iter().all(|d| !d.message.contains("hunter2")));
    }

    #[test]
    fn a_duplicate_across_files_invalidates_both_and_secret_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let stages = dir.path().join("stages");
        std::fs::create_dir_all(stages.join("b")).unwrap();
        std::fs::write(stages.join("key"), "k\n").unwrap();
        let doc = "name: same\npublic_key: p\nprivate_key: !File ../key\n";
        std::fs::write(stages.join("b/one.yaml"), doc).unwrap();
        std::fs::write(stages.join("b/two.yml"), doc).unwrap();
        std::fs::write(
            stages.join("ok.yaml"),
            "name: other\npublic_key: p\nprivate_key: !Env K\n",
        )
        .unwrap();
        let env = |_: &str| Some("v".into());
        let manifests = load_with_env(&stages, &Policy::default(), &env).unwrap();
        let summary: Vec<(PathBuf, bool, usize)> = manifests
            .files
            .iter()
            .map(|f| {
                (
                    f.path.strip_prefix(dir.path()).unwrap().to_path_buf(),
                    f.valid,
                    f.stages.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("stages/b/one.yaml".into(), false, 1),
                ("stages/b/two.yml".into(), false, 1),
                ("stages/ok.yaml".into(), true, 1),
            ]
        );
        assert_eq!(manifests.files[0].secret_files, [stages.join("b/../key")]);
        assert_eq!(manifests.error_count(), 2);
        assert!(!manifests.is_valid());
        assert_eq!(manifests.stages().count(), 3);
    }

    #[test]
    fn the_directory_itself_must_be_usable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            load(&dir.path().join("none"), &Policy::default()),
            Err(SourceError::Missing(_))
        ));
        assert!(matches!(
            load(&file, &Policy::default()),
            Err(SourceError::NotADirectory(_))
        ));
        let empty = load(dir.path(), &Policy::default()).unwrap();
        assert!(empty.is_valid());
        assert_eq!(empty.files.len(), 1);
    }

    /// The diagnostics of one file, as `line:column: severity: message`.
    fn problems_of(text: &str) -> Vec<String> {
        let env = |_: &str| Some("k".into());
        let (_, diagnostics) = load_file(
            "a.yaml".into(),
            text.as_bytes(),
            &scope(),
            &Policy::default(),
            &env,
        );
        diagnostics
            .iter()
            .map(|d| d.to_string().trim_start_matches("a.yaml:").to_owned())
            .collect()
    }

    const HEAD: &str = "public_key: p\nprivate_key: !Env K\n";

    #[test]
    fn hostile_names_and_thresholds_are_errors_at_their_line() {
        let long = "n".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            problems_of(&format!("{HEAD}name: {long}\n")),
            ["3:7: error: `name` is 256 characters long; at most 255 are accepted"]
        );
        assert!(problems_of(&format!("{HEAD}name: {}\n", "é".repeat(255))).is_empty());
        assert_eq!(
            problems_of(&format!("{HEAD}name: \"a\\e[31mred\"\n")),
            ["3:7: error: `name` contains the control character U+001B"]
        );
        assert_eq!(
            problems_of(&format!("{HEAD}name: \"a\\0b\"\n")),
            ["3:7: error: `name` contains the control character U+0000"]
        );
        assert_eq!(
            problems_of(&format!(
                "{HEAD}name: a\nscore_min_threshold: -0.1\nscore_max_threshold: 1.5\n"
            )),
            [
                "4:22: error: `score_min_threshold` must be between 0 and 1, found -0.1",
                "5:22: error: `score_max_threshold` must be between 0 and 1, found 1.5",
            ]
        );
    }

    #[test]
    fn surrounding_whitespace_is_normalised_with_a_warning() {
        let text = "name: \" login \"\npublic_key: \"p \"\nprivate_key: !Env K\n";
        assert_eq!(
            problems_of(text),
            [
                "1:7: warning: `name` has leading or trailing whitespace, which authentik removes; `login` is used",
                "2:13: warning: `public_key` has leading or trailing whitespace, which authentik removes; `p` is used",
            ]
        );
        let env = |_: &str| Some("k".into());
        let (file, _) = load_file(
            "a.yaml".into(),
            text.as_bytes(),
            &scope(),
            &Policy::default(),
            &env,
        );
        assert_eq!(file.stages[0].fields.name, "login");
        assert_eq!(file.stages[0].fields.public_key, "p");
    }

    #[test]
    fn a_tab_in_the_indentation_is_reported_at_its_line() {
        let text = format!("{HEAD}name: a\nnested:\n  a: 1\n\tb: 2\n");
        let problems = problems_of(&text);
        assert_eq!(
            problems,
            ["6:1: error: a tab is used for indentation; YAML allows only spaces"]
        );
        // In a block scalar, after its indentation, a tab is content.
        let text = format!("{HEAD}name: |\n  a\n  \tb\n");
        assert!(
            !problems_of(&text).iter().any(|p| p.contains("tab")),
            "{:?}",
            problems_of(&text)
        );
    }

    #[test]
    fn a_duplicate_uuid_is_reported_at_the_uuid_lines() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("name: a\n{HEAD}uuid: {uuid}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            format!("name: b\n{HEAD}\n\nuuid: {uuid}\n"),
        )
        .unwrap();
        let env = |_: &str| Some("k".into());
        let manifests = load_with_env(dir.path(), &Policy::default(), &env).unwrap();
        let places: Vec<(String, Option<usize>, Option<&str>)> = manifests
            .diagnostics
            .iter()
            .map(|d| {
                (
                    d.file.file_name().unwrap().to_string_lossy().into_owned(),
                    d.line,
                    d.field.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            places,
            [
                ("a.yaml".into(), Some(4), Some("uuid")),
                ("b.yaml".into(), Some(6), Some("uuid")),
            ]
        );
    }

    fn assert_total(bytes: &[u8]) {
        let started = Instant::now();
        let _ = load_file(
            "p.yaml".into(),
            bytes,
            &scope(),
            &Policy::default(),
            &no_env,
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            assert_total(&bytes);
        }

        #[test]
        fn yaml_ish_text_never_panics(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("name: ".to_owned()), Just("public_key: ".to_owned()),
                    Just("private_key: ".to_owned()), Just("!Env ".to_owned()),
                    Just("!File ".to_owned()), Just("&a ".to_owned()), Just("*a".to_owned()),
                    Just("---\n".to_owned()), Just("\n".to_owned()), Just("  ".to_owned()),
                    Just("- ".to_owned()), Just("[".to_owned()), Just("]".to_owned()),
                    Just("{".to_owned()), Just("}".to_owned()), Just(": ".to_owned()),
                    Just(".inf".to_owned()), Just("0.5".to_owned()), Just("\"".to_owned()),
                    Just("? ".to_owned()), Just("<<: *a\n".to_owned()), Just("%TAG ! x\n".to_owned()),
                    Just("score_min_threshold: ".to_owned()), Just("uuid: ".to_owned()),
                    "[a-z_]{1,12}", "\\PC{0,8}",
                ],
                0..64,
            )
        ) {
            assert_total(parts.concat().as_bytes());
        }
    }
}
