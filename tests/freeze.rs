//! Freezes through the real binary against the simulator: `stagesync freeze`
//! holds a running daemon's writes without a restart, the drift found meanwhile
//! is reported and written when the freeze ends; a scheduled window holds
//! writes too; `/metrics` and the log say when a freeze starts and ends.

use std::time::Duration;

use stagesync::simulator::Actor;
use support::cli::{TOKEN, manifest};
use support::daemon::{Daemon, Harness};

const KEY_VAR: &str = "FREEZE_KEY";
const KEY: &str = "freeze-private-key-0c3f";
const FROZEN: &str = "stagesync_frozen";

fn start(h: &Harness, flags: &[&str]) -> Daemon {
    h.ws.write(
        "login.yaml",
        &manifest("login", "site-login", KEY_VAR, "score_min_threshold: 0.5\n"),
    );
    let mut all = vec![
        "--interval",
        "1h",
        "--debounce",
        "200ms",
        "--event-poll",
        "1s",
    ];
    all.extend_from_slice(flags);
    h.start_daemon(h.ws.stages(), &all, &[(KEY_VAR, KEY)])
}

fn freeze(h: &Harness, args: &[&str]) -> String {
    let out = std::process::Command::new(support::daemon::binary())
        .current_dir(h.ws.root.path())
        .env("STAGESYNC_STATE_FILE", h.ws.state_file())
        .env("AUTHENTIK_TOKEN", TOKEN)
        .arg("freeze")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

fn ui_edit(h: &Harness, threshold: f64) {
    let uuid = h.live("login").unwrap().uuid;
    h.sim.edit_as(&Actor::ui("ivan", "192.0.2.7"), uuid, |f| {
        f.score_min_threshold = threshold
    });
}

#[test]
fn a_requested_freeze_holds_writes_and_the_revert_happens_when_it_ends() {
    let h = Harness::new();
    let mut d = start(&h, &[]);
    h.wait_threshold(&mut d, "login", 0.5);
    assert_eq!(d.metric(FROZEN), Some(0.0));

    let said = freeze(&h, &["--for", "4s"]);
    assert!(said.contains("Frozen until"), "{said}");
    let file = format!("{}.freeze", h.ws.state_file().display());
    let mode = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0,
        "owner-only"
    );
    // No restart: the next pass (here the UI edit's) holds its writes.
    ui_edit(&h, 0.1);
    let line = d.wait_for_log("drift found (frozen");
    assert!(line.contains("changed_by=ivan from 192.0.2.7"), "{line}");
    d.wait_for_log("freeze started");
    d.wait_for_metric_eq(FROZEN, 1.0);
    assert!(d.metric("stagesync_freeze_end_timestamp_seconds").unwrap() > 0.0);
    assert_eq!(h.threshold("login"), Some(0.1), "held while frozen");

    // When it ends, a pass writes what was held.
    let took = h.wait_threshold(&mut d, "login", 0.5);
    assert!(took < Duration::from_secs(8), "{took:?}");
    d.wait_for_log("freeze ended");
    d.wait_for_metric_eq(FROZEN, 0.0);

    // A freeze lifted early: drift is written again at the next pass.
    freeze(&h, &["--for", "1h"]);
    ui_edit(&h, 0.2);
    d.wait_for_log_count("drift found (frozen", 2);
    let said = freeze(&h, &["--off"]);
    assert!(said.contains("Freeze lifted"), "{said}");
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "login", 0.5);
}

#[test]
fn a_scheduled_window_holds_writes_while_plans_go_on() {
    let h = Harness::new();
    // Opens every minute for an hour: always open.
    let mut d = start(&h, &["--freeze-window", "* * * * * for 1h"]);
    let line = d.wait_for_log("freeze started");
    assert!(line.contains("freeze window"), "{line}");
    d.wait_for_log("drift found (frozen");
    assert!(h.live("login").is_none(), "not even a create while frozen");
    d.wait_for_metric_eq(FROZEN, 1.0);
}

#[test]
fn bad_freeze_settings_are_refused() {
    let h = Harness::new();
    for (args, says) in [
        (
            vec!["run", "--freeze-window", "0 18 * * FRI", "stages"],
            "expected \"CRON for DURATION\", e.g. \"0 18 * * FRI for 62h\"",
        ),
        (
            vec!["run", "--freeze-window", "never for 2h", "stages"],
            "\"never\" is not a cron expression",
        ),
        (
            vec!["freeze", "--until", "tomorrow"],
            "expected RFC 3339 in UTC",
        ),
        (vec!["freeze"], "--for <DURATION>|--until <TIME>|--off"),
    ] {
        let out = std::process::Command::new(support::daemon::binary())
            .current_dir(h.ws.root.path())
            .env("AUTHENTIK_URL", h.sim.url())
            .env("AUTHENTIK_TOKEN", TOKEN)
            .env("STAGESYNC_STATE_FILE", h.ws.state_file())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(says),
            "{args:?} should say {says:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
