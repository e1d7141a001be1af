//! The command line, turned once into a resolved [`Config`].
//!
//! Nothing downstream sees clap types: each subcommand gets a plain config
//! struct of decisions (paths, durations, a [`ClientSettings`] with the token
//! already read). Reading the token and the defaults of paths happen here so that
//! a configuration mistake is reported before anything is contacted.
//!
//! Flags several commands share are one flattened group each, resolved by one
//! function: `ManifestArgs` (validate, verify, plan, apply, run; it holds the
//! operator's `PolicyArgs`, which demo and export flatten too), `ConnectionArgs`
//! (plan, apply, run, export), `StateArgs`, and `ReconcileArgs`, which holds
//! the first three for plan, apply and run and resolves into
//! [`ReconcileConfig`]. A new flag for all of plan, apply and run is one field
//! in `ReconcileArgs` (or the group it belongs to) and one in its resolved
//! config, never three copies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::authentik::ClientSettings;
use crate::plan::{MarkdownFit, PruneSettings};
use crate::policy::{
    AllowedDir, OwnFile, Policy, PolicyError, ProviderHosts, SecretsPolicy, lexical_normal,
};
use crate::secret::{SecretString, Token};

const AFTER_HELP: &str = "\
Exit codes: 0 success / in sync, 1 runtime error, 2 changes pending (plan),
3 invalid manifests or configuration, 4 a saved plan no longer matches (apply
--plan; nothing written), 64 usage error.

Examples:
  stagesync demo                         # try it: built-in simulator, no setup
  stagesync validate stages/             # offline check of the manifests
  AUTHENTIK_URL=https://auth.example.com AUTHENTIK_TOKEN=... stagesync plan
  stagesync apply --yes stages/          # converge authentik
  stagesync run --interval 5m stages/    # keep it converged";

/// `--full-plan-at`: one line of text, short enough to always fit.
fn parse_full_plan_at(s: &str) -> Result<String, String> {
    if s.chars().count() > 300 || s.contains(['\n', '\r']) {
        return Err("one line of at most 300 characters (a URL, or where to look)".to_owned());
    }
    Ok(s.to_owned())
}

/// What `stagesync --version` prints after the name: the version, the git
/// commit the binary was built from (`build.rs`), and the authentik versions
/// the client knows, with the fields only newer ones have (from the kinds'
/// field tables).
pub fn long_version() -> &'static str {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let commit = match option_env!("STAGESYNC_GIT_COMMIT") {
            Some(commit) => format!("commit {commit}"),
            None => "commit unknown (not built from a git checkout)".to_owned(),
        };
        let mut authentik = format!(
            "authentik {} and later",
            crate::capabilities::OLDEST_KNOWN.short()
        );
        for kind in crate::kinds::Kind::ALL {
            for (key, since) in kind.fields_since() {
                authentik.push_str(&format!("; {} {key} from {}", kind.noun(), since.short()));
            }
        }
        format!("{}\n{commit}\n{authentik}", env!("CARGO_PKG_VERSION"))
    });
    &TEXT
}

#[derive(Debug, Parser)]
#[command(name = "stagesync", version, long_version = long_version(), about = "Keeps authentik's Captcha Stages exactly as a directory of YAML manifests says", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: CommandArgs,

    /// Log format on stderr; RUST_LOG sets the level (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// When to colour output (NO_COLOR is honoured with `auto`).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

