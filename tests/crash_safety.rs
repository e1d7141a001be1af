//! After any stop, lost answer or hung server, the state file and the output
//! tell the truth: the real binary against the simulator, which knows the keys
//! authentik really holds.
//!
//! The check every test ends with ([`plan_tells_the_truth`]): `plan` never calls
//! a key unchanged (nor a stage in sync) when authentik holds another key.

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stagesync::simulator::{Fault, FaultKind};
use support::cli::{manifest, stderr, stdout};
use support::daemon::{DEADLINE, Harness};

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-9876543210";
const CAPTCHA: &str = "/api/v3/stages/captcha/";

/// Writes `n` manifests `stage-NNN` whose key comes from `$KEY`.
fn write_stages(h: &Harness, from: usize, n: usize) {
    for i in from..from + n {
        h.ws.write(
            &format!("stage-{i:03}.yaml"),
            &manifest(&format!("stage-{i:03}"), "site", "KEY", ""),
        );
    }
}

fn apply(h: &Harness, key: &str, flags: &[&str]) -> Output {
    h.ws.cmd(&h.sim)
        .args(["apply", "--yes"])
        .args(flags)
        .arg("stages")
        .env("KEY", key)
        .output()
        .expect("apply runs")
}

fn spawn_apply(h: &Harness, key: &str, flags: &[&str]) -> Child {
    h.ws.std_cmd(&h.sim)
        .args(["apply", "--yes"])
        .args(flags)
        .arg("stages")
        .env("KEY", key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply starts")
}

/// The JSON plan with the manifests' key `$KEY` = `key`.
fn plan_json(h: &Harness, key: &str) -> Value {
    let out =
        h.ws.cmd(&h.sim)
            .args(["plan", "--format", "json", "stages"])
            .env("KEY", key)
            .output()
            .expect("plan runs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("plan JSON: {e}\n{}\n{}", stdout(&out), stderr(&out)))
}

/// Fails if `plan` with `key` calls a stage in sync, or its key unchanged,
/// while authentik holds another key. Returns how many stages it called in sync.
fn plan_tells_the_truth(h: &Harness, key: &str) -> usize {
    let plan = plan_json(h, key);
    let mut in_sync = 0;
    for stage in plan["stages"].as_array().expect("stages") {
        let Some(uuid) = stage["uuid"].as_str() else {
            continue;
        };
        let claims_unchanged = stage["action"] == "in_sync" || stage["private_key"] == "unchanged";
        let real = h.sim.private_key_of(uuid.parse().expect("uuid"));
        if claims_unchanged {
            assert_eq!(
                real.as_deref(),
                Some(key),
                "plan calls {}'s key unchanged, authentik holds another: {stage}",
                stage["name"]
            );
        }
        in_sync += usize::from(stage["action"] == "in_sync");
    }
    in_sync
}

/// Polls `cond` until the deadline.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many stages the simulator holds with `key`.
fn holding(h: &Harness, key: &str) -> usize {
    h.sim
        .captcha_stages()
        .iter()
        .filter(|s| h.sim.private_key_of(s.uuid).as_deref() == Some(key))
        .count()
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Waits for `child` at most `limit`; returns its output and how long it took.
fn wait_exit(mut child: Child, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}\n{}\n{}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (child.wait_with_output().expect("output"), started.elapsed())
}

#[test]
fn a_rotation_whose_answer_is_lost_then_rolled_back_is_not_called_in_sync() {
    let h = Harness::new();
    write_stages(&h, 0, 1);
    assert!(apply(&h, KEY_A, &[]).status.success());

    // authentik makes the PUT and the answer is lost; the retry is refused.
    h.sim
        .inject(Fault::new(FaultKind::LostAnswer).on("PUT", CAPTCHA));
    h.sim.inject(
        Fault::new(FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"name": ["refused on retry"]}"#.to_owned(),
        })
        .on("PUT", CAPTCHA),
    );
    let out = apply(&h, KEY_B, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 updated, 1 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(holding(&h, KEY_B), 1, "authentik did take the new key");

    // The manifest goes back to the old key: not in sync, because it is not.
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 0);
    let plan = plan_json(&h, KEY_A);
    assert_eq!(plan["stages"][0]["private_key"], "unknown", "{plan}");
    let out = apply(&h, KEY_A, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(holding(&h, KEY_A), 1);
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 1);
}

