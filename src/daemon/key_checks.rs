//! `stagesync run --verify-keys`: the daemon checks each stage's private key
//! with its captcha provider (see [`crate::verify`] for what is sent where).
//!
//! When: a stage's key is checked when the daemon first sees the stage, and
//! again whenever what a check would send changes (the key, `api_url`,
//! `public_key` or the body encoding). A check that ended `unknown` (timeout,
//! 5xx...) is tried again on the first pass [`RETRY_UNKNOWN`] after it. Not on
//! every resync: providers
//! rate-limit `siteverify`, and real logins share that limit. What was sent is
//! remembered per stage as a salted fingerprint of the key ([`Fingerprint`],
//! a fresh random salt each) plus the non-secret fields, in memory only: a
//! restarted daemon checks every key once more.
//!
//! The pass never waits for a check: [`KeyChecks::schedule`] decides what is
//! due ([`due`], pure), then hands the probes to a background task and
//! returns. One batch runs at a time (a later pass's batch waits for the
//! earlier one), so at most the prober's concurrency of requests are in
//! flight. A result is recorded only if the stage still wants what was
//! checked: a key that changed while its old one was being checked does not
//! get the old key's result.
//!
//! Recording ([`KeyChecks`]'s task): the `stagesync_key_check` state set in
//! [`Metrics`], and a log line when a stage's result changes (the first result
//! included): INFO for valid, WARN for unknown, ERROR for invalid and mismatch.
//! The write goes ahead either way: authentik stores whatever key it is
//! given, and an alert on the metric is the remedy. Stages that leave the
//! manifests lose their series and their memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::daemon::metrics::Metrics;
use crate::daemon::notify::Notifier;
use crate::drift::notify::{Event, Notification};
use crate::kinds::Kind;
use crate::policy::ProviderHosts;
use crate::secret::PrivateKey;
use crate::state::Fingerprint;
use crate::text::escape;
use crate::verify::{BodyEncoding, KeyCheck, KeyProbe, Prober, Verdict, allowed_by};

/// What one check sent for a stage, without the key itself.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    key: Fingerprint,
    api_url: String,
    site_key: String,
    encoding: BodyEncoding,
}

impl Sent {
    pub(crate) fn of(probe: &KeyProbe) -> Self {
        Sent {
            key: Fingerprint::new(&probe.private_key),
            api_url: probe.api_url.clone(),
            site_key: probe.site_key.clone(),
            encoding: probe.encoding,
        }
    }

    /// Whether a check of `probe` would send the same as this one did.
    pub(crate) fn same_as(&self, probe: &KeyProbe) -> bool {
        self.api_url == probe.api_url
            && self.site_key == probe.site_key
            && self.encoding == probe.encoding
            && self.key.matches(&probe.private_key)
    }
}

/// How long after a check that could not tell (`unknown`) it is tried again:
/// long enough not to press a struggling provider, short enough that an alert
/// on `unknown` clears on its own once the provider answers.
pub(crate) const RETRY_UNKNOWN: Duration = Duration::from_secs(15 * 60);

/// What the daemon remembers of one stage's key.
#[derive(Clone, Debug)]
pub(crate) struct Remembered {
    /// What the latest check sent (or is sending).
    pub(crate) sent: Sent,
    /// Identifies that check, so a late answer to an earlier one is dropped.
    pub(crate) generation: u64,
    /// The last result recorded for the stage (possibly of an earlier key).
    pub(crate) result: Option<Verdict>,
    /// When the latest check was started.
    pub(crate) started: Instant,
}

impl Remembered {
    /// Whether the latest check ended `unknown` long enough ago to try again.
    fn retry_due(&self, now: Instant) -> bool {
        self.result == Some(Verdict::Unknown)
            && now.saturating_duration_since(self.started) >= RETRY_UNKNOWN
    }
}

/// What is due this pass.
#[derive(Debug, Default)]
pub(crate) struct Due {
    /// Stages to check, each with the first probe of its name.
    pub(crate) check: Vec<KeyProbe>,
    /// Stages no longer in the manifests.
    pub(crate) gone: Vec<String>,
}

/// Which probes differ from what was last sent for their stage (or ended
/// `unknown` [`RETRY_UNKNOWN`] before `now`), and which remembered stages are
/// gone (pure but for hashing). A name that appears twice (the plan reports
/// that conflict) is checked with its first probe.
pub(crate) fn due(
    remembered: &BTreeMap<String, Remembered>,
    probes: Vec<KeyProbe>,
    now: Instant,
) -> Due {
    let mut names = BTreeSet::new();
    let mut check = Vec::new();
    for probe in probes {
        if !names.insert(probe.stage.clone()) {
            continue;
        }
        let settled = remembered
            .get(&probe.stage)
            .is_some_and(|r| r.sent.same_as(&probe) && !r.retry_due(now));
        if !settled {
            check.push(probe);
        }
    }
    let gone = remembered
        .keys()
        .filter(|name| !names.contains(name.as_str()))
        .cloned()
        .collect();
    Due { check, gone }
}

