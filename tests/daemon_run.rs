//! `stagesync run` end to end: the real binary as a child process against the
//! simulator on loopback, driven by file edits, out-of-band edits, faults and
//! signals, observed through the simulator's state, the daemon's log and its
//! HTTP endpoints.
//!
//! Every wait polls with a deadline; none sleeps a fixed time to "let things
//! settle", except where the point is that nothing happens. Intervals are long
//! (`1h`) unless the test is about the interval, so a convergence can only have
//! come from the watcher or the signal under test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stagesync::daemon::backoff;
use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::Fault;
use support::cli::TOKEN;
use support::daemon::{self, Daemon, Harness, metric_value};
use support::files::atomic_save;

/// The private key every `!Env` manifest here references.
const KEY_VAR: &str = "CAPTCHA_KEY";
const KEY: &str = "captcha-private-key-9d8e7f6a";
const DEBOUNCE: &str = "200ms";
const PASSES: &str = "stagesync_reconciles_total{result=\"success\"}";
const FAILED_PASSES: &str = "stagesync_reconciles_total{result=\"failure\"}";
const IN_SYNC: &str = "stagesync_stages{status=\"in_sync\"}";

/// How many passes have ended, successful or not.
fn passes_ended(d: &Daemon) -> f64 {
    d.metric(PASSES).unwrap_or(0.0) + d.metric(FAILED_PASSES).unwrap_or(0.0)
}

/// Starts `stagesync run` on `dir` with `--debounce 200ms`, `flags`, `$CAPTCHA_KEY` and `env`.
fn start_on(h: &Harness, dir: PathBuf, flags: &[&str], env: &[(&str, &str)]) -> Daemon {
    let flags: Vec<&str> = ["--debounce", DEBOUNCE]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let env: Vec<(&str, &str)> = [(KEY_VAR, KEY)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    h.start_daemon(dir, &flags, &env)
}

/// Starts `stagesync run` on the workspace's `stages/`.
fn start(h: &Harness, flags: &[&str]) -> Daemon {
    start_on(h, h.ws.stages(), flags, &[])
}

/// A manifest for `name` with `score_min_threshold: threshold`, key from `$CAPTCHA_KEY`.
fn stage_yaml(name: &str, threshold: f64) -> String {
    format!(
        "name: {name}\npublic_key: site-{name}\nprivate_key: !Env {KEY_VAR}\nscore_min_threshold: {threshold}\n"
    )
}

/// A started daemon on `stages/` holding `alpha` (0.5), converged.
fn converged_alpha(h: &Harness, flags: &[&str]) -> Daemon {
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    let mut d = start(h, flags);
    h.wait_threshold(&mut d, "alpha", 0.5);
    d
}

/// The file-driven convergence bound the issue sets, with slack for a loaded
/// test machine: the debounce plus a second, plus one more.
const FILE_CONVERGENCE: Duration = Duration::from_millis(200 + 1000 + 1000);

#[test]
fn start_up_converges_and_logs_each_change_with_stage_and_file() {
    let h = Harness::new();
    h.sim.seed_captcha(
        StageFields {
            score_min_threshold: 0.3,
            ..StageFields::with_defaults("login", "site-login")
        },
        "stale-key",
    );
    h.ws.write("login.yaml", &stage_yaml("login", 0.6));
    h.ws.write("more/signup.yml", &stage_yaml("signup", 0.4));

    let mut d = start(&h, &["--interval", "1h"]);
    let starting = d.wait_for_log("stagesync run starting");
    assert!(
        starting.contains("interval=3600s") && starting.contains("listen=127.0.0.1:0"),
        "{starting}"
    );
    h.wait_threshold(&mut d, "login", 0.6);
    h.wait_threshold(&mut d, "signup", 0.4);
    assert_eq!(d.wait_for_status("/readyz", 200, DEADLINE), "ready\n");

    let signup = h.live("signup").expect("signup live");
    assert_eq!(h.sim.private_key_of(signup.uuid).as_deref(), Some(KEY));
    let created = d.wait_for_log("created stage");
    assert!(
        created.contains("signup") && created.contains("signup.yml"),
        "{created}"
    );
    let updated = d.wait_for_log("updated stage");
    assert!(
        updated.contains("login")
            && updated.contains("login.yaml")
            && updated.contains("score_min_threshold: 0.3 -> 0.6"),
        "{updated}"
    );
    assert_eq!(d.count_lines("created stage"), 1, "{}", d.log());
    assert_eq!(d.count_lines("updated stage"), 1, "{}", d.log());
}

const DEADLINE: Duration = daemon::DEADLINE;

#[test]
fn an_edit_converges_within_the_debounce_plus_a_second() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    let took = h.wait_threshold(&mut d, "alpha", 0.8);
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
}

