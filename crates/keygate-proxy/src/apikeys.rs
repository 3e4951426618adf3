//! API keys: authentication of `kgs_…`/`kgp_…` credentials (phase 3) by
//! exchanging them for real provider access tokens, and the key
//! management operations shared by the CLI, the admin API and the
//! self-service endpoints.
//!
//! On each use, in this order:
//! 1. the key's shape and checksum are checked — no lookup for a typo or a
//!    scanner's false positive;
//! 2. its keyed hash is looked up: first in the negative cache (unknown,
//!    revoked, expired keys, remembered for `negative-cache-ttl`), then in the
//!    record cache (`record-cache-ttl`), then in the store;
//! 3. expiry, revocation and the key's restrictions (methods, route
//!    prefixes, client networks) are enforced;
//! 4. the cached provider token for the key is used, or one exchange is made
//!    (client-credentials for service keys, refresh for personal keys);
//!    concurrent first uses of a key share that one exchange;
//! 5. the provider's token is verified like any bearer token and its
//!    identity forwarded, marked `api-key` with the key's id.

use crate::ratelimit::{LimitHeaders, Limiter};
use crate::respond::Refusal;
use keygate_auth::apikey::{self, KeyCrypto};
use keygate_auth::grants::{DevicePoll, GrantError, Grants, TokenResponse};
use keygate_auth::{AuthError, JwtVerifier, Provider};
use keygate_core::config::{ApiKeysConfig, Cidr, Config};
use keygate_core::keys::KeyKind;
use keygate_core::limits::{KeyLimit, Quota, RateLimit};
use keygate_core::{AuthMethod, Identity, Secret};
use keygate_store::{HashMatch, KeyChange, KeyFilter, KeyRecord, KeyStore, Redis};
use moka::future::Cache;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a key was refused; cached for unknown/revoked/expired keys.
#[derive(Clone, Debug)]
enum KeyRefusal {
    Unknown,
    Revoked,
    Expired,
    /// The provider no longer honours the key's credential (offline session
    /// ended, client secret changed).
    Rejected(String),
}

impl KeyRefusal {
    /// The form kept in the shared negative cache.
    fn encode(&self) -> String {
        match self {
            KeyRefusal::Unknown => "unknown".into(),
            KeyRefusal::Revoked => "revoked".into(),
            KeyRefusal::Expired => "expired".into(),
            KeyRefusal::Rejected(why) => format!("rejected:{why}"),
        }
    }

    fn decode(text: &str) -> Option<KeyRefusal> {
        Some(match text {
            "unknown" => KeyRefusal::Unknown,
            "revoked" => KeyRefusal::Revoked,
            "expired" => KeyRefusal::Expired,
            other => KeyRefusal::Rejected(other.strip_prefix("rejected:")?.to_owned()),
        })
    }

    fn refusal(&self) -> (Refusal, &'static str) {
        match self {
            KeyRefusal::Unknown => (
                Refusal::BadCredential("unknown API key".into()),
                "api_key_unknown",
            ),
            KeyRefusal::Revoked => (
                Refusal::BadCredential("API key has been revoked".into()),
                "api_key_revoked",
            ),
            KeyRefusal::Expired => (
                Refusal::BadCredential("API key has expired".into()),
                "api_key_expired",
            ),
            KeyRefusal::Rejected(why) => (
                Refusal::BadCredential(format!(
                    "the provider no longer accepts this API key: {why}"
                )),
                "api_key_rejected",
            ),
        }
    }
}

/// A refusal with its log/metrics reason.
pub type KeyError = (Refusal, &'static str);

/// The provider token an API key was exchanged for, as a verified identity.
struct Exchanged {
    identity: Arc<Identity>,
    /// When to exchange again (seconds since the epoch): `exp - refresh-margin`.
    renew_at: u64,
}

struct RenewBeforeExpiry;

impl moka::Expiry<String, Arc<Exchanged>> for RenewBeforeExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Arc<Exchanged>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.renew_at.saturating_sub(now())))
    }
}

/// A stored record found by a key's hash, and whether the key is the
/// record's previous one (still valid during a rotation's grace period).
struct Found {
    record: KeyRecord,
    previous: bool,
    /// The limits in force: the key's own, else its kind's default.
    rate: Option<RateLimit>,
    quota: Option<Quota>,
}

/// A device authorization in progress (personal key creation).
struct PendingDevice {
    device_code: Secret,
    code_verifier: Secret,
    description: String,
    lifetime: Option<Duration>,
    interval: u64,
}

/// What a new key's creator gets, once.
#[derive(Debug, serde::Serialize)]
pub struct CreatedKey {
    /// The key's id.
    pub id: String,
    /// The full key: shown this once, never stored.
    pub key: Secret,
    /// The display prefix.
    pub prefix: String,
    /// `service` or `personal`.
    pub kind: &'static str,
    /// Expiry, seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Parameters of a new service key.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServiceKey {
    /// The service-account client the key stands for.
    pub client_id: String,
    /// Its secret (stored encrypted under the new key).
    pub client_secret: Secret,
    /// Who the key belongs to (free text for service keys).
    #[serde(default)]
    pub owner: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Lifetime such as `90d`; the configured default when absent; `never` if allowed.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Scopes requested in the client-credentials grant.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Allowed methods (empty: all).
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// Allowed route prefixes (empty: all).
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Allowed client networks (empty: all).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Try the client credentials at the provider before storing the key.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The key's own rate limit (`100/s burst 200`, or `unlimited`); the
    /// kind's default when absent.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// The key's own usage quota (`10000/day`, or `unlimited`); the kind's
    /// default when absent.
    #[serde(default)]
    pub quota: Option<String>,
}

fn yes() -> bool {
    true
}

/// A key as shown to operators and owners: never the key, hash or secret.
#[derive(Debug, serde::Serialize)]
pub struct KeyView {
    /// Id.
    pub id: String,
    /// Display prefix.
    pub prefix: String,
    /// `service` or `personal`.
    pub kind: &'static str,
    /// Owner (subject or name).
    pub owner: String,
    /// Free text.
    pub description: String,
    /// Service-account client, for service keys.
    pub client_id: Option<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Allowed methods.
    pub allowed_methods: Vec<String>,
    /// Allowed route prefixes.
    pub allowed_prefixes: Vec<String>,
    /// Allowed client networks.
    pub allowed_cidrs: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub expires_at: Option<i64>,
    /// Seconds since the epoch (written in batches).
    pub last_used_at: Option<i64>,
    /// Seconds since the epoch.
    pub revoked_at: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// The key's own rate limit; `null`: its kind's default.
    pub rate_limit: Option<String>,
    /// The key's own usage quota; `null`: its kind's default.
    pub quota: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(r: &KeyRecord) -> Self {
        let status = if r.revoked_at.is_some() {
            "revoked"
        } else if r.expires_at.is_some_and(|e| e <= now() as i64) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            id: r.id.clone(),
            prefix: r.prefix.clone(),
            kind: r.kind.as_str(),
            owner: r.owner.clone(),
            description: r.description.clone(),
            client_id: r.client_id.clone(),
            scopes: r.scopes.clone(),
            allowed_methods: r.allowed_methods.clone(),
            allowed_prefixes: r.allowed_prefixes.clone(),
            allowed_cidrs: r.allowed_cidrs.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            status,
            rate_limit: r.rate_limit.clone(),
            quota: r.quota.clone(),
        }
    }
}

