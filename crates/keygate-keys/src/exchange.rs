//! A key's exchange for a provider token, by the key's backing: client
//! credentials for service keys; for personal keys a refresh of the user's
//! offline session, or the JWT authorization grant with an assertion
//! keygate signs for the user. The verified
//! token is cached until `refresh-margin` before it expires; concurrent
//! first uses share one exchange, and with Redis replicas share it too
//! (sealed under the key itself, so Redis alone opens nothing).

use crate::error::{ExchangeError, KeyRefusal};
use crate::records::exchange_key;
use crate::state::{ApiKeys, Exchanged, Found};
use keygate_auth::JwtVerifier;
use keygate_auth::grants::{GrantError, TokenResponse};
use keygate_auth::stored::StoredSecret;
use keygate_core::keys::Backing;
use keygate_core::{AuthMethod, Identity, Secret, unix_now};
use keygate_store::{KeyRecord, Redis};
use std::sync::Arc;
use std::time::Duration;

/// How long one replica may hold the right to exchange a key.
const EXCHANGE_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a replica waits for the token another replica is exchanging
/// (then it exchanges the key itself).
pub(crate) const EXCHANGE_WAIT: Duration = Duration::from_secs(3);

/// Why a JWT-grant key is refused when the provider's token is for another
/// user than the one asserted.
pub(crate) const OTHER_USER: &str = "the provider answered keygate's assertion with a token \
     for another user (a link of keygate's identity provider names this user's id for \
     another account): an administrator must fix the links at the provider";

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

fn grant_error(e: GrantError, backing: Backing, link_users: bool) -> ExchangeError {
    match e {
        GrantError::Rejected { error, description } => {
            ExchangeError::Refused(KeyRefusal::Rejected(rejection_text(
                backing,
                &error,
                description.as_deref(),
                link_users,
            )))
        }
        _ => ExchangeError::Unavailable,
    }
}

