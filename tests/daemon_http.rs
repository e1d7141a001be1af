//! The daemon's HTTP endpoints on a real loopback socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use stagesync::daemon::health::{Health, PassHealth};
use stagesync::daemon::http::{self, AppState};
use stagesync::daemon::metrics::{Counts, Metrics, ResultLabel, WriteOperation};
use stagesync::kinds::Kind;
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), http::HttpError>>,
}

async fn start() -> Server {
    let listener = http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let health = Arc::new(Health::new());
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let state = AppState {
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(http::serve(listener, state, cancel.clone()));
    Server {
        base,
        health,
        metrics,
        cancel,
        task,
    }
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("body"))
}

fn healthy() -> PassHealth {
    PassHealth {
        source_available: true,
        manifest_errors: 0,
        authentik: Ok(()),
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let s = start().await;
    let (status, content_type, body) = get(&format!("{}/healthz", s.base)).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    assert_eq!(body.trim(), "ok");
}

#[tokio::test]
async fn readyz_follows_the_last_pass() {
    let s = start().await;
    let url = format!("{}/readyz", s.base);

    let (status, _, body) = get(&url).await;
    assert_eq!(status, 503, "not ready before the first pass");
    assert!(
        body.contains("no reconcile pass has finished yet"),
        "{body}"
    );

    s.health.record_pass(&healthy());
    let (status, _, body) = get(&url).await;
    assert_eq!((status, body.trim()), (200, "ready"));

    s.health.record_pass(&PassHealth {
        authentik: Err("connection refused".to_owned()),
        ..healthy()
    });
    let (status, _, body) = get(&url).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("authentik not reached: connection refused"),
        "{body}"
    );

    s.health.record_pass(&PassHealth {
        manifest_errors: 2,
        ..healthy()
    });
    let (status, _, body) = get(&url).await;
    assert_eq!(status, 503);
    assert!(body.contains("2 manifest errors"), "{body}");

    s.health.record_pass(&healthy());
    assert_eq!(get(&url).await.0, 200, "recovers without a restart");
}

#[tokio::test]
async fn metrics_are_served_in_openmetrics_text() {
    let s = start().await;
    s.metrics.record_reconcile(
        ResultLabel::Success,
        Duration::from_millis(300),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
    s.metrics.set_counts(
        Kind::CaptchaStage,
        Counts {
            in_sync: 4,
            drifted: 1,
            failed: 0,
            ..Counts::default()
        },
    );
    s.metrics
        .record_write(WriteOperation::Create, ResultLabel::Failure);
    s.metrics.record_api_request("GET", Some(503));
    s.metrics.set_source_available(true);

    let (status, content_type, body) = get(&format!("{}/metrics", s.base)).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for line in [
        "stagesync_reconciles_total{result=\"success\"} 1",
        "stagesync_reconcile_duration_seconds_count 1",
        "stagesync_stages{status=\"in_sync\"} 4",
        "stagesync_stages{status=\"drifted\"} 1",
        "stagesync_writes_total{operation=\"create\",result=\"failure\"} 1",
        "stagesync_api_requests_total{method=\"GET\",status_class=\"5xx\"} 1",
        "stagesync_last_successful_reconcile_timestamp_seconds 1800000000",
        "stagesync_manifest_errors 0",
        "stagesync_source_available 1",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(line)),
            "{line} in\n{body}"
        );
    }
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let s = start().await;
    assert_eq!(get(&format!("{}/nope", s.base)).await.0, 404);
}

#[tokio::test]
async fn the_server_stops_on_cancel() {
    let s = start().await;
    // A scraper's pooled keep-alive connection must not hold the exit up.
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    s.cancel.cancel();
    let served = tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("stops within the grace period")
        .expect("task");
    assert!(served.is_ok());
    assert!(
        reqwest::get(format!("{}/healthz", s.base)).await.is_err(),
        "nothing listens any more"
    );
    drop(client);
}

#[tokio::test]
async fn a_busy_address_is_an_error_at_bind() {
    let first = http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let addr = first.local_addr().expect("addr");
    let err = http::bind(addr).await.expect_err("address in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
