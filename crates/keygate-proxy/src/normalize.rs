//! Phase 1, **normalize**: the request's framing (one `Host`, no
//! `TRACE`/`CONNECT`), its path normalized once, the client's headers
//! cleaned (hop-by-hop, untrusted forwarding, identity and underscore
//! headers), and its credential taken out of the headers, so no API key
//! ever reaches the upstream.

use crate::context::{Credential, DpopCredential, RequestCtx};
use crate::gateway::Gateway;
use crate::hygiene;
use crate::respond::{Refusal, Refused};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Version};
use hyper::body::Incoming;
use keygate_auth::dpop::DpopError;
use keygate_core::Reason;
use keygate_core::Secret;
use keygate_core::config::is_identity_header;
use keygate_core::normalize::{NormalizeOptions, normalize_path};

/// Phase 1 for a request that just arrived: checks its framing and method,
/// sets `ctx.path` and `ctx.query`, cleans its headers and takes out its
/// credential. Returns the credential and whether the request is a
/// websocket upgrade.
pub fn run(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: &mut Request<Incoming>,
) -> Result<(Credential, bool), Refused> {
    check_framing(req)?;
    check_method(&ctx.method)?;
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let (path, query) = normalize(gw, target)?;
    ctx.path = path;
    ctx.query = query;
    // Request hygiene, before keygate adds a single header of its own.
    let hop = hygiene::strip_client_hop_by_hop(&ctx.method, req.headers_mut());
    if !ctx.trusted {
        ctx.relayed = hygiene::strip_untrusted_forwarding(req.headers_mut());
    }
    strip_client_identity_headers(req.headers_mut());
    hygiene::strip_underscore_headers(
        req.headers_mut(),
        gw.config.underscores_in_headers,
        |name| hygiene::is_managed_header(name) || gw.is_configured_header(name),
    );
    let mut credential = take_credential(gw, req.headers_mut());
    if let Credential::Dpop(dpop) = &mut credential {
        dpop.url = ctx.client_url(gw.tls, req.headers(), req.uri().path());
    }
    Ok((credential, hop.websocket))
}

/// `TRACE` (and IIS's `TRACK`) would have the upstream echo the request
/// back, with the `Authorization` and identity headers keygate added: a
/// holder of a restricted API key could read the provider token it stands
/// for (cross-site tracing). `CONNECT` asks for a tunnel a reverse proxy
/// never opens. All three are refused with 405, in gateway and forward-auth
/// mode alike.
pub(crate) fn check_method(method: &Method) -> Result<(), Refused> {
    // Compared ignoring case, as the rules compare methods.
    let refused = ["TRACE", "TRACK", "CONNECT"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m));
    if refused {
        return Err(Refused {
            refusal: Refusal::MethodNotAllowed(format!("{method} is not passed through keygate")),
            reason: Reason::MethodRefused,
        });
    }
    Ok(())
}