#[test]
fn kill_9_in_the_middle_of_an_apply_leaves_a_state_that_tells_the_truth() {
    let h = Harness::new();
    write_stages(&h, 0, 40);
    assert!(apply(&h, KEY_A, &[]).status.success());
    write_stages(&h, 40, 20);
    // 40 rotations and 20 creates, each answered 150 ms after authentik made
    // it: at 4 at a time, over two seconds of writes.
    h.sim.inject(
        Fault::new(FaultKind::SlowAnswer(Duration::from_millis(150)))
            .on("PUT", CAPTCHA)
            .times(40),
    );
    h.sim.inject(
        Fault::new(FaultKind::SlowAnswer(Duration::from_millis(150)))
            .on("POST", CAPTCHA)
            .times(20),
    );
    h.sim.reset_counts();
    let mut child = spawn_apply(&h, KEY_B, &[]);
    // Well past the first batched save (a second after the first wave).
    wait_until("36 writes", DEADLINE, || {
        h.sim.request_counts().writes() >= 36
    });
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    h.sim.clear_faults();
    let made = holding(&h, KEY_B);
    assert!(made < 60, "the kill came before the end ({made} written)");

    // Writes done before the kill are recorded: some stages read in sync with
    // the new key. None reads unchanged with a key authentik does not hold,
    // whichever key the manifests now ask for.
    let recorded = plan_tells_the_truth(&h, KEY_B);
    assert!(
        recorded > 0,
        "no write before the kill was recorded ({made} made): {}",
        std::fs::read_to_string(h.ws.state_file()).unwrap_or_default()
    );
    assert!(recorded <= made);
    plan_tells_the_truth(&h, KEY_A);

    // The next apply converges, and then everything is known again.
    let out = apply(&h, KEY_A, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(h.sim.captcha_stages().len(), 60);
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 60);
}

#[test]
fn sigterm_with_a_hanging_write_stops_apply_within_the_timeout_with_a_summary() {
    let h = Harness::new();
    write_stages(&h, 0, 3);
    assert!(apply(&h, KEY_A, &[]).status.success());
    let state_file = h.ws.state_file();

    h.sim
        .inject(Fault::new(FaultKind::HangAfterProcessing).on("PUT", CAPTCHA));
    let child = spawn_apply(
        &h,
        KEY_B,
        &["--concurrency", "1", "--shutdown-timeout", "2s"],
    );
    wait_until("the hanging write", DEADLINE, || holding(&h, KEY_B) == 1);
    signal(&child, libc::SIGTERM);
    let (out, took) = wait_exit(child, Duration::from_secs(8));

    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SIGTERM received: starting no more writes"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("abandoned at shutdown without an answer"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Stopped by SIGTERM: 2 not started, 1 abandoned without an answer (their keys are recorded as unknown: the next apply sends them again). The state file {} is saved.",
            state_file.display()
        )),
        "{text}"
    );
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 2);
    assert_eq!(plan_tells_the_truth(&h, KEY_B), 0);
}

#[test]
fn the_daemon_exits_within_the_shutdown_timeout_with_a_hung_authentik_and_saves_the_state() {
    let h = Harness::new();
    write_stages(&h, 0, 2);
    assert!(apply(&h, KEY_A, &[]).status.success());

    h.sim.inject(
        Fault::new(FaultKind::HangAfterProcessing)
            .on("PUT", CAPTCHA)
            .times(100),
    );
    let mut daemon = h.start_daemon(
        h.ws.stages(),
        &["--shutdown-timeout", "3s"],
        &[("KEY", KEY_B)],
    );
    wait_until("the hanging writes", DEADLINE, || holding(&h, KEY_B) == 2);
    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}\n{}",
        daemon.log()
    );
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("abandoning the writes still in flight"),
        "{}",
        daemon.log()
    );
    // Both keys were sent and never confirmed: unknown, under either key.
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 0);
    assert_eq!(plan_tells_the_truth(&h, KEY_B), 0);
}

