//! `run --notify`, through the real binary against the simulator and a local
//! webhook receiver: one message per drift reverted, naming who and what;
//! none for stagesync's own writes; a slow or failing receiver never delays a
//! revert; Slack's body; the URL (a token) never shown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use stagesync::simulator::Actor;
use support::cli::{TOKEN, Workspace, manifest};
use support::daemon::{Daemon, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY_VAR: &str = "NOTIFY_KEY";
const KEY: &str = "notify-private-key-77ab";
const HOOK_TOKEN: &str = "hook-secret-5e2d91";

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Status(u16),
    /// Never answers.
    Hang,
}

/// A webhook receiver on loopback, keeping every body it got.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    fn start(h: &Harness, answer: Answer) -> Hook {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let listener = h.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!(
            "http://{}/services/T000/B000/{HOOK_TOKEN}",
            listener.local_addr().unwrap()
        );
        let kept = bodies.clone();
        h.block_on(async move {
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let kept = kept.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        let body = loop {
                            let Ok(n) = stream.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            let text = String::from_utf8_lossy(&buf).into_owned();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let length: usize = text[..end]
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse().unwrap_or(0))
                                    })
                                    .unwrap_or(0);
                                if buf.len() >= end + 4 + length {
                                    break String::from_utf8_lossy(&buf[end + 4..end + 4 + length])
                                        .into_owned();
                                }
                            }
                        };
                        kept.lock().unwrap().push(body);
                        let status = match answer {
                            Answer::Ok => 200,
                            Answer::Status(s) => s,
                            Answer::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                    });
                }
            });
        });
        Hook { url, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    fn messages(&self) -> Vec<Value> {
        self.bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("JSON body"))
            .collect()
    }
}

fn write_login(ws: &Workspace, threshold: f64) {
    ws.write(
        "login.yaml",
        &manifest(
            "login",
            "site-login",
            KEY_VAR,
            &format!("score_min_threshold: {threshold}\n"),
        ),
    );
}

fn start(h: &Harness, flags: &[&str]) -> Daemon {
    write_login(&h.ws, 0.5);
    let mut all = vec![
        "--interval",
        "1h",
        "--debounce",
        "200ms",
        "--event-poll",
        "1s",
    ];
    all.extend_from_slice(flags);
    let mut d = h.start_daemon(h.ws.stages(), &all, &[(KEY_VAR, KEY)]);
    h.wait_threshold(&mut d, "login", 0.5);
    d
}

fn ui_edit(h: &Harness, who: &str, threshold: f64) {
    let uuid = h.live("login").unwrap().uuid;
    h.sim.edit_as(&Actor::ui(who, "192.0.2.7"), uuid, |f| {
        f.score_min_threshold = threshold
    });
}

#[test]
fn a_ui_edit_reverted_sends_one_message_naming_the_user_and_the_fields() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    let mut d = start(&h, &["--notify", &hook.url]);
    ui_edit(&h, "frank", 0.1);
    h.wait_threshold(&mut d, "login", 0.5);
    d.wait_until("the message", || !hook.bodies().is_empty());
    let messages = hook.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["event"], "drift_reverted");
    assert_eq!(m["kind"], "captcha_stage");
    assert_eq!(m["name"], "login");
    assert_eq!(m["changes"][0]["field"], "score_min_threshold");
    assert_eq!(m["changes"][0]["old"], 0.1);
    assert_eq!(m["changes"][0]["new"], 0.5);
    assert_eq!(m["changed_by"]["username"], "frank");
    assert_eq!(m["changed_by"]["client_ip"], "192.0.2.7");
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("changed by frank from 192.0.2.7"),
        "{m}"
    );

    // stagesync's own write (a manifest change) is no drift: no message.
    write_login(&h.ws, 0.6);
    h.wait_threshold(&mut d, "login", 0.6);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(hook.bodies().len(), 1, "{:?}", hook.bodies());
    d.wait_for_metric("stagesync_notifications_total{result=\"delivered\"}", 1.0);

    for body in hook.bodies() {
        assert!(!body.contains(KEY) && !body.contains(TOKEN), "{body}");
    }
    let log = d.log();
    assert!(
        !log.contains(HOOK_TOKEN),
        "the webhook URL is never logged:\n{log}"
    );
    assert!(log.contains("notify_receivers=1"), "{log}");
}

