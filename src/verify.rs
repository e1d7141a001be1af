//! Key checks: does each stage's private key work with its captcha provider?
//!
//! authentik stores whatever key it is given; a wrong or revoked one shows only
//! when nobody can log in. The providers can tell: their `siteverify` endpoint,
//! asked the way authentik asks it, answers a made-up response token with
//! `invalid-input-response` when the secret is good and `invalid-input-secret`
//! when it is not. The flow:
//!
//! [`KeyProbe::from_desired`] (pure: what to send where) -> [`Prober::verify`]
//! (I/O: one POST per stage, bounded concurrency, one timeout each, no retry)
//! -> [`classify`] (pure: the provider's answer to a [`Reason`], whose
//! [`Verdict`] is `valid`, `invalid`, `mismatch` or `unknown`).
//!
//! What is sent, to the stage's `api_url` only: `secret` (the key), `response`
//! ([`PROBE_TOKEN`], never a real user's), `remoteip` ([`PROBE_REMOTE_IP`], a
//! documentation address) and `sitekey` (the stage's public key, so hCaptcha can
//! report `sitekey-secret-mismatch`), form-encoded as authentik does, or as JSON
//! when the stage's `request_content_type` is `application/json` (authentik
//! 2026.8 and later).
//!
//! Traps:
//! - The key travels in the body only, never in the URL, a header or a log line.
//! - A manifest chooses `api_url`: the operator's host check ([`HostCheck`]) runs
//!   before anything is sent, and a refused host is reported, never contacted.
//! - Redirects are not followed: a 307 would send the body, key included, to
//!   wherever the `Location` points.
//! - No retry: providers rate-limit `siteverify`, and a key check is not worth
//!   tripping the limit that real logins depend on. A failure is `unknown`.
//! - `success: true` cannot happen for a made-up token with a real key; the
//!   providers' always-pass test keys do answer it. The provider accepted the
//!   secret, so it is `valid`, with its own reason ([`Reason::ProbeAccepted`]).

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub(crate) use crate::plan::key_check::{BodyEncoding, KeyCheck, KeyProbe, Reason, Verdict};
use crate::policy::ProviderHosts;
use crate::secret::{ExposeSecret, Redactor};
use crate::text::error_chain;

/// The response token every probe sends: no provider ever issued it.
pub const PROBE_TOKEN: &str = "stagesync-key-check-probe-not-a-captcha-response";
/// The `remoteip` every probe sends: TEST-NET-1 (RFC 5737), nobody's address.
pub(crate) const PROBE_REMOTE_IP: &str = "192.0.2.1";
/// How much of an answer is read: a provider's verdict is under 1 KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Error codes kept from one answer, and characters kept of each.
const MAX_CODES: usize = 16;
const MAX_CODE_CHARS: usize = 64;

/// Codes by which a provider refuses the secret itself.
const SECRET_REFUSED: [&str; 2] = ["invalid-input-secret", "missing-input-secret"];
/// hCaptcha: the secret is valid but belongs to another site key.
const SITE_KEY_MISMATCH: &str = "sitekey-secret-mismatch";
/// Codes by which a provider refuses the token after accepting the secret.
const TOKEN_REFUSED: [&str; 6] = [
    "invalid-input-response",
    "missing-input-response",
    "timeout-or-duplicate",
    "expired-input-response",
    "already-seen-response",
    "invalid-or-already-seen-response",
];

/// Decides whether a provider URL may receive a key: `Err` says why not.
/// The operator's allowlist, resolved from flags, never from a manifest.
pub(crate) type HostCheck<'a> = &'a (dyn Fn(&Url) -> Result<(), String> + Sync);

/// The operator's provider allowlist as a [`HostCheck`]: the manifests passed
/// the same check while loading; asking again per URL keeps the rule next to
/// the request that would carry the key.
pub(crate) fn allowed_by(hosts: &ProviderHosts) -> impl Fn(&Url) -> Result<(), String> + Sync + '_ {
    move |url| hosts.check(url).map_err(|refused| refused.to_string())
}

/// The body of a probe and its content type. Holds the key: goes on the wire
/// and nowhere else.
fn probe_body(probe: &KeyProbe) -> (&'static str, Vec<u8>) {
    let fields = [
        ("secret", probe.private_key.expose_secret()),
        ("response", PROBE_TOKEN),
        ("remoteip", PROBE_REMOTE_IP),
        ("sitekey", probe.site_key.as_str()),
    ];
    match probe.encoding {
        BodyEncoding::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in fields {
                form.append_pair(name, value);
            }
            (
                "application/x-www-form-urlencoded",
                form.finish().into_bytes(),
            )
        }
        BodyEncoding::Json => {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.into()))
                .collect();
            (
                "application/json",
                serde_json::to_vec(&object).unwrap_or_default(),
            )
        }
    }
}

