//! Phase 3, **authenticate**: the credential verified when a rule needs
//! one: a bearer JWT ([`keygate_auth::JwtVerifier`]), an API key exchanged
//! for the provider token it stands for ([`keygate_keys::ApiKeys`]), or the
//! browser session ([`crate::session`]), whose state-changing requests must
//! also pass the Origin check. A token bound to a key is accepted only with
//! a proof of that key ([`crate::dpop`]).

use crate::context::{Credential, RequestCtx};
use crate::gateway::Gateway;
use crate::respond::{Refusal, Refused};
use crate::route::Routes;
use http::Method;
use http::header::HeaderMap;
use keygate_auth::{AuthError, JwtVerifier};
use keygate_core::Identity;
use keygate_core::Reason;
use std::sync::Arc;

/// Phase 3: the verified identity when a rule needs a credential.
pub async fn run(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    credential: &Credential,
    routes: &Routes<'_>,
) -> Result<Option<Arc<Identity>>, Refused> {
    let verifier = routes.site.verifier.as_ref().unwrap_or(&gw.verifier);
    match routes.need_credential() {
        true => verify_with(gw, verifier, credential, ctx).await.map(Some),
        false => Ok(None),
    }
}

/// CSRF: a state-changing request authenticated by the session cookie must
/// come from this gateway's own pages — its `Origin` must name this host
/// (the `Host` the browser used), or, with `cors-credentials`, an origin
/// that CORS allows by name or pattern. Bearer tokens and API keys are not
/// sent by browsers on their own, so they need no such check.
pub fn csrf_check(
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
    let host = ctx.client_host(headers);
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    // With `cors-credentials`, the allowed origins' pages may write too.
    if let (Some(cors), Some(origin)) = (&gw.cors, origin)
        && cors.trusts_writes_from(origin)
    {
        return Ok(());
    }
    let origin_host = origin
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(Refused {
            refusal: Refusal::Forbidden(
                "cross-site request refused: a cookie-authenticated request that changes state must send this site's Origin"
                    .into(),
            ),
            reason: Reason::Csrf,
        }),
    }
}

/// Verifies a credential: a bearer JWT, or an API key exchanged for the
/// provider token it stands for.
pub async fn verify_credential(
    gw: &Gateway,
    credential: &Credential,
    ctx: &mut RequestCtx,
) -> Result<Arc<Identity>, Refused> {
    verify_with(gw, &gw.verifier, credential, ctx).await
}

/// [`verify_credential`] with `verifier`'s audiences (an upstream's own).
pub async fn verify_with(
    gw: &Gateway,
    verifier: &JwtVerifier,
    credential: &Credential,
    ctx: &mut RequestCtx,
) -> Result<Arc<Identity>, Refused> {
    match credential {
        Credential::None => Err(Refused {
            refusal: Refusal::NoCredential,
            reason: Reason::NoCredential,
        }),
        Credential::InvalidSession(chunks) => {
            // Cleared, so that the browser stops sending it.
            if let Some(sessions) = gw.sessions.as_ref() {
                ctx.set_cookies.extend(sessions.clear_headers(*chunks));
            }
            Err(Refused {
                refusal: Refusal::SessionEnded,
                reason: Reason::SessionInvalid,
            })
        }
        Credential::Unusable(why, reason) => Err(Refused {
            refusal: Refusal::BadCredential((*why).into()),
            reason: *reason,
        }),
        Credential::Bearer(token) => {
            let identity = verifier
                .verify(token.expose())
                .await
                .map_err(|e| auth_refusal(&e))?;
            gw.dpop.check_unbound(&identity, true)?;
            Ok(identity)
        }
        Credential::Dpop(dpop) => {
            let identity = verifier
                .verify(dpop.token.expose())
                .await
                .map_err(|e| auth_refusal(&e))?;
            Box::pin(gw.dpop.check_proof(ctx, dpop, &identity)).await?;
            Ok(identity)
        }
        Credential::Session(cookie) => {
            let Some(sessions) = gw.sessions.as_ref() else {
                return Err(Refused {
                    refusal: Refusal::NoCredential,
                    reason: Reason::NoCredential,
                });
            };
            // Boxed, like the API-key branch: their futures (Redis, the
            // provider) are large and would otherwise make every request's.
            let access_token = Box::pin(crate::session::current_access_token(
                sessions,
                cookie,
                &mut ctx.set_cookies,
            ))
            .await?;
            let verified = verifier
                .verify(access_token.expose())
                .await
                .map_err(|e| auth_refusal(&e))?;
            gw.dpop.check_unbound(&verified, false)?;
            Ok(verified.as_session())
        }
        Credential::ApiKey(key) => {
            let Some(keys) = &gw.api_keys else {
                return Err(Refused {
                    refusal: Refusal::BadCredential(
                        "API keys are not enabled on this gateway".into(),
                    ),
                    reason: Reason::ApiKeysDisabled,
                });
            };
            let identity = Box::pin(keys.authenticate(
                key.expose(),
                ctx.method.as_str(),
                &ctx.path,
                ctx.peer.ip(),
                verifier,
                &mut ctx.limit_headers,
            ))
            .await
            .map_err(Refused::from)?;
            gw.dpop.check_unbound(&identity, false)?;
            Ok(identity)
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
        reason: e.reason(),
    }
}
