//! Security-relevant changes of a captcha stage, which a reviewer must not
//! miss in a long diff: an update that moves `api_url` to another host sends
//! the key authentik already holds to that host on the next captcha check, and
//! one that moves `js_url` makes every visitor's browser run a script from
//! elsewhere.
//!
//! Pure: a function of an update's field changes. Hosts are compared with
//! their port (`host:8443` is another host than `host`), after the URL
//! parser's normalisation (lower case); a URL that does not parse is compared
//! as text. A new stage is not a change of host: its hosts are in its diff,
//! and the manifest checks allowed them.

use super::{API_URL, JS_URL};
use crate::kinds::field::{FieldChange, Value};

/// A field that moved to another host: `(field, from, to)`.
pub(crate) type HostMove = (&'static str, String, String);

/// Every `api_url` or `js_url` of `changes` whose host changes, in order.
pub(crate) fn host_moves(changes: &[FieldChange]) -> Vec<HostMove> {
    changes
        .iter()
        .filter(|c| c.field == API_URL.key || c.field == JS_URL.key)
        .filter_map(|change| {
            let (Value::Str(old), Value::Str(new)) = (&change.old, &change.new) else {
                return None;
            };
            let (from, to) = (host_of(old), host_of(new));
            (from != to).then_some((change.field, from, to))
        })
        .collect()
}

/// What a move of `field` means, for the reviewer.
pub(crate) fn meaning(field: &str) -> &'static str {
    if field == API_URL.key {
        "the key will be sent to a new host"
    } else {
        "the login page will load its script from a new host"
    }
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
    fn only_url_fields_that_change_host_are_moves() {
        let change = |field, old: &str, new: &str| FieldChange {
            field,
            old: Value::Str(old.into()),
            new: Value::Str(new.into()),
        };
        let moves = host_moves(&[
            change("api_url", "https://a.example/x", "https://b.example/x"),
            change("js_url", "https://a.example/x", "https://a.example/y"),
            change("public_key", "https://a.example", "https://b.example"),
        ]);
        assert_eq!(
            moves,
            [("api_url", "a.example".to_owned(), "b.example".to_owned())]
        );
        assert_eq!(meaning("api_url"), "the key will be sent to a new host");
        assert_eq!(
            meaning("js_url"),
            "the login page will load its script from a new host"
        );
    }
}