#[test]
fn an_editors_atomic_save_converges() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    atomic_save(&h.ws.stages().join("alpha.yaml"), &stage_yaml("alpha", 0.7));
    let took = h.wait_threshold(&mut d, "alpha", 0.7);
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
    // And again: the rename replaced the watched file; the next save is seen too.
    atomic_save(&h.ws.stages().join("alpha.yaml"), &stage_yaml("alpha", 0.2));
    h.wait_threshold(&mut d, "alpha", 0.2);
}

#[test]
fn a_file_in_a_new_sub_folder_is_created() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    h.ws.write("team/extra/gamma.yaml", &stage_yaml("gamma", 0.4));
    let took = h.wait_threshold(&mut d, "gamma", 0.4);
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
    let line = d.wait_for_log("team/extra/gamma.yaml");
    assert!(
        line.contains("created stage") && line.contains("stage=gamma"),
        "{line}"
    );
}

#[test]
fn an_out_of_band_edit_is_reverted_within_one_interval() {
    let h = Harness::new();
    // The shortest interval allowed.
    let mut d = converged_alpha(&h, &["--interval", "5s"]);
    let uuid = h.live("alpha").expect("alpha").uuid;
    h.sim.edit(uuid, |f| f.score_min_threshold = 0.1);
    let took = h.wait_threshold(&mut d, "alpha", 0.5);
    // 5 s + 10% jitter, plus a second for the pass itself on a loaded machine.
    assert!(took < Duration::from_millis(6500), "took {took:?}");
}

#[test]
fn an_invalid_file_keeps_its_last_stages_and_recovers_without_a_restart() {
    let h = Harness::new();
    h.ws.write("a.yaml", &stage_yaml("alpha", 0.5));
    h.ws.write("b.yaml", &stage_yaml("beta", 0.5));
    let mut d = start(&h, &["--interval", "1h"]);
    h.wait_threshold(&mut d, "alpha", 0.5);
    h.wait_threshold(&mut d, "beta", 0.5);
    let pid = d.pid();

    // Line 5 is wrong; line 4 changes a value that must not be applied from a
    // broken file.
    h.ws.write(
        "a.yaml",
        &format!("{}score_max_threshold: [oops]\n", stage_yaml("alpha", 0.9)),
    );
    let line = d.wait_for_log("a.yaml:5");
    assert!(line.contains("WARN") || line.contains("ERROR"), "{line}");
    let reason = d.wait_for_status("/readyz", 503, DEADLINE);
    assert!(reason.contains("manifest error"), "{reason}");
    assert_eq!(d.metric("stagesync_manifest_errors"), Some(1.0));

    // alpha drifts in the UI; beta's file changes. The pass this triggers
    // converges beta and puts alpha back to its last valid state.
    let alpha = h.live("alpha").expect("alpha").uuid;
    h.sim.edit(alpha, |f| f.score_min_threshold = 0.1);
    h.ws.write("b.yaml", &stage_yaml("beta", 0.7));
    h.wait_threshold(&mut d, "beta", 0.7);
    h.wait_threshold(&mut d, "alpha", 0.5);
    assert_eq!(
        d.count_lines("a.yaml:5"),
        1,
        "a broken file is logged once, not on every pass:\n{}",
        d.log()
    );

    h.ws.write("a.yaml", &stage_yaml("alpha", 0.9));
    h.wait_threshold(&mut d, "alpha", 0.9);
    d.wait_for_status("/readyz", 200, DEADLINE);
    assert_eq!(d.metric("stagesync_manifest_errors"), Some(0.0));
    assert_eq!(d.pid(), pid);
    d.assert_running();
}

