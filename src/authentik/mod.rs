//! Talking to authentik: the transport every kind's endpoints use, its
//! retries and errors, and what is not a kind's own. What the server version
//! allows is pure and lives in [`crate::capabilities`]; it is re-exported here
//! because every caller of the client needs it. Each kind's endpoints are in
//! its own module (the captcha stage's: [`crate::kinds::captcha::api`]).
//!
//! - [`transport`]: the HTTP client: retries, bounded answers, pages of lists,
//!   a create whose answer was lost, errors in the user's words.
//! - [`name_check`]: which stages (of any type) hold a set of names, by
//!   look-ups or by listing every stage, whichever costs fewer calls.
//! - [`events`]: the event log (who changed what) and the token's user.
//! - `wire`: pages, the version, stages of every type, the shape of a 400.

pub(crate) mod error;
pub mod events;
pub(crate) mod name_check;
pub(crate) mod retry;
pub(crate) mod transport;
pub(crate) mod wire;

pub use crate::capabilities::{Capabilities, ServerVersion};
pub use error::ApiError;
pub use retry::RetryPolicy;
pub use transport::{Client, RequestRecord};
pub use wire::NamedStage;

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Token;

/// How to reach authentik, as resolved from flags and environment.
///
/// `url` is the install's root as the user gave it (`https://auth.example.com`,
/// with or without a trailing slash or `/api/v3`); the client normalises it.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub url: String,
    pub token: Token,
    /// Extra root certificate (PEM) for a private CA.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Dangerous; warned about loudly.
    pub insecure_skip_tls_verify: bool,
    /// Allow `http://` to hosts other than loopback.
    pub allow_http: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl ClientSettings {
    /// Default connect timeout: long enough for a slow TLS handshake, short
    /// enough that a wrong host fails fast.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default per-request timeout: a list of 100 stages takes ~200 ms on a real
    /// server; 30 s leaves room for a loaded one without hanging forever.
    pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
}
