//! `--notify URL`: delivers [`Notification`]s to webhook receivers without
//! ever delaying a pass.
//!
//! Each receiver has its own bounded queue ([`QUEUE`]) and task: a pass only
//! puts a message in the queue (never waits); a full queue drops the message.
//! A delivery is one `POST` with a [`TIMEOUT`], repeated up to [`ATTEMPTS`]
//! times with a growing pause when the receiver cannot be reached, answers
//! 5xx or 429; any other status is final. Redirects are not followed (a
//! receiver that moved is a configuration error, and a redirect could carry
//! the message elsewhere); an answer is read up to [`ANSWER_CAP`] bytes and
//! dropped. `stagesync_notifications_total{result}` counts `delivered`,
//! `failed` and `dropped`.
//!
//! A webhook URL carries its token in the path or the query: it is held as a
//! secret and never logged; receivers are named by their position
//! (`receiver 1 of 2`), and errors lose their URL before they are shown.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::metrics::{Metrics, NotificationResult};
use crate::drift::notify::{Format, Notification};

/// Messages waiting per receiver before new ones are dropped.
pub const QUEUE: usize = 100;
/// One attempt's limit: a receiver that takes longer is treated as down.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per message: the first and two retries.
pub const ATTEMPTS: u32 = 3;
/// The pause before the first retry; doubled before the next, with jitter
/// (so receivers that come back are not hit by every stagesync in step).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How much of an answer is read (it is only drained, never used).
pub const ANSWER_CAP: usize = 4096;

/// Puts messages in each receiver's queue.
#[derive(Clone, Debug)]
pub struct Notifier {
    queues: Vec<mpsc::Sender<Arc<Vec<u8>>>>,
    format: Format,
    metrics: Arc<Metrics>,
}

/// Why `--notify` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot set up the notification client: {0}")]
    Client(String),
}

impl Notifier {
    /// Starts one delivery task per receiver (on the current runtime).
    pub fn start(
        receivers: Vec<SecretString>,
        format: Format,
        metrics: Arc<Metrics>,
    ) -> Result<Notifier, NotifyError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("stagesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url().to_string()))?;
        let total = receivers.len();
        let queues = receivers
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let receiver = Receiver {
                    http: http.clone(),
                    url,
                    name: format!("receiver {} of {total}", i + 1),
                    metrics: metrics.clone(),
                };
                tokio::spawn(receiver.run(rx));
                tx
            })
            .collect();
        Ok(Notifier {
            queues,
            format,
            metrics,
        })
    }

    /// Queues `notification` for every receiver; never waits.
    pub fn send(&self, notification: &Notification) {
        let body = Arc::new(notification.body(self.format));
        for queue in &self.queues {
            if queue.try_send(body.clone()).is_err() {
                self.metrics
                    .record_notification(NotificationResult::Dropped);
            }
        }
    }
}

/// The pauses between a message's attempts: `ATTEMPTS - 1` of them.
fn retry_pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_RETRY)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(ATTEMPTS as usize - 1)
        .build()
}

struct Receiver {
    http: reqwest::Client,
    url: SecretString,
    name: String,
    metrics: Arc<Metrics>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try (unreachable, timeout, 5xx, 429).
    Retry(String),
    /// Final (another 4xx, a redirect).
    Refused(String),
}

impl Receiver {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Vec<u8>>>) {
        let mut failing = false;
        while let Some(body) = rx.recv().await {
            let mut pauses = retry_pauses();
            let outcome = loop {
                match self.attempt(&body).await {
                    Attempt::Delivered => break Ok(()),
                    Attempt::Refused(why) => break Err(why),
                    Attempt::Retry(why) => match pauses.next() {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => break Err(why),
                    },
                }
            };
            match outcome {
                Ok(()) => {
                    self.metrics
                        .record_notification(NotificationResult::Delivered);
                    if failing {
                        info!(receiver = %self.name, "notifications are delivered again");
                        failing = false;
                    }
                }
                Err(why) => {
                    self.metrics.record_notification(NotificationResult::Failed);
                    if !failing {
                        warn!(receiver = %self.name, error = %why, "cannot deliver a notification (the URL is not shown: it holds a token)");
                        failing = true;
                    }
                }
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Attempt {
        let sent = self
            .http
            .post(self.url.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return Attempt::Retry(e.without_url().to_string()),
        };
        let status = response.status();
        // Drain a bounded part of the answer, then let the connection go.
        let mut read = 0;
        while read < ANSWER_CAP {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        if status.is_success() {
            Attempt::Delivered
        } else if status.is_server_error() || status.as_u16() == 429 {
            Attempt::Retry(format!("HTTP {}", status.as_u16()))
        } else if status.is_redirection() {
            Attempt::Refused(format!(
                "HTTP {} (redirects are not followed)",
                status.as_u16()
            ))
        } else {
            Attempt::Refused(format!("HTTP {}", status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_retried_twice_after_about_one_then_two_seconds() {
        for _ in 0..50 {
            let pauses: Vec<Duration> = retry_pauses().collect();
            assert_eq!(pauses.len(), ATTEMPTS as usize - 1);
            assert!(
                pauses[0] >= FIRST_RETRY && pauses[0] <= FIRST_RETRY * 2,
                "{pauses:?}"
            );
            assert!(
                pauses[1] >= FIRST_RETRY * 2 && pauses[1] <= FIRST_RETRY * 4,
                "{pauses:?}"
            );
        }
    }
}
