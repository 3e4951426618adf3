//! keygate's own endpoints under `/oauth/`: `health`, `ready`, `metrics`,
//! `jwks` (keygate's public signing keys, when personal keys may be backed
//! by the JWT authorization grant), and the forward-auth endpoint `auth`. With `listen-admin` set, metrics
//! and the detailed health are served on that port instead
//! ([`crate::admin`]) and the public `health` says only that keygate lives.

use crate::context::{Credential, RequestCtx};
use crate::forward_auth;
use crate::gateway::Gateway;
use crate::respond::{self, Body, Refusal, Refused};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::Reason;

/// Dispatches a request whose normalized path starts with `/oauth/`.
pub async fn serve(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
    credential: Credential,
) -> Result<Response<Body>, Refused> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    if ctx.path == "/oauth/keys"
        || ctx.path.starts_with("/oauth/keys/")
        || ctx.path == "/oauth/token"
    {
        return crate::selfservice::serve(gw, ctx, req, credential).await;
    }
    match ctx.path.as_str() {
        "/oauth/auth" => forward_auth::handle(gw, ctx, req, credential).await,
        "/oauth/authorize" if read_only => crate::login::authorize(gw, ctx, &req).await,
        "/oauth/callback" if read_only => crate::login::callback(gw, ctx, &req).await,
        "/oauth/logout" => crate::login::logout(gw, ctx, &req).await,
        "/oauth/backchannel-logout" if req.method() == Method::POST => {
            crate::login::backchannel_logout(gw, req).await
        }
        // With an operations port, the details stay there.
        "/oauth/health" if read_only && gw.config.listen_admin.is_some() => Ok(liveness()),
        "/oauth/health" if read_only => Ok(health(gw).await),
        "/oauth/ready" if read_only => Ok(ready(gw)),
        "/oauth/jwks" if read_only => jwks(gw),
        "/oauth/metrics" if read_only && public_metrics(gw) => {
            if gw.config.localhost_metrics && !from_this_host(ctx, req.headers()) {
                return Err(Refused::new(
                    Refusal::Forbidden("metrics are served to localhost only".into()),
                    Reason::NotLocal,
                ));
            }
            Ok(metrics())
        }
        _ => Err(Refusal::NotFound.into()),
    }
}

/// keygate's public signing keys as a JWK Set, for the provider that
/// verifies its assertions (`api-keys.jwt-grant`); 404 without one. Public
/// keys only; cacheable for a few minutes.
fn jwks(gw: &Gateway) -> Result<Response<Body>, Refused> {
    let set = gw
        .api_keys
        .as_ref()
        .and_then(|keys| keys.jwks())
        .ok_or(Refusal::NotFound)?;
    let mut resp = respond::json(StatusCode::OK, &set);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/jwk-set+json"),
    );
    Ok(resp)
}

/// Whether the public listener serves `/oauth/metrics`: on unless
/// `enable-metrics: false` or an operations port (`listen-admin`) has them.
fn public_metrics(gw: &Gateway) -> bool {
    gw.config.enable_metrics && gw.config.listen_admin.is_none()
}

/// `localhost-metrics`: the TCP peer is a loopback address and no proxy
/// relayed the request (a local reverse proxy's clients are not local).
fn from_this_host(ctx: &RequestCtx, headers: &HeaderMap) -> bool {
    ctx.peer.ip().is_loopback()
        && !ctx.relayed
        && !headers.contains_key("forwarded")
        && !headers.contains_key("x-forwarded-for")
        && !headers.contains_key("x-real-ip")
}

/// The Prometheus text format of every metric.
pub fn metrics() -> Response<Body> {
    respond::text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        crate::metrics::handle().render(),
    )
}

/// The public health answer when the details live on the operations port:
/// liveness only.
fn liveness() -> Response<Body> {
    respond::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Liveness and the state of what keygate depends on: always 200 while the
/// process serves (a liveness probe must not restart keygate because the
/// provider or Redis is down); `status` is `degraded` when one is.
pub async fn health(gw: &Gateway) -> Response<Body> {
    let provider = gw.verifier.provider().health();
    let mut body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "provider": provider,
    });
    let mut degraded = !provider.keys_loaded;
    if let Some(redis) = &gw.redis {
        let reachable = redis.ping().await.is_ok();
        degraded |= !reachable;
        body["redis"] = serde_json::json!({ "reachable": reachable });
    }
    if degraded {
        body["status"] = "degraded".into();
    }
    respond::json(StatusCode::OK, &body)
}

/// Readiness: 200 once the provider's keys are loaded, 503 before.
pub fn ready(gw: &Gateway) -> Response<Body> {
    let loaded = gw.verifier.provider().keys().is_some();
    let status = if loaded {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond::json(status, &serde_json::json!({ "ready": loaded }))
}
