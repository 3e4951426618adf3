//! The request pipeline: one [`RequestCtx`] per request, walked through the
//! phases normalize → route → authenticate → authorize → forward → log.
//! Forward-auth ([`crate::forward_auth`]) runs the same phase functions on the
//! original method and URI that the front proxy reports.

use crate::gateway::Gateway;
use crate::hygiene;
use crate::ops;
use crate::respond::{Body, Refusal};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use keygate_auth::AuthError;
use keygate_core::Identity;
use keygate_core::config::is_identity_header;
use keygate_core::normalize::{NormalizeOptions, normalize_path};
use keygate_core::rules::Route;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the log phase reports about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded (or, in forward-auth, approved) with a verified identity.
    Allow,
    /// Forwarded without a credential (white-listed, or unmatched without default deny).
    Public,
    /// Refused: 401 or 403.
    Deny,
    /// Refused as the client's error: a malformed or ambiguous request (400).
    Invalid,
    /// Refused: keygate/provider/upstream trouble (5xx).
    Error,
    /// One of keygate's own endpoints (`/oauth/health`, …).
    Internal,
}

impl Decision {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Public => "public",
            Decision::Deny => "deny",
            Decision::Invalid => "invalid",
            Decision::Error => "error",
            Decision::Internal => "internal",
        }
    }
}

/// The per-request context every phase reads and writes.
pub struct RequestCtx {
    /// `X-Request-Id`: the client's when it sent a sane one, else generated.
    pub request_id: HeaderValue,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The method being authorized (in forward-auth: the original one).
    pub method: Method,
    /// The normalized path (set by the normalize phase).
    pub path: String,
    /// The query string, passed through untouched; never used for matching.
    pub query: Option<String>,
    /// The matched rule's `uri`, or `unmatched`.
    pub route: String,
    /// The verified caller, if any.
    pub identity: Option<Arc<Identity>>,
    /// Outcome for the log line.
    pub decision: Decision,
    /// Short reason for the log line and metrics (`ok`, `expired`, …).
    pub reason: Cow<'static, str>,
    /// When the request arrived.
    pub started: Instant,
    /// A browser navigation (GET/HEAD accepting HTML, not XHR/fetch): without
    /// a credential it is sent to login instead of getting a 401.
    pub browser: bool,
    /// `Set-Cookie` values to add to the response (a refreshed session).
    pub set_cookies: Vec<String>,
    /// An API key's rate-limit and quota headers, for the response.
    pub limit_headers: keygate_keys::LimitHeaders,
}

impl RequestCtx {
    /// Starts a context for a request that just arrived.
    pub fn new(headers: &HeaderMap, method: Method, peer: SocketAddr) -> Self {
        let method_is_read = matches!(method, Method::GET | Method::HEAD);
        RequestCtx {
            request_id: request_id(headers),
            peer,
            method,
            path: String::new(),
            query: None,
            route: String::new(),
            identity: None,
            decision: Decision::Error,
            reason: Cow::Borrowed("ok"),
            started: Instant::now(),
            browser: method_is_read && is_browser_navigation(headers),
            set_cookies: Vec::new(),
            limit_headers: Vec::new(),
        }
    }

    fn refused(&mut self, refusal: &Refusal, reason: Cow<'static, str>) {
        self.decision = match refusal {
            Refusal::NoCredential
            | Refusal::BadCredential(_)
            | Refusal::Forbidden(_)
            | Refusal::MethodNotAllowed(_)
            | Refusal::TooManyRequests(..) => Decision::Deny,
            Refusal::BadRequest(_) | Refusal::NotFound => Decision::Invalid,
            _ => Decision::Error,
        };
        self.reason = reason;
    }
}

/// `Accept` names HTML and no `X-Requested-With`: a page load, not an API call.
fn is_browser_navigation(headers: &HeaderMap) -> bool {
    !headers.contains_key("x-requested-with")
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"))
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id")
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("-"))
}

pub use crate::respond::Refused;

