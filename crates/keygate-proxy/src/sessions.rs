//! Browser sessions: login with the authorization code flow (PKCE S256,
//! `state`, `nonce`) at `/oauth/authorize` → provider → `/oauth/callback`,
//! tokens sealed into http-only cookies, and `/oauth/logout`.
//!
//! The ID token is verified against `id-token-audience` (default
//! `client-id`) and the access token against `access-token-audience`: the two
//! are never conflated (seed 001), and each error names the token at fault.

use crate::gateway::{Gateway, GatewayError};
use crate::pipeline::{Refused, RequestCtx};
use crate::respond::{self, Body, Refusal};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_auth::grants::Grants;
use keygate_auth::login::{self, PendingLogin};
use keygate_auth::session::{self, CookieSealer, SessionState};
use keygate_core::Secret;
use keygate_core::config::{Config, SessionStore};
use keygate_store::Redis;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The session cookie's name (chunks are `kg_session-1`, …).
pub const SESSION_COOKIE: &str = "kg_session";
/// The short-lived cookie holding a login in progress.
pub const LOGIN_COOKIE: &str = "kg_login";
/// How long a login may take at the provider.
const LOGIN_TTL: u64 = 600;
/// The longest a session cookie lives (and a back-channel logout is remembered).
const MAX_SESSION_SECS: u64 = 30 * 24 * 3600;
/// The event a back-channel logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Browser-session settings and the cookie sealer.
pub struct Sessions {
    sealer: CookieSealer,
    secure: bool,
    /// Answer 401 instead of redirecting to login.
    pub no_redirects: bool,
    scopes: Vec<String>,
    id_audience: String,
    redirection_url: Option<String>,
    client_id: String,
    client_secret: Secret,
    leeway: u64,
    refresh: bool,
    grants: Grants,
    /// Refreshes in flight or just done, by the SHA-256 of the refresh token:
    /// concurrent requests of one session share one refresh.
    refreshes: moka::future::Cache<[u8; 32], Arc<Refreshed>>,
    /// Cookie sessions ended by back-channel logout (`sid:…` or `sub:…`),
    /// with the time of the logout (Unix ms), kept for the longest a session cookie
    /// can live. With Redis they are also kept there, for every replica.
    ended: moka::sync::Cache<String, u64>,
    /// The `jti`s of accepted back-channel logout tokens (hashed with the
    /// issuer), kept as long as such a token is accepted.
    seen_jti: moka::sync::Cache<String, ()>,
    /// `session-store: redis`: sessions live there, the cookie holds an id.
    server_side: bool,
    redis: Option<Redis>,
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

    fn redis_or_unavailable(&self) -> Result<&Redis, Refused> {
        self.redis.as_ref().ok_or_else(|| {
            refused(
                Refusal::Unavailable("the session store is unavailable".into()),
                "session_store_unavailable",
            )
        })
    }

