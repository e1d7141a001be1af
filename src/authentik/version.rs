//! What the connected authentik knows, decided from its version in one place.
//!
//! A field the server does not know is silently ignored on write and never
//! reported on read, so sending or comparing it would show as drift forever.
//! Every version-dependent decision of the client and the planner asks
//! [`Capabilities`]; nothing else looks at version numbers.

use std::fmt;

use crate::stage::Field;

/// An authentik release, `YEAR.MONTH.PATCH` (e.g. `2025.12.4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    pub year: u32,
    pub month: u32,
    pub patch: u32,
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
pub const REQUEST_CONTENT_TYPE_SINCE: ServerVersion = ServerVersion::new(2026, 8, 0);

/// Version-dependent behaviour of the connected server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub version: ServerVersion,
}

impl Capabilities {
    pub fn for_version(version: ServerVersion) -> Self {
        Capabilities { version }
    }

    /// Whether `field` exists on this server: only such fields are sent and compared.
    pub fn knows(&self, field: Field) -> bool {
        match field {
            Field::RequestContentType => self.version >= REQUEST_CONTENT_TYPE_SINCE,
            _ => true,
        }
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
}
