//! The daemon's Prometheus metrics, and one method per thing to record.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stagesync_reconciles_total` | counter | `result` = `success`, `failure` |
//! | `stagesync_reconcile_duration_seconds` | histogram | |
//! | `stagesync_stages` | gauge | `status` = `in_sync`, `drifted`, `failed`, `pruned` (deleted by the last pass), `blocked` (prune blocked: in use) |
//! | `stagesync_writes_total` | counter | `operation` = `create`, `update`; `result` = `success`, `failure` |
//! | `stagesync_api_requests_total` | counter | `method` (`GET`, `POST`, ...); `status_class` = `2xx`, `3xx`, `4xx`, `5xx`, `error` |
//! | `stagesync_last_successful_reconcile_timestamp_seconds` | gauge | |
//! | `stagesync_manifest_errors` | gauge | |
//! | `stagesync_source_available` | gauge | |
//! | `stagesync_event_poll_duration_seconds` | gauge | |
//! | `stagesync_event_poll_interval_seconds` | gauge | |
//! | `stagesync_event_polls_total` | counter | `result` = `success`, `failure` |
//! | `stagesync_notifications_total` | counter | `result` = `delivered`, `failed`, `dropped` |
//! | `stagesync_frozen` | gauge | |
//! | `stagesync_freeze_end_timestamp_seconds` | gauge | |
//! | `stagesync_key_check` | gauge (state set) | `stage`; `result` = `valid`, `invalid`, `mismatch`, `unknown` |
//!
//! Traps:
//! - prometheus-client appends `_total` to counters and the unit to names
//!   registered with one: metrics are registered as `stagesync_reconciles` and
//!   `stagesync_reconcile_duration` + [`Unit::Seconds`]. Registering
//!   `..._total` yourself gives `..._total_total`.
//! - Every label combination the daemon can produce (except the API `method`,
//!   which comes from the client) is created at zero on start, so `rate()` and
//!   alerts work before the first failure ever happens.
//! - The output is OpenMetrics text (what prometheus-client writes); Prometheus
//!   reads it when served with [`CONTENT_TYPE`].
//! - Label values are fixed enums: nothing from a manifest or a server (error
//!   messages, URLs) becomes a label, so cardinality stays bounded. The one
//!   exception is `stagesync_key_check`'s `stage`: one label value per managed
//!   stage (bounded by the manifests, not by traffic), removed when the stage
//!   leaves the manifests. prometheus-client escapes label values.
//! - `stagesync_key_check` is a state set: each checked stage has all four
//!   `result` series, the current one 1 and the others 0, so a change of result
//!   moves a value instead of starting a new series (no gap, no stale series
//!   for the lookback window). A stage has no series until its first check ends.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::kinds::Kind;
use crate::verify::Verdict;

/// The content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP methods the API client uses, created at zero on start.
const KNOWN_METHODS: [&str; 4] = ["GET", "POST", "PUT", "PATCH"];

macro_rules! label_value {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// How something ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResultLabel {
    Success,
    Failure,
}
label_value!(ResultLabel { Success => "success", Failure => "failure" });

impl ResultLabel {
    pub(crate) fn of(success: bool) -> Self {
        if success {
            ResultLabel::Success
        } else {
            ResultLabel::Failure
        }
    }
}

/// A write to authentik.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WriteOperation {
    Create,
    Update,
}
label_value!(WriteOperation { Create => "create", Update => "update" });

/// An HTTP response's class, or `Error` when no response came (connection
/// refused, timeout, TLS).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    Error,
}
label_value!(StatusClass {
    Informational => "1xx",
    Success => "2xx",
    Redirection => "3xx",
    ClientError => "4xx",
    ServerError => "5xx",
    Error => "error",
});

