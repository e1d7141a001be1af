//! Per-stage exponential backoff, and logging failures when they change.
//!
//! A stage whose write fails (authentik 5xx, 403, a timeout) is not retried on
//! every pass: [`Backoff`] says when it may be tried again, 5 s after the first
//! failure, doubling up to 5 min, with jitter; a success forgets it. Keys are
//! [`Subject`]s by default: a stage, authentik itself ("could not fetch live
//! state at all") or the manifest source.
//!
//! [`FailureLog`] remembers the last error per key, so that a failure is logged
//! when it starts (or its message changes) and a recovery when it ends, instead
//! of one identical line per retry.
//!
//! Traps:
//! - Both are pure (no clock, no I/O): the caller passes `now`, so tests and the
//!   pass agree on time. Use the same clock for every call on one instance.
//! - Backoff only *skips* attempts; it does not schedule them. The pass should
//!   return [`Backoff::next_attempt_in`] as its
//!   [`PassOutcome::retry_in`](super::scheduler::PassOutcome::retry_in), or the
//!   retry waits for the next interval or file change.
//! - A changed manifest should be tried at once even while backed off: call
//!   [`Backoff::forget`] for the stages whose desired state changed (the failure
//!   may have been caused by the old value), and for those only: authentik's
//!   own backoff is about authentik, not about the file.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What can fail, and be backed off and logged once: authentik as a whole,
/// the manifest source, or one stage.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// Reading live state failed (unreachable, 5xx, 403, timeout).
    Authentik,
    /// The manifest directory is missing, empty or unreadable.
    Source,
    /// A stage, by its (trimmed) name.
    Stage(String),
}

impl Subject {
    pub(crate) fn stage(name: &str) -> Self {
        Subject::Stage(name.to_owned())
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Authentik => f.write_str("authentik"),
            Subject::Source => f.write_str("the manifest directory"),
            Subject::Stage(name) => write!(f, "stage {name}"),
        }
    }
}

/// The first retry waits this long: enough for a restarting authentik worker or
/// a load balancer to notice a new backend, short enough that a blip heals fast.
pub const BASE_DELAY: Duration = Duration::from_secs(5);
/// Delays double after each consecutive failure...
pub(crate) const FACTOR: u32 = 2;
/// ...up to this cap: a stage failing for a long time (authentik down, a 403 a
/// human must fix) is still retried every few minutes, without hammering.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(5 * 60);
/// Each delay is shortened by up to this fraction at random, so stages (and
/// daemons) that failed together do not all retry at the same instant. Jitter
/// only shortens, so [`MAX_DELAY`] stays a true cap; it is applied after the
/// cap (a lower one too, [`Backoff::record_failure_capped`]), so capped delays
/// are spread as well instead of all equal to the cap.
pub const JITTER_FRACTION: f64 = 0.2;

/// The delay after `failures` consecutive failures (1 = first failure), before
/// jitter.
pub(crate) fn delay_for(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    BASE_DELAY
        .checked_mul(FACTOR.saturating_pow(exponent))
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

/// `delay` shortened by up to [`JITTER_FRACTION`]; `unit` in `[0, 1]` (clamped)
/// picks how much (0 = not at all).
pub(crate) fn with_jitter(delay: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    delay.mul_f64(1.0 - JITTER_FRACTION * unit)
}

#[derive(Clone, Copy, Debug)]
struct Failing {
    failures: u32,
    retry_at: Instant,
}

/// Which keys are backed off, and until when.
#[derive(Debug)]
pub struct Backoff<K = Subject> {
    failing: HashMap<K, Failing>,
}

impl<K> Default for Backoff<K> {
    fn default() -> Self {
        Backoff {
            failing: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Backoff<K> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether `key` may be attempted at `now`: never failed, succeeded since,
    /// or its delay has passed.
    pub(crate) fn should_attempt<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.failing.get(key).is_none_or(|f| now >= f.retry_at)
    }

    /// Records a failure of `key` at `now`; returns how long until it may be
    /// attempted again.
    pub(crate) fn record_failure<Q>(&mut self, key: &Q, now: Instant) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.record_failure_with_jitter(key, now, rand::random::<f64>())
    }

    /// [`Backoff::record_failure`] with delays capped at `cap` (below
    /// [`MAX_DELAY`]) before jitter: for a key worth retrying sooner
    /// (authentik's reads), whose retries must still spread.
    pub(crate) fn record_failure_capped<Q>(
        &mut self,
        key: &Q,
        now: Instant,
        cap: Duration,
    ) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.record_failure_capped_with_jitter(key, now, cap, rand::random::<f64>())
    }

    /// [`Backoff::record_failure`] with the jitter chosen by the caller (`unit`
    /// as in [`with_jitter`]).
    pub(crate) fn record_failure_with_jitter<Q>(
        &mut self,
        key: &Q,
        now: Instant,
        unit: f64,
    ) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.record_failure_capped_with_jitter(key, now, MAX_DELAY, unit)
    }

    /// [`Backoff::record_failure_capped`] with the jitter chosen by the caller.
    pub(crate) fn record_failure_capped_with_jitter<Q>(
        &mut self,
        key: &Q,
        now: Instant,
        cap: Duration,
        unit: f64,
    ) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let failures = self.failing.get(key).map_or(0, |f| f.failures) + 1;
        let delay = with_jitter(delay_for(failures).min(cap), unit);
        self.failing.insert(
            key.to_owned(),
            Failing {
                failures,
                retry_at: now + delay,
            },
        );
        delay
    }

    /// Records a success: `key` is attempted normally from now on.
    pub(crate) fn record_success<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.failing.remove(key);
    }

    /// Forgets `key` (its desired state changed, or it is no longer managed).
    pub(crate) fn forget<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.failing.remove(key);
    }

    /// Forgets every key `keep` says no to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.failing.retain(|key, _| keep(key));
    }

    /// Consecutive failures of `key` so far.
    #[cfg(test)]
    pub(crate) fn failures<Q>(&self, key: &Q) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.failing.get(key).map_or(0, |f| f.failures)
    }

    /// How long from `now` until the earliest backed-off key may be attempted;
    /// `None` when nothing is backed off. Zero when one is already due.
    pub(crate) fn next_attempt_in(&self, now: Instant) -> Option<Duration> {
        self.failing
            .values()
            .map(|f| f.retry_at.saturating_duration_since(now))
            .min()
    }
}