#[test]
fn a_vanished_directory_keeps_the_desired_state_until_it_returns() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_status("/readyz", 200, DEADLINE);
    let away = h.ws.root.path().join("stages.away");
    std::fs::rename(h.ws.stages(), &away).expect("rename away");

    let reason = d.wait_for_status("/readyz", 503, DEADLINE);
    assert!(reason.contains("manifest"), "{reason}");
    let line = d.wait_for_log("source unavailable");
    assert!(line.contains("keeping the last desired state"), "{line}");
    assert_eq!(d.metric("stagesync_source_available"), Some(0.0));

    // The stages are not forgotten: an out-of-band edit is still reverted.
    let alpha = h.live("alpha").expect("alpha").uuid;
    h.sim.edit(alpha, |f| f.score_min_threshold = 0.1);
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "alpha", 0.5);

    std::fs::rename(&away, h.ws.stages()).expect("rename back");
    d.wait_for_status("/readyz", 200, DEADLINE);
    d.wait_for_log("manifest directory is available again");
    assert_eq!(d.metric("stagesync_source_available"), Some(1.0));
    assert_eq!(d.count_lines("source unavailable"), 1, "{}", d.log());
    // And it is watched again.
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.6));
    h.wait_threshold(&mut d, "alpha", 0.6);
}

#[test]
fn an_emptied_directory_is_source_unavailable_not_nothing_desired() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    std::fs::remove_file(h.ws.stages().join("alpha.yaml")).expect("rm");
    let line = d.wait_for_log("source unavailable");
    assert!(line.contains("empty"), "{line}");
    d.wait_for_status("/readyz", 503, DEADLINE);
    let alpha = h.live("alpha").expect("alpha").uuid;
    h.sim.edit(alpha, |f| f.score_min_threshold = 0.1);
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "alpha", 0.5);

    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.6));
    h.wait_threshold(&mut d, "alpha", 0.6);
    d.wait_for_status("/readyz", 200, DEADLINE);
}

#[test]
fn a_renamed_file_keeps_its_stage_and_its_edits_converge() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_metric(PASSES, 1.0);
    let before = d.metric(PASSES).unwrap_or(0.0);
    std::fs::create_dir(h.ws.stages().join("moved")).expect("mkdir");
    let renamed = h.ws.stages().join("moved").join("renamed.yaml");
    std::fs::rename(h.ws.stages().join("alpha.yaml"), &renamed).expect("rename");
    d.wait_for_metric(PASSES, before + 1.0);
    d.wait_for_status("/readyz", 200, DEADLINE);
    assert_eq!(h.threshold("alpha"), Some(0.5));

    std::fs::write(&renamed, stage_yaml("alpha", 0.8)).expect("edit");
    let took = h.wait_threshold(&mut d, "alpha", 0.8);
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
    let line = d.wait_for_log("updated stage");
    assert!(line.contains("moved/renamed.yaml"), "{line}");
}

#[test]
fn a_burst_of_changes_like_a_checkout_is_one_pass() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_metric(PASSES, 1.0);
    let before = d.metric(PASSES).unwrap_or(0.0);
    for i in 0..40 {
        h.ws.write(
            &format!("team-{}/s{i:02}.yaml", i % 4),
            &stage_yaml(&format!("s{i:02}"), 0.5),
        );
    }
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.9));
    h.wait_threshold(&mut d, "alpha", 0.9);
    d.wait_until("all 41 stages live", || h.sim.captcha_stages().len() == 41);
    d.wait_for_metric("stagesync_stages{status=\"in_sync\"}", 41.0);
    let passes = d.metric(PASSES).unwrap_or(0.0) - before;
    // One pass; a second one if the burst straddled the end of the debounce.
    assert!(
        (1.0..=2.0).contains(&passes),
        "{passes} passes for one burst"
    );
}