impl StatusClass {
    /// The class of a response's status code; `None` (no response) is `Error`.
    pub(crate) fn of(status: Option<u16>) -> Self {
        match status {
            Some(100..=199) => StatusClass::Informational,
            Some(200..=299) => StatusClass::Success,
            Some(300..=399) => StatusClass::Redirection,
            Some(400..=499) => StatusClass::ClientError,
            Some(500..=599) => StatusClass::ServerError,
            _ => StatusClass::Error,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StageStatus {
    InSync,
    Drifted,
    Failed,
    Pruned,
    Blocked,
}
label_value!(StageStatus { InSync => "in_sync", Drifted => "drifted", Failed => "failed", Pruned => "pruned", Blocked => "blocked" });

impl EncodeLabelValue for Verdict {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Every result a key check can have, in the order the series are listed.
const VERDICTS: [Verdict; 4] = [
    Verdict::Valid,
    Verdict::Invalid,
    Verdict::Mismatch,
    Verdict::Unknown,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyCheckLabels {
    stage: String,
    result: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: ResultLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: StageStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    operation: WriteOperation,
    result: ResultLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: String,
    status_class: StatusClass,
}

/// How many managed objects of a kind are in each state after a pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub in_sync: usize,
    pub drifted: usize,
    pub failed: usize,
    /// Deleted by prune in the last pass.
    pub pruned: usize,
    /// Prune candidates something uses (not deleted).
    pub blocked: usize,
}

/// The registry and its metrics. Share it as `Arc<Metrics>`; every method takes
/// `&self` (the metrics are atomics).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    /// One family per kind: `stagesync_stages` for captcha stages.
    counts: BTreeMap<Kind, Family<StatusLabels, Gauge>>,
    writes: Family<WriteLabels, Counter>,
    api_requests: Family<ApiLabels, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    manifest_errors: Gauge,
    source_available: Gauge,
    key_checks: Family<KeyCheckLabels, Gauge>,
    event_poll_duration: Gauge<f64, AtomicU64>,
    event_poll_interval: Gauge<f64, AtomicU64>,
    event_polls: Family<ResultLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    frozen: Gauge,
    freeze_end: Gauge<f64, AtomicU64>,
}

/// How a notification ended, per receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotificationResult {
    Delivered,
    /// Every attempt failed, or the receiver refused it.
    Failed,
    /// The receiver's queue was full.
    Dropped,
}

label_value!(NotificationResult {
    Delivered => "delivered",
    Failed => "failed",
    Dropped => "dropped",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    result: NotificationResult,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "stagesync_reconciles",
            "Reconcile passes, by result",
            reconciles.clone(),
        );
        // 50 ms to ~100 s: a pass over a handful of stages on a LAN up to a
        // thousand stages against a slow server.
        let reconcile_duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register_with_unit(
            "stagesync_reconcile_duration",
            "How long a reconcile pass took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let mut counts = BTreeMap::new();
        for kind in Kind::ALL {
            let family = Family::<StatusLabels, Gauge>::default();
            let (name, help) = kind.counted_as();
            registry.register(name, help, family.clone());
            counts.insert(kind, family);
        }
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "stagesync_writes",
            "Writes to authentik, by operation and result",
            writes.clone(),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "stagesync_api_requests",
            "Requests to the authentik API, by method and status class",
            api_requests.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "stagesync_last_successful_reconcile_timestamp",
            "Unix time of the end of the last successful reconcile pass",
            Unit::Seconds,
            last_success.clone(),
        );
        let manifest_errors = Gauge::default();
        registry.register(
            "stagesync_manifest_errors",
            "Problems found in the manifests by the last pass",
            manifest_errors.clone(),
        );
        let source_available = Gauge::default();
        registry.register(
            "stagesync_source_available",
            "1 when the manifest directory could be read by the last pass, else 0",
            source_available.clone(),
        );
        let key_checks = Family::<KeyCheckLabels, Gauge>::default();
        registry.register(
            "stagesync_key_check",
            "Result of the last check of each stage's private key with its captcha provider: 1 for the current result, 0 for the others",
            key_checks.clone(),
        );
        let event_poll_duration = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "stagesync_event_poll_duration",
            "How long the last poll of authentik's event log took",
            Unit::Seconds,
            event_poll_duration.clone(),
        );
        let event_poll_interval = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "stagesync_event_poll_interval",
            "How long the event poll waits before its next request (at least 50 times its last duration)",
            Unit::Seconds,
            event_poll_interval.clone(),
        );
        let event_polls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "stagesync_event_polls",
            "Polls of authentik's event log, by result",
            event_polls.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "stagesync_notifications",
            "Notifications to --notify receivers, by result (per receiver)",
            notifications.clone(),
        );
        let frozen = Gauge::default();
        registry.register(
            "stagesync_frozen",
            "1 while a freeze holds writes (drift is reported, written when it ends), else 0",
            frozen.clone(),
        );
        let freeze_end = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "stagesync_freeze_end_timestamp",
            "Unix time the freeze in force ends; 0 when none",
            Unit::Seconds,
            freeze_end.clone(),
        );
        for result in [
            NotificationResult::Delivered,
            NotificationResult::Failed,
            NotificationResult::Dropped,
        ] {
            let _ = notifications.get_or_create(&NotificationLabels { result });
        }

        // `get_or_create` is how a series is created; the guard it returns is
        // dropped at once.
        for result in [ResultLabel::Success, ResultLabel::Failure] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
            let _ = event_polls.get_or_create(&ResultLabels { result });
            for operation in [WriteOperation::Create, WriteOperation::Update] {
                let _ = writes.get_or_create(&WriteLabels { operation, result });
            }
        }
        for status in [
            StageStatus::InSync,
            StageStatus::Drifted,
            StageStatus::Failed,
            StageStatus::Pruned,
            StageStatus::Blocked,
        ] {
            for family in counts.values() {
                let _ = family.get_or_create(&StatusLabels { status });
            }
        }
        for method in KNOWN_METHODS {
            for status_class in [
                StatusClass::Success,
                StatusClass::ClientError,
                StatusClass::ServerError,
                StatusClass::Error,
            ] {
                let _ = api_requests.get_or_create(&ApiLabels {
                    method: method.to_owned(),
                    status_class,
                });
            }
        }

        Self {
            registry,
            reconciles,
            reconcile_duration,
            counts,
            writes,
            api_requests,
            last_success,
            manifest_errors,
            source_available,
            key_checks,
            event_poll_duration,
            event_poll_interval,
            event_polls,
            notifications,
            frozen,
            freeze_end,
        }
    }

    /// The freeze in force ends at `until`; `None`: no freeze.
    pub(crate) fn set_frozen(&self, until: Option<SystemTime>) {
        self.frozen.set(i64::from(until.is_some()));
        let end = until
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.freeze_end.set(end);
    }

    /// A notification ended so for one receiver.
    pub fn record_notification(&self, result: NotificationResult) {
        self.notifications
            .get_or_create(&NotificationLabels { result })
            .inc();
    }

    /// A poll of the event log ended after `took`; the next waits `next`.
    pub(crate) fn record_event_poll(&self, result: ResultLabel, took: Duration, next: Duration) {
        self.event_polls
            .get_or_create(&ResultLabels { result })
            .inc();
        self.event_poll_duration.set(took.as_secs_f64());
        self.event_poll_interval.set(next.as_secs_f64());
    }

    /// A pass ended. On success, `finished_at` becomes the last successful
    /// reconcile timestamp.
    pub fn record_reconcile(
        &self,
        outcome: ResultLabel,
        duration: Duration,
        finished_at: SystemTime,
    ) {
        self.reconciles
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
        if outcome == ResultLabel::Success {
            let unix = finished_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_success.set(unix);
        }
    }

    /// The counts of `kind` after a pass, replacing the previous ones
    /// (`stagesync_stages` for captcha stages).
    pub fn set_counts(&self, kind: Kind, counts: Counts) {
        let Some(family) = self.counts.get(&kind) else {
            return;
        };
        for (status, n) in [
            (StageStatus::InSync, counts.in_sync),
            (StageStatus::Drifted, counts.drifted),
            (StageStatus::Failed, counts.failed),
            (StageStatus::Pruned, counts.pruned),
            (StageStatus::Blocked, counts.blocked),
        ] {
            family
                .get_or_create(&StatusLabels { status })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// One write (create or update) finished.
    pub fn record_write(&self, operation: WriteOperation, outcome: ResultLabel) {
        self.writes
            .get_or_create(&WriteLabels {
                operation,
                result: outcome,
            })
            .inc();
    }

    /// One API request finished: `status` is the HTTP status, or `None` when no
    /// response came. `method` is upper-cased.
    pub fn record_api_request(&self, method: &str, status: Option<u16>) {
        self.api_requests
            .get_or_create(&ApiLabels {
                method: method.to_ascii_uppercase(),
                status_class: StatusClass::of(status),
            })
            .inc();
    }

    /// How many problems the last pass found in the manifests.
    pub fn set_manifest_errors(&self, count: usize) {
        self.manifest_errors
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Whether the last pass could read the manifest directory.
    pub fn set_source_available(&self, available: bool) {
        self.source_available.set(i64::from(available));
    }

    /// The result of the last check of `stage`'s key (replaces the previous one).
    pub(crate) fn set_key_check(&self, stage: &str, verdict: Verdict) {
        for result in VERDICTS {
            self.key_checks
                .get_or_create(&KeyCheckLabels {
                    stage: stage.to_owned(),
                    result,
                })
                .set(i64::from(result == verdict));
        }
    }

    /// `stage` left the manifests: its key check series go.
    pub(crate) fn remove_key_check(&self, stage: &str) {
        for result in VERDICTS {
            self.key_checks.remove(&KeyCheckLabels {
                stage: stage.to_owned(),
                result,
            });
        }
    }

    /// The whole registry in OpenMetrics text format.
    pub(crate) fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_series_exists_at_zero_from_the_start() {
        let text = Metrics::new().encode().expect("encodes");
        for series in [
            r#"stagesync_reconciles_total{result="success"}"#,
            r#"stagesync_reconciles_total{result="failure"}"#,
            r#"stagesync_stages{status="pruned"}"#,
            r#"stagesync_stages{status="blocked"}"#,
            "stagesync_reconcile_duration_seconds_count",
            r#"stagesync_stages{status="in_sync"}"#,
            r#"stagesync_stages{status="drifted"}"#,
            r#"stagesync_stages{status="failed"}"#,
            r#"stagesync_writes_total{operation="create",result="success"}"#,
            r#"stagesync_writes_total{operation="update",result="failure"}"#,
            r#"stagesync_api_requests_total{method="GET",status_class="5xx"}"#,
            r#"stagesync_api_requests_total{method="PATCH",status_class="error"}"#,
            "stagesync_last_successful_reconcile_timestamp_seconds",
            "stagesync_manifest_errors",
            "stagesync_source_available",
        ] {
            assert_eq!(line_value(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE stagesync_reconcile_duration_seconds histogram"));
        assert!(text.contains("# TYPE stagesync_reconciles counter"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn recorded_values_show_up() {
        let m = Metrics::new();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        m.record_reconcile(ResultLabel::Success, Duration::from_millis(120), at);
        m.record_reconcile(
            ResultLabel::Failure,
            Duration::from_secs(3),
            at + Duration::from_secs(60),
        );
        m.set_counts(
            Kind::CaptchaStage,
            Counts {
                in_sync: 7,
                drifted: 2,
                failed: 1,
                pruned: 3,
                blocked: 1,
            },
        );
        m.record_write(WriteOperation::Update, ResultLabel::Success);
        m.record_write(WriteOperation::Update, ResultLabel::Success);
        m.record_api_request("get", Some(200));
        m.record_api_request("DELETE", Some(404));
        m.record_api_request("PATCH", None);
        m.set_manifest_errors(3);
        m.set_source_available(true);
        let text = m.encode().expect("encodes");

        let v = |s: &str| line_value(&text, s);
        assert_eq!(
            v(r#"stagesync_reconciles_total{result="success"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"stagesync_reconciles_total{result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(v("stagesync_reconcile_duration_seconds_count"), Some(2.0));
        assert_eq!(
            v("stagesync_last_successful_reconcile_timestamp_seconds"),
            Some(1_700_000_000.0),
            "a failure does not move the last success"
        );
        assert_eq!(v(r#"stagesync_stages{status="in_sync"}"#), Some(7.0));
        assert_eq!(v(r#"stagesync_stages{status="drifted"}"#), Some(2.0));
        assert_eq!(v(r#"stagesync_stages{status="failed"}"#), Some(1.0));
        assert_eq!(v(r#"stagesync_stages{status="pruned"}"#), Some(3.0));
        assert_eq!(v(r#"stagesync_stages{status="blocked"}"#), Some(1.0));
        assert_eq!(
            v(r#"stagesync_writes_total{operation="update",result="success"}"#),
            Some(2.0)
        );
        assert_eq!(
            v(r#"stagesync_api_requests_total{method="GET",status_class="2xx"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"stagesync_api_requests_total{method="DELETE",status_class="4xx"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"stagesync_api_requests_total{method="PATCH",status_class="error"}"#),
            Some(1.0)
        );
        assert_eq!(v("stagesync_manifest_errors"), Some(3.0));
        assert_eq!(v("stagesync_source_available"), Some(1.0));
    }

    #[test]
    fn a_key_check_is_a_state_set_per_stage_and_goes_with_its_stage() {
        let m = Metrics::new();
        let series = |stage: &str, result: &str| {
            format!(r#"stagesync_key_check{{stage="{stage}",result="{result}"}}"#)
        };
        assert!(
            !m.encode()
                .expect("encodes")
                .contains("stagesync_key_check{")
        );
        m.set_key_check("login", Verdict::Invalid);
        m.set_key_check("signup \"x\"", Verdict::Valid);
        m.set_key_check("login", Verdict::Valid);
        let text = m.encode().expect("encodes");
        for (result, want) in [
            ("valid", 1.0),
            ("invalid", 0.0),
            ("mismatch", 0.0),
            ("unknown", 0.0),
        ] {
            assert_eq!(
                line_value(&text, &series("login", result)),
                Some(want),
                "{text}"
            );
        }
        assert_eq!(
            line_value(&text, &series("signup \\\"x\\\"", "valid")),
            Some(1.0),
            "label values are escaped: {text}"
        );
        m.remove_key_check("login");
        let text = m.encode().expect("encodes");
        assert!(!text.contains(r#"stage="login""#), "{text}");
        assert!(text.contains(r#"stage="signup"#), "{text}");
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(Some(204)), StatusClass::Success);
        assert_eq!(StatusClass::of(Some(302)), StatusClass::Redirection);
        assert_eq!(StatusClass::of(Some(403)), StatusClass::ClientError);
        assert_eq!(StatusClass::of(Some(503)), StatusClass::ServerError);
        assert_eq!(StatusClass::of(Some(700)), StatusClass::Error);
        assert_eq!(StatusClass::of(None), StatusClass::Error);
    }
}
