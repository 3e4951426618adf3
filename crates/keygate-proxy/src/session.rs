//! The browser-session service: a session cookie opened
//! ([`Sessions::read`]), its session loaded (from the cookie or Redis),
//! refreshed once per session at a time, saved and ended, with every new
//! cookie handed back as a `Set-Cookie` value. The login endpoints that
//! start and end sessions are in [`crate::login`].

use crate::error::GatewayError;
use crate::respond::{self, Body, Refusal, Refused};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use keygate_auth::grants::Grants;
use keygate_auth::session::{self, CookieSealer, SessionState};
use keygate_core::Secret;
use keygate_core::config::{Config, SessionStore};
use keygate_store::Redis;
use std::borrow::Cow;
use std::sync::Arc;

/// The session cookie's name (chunks are `kg_session-1`, …).
pub const SESSION_COOKIE: &str = "kg_session";

/// The short-lived cookie holding a login in progress.
pub const LOGIN_COOKIE: &str = "kg_login";

/// The longest a session cookie lives (and a back-channel logout is remembered).
const MAX_SESSION_SECS: u64 = 30 * 24 * 3600;

/// Browser-session settings and the cookie sealer.
pub struct Sessions {
    pub(crate) sealer: CookieSealer,
    pub(crate) secure: bool,
    /// Answer 401 instead of redirecting to login.
    pub no_redirects: bool,
    pub(crate) scopes: Vec<String>,
    pub(crate) id_audience: String,
    pub(crate) redirection_url: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) leeway: u64,
    pub(crate) refresh: bool,
    pub(crate) grants: Grants,
    /// Refreshes in flight or just done, by the SHA-256 of the refresh token:
    /// concurrent requests of one session share one refresh.
    pub(crate) refreshes: moka::future::Cache<[u8; 32], Arc<Refreshed>>,
    /// Cookie sessions ended by back-channel logout (`sid:…` or `sub:…`),
    /// with the time of the logout (Unix ms), kept for the longest a session cookie
    /// can live. With Redis they are also kept there, for every replica.
    pub(crate) ended: moka::sync::Cache<String, u64>,
    /// The `jti`s of accepted back-channel logout tokens (hashed with the
    /// issuer), kept as long as such a token is accepted.
    pub(crate) seen_jti: moka::sync::Cache<String, ()>,
    /// `session-store: redis`: sessions live there, the cookie holds an id.
    pub(crate) server_side: bool,
    pub(crate) redis: Option<Redis>,
}

/// What a request's session cookie holds.
#[derive(Debug)]
pub enum SessionCookie {
    /// `session-store: cookie`: the session itself.
    State(SessionState),
    /// `session-store: redis`: the opaque id Redis keeps the session under.
    Id(Secret),
}

/// The sealed content of a server-side session's cookie.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionRef {
    id: String,
}

/// The additional data sealing a server-side session's cookie (not the
/// cookie session's: neither opens as the other).
const SESSION_REF_AAD: &str = "kg_session#server-side";

/// How long another replica's refresh of the same session may take.
const REFRESH_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How old (by `iat`) a logout token may be. The `jti` replay cache keeps
/// every accepted token at least this long (plus the leeway), so a captured
/// token cannot be replayed to log a user out again.
pub(crate) const LOGOUT_TOKEN_MAX_AGE: u64 = 10 * 60;

impl Sessions {
    /// Browser sessions are on when `encryption-key` is set.
    pub fn from_config(
        config: &Config,
        provider: Arc<keygate_auth::Provider>,
        redis: Option<Redis>,
    ) -> Result<Option<Self>, GatewayError> {
        if config.encryption_key.is_empty() {
            return Ok(None);
        }
        let sealer = CookieSealer::new(config.encryption_key.expose().as_bytes())
            .map_err(|e| GatewayError::config("encryption-key", e))?;
        let server_side = config.session_store == SessionStore::Redis;
        if server_side && redis.is_none() {
            return Err(GatewayError::config(
                "session-store",
                "`redis` needs redis-url",
            ));
        }
        Ok(Some(Sessions {
            sealer,
            secure: config.secure_cookie,
            no_redirects: config.no_redirects,
            scopes: config.scopes.clone(),
            id_audience: config
                .id_token_audience
                .clone()
                .unwrap_or_else(|| config.client_id.clone()),
            redirection_url: config.redirection_url.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            leeway: config.clock_skew.as_secs(),
            refresh: config.enable_refresh_tokens,
            grants: Grants::new(provider),
            refreshes: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(std::time::Duration::from_secs(MAX_SESSION_SECS))
                .build(),
            seen_jti: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(std::time::Duration::from_secs(
                    LOGOUT_TOKEN_MAX_AGE + 2 * config.clock_skew.as_secs() + 60,
                ))
                .build(),
            server_side,
            redis,
        }))
    }

