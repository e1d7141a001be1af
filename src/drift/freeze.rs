//! Freezes (pure): when writes are held while detection, plans and
//! notifications go on. Two sources:
//! - scheduled windows (`--freeze-window "CRON for DURATION"`, as Argo CD's
//!   sync windows): a window opens at each time the cron expression matches,
//!   evaluated in UTC, and lasts the duration;
//! - an immediate freeze until a given time (`stagesync freeze`), read from
//!   the freeze file beside the state file at every pass.
//!
//! Drift found during a freeze is reported (logs, metrics, notifications) and
//! written when the freeze ends: the daemon runs a pass then.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use croner::Cron;

/// A scheduled freeze window.
#[derive(Clone, Debug)]
pub struct Window {
    cron: Cron,
    /// The expression as given, for logs.
    pub expression: String,
    pub duration: Duration,
}

impl Window {
    /// `"0 18 * * FRI for 62h"`: a cron expression (5 or 6 fields, UTC),
    /// `for`, and a duration.
    pub fn parse(s: &str) -> Result<Window, String> {
        let (expression, duration) = s.rsplit_once(" for ").ok_or_else(|| {
            format!("{s:?}: expected \"CRON for DURATION\", e.g. \"0 18 * * FRI for 62h\"")
        })?;
        let expression = expression.trim();
        let cron = Cron::from_str(expression)
            .map_err(|e| format!("{expression:?} is not a cron expression: {e}"))?;
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|e| format!("{:?} is not a duration: {e}", duration.trim()))?;
        if duration.is_zero() {
            return Err(format!("{s:?}: the duration must be greater than zero"));
        }
        Ok(Window {
            cron,
            expression: expression.to_owned(),
            duration,
        })
    }

    /// When the window covering `now` ends, if one does.
    fn open_until(&self, now: SystemTime) -> Option<SystemTime> {
        let start = self.cron.find_previous_occurrence(&utc(now)?, true).ok()?;
        let end = system_time(start)? + self.duration;
        (now < end).then_some(end)
    }

    /// The next time the window opens after `now`.
    fn next_start(&self, now: SystemTime) -> Option<SystemTime> {
        system_time(self.cron.find_next_occurrence(&utc(now)?, false).ok()?)
    }
}

/// Why writes are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A scheduled window (its cron expression).
    Window(String),
    /// `stagesync freeze`.
    Requested,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Window(expression) => write!(f, "freeze window \"{expression}\""),
            Reason::Requested => f.write_str("stagesync freeze"),
        }
    }
}

/// A freeze in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frozen {
    pub until: SystemTime,
    pub reason: Reason,
}

impl Frozen {
    /// `until` as RFC 3339, to the second.
    pub fn until_text(&self) -> String {
        humantime::format_rfc3339_seconds(self.until).to_string()
    }
}

/// The freeze in force at `now`, if any: the one that lasts longest of the
/// windows open and the requested freeze.
pub fn frozen_at(
    windows: &[Window],
    requested: Option<SystemTime>,
    now: SystemTime,
) -> Option<Frozen> {
    let open = windows.iter().filter_map(|w| {
        w.open_until(now).map(|until| Frozen {
            until,
            reason: Reason::Window(w.expression.clone()),
        })
    });
    let requested = requested.filter(|until| now < *until).map(|until| Frozen {
        until,
        reason: Reason::Requested,
    });
    open.chain(requested).max_by_key(|f| f.until)
}

/// When the freeze state may next change after `now`: the end of the
/// current freeze, or the next window's start.
pub fn next_change(
    windows: &[Window],
    requested: Option<SystemTime>,
    now: SystemTime,
) -> Option<SystemTime> {
    match frozen_at(windows, requested, now) {
        Some(frozen) => Some(frozen.until),
        None => windows
            .iter()
            // A requested freeze still to come is in force already (above).
            .filter_map(|w| w.next_start(now))
            .min(),
    }
}

fn utc(t: SystemTime) -> Option<DateTime<Utc>> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    DateTime::<Utc>::from_timestamp(i64::try_from(since.as_secs()).ok()?, since.subsec_nanos())
}

fn system_time(t: DateTime<Utc>) -> Option<SystemTime> {
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, t.timestamp_subsec_nanos()))
}

/// A time the freeze ends, RFC 3339 in UTC (`freeze --until`, and the freeze
/// file's content).
pub fn parse_until(text: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z'))
}

/// The freeze file's content: the time the freeze ends, RFC 3339.
pub fn parse_requested(text: &str) -> Option<SystemTime> {
    parse_until(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_window_holds_from_each_match_for_its_duration() {
        // Fridays 18:00 UTC for 62 h: until Monday 08:00.
        let w = Window::parse("0 18 * * FRI for 62h").unwrap();
        let windows = [w];
        // 2026-12-04 is a Friday.
        assert_eq!(frozen_at(&windows, None, at("2026-12-04T17:59:59Z")), None);
        let frozen = frozen_at(&windows, None, at("2026-12-05T09:00:00Z")).unwrap();
        assert_eq!(frozen.until, at("2026-12-07T08:00:00Z"));
        assert_eq!(frozen.reason, Reason::Window("0 18 * * FRI".into()));
        assert_eq!(frozen.until_text(), "2026-12-07T08:00:00Z");
        assert_eq!(frozen.reason.to_string(), "freeze window \"0 18 * * FRI\"");
        assert_eq!(frozen_at(&windows, None, at("2026-12-07T08:00:00Z")), None);
        assert_eq!(
            next_change(&windows, None, at("2026-12-08T00:00:00Z")),
            Some(at("2026-12-11T18:00:00Z"))
        );
    }

    #[test]
    fn a_requested_freeze_holds_until_its_time_and_the_longest_wins() {
        let windows = [Window::parse("0 18 * * FRI for 62h").unwrap()];
        let now = at("2026-12-05T09:00:00Z");
        let frozen = frozen_at(&windows, Some(at("2026-12-08T00:00:00Z")), now).unwrap();
        assert_eq!(frozen.reason, Reason::Requested);
        assert_eq!(frozen.reason.to_string(), "stagesync freeze");
        assert_eq!(
            frozen_at(&[], Some(at("2026-12-05T08:00:00Z")), now),
            None,
            "a requested freeze that ended"
        );
        assert_eq!(
            frozen_at(&[], Some(now), now),
            None,
            "a requested freeze ends at its time, as a window does"
        );
        assert_eq!(
            next_change(&[], Some(at("2026-12-05T10:00:00Z")), now),
            Some(at("2026-12-05T10:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_say_why() {
        for (s, says) in [
            ("0 18 * * FRI", "expected \"CRON for DURATION\""),
            ("nope for 2h", "is not a cron expression"),
            ("0 18 * * FRI for soon", "is not a duration"),
        ] {
            let err = Window::parse(s).unwrap_err();
            assert!(err.contains(says), "{s}: {err}");
        }
        assert_eq!(
            parse_requested("2026-12-05T10:00:00Z\n"),
            Some(at("2026-12-05T10:00:00Z"))
        );
        assert_eq!(parse_requested("tomorrow"), None);
    }
}
