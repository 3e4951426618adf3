//! The records the store keeps: API keys, their audit trail, and list filters.

use std::fmt;

use keygate_core::keys::{Backing, KeyKind};

/// One API key as stored: everything about it except the key itself.
///
/// `Debug` prints the hashes and sealed secrets as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// UUID v4 text, chosen by the caller.
    pub id: String,
    /// Display prefix: the first 8 characters of the key (`kgs_AbC1`).
    pub prefix: String,
    /// Service or personal key.
    pub kind: KeyKind,
    /// Provider subject (personal keys) or an operator-chosen name (service keys).
    pub owner: String,
    /// Free text shown in listings.
    pub description: String,
    /// Service keys: the client id of the service-account client.
    pub client_id: Option<String>,
    /// Scopes requested when the key is exchanged.
    pub scopes: Vec<String>,
    /// HTTP methods the key may be used with; empty means all.
    pub allowed_methods: Vec<String>,
    /// Route prefixes the key may be used on; empty means all.
    pub allowed_prefixes: Vec<String>,
    /// Client networks (CIDR) the key may be used from; empty means all.
    pub allowed_cidrs: Vec<String>,
    /// Keyed hash of the whole key (32 bytes); unique across the store.
    pub key_hash: Vec<u8>,
    /// The encrypted client secret (service keys), refresh token (personal
    /// keys backed by an offline session) or subject (personal keys backed by
    /// the JWT authorization grant).
    pub sealed_secret: Option<Vec<u8>>,
    /// Bumped by every [`crate::KeyStore::update_secret`] and rotation, for compare-and-swap.
    pub secret_version: i64,
    /// After a rotation: the hash of the old key, valid until `previous_valid_until`.
    pub previous_hash: Option<Vec<u8>>,
    /// After a rotation: the secret sealed under the old key.
    pub previous_sealed_secret: Option<Vec<u8>>,
    /// After a rotation: the old key is accepted while `now < previous_valid_until`.
    pub previous_valid_until: Option<i64>,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    /// Last use, unix seconds (written in batches, so it may lag a little).
    pub last_used_at: Option<i64>,
    /// Revocation time, unix seconds.
    pub revoked_at: Option<i64>,
    /// The key's own rate limit (`100/s burst 200`); `None`: its kind's default.
    pub rate_limit: Option<String>,
    /// The key's own usage quota (`10000/day`); `None`: its kind's default.
    pub quota: Option<String>,
    /// What the key is exchanged with at the provider (schema version 4).
    pub backing: Backing,
}

/// Prints `[redacted]` for a present secret byte field.
struct Redacted<'a>(&'a Option<Vec<u8>>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some([redacted])"),
            None => f.write_str("None"),
        }
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("description", &self.description)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("allowed_methods", &self.allowed_methods)
            .field("allowed_prefixes", &self.allowed_prefixes)
            .field("allowed_cidrs", &self.allowed_cidrs)
            .field("key_hash", &format_args!("[redacted]"))
            .field("sealed_secret", &Redacted(&self.sealed_secret))
            .field("secret_version", &self.secret_version)
            .field("previous_hash", &Redacted(&self.previous_hash))
            .field(
                "previous_sealed_secret",
                &Redacted(&self.previous_sealed_secret),
            )
            .field("previous_valid_until", &self.previous_valid_until)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("last_used_at", &self.last_used_at)
            .field("revoked_at", &self.revoked_at)
            .field("rate_limit", &self.rate_limit)
            .field("quota", &self.quota)
            .field("backing", &self.backing)
            .finish()
    }
}

/// Which of a record's hashes a presented key matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashMatch {
    /// The current key.
    Current,
    /// The key replaced by the last rotation, still inside its grace period.
    Previous,
}

/// One line of a key's audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// The key acted on.
    pub key_id: String,
    /// `create`, `rotate`, `renew` or `revoke`.
    pub action: String,
    /// Who did it (a provider subject, `cli`, an admin's name…).
    pub actor: String,
    /// When, unix seconds.
    pub at: i64,
    /// Non-secret details, e.g. `expires_at=1767225600`.
    pub detail: String,
}

/// What [`crate::KeyStore::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    /// Only this owner's keys.
    pub owner: Option<String>,
    /// Only keys of this kind.
    pub kind: Option<KeyKind>,
    /// Include revoked keys (left out by default).
    pub include_revoked: bool,
    /// At most this many records; `None` = all.
    pub limit: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_hashes_and_secrets() {
        let rec = KeyRecord {
            id: "id-1".into(),
            prefix: "kgs_AbC1".into(),
            kind: KeyKind::Service,
            owner: "svc".into(),
            description: String::new(),
            client_id: Some("client".into()),
            scopes: vec![],
            allowed_methods: vec![],
            allowed_prefixes: vec![],
            allowed_cidrs: vec![],
            key_hash: vec![0xAB; 32],
            sealed_secret: Some(vec![0xCD; 40]),
            secret_version: 0,
            previous_hash: Some(vec![0xEF; 32]),
            previous_sealed_secret: Some(vec![0x12; 40]),
            previous_valid_until: Some(5),
            created_at: 1,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            rate_limit: None,
            quota: None,
            backing: Backing::ClientCredentials,
        };
        let s = format!("{rec:?}");
        assert!(s.contains("kgs_AbC1"));
        assert!(s.contains("[redacted]"));
        for needle in ["171", "205", "239", "18,", "0xab", "ab, ab", "AB"] {
            assert!(!s.contains(needle), "{needle} in {s}");
        }
    }
}
