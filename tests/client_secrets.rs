//! Neither the token nor a private key reaches a log line at any level, nor an
//! error message, nor a `Debug` rendering, while the client talks to the
//! simulator through successes, retries, a lost create and failures.
//!
//! One test in its own binary: it installs the global subscriber (at TRACE,
//! `log` records included) and captures everything into a buffer.

use std::io::Write;
use std::sync::{Arc, Mutex};

use stagesync::authentik::Client;
use stagesync::kinds::captcha::StageFields;
use stagesync::kinds::captcha::api::Stages;
use stagesync::simulator::{Fault, FaultKind};
use support::client::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEY_A: &str = "pk-a-51c0ffee-never-log";
const KEY_B: &str = "pk-b-0ddba11-never-log";
const WRONG_TOKEN: &str = "wrong-tok-8d2e-never-log";

#[tokio::test]
async fn no_secret_reaches_logs_errors_or_debug_output() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let sim = sim().await;
    let c = client(&sim.url());
    let mut seen = Vec::new();

    seen.push(format!("{:?}", c.version().await.expect("version")));
    let fields = StageFields::with_defaults("login", "site");
    sim.inject(Fault::new(FaultKind::Truncated).on("POST", "/api/v3/stages/captcha/"));
    let live = Stages::new(&c)
        .create(&write(&fields, &key(KEY_A), "2025.12.4").request())
        .await
        .expect("create");
    sim.inject(Fault::status(503).on("PUT", "/api/v3/stages/captcha/"));
    sim.inject(Fault::new(FaultKind::Reset).on("PUT", "/api/v3/stages/captcha/"));
    let updated = Stages::new(&c)
        .update(
            live.uuid,
            &write(&fields, &key(KEY_B), "2025.12.4").request(),
        )
        .await
        .expect("update");
    seen.push(format!("{live:?} {updated:?}"));
    assert_eq!(
        sim.private_key_of(live.uuid).as_deref(),
        Some(KEY_B),
        "the key did reach the server"
    );

    // Failures: a 400 carrying a key, a rejected token, a settings dump.
    let blank = StageFields {
        public_key: " ".into(),
        ..StageFields::with_defaults("other", "p")
    };
    let err = Stages::new(&c)
        .create(&write(&blank, &key(KEY_A), "2025.12.4").request())
        .await
        .unwrap_err();
    tracing::error!(error = %err, debug = ?err, "create failed");
    seen.push(format!("{err} {err:?}"));
    let wrong = settings_with_token(&sim.url(), WRONG_TOKEN);
    let err = Stages::new(&client_from(&wrong)).list().await.unwrap_err();
    tracing::error!(error = %err, debug = ?err, "list failed");
    seen.push(format!(
        "{err} {err:?} {wrong:?} {:?}",
        settings(&sim.url())
    ));
    seen.push(format!("{c:?} {:?}", Client::new(&wrong).expect("client")));

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).expect("utf-8 logs");
    assert!(
        logs.contains("authentik request"),
        "TRACE output was captured:\n{logs}"
    );
    assert!(logs.contains("retrying after"), "the retries were logged");
    let everything = format!("{logs}\n{}", seen.join("\n"));
    for secret in [TOKEN, WRONG_TOKEN, KEY_A, KEY_B] {
        assert!(!everything.contains(secret), "a secret leaked");
    }
}