#[test]
fn a_slow_or_failing_receiver_never_delays_a_revert() {
    let h = Harness::new();
    let slow = Hook::start(&h, Answer::Hang);
    let failing = Hook::start(&h, Answer::Status(500));
    let mut d = start(&h, &["--notify", &slow.url, "--notify", &failing.url]);
    for (round, threshold) in [0.1, 0.2, 0.3].into_iter().enumerate() {
        ui_edit(&h, "grace", threshold);
        let took = h.wait_threshold(&mut d, "login", 0.5);
        assert!(
            took < Duration::from_secs(3),
            "round {round}: reverted in {took:?} whatever the receivers do"
        );
    }
    // The failing receiver got each message three times (two retries), then
    // gave up; it is logged once, without its URL.
    d.wait_for_metric("stagesync_notifications_total{result=\"failed\"}", 1.0);
    assert!(failing.bodies().len() >= 3, "{:?}", failing.bodies().len());
    d.wait_for_log("cannot deliver a notification");
    let log = d.log();
    assert_eq!(
        log.matches("cannot deliver a notification").count(),
        1,
        "said once per receiver while failing:\n{log}"
    );
    assert!(!log.contains(HOOK_TOKEN), "{log}");
}

#[test]
fn slack_format_and_dry_run_drift() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    write_login(&h.ws, 0.5);
    h.sim.seed_captcha(
        stagesync::kinds::captcha::StageFields {
            score_min_threshold: 0.5,
            ..stagesync::kinds::captcha::StageFields::with_defaults("login", "site-login")
        },
        KEY,
    );
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--interval",
            "1h",
            "--event-poll",
            "1s",
            "--dry-run",
            "--notify",
            &hook.url,
            "--notify-format",
            "slack",
        ],
        &[(KEY_VAR, KEY)],
    );
    d.wait_for_metric("stagesync_reconciles_total{result=\"success\"}", 1.0);
    ui_edit(&h, "heidi", 0.2);
    d.wait_until("the message", || {
        hook.bodies().iter().any(|b| b.contains("heidi"))
    });
    let bodies = hook.bodies();
    let last: Value =
        serde_json::from_str(bodies.iter().find(|b| b.contains("heidi")).unwrap()).unwrap();
    assert_eq!(last.as_object().unwrap().len(), 1, "{last}");
    let text = last["text"].as_str().unwrap();
    assert!(
        text.contains("found drift (not written)")
            && text.contains("score_min_threshold: 0.2 -&gt; 0.5")
            && text.contains("changed by heidi"),
        "{text}"
    );
    assert_eq!(h.threshold("login"), Some(0.2), "a dry run writes nothing");
}

#[test]
fn a_bad_notify_value_is_refused_without_showing_it() {
    let ws = Workspace::new();
    for (flag, value) in [
        ("--notify", "ftp://x/hook-secret-5e2d91"),
        ("--notify", "hook-secret-5e2d91"),
    ] {
        let out = std::process::Command::new(support::daemon::binary())
            .current_dir(ws.root.path())
            .env("AUTHENTIK_URL", "http://127.0.0.1:9")
            .env("AUTHENTIK_TOKEN", TOKEN)
            .args(["run", flag, value])
            .arg(ws.stages())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("--notify value 1: not an http"), "{err}");
        assert!(!err.contains(HOOK_TOKEN), "{err}");
    }
    // From a file, one per line, named by file and line.
    let file = ws.root.path().join("hooks");
    std::fs::write(
        &file,
        "# team chat\nhttps://chat.example/hook\n\nnot-a-url-hook-secret-5e2d91\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::daemon::binary())
        .current_dir(ws.root.path())
        .env("AUTHENTIK_URL", "http://127.0.0.1:9")
        .env("AUTHENTIK_TOKEN", TOKEN)
        .args(["run", "--notify-file"])
        .arg(&file)
        .arg(ws.stages())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("hooks:4: not an http"), "{err}");
    assert!(!err.contains(HOOK_TOKEN), "{err}");
}