/// Errors of the management operations (CLI, admin API, self-service).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The request is invalid; the text says why.
    #[error("{0}")]
    Invalid(String),
    /// No such key (or not the caller's).
    #[error("no such key")]
    NotFound,
    /// The store failed.
    #[error("key store: {0}")]
    Store(String),
    /// The provider could not be reached or gave no usable answer (the
    /// cause, for the log).
    #[error("provider: {0}")]
    Provider(String),
    /// The provider refused the credentials (the OAuth error code, e.g.
    /// `unauthorized_client` for a wrong client secret).
    #[error("the provider refused the request ({0})")]
    ProviderRefused(String),
}

/// A grant failure as a management error: refused (the caller's mistake)
/// or unavailable (the provider's).
fn grant_failure(e: keygate_auth::grants::GrantError) -> ManageError {
    if !e.is_unavailable() {
        tracing::warn!(error = %e, "the OpenID provider refused a grant for key management");
    }
    match e.oauth_error() {
        Some(code) if !e.is_unavailable() => ManageError::ProviderRefused(
            code.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect(),
        ),
        _ => ManageError::Provider(e.to_string()),
    }
}

/// The API-key service.
pub struct ApiKeys {
    store: KeyStore,
    crypto: KeyCrypto,
    grants: Grants,
    client_id: String,
    client_secret: Secret,
    config: ApiKeysConfig,
    records: Cache<[u8; 32], Arc<Found>>,
    /// Records as last read, for when the store cannot be reached: a key
    /// whose exchanged token is still cached keeps working through an outage.
    stale: Cache<[u8; 32], Arc<Found>>,
    negative: Cache<[u8; 32], KeyRefusal>,
    tokens: Cache<String, Arc<Exchanged>>,
    /// Shared negative and exchange caches, when `redis-url` is set.
    redis: Option<Redis>,
    limiter: Limiter,
    pending: Cache<String, Arc<PendingDevice>>,
    used: Mutex<HashMap<String, i64>>,
}

/// The pseudo-key under which a personal key's refresh token is also
/// sealed, with the server secret alone, so a revoke can revoke the offline
/// session at the provider without the user's key.
const REVOCATION_ENVELOPE: &str = "keygate-revocation-envelope-v1";

/// The longest a record read before a store outage is used during it (and
/// then only for keys whose exchanged token is still cached).
const STALE_RECORD_TTL: Duration = Duration::from_secs(3600);

