//! Ending sessions: at logout, and by back-channel logout (by `sid`, by
//! user, or one login), remembered on every replica through Redis; and the
//! logout tokens' `jti` replay memory.

use crate::error::SessionError;
use crate::service::{
    LOGOUT_TOKEN_MAX_AGE, MAX_SESSION_SECS, SessionCookie, Sessions, now_ms, session_key,
    store_unavailable,
};
use keygate_auth::session::SessionState;
use std::sync::atomic::Ordering;

impl Sessions {
    /// Ends a session on logout, so that no copy of its cookie opens it
    /// again: a server-side session is deleted from Redis; a cookie session's
    /// login is remembered as ended (here, and in Redis for every replica)
    /// until such a cookie would have expired. An error means the logout
    /// could not be recorded where every replica sees it.
    pub async fn end(&self, cookie: &SessionCookie) -> Result<(), SessionError> {
        match cookie {
            SessionCookie::Id(id) => {
                let redis = self.redis_or_unavailable()?;
                redis
                    .del(&[redis.key(&session_key(id))])
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot delete a session from Redis at logout");
                        store_unavailable()
                    })?;
                Ok(())
            }
            // Remembered here first, so the session ends on this replica
            // even when Redis cannot be told.
            SessionCookie::State(state) => self.end_by(&login_marker(state), now_ms()).await,
        }
    }

    /// Whether a back-channel logout ended this cookie session: its `sid`,
    /// or its user since it began. Looked up here, and with Redis in the
    /// markers every replica leaves there (one round trip). Server-side
    /// sessions are deleted by the logout instead, so they need no lookup.
    pub async fn logged_out(&self, state: &SessionState) -> Result<bool, SessionError> {
        if self.server_side {
            return Ok(false);
        }
        // Without Redis every marker is in `ended`, and each one added raises
        // the generation after it is in: a session found not ended at the
        // current generation needs no lookup (read before the lookups, so a
        // logout during them raises it past what is recorded below).
        let generation = self.ended_generation.load(Ordering::Acquire);
        if self.redis.is_none() && state.logout_checked.is(generation) {
            return Ok(false);
        }
        let mut markers = vec![format!("sub:{}", state.subject), login_marker(state)];
        if let Some(sid) = &state.sid {
            markers.push(format!("sid:{sid}"));
        }
        // A logout of this login or by sid ends that session; by sub, the
        // user's sessions that began before it.
        let ends = |marker: &str, at_ms: u64| {
            marker.starts_with("sid:")
                || marker.starts_with("login:")
                || at_ms >= state.created_at_ms
        };
        if markers
            .iter()
            .any(|m| self.ended.get(m).is_some_and(|at| ends(m, at)))
        {
            return Ok(true);
        }
        let Some(redis) = &self.redis else {
            state.logout_checked.set(generation);
            return Ok(false);
        };
        let keys: Vec<String> = markers
            .iter()
            .map(|m| redis.key(&format!("ended:{m}")))
            .collect();
        let found = redis
            .get_many(&keys)
            .await
            .map_err(|_| store_unavailable())?;
        for (marker, at) in markers.iter().zip(found) {
            if let Some(at) = at.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()) {
                self.ended.insert(marker.clone(), at);
                self.ended_generation.fetch_add(1, Ordering::Release);
                if ends(marker, at) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether this is the first time a logout token with this `jti` (from
    /// this issuer) arrives: remembered here and, with Redis, for every
    /// replica, for as long as such a token is accepted. When Redis cannot
    /// be asked, the local memory decides.
    pub async fn first_use_of_jti(&self, issuer: &str, jti: &str) -> bool {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{issuer}\n{jti}").as_bytes(),
        );
        let id = format!("jti:{}", keygate_core::encoding::hex(digest.as_ref()));
        if self.seen_jti.get(&id).is_some() {
            return false;
        }
        self.seen_jti.insert(id.clone(), ());
        if let Some(redis) = &self.redis {
            let ttl = std::time::Duration::from_secs(LOGOUT_TOKEN_MAX_AGE + 2 * self.leeway + 60);
            match redis.set_nx(&redis.key(&id), b"1", ttl).await {
                Ok(first) => return first,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a logout token's jti in Redis; checked on this replica only");
                }
            }
        }
        true
    }

    /// Ends the sessions a logout names (`sid:…`, `sub:…` or `login:…`);
    /// `at_ms` is when the logout happened (a logout by `sub` ends the
    /// sessions that began before it).
    pub async fn end_by(&self, marker: &str, at_ms: u64) -> Result<(), SessionError> {
        let now = at_ms;
        if self.server_side {
            let redis = self.redis_or_unavailable()?;
            let n = redis
                .end_sessions(&redis.key(marker))
                .await
                .map_err(|_| store_unavailable())?;
            tracing::info!(sessions = n, "back-channel logout ended sessions");
            return Ok(());
        }
        self.ended.insert(marker.to_owned(), now);
        self.ended_generation.fetch_add(1, Ordering::Release);
        if let Some(redis) = &self.redis {
            redis
                .set(
                    &redis.key(&format!("ended:{marker}")),
                    now.to_string().as_bytes(),
                    std::time::Duration::from_secs(MAX_SESSION_SECS),
                )
                .await
                .map_err(|_| store_unavailable())?;
        }
        Ok(())
    }
}
/// The marker a logout leaves for one login of a cookie session: its own
/// id, or for sessions sealed before keygate gave them one, the subject and
/// the time of the login.
fn login_marker(state: &SessionState) -> String {
    if state.id.is_empty() {
        format!("login:{}@{}", state.subject, state.created_at_ms)
    } else {
        format!("login:{}", state.id)
    }
}
