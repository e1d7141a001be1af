//! The operator's policy: what a manifest may read and where a key may be sent.
//!
//! A manifest is untrusted input (in a GitOps setup it comes from a pull
//! request), while stagesync runs with the authentik API token and every captcha
//! key in its environment. This module holds the decisions only the operator
//! makes, with flags and environment variables resolved once in [`crate::cli`]:
//!
//! - [`SecretsPolicy`]: which `!File` paths and `!Env` variables a manifest may
//!   reference. A `!File` must lie inside the manifest directory or a
//!   `--secrets-dir` ([`AllowedDir`]), and is opened beneath that directory's
//!   handle, so no symlink leads it out; stagesync's own token and state files
//!   are never a key, wherever they are ([`OwnFile`]). An `!Env` variable may
//!   never be one of stagesync's own (`AUTHENTIK_*`, `STAGESYNC_*`), and with
//!   `--env-allow` it must match one of the operator's globs.
//! - [`ProviderHosts`]: the hosts `js_url` and `api_url` may name. authentik
//!   POSTs the private key to `api_url`, and every visitor's browser runs the
//!   script at `js_url`: both must be `https://` on a built-in captcha provider
//!   host ([`BUILT_IN_PROVIDER_HOSTS`]) or one the operator added.
//!
//! Pure: no file system, no environment. The caller resolves the operator's
//! directories ([`AllowedDir::canonical`]) and opens files (I/O).
//!
//! Traps:
//! - Nothing in a manifest can widen a policy: there is no manifest key for it,
//!   and the policy is built before any manifest is read.
//! - A URL's host is compared after the URL parser's normalisation (lower case,
//!   punycode), so `https://www.google.com@evil.example/` is `evil.example`.
//!   authentik stores the string as written, and other parsers (Python's, the
//!   browser's) may read another host out of it: a URL whose authority is not
//!   written exactly as parsed (a backslash, user info, percent-encoding) is
//!   refused, so every parser sees the host that was checked.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use url::Url;

/// Prefixes of the variables stagesync reads as its own configuration (the API
/// token among them). A manifest may never reference one with `!Env`.
pub(crate) const FORBIDDEN_ENV_PREFIXES: [&str; 2] = ["AUTHENTIK_", "STAGESYNC_"];

/// Hosts of the captcha providers authentik supports, as their documentation
/// names them for the script (`js_url`) and the verification endpoint (`api_url`):
/// - Google reCAPTCHA: `www.google.com/recaptcha/api.js` and
///   `www.google.com/recaptcha/api/siteverify`, or `www.recaptcha.net` where
///   google.com is not reachable (authentik's own default).
/// - hCaptcha: `js.hcaptcha.com/1/api.js` and `api.hcaptcha.com/siteverify`
///   (`hcaptcha.com/siteverify` in older documentation).
/// - Cloudflare Turnstile: `challenges.cloudflare.com` for both.
pub(crate) const BUILT_IN_PROVIDER_HOSTS: [&str; 6] = [
    "www.google.com",
    "www.recaptcha.net",
    "js.hcaptcha.com",
    "api.hcaptcha.com",
    "hcaptcha.com",
    "challenges.cloudflare.com",
];

/// A setting of the operator that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("--env-allow {pattern:?} is not a valid glob: {reason}")]
    EnvGlob { pattern: String, reason: String },
    #[error("--allow-provider-host {0:?} is not HOST, HOST:PORT, http://HOST or http://HOST:PORT")]
    ProviderHost(String),
}

/// The operator's whole policy, resolved once from flags and environment.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub(crate) secrets: SecretsPolicy,
    pub(crate) hosts: ProviderHosts,
}

/// Which secret references a manifest may use.
#[derive(Clone, Debug, Default)]
pub(crate) struct SecretsPolicy {
    /// Directories whose files `!File` may read (`--secrets-dir`).
    secrets_dirs: Vec<AllowedDir>,
    /// `--env-allow` globs; `None` when none was given (any variable but
    /// stagesync's own).
    env_allow: Option<(GlobSet, Vec<String>)>,
    /// stagesync's own files, never read as a key wherever they are.
    own_files: Vec<(PathBuf, OwnFile)>,
}

/// A directory `!File` may read beneath: the manifest directory or a
/// `--secrets-dir`. A path is matched by its text against both forms, so that
/// `!File /run/secrets/key` works whether `/run/secrets` is a symlink or not;
/// the file is then opened beneath the directory's handle, which no symlink
/// leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllowedDir {
    /// As the operator wrote it, made absolute, `..` resolved by its text.
    pub(crate) given: PathBuf,
    /// Where it leads, symlinks resolved.
    pub(crate) canonical: PathBuf,
}