/// A provider's answer, as far as the verdict goes.
#[derive(serde::Deserialize)]
struct ProviderAnswer {
    success: bool,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<serde_json::Value>,
}

/// The verdict of one answer, and the provider's codes. Pure.
pub(crate) fn classify(status: u16, body: &[u8]) -> (Reason, Vec<String>) {
    if !(200..300).contains(&status) && !(400..500).contains(&status) {
        return (Reason::Status(status), Vec::new());
    }
    let Ok(answer) = serde_json::from_slice::<ProviderAnswer>(body) else {
        let reason = if status >= 400 {
            Reason::Status(status)
        } else {
            Reason::NotProviderJson
        };
        return (reason, Vec::new());
    };
    let codes: Vec<String> = answer
        .error_codes
        .iter()
        .filter_map(|c| c.as_str())
        .take(MAX_CODES)
        .map(|c| c.chars().take(MAX_CODE_CHARS).collect())
        .collect();
    let has = |wanted: &str| codes.iter().any(|c| c == wanted);
    let reason = if answer.success {
        Reason::ProbeAccepted
    } else if SECRET_REFUSED.iter().any(|c| has(c)) {
        Reason::SecretRefused
    } else if has(SITE_KEY_MISMATCH) {
        Reason::SiteKeyMismatch
    } else if TOKEN_REFUSED.iter().any(|c| has(c)) {
        Reason::TokenRefused
    } else {
        Reason::NoVerdict
    };
    (reason, codes)
}

/// How key checks run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProbeSettings {
    /// For one whole check: connect, send, read the answer.
    pub(crate) timeout: Duration,
    /// Checks in flight at once.
    pub(crate) concurrency: usize,
}

impl Default for ProbeSettings {
    /// What `stagesync verify` uses without flags, and the daemon always.
    fn default() -> Self {
        ProbeSettings {
            timeout: Duration::from_secs(10),
            concurrency: 4,
        }
    }
}

/// The client that asks providers. Build once, reuse (the daemon keeps one).
#[derive(Clone)]
pub(crate) struct Prober {
    http: reqwest::Client,
    settings: ProbeSettings,
}

/// The HTTP client could not be built (TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client for key checks: {0}")]
pub(crate) struct ProberError(String);

impl Prober {
    pub(crate) fn new(settings: ProbeSettings) -> Result<Prober, ProberError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("stagesync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProberError(e.to_string()))?;
        Ok(Prober { http, settings })
    }

    /// Checks every probe's key, at most `concurrency` at once; the results come
    /// in the order of `probes`. URLs `allowed` refuses are never contacted.
    pub(crate) async fn verify(
        &self,
        probes: &[KeyProbe],
        allowed: HostCheck<'_>,
    ) -> Vec<KeyCheck> {
        let mut results: Vec<Option<KeyCheck>> = vec![None; probes.len()];
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for (index, probe) in probes.iter().enumerate() {
            let url = match Url::parse(probe.api_url.trim()) {
                Ok(url) => url,
                Err(e) => {
                    results[index] = Some(not_sent(probe, Reason::BadUrl(e.to_string())));
                    continue;
                }
            };
            if let Err(why) = allowed(&url) {
                tracing::warn!(stage = %probe.stage, api_url = %url, reason = %why, "key check: provider host not allowed, not contacted");
                results[index] = Some(not_sent(probe, Reason::NotAllowed(why)));
                continue;
            }
            let prober = self.clone();
            let probe = probe.clone();
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (index, prober.check(&probe, url).await)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            // A check only ends without a result if it panicked (a bug); its
            // stage is then reported unknown below rather than lost.
            if let Ok((index, check)) = joined {
                results[index] = Some(check);
            }
        }
        results
            .into_iter()
            .zip(probes)
            .map(|(check, probe)| {
                check.unwrap_or_else(|| not_sent(probe, Reason::Network("the check failed".into())))
            })
            .collect()
    }

    async fn check(&self, probe: &KeyProbe, url: Url) -> KeyCheck {
        tracing::debug!(stage = %probe.stage, api_url = %url, "key check: asking the provider");
        let (content_type, body) = probe_body(probe);
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(body);
        let timeout = self.settings.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let mut response = request.send().await?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                let room = MAX_ANSWER_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        let (reason, error_codes, status) = match answer {
            Err(_) => (Reason::Timeout(timeout), Vec::new(), None),
            Ok(Err(e)) if e.is_timeout() => (Reason::Timeout(timeout), Vec::new(), None),
            Ok(Err(e)) => (
                Reason::Network(error_chain(&e.without_url())),
                Vec::new(),
                None,
            ),
            Ok(Ok((status, body))) => {
                // A provider may quote the key it was sent: never repeat it.
                let body = Redactor::of(&probe.private_key).redact(&body).into_owned();
                let (reason, codes) = classify(status, &body);
                (reason, codes, Some(status))
            }
        };
        tracing::debug!(stage = %probe.stage, result = reason.verdict().as_str(), error_codes = ?error_codes, "key check done");
        KeyCheck {
            stage: probe.stage.clone(),
            api_url: probe.api_url.clone(),
            reason,
            error_codes,
            status,
        }
    }
}

