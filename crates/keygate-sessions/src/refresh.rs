//! Keeping a session's access token current: the stored one while it is
//! valid, else one refresh per session at a time (across replicas with
//! server-side sessions).

use crate::error::SessionError;
use crate::service::{
    REFRESH_LOCK_TTL, Refreshed, SessionCookie, Sessions, now, session_key, store_unavailable,
};
use keygate_auth::session::SessionState;
use keygate_core::{Reason, Secret};
use std::sync::Arc;

/// How long a replica waits for another replica's refresh of the same
/// session before answering 503 (the refresh is one provider call).
const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The access token to use for a session: the stored one while it is
/// valid; otherwise, with `enable-refresh-tokens`, a refreshed one (one
/// refresh per session at a time, across replicas with server-side
/// sessions), saved back (a new cookie goes into `set_cookies`). A
/// session that was logged out, has expired without refresh, or whose
/// refresh the provider refuses, ends: its cookies are cleared and the
/// caller is sent to login (401).
pub async fn current_access_token(
    sessions: &Sessions,
    cookie: &SessionCookie,
    set_cookies: &mut Vec<String>,
) -> Result<Secret, SessionError> {
    let now = now();
    let ended = |set_cookies: &mut Vec<String>, reason: Reason| {
        set_cookies.extend(sessions.clear_headers(1));
        SessionError::Ended(reason)
    };
    let Some(state) = sessions.load(cookie).await? else {
        return Err(ended(set_cookies, Reason::SessionEnded));
    };
    if sessions.logged_out(&state).await? {
        return Err(ended(set_cookies, Reason::SessionLoggedOut));
    }
    if state.access_expires_at > now {
        return Ok(state.access_token.clone());
    }
    let Some(refresh_token) = state.refresh_token.clone().filter(|_| sessions.refresh) else {
        return Err(ended(set_cookies, Reason::SessionExpired));
    };
    if state.session_expires_at <= now {
        return Err(ended(set_cookies, Reason::SessionExpired));
    }
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        refresh_token.expose().as_bytes(),
    );
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    // While the provider is failing, a request of a session that another
    // request is refreshing (the probe) gets its 503 at once instead of
    // waiting for it. It does not refresh the session itself either: two
    // refreshes with one refresh token could end the session.
    let _refreshing = match sessions.refreshing.claim(&key) {
        None if !sessions.grants.is_up() => return Err(SessionError::ProviderUnavailable),
        claimed => claimed,
    };
    let refreshed = sessions
        .refreshes
        .try_get_with(key, async {
            if let Some(done) = refreshed_elsewhere(sessions, cookie).await? {
                return Ok(Arc::new(done));
            }
            let refreshed = async {
                let tokens = sessions
                    .grants
                    .refresh(&sessions.client_id, &sessions.client_secret, &refresh_token)
                    .await
                    .map_err(RefreshError::Grant)?;
                let expires_at = now + tokens.expires_in.unwrap_or(60);
                let new_state = Arc::new(SessionState {
                    access_token: tokens.access_token,
                    refresh_token: tokens.refresh_token.or(Some(refresh_token.clone())),
                    access_expires_at: expires_at,
                    ..(*state).clone()
                });
                let cookies = sessions
                    .save(&new_state, Some(cookie))
                    .await
                    .map_err(RefreshError::Store)?;
                Ok::<_, RefreshError>(Arc::new((new_state, cookies)))
            }
            .await;
            // The lock is this replica's: let it go whether the refresh
            // worked or not. Kept after a failure (the provider down), it
            // made every request of the session wait for a refresh nobody
            // was doing, and answer 503, until it expired (10 s) — long
            // after the provider was back.
            if let Some(redis) = &sessions.redis
                && let SessionCookie::Id(id) = cookie
            {
                let _ = redis
                    .del(&[redis.key(&format!("{}:refresh", session_key(id)))])
                    .await;
            }
            refreshed
        })
        .await;
    match refreshed {
        Ok(done) => {
            let (new_state, cookies) = &*done;
            set_cookies.extend(cookies.iter().cloned());
            Ok(new_state.access_token.clone())
        }
        Err(e) => match &*e {
            RefreshError::Grant(e) if e.is_unavailable() => Err(SessionError::ProviderUnavailable),
            RefreshError::ProviderDown => Err(SessionError::ProviderUnavailable),
            RefreshError::Grant(_) => Err(ended(set_cookies, Reason::SessionRefreshRefused)),
            RefreshError::Store(e) => Err(e.clone()),
        },
    }
}

/// Why a session could not be refreshed.
#[derive(Debug)]
enum RefreshError {
    Grant(keygate_auth::grants::GrantError),
    Store(SessionError),
    /// Another replica is refreshing the session, and this one finds the
    /// provider failing: it answers at once rather than wait for the other.
    ProviderDown,
}

/// With server-side sessions, at most one replica refreshes a session at a
/// time (a provider that rotates refresh tokens would refuse the second
/// refresh and end the session). The others wait for its result in Redis.
/// `Ok(None)`: this replica refreshes.
async fn refreshed_elsewhere(
    sessions: &Sessions,
    cookie: &SessionCookie,
) -> Result<Option<Refreshed>, RefreshError> {
    let (SessionCookie::Id(id), Some(redis)) = (cookie, &sessions.redis) else {
        return Ok(None);
    };
    let lock = redis.key(&format!("{}:refresh", session_key(id)));
    if redis
        .set_nx(&lock, b"1", REFRESH_LOCK_TTL)
        .await
        .map_err(|_| RefreshError::Store(store_unavailable()))?
    {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
    while tokio::time::Instant::now() < deadline {
        if !sessions.grants.is_up() {
            return Err(RefreshError::ProviderDown);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match sessions.load(cookie).await.map_err(RefreshError::Store)? {
            Some(state) if state.access_expires_at > now() => {
                return Ok(Some((state, Vec::new())));
            }
            Some(_) => {}
            None => {
                return Err(RefreshError::Store(SessionError::Ended(
                    Reason::SessionEnded,
                )));
            }
        }
    }
    Err(RefreshError::Store(store_unavailable()))
}
