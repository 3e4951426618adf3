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
    /// Shared negative and exchange caches, when `redis-url` is set.
    pub(crate) redis: Option<Redis>,
    pub(crate) limiter: Limiter,
    pub(crate) pending: Cache<String, Arc<PendingDevice>>,
    pub(crate) used: Mutex<HashMap<String, i64>>,
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