fn not_sent(probe: &KeyProbe, reason: Reason) -> KeyCheck {
    KeyCheck {
        stage: probe.stage.clone(),
        api_url: probe.api_url.clone(),
        reason,
        error_codes: Vec::new(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(status: u16, body: &str) -> (Verdict, Reason, Vec<String>) {
        let (reason, codes) = classify(status, body.as_bytes());
        (reason.verdict(), reason, codes)
    }

    #[test]
    fn the_secret_codes_decide_before_the_token_codes() {
        let (verdict, _, codes) = reason(
            200,
            r#"{"success":false,"error-codes":["invalid-input-response"]}"#,
        );
        assert_eq!(verdict, Verdict::Valid);
        assert_eq!(codes, ["invalid-input-response"]);
        let both =
            r#"{"success":false,"error-codes":["invalid-input-response","invalid-input-secret"]}"#;
        assert_eq!(reason(200, both).1, Reason::SecretRefused);
        let missing = r#"{"success":false,"error-codes":["missing-input-secret"]}"#;
        assert_eq!(reason(400, missing).0, Verdict::Invalid);
        let mismatch = r#"{"success":false,"error-codes":["sitekey-secret-mismatch","invalid-input-response"]}"#;
        assert_eq!(reason(200, mismatch).1, Reason::SiteKeyMismatch);
    }

    #[test]
    fn a_probe_token_accepted_means_the_secret_was_accepted() {
        assert_eq!(reason(200, r#"{"success":true}"#).1, Reason::ProbeAccepted);
        assert_eq!(reason(200, r#"{"success":true}"#).0, Verdict::Valid);
    }

    #[test]
    fn answers_that_do_not_tell_are_unknown() {
        for (status, body, want) in [
            (200, r#"{"success":false}"#, Reason::NoVerdict),
            (
                200,
                r#"{"success":false,"error-codes":["bad-request"]}"#,
                Reason::NoVerdict,
            ),
            (200, "<html>hi</html>", Reason::NotProviderJson),
            (200, r#"{"ok":true}"#, Reason::NotProviderJson),
            (
                500,
                r#"{"success":false,"error-codes":["invalid-input-secret"]}"#,
                Reason::Status(500),
            ),
            (302, "", Reason::Status(302)),
            (404, "<html>not found</html>", Reason::Status(404)),
        ] {
            assert_eq!(reason(status, body).1, want, "{status} {body}");
            assert_eq!(reason(status, body).0, Verdict::Unknown);
        }
    }

    #[test]
    fn codes_are_bounded() {
        let long = "x".repeat(1000);
        let many: Vec<String> = (0..100).map(|_| long.clone()).collect();
        let body = serde_json::json!({"success": false, "error-codes": many}).to_string();
        let (_, _, codes) = reason(200, &body);
        assert_eq!(codes.len(), MAX_CODES);
        assert!(codes.iter().all(|c| c.len() == MAX_CODE_CHARS));
    }

    #[test]
    fn the_body_is_a_form_or_json_as_the_stage_says() {
        let probe = |encoding| KeyProbe {
            stage: "s".into(),
            api_url: "https://p.example/siteverify".into(),
            site_key: "site & key".into(),
            encoding,
            private_key: crate::secret::SecretString::from("k=1&2".to_owned()),
        };
        let (ct, body) = probe_body(&probe(BodyEncoding::Form));
        assert_eq!(ct, "application/x-www-form-urlencoded");
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        assert!(form.contains(&("secret".into(), "k=1&2".into())));
        assert!(form.contains(&("sitekey".into(), "site & key".into())));
        assert!(form.contains(&("response".into(), PROBE_TOKEN.into())));
        let (ct, body) = probe_body(&probe(BodyEncoding::Json));
        assert_eq!(ct, "application/json");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["secret"], "k=1&2");
        assert_eq!(json["remoteip"], PROBE_REMOTE_IP);
        assert_eq!(
            BodyEncoding::from_content_type(Some(" Application/JSON ")),
            BodyEncoding::Json
        );
        assert_eq!(BodyEncoding::from_content_type(None), BodyEncoding::Form);
    }
}