#[test]
fn a_damaged_state_entry_is_reported_and_reads_as_unknown() {
    let h = Harness::new();
    write_stages(&h, 0, 1);
    assert!(apply(&h, KEY_A, &[]).status.success());
    let path = h.ws.state_file();
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let uuid = state["stages"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    state["stages"][&uuid]["salt"] = Value::String("not hex".into());
    std::fs::write(&path, state.to_string()).unwrap();

    let out =
        h.ws.cmd(&h.sim)
            .args(["plan", "stages"])
            .env("KEY", KEY_A)
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: state file {}: the entry of stage {uuid} is damaged (its salt is not 32 lowercase hex digits); its key reads as unknown and the next apply writes it again",
            path.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(plan_json(&h, KEY_A)["stages"][0]["private_key"], "unknown");
}

#[test]
fn the_daemon_logs_each_write_when_it_completes_not_at_the_end_of_the_pass() {
    let h = Harness::new();
    write_stages(&h, 0, 40);
    // 40 creates answered 150 ms after each is made, 4 at a time: 1.5 s.
    h.sim.inject(
        Fault::new(FaultKind::SlowAnswer(Duration::from_millis(150)))
            .on("POST", CAPTCHA)
            .times(40),
    );
    let mut daemon = h.start_daemon(h.ws.stages(), &[], &[("KEY", KEY_A)]);
    daemon.wait_for_log_count("INFO created stage", 4);
    let creates_sent = h.sim.request_counts().get("POST", CAPTCHA);
    assert!(
        creates_sent < 40,
        "the first lines came only after all {creates_sent} creates were sent"
    );
    daemon.wait_for_log_count("INFO created stage", 40);
}

/// The state file's inventory: the uuids of the stages stagesync manages.
fn managed(h: &Harness) -> Vec<String> {
    let text = std::fs::read_to_string(h.ws.state_file()).unwrap_or_default();
    let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    state["inventory"]
        .as_object()
        .map(|inventory| inventory.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_stage_whose_write_failed_or_was_abandoned_is_not_adopted() {
    // A stage made in the UI that a manifest now names (it differs: an
    // update). Adopting it into the inventory would let `--prune` delete it
    // once its manifest is removed, though stagesync never wrote it.
    let h = Harness::new();
    let found = h.sim.seed_captcha(
        stagesync::kinds::captcha::StageFields::with_defaults("stage-000", "clicked-site"),
        "ui-key",
    );
    write_stages(&h, 0, 1);

    // A write authentik refuses (400): not adopted.
    h.sim.inject(
        Fault::new(FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"public_key": ["refused"]}"#.to_owned(),
        })
        .on("PUT", CAPTCHA),
    );
    let out = apply(&h, KEY_A, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !managed(&h).contains(&found.to_string()),
        "{:?}",
        managed(&h)
    );

    // A write abandoned at shutdown (its answer never came): not adopted.
    h.sim
        .inject(Fault::new(FaultKind::HangAfterProcessing).on("PUT", CAPTCHA));
    let child = spawn_apply(&h, KEY_A, &["--shutdown-timeout", "2s"]);
    wait_until("the hanging write", DEADLINE, || holding(&h, KEY_A) == 1);
    signal(&child, libc::SIGTERM);
    let (out, _) = wait_exit(child, Duration::from_secs(8));
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("abandoned at shutdown without an answer"),
        "{}",
        stdout(&out)
    );
    assert!(
        !managed(&h).contains(&found.to_string()),
        "{:?}",
        managed(&h)
    );

    // Its manifest removed: it is not proposed for deletion, it is unmanaged.
    std::fs::remove_file(h.ws.stages().join("stage-000.yaml")).expect("removed");
    h.ws.write("other.yaml", &manifest("other", "site", "KEY", ""));
    let out =
        h.ws.cmd(&h.sim)
            .args(["plan", "--prune", "stages"])
            .env("KEY", KEY_A)
            .output()
            .expect("plan runs");
    let text = stdout(&out);
    assert!(!text.contains("- delete stage-000"), "{text}");
    assert!(text.contains(&format!("? stage-000 ({found})")), "{text}");

    // A write that succeeds adopts it.
    std::fs::remove_file(h.ws.stages().join("other.yaml")).expect("removed");
    write_stages(&h, 0, 1);
    assert!(apply(&h, KEY_A, &[]).status.success());
    assert!(managed(&h).contains(&found.to_string()));
}

#[test]
fn a_second_sigterm_abandons_the_daemons_writes_at_once_and_still_saves_the_state() {
    let h = Harness::new();
    write_stages(&h, 0, 2);
    assert!(apply(&h, KEY_A, &[]).status.success());

    h.sim.inject(
        Fault::new(FaultKind::HangAfterProcessing)
            .on("PUT", CAPTCHA)
            .times(100),
    );
    // A grace period far longer than the test: only the second signal ends it.
    let mut daemon = h.start_daemon(
        h.ws.stages(),
        &["--shutdown-timeout", "60s"],
        &[("KEY", KEY_B)],
    );
    wait_until("the hanging writes", DEADLINE, || holding(&h, KEY_B) == 2);
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_log("stopping: finishing writes in flight (send it again to abandon them now)");
    // More than 0.5 s later: the operator insisting, not the same stop twice.
    std::thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "took {:?}\n{}",
        signalled.elapsed(),
        daemon.log()
    );
    assert_eq!(status.code(), Some(143), "{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("SIGTERM received again: abandoning the writes in flight now"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("stagesync run stopped"),
        "{}",
        daemon.log()
    );
    // Saved: both keys sent and never confirmed read as unknown.
    assert_eq!(plan_tells_the_truth(&h, KEY_A), 0);
    assert_eq!(plan_tells_the_truth(&h, KEY_B), 0);
}
