//! `/healthz`, `/readyz` and `/metrics` over HTTP.
//!
//! - `GET /healthz`: `200 ok` while the process runs (liveness: restart me only
//!   if this stops answering).
//! - `GET /readyz`: `200 ready` when the last pass reached authentik with valid
//!   manifests, else `503` with the reason as plain text (see [`super::health`]).
//! - `GET /metrics`: OpenMetrics text (see [`super::metrics`]).
//!
//! Traps:
//! - Bind with [`bind`] before starting the loop, so "address in use" is an
//!   error at start rather than a log line from a background task.
//! - Shutdown is graceful but bounded: after the token fires, requests in flight
//!   get [`SHUTDOWN_GRACE`] to finish, then the server stops regardless (a
//!   scraper holding a keep-alive connection must not delay the exit).
//! - The server does not reconcile and takes no locks the loop holds across an
//!   await, so a slow pass never makes `/healthz` slow.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::{Health, Readiness};
use super::metrics::{CONTENT_TYPE, Metrics};

/// How long requests in flight may take after shutdown starts.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct AppState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// A failure to listen.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] io::Error),
}

/// Binds the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// The routes, for embedding or testing without a socket.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `cancel` fires (plus at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.clone().cancelled_owned());
    tokio::select! {
        served = server => served.map_err(HttpError::Serve),
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::debug!("HTTP connections still open after the grace period, closing");
            Ok(())
        }
    }
}

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, TEXT)], "ok\n").into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Readiness::Ready => ([(header::CONTENT_TYPE, TEXT)], "ready\n").into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    metrics_response(state.metrics.encode())
}

/// The metrics, or a 500 that the operator also finds in the logs: a scraper
/// only records "down", not why.
fn metrics_response(encoded: Result<String, std::fmt::Error>) -> Response {
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode the metrics; /metrics answered 500");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, TEXT)],
                "metrics could not be encoded\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written while `f` runs.
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (value, text)
    }

    #[test]
    fn a_metrics_encoding_failure_is_logged_and_answered_500() {
        let (response, logs) = logs_of(|| metrics_response(Err(std::fmt::Error)));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(logs.contains("ERROR"), "{logs}");
        assert!(logs.contains("cannot encode the metrics"), "{logs}");

        let (response, logs) = logs_of(|| metrics_response(Ok("# EOF\n".into())));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(logs, "");
    }
}
