//! A key's exchange for a provider token: client credentials for service
//! keys, a refresh of the offline session for personal keys. The verified
//! token is cached until `refresh-margin` before it expires; concurrent
//! first uses share one exchange, and with Redis replicas share it too
//! (sealed under the key itself, so Redis alone opens nothing).

use crate::error::{ExchangeError, KeyRefusal};
use crate::records::exchange_key;
use crate::state::{ApiKeys, Exchanged, Found};
use keygate_auth::JwtVerifier;
use keygate_auth::grants::{GrantError, TokenResponse};
use keygate_auth::stored::StoredSecret;
use keygate_core::keys::KeyKind;
use keygate_core::{AuthMethod, Identity, Secret, unix_now};
use keygate_store::{KeyRecord, Redis};
use std::sync::Arc;
use std::time::Duration;

/// How long one replica may hold the right to exchange a key.
const EXCHANGE_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a replica waits for the token another replica is exchanging
/// (then it exchanges the key itself).
pub(crate) const EXCHANGE_WAIT: Duration = Duration::from_secs(3);

/// The additional data sealing a shared exchanged token: not the stored
/// secret's, so neither can stand in for the other.
fn exchange_aad(id: &str) -> String {
    format!("{id}#exchanged-token")
}

/// The identity of a provider token exchanged for the key `key_id`.
fn exchanged_identity(verified: &Identity, key_id: &str, renew_at: u64) -> Arc<Exchanged> {
    let identity = verified.reissued(AuthMethod::ApiKey, Some(key_id.to_owned()));
    Arc::new(Exchanged {
        identity: Arc::new(identity),
        renew_at,
    })
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

impl ApiKeys {
    /// The provider token for a key: with Redis, first the one another
    /// replica already exchanged (sealed under the key itself, so Redis
    /// alone opens nothing); else one exchange, which a Redis lock keeps to
    /// one replica at a time — a provider that rotates refresh tokens would
    /// refuse the second of two concurrent refreshes.
    pub(crate) async fn exchange_shared(
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
            // Another replica is exchanging: wait a little for its token,
            // for as long as Redis answers.
            let deadline = tokio::time::Instant::now() + EXCHANGE_WAIT;
            while tokio::time::Instant::now() < deadline && redis.is_up() {
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
                    let ttl =
                        Duration::from_secs(exchanged.renew_at.saturating_sub(unix_now()).max(1));
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
        if renew_at <= unix_now() {
            return None;
        }
        let verified = verifier.verify(value.get("token")?.as_str()?).await.ok()?;
        Some(exchanged_identity(&verified, &found.record.id, renew_at))
    }

    pub(crate) async fn exchange(
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
        let secret = StoredSecret::decode(sealed)
            .and_then(|stored| stored.open(&self.crypto, key, &record.id))
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
                    if let Err(e) = store.session_refreshed(&id, unix_now() as i64).await {
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
        let lifetime = verified.expires_at.saturating_sub(unix_now());
        // Renew `refresh-margin` before expiry, but keep very short-lived
        // tokens at least half their lifetime.
        let renew_at = unix_now() + lifetime.saturating_sub(margin).max(lifetime / 2);
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
        let sealed = match StoredSecret::seal(
            &self.crypto,
            key,
            &record.id,
            new.expose().as_bytes(),
            true,
        ) {
            Ok(sealed) => sealed.encode(),
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
}