/// Why the provider refused a key's grant, and what to do: the OAuth error,
/// the provider's description (Keycloak's are short: `Offline user session
/// not found`, `User disabled`, `User not found`), shortened to printable
/// text, and the fix. `link_users`: keygate links users itself when they
/// create a key (`api-keys.jwt-grant.link-users`).
pub(crate) fn rejection_text(
    backing: Backing,
    error: &str,
    description: Option<&str>,
    link_users: bool,
) -> String {
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
    let lower = description.to_ascii_lowercase();
    match backing {
        Backing::OfflineSession | Backing::JwtGrant
            if lower.contains("disabled") || lower.contains("not enabled") =>
        {
            format!("{said}; the user's account is disabled at the provider")
        }
        Backing::JwtGrant if lower.contains("user not found") => format!(
            "{said}; the user's account is not linked to keygate's identity provider at the \
             provider (an administrator removed the link, or the identity provider was \
             replaced): {}",
            match link_users {
                true => "create a new key at /oauth/keys, which links it again",
                false => "ask an administrator to link it again",
            }
        ),
        Backing::JwtGrant if lower.contains("not fully set up") => format!(
            "{said}; the user has actions pending at the provider (e.g. a new password): sign \
             in there once, then try again"
        ),
        Backing::JwtGrant => format!(
            "{said}; the provider does not accept keygate's assertions: an operator must check \
             keygate's identity provider there (issuer, keys, allowed clients, clock skew)"
        ),
        Backing::OfflineSession => format!(
            "{said}; a personal key lives as long as its offline session at the provider, \
             which has ended (an admin or the user ended it, it was idle too long, or it \
             reached its maximum lifetime): create a new key at /oauth/keys"
        ),
        Backing::ClientCredentials => format!(
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
            // for as long as Redis answers. While the provider is failing,
            // no request waits for another's probe: an offline session's
            // key (whose refresh token may rotate, so that it must not be
            // refreshed twice at once) is answered at once; any other key
            // asks the provider's breaker below, which answers it at once.
            let deadline = tokio::time::Instant::now() + EXCHANGE_WAIT;
            while tokio::time::Instant::now() < deadline && redis.is_up() {
                if !self.grants.is_up() {
                    match found.record.backing {
                        Backing::OfflineSession => return Err(ExchangeError::Unavailable),
                        _ => break,
                    }
                }
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
        let link_users = self.config.jwt_grant.as_ref().is_some_and(|g| g.link_users);
        // The user a JWT-grant key's assertion names.
        let asserted = (record.backing == Backing::JwtGrant).then(|| secret.expose().to_owned());
        let token = match record.backing {
            Backing::ClientCredentials => {
                let client = record.client_id.as_deref().unwrap_or_default();
                self.grants
                    .client_credentials(client, &secret, &record.scopes)
                    .await
                    .map_err(|e| grant_error(e, record.backing, link_users))?
            }
            Backing::OfflineSession => {
                // The copy sealed under the server secret is the newest: the
                // offline-session keep-alive, which has no key to seal under,
                // stores a rotated refresh token only there.
                let refresh = self.revocation_token(record).unwrap_or(secret);
                let token = self
                    .grants
                    .refresh(&self.client_id, &self.client_secret, &refresh)
                    .await
                    .map_err(|e| grant_error(e, record.backing, link_users))?;
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
            // The subject is sealed under the key: the store alone cannot
            // make a key assert another user.
            Backing::JwtGrant => self
                .jwt_grant(secret.expose())
                .await
                .map_err(|e| grant_error(e, record.backing, link_users))?,
        };
        let verified = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(ExchangeError::Verify)?;
        // The provider finds the user through a link whose external id is the
        // asserted subject: a link an administrator gave another user would
        // hand this key that user's token. Only the asserted user's will do.
        if let Some(subject) = asserted
            && verified.subject != subject
        {
            tracing::warn!(key_id = %record.id, owner = %record.owner, answered_for = %verified.subject,
                "the provider answered a key's assertion with a token for another user: check the links of keygate's identity provider");
            return Err(ExchangeError::Refused(KeyRefusal::Rejected(
                OTHER_USER.into(),
            )));
        }
        Ok(self.exchanged(&verified, &record.id))
    }

    /// A verified provider token as the exchange of key record `id`, renewed
    /// `refresh-margin` before expiry, but very short-lived tokens kept at
    /// least half their lifetime.
    pub(crate) fn exchanged(&self, verified: &Identity, id: &str) -> Arc<Exchanged> {
        let margin = self.config.refresh_margin.as_secs();
        let lifetime = verified.expires_at.saturating_sub(unix_now());
        let renew_at = unix_now() + lifetime.saturating_sub(margin).max(lifetime / 2);
        exchanged_identity(verified, id, renew_at)
    }

    /// The JWT authorization grant (RFC 7523) for `subject`: a fresh
    /// single-use assertion signed by keygate for the provider's issuer,
    /// exchanged as keygate's client. Fails as unavailable (503, logged)
    /// when `api-keys.jwt-grant` is not set.
    pub(crate) async fn jwt_grant(&self, subject: &str) -> Result<TokenResponse, GrantError> {
        let (Some(signer), Some(grant)) = (&self.signer, &self.config.jwt_grant) else {
            tracing::warn!(
                "a personal key backed by the JWT authorization grant was used, but api-keys.jwt-grant is not configured"
            );
            return Err(GrantError::Unavailable(
                "api-keys.jwt-grant is not configured".into(),
            ));
        };
        let audience = self.grants.provider_issuer().ok_or_else(|| {
            GrantError::Unavailable("the provider's discovery document is not loaded".into())
        })?;
        let assertion = signer
            .sign(subject, &audience, grant.assertion_lifetime)
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot sign an assertion for the JWT authorization grant");
                GrantError::Unavailable(format!("cannot sign an assertion: {e}"))
            })?;
        // `openid`, as the device flow asks for: the token then also serves
        // the userinfo endpoint (Keycloak: "Missing openid scope" without).
        self.grants
            .jwt_bearer(&self.client_id, &self.client_secret, &assertion, "openid")
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_grant_refusals_say_what_to_do() {
        let text =
            |d: &str, link| rejection_text(Backing::JwtGrant, "invalid_grant", Some(d), link);
        let t = text("User not found", true);
        assert!(t.starts_with("invalid_grant: User not found; "), "{t}");
        assert!(
            t.contains("not linked to keygate's identity provider"),
            "{t}"
        );
        assert!(t.contains("create a new key at /oauth/keys"), "{t}");
        let t = text("User not found", false);
        assert!(t.contains("ask an administrator to link it again"), "{t}");
        assert!(!t.contains("/oauth/keys"), "{t}");
        assert!(text("User is not enabled", false).ends_with("disabled at the provider"));
        assert!(text("Account is not fully set up", false).contains("sign in there once"));
        for trust in [
            "Invalid signature",
            "No Identity Provider for provided issuer",
            "Token was issued in the future",
        ] {
            let t = text(trust, true);
            assert!(t.contains("does not accept keygate's assertions"), "{t}");
        }
        // The provider's text is shortened to printable ASCII.
        let t = text("User not found\n<script>\u{7}", false);
        assert!(!t.contains('\n') && !t.contains('\u{7}'), "{t}");
    }

    #[test]
    fn other_backings_keep_their_texts() {
        let t = rejection_text(
            Backing::OfflineSession,
            "invalid_grant",
            Some("Offline user session not found"),
            true,
        );
        assert!(
            t.contains("offline session") && t.contains("/oauth/keys"),
            "{t}"
        );
        let t = rejection_text(
            Backing::OfflineSession,
            "invalid_grant",
            Some("User disabled"),
            false,
        );
        assert!(t.ends_with("disabled at the provider"), "{t}");
        let t = rejection_text(
            Backing::ClientCredentials,
            "unauthorized_client",
            None,
            false,
        );
        assert!(
            t.starts_with("unauthorized_client; the key's client"),
            "{t}"
        );
    }
}