#[test]
fn a_key_check_changing_result_is_notified_once() {
    use stagesync::simulator::provider;
    const GOOD: &str = "provider-good-secret-41";
    const SITE: &str = "site-key-notify";
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    let fake = h.block_on(provider::start(GOOD, SITE)).expect("provider");
    let keys = h.ws.root.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("login.key");
    std::fs::write(&key, "a-wrong-secret-99").unwrap();
    h.ws.write(
        "login.yaml",
        &format!(
            "name: login\npublic_key: {SITE}\nprivate_key: !File {}\napi_url: {}\n",
            key.display(),
            fake.siteverify_url()
        ),
    );
    let allowed = format!("http://{}", fake.addr());
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--interval",
            "1h",
            "--event-poll",
            "off",
            "--verify-keys",
            "--secrets-dir",
            &keys.display().to_string(),
            "--notify",
            &hook.url,
        ],
        &[("STAGESYNC_PROVIDER_HOSTS", &allowed)],
    );
    d.wait_until("the key check's message", || {
        hook.bodies()
            .iter()
            .any(|b| b.contains("key_check_changed"))
    });
    let m: Value = serde_json::from_str(
        hook.bodies()
            .iter()
            .find(|b| b.contains("key_check_changed"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m["name"], "login");
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .starts_with("key check: invalid (was not checked)"),
        "{m}"
    );
    for body in hook.bodies() {
        assert!(
            !body.contains("a-wrong-secret-99") && !body.contains(GOOD),
            "{body}"
        );
    }
    // A resync with the same key: no new check, no new message.
    d.signal(libc::SIGHUP);
    d.wait_for_log_count("SIGHUP received", 1);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        hook.bodies()
            .iter()
            .filter(|b| b.contains("key_check_changed"))
            .count(),
        1
    );
}

#[test]
fn prune_done_and_blocked_are_notified_once_each() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    for name in ["a", "b", "c", "d", "e"] {
        h.ws.write(
            &format!("{name}.yaml"),
            &manifest(name, "site", KEY_VAR, ""),
        );
    }
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--prune",
            "--debounce",
            "200ms",
            "--interval",
            "1h",
            "--event-poll",
            "off",
            "--notify",
            &hook.url,
        ],
        &[(KEY_VAR, KEY)],
    );
    for name in ["a", "b", "c", "d", "e"] {
        d.wait_until(&format!("{name} created"), || h.live(name).is_some());
    }
    // e is bound into a flow: its delete is blocked; d goes.
    let e = h.live("e").unwrap().uuid;
    h.sim.seed_flow_binding(e, "login-flow", "Login", 10);
    std::fs::remove_file(h.ws.stages().join("d.yaml")).unwrap();
    std::fs::remove_file(h.ws.stages().join("e.yaml")).unwrap();
    d.wait_until("d deleted", || h.live("d").is_none());
    d.wait_until("both messages", || {
        let b = hook.bodies();
        b.iter().any(|b| b.contains("prune_done")) && b.iter().any(|b| b.contains("prune_blocked"))
    });
    let messages = hook.messages();
    let done: Vec<&Value> = messages
        .iter()
        .filter(|m| m["event"] == "prune_done")
        .collect();
    assert_eq!(done.len(), 1, "{messages:?}");
    assert_eq!(done[0]["name"], "d");
    let blocked: Vec<&Value> = messages
        .iter()
        .filter(|m| m["event"] == "prune_blocked")
        .collect();
    assert_eq!(blocked[0]["name"], "e");
    assert!(
        blocked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("login-flow"),
        "{}",
        blocked[0]
    );
    // Another pass: still blocked, not notified again.
    d.signal(libc::SIGHUP);
    d.wait_for_log_count("SIGHUP received", 1);
    std::thread::sleep(Duration::from_millis(800));
    let blocked_now = hook
        .bodies()
        .iter()
        .filter(|b| b.contains("prune_blocked"))
        .count();
    assert_eq!(blocked_now, 1);
}

#[test]
fn a_stage_deleted_in_the_ui_is_created_again_and_notified() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    let mut d = start(&h, &["--notify", &hook.url]);
    let uuid = h.live("login").unwrap().uuid;
    assert!(
        h.sim
            .delete_as(&Actor::ui("mallory", "198.51.100.66"), uuid)
    );
    d.wait_until("created again", || {
        h.live("login").is_some_and(|s| s.uuid != uuid)
    });
    d.wait_until("the message", || !hook.bodies().is_empty());
    let m = &hook.messages()[0];
    assert_eq!(m["event"], "drift_reverted");
    assert_eq!(m["change"], "create");
    assert_eq!(m["changed_by"]["username"], "mallory");
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("deleted by mallory from 198.51.100.66"),
        "{m}"
    );
}

