//! `stagesync run` with its log written to a file where the watcher looks:
//! beside the manifest directory (its parent is watched for DIR's own name) or
//! inside it. The log must not feed the watcher: no pass per log line, no log
//! line per file event.
//!
//! The daemon's stderr goes to a real file here (not a pipe), as with
//! `stagesync run ... 2>>/var/log/stagesync.log`; passes are counted through
//! `/metrics`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagesync::simulator::SimHandle;
use support::cli::{TOKEN, Workspace};
use support::daemon::{DEADLINE, Harness, binary, http_get, metric_value};

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

/// `stagesync run` with stderr appended to `log`; killed when dropped.
struct LoggingDaemon {
    child: Child,
    log: PathBuf,
    base: String,
}

impl LoggingDaemon {
    fn start(ws: &Workspace, sim: &SimHandle, log: &Path, rust_log: &str) -> Self {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(binary())
            .current_dir(ws.root.path())
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .env("AUTHENTIK_URL", sim.url())
            .env("AUTHENTIK_TOKEN", TOKEN)
            .env("STAGESYNC_STATE_FILE", ws.state_file())
            .env(KEY_VAR, "captcha-private-key-9d8e7f6a")
            .args(["run", "--interval", "1h", "--debounce", "200ms"])
            .args(["--listen", "127.0.0.1:0"])
            .arg(ws.stages())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("stagesync starts");
        let mut daemon = LoggingDaemon {
            child,
            log: log.to_owned(),
            base: String::new(),
        };
        let line = daemon.wait_until("the HTTP server's log line", |d| {
            d.log_text()
                .lines()
                .find(|l| l.contains("serving /healthz"))
                .map(str::to_owned)
        });
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        daemon.base = format!("http://{addr}");
        daemon
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    fn passes(&self) -> f64 {
        let (_, text) = http_get(&self.base, "/metrics").expect("GET /metrics");
        metric_value(&text, PASSES).unwrap_or(0.0)
    }

    /// Polls `probe` until it gives a value; panics after [`DEADLINE`].
    fn wait_until<T>(&mut self, what: &str, mut probe: impl FnMut(&Self) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = probe(self) {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stagesync exited ({status}) while waiting for {what}");
            }
            assert!(start.elapsed() < DEADLINE, "no {what} within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_passes(&mut self, at_least: f64) {
        self.wait_until(&format!("{at_least} passes"), |d| {
            (d.passes() >= at_least).then_some(())
        });
    }
}

impl Drop for LoggingDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn threshold(sim: &SimHandle, name: &str) -> Option<f64> {
    sim.captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == name)
        .map(|s| s.fields.score_min_threshold)
}

/// After start-up: no pass nobody asked for during [`QUIET`], then an edit of
/// a manifest still converges (the watcher is alive, only the log is ignored).
fn assert_only_manifest_edits_make_passes(d: &mut LoggingDaemon, ws: &Workspace, sim: &SimHandle) {
    d.wait_for_passes(1.0);
    let before = d.passes();
    std::thread::sleep(QUIET);
    let after = d.passes();
    assert_eq!(
        after - before,
        0.0,
        "{} passes in {QUIET:?} with nothing changed but the log",
        after - before
    );

    ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    d.wait_until("the edit to converge", |_| {
        (threshold(sim, "alpha") == Some(0.8)).then_some(())
    });
    d.wait_for_passes(after + 1.0);
}

#[test]
fn a_trace_log_beside_the_manifest_directory_does_not_feed_itself() {
    let h = Harness::new();
    let (ws, sim) = (&h.ws, &h.sim);
    ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    let log = ws.root.path().join("stagesync.log");
    let mut d = LoggingDaemon::start(ws, sim, &log, "trace");
    d.wait_until("alpha to be created", |_| threshold(sim, "alpha"));
    d.wait_for_passes(1.0);

    let size = d.log_len();
    std::thread::sleep(QUIET);
    let grown = d.log_len() - size;
    // Idle at trace, the daemon writes a few lines a second at most (the
    // metrics requests below); the loop wrote tens of megabytes a second.
    assert!(
        grown < 256 * 1024,
        "the log grew by {grown} bytes in {QUIET:?} while idle"
    );
    let text = d.log_text();
    assert!(
        !text.contains("inotify event"),
        "the file watcher's per-event lines are logged at RUST_LOG=trace"
    );
    assert_only_manifest_edits_make_passes(&mut d, ws, sim);
}

#[test]
fn a_debug_log_inside_the_manifest_directory_is_not_a_hint() {
    let h = Harness::new();
    let (ws, sim) = (&h.ws, &h.sim);
    ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    let log = ws.stages().join("stagesync.log");
    let mut d = LoggingDaemon::start(ws, sim, &log, "debug");
    d.wait_until("alpha to be created", |_| threshold(sim, "alpha"));
    assert_only_manifest_edits_make_passes(&mut d, ws, sim);
    assert!(
        d.log_text().contains("reconcile finished"),
        "the passes' debug lines went to the file inside the directory"
    );
}