struct Memory {
    stages: BTreeMap<String, Remembered>,
    next_generation: u64,
}

/// The daemon's key checks: what was checked, and the prober that checks.
pub(crate) struct KeyChecks {
    prober: Prober,
    /// The operator's provider allowlist: a key goes nowhere else.
    hosts: Arc<ProviderHosts>,
    metrics: Arc<Metrics>,
    memory: Arc<Mutex<Memory>>,
    /// Held by the batch in flight: one batch at a time.
    batch: Arc<tokio::sync::Mutex<()>>,
    /// `--notify`: a result that changes is worth a message.
    notifier: Option<Notifier>,
}

fn lock(memory: &Mutex<Memory>) -> MutexGuard<'_, Memory> {
    memory
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KeyChecks {
    pub(crate) fn new(prober: Prober, hosts: ProviderHosts, metrics: Arc<Metrics>) -> Self {
        KeyChecks {
            prober,
            hosts: Arc::new(hosts),
            metrics,
            memory: Arc::new(Mutex::new(Memory {
                stages: BTreeMap::new(),
                next_generation: 0,
            })),
            batch: Arc::new(tokio::sync::Mutex::new(())),
            notifier: None,
        }
    }

    /// Sends a notification when a stage's result changes.
    pub(crate) fn with_notifier(mut self, notifier: Option<Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Starts checking the keys that are due among `stages` (name, fields and
    /// key of every desired stage) and forgets the stages that are gone.
    /// Returns at once; the checks record their results when they end.
    pub(crate) fn schedule<'a>(
        &self,
        stages: impl IntoIterator<Item = (&'a crate::kinds::captcha::StageFields, &'a PrivateKey)>,
    ) {
        let probes = stages
            .into_iter()
            .map(|(fields, key)| KeyProbe::new(fields, key))
            .collect();
        let now = Instant::now();
        let mut memory = lock(&self.memory);
        let due = due(&memory.stages, probes, now);
        for name in &due.gone {
            memory.stages.remove(name);
            self.metrics.remove_key_check(name);
        }
        if due.check.is_empty() {
            return;
        }
        let mut generations = Vec::with_capacity(due.check.len());
        for probe in &due.check {
            let generation = memory.next_generation;
            memory.next_generation += 1;
            let result = memory.stages.get(&probe.stage).and_then(|r| r.result);
            memory.stages.insert(
                probe.stage.clone(),
                Remembered {
                    sent: Sent::of(probe),
                    generation,
                    result,
                    started: now,
                },
            );
            generations.push(generation);
        }
        drop(memory);

        let prober = self.prober.clone();
        let hosts = self.hosts.clone();
        let metrics = self.metrics.clone();
        let memory = self.memory.clone();
        let batch = self.batch.clone();
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            let _one_at_a_time = batch.lock().await;
            let checks = prober.verify(&due.check, &allowed_by(&hosts)).await;
            let changed: Vec<Notification> = {
                let mut memory = lock(&memory);
                checks
                    .iter()
                    .zip(generations)
                    .filter_map(|(check, generation)| {
                        record(&mut memory.stages, &metrics, check, generation)
                    })
                    .collect()
            };
            if let Some(notifier) = &notifier {
                for n in &changed {
                    notifier.send(n);
                }
            }
        });
    }
}

