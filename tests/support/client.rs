//! The library's HTTP client against the simulator, with retries fast enough
//! for tests.

use std::time::Duration;

use stagesync::authentik::{Capabilities, Client, ClientSettings, RetryPolicy, ServerVersion};
use stagesync::kinds::captcha::StageFields;
use stagesync::kinds::captcha::api::StageWrite;
use stagesync::secret::SecretString;
use stagesync::simulator::{self, SimConfig, SimHandle};

/// The token the simulator accepts in these tests. Distinctive, so a leak is
/// easy to find in captured output.
pub const TOKEN: &str = "tok-3f9a1c7e-do-not-print-me";

/// Retry delays small enough for tests, same number of attempts.
pub const FAST_BASE: Duration = Duration::from_millis(5);

/// The simulator on loopback, accepting [`TOKEN`].
pub async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

/// The simulator with `config`, its token replaced by [`TOKEN`].
pub async fn sim_with(config: SimConfig) -> SimHandle {
    simulator::start(SimConfig {
        token: TOKEN.to_owned(),
        ..config
    })
    .await
    .expect("the simulator binds a loopback port")
}

/// Client settings for `url` with [`TOKEN`] and short timeouts.
pub fn settings(url: &str) -> ClientSettings {
    settings_with_token(url, TOKEN)
}

/// Client settings for `url` with `token` and short timeouts.
pub fn settings_with_token(url: &str, token: &str) -> ClientSettings {
    ClientSettings {
        url: url.to_owned(),
        token: SecretString::from(token.to_owned()),
        ca_file: None,
        insecure_skip_tls_verify: false,
        allow_http: false,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

/// A client with fast retries.
pub fn client(url: &str) -> Client {
    client_from(&settings(url))
}

/// A client from `settings`, with fast retries.
pub fn client_from(settings: &ClientSettings) -> Client {
    Client::new(settings)
        .expect("valid test settings")
        .with_retry_policy(RetryPolicy::fast(FAST_BASE))
}

/// What a server of `version` (e.g. `"2025.12.4"`) can do.
pub fn caps(version: &str) -> Capabilities {
    Capabilities::for_version(ServerVersion::parse(version).expect("a version"))
}

/// A private key value.
pub fn key(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// A write of `fields` with `private_key` to a server of `version`: the
/// fields cut to what that server knows, as the planner cuts a plan's writes.
/// Pass [`SendableWrite::request`] to the client.
pub fn write(fields: &StageFields, private_key: &SecretString, version: &str) -> SendableWrite {
    SendableWrite {
        fields: fields.clone().sendable(caps(version)),
        private_key: private_key.clone(),
    }
}

/// What [`write()`] makes.
pub struct SendableWrite {
    fields: StageFields,
    private_key: SecretString,
}

impl SendableWrite {
    pub fn request(&self) -> StageWrite<'_> {
        StageWrite {
            fields: &self.fields,
            private_key: &self.private_key,
        }
    }
}
