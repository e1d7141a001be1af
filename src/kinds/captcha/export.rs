//! A manifest from a live captcha stage, for `stagesync export`: the fields
//! in table order, those at authentik's defaults left out so the manifest
//! stays short, and the private key as `!Env` (authentik never returns it).

use std::fmt::Write as _;

use super::{FIELDS, LiveStage, NAME, PUBLIC_KEY, StageFields};
use crate::kinds::field::Value;

/// The manifest text of one live stage. Fields equal to authentik's defaults are
/// omitted; `request_content_type` only when the server reported it.
pub(crate) fn manifest_for(stage: &LiveStage, key_variable: &str) -> String {
    let defaults = StageFields::with_defaults(&stage.fields.name, &stage.fields.public_key);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Exported by stagesync from authentik (stage {}).",
        stage.uuid
    );
    let _ = writeln!(out, "name: {}", yaml_str(&stage.fields.name));
    let _ = writeln!(out, "public_key: {}", yaml_str(&stage.fields.public_key));
    let _ = writeln!(
        out,
        "# authentik never returns the private key: set this variable to it."
    );
    let _ = writeln!(out, "private_key: !Env {key_variable}");
    for field in FIELDS
        .iter()
        .filter(|f| f.key != NAME.key && f.key != PUBLIC_KEY.key)
    {
        let value = field.get(&stage.fields);
        if matches!(value, Value::Absent) || value.same_as(&field.get(&defaults)) {
            continue;
        }
        let text = match value {
            Value::Str(s) => yaml_str(&s),
            other => other.to_string(),
        };
        let _ = writeln!(out, "{}: {text}", field.key);
    }
    out
}

/// A YAML scalar for `s`: plain when that is unambiguous, else double-quoted
/// (a JSON string is a valid YAML double-quoted scalar).
fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !s.contains(": ")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn defaults_are_omitted_and_others_kept() {
        let mut fields = StageFields::with_defaults("rec-login", "site key");
        fields.score_min_threshold = 0.7;
        fields.request_content_type = None;
        let text = manifest_for(
            &LiveStage {
                uuid: Uuid::nil(),
                fields,
            },
            "CAPTCHA_REC_LOGIN_PRIVATE_KEY",
        );
        assert!(text.contains("name: rec-login\n"));
        assert!(text.contains("public_key: \"site key\"\n"));
        assert!(text.contains("private_key: !Env CAPTCHA_REC_LOGIN_PRIVATE_KEY\n"));
        assert!(text.contains("score_min_threshold: 0.7\n"));
        assert!(!text.contains("js_url"));
        assert!(!text.contains("request_content_type"));
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        assert_eq!(yaml_str("yes"), "\"yes\"");
        assert_eq!(yaml_str("123"), "\"123\"");
        assert_eq!(yaml_str("https://x.example/a.js"), "https://x.example/a.js");
        assert_eq!(yaml_str("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