impl AllowedDir {
    /// `path` (absolute, `..` resolved by its text: see [`lexical_normal`])
    /// relative to this directory, when it lies strictly below it.
    pub(crate) fn below<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        [&self.given, &self.canonical]
            .into_iter()
            .find_map(|dir| path.strip_prefix(dir).ok())
            .filter(|rest| !rest.as_os_str().is_empty())
    }
}

/// A file stagesync itself uses, which a manifest may never read as a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnFile {
    /// `--token-file`: the authentik API token.
    Token,
    /// `--state-file` (or its default): the key fingerprints and inventory.
    State,
}

impl fmt::Display for OwnFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnFile::Token => "stagesync's API token file (--token-file)",
            OwnFile::State => "stagesync's state file",
        })
    }
}

/// Why a `!Env` reference is refused. Names the variable, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvRefused {
    #[error(
        "`!Env {0}` is refused: AUTHENTIK_* and STAGESYNC_* variables are stagesync's own configuration (its API token among them), never a captcha key"
    )]
    Own(String),
    #[error("`!Env {var}` is refused: the operator allows only variables matching {}", .patterns.join(", "))]
    NotAllowed { var: String, patterns: Vec<String> },
}

/// Why a `!File` reference is refused: it lies outside, or a symlink on its
/// way leads out. The same words whether or not the file exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`!File` {shown} is refused: it lies outside the manifest directory{}",
    allowed_dirs(.secrets_dirs)
)]
pub(crate) struct FileRefused {
    /// The path as the manifest wrote it (joined to the manifest's folder).
    pub(crate) shown: String,
    pub(crate) secrets_dirs: Vec<PathBuf>,
}

fn allowed_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        " (the operator can allow a directory with --secrets-dir DIR)".to_owned()
    } else {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!(" and the --secrets-dir directories ({})", dirs.join(", "))
    }
}

impl SecretsPolicy {
    /// `env_allow` are globs such as `*_CAPTCHA_KEY` (`*`, `?`, `[...]`, `{a,b}`).
    pub(crate) fn new(
        secrets_dirs: Vec<AllowedDir>,
        env_allow: &[String],
    ) -> Result<Self, PolicyError> {
        let env_allow = if env_allow.is_empty() {
            None
        } else {
            let mut builder = GlobSetBuilder::new();
            for pattern in env_allow {
                let glob = Glob::new(pattern).map_err(|e| PolicyError::EnvGlob {
                    pattern: pattern.clone(),
                    reason: e.kind().to_string(),
                })?;
                builder.add(glob);
            }
            let set = builder.build().map_err(|e| PolicyError::EnvGlob {
                pattern: env_allow.join(","),
                reason: e.to_string(),
            })?;
            Some((set, env_allow.to_vec()))
        };
        Ok(SecretsPolicy {
            secrets_dirs,
            env_allow,
            own_files: Vec::new(),
        })
    }

