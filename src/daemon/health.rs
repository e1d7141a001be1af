//! What `/readyz` answers: ready when the last pass reached authentik and the
//! manifests were readable and valid.
//!
//! The pass reports a [`PassHealth`] at its end; [`readiness_of`] decides (pure)
//! and [`Health`] keeps the answer for the HTTP server.
//!
//! Traps:
//! - Not ready until the first pass has ended: a pod must not receive traffic
//!   (or count as rolled out) before it has ever talked to authentik.
//! - A stage whose write failed does not make the daemon unready: authentik
//!   was reached, and the failure is in the logs and in
//!   `stagesync_stages{status="failed"}`. Readiness is about the daemon being
//!   able to do its job, not about every stage being converged.
//! - The reason is served over HTTP: it must be free of secrets (authentik's
//!   error text, file paths and counts are fine). Control characters are
//!   escaped and it is cut to [`MAX_REASON_CHARS`].

use std::sync::Mutex;

/// Longest reason `/readyz` returns.
pub(crate) const MAX_REASON_CHARS: usize = 300;

/// How the last pass went, as far as readiness is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassHealth {
    /// Whether the manifest directory could be read (it may vanish during a
    /// git-sync swap or an unmounted volume).
    pub source_available: bool,
    /// Problems found in the manifests (invalid files, duplicate names...).
    pub manifest_errors: usize,
    /// `Ok` when the pass fetched the live state from authentik; otherwise why
    /// not (unreachable, 5xx, 403, timeout), in the user's words.
    pub authentik: Result<(), String>,
}

/// The answer of `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    NotReady(String),
}

/// Decides readiness from the last pass.
pub(crate) fn readiness_of(pass: &PassHealth) -> Readiness {
    let mut reasons = Vec::new();
    if !pass.source_available {
        reasons.push("manifest directory unavailable".to_owned());
    }
    match pass.manifest_errors {
        0 => {}
        1 => reasons.push("1 manifest error".to_owned()),
        n => reasons.push(format!("{n} manifest errors")),
    }
    if let Err(why) = &pass.authentik {
        reasons.push(format!("authentik not reached: {why}"));
    }
    if reasons.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(short(&reasons.join("; ")))
    }
}

fn short(text: &str) -> String {
    let escaped = crate::text::escape(text);
    if escaped.chars().count() <= MAX_REASON_CHARS {
        escaped.into_owned()
    } else {
        let mut cut: String = escaped.chars().take(MAX_REASON_CHARS - 3).collect();
        cut.push_str("...");
        cut
    }
}

/// Readiness shared between the loop (writer) and the HTTP server (reader).
#[derive(Debug)]
pub struct Health {
    // A std Mutex, not a tokio one: it is held only to copy a small value, never
    // across an await.
    readiness: Mutex<Readiness>,
}

/// The reason given before the first pass has ended.
pub(crate) const STARTING: &str = "no reconcile pass has finished yet";

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            readiness: Mutex::new(Readiness::NotReady(STARTING.to_owned())),
        }
    }

    /// Records the end of a pass.
    pub fn record_pass(&self, pass: &PassHealth) {
        self.set(readiness_of(pass));
    }

    /// Sets readiness directly (for states no pass reports).
    pub(crate) fn set(&self, readiness: Readiness) {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // value (a plain enum) is still whole.
        let mut guard = self.readiness.lock().unwrap_or_else(|e| e.into_inner());
        *guard = readiness;
    }

    pub(crate) fn readiness(&self) -> Readiness {
        self.readiness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> PassHealth {
        PassHealth {
            source_available: true,
            manifest_errors: 0,
            authentik: Ok(()),
        }
    }

    #[test]
    fn not_ready_before_the_first_pass() {
        assert_eq!(
            Health::new().readiness(),
            Readiness::NotReady(STARTING.to_owned())
        );
    }

    #[test]
    fn ready_only_when_everything_went_well() {
        assert_eq!(readiness_of(&healthy()), Readiness::Ready);
        let down = PassHealth {
            authentik: Err("HTTP 503 Service Unavailable".to_owned()),
            ..healthy()
        };
        assert_eq!(
            readiness_of(&down),
            Readiness::NotReady("authentik not reached: HTTP 503 Service Unavailable".to_owned())
        );
        let invalid = PassHealth {
            manifest_errors: 2,
            source_available: false,
            ..healthy()
        };
        assert_eq!(
            readiness_of(&invalid),
            Readiness::NotReady("manifest directory unavailable; 2 manifest errors".to_owned())
        );
    }

    #[test]
    fn reasons_are_escaped_and_short() {
        let odd = PassHealth {
            authentik: Err(format!("\u{1b}[31m{}", "x".repeat(1000))),
            ..healthy()
        };
        let Readiness::NotReady(reason) = readiness_of(&odd) else {
            panic!("must not be ready");
        };
        assert!(!reason.contains('\u{1b}'));
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn a_later_pass_replaces_the_answer() {
        let health = Health::new();
        health.record_pass(&healthy());
        assert_eq!(health.readiness(), Readiness::Ready);
        health.record_pass(&PassHealth {
            manifest_errors: 1,
            ..healthy()
        });
        assert_eq!(
            health.readiness(),
            Readiness::NotReady("1 manifest error".to_owned())
        );
    }
}
