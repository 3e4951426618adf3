//! Key management, shared by `keygate keys`, the admin API and the
//! self-service endpoints: create (service keys), list, show, revoke,
//! renew, rotate and set limits. Every change drops what this process (and,
//! with Redis, every replica) cached about the key.

use crate::error::{KeyRefusal, ManageError, grant_failure};
use crate::model::{CreatedKey, KeyView, NewServiceKey};
use crate::restrictions::{check_validity, parse_cidr};
use crate::state::ApiKeys;
use keygate_auth::apikey;
use keygate_auth::stored::StoredSecret;
use keygate_core::keys::{Backing, KeyKind};
use keygate_core::limits::{KeyLimit, Quota, RateLimit};
use keygate_core::{Secret, unix_now};
use keygate_store::{KeyFilter, KeyRecord};
use std::time::Duration;

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

impl ApiKeys {
    pub(crate) fn lifetime(
        &self,
        kind: KeyKind,
        asked: Option<&str>,
    ) -> Result<Option<i64>, ManageError> {
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
                return Err(ManageError::NotAllowed(
                    "keys without an expiry are not allowed (api-keys.allow-no-expiry)".into(),
                ));
            }
            Some(text) => humantime::parse_duration(text).map_err(|_| {
                ManageError::Invalid(format!("`{text}` is not a duration like 14d or 90d"))
            })?,
        };
        if lifetime > max {
            return Err(ManageError::NotAllowed(format!(
                "the longest lifetime of a {} key is {}",
                kind.as_str(),
                keygate_core::config::duration::format(max)
            )));
        }
        if lifetime.is_zero() {
            return Err(ManageError::Invalid("the lifetime must be positive".into()));
        }
        Ok(Some(unix_now() as i64 + lifetime.as_secs() as i64))
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
        let key = apikey::generate(KeyKind::Service)?;
        let id = uuid::Uuid::new_v4().to_string();
        let sealed = StoredSecret::seal(
            &self.crypto,
            key.expose(),
            &id,
            new.client_secret.expose().as_bytes(),
            false,
        )?
        .encode();
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
        self.store.insert(&record, actor).await?;
        Ok(CreatedKey {
            id,
            prefix: record.prefix,
            key,
            kind: "service",
            expires_at,
        })
    }

    /// A new record with no restrictions and its kind's first backing
    /// (client credentials, offline session), before the caller fills in
    /// the rest.
    pub(crate) fn fresh_record(
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
            created_at: unix_now() as i64,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            rate_limit: None,
            quota: None,
            backing: match kind {
                KeyKind::Service => Backing::ClientCredentials,
                KeyKind::Personal => Backing::OfflineSession,
            },
        }
    }

    /// Lists keys.
    pub async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyView>, ManageError> {
        let records = self.store.list(filter).await?;
        Ok(records.iter().map(KeyView::from).collect())
    }

    /// One key; with `owner`, only if it belongs to them.
    pub async fn show(&self, id: &str, owner: Option<&str>) -> Result<KeyView, ManageError> {
        let record = self.get_owned(id, owner).await?;
        Ok(KeyView::from(&record))
    }

    async fn get_owned(&self, id: &str, owner: Option<&str>) -> Result<KeyRecord, ManageError> {
        let record = self.store.get(id).await?.ok_or(ManageError::NotFound)?;
        if owner.is_some_and(|o| o != record.owner) {
            return Err(ManageError::NotFound);
        }
        Ok(record)
    }

    /// Revokes a key: on this process at once; a personal key's offline
    /// session is revoked at the provider (RFC 7009) and its secret deleted.
    /// A key backed by the JWT grant has nothing at the provider to revoke:
    /// without the key keygate signs no assertion for it.
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
        self.store.revoke(id, actor, unix_now() as i64).await?;
        self.forget(&record).await;
        Ok(())
    }

    /// A personal key's refresh token, sealed for revocation with the
    /// server secret alone.
    pub(crate) fn revocation_token(&self, record: &KeyRecord) -> Option<Secret> {
        StoredSecret::decode(record.sealed_secret.as_deref()?)
            .and_then(|stored| stored.open_for_revocation(&self.crypto, &record.id))
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
            return Err(ManageError::Conflict(
                "a revoked key cannot be renewed".into(),
            ));
        }
        let expires_at = self.lifetime(record.kind, expires_in)?;
        self.store.renew(id, expires_at, actor).await?;
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
            return Err(ManageError::Conflict(
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
            .await?;
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
            return Err(ManageError::Conflict(
                "a revoked key cannot be rotated".into(),
            ));
        }
        if record.kind != KeyKind::Service {
            return Err(ManageError::Conflict(
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
            return Err(ManageError::Conflict(
                "that is not this record's current key".into(),
            ));
        }
        let secret = record
            .sealed_secret
            .as_deref()
            .and_then(|s| StoredSecret::decode(s).ok())
            .and_then(|s| s.open(&self.crypto, old_key, &record.id).ok())
            .ok_or_else(|| {
                ManageError::Invalid("the stored secret cannot be opened with that key".into())
            })?;
        let key = apikey::generate(KeyKind::Service)?;
        let sealed = StoredSecret::seal(
            &self.crypto,
            key.expose(),
            id,
            secret.expose().as_bytes(),
            false,
        )?
        .encode();
        let grace_until = grace.map(|g| unix_now() as i64 + g.as_secs() as i64);
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
            .await?;
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
}