    /// May a manifest read the environment variable `var`?
    pub(crate) fn check_env(&self, var: &str) -> Result<(), EnvRefused> {
        let upper = var.to_ascii_uppercase();
        if FORBIDDEN_ENV_PREFIXES
            .iter()
            .any(|prefix| upper.starts_with(prefix))
        {
            return Err(EnvRefused::Own(var.to_owned()));
        }
        match &self.env_allow {
            Some((set, patterns)) if !set.is_match(var) => Err(EnvRefused::NotAllowed {
                var: var.to_owned(),
                patterns: patterns.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The `--secrets-dir` directories.
    pub(crate) fn secrets_dirs(&self) -> &[AllowedDir] {
        &self.secrets_dirs
    }

    /// Never lets a manifest read `path` as a key (compared by identity when
    /// manifests load, so a hard link or a symlink to it is refused too).
    pub(crate) fn protect(&mut self, path: PathBuf, what: OwnFile) {
        self.own_files.push((path, what));
    }

    /// The files [`Self::protect`] named.
    pub(crate) fn own_files(&self) -> &[(PathBuf, OwnFile)] {
        &self.own_files
    }

    /// The refusal of `path` (as the manifest wrote it).
    pub(crate) fn refuse_file(&self, path: &Path) -> FileRefused {
        FileRefused {
            shown: path.display().to_string(),
            secrets_dirs: self.secrets_dirs.iter().map(|d| d.given.clone()).collect(),
        }
    }
}

/// `a/b/../c` as `a/c`, without touching the file system (for an absolute
/// path: `/..` is `/`).
pub(crate) fn lexical_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// One host the operator added with `--allow-provider-host`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AddedHost {
    /// Lower case, as the URL parser normalises it.
    host: String,
    /// `None`: the scheme's default port (the URL parser drops 443 for https
    /// and 80 for http, so `Url::port` is `None` there too).
    port: Option<u16>,
    /// Plain http allowed as well as https (`http://HOST[:PORT]`).
    http: bool,
}

/// The hosts `js_url` and `api_url` may name: the built-in providers, plus the
/// operator's additions.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProviderHosts {
    added: Vec<AddedHost>,
}

/// Why a URL may not receive a key or serve the login page's script. The
/// message fits after `file:line: ` or a stage name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostRefused {
    #[error(
        "`{host}` is not a captcha provider host stagesync allows (built in: {}; the operator can add one with --allow-provider-host HOST[:PORT])",
        BUILT_IN_PROVIDER_HOSTS.join(", ")
    )]
    Host { host: String },
    #[error(
        "plain http:// to `{host}` would send the key unencrypted; only a host the operator allowed with --allow-provider-host http://HOST[:PORT] may use it"
    )]
    PlainHttp { host: String },
    #[error("the scheme `{0}` is not https")]
    Scheme(String),
    #[error(
        "other URL parsers (authentik's, a browser's) may read another host out of it than stagesync checked: write the host plainly, without a backslash, white space, user info (`user@`), percent-encoding or non-ASCII letters (punycode is fine)"
    )]
    Ambiguous,
    #[error("it has no host")]
    NoHost,
}

impl ProviderHosts {
    /// The built-in providers plus `added`, each `HOST`, `HOST:PORT`,
    /// `http://HOST` or `http://HOST:PORT` (`https://` may be written too).
    pub(crate) fn new(added: &[String]) -> Result<Self, PolicyError> {
        let added = added
            .iter()
            .map(|spec| parse_added(spec).ok_or_else(|| PolicyError::ProviderHost(spec.clone())))
            .collect::<Result<_, _>>()?;
        Ok(ProviderHosts { added })
    }

    /// May `url` be a stage's `js_url` or `api_url` (and so receive its key)?
    pub(crate) fn check(&self, url: &Url) -> Result<(), HostRefused> {
        let scheme = url.scheme();
        if !matches!(scheme, "https" | "http") {
            return Err(HostRefused::Scheme(scheme.to_owned()));
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.to_ascii_lowercase(),
            _ => return Err(HostRefused::NoHost),
        };
        let port = url.port();
        let added = self.added.iter().find(|a| a.host == host && a.port == port);
        if scheme == "http" {
            return match added {
                Some(a) if a.http => Ok(()),
                _ => Err(HostRefused::PlainHttp {
                    host: with_port(&host, port),
                }),
            };
        }
        if added.is_some() || (port.is_none() && BUILT_IN_PROVIDER_HOSTS.contains(&host.as_str())) {
            return Ok(());
        }
        Err(HostRefused::Host {
            host: with_port(&host, port),
        })
    }

    /// [`Self::check`] of a URL as a manifest writes it. authentik stores the
    /// string as written and other parsers read it (Python's for `api_url`,
    /// every visitor's browser for `js_url`); they agree with this one only on
    /// a plainly written authority. `https://www.google.com\@evil.example/` is
    /// `www.google.com` to a WHATWG parser (a backslash is a slash) and
    /// `evil.example` to Python's: anything but `host` or `host:port`, written
    /// as parsed, is refused.
    pub(crate) fn check_str(&self, url: &str) -> Result<(), HostRefused> {
        let parsed = Url::parse(url).map_err(|_| HostRefused::NoHost)?;
        self.check(&parsed)?;
        let plain = !url
            .chars()
            .any(|c| c == '\\' || c.is_whitespace() || c.is_control());
        let as_parsed = match (written_authority(url), parsed.host_str()) {
            (Some(written), Some(host)) => {
                let written = written.to_ascii_lowercase();
                written == host
                    || parsed
                        .port_or_known_default()
                        .is_some_and(|port| written == format!("{host}:{port}"))
            }
            _ => false,
        };
        if plain && as_parsed {
            Ok(())
        } else {
            Err(HostRefused::Ambiguous)
        }
    }
}