fn bad_request(why: &'static str, reason: Reason) -> Refused {
    Refused {
        refusal: Refusal::BadRequest(why.into()),
        reason,
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`; an
/// absolute-form target (or HTTP/2's `:authority`) must name the host its
/// `Host` names (RFC 9113 §8.3.1). Anything else is the client's error,
/// answered 400 before any phase reads the request.
fn check_framing(req: &Request<Incoming>) -> Result<(), Refused> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(bad_request("more than one Host header", Reason::BadHost)),
        (host, None) => host,
    };
    match (host, req.uri().authority()) {
        (None, None) if req.version() == Version::HTTP_11 => Err(bad_request(
            "an HTTP/1.1 request needs a Host header",
            Reason::BadHost,
        )),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Err(bad_request(
                "the Host header and the request target name different hosts",
                Reason::BadHost,
            ))
        }
        _ => Ok(()),
    }
}

/// Phase 1: splits the request target, normalizes the path (once) and keeps
/// the query untouched.
pub fn normalize(gw: &Gateway, target: &str) -> Result<(String, Option<String>), Refused> {
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let opts = NormalizeOptions {
        merge_slashes: gw.config.merge_slashes,
        allow_encoded_percent: gw.config.allow_encoded_percent,
        allow_non_utf8: gw.config.allow_non_utf8_paths,
    };
    match normalize_path(raw_path, opts) {
        Ok(path) => Ok((path, query)),
        Err(e) => Err(Refused {
            refusal: Refusal::BadRequest(format!("invalid path: {e}")),
            reason: Reason::InvalidPath,
        }),
    }
}

/// Phase 1 (headers): removes every client-sent `X-Auth-*` header, in any
/// case and with `_` or `-`, so only keygate can set them.
pub fn strip_client_identity_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| is_identity_header(n.as_str())) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_identity_header(n.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Phase 1 (credential): takes the credential out of the headers. The key
/// header and any `Authorization` that carries a key are removed.
pub fn take_credential(gw: &Gateway, headers: &mut HeaderMap) -> Credential {
    // A DPoP proof is for keygate alone: never forwarded.
    let proof = take_dpop_proof(headers);
    let key_header = gw
        .api_keys
        .as_ref()
        .map(|k| k.header())
        .unwrap_or("x-api-key");
    let from_header = headers.remove(key_header);
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let authorization = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Credential::Unusable(
                "more than one Authorization header",
                Reason::AmbiguousCredential,
            );
        }
        (Some(v), None) => Some(v.to_str().map(str::to_owned)),
    };
    if let Some(value) = from_header {
        if authorization.is_some() {
            headers.remove(header::AUTHORIZATION);
            return Credential::Unusable(
                "send either an API key or an Authorization header, not both",
                Reason::AmbiguousCredential,
            );
        }
        return match value.to_str() {
            Ok(v) => Credential::ApiKey(Secret::new(v.trim())),
            Err(_) => Credential::Unusable("malformed API key", Reason::ApiKeyMalformed),
        };
    }
    let Some(value) = authorization else {
        return session_credential(gw, headers);
    };
    let Ok(value) = value else {
        headers.remove(header::AUTHORIZATION);
        return Credential::Unusable("token is malformed", Reason::TokenMalformed);
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value.as_str(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        if keygate_auth::apikey::has_key_prefix(rest) {
            headers.remove(header::AUTHORIZATION);
            return Credential::ApiKey(Secret::new(rest));
        }
        return Credential::Bearer(Secret::new(rest));
    }
    if scheme.eq_ignore_ascii_case("dpop") && !rest.is_empty() {
        return Credential::Dpop(Box::new(DpopCredential {
            token: Secret::new(rest),
            proof,
            url: String::new(),
        }));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let password = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|up| up.split_once(':').map(|(_, p)| p.to_owned()));
        if let Some(p) = password
            && keygate_auth::apikey::has_key_prefix(&p)
        {
            headers.remove(header::AUTHORIZATION);
            return Credential::ApiKey(Secret::new(p));
        }
    }
    Credential::Unusable(
        "the Authorization header must be `Bearer <token>` or `DPoP <token>`, or carry an API key",
        Reason::UnsupportedScheme,
    )
}

/// Removes the request's `DPoP` headers: the one proof, or why none is usable.
fn take_dpop_proof(headers: &mut HeaderMap) -> Result<String, DpopError> {
    let mut values = headers.get_all("dpop").iter();
    let proof = match (values.next(), values.next()) {
        (None, _) => Err(DpopError::Missing),
        (Some(_), Some(_)) => Err(DpopError::Multiple),
        (Some(v), None) => v
            .to_str()
            .map(|s| s.trim().to_owned())
            .map_err(|_| DpopError::Malformed),
    };
    if proof != Err(DpopError::Missing) {
        headers.remove("dpop");
    }
    proof
}

/// The session cookie, when browser sessions are on. A cookie that cannot
/// be opened (tampered, truncated, sealed with another key) is no session:
/// where a credential is needed it is refused as an ended session.
fn session_credential(gw: &Gateway, headers: &HeaderMap) -> Credential {
    match gw
        .sessions
        .as_ref()
        .map(|s| s.read(&crate::session::cookie_headers(headers)))
    {
        Some(Ok(Some((cookie, _)))) => Credential::Session(Box::new(cookie)),
        Some(Err(chunks)) => Credential::InvalidSession(chunks),
        _ => Credential::None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_identity_headers_in_every_spelling() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-subject", HeaderValue::from_static("admin"));
        h.insert("X-AUTH-ROLES", HeaderValue::from_static("admin"));
        h.insert("x_auth_email", HeaderValue::from_static("a@b"));
        h.insert("x-authz", HeaderValue::from_static("keep"));
        strip_client_identity_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-authz"));
    }
}
