//! Personal keys from the device authorization grant (RFC 8628), with
//! keygate as the confidential client: the user approves at the provider,
//! and keygate makes a key for them with the configured backing:
//!
//! - `offline-session`: keygate asks for `offline_access`, gets the user's
//!   offline refresh token and seals it under the new key;
//! - `jwt-grant`: keygate asks for `openid` only (the refresh token of the
//!   approval's session is not kept), links the user to its identity
//!   provider at the provider when `link-users` is on, and tries the JWT
//!   authorization grant for the user at once, so a missing link is told
//!   now rather than on first use; the user's subject is sealed under the
//!   new key, and the token just obtained serves the key's first use.

use crate::error::{DeviceError, DeviceFailure, ManageError, grant_failure};
use crate::model::CreatedKey;
use crate::state::{ApiKeys, PendingDevice};
use keygate_auth::JwtVerifier;
use keygate_auth::apikey;
use keygate_auth::grants::{DevicePoll, GrantError};
use keygate_auth::links::{self, Linked};
use keygate_auth::stored::StoredSecret;
use keygate_core::keys::{Backing, KeyKind};
use keygate_core::{Identity, Secret, unix_now};
use std::sync::Arc;
use std::time::Duration;

impl ApiKeys {
    /// Starts a device authorization for a personal key (RFC 8628 through
    /// keygate, which is the confidential client).
    pub async fn start_device(
        &self,
        description: String,
        expires_in: Option<&str>,
    ) -> Result<serde_json::Value, ManageError> {
        let lifetime = self.lifetime(KeyKind::Personal, expires_in)?;
        let backing = Backing::from(self.config.personal_backing);
        let scope = match backing {
            Backing::JwtGrant if self.signer.is_none() => {
                return Err(ManageError::Invalid(
                    "personal-backing: jwt-grant needs api-keys.jwt-grant".into(),
                ));
            }
            // No offline session: the key needs none.
            Backing::JwtGrant => "openid",
            _ => "openid offline_access",
        };
        let auth = self
            .grants
            .device_authorization(&self.client_id, &self.client_secret, scope)
            .await
            .map_err(grant_failure)?;
        let flow_id = apikey::generate(KeyKind::Personal)?.expose()[4..36].to_owned();
        self.pending
            .insert(
                flow_id.clone(),
                Arc::new(PendingDevice {
                    device_code: auth.device_code,
                    code_verifier: auth.code_verifier,
                    description,
                    lifetime: lifetime
                        .map(|at| Duration::from_secs((at - unix_now() as i64).max(1) as u64)),
                    interval: auth.interval,
                    backing,
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
            .map_err(failed)?;
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
                return Err(DeviceError::Provider(DeviceFailure::Unexpected));
            }
        };
        self.pending.invalidate(flow_id).await;
        let identity = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(failed)?;
        let id = uuid::Uuid::new_v4().to_string();
        // What is sealed under the key, and (JWT grant) the token of the
        // first exchange, which serves the key's first use.
        let (secret, revocable, first) = match flow.backing {
            Backing::JwtGrant => {
                let first = self.first_jwt_grant(&identity, verifier).await?;
                (Secret::new(identity.subject.clone()), false, Some(first))
            }
            _ => {
                let refresh = token
                    .refresh_token
                    .ok_or(DeviceError::Provider(DeviceFailure::NoOfflineToken))?;
                (refresh, true, None)
            }
        };
        let key = apikey::generate(KeyKind::Personal).map_err(failed)?;
        let expires_at = flow
            .lifetime
            .map(|l| unix_now() as i64 + l.as_secs() as i64);
        let sealed = StoredSecret::seal(
            &self.crypto,
            key.expose(),
            &id,
            secret.expose().as_bytes(),
            revocable,
        )
        .map_err(failed)?
        .encode();
        let mut record = self.fresh_record(
            &id,
            key.expose(),
            KeyKind::Personal,
            identity.subject.clone(),
            sealed,
            expires_at,
        );
        record.description = flow.description.clone();
        record.backing = flow.backing;
        let actor = identity
            .username
            .clone()
            .unwrap_or_else(|| identity.subject.clone());
        self.store.insert(&record, &actor).await.map_err(failed)?;
        if let Some(first) = first {
            self.tokens
                .insert(id.clone(), self.exchanged(&first, &id))
                .await;
        }
        Ok(Some(CreatedKey {
            id,
            prefix: record.prefix,
            key,
            kind: "personal",
            expires_at,
        }))
    }
}

impl ApiKeys {
    /// For a new key backed by the JWT grant: links the user to keygate's
    /// identity provider (with `link-users`), then asks for a token with an
    /// assertion for the user, which tells at once whether the provider
    /// finds the user through the link. The verified token.
    async fn first_jwt_grant(
        &self,
        identity: &Identity,
        verifier: &JwtVerifier,
    ) -> Result<Arc<Identity>, DeviceError> {
        let grant = self
            .config
            .jwt_grant
            .as_ref()
            .ok_or(DeviceError::Provider(DeviceFailure::Unexpected))?;
        if grant.link_users {
            let username = identity.username.as_deref().unwrap_or(&identity.subject);
            match links::link_user(
                &self.grants,
                &self.client_id,
                &self.client_secret,
                &grant.identity_provider,
                &identity.subject,
                username,
            )
            .await
            .map_err(failed)?
            {
                Linked::Created => {
                    tracing::info!(subject = %identity.subject, identity_provider = %grant.identity_provider,
                        "linked a user to keygate's identity provider")
                }
                Linked::Existing => {}
            }
        }
        let token = match self.jwt_grant(&identity.subject).await {
            Ok(token) => token,
            Err(GrantError::Rejected { error, description })
                if description
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case("user not found")) =>
            {
                tracing::info!(subject = %identity.subject, %error, "a user without a link to keygate's identity provider asked for a personal key");
                return Err(DeviceError::NotLinked(match grant.link_users {
                    // Linked, but with another id than the user's own.
                    true => format!(
                        "your account is linked to keygate's identity provider `{}` at the provider with another id: ask an administrator to remove that link, then create the key again",
                        grant.identity_provider
                    ),
                    false => format!(
                        "your account is not linked to keygate's identity provider `{}` at the provider: ask an administrator to link it, then create the key again",
                        grant.identity_provider
                    ),
                }));
            }
            Err(e) => return Err(failed(e)),
        };
        let verified = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(failed)?;
        if verified.subject != identity.subject {
            tracing::warn!(subject = %identity.subject, answered_for = %verified.subject,
                "the provider answered a new key's assertion with a token for another user: check the links of keygate's identity provider");
            return Err(DeviceError::NotLinked(format!(
                "keygate's identity provider `{}` at the provider links your id to another account: ask an administrator to fix the links, then create the key again",
                grant.identity_provider
            )));
        }
        Ok(verified)
    }
}

/// A failure while finishing a device flow, for the log.
fn failed(e: impl Into<DeviceFailure>) -> DeviceError {
    DeviceError::Provider(e.into())
}
