//! The main listener's entry: phase 1 for every request, then keygate's own
//! endpoints (`/oauth/*`, [`crate::ops`]) or the pipeline to the upstream
//! ([`crate::pipeline`]); both end in [`crate::pipeline::finish`]. A
//! cookie-authenticated write needs this site's `Origin` on either path.
//! With CORS on, a preflight is answered here, before either.

use crate::context::{Decision, RequestCtx};
use crate::gateway::Gateway;
use crate::respond::Body;
use crate::{authenticate, normalize, ops, pipeline};
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Serves one request from the main listener, in its trace span (see
/// [`crate::trace`]).
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if !gw.tracing {
        // No span to enter: the request's future is not moved into an
        // `Instrumented` (a copy of the whole future per request).
        return serve(gw, req, peer, &tracing::Span::none()).await;
    }
    let span = crate::trace::request_span(&gw, &req, peer);
    let resp = serve(Arc::clone(&gw), req, peer, &span)
        .instrument(span.clone())
        .await;
    crate::trace::finish(&span, resp.status());
    resp
}

async fn serve(
    gw: Arc<Gateway>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    span: &tracing::Span,
) -> Response<Body> {
    let trusted = gw.trusted_peer(peer.ip());
    let mut ctx = RequestCtx::new(req.headers(), req.method().clone(), peer, trusted);
    if gw.cors.is_some() {
        ctx.origin = req.headers().get(http::header::ORIGIN).cloned();
    }
    let result = match normalize::run(&gw, &mut ctx, &mut req) {
        Err(refused) => Err(refused),
        // A CORS preflight carries no credential: keygate answers it.
        Ok(_)
            if let Some(answer) = gw
                .cors
                .as_ref()
                .and_then(|c| c.preflight(req.method(), req.headers())) =>
        {
            ctx.decision = Decision::Internal;
            ctx.route = "preflight".into();
            answer
        }
        Ok((credential, _)) if ctx.path.starts_with("/oauth/") => {
            // keygate's own endpoints forward nothing.
            ctx.decision = Decision::Internal;
            ctx.route = "/oauth".into();
            match authenticate::csrf_check(&gw, &ctx, &credential, req.headers()) {
                // Boxed: keygate's own endpoints are rare, their futures large.
                Ok(()) => Box::pin(ops::serve(&gw, &mut ctx, req, credential)).await,
                Err(refused) => Err(refused),
            }
        }
        Ok((credential, websocket)) => {
            pipeline::proxy(&gw, &mut ctx, req, credential, websocket).await
        }
    };
    let resp = pipeline::finish(&gw, &mut ctx, result);
    crate::trace::record(span, &gw, &ctx);
    resp
}
