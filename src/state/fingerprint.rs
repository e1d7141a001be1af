//! Salted fingerprints of keys: what the state file and saved plan files
//! keep instead of a key. Pure.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::{ExposeSecret, PrivateKey};

/// A salted SHA-256 of a private key. Safe to print and to store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    /// 16 random bytes, hex.
    pub(super) salt: String,
    /// `SHA-256(salt bytes || trimmed key bytes)`, hex.
    pub(super) sha256: String,
}

impl Fingerprint {
    pub(crate) fn new(key: &PrivateKey) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Fingerprint {
            salt: hex(&salt),
            sha256: hex(&digest(&salt, key)),
        }
    }

    /// Whether `key` is the key this fingerprint was made from. Only checked
    /// fingerprints ([`Fingerprint::problem`] is `None`) get here.
    pub(crate) fn matches(&self, key: &PrivateKey) -> bool {
        unhex(&self.salt).is_some_and(|salt| hex(&digest(&salt, key)) == self.sha256)
    }

    /// What is wrong with a fingerprint read from a file, if anything.
    pub(super) fn problem(&self) -> Option<&'static str> {
        let is_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !is_hex(&self.salt, 32) {
            Some("its salt is not 32 lowercase hex digits")
        } else if !is_hex(&self.sha256, 64) {
            Some("its sha256 is not 64 lowercase hex digits")
        } else {
            None
        }
    }
}

/// `SHA-256(salt || trimmed key)`: the one way a key is fingerprinted (the
/// state file and saved plan files both use it).
pub(crate) fn digest(salt: &[u8], key: &PrivateKey) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key.expose_secret().trim().as_bytes());
    hasher.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
