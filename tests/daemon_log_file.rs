//! `stagesync run` with its log written to a file where the watcher looks:
//! beside the manifest directory (its parent is watched for DIR's own name) or
//! inside it. The log must not feed the watcher: no pass per log line, no log
//! line per file event.
//!
//! The daemon's stderr goes to a real file here (not a pipe), as with
//! `stagesync run ... 2>>/var/log/stagesync.log`; passes are counted through
//! `/metrics`.

use std::path::Path;
use std::time::Duration;

use support::daemon::{Daemon, DaemonArgs, Harness};

const KEY_VAR: &str = "CAPTCHA_KEY";
const PASSES: &str = "stagesync_reconciles_total{result=\"success\"}";
/// How long to watch for passes nobody asked for: today's loop ran one every
/// debounce (200 ms), 72 in 15 s.
const QUIET: Duration = Duration::from_secs(3);

fn stage_yaml(name: &str, threshold: f64) -> String {
    format!(
        "name: {name}\npublic_key: site-{name}\nprivate_key: !Env {KEY_VAR}\nscore_min_threshold: {threshold}\n"
    )
}

/// `stagesync run` on `stages/` with stderr appended to `log` at `rust_log`.
fn start_logging_to(h: &Harness, log: &Path, rust_log: &str) -> Daemon {
    Daemon::start(DaemonArgs {
        log_file: Some(log.to_owned()),
        ..h.daemon_args(
            h.ws.stages(),
            &["--interval", "1h", "--debounce", "200ms"],
            &[
                ("RUST_LOG", rust_log),
                (KEY_VAR, "captcha-private-key-9d8e7f6a"),
            ],
        )
    })
}

fn passes(d: &Daemon) -> f64 {
    d.metric(PASSES).unwrap_or(0.0)
}

/// After start-up: no pass nobody asked for during [`QUIET`], then an edit of
/// a manifest still converges (the watcher is alive, only the log is ignored).
fn assert_only_manifest_edits_make_passes(h: &Harness, d: &mut Daemon) {
    d.wait_for_metric(PASSES, 1.0);
    let before = passes(d);
    std::thread::sleep(QUIET);
    let after = passes(d);
    assert_eq!(
        after - before,
        0.0,
        "{} passes in {QUIET:?} with nothing changed but the log",
        after - before
    );

    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    h.wait_threshold(d, "alpha", 0.8);
    d.wait_for_metric(PASSES, after + 1.0);
}

#[test]
fn a_trace_log_beside_the_manifest_directory_does_not_feed_itself() {
    let h = Harness::new();
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    let log = h.ws.root.path().join("stagesync.log");
    let mut d = start_logging_to(&h, &log, "trace");
    h.wait_threshold(&mut d, "alpha", 0.5);
    d.wait_for_metric(PASSES, 1.0);

    let log_len = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let size = log_len();
    std::thread::sleep(QUIET);
    let grown = log_len() - size;
    // Idle at trace, the daemon writes a few lines a second at most (the
    // metrics requests below); the loop wrote tens of megabytes a second.
    assert!(
        grown < 256 * 1024,
        "the log grew by {grown} bytes in {QUIET:?} while idle"
    );
    assert!(
        !d.log().contains("inotify event"),
        "the file watcher's per-event lines are logged at RUST_LOG=trace"
    );
    assert_only_manifest_edits_make_passes(&h, &mut d);
}

#[test]
fn a_debug_log_inside_the_manifest_directory_is_not_a_hint() {
    let h = Harness::new();
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    let log = h.ws.stages().join("stagesync.log");
    let mut d = start_logging_to(&h, &log, "debug");
    h.wait_threshold(&mut d, "alpha", 0.5);
    assert_only_manifest_edits_make_passes(&h, &mut d);
    assert!(
        d.log().contains("reconcile finished"),
        "the passes' debug lines went to the file inside the directory"
    );
}
