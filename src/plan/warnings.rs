//! Security-relevant changes in a plan, which a reviewer must not miss in a
//! long diff, flagged in every rendering and counted in the summary. Each
//! kind says which of its changes are such ([`crate::kinds::captcha::warnings`]:
//! a key or a login page's script moving to another host).
//!
//! Pure: a function of the [`Plan`].

use std::fmt;

use serde::Serialize;

use super::{Action, Plan};
use crate::kinds::{Kind, Object, captcha, guard};

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
        if self.field == GUARD_REMOVED {
            return format!(
                "a guard is removed: {} runs without this captcha (guards)",
                self.from
            );
        }
        let what = captcha::warnings::meaning(self.field);
        format!("{what}: {} -> {} ({})", self.from, self.to, self.field)
    }
}

/// `stage `name`: the key will be sent to a new host: a -> b (api_url)`.
impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field == GUARD_REMOVED {
            let (captcha, _) = guard::split_name(&self.stage);
            return write!(f, "captcha `{captcha}`: {}", self.message());
        }
        write!(f, "stage `{}`: {}", self.stage, self.message())
    }
}

/// The `field` of a warning that a guard is removed.
const GUARD_REMOVED: &str = "guards";

/// Every security-relevant change in `plan`, in entry order: a key or a
/// script moving host, a guard removed (a login flow loses its captcha).
pub(crate) fn warnings(plan: &Plan) -> Vec<Warning> {
    let mut found = Vec::new();
    for entry in plan.entries.iter().filter(|e| e.kind == Kind::Guard) {
        let removed = match &entry.action {
            Action::Delete { held: None, .. } => true,
            Action::Update { write, .. } => {
                matches!(&write.object, Object::Guard(w) if guard::matching::removes(w))
            }
            _ => false,
        };
        if removed {
            let (_, what) = guard::split_name(&entry.name);
            found.push(Warning {
                stage: entry.name.clone(),
                field: GUARD_REMOVED,
                from: what.to_owned(),
                to: String::new(),
            });
        }
    }
    for stage in &plan.entries {
        let Action::Update { changes, .. } = &stage.action else {
            continue;
        };
        for (field, from, to) in captcha::warnings::host_moves(changes) {
            found.push(Warning {
                stage: stage.name.clone(),
                field,
                from,
                to,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

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
