//! Which failures are retried, how often and how long the client waits.
//!
//! Retried: connection failures, timeouts and broken connections (the request
//! may not have reached authentik), 429 (a proxy in front of authentik limits the
//! rate; authentik itself does not), 502/503/504 (a proxy cannot reach a
//! restarting or overloaded authentik), and authentik's empty `405 text/html`,
//! which is how it reports an internal server error. Never retried: 400 (the
//! request is wrong and stays wrong), 403 (the token stays rejected), 404 (the
//! URL or the stage stays missing).
//!
//! The trap: a create (POST) whose answer was lost may have succeeded. The
//! client never re-sends one blindly; it looks the name up first (see
//! `Client::create_stage`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Attempts per call, the first included: four retries span roughly
/// 0.5 + 1 + 2 + 4 s, long enough to ride out a proxy's brief 502 while
/// authentik restarts, short enough that a dead server is reported in seconds.
pub(crate) const MAX_ATTEMPTS: u32 = 5;
/// First backoff delay, doubled on every retry.
pub(crate) const BASE_DELAY: Duration = Duration::from_millis(500);
/// Longest single backoff delay.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(8);
/// Longest wait a `Retry-After` header can impose: a proxy asking for minutes
/// would stall a plan; past this the call fails and the next run retries.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);
/// Total time spent sleeping between attempts of one call, `Retry-After`
/// included; bounds a call at this plus `MAX_ATTEMPTS` request timeouts.
pub(crate) const MAX_TOTAL_WAIT: Duration = Duration::from_secs(60);

/// The retry numbers of a client. [`RetryPolicy::default`] uses the constants
/// above; tests shrink the delays so that they run fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub retry_after_cap: Duration,
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: MAX_ATTEMPTS,
            base_delay: BASE_DELAY,
            max_delay: MAX_DELAY,
            retry_after_cap: RETRY_AFTER_CAP,
            max_total_wait: MAX_TOTAL_WAIT,
        }
    }
}

impl RetryPolicy {
    /// The same attempts with every delay scaled down to `base` (tests).
    pub fn fast(base: Duration) -> Self {
        RetryPolicy {
            base_delay: base,
            max_delay: base * 16,
            retry_after_cap: base * 20,
            max_total_wait: base * 200,
            ..RetryPolicy::default()
        }
    }

    /// The delays between attempts: exponential with jitter (so that several
    /// stagesync instances do not hammer a recovering server in step).
    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::new()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }

    /// The wait before the next attempt: the backoff delay, or the server's
    /// `Retry-After` (capped) when that is longer.
    pub(crate) fn wait(&self, backoff: Duration, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.retry_after_cap)),
            None => backoff,
        }
    }
}

/// Whether a status is worth another attempt. `empty_html` tells authentik's
/// internal-error 405 (empty `text/html` body) from a real "method not allowed".
pub(crate) fn is_retryable_status(status: u16, empty_html: bool) -> bool {
    match status {
        // A proxy's rate limit.
        429 => true,
        // Bad gateway, unavailable, gateway timeout: authentik restarting or overloaded.
        502..=504 => true,
        // authentik's internal server error (see CONTRACT: invalid UTF-8, racing
        // creates, a name too long for the index).
        405 => empty_html,
        _ => false,
    }
}

/// Parses `Retry-After` in seconds. The HTTP-date form is not used by the
/// proxies in front of authentik and is treated as absent.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded_in_number_and_size() {
        let policy = RetryPolicy::default();
        let delays: Vec<_> = policy.delays().collect();
        assert_eq!(delays.len(), (MAX_ATTEMPTS - 1) as usize);
        // Jitter adds up to one more base delay.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2));
        assert!(delays[0] >= BASE_DELAY);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let policy = RetryPolicy::default();
        let b = Duration::from_millis(500);
        assert_eq!(policy.wait(b, None), b);
        assert_eq!(
            policy.wait(b, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.wait(b, Some(Duration::from_secs(3600))),
            RETRY_AFTER_CAP
        );
        assert_eq!(
            policy.wait(Duration::from_secs(5), Some(Duration::ZERO)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [429, 502, 503, 504] {
            assert!(is_retryable_status(s, false));
        }
        assert!(is_retryable_status(405, true));
        for s in [200, 400, 403, 404, 405, 415, 500] {
            assert!(!is_retryable_status(s, false), "{s}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
