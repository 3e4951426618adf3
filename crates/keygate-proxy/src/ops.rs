//! keygate's own endpoints under `/oauth/`: `health`, `ready`, `metrics`,
//! and the forward-auth endpoint `auth`.

use crate::forward_auth;
use crate::gateway::Gateway;
use crate::pipeline::{Credential, Refused, RequestCtx};
use crate::respond::{self, Body, Refusal};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

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
        "/oauth/authorize" if read_only => crate::sessions::authorize(gw, ctx, &req).await,
        "/oauth/callback" if read_only => crate::sessions::callback(gw, ctx, &req).await,
        "/oauth/logout" => crate::sessions::logout(gw, ctx, &req).await,
        "/oauth/backchannel-logout" if req.method() == Method::POST => {
            crate::sessions::backchannel_logout(gw, req).await
        }
        "/oauth/health" if read_only => Ok(health(gw).await),
        "/oauth/ready" if read_only => Ok(ready(gw)),
        "/oauth/metrics" if read_only => Ok(respond::text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_handle().render(),
        )),
        _ => Err(Refusal::NotFound.into()),
    }
}

/// Liveness and the state of what keygate depends on: always 200 while the
/// process serves (a liveness probe must not restart keygate because the
/// provider or Redis is down); `status` is `degraded` when one is.
async fn health(gw: &Gateway) -> Response<Body> {
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
fn ready(gw: &Gateway) -> Response<Body> {
    let loaded = gw.verifier.provider().keys().is_some();
    let status = if loaded {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond::json(status, &serde_json::json!({ "ready": loaded }))
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /oauth/metrics may be empty");
        }
        handle
    })
}
