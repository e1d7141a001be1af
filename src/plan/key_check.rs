//! Key checks as values: what a check sends ([`KeyProbe`]) and what it found
//! ([`KeyCheck`], [`Reason`], [`Verdict`]). Pure data beside the plan, which
//! shows them (`plan --verify-keys`); the I/O that makes them is
//! [`crate::verify`].

use std::time::Duration;

use serde::Serialize;

use crate::kinds::captcha::{DesiredStage, StageFields};
use crate::secret::PrivateKey;

/// How a probe's body is encoded, from the stage's `request_content_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEncoding {
    Form,
    Json,
}

impl BodyEncoding {
    /// JSON only for `application/json`; the default and anything else is a form,
    /// as authentik sends it.
    pub(crate) fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.trim().eq_ignore_ascii_case("application/json") => BodyEncoding::Json,
            _ => BodyEncoding::Form,
        }
    }
}

/// What one key check sends, and where.
#[derive(Clone, Debug)]
pub(crate) struct KeyProbe {
    pub(crate) stage: String,
    pub(crate) api_url: String,
    pub(crate) site_key: String,
    pub(crate) encoding: BodyEncoding,
    pub(crate) private_key: PrivateKey,
}

impl KeyProbe {
    pub(crate) fn from_desired(desired: &DesiredStage) -> Self {
        Self::new(&desired.fields, &desired.private_key)
    }

    /// The probe for a stage with these fields and key. Given the fields a
    /// write sends (cut to what the server knows), the encoding is the one that
    /// authentik version would use.
    pub(crate) fn new(fields: &StageFields, private_key: &PrivateKey) -> Self {
        KeyProbe {
            stage: fields.name.trim().to_owned(),
            api_url: fields.api_url.clone(),
            site_key: fields.public_key.clone(),
            encoding: BodyEncoding::from_content_type(fields.request_content_type.as_deref()),
            private_key: private_key.clone(),
        }
    }
}

/// The answer to "does this key work?", as the metric labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Valid,
    Invalid,
    Mismatch,
    Unknown,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Mismatch => "mismatch",
            Verdict::Unknown => "unknown",
        }
    }
}

/// Why a check ended as it did. Never holds a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The secret was accepted, only the probe token was refused.
    TokenRefused,
    /// `success: true` for a made-up token: an always-pass test key.
    ProbeAccepted,
    /// The provider refused the secret.
    SecretRefused,
    /// The secret belongs to another site key (hCaptcha).
    SiteKeyMismatch,
    /// The operator's host check refused the URL; nothing was sent.
    NotAllowed(String),
    /// `api_url` is not a URL that can be asked.
    BadUrl(String),
    /// No complete answer within the timeout.
    Timeout(Duration),
    /// Connection refused, DNS, TLS, reset.
    Network(String),
    /// A status that carries no verdict (3xx, 5xx, or 4xx without the provider's JSON).
    Status(u16),
    /// An answer that is not the provider's JSON (an HTML page, a proxy's error).
    NotProviderJson,
    /// The provider's JSON, but no code that tells about the secret.
    NoVerdict,
}

impl Reason {
    pub(crate) fn verdict(&self) -> Verdict {
        match self {
            Reason::TokenRefused | Reason::ProbeAccepted => Verdict::Valid,
            Reason::SecretRefused => Verdict::Invalid,
            Reason::SiteKeyMismatch => Verdict::Mismatch,
            _ => Verdict::Unknown,
        }
    }

    /// Whether the provider was asked (false: refused or unusable URL).
    pub(crate) fn contacted(&self) -> bool {
        !matches!(self, Reason::NotAllowed(_) | Reason::BadUrl(_))
    }

    /// A sentence for people. May hold text from a manifest: escape before printing.
    pub(crate) fn describe(&self) -> String {
        match self {
            Reason::TokenRefused => {
                "the provider accepted the key (it refused only the probe token)".into()
            }
            Reason::ProbeAccepted => {
                "the provider accepted the key and even the probe token (an always-pass test key?)"
                    .into()
            }
            Reason::SecretRefused => "the provider refused the key".into(),
            Reason::SiteKeyMismatch => "the key belongs to another site key than public_key".into(),
            Reason::NotAllowed(why) => format!("not contacted: {why}"),
            Reason::BadUrl(why) => format!("not contacted: api_url cannot be used: {why}"),
            Reason::Timeout(limit) => {
                format!("no answer within {}", humantime::format_duration(*limit))
            }
            Reason::Network(why) => format!("could not reach the provider: {why}"),
            Reason::Status(status) => format!("HTTP {status} without a verdict"),
            Reason::NotProviderJson => {
                "the answer is not a captcha provider's JSON (wrong api_url?)".into()
            }
            Reason::NoVerdict => "the provider did not say whether it accepts the key".into(),
        }
    }
}

/// The result of one stage's key check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyCheck {
    pub(crate) stage: String,
    pub(crate) api_url: String,
    pub(crate) reason: Reason,
    /// The provider's own `error-codes`, as it sent them (bounded).
    pub(crate) error_codes: Vec<String>,
    /// The HTTP status, when an answer arrived.
    pub(crate) status: Option<u16>,
}

impl KeyCheck {
    pub(crate) fn verdict(&self) -> Verdict {
        self.reason.verdict()
    }
}
