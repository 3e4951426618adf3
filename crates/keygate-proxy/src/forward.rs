//! Phase 5, **forward**: the upstream request as keygate decided it —
//! keygate's cookies removed, `X-Forwarded-*` extended or replaced,
//! `X-Request-Id`, `headers:` and the identity's headers set — streamed
//! through [`crate::upstream`]. Forward-auth answers the same identity
//! headers instead ([`identity_headers`]).

use crate::context::RequestCtx;
use crate::gateway::Gateway;
use crate::hygiene;
use crate::respond::{Body, Refusal, Refused};
use crate::sites::Site;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use keygate_auth::token_exchange::ExchangeError;
use keygate_core::{Identity, Reason, Secret};
use std::borrow::Cow;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_AUTH_EXPIRESIN: HeaderName = HeaderName::from_static("x-auth-expiresin");

/// Phase 5: prepares the upstream request and streams it. The client's
/// hop-by-hop, forwarding and override headers are already gone (phase 1);
/// keygate's cookies are removed here, then keygate's headers are set.
pub async fn forward(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
    websocket: bool,
) -> Result<Response<Body>, Refused> {
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let site = gw.site(ctx);
    // The host the client asked for: `Host`, or HTTP/2's `:authority`.
    let original_host = req.headers_mut().remove(header::HOST).or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    *req.uri_mut() = site
        .upstream
        .uri_for(site.upstream_path(&ctx.path), ctx.query.as_deref())?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    headers.insert(header::HOST, site.upstream.host().clone());
    hygiene::strip_keygate_cookies(headers);
    forwarded_headers(gw, ctx, headers, original_host);
    // keygate's headers below, without growing the map one at a time.
    headers.reserve(16);
    headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    crate::trace::inject(gw, headers);
    for (name, value) in &site.static_headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(identity) = &ctx.identity {
        let exchanged = match site.token_exchange {
            Some(_) => Box::pin(upstream_token(site, identity)).await?,
            None => None,
        };
        identity_headers(gw, site, identity, exchanged.as_ref(), headers);
    }
    site.upstream
        .send(req, client_upgrade)
        .await
        .map_err(Refused::from)
}

/// `X-Forwarded-For/Proto/Host`: extended when the peer is a trusted proxy,
/// replaced otherwise, so clients cannot forge their address.
fn forwarded_headers(
    gw: &Gateway,
    ctx: &RequestCtx,
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
) {
    let trusted = ctx.trusted;
    let mut ip = [0u8; 64];
    let peer_ip = crate::context::ip_text(ctx.peer.ip(), &mut ip);
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) if trusted => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + peer_ip.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip);
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => HeaderValue::from_bytes(peer_ip).ok(),
    };
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if gw.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(host) = host
    {
        headers.insert(&X_FORWARDED_HOST, host);
    }
}

/// The token the upstream gets instead of the caller's, when its site has
/// `token-exchange`: one whose audience is just that upstream. A refusal is
/// a 403 and an outage a 503; the caller's own token is never forwarded in
/// its place.
pub async fn upstream_token(site: &Site, identity: &Identity) -> Result<Option<Secret>, Refused> {
    let Some(exchanger) = &site.token_exchange else {
        return Ok(None);
    };
    match exchanger.exchange(&identity.access_token).await {
        Ok(token) => Ok(Some(token)),
        Err(ExchangeError::Refused(_)) => Err(Refused::new(
            Refusal::Forbidden(format!(
                "the OpenID provider would not issue a token for this upstream (token exchange \
                 to audience `{}`); keygate's log has the provider's answer",
                exchanger.audience()
            )),
            Reason::TokenExchangeRefused,
        )),
        Err(_) => Err(Refused::new(
            Refusal::Unavailable(
                "the OpenID provider is unavailable for the token exchange; try again shortly"
                    .into(),
            ),
            Reason::ProviderUnavailable,
        )),
    }
}