impl ApiKeys {
    /// Opens the store and builds the service. `Ok(None)` when API keys are
    /// off (no server secret configured).
    pub async fn from_config(
        config: &Config,
        provider: Arc<Provider>,
        redis: Option<Redis>,
    ) -> Result<Option<Self>, ManageError> {
        let Some(secret) = config
            .api_keys
            .load_server_secret()
            .map_err(|e| ManageError::Invalid(e.to_string()))?
        else {
            return Ok(None);
        };
        let crypto = KeyCrypto::new(secret.expose().as_bytes())
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        let store = KeyStore::connect(&config.store_url.0)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        let c = &config.api_keys;
        Ok(Some(ApiKeys {
            store,
            crypto,
            grants: Grants::new(provider),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            config: c.clone(),
            records: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(c.record_cache_ttl)
                .build(),
            stale: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(STALE_RECORD_TTL)
                .build(),
            limiter: Limiter::new(redis.clone()),
            redis,
            negative: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(c.negative_cache_ttl)
                .build(),
            tokens: Cache::builder()
                .max_capacity(100_000)
                .expire_after(RenewBeforeExpiry)
                .build(),
            pending: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1800))
                .build(),
            used: Mutex::new(HashMap::new()),
        }))
    }

    /// The header that carries keys.
    pub fn header(&self) -> &str {
        &self.config.header
    }

    /// The store.
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// The role the admin API requires.
    pub fn admin_role(&self) -> &str {
        &self.config.admin_role
    }

    /// Phase 3 for an API key: returns the identity of the provider token the
    /// key stands for.
    pub async fn authenticate(
        &self,
        key: &str,
        method: &str,
        path: &str,
        client_ip: IpAddr,
        verifier: &JwtVerifier,
        headers: &mut LimitHeaders,
    ) -> Result<Arc<Identity>, KeyError> {
        if apikey::parse(key).is_err() {
            return Err((
                Refusal::BadCredential("malformed API key (wrong shape or checksum)".into()),
                "api_key_malformed",
            ));
        }
        let hash = self.crypto.hash(key);
        if let Some(refused) = self.negative.get(&hash).await {
            return Err(refused.refusal());
        }
        let (found, store_down) = self.record(&hash).await?;
        let record = &found.record;
        if let Err(refused) = check_validity(record) {
            self.remember_refusal(hash, refused.clone()).await;
            return Err(refused.refusal());
        }
        check_restrictions(record, method, path, client_ip)?;
        self.limiter
            .check(&record.id, found.rate, found.quota, headers)
            .await
            .map_err(|l| {
                (
                    Refusal::TooManyRequests(l.description, l.retry_after),
                    l.reason,
                )
            })?;
        // While the store is down a key is honoured only as long as the
        // token it was exchanged for stays cached: never exchanged anew on
        // a record the store could not confirm.
        let cached = match store_down {
            true => Some(
                self.tokens
                    .get(&record.id)
                    .await
                    .ok_or_else(store_unavailable)?,
            ),
            false => None,
        };
        let exchanged = match cached {
            Some(exchanged) => Ok(exchanged),
            None => {
                self.tokens
                    .try_get_with(
                        record.id.clone(),
                        self.exchange_shared(key, &hash, &found, verifier),
                    )
                    .await
            }
        };
        let exchanged = match exchanged {
            Ok(exchanged) => exchanged,
            Err(e) => {
                // A key the provider no longer honours is remembered as such,
                // so its holder cannot drive provider traffic at request rate.
                if let ExchangeError::Refused(refused) = &*e {
                    self.remember_refusal(hash, refused.clone()).await;
                }
                return Err(exchange_refusal(&e));
            }
        };
        if let Ok(mut used) = self.used.lock() {
            used.insert(record.id.clone(), now() as i64);
        }
        Ok(Arc::clone(&exchanged.identity))
    }

    /// The record a key's hash names: from the record cache, else (unless
    /// the shared negative cache knows the key as refused) from the store.
    /// While the store cannot be reached, the record as last read is used for
    /// a key whose exchanged token is still cached (then `true`); anything
    /// else is 503.
    async fn record(&self, hash: &[u8; 32]) -> Result<(Arc<Found>, bool), KeyError> {
        let store = &self.store;
        let found = self
            .records
            .try_get_with(*hash, async move {
                if let Some(refused) = self.shared_refusal(hash).await {
                    return Err(Lookup::Refused(refused));
                }
                match store.find_by_hash(hash, now() as i64).await {
                    Ok(Some((record, matched))) => {
                        let (rate, quota) = self.limits_of(&record).map_err(Lookup::Store)?;
                        Ok(Arc::new(Found {
                            record,
                            previous: matches!(matched, HashMatch::Previous),
                            rate,
                            quota,
                        }))
                    }
                    Ok(None) => Err(Lookup::Refused(KeyRefusal::Unknown)),
                    Err(e) => Err(Lookup::Store(e.to_string())),
                }
            })
            .await;
        match found {
            Ok(found) => {
                self.stale.insert(*hash, Arc::clone(&found)).await;
                Ok((found, false))
            }
            Err(e) => match &*e {
                Lookup::Refused(refused) => {
                    self.remember_refusal(*hash, refused.clone()).await;
                    Err(refused.refusal())
                }
                Lookup::Store(e) => {
                    if let Some(stale) = self.stale.get(hash).await
                        && self.tokens.contains_key(&stale.record.id)
                    {
                        tracing::debug!(error = %e, key_id = %stale.record.id, "API-key store unavailable; using the cached record and token");
                        return Ok((stale, true));
                    }
                    tracing::warn!(error = %e, "API-key store lookup failed");
                    Err(store_unavailable())
                }
            },
        }
    }

    /// The rate limit and quota in force for a record: its own, else its
    /// kind's default. A stored value that does not parse (written around
    /// keygate) makes the key unusable, never unlimited.
    fn limits_of(&self, record: &KeyRecord) -> Result<(Option<RateLimit>, Option<Quota>), String> {
        let (rate, quota) = match record.kind {
            KeyKind::Service => (self.config.rate_limit_service, self.config.quota_service),
            KeyKind::Personal => (self.config.rate_limit_personal, self.config.quota_personal),
        };
        let invalid = |e: String| format!("API key {} has an invalid stored limit: {e}", record.id);
        Ok((
            KeyLimit::<RateLimit>::parse(record.rate_limit.as_deref())
                .map_err(invalid)?
                .or_default(rate),
            KeyLimit::<Quota>::parse(record.quota.as_deref())
                .map_err(invalid)?
                .or_default(quota),
        ))
    }

    /// Remembers a refused key here and, with Redis, for every replica.
    async fn remember_refusal(&self, hash: [u8; 32], refused: KeyRefusal) {
        if let Some(redis) = &self.redis {
            let ttl = self.config.negative_cache_ttl;
            if let Err(e) = redis
                .set(
                    &redis.key(&negative_key(&hash)),
                    refused.encode().as_bytes(),
                    ttl,
                )
                .await
            {
                tracing::debug!(error = %e, "cannot share a refused API key");
            }
        }
        self.negative.insert(hash, refused).await;
    }

    /// What the shared negative cache says of a key; `None` when it says
    /// nothing or Redis cannot be asked (the store decides then).
    async fn shared_refusal(&self, hash: &[u8; 32]) -> Option<KeyRefusal> {
        let redis = self.redis.as_ref()?;
        match redis.get(&redis.key(&negative_key(hash))).await {
            Ok(Some(v)) => KeyRefusal::decode(std::str::from_utf8(&v).ok()?),
            _ => None,
        }
    }

    /// The provider token for a key: with Redis, first the one another
    /// replica already exchanged (sealed under the key itself, so Redis
    /// alone opens nothing); else one exchange, which a Redis lock keeps to
    /// one replica at a time — a provider that rotates refresh tokens would
    /// refuse the second of two concurrent refreshes.
    async fn exchange_shared(
        &self,
        key: &str,
        hash: &[u8; 32],
        found: &Found,
        verifier: &JwtVerifier,
    ) -> Result<Arc<Exchanged>, ExchangeError> {
        let Some(redis) = &self.redis else {
            return self.exchange(key, found, verifier).await;
        };
        let id = &found.record.id;
        let cache_key = redis.key(&exchange_key(id, hash));
        if let Some(hit) = self
            .shared_token(redis, &cache_key, key, found, verifier)
            .await
        {
            return Ok(hit);
        }
        let lock_key = format!("{cache_key}:lock");
        let locked = redis
            .set_nx(&lock_key, b"1", EXCHANGE_LOCK_TTL)
            .await
            .unwrap_or(true);
        if !locked {
            // Another replica is exchanging: wait for its token a little.
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(hit) = self
                    .shared_token(redis, &cache_key, key, found, verifier)
                    .await
                {
                    return Ok(hit);
                }
            }
        }
        let exchanged = self.exchange(key, found, verifier).await;
        if let Ok(exchanged) = &exchanged {
            let plain = serde_json::json!({
                "token": exchanged.identity.access_token.expose(),
                "renew_at": exchanged.renew_at,
            })
            .to_string();
            match self.crypto.seal(key, &exchange_aad(id), plain.as_bytes()) {
                Ok(sealed) => {
                    let ttl = Duration::from_secs(exchanged.renew_at.saturating_sub(now()).max(1));
                    if let Err(e) = redis.set(&cache_key, &sealed, ttl).await {
                        tracing::debug!(error = %e, "cannot share an exchanged token");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot seal an exchanged token"),
            }
        }
        if locked {
            let _ = redis.del(&[lock_key]).await;
        }
        exchanged
    }

    /// A token another replica exchanged for this key, if Redis has one that
    /// opens with the key and still verifies.
    async fn shared_token(
        &self,
        redis: &Redis,
        cache_key: &str,
        key: &str,
        found: &Found,
        verifier: &JwtVerifier,
    ) -> Option<Arc<Exchanged>> {
        let sealed = redis.get(cache_key).await.ok()??;
        let plain = self
            .crypto
            .open(key, &exchange_aad(&found.record.id), &sealed)
            .ok()?;
        let value: serde_json::Value = serde_json::from_str(plain.expose()).ok()?;
        let renew_at = value.get("renew_at")?.as_u64()?;
        if renew_at <= now() {
            return None;
        }
        let verified = verifier.verify(value.get("token")?.as_str()?).await.ok()?;
        Some(exchanged_identity(&verified, &found.record.id, renew_at))
    }

    /// Drops what this process cached about a changed key, so its next use
    /// reads the store: called for every change PostgreSQL announces.
    async fn forget_changed(&self, id: &str, hashes: &[Vec<u8>]) {
        for hash in hashes {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                self.negative.invalidate(&hash).await;
            }
        }
        self.tokens.invalidate(id).await;
    }

    /// Follows the changes the store announces (PostgreSQL; other backends
    /// announce none, and other processes' changes are then seen within
    /// `record-cache-ttl`). Runs until the process ends.
    pub async fn watch_store_changes(self: Arc<Self>) {
        let mut listener = match self.store.listen_changes().await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for key changes yet; retrying");
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(Some(l)) = self.store.listen_changes().await {
                        self.resync().await;
                        break l;
                    }
                }
            }
        };
        let mut failing = false;
        loop {
            match listener.next().await {
                Ok(KeyChange::Key { id, hashes }) => self.forget_changed(&id, &hashes).await,
                Ok(_) => {
                    if failing {
                        tracing::info!("listening for key changes again");
                        failing = false;
                    }
                    self.resync().await;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "lost the key-change listener; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Changes may have been missed: forget every record, so each key's next
    /// use reads the store.
    async fn resync(&self) {
        self.records.invalidate_all();
        self.negative.invalidate_all();
    }

    async fn exchange(
        &self,
        key: &str,
        found: &Found,
        verifier: &JwtVerifier,
    ) -> Result<Arc<Exchanged>, ExchangeError> {
        let record = &found.record;
        // During a rotation's grace period the old key opens the old secret.
        let sealed = match found.previous {
            true => record.previous_sealed_secret.as_deref(),
            false => record.sealed_secret.as_deref(),
        }
        .ok_or(ExchangeError::Refused(KeyRefusal::Revoked))?;
        let envelope =
            Envelope::decode(sealed).ok_or(ExchangeError::Refused(KeyRefusal::Unknown))?;
        let secret = self
            .crypto
            .open(key, &record.id, &envelope.by_key)
            .map_err(|_| ExchangeError::Refused(KeyRefusal::Unknown))?;
        let token = match record.kind {
            KeyKind::Service => {
                let client = record.client_id.as_deref().unwrap_or_default();
                self.grants
                    .client_credentials(client, &secret, &record.scopes)
                    .await
                    .map_err(|e| grant_error(e, KeyKind::Service))?
            }
            KeyKind::Personal => {
                // The copy sealed under the server secret is the newest: the
                // offline-session keep-alive, which has no key to seal under,
                // stores a rotated refresh token only there.
                let refresh = self.revocation_token(record).unwrap_or(secret);
                let token = self
                    .grants
                    .refresh(&self.client_id, &self.client_secret, &refresh)
                    .await
                    .map_err(|e| grant_error(e, KeyKind::Personal))?;
                self.store_rotated_refresh_token(key, record, &refresh, &token)
                    .await;
                // Off the request's path: only the keep-alive reads it.
                let (store, id) = (self.store.clone(), record.id.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.session_refreshed(&id, now() as i64).await {
                        tracing::warn!(key_id = %id, error = %e, "cannot record the refresh of a personal key's offline session");
                    }
                });
                token
            }
        };
        let verified = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(ExchangeError::Verify)?;
        let margin = self.config.refresh_margin.as_secs();
        let lifetime = verified.expires_at.saturating_sub(now());
        // Renew `refresh-margin` before expiry, but keep very short-lived
        // tokens at least half their lifetime.
        let renew_at = now() + lifetime.saturating_sub(margin).max(lifetime / 2);
        Ok(exchanged_identity(&verified, &record.id, renew_at))
    }

    /// Providers that rotate refresh tokens hand out a new one with every
    /// refresh: store it back (compare-and-swap on the record's secret version).
    async fn store_rotated_refresh_token(
        &self,
        key: &str,
        record: &KeyRecord,
        old: &Secret,
        token: &TokenResponse,
    ) {
        let Some(new) = &token.refresh_token else {
            return;
        };
        if new.expose() == old.expose() {
            return;
        }
        let sealed = match self.seal_envelope(key, &record.id, new.expose().as_bytes(), true) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "cannot seal a rotated refresh token");
                return;
            }
        };
        match self
            .store
            .update_secret(&record.id, record.secret_version, &sealed)
            .await
        {
            Ok(true) => {
                self.records.invalidate(&self.crypto.hash(key)).await;
            }
            Ok(false) => {
                tracing::warn!(key_id = %record.id, "refresh token rotated concurrently elsewhere")
            }
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "cannot store a rotated refresh token")
            }
        }
    }

    fn seal_envelope(
        &self,
        key: &str,
        key_id: &str,
        secret: &[u8],
        with_revocation: bool,
    ) -> Result<Vec<u8>, String> {
        let by_key = self
            .crypto
            .seal(key, key_id, secret)
            .map_err(|e| e.to_string())?;
        let by_server = match with_revocation {
            true => Some(
                self.crypto
                    .seal(REVOCATION_ENVELOPE, key_id, secret)
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        Ok(Envelope { by_key, by_server }.encode())
    }

    /// Keeps the provider sessions of unused personal keys alive: refreshes
    /// the offline session of every live personal key that nothing has
    /// refreshed for `offline-keepalive`, with the refresh token sealed under
    /// the server secret, and stores the rotated token there. Runs every
    /// `offline-keepalive-check` (with 10% jitter) until the process ends.
    pub async fn run_offline_keepalive(self: Arc<Self>) {
        if self.config.offline_keepalive.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(jittered(self.config.offline_keepalive_check, 10)).await;
            self.keep_offline_sessions_alive().await;
        }
    }

    /// One keep-alive sweep (see [`ApiKeys::run_offline_keepalive`]). Of
    /// several replicas sweeping at once, one refreshes each key (a claim in
    /// the store); the refreshes of one sweep are spread over up to half the
    /// check interval, so many keys due at once do not hit the provider in
    /// a burst.
    pub async fn keep_offline_sessions_alive(&self) -> KeepaliveSweep {
        let mut sweep = KeepaliveSweep::default();
        let idle = self.config.offline_keepalive.as_secs() as i64;
        let check = self.config.offline_keepalive_check;
        if idle == 0 {
            return sweep;
        }
        let start = now() as i64;
        let due = match self
            .store
            .keepalive_due(start - idle, start, KEEPALIVE_BATCH)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for personal keys due for an offline-session keep-alive");
                return sweep;
            }
        };
        let pause = (check / 2)
            .checked_div(due.len().max(1) as u32)
            .unwrap_or_default()
            .min(Duration::from_secs(5));
        for (i, record) in due.iter().enumerate() {
            if i > 0 && !pause.is_zero() {
                tokio::time::sleep(jittered(pause, 50)).await;
            }
            let now = now() as i64;
            // The claim leases the key for one check interval: if this
            // refresh fails, the next sweep tries again.
            let lease = now - idle + check.as_secs() as i64;
            match self
                .store
                .claim_keepalive(&record.id, now - idle, lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(key_id = %record.id, error = %e, "cannot claim a personal key's keep-alive");
                    sweep.failed += 1;
                    continue;
                }
            }
            let result = self.keep_alive(record).await;
            let label = match &result {
                Ok(()) => {
                    sweep.refreshed += 1;
                    "refreshed"
                }
                Err(GrantError::Rejected { error, description }) => {
                    // The session is gone (ended, idled out, the user
                    // disabled): the key will be refused with that reason.
                    // Asked again after `offline-keepalive`, in case the
                    // user is enabled again.
                    tracing::info!(key_id = %record.id, owner = %record.owner, %error,
                        description = description.as_deref().unwrap_or(""),
                        "the provider refused a personal key's offline-session keep-alive");
                    let _ = self.store.session_refreshed(&record.id, now).await;
                    sweep.gone += 1;
                    "gone"
                }
                Err(e) => {
                    tracing::warn!(key_id = %record.id, error = %e, "a personal key's offline-session keep-alive failed; retried at the next check");
                    sweep.failed += 1;
                    "failed"
                }
            };
            metrics::counter!("keygate_offline_keepalives_total", "result" => label).increment(1);
        }
        sweep
    }

    /// Refreshes one personal key's offline session with the token sealed
    /// under the server secret, and stores the rotated token there.
    async fn keep_alive(&self, record: &KeyRecord) -> Result<(), GrantError> {
        let (Some(refresh), Some(envelope)) = (
            self.revocation_token(record),
            record.sealed_secret.as_deref().and_then(Envelope::decode),
        ) else {
            return Err(GrantError::Unavailable(
                "the key has no refresh token sealed under the server secret".into(),
            ));
        };
        let token = self
            .grants
            .refresh(&self.client_id, &self.client_secret, &refresh)
            .await?;
        if let Err(e) = self.store.session_refreshed(&record.id, now() as i64).await {
            tracing::warn!(key_id = %record.id, error = %e, "cannot record the refresh of a personal key's offline session");
        }
        let Some(new) = token
            .refresh_token
            .filter(|new| new.expose() != refresh.expose())
        else {
            return Ok(());
        };
        let by_server = match self.crypto.seal(
            REVOCATION_ENVELOPE,
            &record.id,
            new.expose().as_bytes(),
        ) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "cannot seal a rotated refresh token");
                return Ok(());
            }
        };
        let sealed = Envelope {
            by_key: envelope.by_key,
            by_server: Some(by_server),
        }
        .encode();
        match self
            .store
            .update_secret(&record.id, record.secret_version, &sealed)
            .await
        {
            Ok(true) => {
                if let Ok(hash) = <[u8; 32]>::try_from(record.key_hash.as_slice()) {
                    self.records.invalidate(&hash).await;
                    self.stale.invalidate(&hash).await;
                }
            }
            // An exchange stored a newer token meanwhile: it refreshed the
            // session too.
            Ok(false) => {
                tracing::info!(key_id = %record.id, "a personal key's refresh token changed during its keep-alive")
            }
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "cannot store a rotated refresh token")
            }
        }
        Ok(())
    }

    /// Writes the batched last-used times; called periodically.
    pub async fn flush_last_used(&self) {
        let batch: Vec<(String, i64)> = match self.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch(&batch).await {
            tracing::warn!(error = %e, "cannot record API keys' last use");
        }
    }

    // ------------------------------------------------------------ management

    fn lifetime(&self, kind: KeyKind, asked: Option<&str>) -> Result<Option<i64>, ManageError> {
        let (default, max) = match kind {
            KeyKind::Service => (
                self.config.default_lifetime_service,
                self.config.max_lifetime_service,
            ),
            KeyKind::Personal => (
                self.config.default_lifetime_personal,
                self.config.max_lifetime_personal,
            ),
        };
        let lifetime = match asked.map(str::trim) {
            None | Some("") => default,
            Some("never") if self.config.allow_no_expiry => return Ok(None),
            Some("never") => {
                return Err(ManageError::Invalid(
                    "keys without an expiry are not allowed (api-keys.allow-no-expiry)".into(),
                ));
            }
            Some(text) => humantime::parse_duration(text).map_err(|_| {
                ManageError::Invalid(format!("`{text}` is not a duration like 14d or 90d"))
            })?,
        };
        if lifetime > max {
            return Err(ManageError::Invalid(format!(
                "the longest lifetime of a {} key is {}",
                kind.as_str(),
                humantime::format_duration(max)
            )));
        }
        if lifetime.is_zero() {
            return Err(ManageError::Invalid("the lifetime must be positive".into()));
        }
        Ok(Some(now() as i64 + lifetime.as_secs() as i64))
    }

    /// Creates a service key. With `verify`, the client credentials are tried
    /// at the provider first, so a wrong secret is caught now, not on first use.
    pub async fn create_service(
        &self,
        new: NewServiceKey,
        actor: &str,
    ) -> Result<CreatedKey, ManageError> {
        if new.client_id.is_empty() || new.client_secret.is_empty() {
            return Err(ManageError::Invalid(
                "a service key needs a client id and its secret".into(),
            ));
        }
        for cidr in &new.allowed_cidrs {
            parse_cidr(cidr).ok_or_else(|| {
                ManageError::Invalid(format!("`{cidr}` is not an address or CIDR"))
            })?;
        }
        for prefix in &new.allowed_prefixes {
            if !prefix.starts_with('/') {
                return Err(ManageError::Invalid(format!(
                    "route prefix `{prefix}` must start with /"
                )));
            }
        }
        let expires_at = self.lifetime(KeyKind::Service, new.expires_in.as_deref())?;
        let rate_limit = canonical_limit::<RateLimit>(new.rate_limit.as_deref())?;
        let quota = canonical_limit::<Quota>(new.quota.as_deref())?;
        if new.verify {
            self.grants
                .client_credentials(&new.client_id, &new.client_secret, &new.scopes)
                .await
                .map_err(grant_failure)?;
        }
        let owner = if new.owner.is_empty() {
            new.client_id.clone()
        } else {
            new.owner.clone()
        };
        let key =
            apikey::generate(KeyKind::Service).map_err(|e| ManageError::Invalid(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let sealed = self
            .seal_envelope(
                key.expose(),
                &id,
                new.client_secret.expose().as_bytes(),
                false,
            )
            .map_err(ManageError::Invalid)?;
        let mut record = self.fresh_record(
            &id,
            key.expose(),
            KeyKind::Service,
            owner,
            sealed,
            expires_at,
        );
        record.description = new.description;
        record.client_id = Some(new.client_id);
        record.scopes = new.scopes;
        record.allowed_methods = new
            .allowed_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        record.allowed_prefixes = new.allowed_prefixes;
        record.allowed_cidrs = new.allowed_cidrs;
        record.rate_limit = rate_limit;
        record.quota = quota;
        self.store
            .insert(&record, actor)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        Ok(CreatedKey {
            id,
            prefix: record.prefix,
            key,
            kind: "service",
            expires_at,
        })
    }

    /// Starts a device authorization for a personal key (RFC 8628 through
    /// keygate, which is the confidential client).
    pub async fn start_device(
        &self,
        description: String,
        expires_in: Option<&str>,
    ) -> Result<serde_json::Value, ManageError> {
        let lifetime = self.lifetime(KeyKind::Personal, expires_in)?;
        let auth = self
            .grants
            .device_authorization(
                &self.client_id,
                &self.client_secret,
                "openid offline_access",
            )
            .await
            .map_err(grant_failure)?;
        let flow_id = apikey::generate(KeyKind::Personal)
            .map_err(|e| ManageError::Invalid(e.to_string()))?
            .expose()[4..36]
            .to_owned();
        self.pending
            .insert(
                flow_id.clone(),
                Arc::new(PendingDevice {
                    device_code: auth.device_code,
                    code_verifier: auth.code_verifier,
                    description,
                    lifetime: lifetime
                        .map(|at| Duration::from_secs((at - now() as i64).max(1) as u64)),
                    interval: auth.interval,
                }),
            )
            .await;
        Ok(serde_json::json!({
            "flow_id": flow_id,
            "user_code": auth.user_code,
            "verification_uri": auth.verification_uri,
            "verification_uri_complete": auth.verification_uri_complete,
            "expires_in": auth.expires_in,
            "interval": auth.interval,
        }))
    }

    /// Polls a device authorization. `Ok(None)` while the user has not
    /// finished; the new key once they have.
    pub async fn poll_device(
        &self,
        flow_id: &str,
        verifier: &JwtVerifier,
    ) -> Result<Option<CreatedKey>, DeviceError> {
        let flow = self
            .pending
            .get(flow_id)
            .await
            .ok_or(DeviceError::Unknown)?;
        let poll = self
            .grants
            .device_poll(
                &self.client_id,
                &self.client_secret,
                &flow.device_code,
                &flow.code_verifier,
            )
            .await
            .map_err(|e| DeviceError::Provider(e.to_string()))?;
        let token = match poll {
            DevicePoll::Pending => return Ok(None),
            DevicePoll::SlowDown => return Err(DeviceError::SlowDown(flow.interval + 5)),
            DevicePoll::Denied => {
                self.pending.invalidate(flow_id).await;
                return Err(DeviceError::Denied);
            }
            DevicePoll::Expired => {
                self.pending.invalidate(flow_id).await;
                return Err(DeviceError::Expired);
            }
            DevicePoll::Done(token) => token,
            #[allow(unreachable_patterns)]
            _ => {
                return Err(DeviceError::Provider(
                    "unexpected device poll answer".into(),
                ));
            }
        };
        self.pending.invalidate(flow_id).await;
        let refresh = token
            .refresh_token
            .ok_or_else(|| DeviceError::Provider("the provider issued no offline token".into()))?;
        let identity = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(|e| {
                DeviceError::Provider(format!("the provider's token is not accepted: {e}"))
            })?;
        let key = apikey::generate(KeyKind::Personal)
            .map_err(|e| DeviceError::Provider(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let expires_at = flow.lifetime.map(|l| now() as i64 + l.as_secs() as i64);
        let sealed = self
            .seal_envelope(key.expose(), &id, refresh.expose().as_bytes(), true)
            .map_err(DeviceError::Provider)?;
        let mut record = self.fresh_record(
            &id,
            key.expose(),
            KeyKind::Personal,
            identity.subject.clone(),
            sealed,
            expires_at,
        );
        record.description = flow.description.clone();
        let actor = identity
            .username
            .clone()
            .unwrap_or_else(|| identity.subject.clone());
        self.store
            .insert(&record, &actor)
            .await
            .map_err(|e| DeviceError::Provider(e.to_string()))?;
        Ok(Some(CreatedKey {
            id,
            prefix: record.prefix,
            key,
            kind: "personal",
            expires_at,
        }))
    }

    /// A new record with no restrictions, before the caller fills in the rest.
    fn fresh_record(
        &self,
        id: &str,
        key: &str,
        kind: KeyKind,
        owner: String,
        sealed: Vec<u8>,
        expires_at: Option<i64>,
    ) -> KeyRecord {
        KeyRecord {
            id: id.to_owned(),
            prefix: apikey::display_prefix(key),
            kind,
            owner,
            description: String::new(),
            client_id: None,
            scopes: Vec::new(),
            allowed_methods: Vec::new(),
            allowed_prefixes: Vec::new(),
            allowed_cidrs: Vec::new(),
            key_hash: self.crypto.hash(key).to_vec(),
            sealed_secret: Some(sealed),
            secret_version: 0,
            previous_hash: None,
            previous_sealed_secret: None,
            previous_valid_until: None,
            created_at: now() as i64,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            rate_limit: None,
            quota: None,
        }
    }

    /// Lists keys.
    pub async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyView>, ManageError> {
        let records = self
            .store
            .list(filter)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        Ok(records.iter().map(KeyView::from).collect())
    }

    /// One key; with `owner`, only if it belongs to them.
    pub async fn show(&self, id: &str, owner: Option<&str>) -> Result<KeyView, ManageError> {
        let record = self.get_owned(id, owner).await?;
        Ok(KeyView::from(&record))
    }

    async fn get_owned(&self, id: &str, owner: Option<&str>) -> Result<KeyRecord, ManageError> {
        let record = self
            .store
            .get(id)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?
            .ok_or(ManageError::NotFound)?;
        if owner.is_some_and(|o| o != record.owner) {
            return Err(ManageError::NotFound);
        }
        Ok(record)
    }

    /// Revokes a key: on this process at once; a personal key's offline
    /// session is revoked at the provider (RFC 7009) and its secret deleted.
    pub async fn revoke(
        &self,
        id: &str,
        owner: Option<&str>,
        actor: &str,
    ) -> Result<(), ManageError> {
        let record = self.get_owned(id, owner).await?;
        if record.revoked_at.is_some() {
            return Ok(());
        }
        if record.kind == KeyKind::Personal
            && let Some(refresh) = self.revocation_token(&record)
        {
            self.revoke_offline_session(&record, &refresh).await;
        }
        self.store
            .revoke(id, actor, now() as i64)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        self.forget(&record).await;
        Ok(())
    }

    /// A personal key's refresh token, sealed for revocation with the
    /// server secret alone.
    fn revocation_token(&self, record: &KeyRecord) -> Option<Secret> {
        let blob = record
            .sealed_secret
            .as_deref()
            .and_then(Envelope::decode)?
            .by_server?;
        self.crypto
            .open(REVOCATION_ENVELOPE, &record.id, &blob)
            .ok()
    }

    /// Revokes a personal key's refresh token at the provider, unless another
    /// live personal key of the same owner holds a token of the same provider
    /// session (`sid`). Keycloak gives every device approval made in one
    /// browser session the same offline session, and revoking one token
    /// ends it for all of them; the other keys must keep working. keygate
    /// refuses the revoked key itself at once either way; the session is
    /// revoked at the provider with the last key that uses it.
    async fn revoke_offline_session(&self, record: &KeyRecord, refresh: &Secret) {
        if let Some(sid) = session_id(refresh) {
            let filter = KeyFilter {
                owner: Some(record.owner.clone()),
                kind: Some(KeyKind::Personal),
                include_revoked: false,
                limit: Some(500),
            };
            let others = match self.store.list(&filter).await {
                Ok(others) => others,
                Err(e) => {
                    tracing::warn!(key_id = %record.id, error = %e, "cannot list the owner's keys; the offline session is not revoked at the provider");
                    return;
                }
            };
            let shared = others.iter().find(|other| {
                other.id != record.id
                    && check_validity(other).is_ok()
                    && self
                        .revocation_token(other)
                        .and_then(|t| session_id(&t))
                        .is_some_and(|s| s == sid)
            });
            if let Some(other) = shared {
                tracing::info!(key_id = %record.id, shared_with = %other.id,
                    "the key's offline session is shared with another live key; it stays at the provider");
                return;
            }
        }
        if let Err(e) = self
            .grants
            .revoke(
                &self.client_id,
                &self.client_secret,
                refresh,
                "refresh_token",
            )
            .await
        {
            tracing::warn!(key_id = %record.id, error = %e, "could not revoke the offline session at the provider");
        }
    }

    async fn forget(&self, record: &KeyRecord) {
        let mut exchanged = Vec::new();
        for hash in [Some(&record.key_hash), record.previous_hash.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                self.remember_refusal(hash, KeyRefusal::Revoked).await;
                exchanged.push(exchange_key(&record.id, &hash));
            }
        }
        self.tokens.invalidate(&record.id).await;
        if let Some(redis) = &self.redis {
            let keys: Vec<String> = exchanged.iter().map(|k| redis.key(k)).collect();
            let _ = redis.del(&keys).await;
        }
    }

    /// Extends a key's expiry, within the maximum lifetime of its kind.
    pub async fn renew(
        &self,
        id: &str,
        owner: Option<&str>,
        expires_in: Option<&str>,
        actor: &str,
    ) -> Result<KeyView, ManageError> {
        let record = self.get_owned(id, owner).await?;
        if record.revoked_at.is_some() {
            return Err(ManageError::Invalid(
                "a revoked key cannot be renewed".into(),
            ));
        }
        let expires_at = self.lifetime(record.kind, expires_in)?;
        self.store
            .renew(id, expires_at, actor)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        self.forget_record_cache(&record).await;
        self.show(id, owner).await
    }

    /// Sets a key's own rate limit and quota. `None` leaves one as it is;
    /// `Some(None)` (or `default`) returns it to its kind's default;
    /// `unlimited` lifts the default. Every replica applies the change at
    /// once (PostgreSQL announces it) or within `record-cache-ttl` (SQLite).
    pub async fn set_limits(
        &self,
        id: &str,
        rate_limit: Option<Option<&str>>,
        quota: Option<Option<&str>>,
        actor: &str,
    ) -> Result<KeyView, ManageError> {
        let record = self.get_owned(id, None).await?;
        if record.revoked_at.is_some() {
            return Err(ManageError::Invalid(
                "a revoked key's limits cannot be changed".into(),
            ));
        }
        let rate_limit = match rate_limit {
            None => record.rate_limit.clone(),
            Some(text) => canonical_limit::<RateLimit>(text.filter(|t| *t != "default"))?,
        };
        let quota = match quota {
            None => record.quota.clone(),
            Some(text) => canonical_limit::<Quota>(text.filter(|t| *t != "default"))?,
        };
        self.store
            .set_limits(id, rate_limit.as_deref(), quota.as_deref(), actor)
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        self.forget_record_cache(&record).await;
        self.show(id, None).await
    }

    /// Issues a new secret for the same key record; the old key keeps
    /// working for `grace` (none: it stops at once). Service keys only: a
    /// personal key's secret is the user's offline session, so a personal
    /// key is replaced by creating a new one.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Option<Duration>,
        old_key: Option<&str>,
        actor: &str,
    ) -> Result<CreatedKey, ManageError> {
        let record = self.get_owned(id, None).await?;
        if record.revoked_at.is_some() {
            return Err(ManageError::Invalid(
                "a revoked key cannot be rotated".into(),
            ));
        }
        if record.kind != KeyKind::Service {
            return Err(ManageError::Invalid(
                "personal keys cannot be rotated; create a new one and revoke this".into(),
            ));
        }
        // The client secret is sealed under the old key: it is needed to
        // re-seal it under the new one.
        let old_key = old_key.ok_or_else(|| {
            ManageError::Invalid(
                "rotating a service key needs the current key (to re-encrypt its client secret)"
                    .into(),
            )
        })?;
        if !self.crypto.hash_matches(old_key, &record.key_hash) {
            return Err(ManageError::Invalid(
                "that is not this record's current key".into(),
            ));
        }
        let secret = record
            .sealed_secret
            .as_deref()
            .and_then(Envelope::decode)
            .and_then(|e| self.crypto.open(old_key, &record.id, &e.by_key).ok())
            .ok_or_else(|| {
                ManageError::Invalid("the stored secret cannot be opened with that key".into())
            })?;
        let key =
            apikey::generate(KeyKind::Service).map_err(|e| ManageError::Invalid(e.to_string()))?;
        let sealed = self
            .seal_envelope(key.expose(), id, secret.expose().as_bytes(), false)
            .map_err(ManageError::Invalid)?;
        let grace_until = grace.map(|g| now() as i64 + g.as_secs() as i64);
        let prefix = apikey::display_prefix(key.expose());
        self.store
            .rotate(
                id,
                &self.crypto.hash(key.expose()),
                &prefix,
                Some(&sealed),
                grace_until,
                actor,
            )
            .await
            .map_err(|e| ManageError::Store(e.to_string()))?;
        self.forget_record_cache(&record).await;
        if grace.is_none()
            && let Ok(hash) = <[u8; 32]>::try_from(record.key_hash.as_slice())
        {
            self.remember_refusal(hash, KeyRefusal::Revoked).await;
        }
        Ok(CreatedKey {
            id: id.to_owned(),
            key,
            prefix,
            kind: "service",
            expires_at: record.expires_at,
        })
    }

    async fn forget_record_cache(&self, record: &KeyRecord) {
        for hash in [Some(&record.key_hash), record.previous_hash.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                self.records.invalidate(&hash).await;
                self.stale.invalidate(&hash).await;
                // A renewed key may have been remembered as expired.
                self.negative.invalidate(&hash).await;
                if let Some(redis) = &self.redis {
                    let _ = redis.del(&[redis.key(&negative_key(&hash))]).await;
                }
            }
        }
    }

    /// The provider token an API key stands for (for `keygate token`).
    pub async fn token_for(
        &self,
        key: &str,
        client_ip: IpAddr,
        verifier: &JwtVerifier,
        headers: &mut LimitHeaders,
    ) -> Result<(Secret, u64), KeyError> {
        let identity = self
            .authenticate(key, "GET", "/oauth/token", client_ip, verifier, headers)
            .await?;
        // The raw provider token would escape the key's restrictions and
        // limits: only keys with neither may hand it out.
        let (found, _) = self.record(&self.crypto.hash(key)).await?;
        let r = &found.record;
        if !(r.allowed_methods.is_empty()
            && r.allowed_prefixes.is_empty()
            && r.allowed_cidrs.is_empty())
        {
            return Err((
                Refusal::Forbidden(
                    "a restricted API key cannot hand out its provider token".into(),
                ),
                "api_key_restricted",
            ));
        }
        if found.rate.is_some() || found.quota.is_some() {
            return Err((
                Refusal::Forbidden(
                    "a rate-limited API key cannot hand out its provider token (requests with it would not be counted)".into(),
                ),
                "api_key_limited",
            ));
        }
        Ok((
            identity.access_token.clone(),
            identity.expires_at.saturating_sub(now()),
        ))
    }
}