#[derive(Debug, Subcommand)]
enum CommandArgs {
    /// Check the manifests offline: syntax, fields, duplicates, secret references.
    #[command(
        after_help = "Example:\n  stagesync validate stages/\n\nExit codes: 0 valid, 3 invalid."
    )]
    Validate {
        #[command(flatten)]
        manifests: ManifestArgs,
    },
    /// Show what apply would change (dry run). Exit 2 when changes are pending.
    #[command(
        after_help = "Examples:\n  stagesync plan stages/\n  stagesync plan --format markdown > plan.md\n  stagesync plan --out plan.json stages/   # for apply --plan\n\nExit codes: 0 in sync, 2 changes pending, 1 error, 3 invalid manifests."
    )]
    Plan {
        #[command(flatten)]
        reconcile: ReconcileArgs,
        /// Output format of the plan.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Count a stage whose only difference is a key stagesync has no record
        /// of as in sync: for CI jobs that check pull requests without the state file.
        #[arg(long)]
        ignore_unknown_keys: bool,
        /// Also save the plan to FILE (JSON, no secrets, mode 0600), for `apply --plan FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Also check the key of every stage that would be written with its
        /// captcha provider (api_url), and show the result with the entry.
        #[arg(long)]
        verify_keys: bool,
        /// With --format markdown: at most N characters (default 65536, GitHub's
        /// comment limit; GitLab's is 1000000; at least 2000). Entries that do not
        /// fit are left out, and the last paragraph says how many and where the full plan is.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(MarkdownFit::MIN_CHARS as i64..))]
        max_chars: Option<u32>,
        /// With --format markdown: where the full plan is, said when entries are
        /// left out (e.g. the CI run's URL, with the job log and the plan file).
        #[arg(long, value_name = "TEXT", value_parser = parse_full_plan_at)]
        full_plan_at: Option<String>,
    },
    /// Converge authentik to the manifests: create what is missing, update what drifted.
    #[command(
        after_help = "Examples:\n  stagesync apply stages/          # asks before writing\n  stagesync apply --yes stages/    # in CI\n  stagesync apply --plan plan.json stages/   # exactly the reviewed plan\n\nExit codes: 0 converged, 1 a write failed, 3 invalid manifests (nothing applied),\n4 the saved plan no longer matches what it was made from (nothing applied),\n130/143 stopped by SIGINT/SIGTERM (state saved)."
    )]
    Apply {
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Apply without asking (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// How many writes run at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Apply exactly this saved plan (from `plan --out`), without asking, or
        /// nothing: exit 4 if authentik or the manifests changed since it was made.
        /// A saved plan holds no deletes, so it does not go with --prune.
        #[arg(long, value_name = "FILE", conflicts_with = "prune")]
        plan: Option<PathBuf>,
        /// With --plan: refuse a plan file older than this.
        #[arg(long, default_value = "24h", value_parser = parse_duration, requires = "plan")]
        max_age: Duration,
        #[command(flatten)]
        shutdown: ShutdownArgs,
    },
    /// Keep authentik converged: reconcile on every change and every interval.
    #[command(
        after_help = "Example:\n  stagesync run --interval 5m --listen 0.0.0.0:9810 /config/stages\n\nSIGHUP reconciles at once; SIGTERM/SIGINT give the writes in flight --shutdown-timeout, save the state and exit 0."
    )]
    Run {
        #[command(flatten)]
        reconcile: ReconcileArgs,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[command(flatten)]
        shutdown: ShutdownArgs,
    },
    /// Try stagesync without an authentik: a built-in simulator, plan, apply, then the daemon.
    #[command(
        after_help = "Examples:\n  stagesync demo              # ./stages/ if there is one, else its own example manifests\n  stagesync demo --dir DIR    # your manifests (only read, never edited)\n  # then edit a manifest it names and watch it converge"
    )]
    Demo {
        /// Manifests to demonstrate with (default: ./stages/ if it exists, else
        /// the demo's own examples, written to a temporary directory removed at the end).
        #[arg(value_name = "DIR", conflicts_with = "dir_flag")]
        dir: Option<PathBuf>,
        /// Same as the DIR argument.
        #[arg(long = "dir", value_name = "DIR")]
        dir_flag: Option<PathBuf>,
        /// Address for the daemon's health and metrics endpoints (`off` to disable).
        #[arg(long, default_value = "127.0.0.1:9810", value_parser = parse_listen)]
        listen: Listen,
        /// Stop after the plan / apply / plan phase instead of running the daemon.
        #[arg(long)]
        no_daemon: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Write one manifest per live captcha stage, to adopt existing stages.
    #[command(
        after_help = "Example:\n  stagesync export --dir stages/\n\nPrivate keys are written as `!Env CAPTCHA_<NAME>_PRIVATE_KEY` references."
    )]
    Export {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Where to write the manifests.
        #[arg(long, default_value = "stages")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Check each stage's private key with its captcha provider (the stage's `api_url`).
    #[command(
        after_help = "Example:\n  stagesync verify stages/\n\nSends each key, with a made-up response token, to its stage's api_url only.\n\nExit codes: 0 every key valid, 1 a key invalid or mismatched (or unknown with --strict),\n3 invalid manifests."
    )]
    Verify(VerifyArgs),
    /// Hold the daemon's writes until a time (drift is still found, planned and notified), or lift the hold.
    #[command(
        after_help = "Examples:\n  stagesync freeze --for 2h\n  stagesync freeze --until 2026-12-24T08:00:00Z\n  stagesync freeze --off\n\nWrites STATE_FILE.freeze (owner-only, beside the state file); a `stagesync run` with the same\nstate file holds its writes from its next pass (send it SIGHUP to start at once) and writes the\nheld drift when the freeze ends.",
        group(clap::ArgGroup::new("how").required(true).args(["for_", "until", "off"]))
    )]
    Freeze {
        #[command(flatten)]
        state: StateArgs,
        /// Freeze for this long from now.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        for_: Option<Duration>,
        /// Freeze until this time (RFC 3339, e.g. 2026-12-24T08:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        until: Option<std::time::SystemTime>,
        /// Lift a freeze made with this command (scheduled windows stay).
        #[arg(long)]
        off: bool,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  stagesync completions bash > /etc/bash_completion.d/stagesync"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The manifest directory, for every command that reads manifests. A flag
/// about reading manifests (where secrets may come from) belongs here.
#[derive(Debug, Args)]
struct ManifestArgs {
    /// Directory of manifests (searched recursively for *.yaml / *.yml).
    #[arg(default_value = "stages")]
    dir: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// The operator's policy for untrusted manifests: what they may read and where
/// a key may be sent. Nothing in a manifest can widen it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Manifest policy (manifests are untrusted input)")]
struct PolicyArgs {
    /// Directory whose files `!File` may read, besides the manifest directory
    /// (repeatable; symlinks are resolved before the check).
    #[arg(
        long = "secrets-dir",
        value_name = "DIR",
        env = "STAGESYNC_SECRETS_DIRS",
        value_delimiter = ':'
    )]
    secrets_dirs: Vec<PathBuf>,
    /// Only environment variables matching this glob may be read with `!Env`,
    /// e.g. '*_CAPTCHA_KEY' (repeatable; default: any but AUTHENTIK_* and
    /// STAGESYNC_*, which are never allowed).
    #[arg(
        long = "env-allow",
        value_name = "PATTERN",
        env = "STAGESYNC_ENV_ALLOW",
        value_delimiter = ','
    )]
    env_allow: Vec<String>,
    /// Also allow this captcha provider host in `js_url` and `api_url`
    /// (repeatable): HOST or HOST:PORT for https, http://HOST[:PORT] to allow
    /// plain http too. Built in: www.google.com, www.recaptcha.net,
    /// js.hcaptcha.com, api.hcaptcha.com, hcaptcha.com, challenges.cloudflare.com.
    #[arg(
        long = "allow-provider-host",
        value_name = "HOST[:PORT]",
        env = "STAGESYNC_PROVIDER_HOSTS",
        value_delimiter = ','
    )]
    provider_hosts: Vec<String>,
}