#[test]
fn a_write_failing_and_recovering_is_notified_once_each() {
    use stagesync::simulator::Fault;
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    let mut d = start(&h, &["--notify", &hook.url]);
    let path = format!("/api/v3/stages/captcha/{}/", h.live("login").unwrap().uuid);
    // authentik refuses the next two PUTs (a 400 is not retried).
    h.sim.inject(Fault::status(400).on("PUT", &path).times(2));
    ui_edit(&h, "oscar", 0.1);
    d.wait_until("write_failed", || {
        hook.bodies().iter().any(|b| b.contains("write_failed"))
    });
    // The second failure (a later pass) is not news; the recovery is.
    d.signal(libc::SIGHUP);
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "login", 0.5);
    d.wait_until("write_recovered", || {
        hook.bodies().iter().any(|b| b.contains("write_recovered"))
    });
    let events: Vec<String> = hook
        .messages()
        .iter()
        .map(|m| m["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "write_failed").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "write_recovered").count(),
        1,
        "{events:?}"
    );
    let failed = hook
        .messages()
        .into_iter()
        .find(|m| m["event"] == "write_failed")
        .unwrap();
    assert!(
        failed["reason"].as_str().unwrap().contains("400"),
        "{failed}"
    );
}

#[test]
fn a_guard_found_missing_in_a_dry_run_is_notified_as_a_guard() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    h.sim.seed_flow("login-flow", "Welcome");
    h.ws.write(
        "login.yaml",
        &manifest(
            "login",
            "site-login",
            KEY_VAR,
            "score_min_threshold: 0.5\nguards:\n  - flow: login-flow\n    order: 10\n",
        ),
    );
    h.sim.seed_captcha(
        stagesync::kinds::captcha::StageFields {
            score_min_threshold: 0.5,
            ..stagesync::kinds::captcha::StageFields::with_defaults("login", "site-login")
        },
        KEY,
    );
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--interval",
            "1h",
            "--event-poll",
            "off",
            "--dry-run",
            "--notify",
            &hook.url,
        ],
        &[(KEY_VAR, KEY)],
    );
    d.wait_until("the message", || {
        hook.bodies().iter().any(|b| b.contains("login-flow"))
    });
    let message = hook
        .messages()
        .into_iter()
        .find(|m| m.to_string().contains("login-flow"))
        .unwrap();
    assert_eq!(message["kind"], "guard", "{message}");
    assert_eq!(message["event"], "drift_detected", "{message}");
    assert_eq!(message["reason"], "dry run: not written", "{message}");
}

#[test]
fn a_guard_removed_by_its_manifest_or_with_its_pruned_stage_is_notified() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    h.sim.seed_flow("login-flow", "Welcome");
    let guarded = |order: u32| format!("guards:\n  - flow: login-flow\n    order: {order}\n");
    h.ws.write("a.yaml", &manifest("a", "site", KEY_VAR, &guarded(10)));
    h.ws.write("b.yaml", &manifest("b", "site", KEY_VAR, &guarded(20)));
    h.ws.write("keep.yaml", &manifest("keep", "site", KEY_VAR, ""));
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--prune",
            "--debounce",
            "200ms",
            "--interval",
            "1h",
            "--event-poll",
            "off",
            "--notify",
            &hook.url,
        ],
        &[(KEY_VAR, KEY)],
    );
    let bound = |name: &str| {
        h.live(name)
            .is_some_and(|s| h.sim.bindings_of_stage(s.uuid).len() == 1)
    };
    d.wait_until("a and b bound", || bound("a") && bound("b"));
    let b = h.live("b").unwrap().uuid;

    // A pull request takes a's guard away.
    h.ws.write("a.yaml", &manifest("a", "site", KEY_VAR, "guards: []\n"));
    d.wait_until("a unbound", || !bound("a"));
    // Another deletes b's manifest: b goes, with its binding first.
    std::fs::remove_file(h.ws.stages().join("b.yaml")).unwrap();
    d.wait_until("b deleted", || h.live("b").is_none());
    d.wait_until("the messages", || {
        hook.bodies()
            .iter()
            .filter(|b| b.contains("guard_removed"))
            .count()
            == 2
    });
    let messages = hook.messages();
    let removed: Vec<&Value> = messages
        .iter()
        .filter(|m| m["event"] == "guard_removed")
        .collect();
    assert_eq!(removed[0]["kind"], "guard", "{messages:?}");
    assert_eq!(removed[0]["name"], "a in flow login-flow");
    assert_eq!(
        removed[0]["text"],
        format!(
            "stagesync removed guard a in flow login-flow ({}): captcha a was bound to flow login-flow, which its manifest does not list; unbound",
            h.ws.stages().join("a.yaml").display()
        )
    );
    assert_eq!(removed[1]["name"], "b in flow login-flow");
    assert_eq!(
        removed[1]["text"],
        "stagesync removed guard b in flow login-flow: captcha b is pruned: unbound from flow login-flow first"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["event"] == "prune_done" && m["name"] == "b"),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m["event"] == "drift_reverted"),
        "{messages:?}"
    );
    assert!(h.sim.bindings_of_stage(b).is_empty());
}

