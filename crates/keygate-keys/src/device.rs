//! Personal keys from the device authorization grant (RFC 8628), with
//! keygate as the confidential client: the user approves at the provider,
//! keygate gets an offline token for them and seals it under a new key.

use crate::error::{DeviceError, DeviceFailure, ManageError, grant_failure};
use crate::model::CreatedKey;
use crate::state::{ApiKeys, PendingDevice};
use keygate_auth::JwtVerifier;
use keygate_auth::apikey;
use keygate_auth::grants::DevicePoll;
use keygate_auth::stored::StoredSecret;
use keygate_core::keys::KeyKind;
use keygate_core::unix_now;
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
        let auth = self
            .grants
            .device_authorization(
                &self.client_id,
                &self.client_secret,
                "openid offline_access",
            )
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
        let refresh = token
            .refresh_token
            .ok_or(DeviceError::Provider(DeviceFailure::NoOfflineToken))?;
        let identity = verifier
            .verify(token.access_token.expose())
            .await
            .map_err(failed)?;
        let key = apikey::generate(KeyKind::Personal).map_err(failed)?;
        let id = uuid::Uuid::new_v4().to_string();
        let expires_at = flow
            .lifetime
            .map(|l| unix_now() as i64 + l.as_secs() as i64);
        let sealed = StoredSecret::seal(
            &self.crypto,
            key.expose(),
            &id,
            refresh.expose().as_bytes(),
            true,
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
        let actor = identity
            .username
            .clone()
            .unwrap_or_else(|| identity.subject.clone());
        self.store.insert(&record, &actor).await.map_err(failed)?;
        Ok(Some(CreatedKey {
            id,
            prefix: record.prefix,
            key,
            kind: "personal",
            expires_at,
        }))
    }
}

/// A failure while finishing a device flow, for the log.
fn failed(e: impl Into<DeviceFailure>) -> DeviceError {
    DeviceError::Provider(e.into())
}