    /// The session cookie of a request: `Ok(None)` without one, `Err(chunks)`
    /// when one is present but cannot be opened (tampered, truncated, old
    /// key, or sealed for the other session store).
    pub fn read(&self, headers: &HeaderMap) -> Result<Option<(SessionCookie, usize)>, usize> {
        let cookies: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let Some((value, chunks)) = session::read_cookie(&cookies, SESSION_COOKIE) else {
            return Ok(None);
        };
        let opened = match self.server_side {
            false => self
                .sealer
                .open(&value, SESSION_COOKIE)
                .map(SessionCookie::State),
            true => self
                .sealer
                .open_json::<SessionRef>(&value, SESSION_REF_AAD)
                .map(|r| SessionCookie::Id(Secret::new(r.id))),
        };
        match opened {
            Ok(cookie) => Ok(Some((cookie, chunks))),
            Err(_) => Err(chunks),
        }
    }

    /// `Set-Cookie` values that delete a session of `chunks` cookies.
    pub fn clear_headers(&self, chunks: usize) -> Vec<String> {
        session::clear_cookie_headers(SESSION_COOKIE, chunks, self.secure)
    }

    pub(crate) fn redis_or_unavailable(&self) -> Result<&Redis, SessionError> {
        self.redis.as_ref().ok_or(SessionError::NoStore)
    }

    /// The session a cookie names: the cookie's own, or the one Redis keeps
    /// under its id. `Ok(None)` when Redis no longer has it (logged out,
    /// expired); 503 when Redis cannot be asked.
    pub async fn load(&self, cookie: &SessionCookie) -> Result<Option<SessionState>, SessionError> {
        let id = match cookie {
            SessionCookie::State(state) => return Ok(Some(state.clone())),
            SessionCookie::Id(id) => id,
        };
        let redis = self.redis_or_unavailable()?;
        let key = redis.key(&session_key(id));
        let sealed = redis.get(&key).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read a session from Redis");
            store_unavailable()
        })?;
        Ok(sealed.and_then(|blob| {
            let text = String::from_utf8(blob).ok()?;
            self.sealer.open(&text, &key).ok()
        }))
    }

    /// Keeps a new or refreshed session: sealed into the cookie, or sealed
    /// into Redis under the session's id (a new id for a new session, whose
    /// cookie is then the sealed id). Returns the `Set-Cookie` values.
    pub(crate) async fn save(
        &self,
        state: &SessionState,
        existing: Option<&SessionCookie>,
    ) -> Result<Vec<String>, SessionError> {
        let now = now();
        let lifetime = state.session_expires_at.saturating_sub(now).max(1);
        let failed = |e: keygate_auth::session::SessionError| SessionError::Sealing(Arc::new(e));
        if !self.server_side {
            let sealed = self.sealer.seal(state, SESSION_COOKIE).map_err(failed)?;
            return Ok(session::set_cookie_headers(
                SESSION_COOKIE,
                &sealed,
                lifetime,
                self.secure,
                0,
            ));
        }
        let redis = self.redis_or_unavailable()?;
        let (id, new) = match existing {
            Some(SessionCookie::Id(id)) => (id.clone(), false),
            _ => (new_session_id().map_err(failed)?, true),
        };
        let key = redis.key(&session_key(&id));
        let sealed = self.sealer.seal(state, &key).map_err(failed)?;
        let mut indexes = vec![redis.key(&format!("sub:{}", state.subject))];
        if let Some(sid) = &state.sid {
            indexes.push(redis.key(&format!("sid:{sid}")));
        }
        redis
            .save_session(
                &key,
                sealed.as_bytes(),
                std::time::Duration::from_secs(lifetime),
                &indexes,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot store a session in Redis");
                store_unavailable()
            })?;
        if !new {
            return Ok(Vec::new());
        }
        let sealed_id = self
            .sealer
            .seal_json(
                &SessionRef {
                    id: id.expose().to_owned(),
                },
                SESSION_REF_AAD,
            )
            .map_err(failed)?;
        Ok(session::set_cookie_headers(
            SESSION_COOKIE,
            &sealed_id,
            lifetime,
            self.secure,
            0,
        ))
    }

    /// Ends a session on logout, so that no copy of its cookie opens it
    /// again: a server-side session is deleted from Redis; a cookie session's
    /// login is remembered as ended (here, and in Redis for every replica)
    /// until such a cookie would have expired. An error means the logout
    /// could not be recorded where every replica sees it.
    pub(crate) async fn end(&self, cookie: &SessionCookie) -> Result<(), SessionError> {
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
    pub(crate) async fn logged_out(&self, state: &SessionState) -> Result<bool, SessionError> {
        if self.server_side {
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
    pub(crate) async fn first_use_of_jti(&self, issuer: &str, jti: &str) -> bool {
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
    pub(crate) async fn end_by(&self, marker: &str, at_ms: u64) -> Result<(), SessionError> {
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

fn store_unavailable() -> SessionError {
    SessionError::StoreUnavailable
}

/// Redis key of a server-side session: the SHA-256 of its id, so a dump of
/// Redis holds no usable session id.
fn session_key(id: &Secret) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.expose().as_bytes());
    format!("s:{}", keygate_core::encoding::hex(digest.as_ref()))
}

/// 32 random bytes, base64url.
pub(crate) fn new_session_id() -> Result<Secret, keygate_auth::session::SessionError> {
    keygate_auth::oauth::random_token()
        .map(Secret::new)
        .map_err(|_| keygate_auth::session::SessionError::Random)
}

/// The access token to use for a session: the stored one while it is
/// valid; otherwise, with `enable-refresh-tokens`, a refreshed one (one
/// refresh per session at a time, across replicas with server-side
/// sessions), saved back (a new cookie goes into `ctx.set_cookies`). A
/// session that was logged out, has expired without refresh, or whose
/// refresh the provider refuses, ends: its cookies are cleared and the
/// caller is sent to login (401).
pub async fn current_access_token(
    sessions: &Sessions,
    cookie: &SessionCookie,
    set_cookies: &mut Vec<String>,
) -> Result<Secret, SessionError> {
    let now = now();
    let ended = |set_cookies: &mut Vec<String>, reason: &'static str| {
        set_cookies.extend(sessions.clear_headers(1));
        SessionError::Ended(reason)
    };
    let Some(state) = sessions.load(cookie).await? else {
        return Err(ended(set_cookies, "session_ended"));
    };
    if sessions.logged_out(&state).await? {
        return Err(ended(set_cookies, "session_logged_out"));
    }
    if state.access_expires_at > now {
        return Ok(state.access_token.clone());
    }
    let Some(refresh_token) = state.refresh_token.clone().filter(|_| sessions.refresh) else {
        return Err(ended(set_cookies, "session_expired"));
    };
    if state.session_expires_at <= now {
        return Err(ended(set_cookies, "session_expired"));
    }
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        refresh_token.expose().as_bytes(),
    );
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    let refreshed = sessions
        .refreshes
        .try_get_with(key, async {
            if let Some(done) = refreshed_elsewhere(sessions, cookie).await? {
                return Ok(Arc::new(done));
            }
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
                ..state.clone()
            });
            let cookies = sessions
                .save(&new_state, Some(cookie))
                .await
                .map_err(RefreshError::Store)?;
            if let Some(redis) = &sessions.redis
                && let SessionCookie::Id(id) = cookie
            {
                let _ = redis
                    .del(&[redis.key(&format!("{}:refresh", session_key(id)))])
                    .await;
            }
            Ok::<_, RefreshError>(Arc::new((new_state, cookies)))
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
            RefreshError::Grant(_) => Err(ended(set_cookies, "session_refresh_refused")),
            RefreshError::Store(e) => Err(e.clone()),
        },
    }
}