/// What plan, apply and run share: the manifests, how to reach authentik and
/// the state file. A flag these three commands share belongs here, resolved in
/// [`ReconcileArgs::resolve`] into [`ReconcileConfig`].
#[derive(Debug, Args)]
struct ReconcileArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    prune: PruneArgs,
}

/// `--prune` and its guard, for plan, apply and run.
#[derive(Debug, Args)]
struct PruneArgs {
    /// Delete managed stages (created or matched by stagesync) whose manifest
    /// is gone, unless anything uses them (authentik's used_by).
    #[arg(long)]
    prune: bool,
    /// With --prune: delete at most N stages per run (default: 25% of the
    /// managed stages, at least 1). Beyond it nothing is deleted.
    #[arg(long, value_name = "N", requires = "prune")]
    max_deletes: Option<usize>,
}

/// How to reach authentik. The token is read from AUTHENTIK_TOKEN or a file,
/// never from a flag (flags end up in shell history and `ps`).
#[derive(Debug, Args)]
struct ConnectionArgs {
    /// authentik's root URL, e.g. https://auth.example.com
    #[arg(long, env = "AUTHENTIK_URL")]
    url: Option<String>,
    /// Read the API token from this file (default: the AUTHENTIK_TOKEN variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM file with the root certificate of a private CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. Dangerous: only for a throwaway test install.
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// Allow plain http:// to a host that is not loopback.
    #[arg(long)]
    allow_http: bool,
    /// Connect timeout, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Timeout of one request, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Time allowed for one provider to answer, e.g. 10s. No retries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// How many providers are asked at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    concurrency: u16,
    /// Fail (exit 1) when a key could not be checked, too.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Where fingerprints of the written private keys are kept
    /// (default: $XDG_STATE_HOME/stagesync/state.json or ~/.local/state/stagesync/state.json).
    #[arg(long, env = "STAGESYNC_STATE_FILE")]
    state_file: Option<PathBuf>,
}

