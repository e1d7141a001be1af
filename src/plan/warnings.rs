//! Security-relevant changes in a plan, which a reviewer must not miss in a
//! long diff: an update that moves `api_url` to another host sends the key
//! authentik already holds to that host on the next captcha check, and one that
//! moves `js_url` makes every visitor's browser run a script from elsewhere.
//!
//! Pure: a function of the [`Plan`]. Hosts are compared with their port
//! (`host:8443` is another host than `host`), after the URL parser's
//! normalisation (lower case); a URL that does not parse is compared as text.
//! A new stage is not a change of host: its hosts are in its diff, and the
//! manifest checks allowed them.

use std::fmt;

use serde::Serialize;

use super::{Action, Plan};
use crate::stage::{Field, Value};

/// One security-relevant change of one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Warning {
    pub(crate) stage: String,
    /// `api_url` or `js_url`.
    pub(crate) field: &'static str,
    /// The live host (with its port, when not the default).
    pub(crate) from: String,
    /// The manifest's host.
    pub(crate) to: String,
}

impl Warning {
    /// What the change means, without the stage's name.
    pub(crate) fn message(&self) -> String {
        let what = if self.field == Field::ApiUrl.key() {
            "the key will be sent to a new host"
        } else {
            "the login page will load its script from a new host"
        };
        format!("{what}: {} -> {} ({})", self.from, self.to, self.field)
    }
}

/// `stage `name`: the key will be sent to a new host: a -> b (api_url)`.
impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage `{}`: {}", self.stage, self.message())
    }
}

/// Every change of an `api_url` or `js_url` host in `plan`, in stage order.
pub(crate) fn warnings(plan: &Plan) -> Vec<Warning> {
    let mut found = Vec::new();
    for stage in &plan.stages {
        let Action::Update { changes, .. } = &stage.action else {
            continue;
        };
        for change in changes {
            if !matches!(change.field, Field::ApiUrl | Field::JsUrl) {
                continue;
            }
            let (Value::Str(old), Value::Str(new)) = (&change.old, &change.new) else {
                continue;
            };
            let (from, to) = (host_of(old), host_of(new));
            if from != to {
                found.push(Warning {
                    stage: stage.name.clone(),
                    field: change.field.key(),
                    from,
                    to,
                });
            }
        }
    }
    found
}

/// `host` or `host:port` of an https URL, `scheme://host[:port]` of any
/// other (so a move to plain http on the same host, which sends the key
/// unencrypted, is a change too); the text itself when it does not parse.
fn host_of(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(parsed) => {
            let host = match (parsed.host_str(), parsed.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_owned(),
                (None, _) => return url.to_owned(),
            };
            match parsed.scheme() {
                "https" => host,
                scheme => format!("{scheme}://{host}"),
            }
        }
        Err(_) => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_compare_with_their_port_and_in_lower_case() {
        assert_eq!(host_of("https://WWW.Google.com/x"), "www.google.com");
        assert_eq!(host_of("https://a.example:8443/x"), "a.example:8443");
        assert_eq!(host_of("https://a.example:443/x"), "a.example");
        assert_eq!(host_of("not a url"), "not a url");
        // Plain http on the same host is another place to send the key.
        assert_eq!(host_of("http://a.example/x"), "http://a.example");
        assert_ne!(
            host_of("http://a.example/x"),
            host_of("https://a.example/x")
        );
    }

    #[test]
    fn messages_name_both_hosts() {
        let w = Warning {
            stage: "login".into(),
            field: "api_url",
            from: "www.google.com".into(),
            to: "captcha.internal".into(),
        };
        assert_eq!(
            w.to_string(),
            "stage `login`: the key will be sent to a new host: www.google.com -> captcha.internal (api_url)"
        );
        let w = Warning {
            field: "js_url",
            ..w
        };
        assert_eq!(
            w.message(),
            "the login page will load its script from a new host: www.google.com -> captcha.internal (js_url)"
        );
    }
}
