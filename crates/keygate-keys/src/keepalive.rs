//! Keeps idle personal keys' offline sessions alive. A provider ends an
//! offline session that nothing refreshes for its idle timeout (Keycloak:
//! *Offline Session Idle*, 30 days by default); a key used less often
//! would die with it. Every `offline-keepalive-check`, each live personal
//! key that nothing refreshed for `offline-keepalive` is refreshed with the
//! copy of its refresh token sealed under the server secret.

use crate::state::ApiKeys;
use keygate_auth::grants::GrantError;
use keygate_auth::stored::StoredSecret;
use keygate_core::unix_now;
use keygate_store::KeyRecord;
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) fn jittered(d: Duration, percent: u32) -> Duration {
    let spread = d.as_millis() as u64 * u64::from(percent) / 100;
    if spread == 0 {
        return d;
    }
    let r = (uuid::Uuid::new_v4().as_u128() as u64) % (2 * spread + 1);
    (d + Duration::from_millis(r)).saturating_sub(Duration::from_millis(spread))
}

impl ApiKeys {
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
        let start = unix_now() as i64;
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
            let now = unix_now() as i64;
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
        let (Some(refresh), Some(stored)) = (
            self.revocation_token(record),
            record
                .sealed_secret
                .as_deref()
                .and_then(|s| StoredSecret::decode(s).ok()),
        ) else {
            return Err(GrantError::Unavailable(
                "the key has no refresh token sealed under the server secret".into(),
            ));
        };
        let token = self
            .grants
            .refresh(&self.client_id, &self.client_secret, &refresh)
            .await?;
        if let Err(e) = self
            .store
            .session_refreshed(&record.id, unix_now() as i64)
            .await
        {
            tracing::warn!(key_id = %record.id, error = %e, "cannot record the refresh of a personal key's offline session");
        }
        let Some(new) = token
            .refresh_token
            .filter(|new| new.expose() != refresh.expose())
        else {
            return Ok(());
        };
        let sealed = match stored.with_revocation(&self.crypto, &record.id, new.expose().as_bytes())
        {
            Ok(sealed) => sealed.encode(),
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "cannot seal a rotated refresh token");
                return Ok(());
            }
        };
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
}