/// `--shutdown-timeout` (apply and run) defaults to 10 s: well under the 30 s
/// a supervisor (systemd's `TimeoutStopSec`, Kubernetes'
/// `terminationGracePeriodSeconds`) waits before SIGKILL, which would lose the
/// record of the writes in flight.
#[derive(Debug, Args)]
struct ShutdownArgs {
    /// After SIGTERM or SIGINT, how long until the process has exited: writes
    /// in flight get this long (less a moment to save the state), then are
    /// abandoned, their keys recorded as unknown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Full reconcile at least this often (±10% jitter), reverting edits made in the UI; at least 5s.
    #[arg(long, default_value = "5m", value_parser = parse_interval)]
    interval: Duration,
    /// Quiet time after a file change before reconciling; at least 100ms.
    #[arg(long, default_value = "500ms", value_parser = parse_debounce)]
    debounce: Duration,
    /// Poll authentik's event log this often and revert a change made by someone else at once
    /// (waits at least 50 times as long as a poll takes); at least 1s, or `off`.
    #[arg(long, default_value = "5s", value_parser = parse_event_poll)]
    event_poll: EventPollEvery,
    /// Report drift (logs and metrics) but never write.
    #[arg(long)]
    dry_run: bool,
    /// Address for /healthz, /readyz and /metrics, or `off`.
    #[arg(long, default_value = "127.0.0.1:9810", value_parser = parse_listen)]
    listen: Listen,
    /// How many writes run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Check each stage's private key with its captcha provider (api_url) when
    /// first seen and whenever it changes; see the stagesync_key_check metric.
    #[arg(long)]
    verify_keys: bool,
    /// POST a JSON message to this webhook for each event worth attention (drift reverted or
    /// found, a write failing or recovering, a prune done or blocked); repeatable. Also from
    /// $STAGESYNC_NOTIFY (comma-separated). Never logged: webhook URLs carry tokens.
    #[arg(
        long = "notify",
        value_name = "URL",
        env = "STAGESYNC_NOTIFY",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = secret_arg
    )]
    notify: Vec<SecretString>,
    /// Hold writes from each time the cron expression (UTC) matches, for the duration
    /// (e.g. "0 18 * * FRI for 62h"); repeatable. Drift is still reported and notified,
    /// and written when the window ends.
    #[arg(long, value_name = "CRON for DURATION", value_parser = parse_window)]
    freeze_window: Vec<crate::drift::freeze::Window>,
    /// A file of webhook URLs, one per line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "PATH")]
    notify_file: Option<PathBuf>,
    /// The notification body: `json` (the whole message) or `slack` (`{"text": ...}`, also Mattermost).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t)]
    notify_format: crate::drift::notify::Format,
}

/// Output format of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Markdown,
}

/// Output format of a report (`verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour what goes to stdout: `always`, `never`, or with `auto`
    /// only when stdout is a terminal and `NO_COLOR` is not set (anstream
    /// decides, following the NO_COLOR and CLICOLOR conventions).
    fn for_stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
            }
        }
    }
}

/// An HTTP listen address, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    Off,
    On(SocketAddr),
}

impl Listen {
    pub(crate) fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::On(addr) => Some(addr),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::On)
        .map_err(|_| format!("expected an address such as 127.0.0.1:9810, or `off`; got {s:?}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// The shortest `--interval`. A full pass reads every page of the captcha
/// list (about 200 ms of authentik's time per 100 stages on one worker): at
/// 1,000 stages, a pass every 5 s keeps a worker 40% busy, and anything much
/// shorter would take it over. Reverting a UI edit within seconds is not worth
/// that; file changes are acted on at once anyway.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `--debounce`: an editor's save is a burst of events within a
/// few milliseconds; below 100 ms one save could start several passes.
pub(crate) const MIN_DEBOUNCE: Duration = Duration::from_millis(100);

fn parse_interval(s: &str) -> Result<Duration, String> {
    at_least(
        parse_duration(s)?,
        MIN_INTERVAL,
        "so as not to hammer authentik",
    )
}

/// The webhook receivers of `--notify`, `$STAGESYNC_NOTIFY` and `--notify-file`,
/// each an `http(s)` URL. A URL is never repeated in an error: it carries a token.
/// A flag's value held as a secret from the start, so no `Debug` of the
/// parsed flags can show it (webhook URLs carry tokens).
fn secret_arg(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

fn resolve_notify(
    given: Vec<SecretString>,
    file: Option<&Path>,
) -> Result<Vec<SecretString>, ConfigError> {
    let mut urls: Vec<(String, String)> = given
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            (
                format!("--notify value {}", i + 1),
                secrecy::ExposeSecret::expose_secret(&u).to_owned(),
            )
        })
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::NotifyFile {
            path: path.to_owned(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                urls.push((format!("{}:{}", path.display(), n + 1), line.to_owned()));
            }
        }
    }
    urls.into_iter()
        .filter(|(_, u)| !u.trim().is_empty())
        .map(|(at, u)| {
            let u = u.trim().to_owned();
            match url::Url::parse(&u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                    Ok(SecretString::from(u))
                }
                _ => Err(ConfigError::NotifyUrl(at)),
            }
        })
        .collect()
}