#[test]
fn a_deleted_manifest_leaves_its_stage_alone() {
    let h = Harness::new();
    h.ws.write("a.yaml", &stage_yaml("alpha", 0.5));
    h.ws.write("b.yaml", &stage_yaml("beta", 0.5));
    let mut d = start(&h, &["--interval", "1h"]);
    h.wait_threshold(&mut d, "alpha", 0.5);
    h.wait_threshold(&mut d, "beta", 0.5);
    d.wait_for_metric("stagesync_stages{status=\"in_sync\"}", 2.0);
    std::fs::remove_file(h.ws.stages().join("b.yaml")).expect("rm");
    d.wait_for_metric_eq("stagesync_stages{status=\"in_sync\"}", 1.0);
    // No longer managed: never deleted, and an edit in the UI stays.
    let beta = h.live("beta").expect("beta is not deleted").uuid;
    h.sim.edit(beta, |f| f.score_min_threshold = 0.1);
    let before = h.sim.request_counts().writes();
    let passes = d.metric(PASSES).unwrap_or(0.0);
    d.signal(libc::SIGHUP);
    d.wait_for_metric(PASSES, passes + 1.0);
    assert_eq!(h.threshold("beta"), Some(0.1));
    assert_eq!(h.sim.request_counts().writes(), before);
    d.wait_for_status("/readyz", 200, DEADLINE);
}

#[test]
fn a_failed_write_is_logged_once_and_retried_after_a_backoff() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    // authentik rejects the next PUT (not retried by the client).
    h.sim
        .inject(Fault::status(400).on("PUT", "/api/v3/stages/captcha/"));
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    let line = d.wait_for_log("write failed");
    assert!(
        line.contains("stage=alpha") && line.contains("alpha.yaml") && line.contains("retry_in"),
        "{line}"
    );
    d.wait_for_metric("stagesync_stages{status=\"failed\"}", 1.0);
    // Still ready: authentik was reached.
    d.wait_for_status("/readyz", 200, DEADLINE);
    // The backed-off retry (5 s, less jitter) converges with no other trigger.
    h.wait_threshold(&mut d, "alpha", 0.8);
    assert_eq!(d.count_lines("write failed"), 1, "{}", d.log());
    d.wait_for_metric(
        "stagesync_writes_total{operation=\"update\",result=\"failure\"}",
        1.0,
    );
}

