//! The state of the API-key service, shared by its modules: each adds its
//! operations to [`ApiKeys`] in its own `impl` block, and none imports
//! another's state.

use crate::error::KeyRefusal;
use crate::limits::Limiter;
use keygate_auth::apikey::KeyCrypto;
use keygate_auth::assertion::AssertionSigner;
use keygate_auth::grants::Grants;
use keygate_core::config::ApiKeysConfig;
use keygate_core::keys::Backing;
use keygate_core::limits::{Quota, RateLimit};
use keygate_core::{Identity, Secret, unix_now};
use keygate_store::{KeyRecord, KeyStore, Redis};
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The API-key service.
pub struct ApiKeys {
    pub(crate) store: KeyStore,
    pub(crate) crypto: KeyCrypto,
    pub(crate) grants: Grants,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) config: ApiKeysConfig,
    /// Signs the assertions of keys backed by the JWT authorization grant,
    /// when `api-keys.jwt-grant` is set.
    pub(crate) signer: Option<AssertionSigner>,
    pub(crate) records: Cache<[u8; 32], Arc<Found>>,
    /// Records as last read, for when the store cannot be reached: a key
    /// whose exchanged token is still cached keeps working through an outage.
    pub(crate) stale: Cache<[u8; 32], Arc<Found>>,
    pub(crate) negative: Cache<[u8; 32], KeyRefusal>,
    pub(crate) tokens: Cache<String, Arc<Exchanged>>,
    /// The offline-session keys (by record id) whose exchange this replica
    /// is making now.
    pub(crate) exchanging: keygate_core::breaker::InFlight<String>,
    /// Shared negative and exchange caches, when `redis-url` is set.
    pub(crate) redis: Option<Redis>,
    pub(crate) limiter: Limiter,
    pub(crate) pending: Cache<String, Arc<PendingDevice>>,
    pub(crate) used: Mutex<HashMap<String, i64>>,
    /// The keyed hashes of the keys seen lately ([`KeyHashes`]).
    pub(crate) hashes: KeyHashes,
}

/// A memo of `KeyCrypto::hash` (an HMAC-SHA256, the costliest step of a
/// cached key's check) for the keys seen lately. The key itself is never
/// kept: entries are found by one SipHash-1-3 of the key under a random
/// per-process key, and must match a second one under another: 128 keyed
/// bits that nobody can aim a collision at without the process's keys.
pub(crate) struct KeyHashes {
    entries: moka::sync::Cache<u64, (u64, [u8; 32])>,
    find: std::collections::hash_map::RandomState,
    check: std::collections::hash_map::RandomState,
}

impl KeyHashes {
    pub(crate) fn new() -> Self {
        KeyHashes {
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            find: std::collections::hash_map::RandomState::new(),
            check: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The keyed hash of `key`, from the memo or computed by `hash`.
    pub(crate) fn get(&self, key: &str, hash: impl FnOnce() -> [u8; 32]) -> [u8; 32] {
        use std::hash::BuildHasher as _;
        let find = self.find.hash_one(key);
        let check = self.check.hash_one(key);
        if let Some((seen, hashed)) = self.entries.get(&find)
            && seen == check
        {
            return hashed;
        }
        let hashed = hash();
        self.entries.insert(find, (check, hashed));
        hashed
    }
}

/// The longest a record read before a store outage is used during it (and
/// then only for keys whose exchanged token is still cached).
pub(crate) const STALE_RECORD_TTL: Duration = Duration::from_secs(3600);

/// A stored record found by a key's hash, and whether the key is the
/// record's previous one (still valid during a rotation's grace period).
pub(crate) struct Found {
    pub(crate) record: KeyRecord,
    pub(crate) previous: bool,
    /// The limits in force: the key's own, else its kind's default.
    pub(crate) rate: Option<RateLimit>,
    pub(crate) quota: Option<Quota>,
}

/// The provider token an API key was exchanged for, as a verified identity.
pub(crate) struct Exchanged {
    pub(crate) identity: Arc<Identity>,
    /// When to exchange again (seconds since the epoch): `exp - refresh-margin`.
    pub(crate) renew_at: u64,
}

/// Expires a cached exchange at its `renew_at`.
pub(crate) struct RenewBeforeExpiry;

impl moka::Expiry<String, Arc<Exchanged>> for RenewBeforeExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Arc<Exchanged>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.renew_at.saturating_sub(unix_now()),
        ))
    }
}

/// A device authorization in progress (personal key creation).
pub(crate) struct PendingDevice {
    pub(crate) device_code: Secret,
    pub(crate) code_verifier: Secret,
    pub(crate) description: String,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) interval: u64,
    /// The new key's backing, chosen when the flow started.
    pub(crate) backing: Backing,
}

#[cfg(test)]
mod tests {
    use super::KeyHashes;
    use std::cell::Cell;

    #[test]
    fn key_hashes_compute_each_key_once_and_never_mix_keys_up() {
        let memo = KeyHashes::new();
        let calls = Cell::new(0);
        let hash_of = |key: &str| {
            calls.set(calls.get() + 1);
            let mut out = [0u8; 32];
            out[..key.len().min(32)].copy_from_slice(&key.as_bytes()[..key.len().min(32)]);
            out
        };
        let a = memo.get("kgs_aaaa", || hash_of("kgs_aaaa"));
        assert_eq!(memo.get("kgs_aaaa", || hash_of("kgs_aaaa")), a);
        assert_eq!(calls.get(), 1, "the second lookup is served from the memo");
        let b = memo.get("kgs_bbbb", || hash_of("kgs_bbbb"));
        assert_ne!(a, b);
        assert_eq!(calls.get(), 2);
    }
}
