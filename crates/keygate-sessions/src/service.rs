//! The session service's state and its cookie side: settings, the cookie
//! opened ([`Sessions::read`]), a session loaded and saved, with every new
//! cookie handed back as a `Set-Cookie` value.

use crate::error::SessionError;
use keygate_auth::grants::Grants;
use keygate_auth::session::{self, CookieSealer, SessionState};
use keygate_core::Secret;
use keygate_core::config::{Config, ConfigError, SessionStore};
use keygate_store::Redis;
use std::sync::Arc;

/// The session cookie's name (chunks are `kg_session-1`, …).
pub const SESSION_COOKIE: &str = "kg_session";

/// The short-lived cookie holding a login in progress.
pub const LOGIN_COOKIE: &str = "kg_login";

/// The longest a session cookie lives (and a back-channel logout is remembered).
pub(crate) const MAX_SESSION_SECS: u64 = 30 * 24 * 3600;

/// A refreshed session and the `Set-Cookie` values that carry it.
pub(crate) type Refreshed = (Arc<SessionState>, Vec<String>);

/// Browser-session settings and the cookie sealer.
pub struct Sessions {
    /// Seals and opens keygate's cookies (`encryption-key`).
    pub sealer: CookieSealer,
    /// `secure-cookie`: cookies get `Secure`.
    pub secure: bool,
    /// `no-redirects`: answer 401 instead of redirecting to login.
    pub no_redirects: bool,
    /// `scopes` asked for at login, besides `openid`.
    pub scopes: Vec<String>,
    /// The audience an ID token must have (`id-token-audience`, else `client-id`).
    pub id_audience: String,
    /// `redirection-url`: the callback's base, when not derived from the request.
    pub redirection_url: Option<String>,
    /// keygate's client at the provider.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// `clock-skew`, in seconds.
    pub leeway: u64,
    /// `enable-refresh-tokens`.
    pub refresh: bool,
    /// The provider's token endpoint.
    pub grants: Grants,
    /// Refreshes in flight or just done, by the SHA-256 of the refresh token:
    /// concurrent requests of one session share one refresh.
    pub(crate) refreshes: moka::future::Cache<[u8; 32], Arc<Refreshed>>,
    /// The refreshes this replica is making now (same key as `refreshes`).
    pub(crate) refreshing: keygate_core::breaker::InFlight<[u8; 32]>,
    /// Cookie sessions ended by back-channel logout (`sid:…` or `sub:…`),
    /// with the time of the logout (Unix ms), kept for the longest a session cookie
    /// can live. With Redis they are also kept there, for every replica.
    pub(crate) ended: moka::sync::Cache<String, u64>,
    /// Raised after every marker added to `ended`: a cookie session found
    /// not ended at the current generation is still not ended (without
    /// Redis, where other replicas add markers this one does not count).
    pub(crate) ended_generation: Arc<std::sync::atomic::AtomicU64>,
    /// The `jti`s of accepted back-channel logout tokens (hashed with the
    /// issuer), kept as long as such a token is accepted.
    pub(crate) seen_jti: moka::sync::Cache<String, ()>,
    /// `session-store: redis`: sessions live there, the cookie holds an id.
    pub(crate) server_side: bool,
    pub(crate) redis: Option<Redis>,
    /// Session cookies opened lately, by [`Sessions::read`]: a cookie is
    /// opened (base64, AES-256-GCM, JSON) once, not on every request. An
    /// entry holds the sealed value it was opened from and serves only that
    /// exact value; whether the session has ended is still decided on every
    /// request.
    pub(crate) opened: moka::sync::Cache<u64, Arc<(Box<str>, SessionCookie)>>,
    pub(crate) opened_keys: foldhash::quality::RandomState,
}

