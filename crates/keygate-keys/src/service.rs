//! The API-key service: what it holds, and the request-time operation
//! (phase 3 for an API key). Each concern is its own module: the record
//! lookup and its caches ([`crate::records`]), the exchange for a provider
//! token ([`crate::exchange`]), restrictions ([`crate::restrictions`]),
//! limits ([`crate::limits`]), management ([`crate::manage`]), the device
//! flow ([`crate::device`]) and the offline-session keep-alive
//! ([`crate::keepalive`]).
//!
//! On each use, in this order:
//! 1. the key's shape and checksum are checked — no lookup for a typo or a
//!    scanner's false positive;
//! 2. its keyed hash is looked up: first in the negative cache (unknown,
//!    revoked, expired keys, remembered for `negative-cache-ttl`), then in the
//!    record cache (`record-cache-ttl`), then in the store;
//! 3. expiry, revocation and the key's restrictions (methods, route
//!    prefixes, client networks) are enforced, then its limits;
//! 4. the cached provider token for the key is used, or one exchange is made
//!    (client-credentials for service keys; for personal keys the refresh of
//!    the offline session, or the JWT authorization grant, by the key's
//!    backing); concurrent first uses of a key share that one exchange;
//! 5. the provider's token is verified like any bearer token and its
//!    identity forwarded, marked `api-key` with the key's id.

use crate::error::ExchangeError;
use crate::error::{KeyError, ManageError};
use crate::limits::{LimitHeaders, Limiter};
use crate::restrictions::{check_restrictions, check_validity};
use crate::state::{ApiKeys, Exchanged, Found, RenewBeforeExpiry, STALE_RECORD_TTL};
use keygate_auth::apikey::{self, KeyCrypto};
use keygate_auth::assertion::AssertionSigner;
use keygate_auth::grants::Grants;
use keygate_auth::{JwtVerifier, Provider};
use keygate_core::breaker::shared_while_up;
use keygate_core::config::Config;
use keygate_core::keys::Backing;
use keygate_core::{Identity, Secret, unix_now};
use keygate_store::{KeyStore, Redis, StoreTimeouts};
use moka::future::Cache;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        let store =
            KeyStore::connect_with(&config.store_url.0, StoreTimeouts::from_config(config)).await?;
        let c = &config.api_keys;
        let signer = c
            .jwt_grant
            .as_ref()
            .map(|g| AssertionSigner::new(secret.expose().as_bytes(), &g.issuer, g.key_generation))
            .transpose()
            .map_err(|e| ManageError::Invalid(format!("api-keys.jwt-grant: {e}")))?;
        Ok(Some(ApiKeys {
            store,
            crypto,
            grants: Grants::new(provider),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            config: c.clone(),
            signer,
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
            exchanging: Default::default(),
            pending: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1800))
                .build(),
            used: Mutex::new(HashMap::new()),
            hashes: crate::state::KeyHashes::new(),
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

    /// keygate's public signing keys as a JWK Set (served at `/oauth/jwks`),
    /// when `api-keys.jwt-grant` is set.
    pub fn jwks(&self) -> Option<serde_json::Value> {
        self.signer.as_ref().map(AssertionSigner::jwks)
    }

    /// The backing of new personal keys (`api-keys.personal-backing`).
    pub fn personal_backing(&self) -> keygate_core::keys::Backing {
        self.config.personal_backing.into()
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
            return Err(KeyError::Malformed);
        }
        let hash = self.hashes.get(key, || self.crypto.hash(key));
        if let Some(refused) = self.negative.get(&hash).await {
            return Err(refused.into());
        }
        let (found, store_down) = self.record(&hash).await?;
        let record = &found.record;
        if let Err(refused) = check_validity(record) {
            self.remember_refusal(hash, refused.clone()).await;
            return Err(refused.into());
        }
        check_restrictions(record, method, path, client_ip)?;
        self.limiter
            .check(&record.id, found.rate, found.quota, headers)
            .await
            .map_err(KeyError::Limited)?;
        // While the store is down a key is honoured only as long as the
        // token it was exchanged for stays cached: never exchanged anew on
        // a record the store could not confirm.
        let cached = match store_down {
            true => Some(
                self.tokens
                    .get(&record.id)
                    .await
                    .ok_or(KeyError::StoreUnavailable)?,
            ),
            false => None,
        };
        let exchanged = match cached {
            Some(exchanged) => Ok(exchanged),
            None => match self.tokens.get(&record.id).await {
                // The usual case: no exchange future is even built.
                Some(exchanged) => Ok(exchanged),
                None => Box::pin(self.exchange_uncached(key, &hash, &found, verifier)).await,
            },
        };
        let exchanged = match exchanged {
            Ok(exchanged) => exchanged,
            Err(e) => {
                // A key the provider no longer honours is remembered as such,
                // so its holder cannot drive provider traffic at request rate.
                if let crate::error::ExchangeError::Refused(refused) = &*e {
                    self.remember_refusal(hash, refused.clone()).await;
                }
                return Err(KeyError::from(&*e));
            }
        };
        if let Ok(mut used) = self.used.lock() {
            let now = unix_now() as i64;
            match used.get_mut(&record.id) {
                Some(at) => *at = now,
                None => {
                    used.insert(record.id.clone(), now);
                }
            }
        }
        Ok(Arc::clone(&exchanged.identity))
    }

    /// The key's exchange when no token is cached. Concurrent first uses
    /// share one exchange, except while the provider is failing: then each
    /// request asks its breaker, which lets one probe and answers the rest
    /// at once, where sharing would make them all wait for the probe.
    ///
    /// An offline session's refresh token may rotate, and two refreshes
    /// with it could end the key, so such a key is never exchanged twice at
    /// once: while the provider is failing, a request whose key another
    /// request is exchanging gets its answer at once instead of joining.
    async fn exchange_uncached(
        &self,
        key: &str,
        hash: &[u8; 32],
        found: &Found,
        verifier: &JwtVerifier,
    ) -> Result<Arc<Exchanged>, Arc<ExchangeError>> {
        let id = &found.record.id;
        let up = self.grants.is_up();
        let rotates = found.record.backing == Backing::OfflineSession;
        let _exchanging = match rotates {
            true => match self.exchanging.claim(id) {
                None if !up => return Err(Arc::new(ExchangeError::Unavailable)),
                claimed => claimed,
            },
            false => None,
        };
        let exchange = self.exchange_shared(key, hash, found, verifier);
        shared_while_up(&self.tokens, id.clone(), up || rotates, exchange).await
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
            return Err(KeyError::Restricted);
        }
        if found.rate.is_some() || found.quota.is_some() {
            return Err(KeyError::LimitedToken);
        }
        Ok((
            identity.access_token.clone(),
            identity.expires_at.saturating_sub(unix_now()),
        ))
    }
}