/// What a [`FailureLog`] says about an outcome: whether it is news worth a log
/// line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The key was fine (or unknown) and now fails: log at WARN/ERROR.
    StartedFailing,
    /// It was failing and fails differently now: log again.
    FailsDifferently,
    /// Same failure as last time: DEBUG at most.
    StillFailing,
    /// It was failing and now works: log the recovery at INFO.
    Recovered,
    /// It worked and still works: nothing to say.
    StillFine,
}

impl Change {
    /// Whether this outcome deserves a line at the normal log level.
    pub(crate) fn is_news(self) -> bool {
        matches!(
            self,
            Change::StartedFailing | Change::FailsDifferently | Change::Recovered
        )
    }
}

/// The last error message per key, to log failures when the state changes.
///
/// Messages are compared as given: pass the error's user-facing text (which
/// must already be free of secrets), not something with a timestamp or request
/// id in it, or every retry looks new.
#[derive(Debug)]
pub struct FailureLog<K = Subject> {
    last_error: HashMap<K, String>,
}

impl<K> Default for FailureLog<K> {
    fn default() -> Self {
        FailureLog {
            last_error: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> FailureLog<K> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records that `key` failed with `message`.
    pub(crate) fn failure<Q>(&mut self, key: &Q, message: &str) -> Change
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.last_error.get_mut(key) {
            Some(last) if last == message => Change::StillFailing,
            Some(last) => {
                message.clone_into(last);
                Change::FailsDifferently
            }
            None => {
                self.last_error.insert(key.to_owned(), message.to_owned());
                Change::StartedFailing
            }
        }
    }

    /// Records that `key` succeeded.
    pub(crate) fn success<Q>(&mut self, key: &Q) -> Change
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.last_error.remove(key).is_some() {
            Change::Recovered
        } else {
            Change::StillFine
        }
    }