/// Serves one request from the main listener.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let mut ctx = RequestCtx::new(req.headers(), req.method().clone(), peer);
    let mut resp = match run(&gw, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(Refused { refusal, reason }) => {
            ctx.refused(&refusal, reason);
            let to_login = matches!(refusal, Refusal::NoCredential)
                && ctx.browser
                && gw.sessions.as_ref().is_some_and(|s| !s.no_redirects);
            if to_login {
                let mut return_to = ctx.path.clone();
                if let Some(q) = &ctx.query {
                    return_to.push('?');
                    return_to.push_str(q);
                }
                crate::sessions::login_redirect(&return_to)
            } else {
                refusal.into_response()
            }
        }
    };
    resp.headers_mut()
        .insert("x-request-id", ctx.request_id.clone());
    for cookie in &ctx.set_cookies {
        if let Ok(v) = HeaderValue::from_str(cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    for (name, value) in ctx.limit_headers.drain(..) {
        resp.headers_mut()
            .insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    log(&ctx, resp.status());
    resp
}

async fn run(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    check_framing(&req)?;
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
    if !gw.trusted_peer(ctx.peer.ip()) {
        hygiene::strip_untrusted_forwarding(req.headers_mut());
    }
    strip_client_identity_headers(req.headers_mut());
    hygiene::strip_underscore_headers(
        req.headers_mut(),
        gw.config.underscores_in_headers,
        |name| hygiene::is_managed_header(name) || gw.is_configured_header(name),
    );
    let credential = take_credential(gw, req.headers_mut());
    csrf_check(gw, ctx, &credential, req.headers())?;
    if ctx.path.starts_with("/oauth/") {
        // keygate's own endpoints forward nothing; forward-auth reads the
        // override headers the front proxy will pass on.
        ctx.decision = Decision::Internal;
        ctx.route = "/oauth".into();
        return ops::serve(gw, ctx, req, credential).await;
    }
    let overrides = hygiene::take_overrides(req.headers_mut(), &gw.override_headers)
        .map_err(|hygiene::BadOverride(why)| bad_request(why, "bad_override_header"))?;
    let identity = route_and_check(gw, ctx, &credential, &overrides).await?;
    ctx.decision = if identity.is_some() {
        Decision::Allow
    } else {
        Decision::Public
    };
    ctx.identity = identity;
    forward(gw, ctx, req, hop.websocket).await
}

/// Phases 2–4 for `ctx`'s method and path, and, when an override header
/// that is let through names another method or URL, for that one too: the
/// request must be allowed as the upstream will read it.
pub(crate) async fn route_and_check(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    credential: &Credential,
    overrides: &hygiene::Overrides,
) -> Result<Option<Arc<Identity>>, Refused> {
    let route = gw.rules.route(ctx.method.as_str(), &ctx.path);
    ctx.route = route.label().to_owned();
    let overridden = match (&overrides.method, &overrides.target) {
        (None, None) => None,
        (method, target) => {
            let path = match target {
                Some(t) => normalize(gw, t)?.0,
                None => ctx.path.clone(),
            };
            let method = method.clone().unwrap_or_else(|| ctx.method.clone());
            Some((method, path))
        }
    };
    let other = overridden
        .as_ref()
        .map(|(m, p)| gw.rules.route(m.as_str(), p));
    let needs = gw.rules.needs_credential(&route)
        || other.as_ref().is_some_and(|r| gw.rules.needs_credential(r));
    let identity = match needs {
        true => Some(verify_credential(gw, credential, ctx).await?),
        false => None,
    };
    authorize(gw, &route, identity.as_deref())?;
    if let Some(other) = &other {
        authorize(gw, other, identity.as_deref())?;
    }
    Ok(identity)
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
            reason: Cow::Borrowed("method_refused"),
        });
    }
    Ok(())
}

