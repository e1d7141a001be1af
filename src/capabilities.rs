//! What the connected authentik knows, decided from its version in one place.
//!
//! Pure: no I/O. The client reads the version ([`crate::authentik::Client::version`]);
//! everything here is a function of it, so the planner can depend on it without
//! depending on the HTTP client.
//!
//! A field the server does not know is silently ignored on write and never
//! reported on read, so sending or comparing it would show as drift forever.
//! Every version-dependent decision of the client and the planner asks
//! [`Capabilities`]; nothing else looks at version numbers. The fields a write
//! sends are cut to what the server knows in one place, [`Capabilities::sendable`].

use std::fmt;

use crate::stage::{Field, StageFields};

/// An authentik release, `YEAR.MONTH.PATCH` (e.g. `2025.12.4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    pub(crate) year: u32,
    pub(crate) month: u32,
    pub(crate) patch: u32,
}

impl ServerVersion {
    pub const fn new(year: u32, month: u32, patch: u32) -> Self {
        ServerVersion { year, month, patch }
    }

    /// Parses `2025.12.4`, tolerating a suffix such as `-rc1` on the patch and a
    /// missing patch. `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let year = parts.next()?.parse().ok()?;
        let month = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => {
                let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse().unwrap_or(0)
            }
            None => 0,
        };
        Some(ServerVersion { year, month, patch })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.year, self.month, self.patch)
    }
}

/// The first release whose captcha stages have `request_content_type`.
pub(crate) const REQUEST_CONTENT_TYPE_SINCE: ServerVersion = ServerVersion::new(2026, 8, 0);

/// Version-dependent behaviour of the connected server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub(crate) version: ServerVersion,
}

impl Capabilities {
    pub fn for_version(version: ServerVersion) -> Self {
        Capabilities { version }
    }

    /// Whether `field` exists on this server: only such fields are sent and compared.
    pub(crate) fn knows(&self, field: Field) -> bool {
        match field {
            Field::RequestContentType => self.version >= REQUEST_CONTENT_TYPE_SINCE,
            _ => true,
        }
    }

    /// `fields` without the values of fields this server does not know, so a
    /// write sends exactly the fields the plan compared. Only optional fields
    /// depend on the version, so this clears `Option`s.
    pub fn sendable(&self, mut fields: StageFields) -> StageFields {
        if !self.knows(Field::RequestContentType) {
            fields.request_content_type = None;
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_versions() {
        assert_eq!(
            ServerVersion::parse("2025.12.4"),
            Some(ServerVersion::new(2025, 12, 4))
        );
        assert_eq!(
            ServerVersion::parse("2026.8.0-rc1"),
            Some(ServerVersion::new(2026, 8, 0))
        );
        assert_eq!(
            ServerVersion::parse("2026.8"),
            Some(ServerVersion::new(2026, 8, 0))
        );
        assert_eq!(ServerVersion::parse("dev"), None);
    }

    #[test]
    fn request_content_type_only_from_2026_8() {
        let old = Capabilities::for_version(ServerVersion::new(2026, 5, 6));
        let new = Capabilities::for_version(ServerVersion::new(2026, 8, 0));
        assert!(!old.knows(Field::RequestContentType));
        assert!(new.knows(Field::RequestContentType));
        assert!(old.knows(Field::PublicKey));
    }

    #[test]
    fn sendable_fields_drop_only_what_the_server_does_not_know() {
        let fields = StageFields::with_defaults("a", "p");
        let old = Capabilities::for_version(ServerVersion::new(2025, 12, 4));
        let new = Capabilities::for_version(ServerVersion::new(2026, 8, 0));
        assert_eq!(old.sendable(fields.clone()).request_content_type, None);
        assert_eq!(new.sendable(fields.clone()), fields);
        assert_eq!(
            old.sendable(fields.clone()),
            StageFields {
                request_content_type: None,
                ..fields
            }
        );
    }
}
