//! Drift you can see, through the real binary against the simulator: who made
//! a drift (authentik's event log), in `plan`'s text, JSON and Markdown and in
//! the daemon's revert line; stagesync's own writes never named; an in-sync
//! plan asks nothing of the log; an unreadable log said once, never an error.

use std::time::Duration;

use serde_json::Value;
use stagesync::simulator::{Actor, SimHandle};
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};
use support::daemon::Harness;

const KEY_VAR: &str = "DRIFT_KEY";
const KEY: &str = "drift-private-key-31c0";
const EVENTS: &str = "/api/v3/events/events/";
const ME: &str = "/api/v3/core/users/me/";

fn event_queries(sim: &SimHandle) -> u64 {
    sim.request_counts().get("GET", EVENTS)
}

/// A workspace with `login` and `signup` applied (stagesync's own writes).
async fn applied() -> (Workspace, SimHandle) {
    let sim = start_sim().await;
    let ws = Workspace::new();
    for name in ["login", "signup"] {
        ws.write(
            &format!("{name}.yaml"),
            &manifest(
                name,
                &format!("site-{name}"),
                KEY_VAR,
                "score_min_threshold: 0.5\n",
            ),
        );
    }
    let out = run(apply(&ws, &sim)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (ws, sim)
}

fn apply(ws: &Workspace, sim: &SimHandle) -> assert_cmd::Command {
    let mut cmd = ws.cmd(sim);
    cmd.env(KEY_VAR, KEY).args(["apply", "--yes"]);
    cmd.arg(ws.stages());
    cmd
}

fn plan(ws: &Workspace, sim: &SimHandle, format: &str) -> assert_cmd::Command {
    let mut cmd = ws.cmd(sim);
    cmd.env(KEY_VAR, KEY).args(["plan", "--format", format]);
    cmd.arg(ws.stages());
    cmd
}

fn uuid_of(sim: &SimHandle, name: &str) -> uuid::Uuid {
    sim.captcha_stages()
        .into_iter()
        .find(|s| s.fields.name == name)
        .expect("live")
        .uuid
}

#[tokio::test]
async fn a_ui_edit_names_its_user_address_and_time_in_every_plan_format() {
    let (ws, sim) = applied().await;
    sim.reset_counts();
    // In sync: no question to the event log.
    let out = run(plan(&ws, &sim, "text")).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(event_queries(&sim), 0, "an in-sync plan asks nothing");
    assert_eq!(sim.request_counts().get("GET", ME), 0);

    let alice = Actor::ui("alice", "192.0.2.7");
    sim.edit_as(&alice, uuid_of(&sim, "login"), |f| {
        f.score_min_threshold = 0.1
    });
    let out = run(plan(&ws, &sim, "text")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("changed by alice from 192.0.2.7 at "))
        .unwrap_or_else(|| panic!("no attribution in:\n{text}"));
    let at = line.rsplit(" at ").next().unwrap().trim();
    assert!(
        humantime::parse_rfc3339(at).is_ok() && at.ends_with('Z') && at.len() == 20,
        "to the second, UTC: {at:?}"
    );
    // The stage stagesync wrote last is in sync, and nobody else is named.
    assert_eq!(text.matches("changed by").count(), 1, "{text}");
    assert_eq!(event_queries(&sim), 1, "one query per drifted object");
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));

    let out = run(plan(&ws, &sim, "json")).await;
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let login = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "login")
        .unwrap();
    assert_eq!(login["changed_by"]["username"], "alice");
    assert_eq!(login["changed_by"]["client_ip"], "192.0.2.7");
    assert_eq!(login["changed_by"]["action"], "model_updated");
    assert_eq!(login["changed_by"]["at"], at);
    assert!(doc.get("changed_by_unknown").is_none());

    let out = run(plan(&ws, &sim, "markdown")).await;
    assert!(
        stdout(&out).contains(&format!("_changed by alice from 192.0.2.7 at {at}_")),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn stagesyncs_own_writes_are_never_named() {
    let (ws, sim) = applied().await;
    // A manifest change: drift from the manifest, not from anyone's edit.
    ws.write(
        "login.yaml",
        &manifest("login", "site-login", KEY_VAR, "score_min_threshold: 0.7\n"),
    );
    let out = run(plan(&ws, &sim, "text")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stdout(&out).contains("changed by"), "{}", stdout(&out));
    assert_eq!(
        event_queries(&sim),
        1,
        "asked, and the answer was stagesync"
    );
    assert_eq!(sim.request_counts().get("GET", ME), 1);

    // The token's user editing in a browser is someone to name.
    sim.edit_as(
        &Actor::ui("akadmin", "198.51.100.9"),
        uuid_of(&sim, "signup"),
        |f| f.interactive = true,
    );
    let out = run(plan(&ws, &sim, "text")).await;
    let text = stdout(&out);
    assert!(
        text.contains("changed by akadmin from 198.51.100.9"),
        "{text}"
    );
    assert_eq!(text.matches("changed by").count(), 1, "{text}");
}

#[tokio::test]
async fn an_unreadable_event_log_says_unknown_once_and_still_plans_and_applies() {
    let (ws, sim) = applied().await;
    let bob = Actor::ui("bob", "192.0.2.8");
    for name in ["login", "signup"] {
        sim.edit_as(&bob, uuid_of(&sim, name), |f| f.score_min_threshold = 0.2);
    }
    sim.set_event_log_readable(false);
    let out = run(plan(&ws, &sim, "text")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("changed by: unknown").count(), 1, "{text}");
    assert!(text.contains("HTTP 403"), "says why: {text}");
    assert!(!text.contains("bob"), "{text}");
    assert!(
        event_queries(&sim) <= 2,
        "at most one query per drifted object"
    );

    let out = run(plan(&ws, &sim, "json")).await;
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert!(
        doc["changed_by_unknown"]
            .as_str()
            .is_some_and(|s| s.contains("event log cannot be read")),
        "{doc}"
    );

    // Expired events: nobody to name, nothing to say, and the revert happens.
    sim.set_event_log_readable(true);
    sim.expire_events();
    let out = run(apply(&ws, &sim)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("changed by"), "{}", stdout(&out));
    assert!(
        sim.captcha_stages()
            .iter()
            .all(|s| s.fields.score_min_threshold == 0.5)
    );
}

#[test]
fn the_daemons_revert_line_names_who_changed_it() {
    let h = Harness::new();
    let mut d = converged(&h, &["--event-poll", "off"]);
    let uuid = h.live("login").unwrap().uuid;
    h.sim
        .edit_as(&Actor::ui("carol", "203.0.113.5"), uuid, |f| {
            f.score_min_threshold = 0.1
        });
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("changed_by=");
    assert!(
        line.contains("updated stage") && line.contains("carol from 203.0.113.5 at "),
        "{line}"
    );
    assert!(line.contains("score_min_threshold: 0.1 -> 0.5"), "{line}");
    h.wait_threshold(&mut d, "login", 0.5);

    // The log turns unreadable: said once, reverts go on.
    h.sim.set_event_log_readable(false);
    for threshold in [0.2, 0.3] {
        h.sim
            .edit_as(&Actor::ui("carol", "203.0.113.5"), uuid, |f| {
                f.score_min_threshold = threshold
            });
        d.signal(libc::SIGHUP);
        d.wait_until("reverted", || h.threshold("login") == Some(0.5));
        std::thread::sleep(Duration::from_millis(50));
    }
    d.wait_for_log("changed_by=unknown");
    assert_eq!(d.count_lines("changed by: unknown"), 1, "{}", d.log());
    assert!(!d.log().contains(support::cli::TOKEN));
}

/// The daemon on `login` (0.5) with `--interval 1h` and `flags`, converged.
fn converged(h: &Harness, flags: &[&str]) -> support::daemon::Daemon {
    h.ws.write(
        "login.yaml",
        &manifest("login", "site-login", KEY_VAR, "score_min_threshold: 0.5\n"),
    );
    let mut all = vec!["--interval", "1h", "--debounce", "200ms"];
    all.extend_from_slice(flags);
    let mut d = h.start_daemon(h.ws.stages(), &all, &[(KEY_VAR, KEY)]);
    h.wait_threshold(&mut d, "login", 0.5);
    d
}

#[test]
fn the_event_poll_reverts_a_ui_edit_within_seconds_at_one_request_per_idle_poll() {
    let h = Harness::new();
    let mut d = converged(&h, &["--event-poll", "1s"]);
    // Idle: one request per poll, nothing else.
    d.wait_for_metric("stagesync_event_polls_total{result=\"success\"}", 1.0);
    h.sim.reset_counts();
    std::thread::sleep(Duration::from_millis(3500));
    let idle = h.sim.request_counts();
    let polls = idle.get("GET", EVENTS);
    assert!(
        (2..=4).contains(&polls),
        "about one poll a second: {idle:?}"
    );
    assert_eq!(
        idle.total(),
        polls,
        "nothing but the poll while idle: {idle:?}"
    );

    let passes = d
        .metric("stagesync_reconciles_total{result=\"success\"}")
        .unwrap();
    let uuid = h.live("login").unwrap().uuid;
    h.sim.edit_as(&Actor::ui("dave", "192.0.2.44"), uuid, |f| {
        f.score_min_threshold = 0.1
    });
    let took = h.wait_threshold(&mut d, "login", 0.5);
    assert!(
        took < Duration::from_secs(1 + 2),
        "reverted within the poll + 2 s, with a resync an hour away: {took:?}"
    );
    let line = d.wait_for_log("changed_by=");
    assert!(line.contains("dave from 192.0.2.44"), "{line}");
    // The poll's own cost is on /metrics.
    assert!(
        d.metric("stagesync_event_poll_duration_seconds")
            .is_some_and(|s| s > 0.0)
    );
    assert_eq!(d.metric("stagesync_event_poll_interval_seconds"), Some(1.0));

    // One pass for the edit; stagesync's own revert is no reason for another.
    d.wait_for_metric(
        "stagesync_reconciles_total{result=\"success\"}",
        passes + 1.0,
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        d.metric("stagesync_reconciles_total{result=\"success\"}"),
        Some(passes + 1.0),
        "{}",
        d.log()
    );
}

#[test]
fn event_poll_off_asks_nothing_and_a_token_without_permission_still_reconciles() {
    let h = Harness::new();
    let d = converged(&h, &["--event-poll", "off"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(h.sim.request_counts().get("GET", EVENTS), 0);
    drop(d);

    let h = Harness::new();
    h.sim.set_event_log_readable(false);
    let mut d = converged(&h, &["--event-poll", "1s"]);
    d.wait_for_log("cannot poll the event log");
    d.wait_for_metric("stagesync_event_polls_total{result=\"failure\"}", 1.0);
    assert_eq!(
        d.metric("stagesync_event_poll_interval_seconds"),
        Some(60.0),
        "a refused poll waits a minute"
    );
    // A resync (here SIGHUP) still reverts, saying who is unknown.
    let uuid = h.live("login").unwrap().uuid;
    h.sim.edit_as(&Actor::ui("erin", "192.0.2.9"), uuid, |f| {
        f.score_min_threshold = 0.3
    });
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "login", 0.5);
    d.wait_for_log("changed_by=unknown");
    assert_eq!(d.count_lines("cannot poll the event log"), 1, "{}", d.log());
}

#[tokio::test]
async fn a_managed_stage_deleted_in_the_ui_names_who_deleted_it() {
    let (ws, sim) = applied().await;
    let login = uuid_of(&sim, "login");
    assert!(sim.delete_as(&Actor::ui("judy", "192.0.2.10"), login));
    let out = run(plan(&ws, &sim, "text")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("+ create"), "{text}");
    assert!(
        text.contains("deleted by judy from 192.0.2.10 at "),
        "{text}"
    );
    let out = run(plan(&ws, &sim, "json")).await;
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let entry = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "login")
        .unwrap();
    assert_eq!(entry["changed_by"]["action"], "model_deleted");
}

#[test]
fn a_slow_event_log_stretches_the_poll_to_fifty_times_its_duration() {
    let h = Harness::new();
    let mut d = converged(&h, &["--event-poll", "1s"]);
    // A large event table: every answer takes 120 ms.
    h.sim.set_latency(Duration::from_millis(120));
    wait_metric(&mut d, "stagesync_event_poll_interval_seconds", |s| {
        s >= 6.0
    });
    let took = d.metric("stagesync_event_poll_duration_seconds").unwrap();
    assert!(took >= 0.12, "{took}");
    // Back to fast: back to the configured poll.
    h.sim.set_latency(Duration::ZERO);
    wait_metric(&mut d, "stagesync_event_poll_interval_seconds", |s| {
        s == 1.0
    });
}

/// Waits (15 s at most) until `series` satisfies `want`.
fn wait_metric(d: &mut support::daemon::Daemon, series: &str, want: impl Fn(f64) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        d.assert_running();
        if d.metric(series).is_some_and(&want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {:?}; log:\n{}",
            d.metric(series),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