/// Why polling a device authorization did not give a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No such flow (finished, expired or never started).
    #[error("unknown or finished device flow")]
    Unknown,
    /// Poll less often: wait this many seconds.
    #[error("slow down")]
    SlowDown(u64),
    /// The user refused.
    #[error("the user denied the request")]
    Denied,
    /// The user did not finish in time.
    #[error("the device code expired")]
    Expired,
    /// The provider failed.
    #[error("provider: {0}")]
    Provider(String),
}

/// A requested limit as stored: `None` for the kind's default, else its
/// canonical text (`unlimited`, `100/s burst 200`, `10000/day`).
fn canonical_limit<T>(text: Option<&str>) -> Result<Option<String>, ManageError>
where
    T: std::str::FromStr<Err = String> + std::fmt::Display,
{
    match KeyLimit::<T>::parse(text).map_err(ManageError::Invalid)? {
        KeyLimit::Default => Ok(None),
        KeyLimit::Unlimited => Ok(Some("unlimited".into())),
        KeyLimit::Set(v) => Ok(Some(v.to_string())),
    }
}

/// The identity of a provider token exchanged for the key `key_id`.
fn exchanged_identity(verified: &Identity, key_id: &str, renew_at: u64) -> Arc<Exchanged> {
    let mut identity = verified.clone();
    identity.method = AuthMethod::ApiKey;
    identity.key_id = Some(key_id.to_owned());
    identity.derived = OnceLock::new();
    Arc::new(Exchanged {
        identity: Arc::new(identity),
        renew_at,
    })
}