/// `--event-poll`: how often, or `off` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventPollEvery(Option<Duration>);

/// `--event-poll`: a duration of at least a second, or `off`.
fn parse_event_poll(s: &str) -> Result<EventPollEvery, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(EventPollEvery(None));
    }
    at_least(
        parse_duration(s)?,
        crate::drift::poll::MIN_EVERY,
        "each poll is a request to authentik",
    )
    .map(|d| EventPollEvery(Some(d)))
}

fn parse_debounce(s: &str) -> Result<Duration, String> {
    at_least(
        parse_duration(s)?,
        MIN_DEBOUNCE,
        "so that one save starts one pass",
    )
}

fn at_least(d: Duration, min: Duration, why: &str) -> Result<Duration, String> {
    if d < min {
        return Err(format!(
            "must be at least {} ({why})",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

/// Everything a run of stagesync decided from its command line and environment.
#[derive(Debug)]
pub struct Config {
    pub(crate) command: Command,
    pub log_format: LogFormat,
    /// Whether to colour stdout, decided once from `--color`, the terminal and
    /// `NO_COLOR`.
    pub(crate) color: bool,
}

#[derive(Debug)]
pub(crate) enum Command {
    Validate(ValidateConfig),
    Plan(PlanConfig),
    Apply(ApplyConfig),
    Run(RunConfig),
    Demo(DemoConfig),
    Export(ExportConfig),
    Verify(VerifyConfig),
    Freeze(FreezeConfig),
    Completions(clap_complete::Shell),
}

/// `stagesync freeze`: the freeze file, and until when (`None`: lift it).
#[derive(Debug)]
pub(crate) struct FreezeConfig {
    pub(crate) file: PathBuf,
    pub(crate) until: Option<std::time::SystemTime>,
}

/// Where `stagesync freeze` writes and `run` reads a requested freeze: the
/// state file's path with `.freeze` appended.
pub(crate) fn freeze_file(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".freeze");
    PathBuf::from(name)
}

fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    crate::drift::freeze::parse_until(s)
        .map_err(|e| format!("{e} (expected RFC 3339 in UTC, e.g. 2026-12-24T08:00:00Z)"))
}

fn parse_window(s: &str) -> Result<crate::drift::freeze::Window, String> {
    crate::drift::freeze::Window::parse(s)
}

#[derive(Debug)]
pub(crate) struct ValidateConfig {
    pub(crate) dir: PathBuf,
    pub(crate) policy: Policy,
}

/// What plan, apply and run share.
#[derive(Debug)]
pub(crate) struct ReconcileConfig {
    /// The manifest directory.
    pub(crate) dir: PathBuf,
    /// What the manifests may read and where their keys may go.
    pub(crate) policy: Policy,
    pub(crate) client: ClientSettings,
    pub(crate) state_file: PathBuf,
    /// `--prune`, `--max-deletes`.
    pub(crate) prune: PruneSettings,
}

#[derive(Debug)]
pub(crate) struct PlanConfig {
    pub(crate) reconcile: ReconcileConfig,
    pub(crate) format: Format,
    pub(crate) ignore_unknown_keys: bool,
    /// Where to save the plan file, if anywhere.
    pub(crate) out: Option<PathBuf>,
    pub(crate) verify_keys: bool,
    /// How long the Markdown may get, and where the full plan is.
    pub(crate) fit: MarkdownFit,
}

#[derive(Debug)]
pub(crate) struct ApplyConfig {
    pub(crate) reconcile: ReconcileConfig,
    pub(crate) format: Format,
    pub(crate) yes: bool,
    pub(crate) concurrency: usize,
    /// Apply this saved plan instead of planning.
    pub(crate) plan_file: Option<PathBuf>,
    /// How old a saved plan may be.
    pub(crate) max_age: Duration,
    pub(crate) shutdown_timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct RunConfig {
    pub(crate) reconcile: ReconcileConfig,
    pub(crate) interval: Duration,
    pub(crate) debounce: Duration,
    /// `--event-poll`; `None` when off.
    pub(crate) event_poll: Option<Duration>,
    /// `--notify`, `$STAGESYNC_NOTIFY`, `--notify-file`: secrets (tokens in URLs).
    pub(crate) notify: Vec<SecretString>,
    pub(crate) notify_format: crate::drift::notify::Format,
    /// `--freeze-window`.
    pub(crate) freeze_windows: Vec<crate::drift::freeze::Window>,
    pub(crate) dry_run: bool,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) concurrency: usize,
    pub(crate) verify_keys: bool,
    pub(crate) shutdown_timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct DemoConfig {
    pub(crate) dir: PathBuf,
    /// No directory was named: when `dir` (`stages`) does not exist, the demo
    /// writes its embedded example manifests to a temporary directory.
    pub(crate) embedded_if_missing: bool,
    pub(crate) policy: Policy,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) daemon: bool,
}

#[derive(Debug)]
pub(crate) struct ExportConfig {
    pub(crate) policy: Policy,
    pub(crate) client: ClientSettings,
    pub(crate) dir: PathBuf,
    pub(crate) force: bool,
}

#[derive(Debug)]
pub(crate) struct VerifyConfig {
    pub(crate) dir: PathBuf,
    pub(crate) policy: Policy,
    pub(crate) format: ReportFormat,
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) strict: bool,
}

/// A configuration that cannot work; reported with exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no authentik URL: pass --url or set AUTHENTIK_URL")]
    MissingUrl,
    #[error("no API token: set AUTHENTIK_TOKEN or pass --token-file PATH")]
    MissingToken,
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("AUTHENTIK_TOKEN is set but empty")]
    EmptyTokenVar,
    #[error(
        "no default state file location: set STAGESYNC_STATE_FILE, XDG_STATE_HOME or HOME, or pass --state-file"
    )]
    NoStateDir,
    #[error("--secrets-dir {}: {source}", .path.display())]
    SecretsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0}: not an http:// or https:// URL with a host (the value is not shown: webhook URLs carry tokens)"
    )]
    NotifyUrl(String),
    #[error("cannot read the notification receivers file {}: {source}", .path.display())]
    NotifyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--max-chars and --full-plan-at shape a Markdown plan: they go with --format markdown")]
    MarkdownOnly,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl Cli {
    /// Resolves flags and environment into decisions. Reads the token file.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var_os(name);
        let command = match self.command {
            CommandArgs::Validate { manifests } => Command::Validate(ValidateConfig {
                dir: manifests.dir,
                policy: manifests.policy.resolve()?,
            }),
            CommandArgs::Plan {
                reconcile,
                format,
                ignore_unknown_keys,
                out,
                verify_keys,
                max_chars,
                full_plan_at,
            } => {
                if format != Format::Markdown && (full_plan_at.is_some() || max_chars.is_some()) {
                    return Err(ConfigError::MarkdownOnly);
                }
                Command::Plan(PlanConfig {
                    reconcile: reconcile.resolve(env)?,
                    format,
                    ignore_unknown_keys,
                    fit: MarkdownFit {
                        max_chars: max_chars.map_or(MarkdownFit::GITHUB_COMMENT, |n| n as usize),
                        full_plan_at,
                        plan_file: out.as_ref().map(|p| p.display().to_string()),
                    },
                    out,
                    verify_keys,
                })
            }
            CommandArgs::Apply {
                reconcile,
                format,
                yes,
                concurrency,
                plan,
                max_age,
                shutdown,
            } => Command::Apply(ApplyConfig {
                reconcile: reconcile.resolve(env)?,
                format,
                yes,
                concurrency: concurrency.into(),
                plan_file: plan,
                max_age,
                shutdown_timeout: shutdown.shutdown_timeout,
            }),
            CommandArgs::Run {
                reconcile,
                daemon,
                shutdown,
            } => Command::Run(RunConfig {
                reconcile: reconcile.resolve(env)?,
                interval: daemon.interval,
                debounce: daemon.debounce,
                event_poll: daemon.event_poll.0,
                notify: resolve_notify(daemon.notify, daemon.notify_file.as_deref())?,
                notify_format: daemon.notify_format,
                freeze_windows: daemon.freeze_window,
                dry_run: daemon.dry_run,
                listen: daemon.listen.addr(),
                concurrency: daemon.concurrency.into(),
                verify_keys: daemon.verify_keys,
                shutdown_timeout: shutdown.shutdown_timeout,
            }),
            CommandArgs::Demo {
                dir,
                dir_flag,
                listen,
                no_daemon,
                policy,
            } => Command::Demo(DemoConfig {
                embedded_if_missing: dir.is_none() && dir_flag.is_none(),
                dir: dir_flag.or(dir).unwrap_or_else(|| PathBuf::from("stages")),
                policy: policy.resolve()?,
                listen: listen.addr(),
                daemon: !no_daemon,
            }),
            CommandArgs::Export {
                connection,
                dir,
                force,
                policy,
            } => Command::Export(ExportConfig {
                policy: policy.resolve()?,
                client: connection.resolve()?,
                dir,
                force,
            }),
            CommandArgs::Verify(args) => Command::Verify(VerifyConfig {
                dir: args.manifests.dir,
                policy: args.manifests.policy.resolve()?,
                format: args.format,
                timeout: args.timeout,
                concurrency: args.concurrency.into(),
                strict: args.strict,
            }),
            CommandArgs::Freeze {
                state,
                for_,
                until,
                off,
            } => Command::Freeze(FreezeConfig {
                file: freeze_file(&state.resolve(env)?),
                until: match (off, for_) {
                    (true, _) => None,
                    (false, Some(d)) => Some(std::time::SystemTime::now() + d),
                    (false, None) => until,
                },
            }),
            CommandArgs::Completions { shell } => Command::Completions(shell),
        };
        Ok(Config {
            command,
            log_format: self.log_format,
            color: self.color.for_stdout(),
        })
    }
}

