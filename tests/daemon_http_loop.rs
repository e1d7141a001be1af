//! The daemon's machinery end to end, around a stand-in pass: file changes
//! under the directory cause passes, and what a pass records shows up on
//! `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use stagesync::daemon::health::{Health, PassHealth};
use stagesync::daemon::metrics::{Metrics, ResultLabel};
use stagesync::daemon::{self, PassContext, Settings};
use tokio_util::sync::CancellationToken;

/// Polls `url` until it answers `status`, for at most 5 s.
async fn eventually_status(url: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(response) = reqwest::get(url).await {
            let got = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{url} still answers {got} ({body}), expected {status}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn file_changes_drive_passes_and_readiness() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stages");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("a.yaml"), "name: a\n").expect("write");

    let listener = daemon::http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let health = Arc::new(Health::new());
    let metrics = Arc::new(Metrics::new());
    let passes = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();

    let settings = Settings {
        dir: dir.clone(),
        interval: Duration::from_secs(3600),
        debounce: Duration::from_millis(100),
        listener: Some(listener),
        health: health.clone(),
        metrics: metrics.clone(),
        hangup: false,
        event_poll: None,
    };
    // The stand-in pass: a manifest is "invalid" when it contains "broken".
    let pass = {
        let (dir, health, metrics, passes) =
            (dir.clone(), health.clone(), metrics.clone(), passes.clone());
        move |_ctx: PassContext| {
            let (dir, health, metrics, passes) =
                (dir.clone(), health.clone(), metrics.clone(), passes.clone());
            async move {
                let started = Instant::now();
                let entries = std::fs::read_dir(&dir).map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter(|e| {
                            std::fs::read_to_string(e.path())
                                .is_ok_and(|text| text.contains("broken"))
                        })
                        .count()
                });
                let report = PassHealth {
                    source_available: entries.is_ok(),
                    manifest_errors: entries.unwrap_or(0),
                    authentik: Ok(()),
                };
                health.record_pass(&report);
                metrics.set_manifest_errors(report.manifest_errors);
                metrics.set_source_available(report.source_available);
                metrics.record_reconcile(
                    ResultLabel::Success,
                    started.elapsed(),
                    SystemTime::now(),
                );
                passes.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let running = tokio::spawn(daemon::run(settings, cancel.clone(), pass));

    let readyz = format!("{base}/readyz");
    eventually_status(&readyz, 200).await;
    assert_eq!(passes.load(Ordering::SeqCst), 1, "one pass at start");

    std::fs::write(dir.join("b.yaml"), "broken: [").expect("write");
    let body = eventually_status(&readyz, 503).await;
    assert!(body.contains("1 manifest error"), "{body}");

    std::fs::write(dir.join("b.yaml"), "name: b\n").expect("write");
    eventually_status(&readyz, 200).await;

    std::fs::remove_dir_all(&dir).expect("rm -rf");
    let body = eventually_status(&readyz, 503).await;
    assert!(body.contains("manifest directory unavailable"), "{body}");

    // Let the passes for the removal's events run out before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics_text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics_text.contains("stagesync_source_available 0"),
        "{metrics_text}"
    );
    let done = passes.load(Ordering::SeqCst);
    assert!(
        metrics_text.contains(&format!(
            "stagesync_reconciles_total{{result=\"success\"}} {done}"
        )),
        "{done} passes in\n{metrics_text}"
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops")
        .expect("task")
        .expect("ran without error");
    assert!(reqwest::get(&readyz).await.is_err(), "server stopped");
}