/// The headers keygate sets for a verified identity: `Authorization`,
/// `X-Auth-*` and `add-claims`. Used by forwarding and forward-auth alike.
/// `exchanged`: the token for this upstream from [`upstream_token`], which
/// replaces the caller's in `Authorization` and `X-Auth-Token`.
/// All but `X-Auth-ExpiresIn` are built once per identity and reused while
/// the identity is cached (for the sites with the top-level headers; a site
/// with `add-claims` of its own builds its own each time).
pub fn identity_headers(
    gw: &Gateway,
    site: &Site,
    identity: &Identity,
    exchanged: Option<&Secret>,
    headers: &mut HeaderMap,
) {
    let prebuilt = match site.default_headers {
        true => identity.derived(|| build_identity_headers(gw, site, identity)),
        false => None,
    };
    match prebuilt {
        Some(prebuilt) => {
            // Room for all of them at once (and X-Auth-ExpiresIn), instead
            // of the map growing step by step.
            headers.reserve(prebuilt.len() + 1);
            for (name, value) in prebuilt {
                headers.insert(name.clone(), value.clone());
            }
        }
        None => {
            for (name, value) in build_identity_headers(gw, site, identity) {
                headers.insert(name, value);
            }
        }
    }
    if !gw.config.enable_authorization_header {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(token) = exchanged {
        if gw.config.enable_authorization_header
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        {
            headers.insert(header::AUTHORIZATION, v);
        }
        if gw.config.enable_token_header
            && let Ok(v) = HeaderValue::from_str(token.expose())
        {
            headers.insert(HeaderName::from_static("x-auth-token"), v);
        }
    }
    let now = keygate_core::unix_now();
    headers.insert(
        &X_AUTH_EXPIRESIN,
        HeaderValue::from(identity.expires_at.saturating_sub(now)),
    );
}

fn build_identity_headers(
    gw: &Gateway,
    site: &Site,
    identity: &Identity,
) -> Vec<(HeaderName, HeaderValue)> {
    let config = &gw.config;
    let mut out = Vec::with_capacity(12);
    if config.enable_authorization_header
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", identity.access_token.expose()))
    {
        out.push((header::AUTHORIZATION, v));
    }
    let mut put = |name: HeaderName, value: &str| {
        if let Some(v) = safe_header_value(value) {
            out.push((name, v));
        }
    };
    put(HeaderName::from_static("x-auth-subject"), &identity.subject);
    if let Some(u) = &identity.username {
        put(HeaderName::from_static("x-auth-userid"), u);
        put(HeaderName::from_static("x-auth-username"), u);
    }
    if let Some(e) = &identity.email {
        put(HeaderName::from_static("x-auth-email"), e);
    }
    put(
        HeaderName::from_static("x-auth-roles"),
        &identity.roles.join(","),
    );
    put(
        HeaderName::from_static("x-auth-groups"),
        &identity.groups.join(","),
    );
    put(
        HeaderName::from_static("x-auth-method"),
        identity.method.as_str(),
    );
    if let Some(k) = &identity.key_id {
        put(HeaderName::from_static("x-auth-key-id"), k);
    }
    // Only a token whose DPoP proof keygate checked gets this far bound.
    if let Some(jkt) = keygate_auth::dpop::bound_key(&identity.claims) {
        put(HeaderName::from_static("x-auth-dpop-jkt"), jkt);
    }
    if config.enable_token_header {
        put(
            HeaderName::from_static("x-auth-token"),
            identity.access_token.expose(),
        );
    }
    for (claim, name) in &site.claim_headers {
        let value = match identity.claims.get(claim) {
            Some(serde_json::Value::String(s)) => Cow::Borrowed(s.as_str()),
            Some(serde_json::Value::Array(items)) => Cow::Owned(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Cow::Owned(v.to_string())
            }
            _ => continue,
        };
        put(name.clone(), &value);
    }
    out
}

/// A claim value as a header value, or `None` when it holds control
/// characters (CR, LF, NUL, TAB, DEL…): such values are dropped, never written.
fn safe_header_value(value: &str) -> Option<HeaderValue> {
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        tracing::debug!("dropping an identity header whose value holds control characters");
        return None;
    }
    HeaderValue::from_bytes(value.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_headers() {
        assert!(safe_header_value("alice\r\nX-Admin: 1").is_none());
        assert!(safe_header_value("a\tb").is_none());
        assert!(safe_header_value("\0").is_none());
        assert!(safe_header_value("Zoë").is_some());
    }
}
