//! What the connected authentik knows, decided from its version.
//!
//! Pure: no I/O. The client reads the version ([`crate::authentik::Client::version`]);
//! everything here is a function of it, so the planner can depend on it without
//! depending on the HTTP client.
//!
//! A field the server does not know is silently ignored on write and never
//! reported on read, so sending or comparing it would show as drift forever.
//! Which version knows a field is a column of the kind's field table
//! ([`crate::kinds::field::FieldSpec::since`]); [`Capabilities`] is what the
//! table is asked with, and nothing else looks at version numbers.

use std::fmt;

/// An authentik release, `YEAR.MONTH.PATCH` (e.g. `2025.12.4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    pub(crate) year: u32,
    pub(crate) month: u32,
    pub(crate) patch: u32,
}

/// The oldest authentik release the client is written and tested for (the
/// recorded exchanges are from 2025.12.4); `stagesync --version` names it.
pub const OLDEST_KNOWN: ServerVersion = ServerVersion::new(2025, 12, 0);

impl ServerVersion {
    /// `2026.8`: the release without its patch, as releases are named.
    pub fn short(&self) -> String {
        format!("{}.{}", self.year, self.month)
    }

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

/// Version-dependent behaviour of the connected server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub(crate) version: ServerVersion,
}

impl Capabilities {
    pub fn for_version(version: ServerVersion) -> Self {
        Capabilities { version }
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
}