/// The bytes of opened cookies kept at most (their sealed values and states).
const OPENED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// What a request's session cookie holds. Cheap to clone.
#[derive(Debug, Clone)]
pub enum SessionCookie {
    /// `session-store: cookie`: the session itself.
    State(Arc<SessionState>),
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
pub(crate) const REFRESH_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How old (by `iat`) a logout token may be. The `jti` replay cache keeps
/// every accepted token at least this long (plus the leeway), so a captured
/// token cannot be replayed to log a user out again.
pub const LOGOUT_TOKEN_MAX_AGE: u64 = 10 * 60;

impl Sessions {
    /// Takes over `old`'s memory of sessions ended by back-channel logout
    /// and of logout tokens seen (a reload must not bring a logged-out
    /// cookie session back, nor accept a replayed logout token).
    pub fn take_over_logouts(&mut self, old: &Sessions) {
        self.ended = old.ended.clone();
        self.ended_generation = Arc::clone(&old.ended_generation);
        self.seen_jti = old.seen_jti.clone();
    }
}

impl Sessions {
    /// Browser sessions are on when `encryption-key` is set.
    pub fn from_config(
        config: &Config,
        provider: Arc<keygate_auth::Provider>,
        redis: Option<Redis>,
    ) -> Result<Option<Self>, ConfigError> {
        if config.encryption_key.is_empty() {
            return Ok(None);
        }
        let sealer = CookieSealer::new(config.encryption_key.expose().as_bytes()).map_err(|e| {
            ConfigError::Invalid {
                key: "encryption-key",
                message: e.to_string(),
            }
        })?;
        let server_side = config.session_store == SessionStore::Redis;
        if server_side && redis.is_none() {
            return Err(ConfigError::Invalid {
                key: "session-store",
                message: "`redis` needs redis-url".into(),
            });
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
            opened: moka::sync::Cache::builder()
                .weigher(|_: &u64, v: &Arc<(Box<str>, SessionCookie)>| {
                    // The sealed value and about as much again for the state.
                    u32::try_from(v.0.len() * 2).unwrap_or(u32::MAX)
                })
                .max_capacity(OPENED_CACHE_BYTES)
                .time_to_idle(std::time::Duration::from_secs(300))
                .build(),
            opened_keys: foldhash::quality::RandomState::default(),
            refreshes: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            refreshing: Default::default(),
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(std::time::Duration::from_secs(MAX_SESSION_SECS))
                .build(),
            ended_generation: Arc::default(),
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

    /// The session cookie among a request's `Cookie` header values:
    /// `Ok(None)` without one, `Err(chunks)` when one is present but cannot
    /// be opened (tampered, truncated, old key, or sealed for the other
    /// session store).
    pub fn read(&self, cookies: &[&str]) -> Result<Option<(SessionCookie, usize)>, usize> {
        let Some((value, chunks)) = session::read_cookie(cookies, SESSION_COOKIE) else {
            return Ok(None);
        };
        // Found by its first bytes (a sealed cookie starts with its random
        // nonce) and its length, then compared whole: a forged cookie can at
        // most miss, and it is never cached.
        let key = {
            use std::hash::BuildHasher as _;
            let head = &value.as_bytes()[..value.len().min(64)];
            self.opened_keys.hash_one((head, value.len()))
        };
        if let Some(hit) = self.opened.get(&key)
            && *hit.0 == *value
        {
            return Ok(Some((hit.1.clone(), chunks)));
        }
        let opened = match self.server_side {
            false => self
                .sealer
                .open(&value, SESSION_COOKIE)
                .map(|state| SessionCookie::State(Arc::new(state))),
            true => self
                .sealer
                .open_json::<SessionRef>(&value, SESSION_REF_AAD)
                .map(|r| SessionCookie::Id(Secret::new(r.id))),
        };
        match opened {
            Ok(cookie) => {
                self.opened.insert(
                    key,
                    Arc::new((value.into_owned().into_boxed_str(), cookie.clone())),
                );
                Ok(Some((cookie, chunks)))
            }
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
    pub async fn load(
        &self,
        cookie: &SessionCookie,
    ) -> Result<Option<Arc<SessionState>>, SessionError> {
        let id = match cookie {
            SessionCookie::State(state) => return Ok(Some(Arc::clone(state))),
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
            self.sealer.open(&text, &key).ok().map(Arc::new)
        }))
    }

    /// Keeps a new or refreshed session: sealed into the cookie, or sealed
    /// into Redis under the session's id (a new id for a new session, whose
    /// cookie is then the sealed id). Returns the `Set-Cookie` values.
    pub async fn save(
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
}

pub(crate) fn store_unavailable() -> SessionError {
    SessionError::StoreUnavailable
}

/// Redis key of a server-side session: the SHA-256 of its id, so a dump of
/// Redis holds no usable session id.
pub(crate) fn session_key(id: &Secret) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.expose().as_bytes());
    format!("s:{}", keygate_core::encoding::hex(digest.as_ref()))
}

/// 32 random bytes, base64url.
pub fn new_session_id() -> Result<Secret, keygate_auth::session::SessionError> {
    keygate_auth::oauth::random_token()
        .map(Secret::new)
        .map_err(|_| keygate_auth::session::SessionError::Random)
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    now_ms() / 1000
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    keygate_core::unix_now_ms()
}
