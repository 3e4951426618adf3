//! The pipeline's driver: phases 2–4 ([`check`]), shared by the proxy and
//! forward-auth, then phase 5 ([`proxy`]), and the end of every request
//! ([`finish`]: the login redirect or the refusal, `X-Request-Id`, cookies,
//! limit headers, then phase 6). Phase 1 ([`crate::normalize`]) runs first,
//! in [`crate::dispatch`], which sends keygate's own endpoints elsewhere.

use crate::context::{Credential, Decision, RequestCtx};
use crate::gateway::Gateway;
use crate::hygiene::{self, Overrides};
use crate::respond::{Body, Refusal, Refused};
use crate::{authenticate, authorize, forward, limits, log, route, session};
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use keygate_core::Identity;
use keygate_core::Reason;
use std::sync::Arc;

/// Phases 2–4 for `ctx`'s method and path (and an override's): the
/// identity the request is allowed with, `None` for a public route.
/// Sets `ctx.decision` to allow or public.
pub async fn check(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    credential: &Credential,
    overrides: &Overrides,
    headers: &HeaderMap,
) -> Result<Option<Arc<Identity>>, Refused> {
    let routes = route::run(gw, ctx, overrides, headers)?;
    let identity = authenticate::run(gw, ctx, credential, &routes).await?;
    authorize::run(&routes, identity.as_deref())?;
    limits::run(gw, ctx, credential, identity.as_deref(), headers).await?;
    ctx.decision = match identity {
        Some(_) => Decision::Allow,
        None => Decision::Public,
    };
    ctx.identity = identity.clone();
    Ok(identity)
}

/// A request for the upstream, after phase 1: phases 2–5.
pub async fn proxy(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
    credential: Credential,
    websocket: bool,
) -> Result<Response<Body>, Refused> {
    authenticate::csrf_check(gw, ctx, &credential, req.headers())?;
    let overrides = hygiene::take_overrides(req.headers_mut(), &gw.override_headers).map_err(
        |hygiene::BadOverride(why)| Refused {
            refusal: Refusal::BadRequest(why.into()),
            reason: Reason::BadOverrideHeader,
        },
    )?;
    check(gw, ctx, &credential, &overrides, req.headers()).await?;
    let mut resp = forward::forward(gw, ctx, req, websocket).await?;
    if let Some(cors) = &gw.cors {
        cors.strip_upstream(resp.headers_mut());
    }
    Ok(resp)
}

/// The end of every request on the main listener: a refusal becomes its
/// response (or, for a browser without a credential, the login redirect);
/// then `X-Request-Id`, cookies and limit headers, and phase 6.
pub fn finish(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    result: Result<Response<Body>, Refused>,
) -> Response<Body> {
    let mut resp = match result {
        Ok(resp) => resp,
        Err(Refused { refusal, reason }) => {
            ctx.refused(&refusal, reason);
            let to_login = matches!(refusal, Refusal::NoCredential | Refusal::SessionEnded)
                && ctx.browser
                && gw.sessions.as_ref().is_some_and(|s| !s.no_redirects);
            if to_login {
                let mut return_to = ctx.path.clone();
                if let Some(q) = &ctx.query {
                    return_to.push('?');
                    return_to.push_str(q);
                }
                session::login_redirect(&return_to)
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
    if let Some(cors) = &gw.cors {
        cors.decorate(ctx.origin.as_ref(), resp.headers_mut());
    }
    log::log(gw.config.log_format, ctx, resp.status());
    resp
}
