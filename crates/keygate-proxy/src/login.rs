//! The login endpoints of browser sessions: `/oauth/authorize` → provider
//! → `/oauth/callback` (the authorization code flow with PKCE S256,
//! `state` and `nonce`), `/oauth/logout` and the back-channel
//! `/oauth/backchannel-logout`. Sessions themselves are
//! [`crate::session`]'s.
//!
//! The ID token is verified against `id-token-audience` (default
//! `client-id`) and the access token against `access-token-audience`: the two
//! are never conflated (seed 001), and each error names the token at fault.

use crate::context::RequestCtx;
use crate::gateway::Gateway;
use crate::respond::{self, Body, Refusal, Refused};
use crate::session::{
    LOGIN_COOKIE, LOGOUT_TOKEN_MAX_AGE, Sessions, new_session_id, now, now_ms, redirect,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_auth::login::{self, PendingLogin};
use keygate_auth::logout::LogoutOf;
use keygate_auth::session::{self, SessionState};
use keygate_core::Reason;
use std::sync::Arc;

/// How long a login may take at the provider.
const LOGIN_TTL: u64 = 600;

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| keygate_core::encoding::form_decode(v))
    })
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
    let host = ctx.client_host(headers)?;
    if host.is_empty() || host.contains(['/', '\\', '@', ' ']) {
        return None;
    }
    let proto = ctx.client_scheme(gw.tls, headers);
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
        Refused::new(
            Refusal::Unavailable("the OpenID provider is unavailable".into()),
            Reason::ProviderUnavailable,
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
            Refused::new(
                Refusal::Unavailable("the provider has no authorization endpoint".into()),
                Reason::ProviderUnavailable,
            )
        })?;
    let redirect_uri = redirect_uri(gw, sessions, ctx, req.headers()).ok_or_else(|| {
        Refused::new(
            Refusal::BadRequest("cannot tell this gateway's address (Host)".into()),
            Reason::BadHost,
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
    .map_err(|e| Refused::new(Refusal::Unavailable(e.to_string()), Reason::LoginFailed))?;
    let sealed = sessions
        .sealer
        .seal_json(&start.pending, LOGIN_COOKIE)
        .map_err(|e| Refused::new(Refusal::Unavailable(e.to_string()), Reason::LoginFailed))?;
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
        return Err(Refused::new(
            Refusal::BadCredential(format!("the provider refused the login: {safe}")),
            Reason::LoginRefused,
        ));
    }
    let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state"))
    else {
        return Err(Refused::new(
            Refusal::BadRequest("the callback needs `code` and `state`".into()),
            Reason::BadCallback,
        ));
    };
    let cookies = crate::session::cookie_headers(req.headers());
    let pending: PendingLogin = session::read_cookie(&cookies, LOGIN_COOKIE)
        .and_then(|(v, _)| sessions.sealer.open_json(&v, LOGIN_COOKIE).ok())
        .filter(|p: &PendingLogin| p.created_at + LOGIN_TTL > now())
        .ok_or_else(|| {
            Refused::new(
                Refusal::BadRequest("no login in progress (or it expired): start again".into()),
                Reason::NoPendingLogin,
            )
        })?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(pending.state.as_bytes(), state.as_bytes())
        .is_err()
    {
        return Err(Refused::new(
            Refusal::BadRequest("the login's state does not match".into()),
            Reason::StateMismatch,
        ));
    }
    let keys = provider_keys(gw)?;
    let token_endpoint = keys.metadata.token_endpoint.clone().unwrap_or_default();
    let redirect_uri = redirect_uri(gw, sessions, ctx, req.headers()).ok_or_else(|| {
        Refused::new(
            Refusal::BadRequest("cannot tell this gateway's address (Host)".into()),
            Reason::BadHost,
        )
    })?;
    let tokens = login::exchange_code(
        gw.verifier.provider(),
        &token_endpoint,
        &sessions.client_id,
        &sessions.client_secret,
        &code,
        &redirect_uri,
        &pending.pkce_verifier,
    )
    .await
    .map_err(|e| match e.is_unavailable() {
        true => Refused::new(
            Refusal::Unavailable(e.to_string()),
            Reason::ProviderUnavailable,
        ),
        false => Refused::new(Refusal::BadCredential(e.to_string()), Reason::CodeRejected),
    })?;
    let id_claims = login::verify_id_token(
        tokens.id_token.expose(),
        &keys,
        gw.verifier.algorithms(),
        &sessions.id_audience,
        &pending.nonce,
        sessions.leeway,
    )
    .map_err(|e| {
        Refused::new(
            Refusal::BadCredential(e.to_string()),
            Reason::IdTokenRejected,
        )
    })?;
    let identity = gw
        .verifier
        .verify(tokens.access_token.expose())
        .await
        .map_err(|e| {
            Refused::new(
                Refusal::BadCredential(format!("access token rejected: {e}")),
                Reason::AccessTokenRejected,
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
            .map_err(|e| Refused::new(Refusal::Unavailable(e.to_string()), Reason::SessionFailed))?
            .expose()
            .to_owned(),
        logout_checked: Default::default(),
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
    let (cookie, chunks) = match sessions.read(&crate::session::cookie_headers(req.headers())) {
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
        let mut resp = Refused::from(refused).refusal.into_response();
        for value in clear {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        return Ok(resp);
    }
    let keys = gw.verifier.provider().keys();
    if let Some(refresh) = state.as_ref().and_then(|s| s.refresh_token.clone())
        && let Err(e) = sessions
            .grants
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
                keygate_core::encoding::encode_path(id_token.expose()),
                keygate_core::encoding::encode_path(&sessions.client_id),
                keygate_core::encoding::encode_path(&back)
            )
        }
        _ => "/".to_owned(),
    };
    Ok(redirect(&target, &clear))
}

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
        Refused::new(
            Refusal::BadRequest(format!("invalid logout token: {why}")),
            Reason::BadLogoutToken,
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
        return Err(Refused::new(
            Refusal::BadRequest(
                "a back-channel logout request must be application/x-www-form-urlencoded".into(),
            ),
            Reason::BadLogoutRequest,
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
    let verified = keygate_auth::logout::verify_logout_token(
        &token,
        &keys,
        gw.verifier.algorithms(),
        &sessions.id_audience,
        sessions.leeway,
        LOGOUT_TOKEN_MAX_AGE,
        now(),
    )
    .map_err(|e| bad(e.0))?;
    let (iat, jti) = (verified.issued_at, verified.jti.as_str());
    let marker = match &verified.of {
        LogoutOf::Session(sid) => format!("sid:{sid}"),
        LogoutOf::User(sub) => format!("sub:{sub}"),
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
        Refused::new(
            Refusal::BadRequest(
                "the logout could not be recorded; the session store is unavailable".into(),
            ),
            Reason::LogoutFailed,
        )
    })?;
    let mut resp = respond::empty(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