/// Why a session cannot be used or kept. The proxy's error edge
/// ([`crate::respond`]) turns it into a 401 (the session ended: log in
/// again) or a 503.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session has ended; the reason is for logs and metrics
    /// (`session_ended`, `session_logged_out`, `session_expired`,
    /// `session_refresh_refused`).
    #[error("the session has ended ({0})")]
    Ended(&'static str),
    /// `session-store: redis` without a Redis.
    #[error("the session store is unavailable")]
    NoStore,
    /// Redis cannot be asked.
    #[error("the session store is unavailable; try again shortly")]
    StoreUnavailable,
    /// The provider cannot be reached for a refresh.
    #[error("the OpenID provider is unavailable; try again shortly")]
    ProviderUnavailable,
    /// A session could not be sealed.
    #[error("{0}")]
    Sealing(#[source] Arc<keygate_auth::session::SessionError>),
}

impl SessionError {
    /// The short reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Ended(reason) => reason,
            SessionError::NoStore | SessionError::StoreUnavailable => "session_store_unavailable",
            SessionError::ProviderUnavailable => "provider_unavailable",
            SessionError::Sealing(_) => "session_failed",
        }
    }
}

/// A refreshed session and the `Set-Cookie` values that carry it.
type Refreshed = (Arc<SessionState>, Vec<String>);

/// Why a session could not be refreshed.
#[derive(Debug)]
enum RefreshError {
    Grant(keygate_auth::grants::GrantError),
    Store(SessionError),
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
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match sessions.load(cookie).await.map_err(RefreshError::Store)? {
            Some(state) if state.access_expires_at > now() => {
                return Ok(Some((Arc::new(state), Vec::new())));
            }
            Some(_) => {}
            None => {
                return Err(RefreshError::Store(SessionError::Ended("session_ended")));
            }
        }
    }
    Err(RefreshError::Store(store_unavailable()))
}

/// The redirect that starts a login and comes back to `return_to`.
pub fn login_redirect(return_to: &str) -> Response<Body> {
    let target = format!(
        "/oauth/authorize?return_to={}",
        keygate_core::encoding::encode_path(return_to)
    );
    redirect(&target, &[])
}

pub(crate) fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut resp = respond::empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub(crate) fn now() -> u64 {
    now_ms() / 1000
}

pub(crate) fn now_ms() -> u64 {
    keygate_core::unix_now_ms()
}

pub(crate) fn refused(refusal: Refusal, reason: &'static str) -> Refused {
    Refused {
        refusal,
        reason: Cow::Borrowed(reason),
    }
}