/// Records one result if its stage still wants what was checked, and logs it
/// when the stage's result changed; returns the notification of that change.
fn record(
    stages: &mut BTreeMap<String, Remembered>,
    metrics: &Metrics,
    check: &KeyCheck,
    generation: u64,
) -> Option<Notification> {
    let remembered = stages.get_mut(&check.stage)?;
    if remembered.generation != generation {
        return None;
    }
    let verdict = check.verdict();
    let previous = remembered.result.replace(verdict);
    metrics.set_key_check(&check.stage, verdict);
    if previous == Some(verdict) {
        tracing::debug!(stage = %escape(&check.stage), result = verdict.as_str(), "key check: result unchanged");
        return None;
    }
    let mut n = Notification::new(Event::KeyCheckChanged, Kind::CaptchaStage, &check.stage);
    n.reason = Some(format!(
        "key check: {} (was {}): {}",
        verdict.as_str(),
        previous.map_or("not checked", Verdict::as_str),
        check.reason.describe()
    ));
    let stage = escape(&check.stage);
    let api_url = escape(&check.api_url);
    let reason = check.reason.describe();
    let reason = escape(&reason);
    let codes = check.error_codes.join(",");
    let codes = escape(&codes);
    let previous = previous.map_or("none", Verdict::as_str);
    let result = verdict.as_str();
    match verdict {
        Verdict::Valid => {
            info!(stage = %stage, api_url = %api_url, result = %result, previous = %previous, reason = %reason, error_codes = %codes, "key check: the provider accepts the key");
        }
        Verdict::Unknown => {
            warn!(stage = %stage, api_url = %api_url, result = %result, previous = %previous, reason = %reason, error_codes = %codes, "key check: could not tell whether the key works");
        }
        Verdict::Invalid | Verdict::Mismatch => {
            error!(stage = %stage, api_url = %api_url, result = %result, previous = %previous, reason = %reason, error_codes = %codes, "key check: the key does not work; logins through this stage will fail (it is written anyway)");
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::captcha::StageFields;
    use crate::verify::Reason;

    fn probe(name: &str, key: &str) -> KeyProbe {
        let mut fields = StageFields::with_defaults(name, "site-key");
        fields.api_url = "https://provider.example/siteverify".into();
        KeyProbe::new(&fields, &PrivateKey::from(key.to_owned()))
    }

    fn remember(probes: &[KeyProbe], now: Instant) -> BTreeMap<String, Remembered> {
        probes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.stage.clone(),
                    Remembered {
                        sent: Sent::of(p),
                        generation: i as u64,
                        result: Some(Verdict::Valid),
                        started: now,
                    },
                )
            })
            .collect()
    }

    fn names(probes: &[KeyProbe]) -> Vec<&str> {
        probes.iter().map(|p| p.stage.as_str()).collect()
    }

    #[test]
    fn only_new_stages_and_changed_keys_are_due() {
        let now = Instant::now();
        let first = due(
            &BTreeMap::new(),
            vec![probe("a", "k1"), probe("b", "k2")],
            now,
        );
        assert_eq!(names(&first.check), ["a", "b"], "first seen");

        let memory = remember(&first.check, now);
        let later = now + RETRY_UNKNOWN * 10;
        let resync = due(&memory, vec![probe("a", "k1"), probe("b", "k2")], later);
        assert!(resync.check.is_empty(), "a resync checks nothing");
        assert!(resync.gone.is_empty());

        let rotated = due(&memory, vec![probe("a", "k1"), probe("b", "k3")], now);
        assert_eq!(names(&rotated.check), ["b"], "its key changed");

        let mut moved = probe("a", "k1");
        moved.api_url = "https://other.example/siteverify".into();
        assert_eq!(
            names(&due(&memory, vec![moved], now).check),
            ["a"],
            "api_url changed"
        );
        let mut other_site = probe("a", "k1");
        other_site.site_key = "another".into();
        assert_eq!(names(&due(&memory, vec![other_site], now).check), ["a"]);

        let gone = due(&memory, vec![probe("b", "k2"), probe("b", "k9")], now);
        assert_eq!(gone.gone, ["a"]);
        assert!(gone.check.is_empty(), "the first probe of a name counts");
    }

    #[test]
    fn an_unknown_result_is_tried_again_after_a_while_only() {
        let now = Instant::now();
        let mut memory = remember(&[probe("a", "k1")], now);
        memory.get_mut("a").expect("a").result = Some(Verdict::Unknown);
        let again = |at| names(&due(&memory, vec![probe("a", "k1")], at).check).len();
        assert_eq!(again(now + RETRY_UNKNOWN / 2), 0);
        assert_eq!(again(now + RETRY_UNKNOWN), 1);
    }

    #[test]
    fn a_result_for_a_key_no_longer_wanted_is_dropped() {
        let metrics = Metrics::new();
        let mut stages = remember(&[probe("a", "k1")], Instant::now());
        stages.get_mut("a").expect("a").result = None;
        let check = KeyCheck {
            stage: "a".into(),
            api_url: "https://provider.example/siteverify".into(),
            reason: Reason::SecretRefused,
            error_codes: vec!["invalid-input-secret".into()],
            status: Some(200),
        };
        record(&mut stages, &metrics, &check, 7);
        assert_eq!(stages["a"].result, None, "generation 7 is not the latest");
        record(&mut stages, &metrics, &check, 0);
        assert_eq!(stages["a"].result, Some(Verdict::Invalid));
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"stagesync_key_check{stage="a",result="invalid"} 1"#),
            "{text}"
        );
        record(&mut BTreeMap::new(), &metrics, &check, 0);
    }
}