#[test]
fn an_edit_ends_the_backoff_of_its_own_file_only() {
    let h = Harness::new();
    h.ws.write("beta.yaml", &stage_yaml("beta", 0.5));
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    h.wait_threshold(&mut d, "beta", 0.5);
    let uuid = |name: &str| h.live(name).expect("live stage").uuid;
    let path = |name: &str| format!("/api/v3/stages/captcha/{}/", uuid(name));
    // authentik rejects alpha's next PUT once, beta's every time.
    h.sim
        .inject(Fault::status(400).on("PUT", &path("alpha")).times(1));
    h.sim
        .inject(Fault::status(400).on("PUT", &path("beta")).times(1000));
    const FAILURES: &str = "stagesync_writes_total{operation=\"update\",result=\"failure\"}";

    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    h.ws.write("beta.yaml", &stage_yaml("beta", 0.8));
    d.wait_for_metric(FAILURES, 2.0);
    let failed_at = Instant::now();
    // The pass that failed them has ended once no stage counts as in sync
    // (the gauges are set after the pass is counted): from here on, a pass
    // counted is a later one.
    d.wait_for_metric_eq(IN_SYNC, 0.0);
    let passes = passes_ended(&d);
    // Both are backed off now (5 s less jitter, so at least 4 s). Fixing
    // alpha's file ends alpha's backoff only.
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.9));
    h.wait_threshold(&mut d, "alpha", 0.9);
    // Alpha's write is seen while its pass still runs: wait for the pass to
    // end (and count beta's write, had it been retried).
    let deadline = Instant::now() + DEADLINE;
    while passes_ended(&d) <= passes {
        assert!(
            Instant::now() < deadline,
            "the pass that wrote alpha did not end; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let failures = d.metric(FAILURES);
    assert!(
        failed_at.elapsed() < backoff::BASE_DELAY.mul_f64(1.0 - backoff::JITTER_FRACTION),
        "alpha took {:?}: beta's backoff may have ended meanwhile, nothing is shown",
        failed_at.elapsed()
    );
    assert_eq!(
        failures,
        Some(2.0),
        "beta was written again though only alpha's file changed:\n{}",
        d.log()
    );
    assert_eq!(h.threshold("beta"), Some(0.5));
}

/// Publishes `files` as a new revision the way git-sync does: a new folder,
/// a new symlink to it, renamed over `link`; then the old revision is removed.
fn git_sync_publish(root: &Path, link: &Path, rev: &str, files: &[(&str, String)]) {
    let target = root.join(rev);
    for (name, content) in files {
        let path = target.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
    let old = std::fs::read_link(link).ok();
    let tmp = root.join(".tmp-link");
    std::os::unix::fs::symlink(rev, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("swap the symlink");
    if let Some(old) = old {
        std::fs::remove_dir_all(root.join(old)).expect("remove the old revision");
    }
}

#[test]
fn a_git_sync_symlink_swap_converges_to_the_new_content() {
    let h = Harness::new();
    let root = h.ws.root.path().join("git");
    std::fs::create_dir(&root).expect("mkdir");
    let link = root.join("current");
    git_sync_publish(
        &root,
        &link,
        "rev-1",
        &[("alpha.yaml", stage_yaml("alpha", 0.5))],
    );
    let mut d = start_on(&h, link.clone(), &["--interval", "1h"], &[]);
    h.wait_threshold(&mut d, "alpha", 0.5);

    git_sync_publish(
        &root,
        &link,
        "rev-2",
        &[
            ("alpha.yaml", stage_yaml("alpha", 0.8)),
            ("new/gamma.yaml", stage_yaml("gamma", 0.3)),
        ],
    );
    let took = h.wait_threshold(&mut d, "alpha", 0.8);
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
    h.wait_threshold(&mut d, "gamma", 0.3);

    // A second swap: the new target is watched as well.
    git_sync_publish(
        &root,
        &link,
        "rev-3",
        &[
            ("alpha.yaml", stage_yaml("alpha", 0.2)),
            ("new/gamma.yaml", stage_yaml("gamma", 0.3)),
        ],
    );
    h.wait_threshold(&mut d, "alpha", 0.2);
    d.wait_for_status("/readyz", 200, DEADLINE);
}

#[test]
fn a_directory_that_does_not_exist_yet_is_waited_for() {
    // git-sync's first clone has not happened yet when the daemon starts.
    let h = Harness::new();
    let root = h.ws.root.path().join("git");
    std::fs::create_dir(&root).expect("mkdir");
    let link = root.join("current");
    let mut d = start_on(&h, link.clone(), &["--interval", "1h"], &[]);
    // Before the first pass /readyz says "starting"; the reason is read after it.
    d.wait_for_metric(FAILED_PASSES, 1.0);
    let reason = d.wait_for_status("/readyz", 503, DEADLINE);
    assert_eq!(reason, "not ready: manifest directory unavailable\n");
    // Nothing to do yet: no request but the event poll's.
    let counts = h.sim.request_counts();
    let poll =
        counts.get("GET", "/api/v3/events/events/") + counts.get("GET", "/api/v3/core/users/me/");
    assert_eq!(counts.total() - poll, 0, "nothing to do yet: {counts:?}");
    d.wait_for_log("source unavailable: nothing loaded yet, waiting for it");

    git_sync_publish(
        &root,
        &link,
        "rev-1",
        &[("alpha.yaml", stage_yaml("alpha", 0.5))],
    );
    h.wait_threshold(&mut d, "alpha", 0.5);
    d.wait_for_status("/readyz", 200, DEADLINE);
}

#[test]
fn authentik_failing_keeps_the_daemon_running_and_recovery_converges() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_status("/readyz", 200, DEADLINE);

    h.sim.inject(Fault::status(503).times(1000));
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    // The client retries each call for several seconds before the pass gives up.
    let reason = d.wait_for_status("/readyz", 503, Duration::from_secs(30));
    assert!(reason.contains("authentik"), "{reason}");
    d.assert_running();
    assert_eq!(h.threshold("alpha"), Some(0.5));
    assert_eq!(
        d.count_lines("cannot read live state from authentik"),
        1,
        "{}",
        d.log()
    );

    h.sim.clear_faults();
    // No restart, no file change, no signal: the backed-off retry converges.
    h.wait_threshold(&mut d, "alpha", 0.8);
    d.wait_for_status("/readyz", 200, DEADLINE);
    d.wait_for_log("authentik is reachable again");
    assert_eq!(
        d.count_lines("cannot read live state from authentik"),
        1,
        "{}",
        d.log()
    );
}

#[test]
fn a_lasting_failure_is_logged_once_not_on_every_pass() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    // 403 is not retried by the client, so each pass fails at once.
    h.sim.inject(Fault::status(403).times(1000));
    for n in 1..=3 {
        d.signal(libc::SIGHUP);
        d.wait_for_metric(FAILED_PASSES, f64::from(n));
    }
    assert_eq!(
        d.count_lines("cannot read live state from authentik"),
        1,
        "{}",
        d.log()
    );
    d.wait_for_status("/readyz", 503, DEADLINE);

    h.sim.clear_faults();
    d.signal(libc::SIGHUP);
    d.wait_for_status("/readyz", 200, DEADLINE);
    d.wait_for_log("authentik is reachable again");
    assert_eq!(d.count_lines("authentik is reachable again"), 1);
}

#[test]
fn a_rewritten_file_secret_is_written_to_authentik() {
    let h = Harness::new();
    let key_file = h.ws.root.path().join("keys").join("alpha.key");
    std::fs::create_dir_all(key_file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&key_file, "first-file-key-1111\n").expect("write key");
    h.ws.write(
        "alpha.yaml",
        &format!(
            "name: alpha\npublic_key: site-alpha\nprivate_key: !File {}\n",
            key_file.display()
        ),
    );
    // A key outside the manifest directory is read only from a directory the
    // operator allowed.
    let keys = h.ws.root.path().join("keys");
    let keys = keys.to_str().expect("UTF-8 path");
    let mut d = start(&h, &["--interval", "1h", "--secrets-dir", keys]);
    let key_of = || {
        h.live("alpha")
            .and_then(|s| h.sim.private_key_of(s.uuid))
            .unwrap_or_default()
    };
    d.wait_until("the first key is written", || {
        key_of() == "first-file-key-1111"
    });

    std::fs::write(&key_file, "second-file-key-2222\n").expect("rotate key");
    let took = d.wait_until("the rotated key is written", || {
        key_of() == "second-file-key-2222"
    });
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
    let line = d.wait_for_log("private_key: rotated");
    assert!(
        line.contains("alpha") && line.contains("alpha.yaml"),
        "{line}"
    );

    // Rotated again the way secret managers write: a new file renamed over it.
    let tmp = key_file.with_extension("new");
    std::fs::write(&tmp, "third-file-key-3333\n").expect("write new key");
    std::fs::rename(&tmp, &key_file).expect("rename over the key");
    d.wait_until("the third key is written", || {
        key_of() == "third-file-key-3333"
    });
}

/// Publishes `files` the way the kubelet updates a Secret or ConfigMap
/// volume: a new timestamped folder, `..data` swapped to it, each file a
/// symlink through `..data`.
fn kubelet_publish(volume: &Path, rev: &str, files: &[(&str, &str)]) {
    let target = volume.join(rev);
    std::fs::create_dir_all(&target).expect("mkdir");
    for (name, content) in files {
        std::fs::write(target.join(name), content).expect("write");
        let link = volume.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("symlink");
        }
    }
    let old = std::fs::read_link(volume.join("..data")).ok();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(rev, &tmp).expect("symlink");
    std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).expect("remove the old data");
    }
}