    /// Forgets every key `keep` says no to, without calling it a recovery.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.last_error.retain(|key, _| keep(key));
    }

    /// The keys failing right now, with their last message.
    #[cfg(test)]
    pub(crate) fn failing(&self) -> impl Iterator<Item = (&K, &str)> {
        self.last_error.iter().map(|(k, v)| (k, v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays_double_from_five_seconds_up_to_five_minutes() {
        let delays: Vec<_> = (1..=9).map(delay_for).collect();
        assert_eq!(
            delays,
            vec![
                S(5),
                S(10),
                S(20),
                S(40),
                S(80),
                S(160),
                S(300),
                S(300),
                S(300)
            ]
        );
        assert_eq!(delay_for(0), S(5));
        assert_eq!(delay_for(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_failing_key_waits_and_a_success_resets_it() {
        let t0 = Instant::now();
        let mut backoff = Backoff::<String>::new();
        assert!(backoff.should_attempt("a", t0));
        assert_eq!(backoff.next_attempt_in(t0), None);

        assert_eq!(backoff.record_failure_with_jitter("a", t0, 0.0), S(5));
        assert!(!backoff.should_attempt("a", t0 + S(4)));
        assert!(backoff.should_attempt("a", t0 + S(5)));
        assert!(backoff.should_attempt("b", t0), "keys are independent");
        assert_eq!(backoff.next_attempt_in(t0 + S(1)), Some(S(4)));

        let t1 = t0 + S(5);
        assert_eq!(backoff.record_failure_with_jitter("a", t1, 0.0), S(10));
        assert!(!backoff.should_attempt("a", t1 + S(9)));
        assert_eq!(backoff.failures("a"), 2);

        backoff.record_success("a");
        assert!(backoff.should_attempt("a", t1));
        assert_eq!(backoff.failures("a"), 0);
        assert_eq!(
            backoff.record_failure_with_jitter("a", t1, 0.0),
            S(5),
            "after a success the next failure starts again from the base delay"
        );
    }

    #[test]
    fn next_attempt_is_the_earliest_key() {
        let t0 = Instant::now();
        let mut backoff = Backoff::<String>::new();
        backoff.record_failure_with_jitter("a", t0, 0.0);
        backoff.record_failure_with_jitter("a", t0, 0.0);
        backoff.record_failure_with_jitter("b", t0, 0.0);
        assert_eq!(backoff.next_attempt_in(t0), Some(S(5)));
        assert_eq!(backoff.next_attempt_in(t0 + S(60)), Some(Duration::ZERO));
        backoff.forget("b");
        assert_eq!(backoff.next_attempt_in(t0), Some(S(10)));
    }

    #[test]
    fn a_lower_cap_is_applied_before_the_jitter_so_capped_retries_spread() {
        let t0 = Instant::now();
        let cap = S(30);
        let mut early = Backoff::<String>::new();
        let mut late = Backoff::<String>::new();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let e = early.record_failure_capped_with_jitter("authentik", t0, cap, 0.0);
            let l = late.record_failure_capped_with_jitter("authentik", t0, cap, 1.0);
            delays.push((e, l));
        }
        assert_eq!(
            delays,
            [
                (S(5), S(4)),
                (S(10), S(8)),
                (S(20), S(16)),
                // Capped, then jittered: 30 s at most, 24 s at least.
                (S(30), S(24)),
                (S(30), S(24)),
                (S(30), S(24)),
            ]
        );
        // The stored retry time is the capped one, not the uncapped delay.
        assert!(early.should_attempt("authentik", t0 + S(30)));
        assert!(!late.should_attempt("authentik", t0 + S(23)));
        assert!(late.should_attempt("authentik", t0 + S(24)));
        assert_eq!(late.next_attempt_in(t0), Some(S(24)));
        // With the jitter picked at random: within 80% of the cap and the cap.
        let mut random = Backoff::<String>::new();
        for failures in 1..=6 {
            let d = random.record_failure_capped("authentik", t0, cap);
            let base = delay_for(failures).min(cap);
            assert!(d <= base && d >= base.mul_f64(0.8), "{failures}: {d:?}");
        }
        // Without a lower cap, MAX_DELAY is the cap.
        let mut plain = Backoff::<String>::new();
        for _ in 0..9 {
            plain.record_failure_with_jitter("s", t0, 1.0);
        }
        assert_eq!(plain.record_failure_with_jitter("s", t0, 1.0), S(240));
    }

    proptest! {
        #[test]
        fn capped_delays_stay_between_eighty_percent_of_the_cap_and_the_cap(
            failures in 1_u32..20, unit in 0.0_f64..=1.0, cap_secs in 1_u64..600,
        ) {
            let cap = S(cap_secs).min(MAX_DELAY);
            let mut backoff = Backoff::<u8>::new();
            let mut last = Duration::ZERO;
            for _ in 0..failures {
                last = backoff.record_failure_capped_with_jitter(&0, Instant::now(), cap, unit);
            }
            let base = delay_for(failures).min(cap);
            prop_assert!(last <= cap);
            prop_assert_eq!(last, base.mul_f64(1.0 - JITTER_FRACTION * unit));
        }

        #[test]
        fn jittered_delays_stay_between_eighty_percent_and_the_cap(
            failures in 0_u32..100, unit in -1.0_f64..2.0,
        ) {
            let base = delay_for(failures);
            let d = with_jitter(base, unit);
            prop_assert!(d <= base);
            prop_assert!(d <= MAX_DELAY);
            prop_assert!(d >= base.mul_f64(1.0 - JITTER_FRACTION) - Duration::from_nanos(1));
        }
    }

    #[test]
    fn failures_are_news_when_they_start_change_or_end() {
        let mut log = FailureLog::<String>::new();
        assert_eq!(log.success("a"), Change::StillFine);
        assert_eq!(log.failure("a", "HTTP 503"), Change::StartedFailing);
        assert_eq!(log.failure("a", "HTTP 503"), Change::StillFailing);
        assert_eq!(log.failure("a", "HTTP 403"), Change::FailsDifferently);
        assert_eq!(log.failure("b", "HTTP 403"), Change::StartedFailing);
        assert_eq!(log.failing().filter(|(_, m)| *m == "HTTP 403").count(), 2);
        assert_eq!(log.success("a"), Change::Recovered);
        assert_eq!(log.success("a"), Change::StillFine);
        assert!(Change::Recovered.is_news());
        assert!(!Change::StillFailing.is_news());
        assert!(!Change::StillFine.is_news());
    }
}
