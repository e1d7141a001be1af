//! Structured logs on stderr: human text by default, JSON for collectors.
//!
//! `RUST_LOG` sets the filter (default `info`). Whatever it says, the file
//! watcher's own per-event lines stay at `error` unless `RUST_LOG` names their
//! target ([`QUIET_TARGETS`]: `notify=trace`, say): with the log written to a
//! watched folder (the manifest directory's parent is one), each such line is a
//! file event that is logged again, without end; `RUST_LOG=trace` alone must
//! not do that. `notify` also logs harmless INFO/WARN lines whenever a watched
//! folder is deleted, which git-sync does on every publish; real watch errors
//! reach the daemon through its event channel and are logged there.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

const DEFAULT_FILTER: &str = "info";

/// Targets kept at `error` unless `RUST_LOG` names them (or something inside
/// them): the file watcher library, its inotify layer, and our per-event line.
pub(crate) const QUIET_TARGETS: [&str; 3] =
    ["notify", "inotify", crate::daemon::watch::EVENT_LOG_TARGET];

/// The filter for `rust_log` (the value of `RUST_LOG`, if set): it, or the
/// default, with every quiet target it does not name held at `error`.
fn directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_FILTER);
    // A directive is `target[span]=level`, `target=level` or a bare level.
    let named: Vec<&str> = base
        .split(',')
        .filter_map(|directive| {
            let target = directive.split(['=', '[']).next()?.trim();
            directive.contains('=').then_some(target)
        })
        .collect();
    let mut filter = base.to_owned();
    for quiet in QUIET_TARGETS {
        if !named.iter().any(|target| target.starts_with(quiet)) {
            filter.push_str(&format!(",{quiet}=error"));
        }
    }
    filter
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(directives(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(
                anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never,
            )
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: &str = ",notify=error,inotify=error,stagesync::watch::events=error";

    #[test]
    fn the_watchers_lines_stay_quiet_unless_named() {
        assert_eq!(directives(None), format!("info{QUIET}"));
        assert_eq!(directives(Some("  ")), format!("info{QUIET}"));
        assert_eq!(directives(Some("trace")), format!("trace{QUIET}"));
        assert_eq!(
            directives(Some("debug,stagesync=trace")),
            format!("debug,stagesync=trace{QUIET}"),
            "naming the crate does not name its per-event line"
        );
        assert_eq!(
            directives(Some("trace,notify=trace")),
            "trace,notify=trace,inotify=error,stagesync::watch::events=error"
        );
        assert_eq!(
            directives(Some(
                "notify::inotify[x]=debug,stagesync::watch::events=trace"
            )),
            "notify::inotify[x]=debug,stagesync::watch::events=trace,inotify=error"
        );
    }

    #[test]
    fn every_filter_built_parses() {
        for rust_log in [None, Some("trace"), Some("info,notify=warn")] {
            assert!(
                EnvFilter::try_new(directives(rust_log)).is_ok(),
                "{rust_log:?}"
            );
        }
    }
}
