//! A server that repeats what it was sent: authentik's error answers quoting
//! the token (`{"detail": "auth was Bearer ..."}`) or a key (`{"private_key":
//! ["value ... is not valid"]}`), as a proxy or a future authentik might. The
//! real binary prints authentik's messages, so each echo must be redacted in
//! every output: `plan`, `apply` (text and JSON), `run`'s log (text and JSON).

use stagesync::simulator::{Fault, FaultKind};
use support::cli::{TOKEN, Workspace, run, start_sim, stderr, stdout};
use support::daemon::Harness;

const KEY_A: &str = "key-a-\"quoted\"-3e8f0a";
const KEY_B: &str = "key-b-71c4d9e2";

/// An answer with `status` and `body`, without processing.
fn echo(status: u16, body: String, method: &str, path: &str) -> Fault {
    Fault::new(FaultKind::Status {
        status,
        retry_after: None,
        body,
    })
    .on(method, path)
}

/// `text` with no trace of the token or either key, raw or JSON-escaped.
fn assert_clean(what: &str, text: &str) {
    let escaped_a = serde_json::to_string(KEY_A).unwrap();
    let escaped_a = escaped_a.trim_start_matches('"').trim_end_matches('"');
    for secret in [TOKEN, KEY_A, escaped_a, KEY_B, "key-a-", "key-b-"] {
        assert!(!text.contains(secret), "{what} holds {secret:?}:\n{text}");
    }
}

fn stages(ws: &Workspace) {
    ws.write(
        "a.yaml",
        "name: a\npublic_key: site-a\nprivate_key: !Env KEY_A\n",
    );
    ws.write(
        "b.yaml",
        "name: b\npublic_key: site-b\nprivate_key: !Env KEY_B\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_echoing_the_token_is_redacted_in_plan_and_apply() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    stages(&ws);
    let body = format!("{{\"detail\": \"authentication failed: Bearer {TOKEN} is not valid\"}}");
    for (args, status) in [
        (&["plan", "stages"][..], 403),
        (&["apply", "--yes", "stages"], 403),
        (&["plan", "--format", "json", "stages"], 500),
    ] {
        sim.inject(echo(status, body.clone(), "GET", "/api/v3/admin/version/").times(5));
        let mut cmd = ws.cmd(&sim);
        cmd.env("KEY_A", KEY_A).env("KEY_B", KEY_B).args(args);
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert_clean(&format!("{args:?}"), &all);
        assert!(
            all.contains("authentication failed: Bearer [REDACTED] is not valid"),
            "{args:?}: authentik's message is still shown: {all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_message_quoting_a_key_is_redacted_whichever_stage_it_names() {
    let sim = start_sim().await;
    let ws = Workspace::new();
    stages(&ws);
    // Each create's answer quotes both keys: its own (JSON-escaped, as a JSON
    // body writes it) and the other stage's.
    let escaped_a = serde_json::to_string(KEY_A).unwrap();
    let escaped_a = &escaped_a[1..escaped_a.len() - 1];
    let body =
        format!("{{\"private_key\": [\"value {escaped_a} is not valid\", \"nor {KEY_B}\"]}}");
    sim.inject(echo(400, body, "POST", "/api/v3/stages/captcha/").times(2));
    for format in ["text", "json"] {
        let mut cmd = ws.cmd(&sim);
        cmd.env("KEY_A", KEY_A)
            .env("KEY_B", KEY_B)
            .args(["apply", "--yes", "--format", format, "stages"]);
        let out = run(cmd).await;
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert_clean(format, &all);
        if format == "text" {
            assert_eq!(out.status.code(), Some(1), "{all}");
            assert!(
                all.contains("private_key: value [REDACTED] is not valid nor [REDACTED]"),
                "{all}"
            );
        }
    }
}

#[test]
fn the_daemon_log_never_repeats_an_echoed_secret() {
    for format in ["text", "json"] {
        let h = Harness::new();
        stages(&h.ws);
        let body = format!(
            "{{\"private_key\": [\"value {} is not valid\"], \"detail\": \"token {TOKEN}\"}}",
            KEY_B
        );
        h.sim
            .inject(echo(400, body, "POST", "/api/v3/stages/captcha/").times(100));
        let mut d = h.start_daemon(
            h.ws.stages(),
            &["--interval", "1h", "--log-format", format],
            &[("KEY_A", KEY_A), ("KEY_B", KEY_B), ("RUST_LOG", "trace")],
        );
        d.wait_for_log("[REDACTED]");
        d.signal(libc::SIGTERM);
        d.wait_exit(std::time::Duration::from_secs(10));
        assert_clean(&format!("the {format} log"), &d.log());
    }
}