fn bad_request(why: &'static str, reason: &'static str) -> Refused {
    Refused {
        refusal: Refusal::BadRequest(why.into()),
        reason: Cow::Borrowed(reason),
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`; an
/// absolute-form target (or HTTP/2's `:authority`) must name the host its
/// `Host` names (RFC 9113 §8.3.1). Anything else is the client's error,
/// answered 400 before any phase reads the request.
fn check_framing(req: &Request<Incoming>) -> Result<(), Refused> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(bad_request("more than one Host header", "bad_host")),
        (host, None) => host,
    };
    match (host, req.uri().authority()) {
        (None, None) if req.version() == Version::HTTP_11 => Err(bad_request(
            "an HTTP/1.1 request needs a Host header",
            "bad_host",
        )),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Err(bad_request(
                "the Host header and the request target name different hosts",
                "bad_host",
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
            reason: Cow::Borrowed("invalid_path"),
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

/// The credential a request presents, taken out of its headers in phase 1
/// (API keys are removed from the request there, so no key ever reaches
/// the upstream).
pub enum Credential {
    /// Nothing presented.
    None,
    /// `Authorization: Bearer <JWT>`.
    Bearer(String),
    /// An API key, from the key header, `Bearer kg…` or Basic's password.
    ApiKey(String),
    /// An `Authorization` header keygate cannot use; the text says why.
    Unusable(&'static str, &'static str),
    /// A browser session from the session cookie.
    Session(Box<crate::sessions::SessionCookie>),
}

/// Phase 1 (credential): takes the credential out of the headers. The key
/// header and any `Authorization` that carries a key are removed.
pub fn take_credential(gw: &Gateway, headers: &mut HeaderMap) -> Credential {
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
                "ambiguous_credential",
            );
        }
        (Some(v), None) => Some(v.to_str().map(str::to_owned)),
    };
    if let Some(value) = from_header {
        if authorization.is_some() {
            headers.remove(header::AUTHORIZATION);
            return Credential::Unusable(
                "send either an API key or an Authorization header, not both",
                "ambiguous_credential",
            );
        }
        return match value.to_str() {
            Ok(v) => Credential::ApiKey(v.trim().to_owned()),
            Err(_) => Credential::Unusable("malformed API key", "api_key_malformed"),
        };
    }
    let Some(value) = authorization else {
        return session_credential(gw, headers);
    };
    let Ok(value) = value else {
        headers.remove(header::AUTHORIZATION);
        return Credential::Unusable("token is malformed", "token_malformed");
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value.as_str(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        if keygate_auth::apikey::has_key_prefix(rest) {
            headers.remove(header::AUTHORIZATION);
            return Credential::ApiKey(rest.to_owned());
        }
        return Credential::Bearer(rest.to_owned());
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
            return Credential::ApiKey(p);
        }
    }
    Credential::Unusable(
        "the Authorization header must be `Bearer <token>`, or carry an API key",
        "unsupported_scheme",
    )
}

/// CSRF: a state-changing request authenticated by the session cookie must
/// come from this gateway's own pages — its `Origin` must name this host
/// (the `Host` the browser used). Bearer tokens and API keys are not sent
/// by browsers on their own, so they need no such check.
pub(crate) fn csrf_check(
    gw: &Gateway,
    ctx: &RequestCtx,
    credential: &Credential,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    if !matches!(credential, Credential::Session(_))
        || matches!(ctx.method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return Ok(());
    }
    let trusted = gw.trusted_peer(ctx.peer.ip());
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = if trusted {
        get("x-forwarded-host").or(get("host"))
    } else {
        get("host")
    };
    let origin_host = get("origin")
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(Refused {
            refusal: Refusal::Forbidden(
                "cross-site request refused: a cookie-authenticated request that changes state must send this site's Origin"
                    .into(),
            ),
            reason: Cow::Borrowed("csrf"),
        }),
    }
}

/// The session cookie, when browser sessions are on. A cookie that cannot
/// be opened (tampered, truncated, sealed with another key) counts as none.
fn session_credential(gw: &Gateway, headers: &HeaderMap) -> Credential {
    match gw.sessions.as_ref().map(|s| s.read(headers)) {
        Some(Ok(Some((cookie, _)))) => Credential::Session(Box::new(cookie)),
        _ => Credential::None,
    }
}

/// Phase 3: verifies the credential when the route needs one.
pub async fn authenticate(
    gw: &Gateway,
    route: &Route<'_>,
    credential: &Credential,
    ctx: &mut RequestCtx,
) -> Result<Option<Arc<Identity>>, Refused> {
    if !gw.rules.needs_credential(route) {
        return Ok(None);
    }
    verify_credential(gw, credential, ctx).await.map(Some)
}

/// Verifies a credential: a bearer JWT, or an API key exchanged for the
/// provider token it stands for.
pub async fn verify_credential(
    gw: &Gateway,
    credential: &Credential,
    ctx: &mut RequestCtx,
) -> Result<Arc<Identity>, Refused> {
    match credential {
        Credential::None => Err(Refused {
            refusal: Refusal::NoCredential,
            reason: Cow::Borrowed("no_credential"),
        }),
        Credential::Unusable(why, reason) => Err(Refused {
            refusal: Refusal::BadCredential((*why).into()),
            reason: Cow::Borrowed(reason),
        }),
        Credential::Bearer(token) => gw
            .verifier
            .verify(token)
            .await
            .map_err(|e| auth_refusal(&e)),
        Credential::Session(cookie) => {
            let Some(sessions) = gw.sessions.as_ref() else {
                return Err(Refused {
                    refusal: Refusal::NoCredential,
                    reason: Cow::Borrowed("no_credential"),
                });
            };
            let access_token = crate::sessions::current_access_token(sessions, cookie, ctx).await?;
            let verified = gw
                .verifier
                .verify(access_token.expose())
                .await
                .map_err(|e| auth_refusal(&e))?;
            Ok(Arc::new(
                verified.reissued(keygate_core::AuthMethod::Session, None),
            ))
        }
        Credential::ApiKey(key) => {
            let Some(keys) = &gw.api_keys else {
                return Err(Refused {
                    refusal: Refusal::BadCredential(
                        "API keys are not enabled on this gateway".into(),
                    ),
                    reason: Cow::Borrowed("api_keys_disabled"),
                });
            };
            keys.authenticate(
                key,
                ctx.method.as_str(),
                &ctx.path,
                ctx.peer.ip(),
                &gw.verifier,
                &mut ctx.limit_headers,
            )
            .await
            .map_err(Refused::from)
        }
    }
}

fn auth_refusal(e: &AuthError) -> Refused {
    let refusal = if e.is_unavailable() {
        Refusal::Unavailable("the OpenID provider is unavailable; try again shortly".into())
    } else {
        Refusal::BadCredential(e.to_string())
    };
    Refused {
        refusal,
        reason: Cow::Borrowed(e.reason()),
    }
}

/// Phase 4: evaluates the rule (and `match-claims`) for the identity.
pub fn authorize(
    gw: &Gateway,
    route: &Route<'_>,
    identity: Option<&Identity>,
) -> Result<(), Refused> {
    let Some(identity) = identity else {
        return Ok(());
    };
    gw.rules
        .authorize(route, identity)
        .map_err(|denied| Refused {
            refusal: Refusal::Forbidden(denied.reason),
            reason: Cow::Borrowed("not_allowed"),
        })
}

/// The headers keygate sets for a verified identity: `Authorization`,
/// `X-Auth-*` and `add-claims`. Used by forwarding and forward-auth alike.
/// All but `X-Auth-ExpiresIn` are built once per identity and reused while
/// the identity is cached.
pub fn identity_headers(gw: &Gateway, identity: &Identity, headers: &mut HeaderMap) {
    let prebuilt = identity.derived(|| build_identity_headers(gw, identity));
    match prebuilt {
        Some(prebuilt) => {
            for (name, value) in prebuilt {
                headers.insert(name.clone(), value.clone());
            }
        }
        None => {
            for (name, value) in build_identity_headers(gw, identity) {
                headers.insert(name, value);
            }
        }
    }
    if !gw.config.enable_authorization_header {
        headers.remove(header::AUTHORIZATION);
    }
    let now = keygate_core::unix_now();
    headers.insert(
        HeaderName::from_static("x-auth-expiresin"),
        HeaderValue::from(identity.expires_at.saturating_sub(now)),
    );
}

fn build_identity_headers(gw: &Gateway, identity: &Identity) -> Vec<(HeaderName, HeaderValue)> {
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
    if config.enable_token_header {
        put(
            HeaderName::from_static("x-auth-token"),
            identity.access_token.expose(),
        );
    }
    for (claim, name) in &gw.claim_headers {
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

/// Phase 5: prepares the upstream request and streams it. The client's
/// hop-by-hop, forwarding and override headers are already gone (phase 1);
/// keygate's cookies are removed here, then keygate's headers are set.
async fn forward(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
    websocket: bool,
) -> Result<Response<Body>, Refused> {
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    *req.uri_mut() = gw.upstream.uri_for(&ctx.path, ctx.query.as_deref())?;
    *req.version_mut() = Version::HTTP_11;
    let original_host = req.headers_mut().remove(header::HOST).or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = req.headers_mut();
    hygiene::strip_keygate_cookies(headers);
    forwarded_headers(gw, ctx, headers, original_host);
    headers.insert("x-request-id", ctx.request_id.clone());
    for (name, value) in &gw.static_headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(identity) = &ctx.identity {
        identity_headers(gw, identity, headers);
    }
    gw.upstream
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
    let trusted = gw.trusted_peer(ctx.peer.ip());
    let peer_ip = ctx.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if trusted => format!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !(trusted && headers.contains_key("x-forwarded-proto")) {
        let proto = if gw.tls { "https" } else { "http" };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key("x-forwarded-host"))
        && let Some(host) = host
    {
        headers.insert("x-forwarded-host", host);
    }
}

/// Phase 6: one structured line and the metrics for the request.
pub fn log(ctx: &RequestCtx, status: http::StatusCode) {
    let elapsed = ctx.started.elapsed();
    let decision = ctx.decision.as_str();
    metrics::counter!(
        "keygate_requests_total",
        "route" => ctx.route.clone(),
        "decision" => decision,
        "reason" => ctx.reason.clone(),
    )
    .increment(1);
    metrics::histogram!("keygate_request_duration_seconds", "decision" => decision)
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "keygate::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        client = %ctx.peer.ip(),
        method = %ctx.method,
        path = %ctx.path,
        route = %ctx.route,
        status = status.as_u16(),
        decision,
        reason = %ctx.reason,
        subject = ctx.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or(""),
        duration_us = elapsed.as_micros() as u64,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn control_characters_never_reach_headers() {
        assert!(safe_header_value("alice\r\nX-Admin: 1").is_none());
        assert!(safe_header_value("a\tb").is_none());
        assert!(safe_header_value("\0").is_none());
        assert!(safe_header_value("Zoë").is_some());
    }
}