#[test]
fn a_key_in_a_kubernetes_secret_volume_is_rotated() {
    let h = Harness::new();
    let volume = h.ws.root.path().join("keys");
    kubelet_publish(&volume, "..2026_11_28_01", &[("alpha", "first-volume-key")]);
    h.ws.write(
        "alpha.yaml",
        &format!(
            "name: alpha\npublic_key: site-alpha\nprivate_key: !File {}\n",
            volume.join("alpha").display()
        ),
    );
    let mut d = start(
        &h,
        &[
            "--interval",
            "1h",
            "--secrets-dir",
            volume.to_str().expect("UTF-8"),
        ],
    );
    let key_of = || {
        h.live("alpha")
            .and_then(|s| h.sim.private_key_of(s.uuid))
            .unwrap_or_default()
    };
    d.wait_until("the first key is written", || {
        key_of() == "first-volume-key"
    });
    kubelet_publish(
        &volume,
        "..2026_11_28_02",
        &[("alpha", "second-volume-key")],
    );
    let took = d.wait_until("the rotated key is written", || {
        key_of() == "second-volume-key"
    });
    assert!(took < FILE_CONVERGENCE, "took {took:?}");
}

#[test]
fn dry_run_logs_drift_and_counts_it_but_never_writes() {
    let h = Harness::new();
    h.sim.seed_captcha(
        StageFields {
            score_min_threshold: 0.3,
            ..StageFields::with_defaults("alpha", "site-alpha")
        },
        "k",
    );
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
    h.ws.write("beta.yaml", &stage_yaml("beta", 0.5));
    let mut d = start(&h, &["--interval", "1h", "--dry-run"]);

    d.wait_for_log_count("drift found", 2);
    let log = d.log();
    let alpha = log
        .lines()
        .find(|l| l.contains("drift found") && l.contains("alpha"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        alpha.contains("alpha.yaml") && alpha.contains("score_min_threshold: 0.3 -> 0.5"),
        "{alpha}"
    );
    // Its key is unknown to a daemon that never wrote it; nothing claims it was written.
    assert!(
        alpha.contains("private_key: unknown, would be written"),
        "{alpha}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("drift found") && l.contains("beta") && l.contains("create")),
        "{log}"
    );
    d.wait_for_metric("stagesync_stages{status=\"drifted\"}", 2.0);
    d.wait_for_status("/readyz", 200, DEADLINE);

    // Another pass, with a changed manifest: reported, still not written.
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.6));
    d.wait_for_log("0.3 -> 0.6");
    d.wait_for_metric(PASSES, 2.0);
    assert_eq!(h.sim.request_counts().writes(), 0, "dry run wrote");
    assert_eq!(h.threshold("alpha"), Some(0.3));
    assert!(h.live("beta").is_none());
    assert_eq!(
        d.metric("stagesync_writes_total{operation=\"update\",result=\"success\"}"),
        Some(0.0)
    );
}