    /// The session a cookie names: the cookie's own, or the one Redis keeps
    /// under its id. `Ok(None)` when Redis no longer has it (logged out,
    /// expired); 503 when Redis cannot be asked.
    pub async fn load(&self, cookie: &SessionCookie) -> Result<Option<SessionState>, Refused> {
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
    async fn save(
        &self,
        state: &SessionState,
        existing: Option<&SessionCookie>,
    ) -> Result<Vec<String>, Refused> {
        let now = now();
        let lifetime = state.session_expires_at.saturating_sub(now).max(1);
        let failed = |e: keygate_auth::session::SessionError| {
            refused(Refusal::Unavailable(e.to_string()), "session_failed")
        };
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
    async fn end(&self, cookie: &SessionCookie) -> Result<(), Refused> {
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
    async fn logged_out(&self, state: &SessionState) -> Result<bool, Refused> {
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
    async fn first_use_of_jti(&self, issuer: &str, jti: &str) -> bool {
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
    async fn end_by(&self, marker: &str, at_ms: u64) -> Result<(), Refused> {
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

fn store_unavailable() -> Refused {
    refused(
        Refusal::Unavailable("the session store is unavailable; try again shortly".into()),
        "session_store_unavailable",
    )
}

/// Redis key of a server-side session: the SHA-256 of its id, so a dump of
/// Redis holds no usable session id.
fn session_key(id: &Secret) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.expose().as_bytes());
    format!("s:{}", keygate_core::encoding::hex(digest.as_ref()))
}

/// 32 random bytes, base64url.
fn new_session_id() -> Result<Secret, keygate_auth::session::SessionError> {
    use aws_lc_rs::rand::SecureRandom as _;
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| keygate_auth::session::SessionError::Random)?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
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
    ctx: &mut RequestCtx,
) -> Result<Secret, Refused> {
    let now = now();
    let ended = |ctx: &mut RequestCtx, reason: &'static str| {
        ctx.set_cookies.extend(sessions.clear_headers(1));
        refused(Refusal::NoCredential, reason)
    };
    let Some(state) = sessions.load(cookie).await? else {
        return Err(ended(ctx, "session_ended"));
    };
    if sessions.logged_out(&state).await? {
        return Err(ended(ctx, "session_logged_out"));
    }
    if state.access_expires_at > now {
        return Ok(state.access_token.clone());
    }
    let Some(refresh_token) = state.refresh_token.clone().filter(|_| sessions.refresh) else {
        return Err(ended(ctx, "session_expired"));
    };
    if state.session_expires_at <= now {
        return Err(ended(ctx, "session_expired"));
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
            ctx.set_cookies.extend(cookies.iter().cloned());
            Ok(new_state.access_token.clone())
        }
        Err(e) => match &*e {
            RefreshError::Grant(e) if e.is_unavailable() => Err(refused(
                Refusal::Unavailable(
                    "the OpenID provider is unavailable; try again shortly".into(),
                ),
                "provider_unavailable",
            )),
            RefreshError::Grant(_) => Err(ended(ctx, "session_refresh_refused")),
            RefreshError::Store(r) => Err(Refused {
                refusal: r.refusal.clone(),
                reason: r.reason.clone(),
            }),
        },
    }
}

/// A refreshed session and the `Set-Cookie` values that carry it.
type Refreshed = (Arc<SessionState>, Vec<String>);

/// Why a session could not be refreshed.
#[derive(Debug)]
enum RefreshError {
    Grant(keygate_auth::grants::GrantError),
    Store(Refused),
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
                return Err(RefreshError::Store(refused(
                    Refusal::NoCredential,
                    "session_ended",
                )));
            }
        }
    }
    Err(RefreshError::Store(store_unavailable()))
}

/// The redirect that starts a login and comes back to `return_to`.
pub fn login_redirect(return_to: &str) -> Response<Body> {
    let target = format!("/oauth/authorize?return_to={}", encode_component(return_to));
    redirect(&target, &[])
}

fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
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

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn refused(refusal: Refusal, reason: &'static str) -> Refused {
    Refused {
        refusal,
        reason: Cow::Borrowed(reason),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode_component(v))
    })
}

fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or_default())
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// This gateway's callback URL: `redirection-url`, or built from the
/// request's host (forwarded host and proto only from trusted proxies).
fn redirect_uri(
    gw: &Gateway,
    sessions: &Sessions,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Option<String> {
    if let Some(url) = &sessions.redirection_url {
        return Some(url.clone());
    }
    let trusted = gw.trusted_peer(ctx.peer.ip());
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = if trusted {
        get("x-forwarded-host").or(get("host"))
    } else {
        get("host")
    }?;
    if host.is_empty() || host.contains(['/', '\\', '@', ' ']) {
        return None;
    }
    let proto = match (trusted, get("x-forwarded-proto")) {
        (true, Some(p)) if p == "https" || p == "http" => p,
        _ if gw.tls => "https",
        _ => "http",
    };
    Some(format!("{proto}://{host}/oauth/callback"))
}

/// The session settings, or 404 when browser sessions are off.
fn enabled(gw: &Gateway) -> Result<&Sessions, Refused> {
    gw.sessions
        .as_ref()
        .ok_or_else(|| Refused::from(Refusal::NotFound))
}

/// The provider's keys and metadata, or 503 while they are not loaded.
fn provider_keys(gw: &Gateway) -> Result<Arc<keygate_auth::provider::Keys>, Refused> {
    gw.verifier.provider().keys().ok_or_else(|| {
        refused(
            Refusal::Unavailable("the OpenID provider is unavailable".into()),
            "provider_unavailable",
        )
    })
}

/// `/oauth/authorize`: starts a login and sends the browser to the provider.
pub async fn authorize(
    gw: &Gateway,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let sessions = enabled(gw)?;
    let keys = provider_keys(gw)?;
    let endpoint = keys
        .metadata
        .authorization_endpoint
        .clone()
        .ok_or_else(|| {
            refused(
                Refusal::Unavailable("the provider has no authorization endpoint".into()),
                "provider_unavailable",
            )
        })?;
    let redirect_uri = redirect_uri(gw, sessions, ctx, req.headers()).ok_or_else(|| {
        refused(
            Refusal::BadRequest("cannot tell this gateway's address (Host)".into()),
            "bad_host",
        )
    })?;
    let return_to = query_param(ctx.query.as_deref(), "return_to").unwrap_or_else(|| "/".into());
    let start = login::start_login(
        &endpoint,
        &sessions.client_id,
        &redirect_uri,
        &sessions.scopes,
        &return_to,
    )
    .map_err(|e| refused(Refusal::Unavailable(e.to_string()), "login_failed"))?;
    let sealed = sessions
        .sealer
        .seal_json(&start.pending, LOGIN_COOKIE)
        .map_err(|e| refused(Refusal::Unavailable(e.to_string()), "login_failed"))?;
    let cookies = session::set_cookie_headers(LOGIN_COOKIE, &sealed, LOGIN_TTL, sessions.secure, 0);
    Ok(redirect(&start.authorization_url, &cookies))
}

/// `/oauth/callback`: checks `state`, exchanges the code, verifies the ID
/// token and the access token (each against its own audience), and sets the
/// session cookie.
pub async fn callback(
    gw: &Gateway,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let sessions = enabled(gw)?;
    let query = ctx.query.as_deref();
    if let Some(error) = query_param(query, "error") {
        let safe: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return Err(refused(
            Refusal::BadCredential(format!("the provider refused the login: {safe}")),
            "login_refused",
        ));
    }
    let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state"))
    else {
        return Err(refused(
            Refusal::BadRequest("the callback needs `code` and `state`".into()),
            "bad_callback",
        ));
    };
    let cookies: Vec<&str> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let pending: PendingLogin = session::read_cookie(&cookies, LOGIN_COOKIE)
        .and_then(|(v, _)| sessions.sealer.open_json(&v, LOGIN_COOKIE).ok())
        .filter(|p: &PendingLogin| p.created_at + LOGIN_TTL > now())
        .ok_or_else(|| {
            refused(
                Refusal::BadRequest("no login in progress (or it expired): start again".into()),
                "no_pending_login",
            )
        })?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(pending.state.as_bytes(), state.as_bytes())
        .is_err()
    {
        return Err(refused(
            Refusal::BadRequest("the login's state does not match".into()),
            "state_mismatch",
        ));
    }
    let keys = provider_keys(gw)?;
    let token_endpoint = keys.metadata.token_endpoint.clone().unwrap_or_default();
    let redirect_uri = redirect_uri(gw, sessions, ctx, req.headers()).ok_or_else(|| {
        refused(
            Refusal::BadRequest("cannot tell this gateway's address (Host)".into()),
            "bad_host",
        )
    })?;
    let tokens = login::exchange_code(
        gw.verifier.provider().http(),
        &token_endpoint,
        &sessions.client_id,
        &sessions.client_secret,
        &code,
        &redirect_uri,
        &pending.pkce_verifier,
    )
    .await
    .map_err(|e| match e.is_unavailable() {
        true => refused(Refusal::Unavailable(e.to_string()), "provider_unavailable"),
        false => refused(Refusal::BadCredential(e.to_string()), "code_rejected"),
    })?;
    let id_claims = login::verify_id_token(
        tokens.id_token.expose(),
        &keys,
        &sessions.id_audience,
        &pending.nonce,
        sessions.leeway,
    )
    .map_err(|e| refused(Refusal::BadCredential(e.to_string()), "id_token_rejected"))?;
    let identity = gw
        .verifier
        .verify(tokens.access_token.expose())
        .await
        .map_err(|e| {
            refused(
                Refusal::BadCredential(format!("access token rejected: {e}")),
                "access_token_rejected",
            )
        })?;
    let now = now();
    let session_lifetime = tokens
        .refresh_expires_in
        .or(tokens.expires_in)
        .unwrap_or(300);
    let state = SessionState {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        id_token: Some(tokens.id_token),
        subject: identity.subject.clone(),
        sid: id_claims
            .get("sid")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        access_expires_at: identity.expires_at,
        session_expires_at: now + session_lifetime,
        created_at_ms: now_ms(),
        id: new_session_id()
            .map_err(|e| refused(Refusal::Unavailable(e.to_string()), "session_failed"))?
            .expose()
            .to_owned(),
    };
    let mut set = sessions.save(&state, None).await?;
    set.extend(session::clear_cookie_headers(
        LOGIN_COOKIE,
        0,
        sessions.secure,
    ));
    let return_to = login::safe_return_to(&pending.return_to);
    Ok(redirect(&return_to, &set))
}

/// `/oauth/logout`: clears the session cookies, revokes the refresh token at
/// the provider, and sends the browser to the provider's end-session endpoint.
pub async fn logout(
    gw: &Gateway,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let sessions = enabled(gw)?;
    let (cookie, chunks) = match sessions.read(req.headers()) {
        Ok(Some((cookie, chunks))) => (Some(cookie), chunks),
        Ok(None) => (None, 0),
        Err(chunks) => (None, chunks),
    };
    let clear = sessions.clear_headers(chunks.max(1));
    // Logging out always clears the cookie, even when Redis cannot be asked
    // for the session (its refresh token then lives until it expires).
    let state = match &cookie {
        Some(c) => sessions.load(c).await.unwrap_or(None),
        None => None,
    };
    if let Some(c) = &cookie
        && let Err(refused) = sessions.end(c).await
    {
        // The cookie is cleared, but another copy of it could still open
        // the session on another replica: say so rather than pretend.
        tracing::warn!("logout could not be recorded in the session store");
        let mut resp = refused.refusal.into_response();
        for value in clear {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        return Ok(resp);
    }
    let keys = gw.verifier.provider().keys();
    if let Some(refresh) = state.as_ref().and_then(|s| s.refresh_token.clone()) {
        let grants = Grants::new(Arc::clone(gw.verifier.provider()));
        if let Err(e) = grants
            .revoke(
                &sessions.client_id,
                &sessions.client_secret,
                &refresh,
                "refresh_token",
            )
            .await
        {
            tracing::warn!(error = %e, "could not revoke the session's refresh token at the provider");
        }
    }
    let end_session = keys.and_then(|k| k.metadata.end_session_endpoint.clone());
    let target = match (
        end_session,
        state.as_ref().and_then(|s| s.id_token.as_ref()),
    ) {
        (Some(end), Some(id_token)) => {
            let back = redirect_uri(gw, sessions, ctx, req.headers())
                .map(|cb| cb.trim_end_matches("/oauth/callback").to_owned() + "/")
                .unwrap_or_default();
            let sep = if end.contains('?') { '&' } else { '?' };
            format!(
                "{end}{sep}id_token_hint={}&client_id={}&post_logout_redirect_uri={}",
                encode_component(id_token.expose()),
                encode_component(&sessions.client_id),
                encode_component(&back)
            )
        }
        _ => "/".to_owned(),
    };
    Ok(redirect(&target, &clear))
}

/// How old (by `iat`) a logout token may be. The `jti` replay cache keeps
/// every accepted token at least this long (plus the leeway), so a captured
/// token cannot be replayed to log a user out again.
const LOGOUT_TOKEN_MAX_AGE: u64 = 10 * 60;

/// `POST /oauth/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0,
/// §2.5–2.8): the provider posts a signed logout token
/// (`application/x-www-form-urlencoded`, `logout_token=…`). It is validated
/// as §2.6 requires — signature by the provider's key with an allowed
/// algorithm (never `none`, HMAC or an encrypted token), `iss`, `aud`,
/// `iat` and `exp` as for an ID token, `jti` present and not seen before
/// (shared through Redis when configured), `sub` or `sid` present, the
/// back-channel logout event as a JSON object, no `nonce`, and an explicit
/// `typ` header, when present, of `logout+jwt` — and the sessions it names
/// (by `sid`, or every session of `sub` that began before the token was
/// issued) end at once. 200 with `Cache-Control: no-store` on success, 400
/// with a JSON error otherwise (§2.8).
pub async fn backchannel_logout(
    gw: &Gateway,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let sessions = enabled(gw)?;
    let bad = |why: &str| {
        refused(
            Refusal::BadRequest(format!("invalid logout token: {why}")),
            "bad_logout_token",
        )
    };
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(refused(
            Refusal::BadRequest(
                "a back-channel logout request must be application/x-www-form-urlencoded".into(),
            ),
            "bad_logout_request",
        ));
    }
    use http_body_util::BodyExt as _;
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| bad("the body is too large or unreadable"))?
        .to_bytes();
    let form = String::from_utf8_lossy(&body);
    let token = query_param(Some(&form), "logout_token").ok_or_else(|| bad("no logout_token"))?;
    let keys = provider_keys(gw)?;
    let header = jsonwebtoken::decode_header(&token).map_err(|_| bad("malformed or encrypted"))?;
    let allowed: Vec<jsonwebtoken::Algorithm> = gw
        .config
        .signing_algorithms
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    if !allowed.contains(&header.alg) {
        return Err(bad("algorithm"));
    }
    if let Some(typ) = &header.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "logout+jwt" && typ != "jwt" {
            return Err(bad("typ is not logout+jwt"));
        }
    }
    let key = keys
        .by_kid
        .get(header.kid.as_deref().unwrap_or(""))
        .ok_or_else(|| bad("unknown key"))?;
    if key.alg.is_some_and(|a| a != header.alg) {
        return Err(bad("algorithm"));
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.set_issuer(&[keys.metadata.issuer.as_str()]);
    validation.set_audience(&[sessions.id_audience.as_str()]);
    validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
    validation.validate_exp = true;
    validation.leeway = sessions.leeway;
    let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        &token,
        &key.key,
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => bad("expired"),
        jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => bad("no exp"),
            "iat" => bad("no iat"),
            _ => bad("a required claim is missing"),
        },
        _ => bad("signature, issuer or audience"),
    })?
    .claims;
    let now = now();
    let iat = claims
        .get("iat")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("iat is not a number"))?;
    if iat > now + sessions.leeway {
        return Err(bad("issued in the future"));
    }
    if iat + LOGOUT_TOKEN_MAX_AGE + sessions.leeway < now {
        return Err(bad("issued too long ago"));
    }
    let jti = claims
        .get("jti")
        .and_then(|v| v.as_str())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| bad("no jti"))?;
    let event = claims
        .get("events")
        .and_then(|e| e.get(BACKCHANNEL_EVENT))
        .ok_or_else(|| bad("no back-channel logout event"))?;
    if !event.is_object() {
        return Err(bad("the back-channel logout event must be a JSON object"));
    }
    if claims.contains_key("nonce") {
        return Err(bad("a logout token must not carry a nonce"));
    }
    let sid = claims.get("sid").and_then(|v| v.as_str());
    let sub = claims.get("sub").and_then(|v| v.as_str());
    let marker = match (sid, sub) {
        (Some(sid), _) => format!("sid:{sid}"),
        (None, Some(sub)) => format!("sub:{sub}"),
        (None, None) => return Err(bad("neither sid nor sub")),
    };
    if !sessions.first_use_of_jti(&keys.metadata.issuer, jti).await {
        return Err(bad("replayed (this jti was seen before)"));
    }
    // `iat` is the issue time rounded down: a logout by `sub` ends the
    // sessions that began up to a second after it, never one that began
    // before it and survived.
    let at_ms = iat.saturating_add(1).saturating_mul(1000).min(now_ms());
    sessions.end_by(&marker, at_ms).await.map_err(|_| {
        // §2.8: a logout that failed is answered 400, too.
        refused(
            Refusal::BadRequest(
                "the logout could not be recorded; the session store is unavailable".into(),
            ),
            "logout_failed",
        )
    })?;
    let mut resp = respond::empty(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