#[test]
fn a_guard_unbound_in_the_ui_is_bound_again_at_the_next_poll_and_names_who_unbound_it() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    h.sim.seed_flow("login-flow", "Welcome");
    h.ws.write(
        "login.yaml",
        &manifest(
            "login",
            "site-login",
            KEY_VAR,
            "guards:\n  - flow: login-flow\n    order: 10\n",
        ),
    );
    let mut d = h.start_daemon(
        h.ws.stages(),
        &[
            "--interval",
            "1h",
            "--event-poll",
            "1s",
            "--notify",
            &hook.url,
        ],
        &[(KEY_VAR, KEY)],
    );
    let bound = || {
        h.live("login")
            .map(|s| h.sim.bindings_of_stage(s.uuid))
            .unwrap_or_default()
    };
    d.wait_until("bound", || bound().len() == 1);
    let binding = bound()[0].0;
    assert!(h.sim.unbind_as(&Actor::ui("carol", "192.0.2.9"), binding));
    // Not the hourly resync: the poll sees carol's unbind.
    d.wait_until("bound again", || {
        bound().first().is_some_and(|b| b.0 != binding)
    });
    d.wait_until("the message", || {
        hook.bodies().iter().any(|b| b.contains("drift_reverted"))
    });
    let message = hook
        .messages()
        .into_iter()
        .find(|m| m["event"] == "drift_reverted")
        .unwrap();
    assert_eq!(message["kind"], "guard", "{message}");
    assert_eq!(message["name"], "login in flow login-flow", "{message}");
    assert_eq!(message["changed_by"]["username"], "carol", "{message}");
    assert_eq!(message["changed_by"]["client_ip"], "192.0.2.9", "{message}");
}

#[test]
fn drift_found_during_a_freeze_is_notified_as_held_and_its_revert_when_the_freeze_ends() {
    let h = Harness::new();
    let hook = Hook::start(&h, Answer::Ok);
    let mut d = start(&h, &["--notify", &hook.url]);
    let froze = std::process::Command::new(support::daemon::binary())
        .env("STAGESYNC_STATE_FILE", h.ws.state_file())
        .args(["freeze", "--for", "1h"])
        .output()
        .unwrap();
    assert!(froze.status.success(), "{froze:?}");
    ui_edit(&h, "ivan", 0.1);
    d.wait_until("the held drift's message", || !hook.bodies().is_empty());
    let messages = hook.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["event"], "drift_detected", "{m}");
    assert_eq!(m["reason"], "frozen: written when the freeze ends", "{m}");
    assert_eq!(m["changed_by"]["username"], "ivan", "{m}");
    assert!(m["change"].as_str().unwrap().contains("0.1"), "{m}");
    assert_eq!(h.threshold("login"), Some(0.1), "held while frozen");

    let lifted = std::process::Command::new(support::daemon::binary())
        .env("STAGESYNC_STATE_FILE", h.ws.state_file())
        .args(["freeze", "--off"])
        .output()
        .unwrap();
    assert!(lifted.status.success(), "{lifted:?}");
    d.signal(libc::SIGHUP);
    h.wait_threshold(&mut d, "login", 0.5);
    d.wait_until("the revert's message", || hook.bodies().len() == 2);
    let reverted = &hook.messages()[1];
    assert_eq!(reverted["event"], "drift_reverted", "{reverted}");
    assert_eq!(reverted["changed_by"]["username"], "ivan", "{reverted}");
}