/// The authority of `url` as written: between `scheme://` and the first `/`,
/// `?` or `#`.
fn written_authority(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

fn with_port(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn parse_added(spec: &str) -> Option<AddedHost> {
    let spec = spec.trim();
    let lower = spec.to_ascii_lowercase();
    let (http, rest) = if let Some(rest) = lower.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("https://") {
        (false, rest)
    } else {
        (false, lower.as_str())
    };
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) || rest.contains("://") {
        return None;
    }
    // Parse as a URL so the host is normalised exactly as the manifests' are.
    let scheme = if http { "http" } else { "https" };
    let url = Url::parse(&format!("{scheme}://{rest}/")).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(AddedHost {
        host,
        port: url.port(),
        http,
    })
}

impl fmt::Display for ProviderHosts {
    /// The allowed hosts, built in first, for messages and `--help`-like output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<String> = BUILT_IN_PROVIDER_HOSTS.map(str::to_owned).to_vec();
        for a in &self.added {
            let host = with_port(&a.host, a.port);
            all.push(if a.http {
                format!("http://{host}")
            } else {
                host
            });
        }
        f.write_str(&all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(added: &[&str]) -> ProviderHosts {
        ProviderHosts::new(&added.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn built_in_providers_pass_on_https_only() {
        let h = hosts(&[]);
        for url in [
            "https://www.google.com/recaptcha/api.js",
            "https://www.recaptcha.net/recaptcha/api/siteverify",
            "https://js.hcaptcha.com/1/api.js",
            "https://api.hcaptcha.com/siteverify",
            "https://hcaptcha.com/siteverify",
            "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            "HTTPS://WWW.Google.COM:443/recaptcha/api.js",
        ] {
            assert_eq!(h.check_str(url), Ok(()), "{url}");
        }
        for (url, refused) in [
            ("https://attacker.example/x", "attacker.example"),
            (
                "https://www.google.com@attacker.example/",
                "attacker.example",
            ),
            (
                "https://www.google.com.attacker.example/",
                "www.google.com.attacker.example",
            ),
            ("https://google.com/recaptcha/api.js", "google.com"),
            ("https://www.google.com:8443/", "www.google.com:8443"),
        ] {
            assert_eq!(
                h.check_str(url),
                Err(HostRefused::Host {
                    host: refused.into()
                }),
                "{url}"
            );
        }
        assert_eq!(
            h.check_str("http://www.google.com/recaptcha/api/siteverify"),
            Err(HostRefused::PlainHttp {
                host: "www.google.com".into()
            })
        );
        assert!(h.check_str("ftp://www.google.com/").is_err());
    }

    #[test]
    fn a_url_other_parsers_may_read_differently_is_refused() {
        let h = hosts(&["captcha.internal:8443", "[::1]:9000"]);
        for url in [
            "https://www.google.com\\@evil.test/recaptcha/api/siteverify",
            "https://www.google.com/recaptcha\\api.js",
            "https://user@www.google.com/recaptcha/api.js",
            "https://www.google.com@www.google.com/",
            "https://www.google%2ecom/recaptcha/api.js",
            "https://www.goo\tgle.com/",
            "https://www.google.com\n/",
            "https://www.google.com:/recaptcha/api.js",
            "https://www.google.com/recaptcha /api.js",
            "https://www.google.com/recaptcha\u{7f}/api.js",
            "https://www.google.com/\u{2028}",
            "https://www.goo\u{ad}gle.com/",
            "https://ｗｗｗ.google.com/",
            "https://captcha.internal:08443/",
        ] {
            assert_eq!(h.check_str(url), Err(HostRefused::Ambiguous), "{url}");
        }
        // Where this parser already sees a foreign host, that is the refusal.
        for url in [
            "https://evil.test\\.www.google.com/",
            "https://www.google.com%2f@evil.test/",
        ] {
            assert_eq!(
                h.check_str(url),
                Err(HostRefused::Host {
                    host: "evil.test".into()
                }),
                "{url}"
            );
        }
        for url in [
            "HTTPS://WWW.Google.COM:443/recaptcha/api.js",
            "https://www.google.com?x=1",
            "https://www.google.com#f",
            "https://captcha.internal:8443/v?a=b@c",
            "https://[::1]:9000/siteverify",
        ] {
            assert_eq!(h.check_str(url), Ok(()), "{url}");
        }
        assert_eq!(
            written_authority("https://a.example:1/b?c#d"),
            Some("a.example:1")
        );
        assert_eq!(written_authority("https://a.example"), Some("a.example"));
        assert_eq!(written_authority("a.example"), None);
    }

    #[test]
    fn operator_additions_allow_exactly_their_host_port_and_scheme() {
        let h = hosts(&[
            "captcha.internal",
            "Self.Example:8443",
            "http://127.0.0.1:9000",
        ]);
        assert_eq!(h.check_str("https://captcha.internal/verify"), Ok(()));
        assert!(h.check_str("https://captcha.internal:444/verify").is_err());
        assert!(h.check_str("http://captcha.internal/verify").is_err());
        assert_eq!(h.check_str("https://self.example:8443/v"), Ok(()));
        assert!(h.check_str("https://self.example/v").is_err());
        assert_eq!(h.check_str("http://127.0.0.1:9000/siteverify"), Ok(()));
        assert_eq!(h.check_str("https://127.0.0.1:9000/siteverify"), Ok(()));
        assert!(h.check_str("http://127.0.0.1:9001/siteverify").is_err());
        assert_eq!(
            h.to_string().split(", ").last(),
            Some("http://127.0.0.1:9000")
        );
    }

    #[test]
    fn bad_additions_are_configuration_errors() {
        for spec in ["", "http://", "a/b", "user@host", "ftp://x", "host:port"] {
            assert!(
                ProviderHosts::new(&[spec.to_owned()]).is_err(),
                "{spec:?} accepted"
            );
        }
    }

    #[test]
    fn stagesyncs_own_variables_are_never_allowed() {
        let open = SecretsPolicy::default();
        assert_eq!(open.check_env("HCAPTCHA_SECRET_KEY"), Ok(()));
        for var in ["AUTHENTIK_TOKEN", "STAGESYNC_STATE_FILE", "authentik_token"] {
            assert_eq!(open.check_env(var), Err(EnvRefused::Own(var.into())));
        }
        let narrowed =
            SecretsPolicy::new(Vec::new(), &["*_CAPTCHA_KEY".into(), "AUTHENTIK_*".into()])
                .unwrap();
        assert_eq!(narrowed.check_env("LOGIN_CAPTCHA_KEY"), Ok(()));
        assert!(matches!(
            narrowed.check_env("HOME"),
            Err(EnvRefused::NotAllowed { .. })
        ));
        // An allow pattern cannot reopen stagesync's own variables.
        assert_eq!(
            narrowed.check_env("AUTHENTIK_TOKEN"),
            Err(EnvRefused::Own("AUTHENTIK_TOKEN".into()))
        );
        assert!(SecretsPolicy::new(Vec::new(), &["[".into()]).is_err());
    }

    #[test]
    fn a_path_lies_below_an_allowed_directory_by_either_of_its_names() {
        let dir = AllowedDir {
            given: "/run/secrets".into(),
            canonical: "/run/keys-2026".into(),
        };
        assert_eq!(
            dir.below(Path::new("/run/secrets/a/b")),
            Some(Path::new("a/b"))
        );
        assert_eq!(
            dir.below(Path::new("/run/keys-2026/a")),
            Some(Path::new("a"))
        );
        assert_eq!(dir.below(Path::new("/run/secrets")), None);
        assert_eq!(dir.below(Path::new("/run/secrets-other/a")), None);
        assert_eq!(dir.below(Path::new("/etc/passwd")), None);
        assert_eq!(
            lexical_normal(Path::new("/srv/stages/a/../../x")),
            Path::new("/srv/x")
        );
        assert_eq!(lexical_normal(Path::new("/../a/./b")), Path::new("/a/b"));
    }

    #[test]
    fn a_refusal_names_the_operators_directories_as_written() {
        let open = SecretsPolicy::default();
        let refused = open.refuse_file(Path::new("stages/../x")).to_string();
        assert!(
            refused.starts_with("`!File` stages/../x is refused: it lies outside the manifest directory (the operator can allow"),
            "{refused}"
        );
        let mut with_dir = SecretsPolicy::new(
            vec![AllowedDir {
                given: "/run/secrets".into(),
                canonical: "/run/keys-2026".into(),
            }],
            &[],
        )
        .unwrap();
        with_dir.protect("/etc/stagesync/token".into(), OwnFile::Token);
        let refused = with_dir.refuse_file(Path::new("/etc/passwd")).to_string();
        assert!(
            refused.contains("--secrets-dir directories (/run/secrets)"),
            "{refused}"
        );
        assert_eq!(
            with_dir.own_files(),
            [("/etc/stagesync/token".into(), OwnFile::Token)]
        );
        assert_eq!(with_dir.secrets_dirs()[0].given, Path::new("/run/secrets"));
        assert_eq!(
            OwnFile::Token.to_string(),
            "stagesync's API token file (--token-file)"
        );
        assert_eq!(OwnFile::State.to_string(), "stagesync's state file");
    }
}