/// How long one replica may hold the right to exchange a key.
const EXCHANGE_LOCK_TTL: Duration = Duration::from_secs(10);

/// Redis key of a refused key (by its keyed hash, never the key).
fn negative_key(hash: &[u8; 32]) -> String {
    format!("n:{}", hex(hash))
}

/// Redis key of a key's exchanged token: the record and which of its keys
/// (current or, during a rotation, previous) it was exchanged for.
fn exchange_key(id: &str, hash: &[u8; 32]) -> String {
    format!("x:{id}:{}", hex(&hash[..8]))
}

/// The additional data sealing a shared exchanged token: not the stored
/// secret's, so neither can stand in for the other.
fn exchange_aad(id: &str) -> String {
    format!("{id}#exchanged-token")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn store_unavailable() -> KeyError {
    (
        Refusal::Unavailable("the API-key store is unavailable; try again shortly".into()),
        "store_unavailable",
    )
}

/// Why a record lookup gave no record.
enum Lookup {
    Refused(KeyRefusal),
    Store(String),
}

enum ExchangeError {
    Refused(KeyRefusal),
    Unavailable,
    Verify(AuthError),
}

fn exchange_refusal(e: &ExchangeError) -> KeyError {
    match e {
        ExchangeError::Refused(r) => r.refusal(),
        ExchangeError::Unavailable => (
            Refusal::Unavailable("the OpenID provider is unavailable; try again shortly".into()),
            "provider_unavailable",
        ),
        ExchangeError::Verify(e) => (
            Refusal::BadCredential(format!(
                "the provider's token for this API key is not accepted: {e}"
            )),
            "api_key_token_rejected",
        ),
    }
}

fn grant_error(e: GrantError, kind: KeyKind) -> ExchangeError {
    match e {
        GrantError::Rejected { error, description } => ExchangeError::Refused(
            KeyRefusal::Rejected(rejection_text(kind, &error, description.as_deref())),
        ),
        _ => ExchangeError::Unavailable,
    }
}

/// Why the provider refused a key's grant, and what to do: the OAuth error,
/// the provider's description (Keycloak's are short: `Offline user session
/// not found`, `User disabled`), shortened to printable text, and the fix.
fn rejection_text(kind: KeyKind, error: &str, description: Option<&str>) -> String {
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(n)
            .collect()
    };
    let description = description.map(|d| clean(d, 80)).unwrap_or_default();
    let said = match description.is_empty() {
        true => clean(error, 40),
        false => format!("{}: {description}", clean(error, 40)),
    };
    match kind {
        KeyKind::Personal if description.to_ascii_lowercase().contains("disabled") => {
            format!("{said}; the user's account is disabled at the provider")
        }
        KeyKind::Personal => format!(
            "{said}; a personal key lives as long as its offline session at the provider, \
             which has ended (an admin or the user ended it, it was idle too long, or it \
             reached its maximum lifetime): create a new key at /oauth/keys"
        ),
        KeyKind::Service => format!(
            "{said}; the key's client may have been disabled or deleted, or its secret \
             changed: create a new key with the client's current secret"
        ),
    }
}