impl ReconcileArgs {
    fn resolve(
        self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<ReconcileConfig, ConfigError> {
        let mut policy = self.manifests.policy.resolve()?;
        let state_file = self.state.resolve(env)?;
        policy.secrets.protect(state_file.clone(), OwnFile::State);
        if let Some(token_file) = &self.connection.token_file {
            policy.secrets.protect(token_file.clone(), OwnFile::Token);
        }
        Ok(ReconcileConfig {
            dir: self.manifests.dir,
            policy,
            client: self.connection.resolve()?,
            state_file,
            prune: PruneSettings {
                enabled: self.prune.prune,
                max_deletes: self.prune.max_deletes,
                from_plan_file: false,
            },
        })
    }
}

impl PolicyArgs {
    /// The policy, with each `--secrets-dir` made absolute and canonical (a
    /// `!File` path may name it either way); a missing one is an error. The
    /// state file its environment names (or the default one) is protected:
    /// commands that take `--state-file` or `--token-file` protect those too.
    fn resolve(self) -> Result<Policy, ConfigError> {
        let secrets_dirs = self
            .secrets_dirs
            .into_iter()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|path| match std::fs::canonicalize(&path) {
                Ok(canonical) if canonical.is_dir() => Ok(AllowedDir {
                    given: lexical_normal(&std::path::absolute(&path).unwrap_or(path)),
                    canonical,
                }),
                Ok(_) => Err(ConfigError::SecretsDir {
                    path,
                    source: std::io::Error::other("not a directory"),
                }),
                Err(source) => Err(ConfigError::SecretsDir { path, source }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let non_empty = |v: Vec<String>| -> Vec<String> {
            v.into_iter().filter(|s| !s.trim().is_empty()).collect()
        };
        let mut secrets = SecretsPolicy::new(secrets_dirs, &non_empty(self.env_allow))?;
        let env = |name: &str| std::env::var_os(name);
        let state_file = env("STAGESYNC_STATE_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| default_state_file(env));
        if let Some(path) = state_file {
            secrets.protect(path, OwnFile::State);
        }
        Ok(Policy {
            secrets,
            hosts: ProviderHosts::new(&non_empty(self.provider_hosts))?,
        })
    }
}

impl ConnectionArgs {
    fn resolve(self) -> Result<ClientSettings, ConfigError> {
        let url = self
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or(ConfigError::MissingUrl)?;
        let token = match &self.token_file {
            Some(path) => read_token_file(path)?,
            None => match std::env::var("AUTHENTIK_TOKEN") {
                Ok(t) if t.trim().is_empty() => return Err(ConfigError::EmptyTokenVar),
                Ok(t) => SecretString::from(t.trim().to_owned()),
                Err(_) => return Err(ConfigError::MissingToken),
            },
        };
        Ok(ClientSettings {
            url: url.trim().to_owned(),
            token,
            ca_file: self.ca_file,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            allow_http: self.allow_http,
            connect_timeout: self.connect_timeout,
            request_timeout: self.timeout,
        })
    }
}

fn read_token_file(path: &Path) -> Result<Token, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::EmptyTokenFile(path.to_owned()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

impl StateArgs {
    fn resolve(
        self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<PathBuf, ConfigError> {
        if let Some(path) = self.state_file {
            return Ok(path);
        }
        default_state_file(env).ok_or(ConfigError::NoStateDir)
    }
}

/// `$XDG_STATE_HOME/stagesync/state.json`, else `~/.local/state/stagesync/state.json`.
pub(crate) fn default_state_file(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let non_empty = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = non_empty(env("XDG_STATE_HOME"))
        .or_else(|| non_empty(env("HOME")).map(|home| home.join(".local").join("state")))?;
    Some(base.join("stagesync").join("state.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_defaults_follow_xdg_then_home() {
        let xdg = |k: &str| match k {
            "XDG_STATE_HOME" => Some("/x".into()),
            "HOME" => Some("/h".into()),
            _ => None,
        };
        assert_eq!(
            default_state_file(xdg),
            Some(PathBuf::from("/x/stagesync/state.json"))
        );
        let home = |k: &str| (k == "HOME").then(|| "/h".into());
        assert_eq!(
            default_state_file(home),
            Some(PathBuf::from("/h/.local/state/stagesync/state.json"))
        );
        assert_eq!(default_state_file(|_| None), None);
    }

    #[test]
    fn plan_apply_and_run_share_every_connection_and_state_flag() {
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "t0ken\n").unwrap();
        let token = token.path().to_str().unwrap();
        let flags = [
            "--url",
            "https://auth.example.com",
            "--token-file",
            token,
            "--ca-file",
            "ca.pem",
            "--insecure-skip-tls-verify",
            "--allow-http",
            "--connect-timeout",
            "2s",
            "--timeout",
            "9s",
            "--state-file",
            "s.json",
            "manifests",
        ];
        let resolved: Vec<String> = ["plan", "apply", "run"]
            .into_iter()
            .map(|command| {
                let args = ["stagesync", command].into_iter().chain(flags);
                let config = Cli::try_parse_from(args).unwrap().resolve().unwrap();
                let reconcile = match config.command {
                    Command::Plan(cfg) => cfg.reconcile,
                    Command::Apply(cfg) => cfg.reconcile,
                    Command::Run(cfg) => cfg.reconcile,
                    other => panic!("{other:?}"),
                };
                assert_eq!(reconcile.dir, PathBuf::from("manifests"));
                assert_eq!(reconcile.state_file, PathBuf::from("s.json"));
                assert_eq!(reconcile.client.url, "https://auth.example.com");
                assert_eq!(reconcile.client.request_timeout, Duration::from_secs(9));
                format!("{reconcile:?}")
            })
            .collect();
        assert_eq!(resolved[0], resolved[1]);
        assert_eq!(resolved[1], resolved[2]);
    }

    #[test]
    fn listen_accepts_off_and_addresses() {
        assert_eq!(parse_listen("off"), Ok(Listen::Off));
        assert!(matches!(parse_listen("127.0.0.1:9810"), Ok(Listen::On(_))));
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("5s"), Ok(MIN_INTERVAL));
        assert_eq!(
            parse_interval("1ms"),
            Err("must be at least 5s (so as not to hammer authentik)".to_owned())
        );
        assert!(
            parse_debounce("99ms")
                .unwrap_err()
                .contains("at least 100ms")
        );
        assert_eq!(parse_debounce("100ms"), Ok(MIN_DEBOUNCE));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_saved_plan_does_not_go_with_prune() {
        let err =
            Cli::try_parse_from(["stagesync", "apply", "--plan", "p.json", "--prune"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(Cli::try_parse_from(["stagesync", "apply", "--plan", "p.json"]).is_ok());
    }

    #[test]
    fn a_webhook_url_is_never_in_the_parsed_flags_debug() {
        let url = "https://hooks.example/services/T0/B0/hook-token-91c2";
        let cli = Cli::try_parse_from(["stagesync", "run", "--notify", url]).unwrap();
        assert!(!format!("{cli:?}").contains("hook-token-91c2"), "{cli:?}");
    }
}