#[test]
fn sighup_reconciles_at_once() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_metric(PASSES, 1.0);
    let alpha = h.live("alpha").expect("alpha").uuid;
    h.sim.edit(alpha, |f| f.score_min_threshold = 0.1);
    // Nothing reverts it without a trigger (the point of this wait).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.threshold("alpha"), Some(0.1));

    let sent = Instant::now();
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "alpha", 0.5);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    d.wait_for_log("SIGHUP received, reconciling now");
}

#[test]
fn sigterm_and_sigint_exit_zero_within_a_few_seconds() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let h = Harness::new();
        h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
        let mut d = start(&h, &["--interval", "1h", "--listen", "off"]);
        h.wait_threshold(&mut d, "alpha", 0.5);
        d.signal(signal);
        let status = d
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("still running 5 s after {name}; log:\n{}", d.log()));
        assert_eq!(status.code(), Some(0), "{name}: {}", d.log());
        let log = d.log();
        assert!(log.contains(&format!("signal=\"{name}\"")), "{log}");
        assert!(log.contains("stagesync run stopped"), "{log}");
        assert!(log.contains("listen=off"), "{log}");
    }
}

#[test]
fn sigterm_while_authentik_is_failing_does_not_wait_for_the_retries() {
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    h.sim.inject(Fault::status(503).times(1000));
    h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.8));
    // The pass is now reading live state, waiting between retries (the
    // daemon logs retries at DEBUG, so watch the request counter instead).
    d.wait_for_metric(
        "stagesync_api_requests_total{method=\"GET\",status_class=\"5xx\"}",
        1.0,
    );
    let sent = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", d.log()));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
}