/// The provider session (`sid`) a refresh token belongs to, when the token
/// is a JWT that names one (Keycloak's are). Read without verification: the
/// token is keygate's own stored copy, and the answer only decides whether a
/// revocation at the provider would also end another key's session.
fn session_id(token: &Secret) -> Option<String> {
    use base64::Engine as _;
    let payload = token.expose().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sid")?.as_str().map(str::to_owned)
}

fn check_validity(record: &KeyRecord) -> Result<(), KeyRefusal> {
    if record.revoked_at.is_some() {
        return Err(KeyRefusal::Revoked);
    }
    if record.expires_at.is_some_and(|e| e <= now() as i64) {
        return Err(KeyRefusal::Expired);
    }
    Ok(())
}

fn check_restrictions(
    record: &KeyRecord,
    method: &str,
    path: &str,
    ip: IpAddr,
) -> Result<(), KeyError> {
    if !record.allowed_methods.is_empty()
        && !record
            .allowed_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    {
        return Err((
            Refusal::MethodNotAllowed(format!("this API key may not use {method}")),
            "api_key_method_not_allowed",
        ));
    }
    if !record.allowed_prefixes.is_empty()
        && !record
            .allowed_prefixes
            .iter()
            .any(|p| path_has_prefix(path, p))
    {
        return Err((
            Refusal::Forbidden("this API key may not use this route".into()),
            "api_key_route_not_allowed",
        ));
    }
    if !record.allowed_cidrs.is_empty()
        && !record
            .allowed_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c))
            .any(|c| c.contains(ip))
    {
        return Err((
            Refusal::Forbidden("this API key may not be used from this address".into()),
            "api_key_network_not_allowed",
        ));
    }
    Ok(())
}

/// `/reports` allows `/reports`, `/reports/…`, not `/reportsX`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one offline-session keep-alive sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepaliveSweep {
    /// Sessions refreshed.
    pub refreshed: usize,
    /// Refused by the provider (the session is gone or the user disabled).
    pub gone: usize,
    /// Failed otherwise (provider or store unavailable); retried next check.
    pub failed: usize,
}

/// Personal keys refreshed per keep-alive sweep, at most.
const KEEPALIVE_BATCH: i64 = 1000;

/// `d` give or take up to `percent`% of it, at random.
fn jittered(d: Duration, percent: u32) -> Duration {
    let spread = d.as_millis() as u64 * u64::from(percent) / 100;
    if spread == 0 {
        return d;
    }
    let r = (uuid::Uuid::new_v4().as_u128() as u64) % (2 * spread + 1);
    (d + Duration::from_millis(r)).saturating_sub(Duration::from_millis(spread))
}

/// The stored secret: sealed under the API key, and for personal keys also
/// under the server secret alone (for revocation at the provider).
struct Envelope {
    by_key: Vec<u8>,
    by_server: Option<Vec<u8>>,
}

impl Envelope {
    fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(5 + self.by_key.len() + self.by_server.as_ref().map_or(0, Vec::len));
        out.push(1);
        out.extend_from_slice(&(self.by_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.by_key);
        if let Some(s) = &self.by_server {
            out.extend_from_slice(s);
        }
        out
    }