/// The metric names in the metrics table of `docs/daemon.md`, except those
/// that exist only with `--verify-keys` (tests/verify.rs reads those from a
/// daemon that checks keys).
fn documented_metrics() -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/daemon.md"))
        .expect("docs/daemon.md");
    doc.lines()
        .filter(|l| !l.contains("with `--verify-keys`"))
        .filter_map(|l| l.strip_prefix("| `stagesync_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("stagesync_{name}"))
        .collect()
}

#[test]
fn metrics_has_every_documented_metric() {
    let names = documented_metrics();
    assert!(names.len() >= 8, "metrics table not found: {names:?}");
    let h = Harness::new();
    let mut d = converged_alpha(&h, &["--interval", "1h"]);
    d.wait_for_metric(PASSES, 1.0);
    let (status, text) = d.get("/metrics");
    assert_eq!(status, 200);
    for name in &names {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "{name} missing from /metrics:\n{text}"
        );
    }
    let get_2xx = metric_value(
        &text,
        "stagesync_api_requests_total{method=\"GET\",status_class=\"2xx\"}",
    );
    assert!(get_2xx.is_some_and(|v| v >= 2.0), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "stagesync_writes_total{operation=\"create\",result=\"success\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "stagesync_stages{status=\"in_sync\"}"),
        Some(1.0),
        "{text}"
    );
    let last = metric_value(
        &text,
        "stagesync_last_successful_reconcile_timestamp_seconds",
    )
    .unwrap_or(0.0);
    assert!(last > 1.7e9, "{text}");
    assert_eq!(d.get("/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn nothing_secret_reaches_the_log_at_trace_level() {
    for format in ["text", "json"] {
        let h = Harness::new();
        let secrets = h.ws.root.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("mkdir");
        let key_file = secrets.join("file-key");
        std::fs::write(&key_file, "file-private-key-3c4d5e\n").expect("write key");
        h.sim.seed_captcha(
            StageFields {
                score_min_threshold: 0.3,
                ..StageFields::with_defaults("alpha", "site-alpha")
            },
            "k",
        );
        h.ws.write("alpha.yaml", &stage_yaml("alpha", 0.5));
        h.ws.write(
            "beta.yaml",
            &format!(
                "name: beta\npublic_key: site-beta\nprivate_key: !File {}\n",
                key_file.display()
            ),
        );
        let mut d = start_on(
            &h,
            h.ws.stages(),
            &[
                "--interval",
                "1h",
                "--log-format",
                format,
                "--secrets-dir",
                secrets.to_str().expect("UTF-8"),
            ],
            &[("RUST_LOG", "trace")],
        );
        h.wait_threshold(&mut d, "alpha", 0.5);
        h.wait_threshold(&mut d, "beta", 0.5);
        std::fs::write(&key_file, "rotated-private-key-6f7a8b\n").expect("rotate");
        d.wait_until("rotated key written", || {
            h.live("beta")
                .and_then(|s| h.sim.private_key_of(s.uuid))
                .is_some_and(|k| k == "rotated-private-key-6f7a8b")
        });
        // A failing write, whose error answer is logged too.
        h.sim
            .inject(Fault::status(400).on("PUT", "/api/v3/stages/captcha/"));
        let alpha = h.live("alpha").expect("alpha").uuid;
        h.sim.edit(alpha, |f| f.score_min_threshold = 0.1);
        d.signal(libc::SIGHUP);
        d.wait_for_log("write failed");
        d.signal(libc::SIGTERM);
        assert!(d.wait_exit(Duration::from_secs(5)).is_some());

        let log = d.log();
        assert!(
            log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
            "{format}: trace level not active"
        );
        for secret in [
            TOKEN,
            KEY,
            "file-private-key-3c4d5e",
            "rotated-private-key-6f7a8b",
        ] {
            assert!(
                !log.contains(secret),
                "{format}: {secret:?} appears in the log"
            );
        }
    }
}

#[test]
fn an_interval_or_debounce_that_would_hammer_authentik_is_a_usage_error() {
    for (flag, value, minimum) in [
        ("--interval", "1ms", "at least 5s"),
        ("--interval", "4s", "at least 5s"),
        ("--debounce", "1ms", "at least 100ms"),
    ] {
        let out = assert_cmd::Command::cargo_bin("stagesync")
            .expect("binary")
            .args(["run", flag, value, "stages"])
            .env("AUTHENTIK_URL", "http://127.0.0.1:9")
            .env("AUTHENTIK_TOKEN", "t")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")) && err.contains(minimum),
            "{flag} {value}: {err}"
        );
    }
}