    fn decode(blob: &[u8]) -> Option<Envelope> {
        let (&version, rest) = blob.split_first()?;
        if version != 1 || rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let rest = &rest[4..];
        if rest.len() < len {
            return None;
        }
        let (by_key, by_server) = rest.split_at(len);
        Some(Envelope {
            by_key: by_key.to_vec(),
            by_server: (!by_server.is_empty()).then(|| by_server.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_truncation() {
        let e = Envelope {
            by_key: vec![1, 2, 3],
            by_server: Some(vec![9, 9]),
        };
        let blob = e.encode();
        let d = Envelope::decode(&blob).unwrap();
        assert_eq!(d.by_key, [1, 2, 3]);
        assert_eq!(d.by_server.unwrap(), [9, 9]);
        assert!(Envelope::decode(&blob[..4]).is_none());
        assert!(Envelope::decode(&[2, 0, 0, 0, 0]).is_none());
        let plain = Envelope {
            by_key: vec![7],
            by_server: None,
        }
        .encode();
        assert!(Envelope::decode(&plain).unwrap().by_server.is_none());
    }

    #[test]
    fn route_prefixes_respect_segments() {
        assert!(path_has_prefix("/reports", "/reports"));
        assert!(path_has_prefix("/reports/1", "/reports/"));
        assert!(!path_has_prefix("/reportsX", "/reports"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
