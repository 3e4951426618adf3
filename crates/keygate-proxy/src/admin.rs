//! The operations port, `listen-admin`: `/metrics`, `/health` and `/ready`
//! without a credential, and the admin API, `/admin/v1/keys…`, for
//! operators, each call authenticated by a bearer JWT that carries
//! `api-keys.admin-role`, described by the OpenAPI document at
//! `/admin/v1/openapi.json`.

use crate::admin_input::{self, GRACE, LIFETIME, MAX_LIST_LIMIT, QUOTA_CHANGE, RATE_LIMIT_CHANGE};
use crate::context::{Credential, Decision, RequestCtx};
use crate::gateway::Gateway;
use crate::respond::{self, Body, Refusal, Refused};
use crate::selfservice::read_json;
use crate::{authenticate, log, normalize};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::Reason;
use keygate_core::keys::KeyKind;
use keygate_keys::NewServiceKey;
use keygate_store::KeyFilter;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Serves one admin request.
pub async fn handle(
    gw: Arc<Gateway>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut ctx = RequestCtx::new(
        req.headers(),
        req.method().clone(),
        peer,
        gw.trusted_peer(peer.ip()),
    );
    ctx.path = req.uri().path().to_owned();
    ctx.route = "/admin".into();
    let credential = normalize::take_credential(&gw, req.headers_mut());
    let mut resp = match route(&gw, &mut ctx, req, credential).await {
        Ok(resp) => resp,
        Err(Refused { refusal, reason }) => {
            ctx.decision = Decision::Deny;
            ctx.reason = reason;
            refusal.into_response()
        }
    };
    resp.headers_mut()
        .insert("x-request-id", ctx.request_id.clone());
    log::log(gw.config.log_format, &ctx, resp.status());
    resp
}

async fn route(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
    credential: Credential,
) -> Result<Response<Body>, Refused> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    // The operations endpoints: this port is private, so they need no
    // credential (like a Prometheus scrape or a kubelet probe).
    match ctx.path.as_str() {
        "/metrics" if read_only && gw.config.enable_metrics => {
            ctx.decision = Decision::Internal;
            return Ok(crate::ops::metrics());
        }
        "/health" if read_only => {
            ctx.decision = Decision::Internal;
            return Ok(crate::ops::health(gw).await);
        }
        "/ready" if read_only => {
            ctx.decision = Decision::Internal;
            return Ok(crate::ops::ready(gw));
        }
        _ => {}
    }
    if ctx.path == "/admin/v1/openapi.json" && req.method() == Method::GET {
        ctx.decision = Decision::Internal;
        return Ok(respond::text(
            StatusCode::OK,
            "application/json",
            OPENAPI.to_owned(),
        ));
    }
    let Some(keys) = gw.api_keys.as_deref() else {
        return Err(Refusal::NotFound.into());
    };
    // Only bearer JWTs administer: an API key cannot manage API keys.
    let Credential::Bearer(_) = &credential else {
        return Err(Refused {
            refusal: Refusal::NoCredential,
            reason: Reason::NoCredential,
        });
    };
    let identity = authenticate::verify_credential(gw, &credential, ctx).await?;
    if !identity.has_role(keys.admin_role()) {
        return Err(Refused {
            refusal: Refusal::Forbidden(format!("missing role: {}", keys.admin_role())),
            reason: Reason::NotAdmin,
        });
    }
    ctx.decision = Decision::Allow;
    let actor = identity
        .username
        .clone()
        .unwrap_or_else(|| identity.subject.clone());
    ctx.identity = Some(Arc::clone(&identity));
    let path = ctx.path.clone();
    let rest = path
        .strip_prefix("/admin/v1/keys")
        .ok_or_else(|| Refused::from(Refusal::NotFound))?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, []) => {
            let filter = filter_from_query(req.uri().query())?;
            let list = keys.list(&filter).await?;
            Ok(respond::json(StatusCode::OK, &json!({ "keys": list })))
        }
        (Method::POST, []) => {
            let new: NewServiceKey = read_json(req).await?;
            admin_input::check_new_key(&new)?;
            let created = keys.create_service(new, &actor).await?;
            Ok(respond::json(StatusCode::CREATED, &created_json(&created)))
        }
        (Method::GET, [id]) => {
            let view = keys.show(id, None).await?;
            let audit = keys
                .store()
                .audit(id)
                .await
                .map_err(|e| Refused::from(keygate_keys::ManageError::Store(e)))?;
            let audit: Vec<_> = audit
                .iter()
                .map(|a| json!({ "action": a.action, "actor": a.actor, "at": a.at, "detail": a.detail }))
                .collect();
            Ok(respond::json(
                StatusCode::OK,
                &json!({ "key": view, "audit": audit }),
            ))
        }
        (Method::POST, [id, "revoke"]) => {
            keys.revoke(id, None, &actor).await?;
            let view = keys.show(id, None).await?;
            Ok(respond::json(StatusCode::OK, &json!({ "key": view })))
        }
        (Method::POST, [id, "renew"]) => {
            #[derive(serde::Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Renew {
                #[serde(default)]
                expires_in: Option<String>,
            }
            let renew: Renew = read_json(req).await?;
            if let Some(lifetime) = &renew.expires_in {
                LIFETIME.check("expires_in", lifetime)?;
            }
            let view = keys
                .renew(id, None, renew.expires_in.as_deref(), &actor)
                .await?;
            Ok(respond::json(StatusCode::OK, &json!({ "key": view })))
        }
        (Method::POST, [id, "limits"]) => {
            // A field left out stays as it is; `null` returns it to the
            // kind's default.
            let body: serde_json::Map<String, serde_json::Value> = read_json(req).await?;
            let field = |name: &str| -> Result<Option<Option<String>>, Refused> {
                match body.get(name) {
                    None => Ok(None),
                    Some(serde_json::Value::Null) => Ok(Some(None)),
                    Some(serde_json::Value::String(s)) => Ok(Some(Some(s.clone()))),
                    Some(_) => Err(Refused {
                        refusal: Refusal::BadRequest(format!("`{name}` must be a string or null")),
                        reason: Reason::InvalidRequest,
                    }),
                }
            };
            if let Some(unknown) = body.keys().find(|k| *k != "rate_limit" && *k != "quota") {
                return Err(Refused {
                    refusal: Refusal::BadRequest(format!("unknown field `{unknown}`")),
                    reason: Reason::InvalidRequest,
                });
            }
            let (rate, quota) = (field("rate_limit")?, field("quota")?);
            if let Some(Some(rate)) = &rate {
                RATE_LIMIT_CHANGE.check("rate_limit", rate)?;
            }
            if let Some(Some(quota)) = &quota {
                QUOTA_CHANGE.check("quota", quota)?;
            }
            let view = keys
                .set_limits(
                    id,
                    rate.as_ref().map(|r| r.as_deref()),
                    quota.as_ref().map(|q| q.as_deref()),
                    &actor,
                )
                .await?;
            Ok(respond::json(StatusCode::OK, &json!({ "key": view })))
        }
        (Method::POST, [id, "rotate"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Rotate {
                key: keygate_core::Secret,
                #[serde(default)]
                grace: Option<String>,
            }
            let rotate: Rotate = read_json(req).await?;
            if let Some(grace) = &rotate.grace {
                GRACE.check("grace", grace)?;
            }
            let grace = parse_grace(rotate.grace.as_deref())?;
            let created = keys
                .rotate(id, grace, Some(rotate.key.expose()), &actor)
                .await?;
            Ok(respond::json(StatusCode::OK, &created_json(&created)))
        }
        _ => Err(Refusal::NotFound.into()),
    }
}

fn created_json(created: &keygate_keys::CreatedKey) -> serde_json::Value {
    json!({
        "id": created.id, "key": created.key.expose(), "prefix": created.prefix,
        "kind": created.kind, "expires_at": created.expires_at,
    })
}

/// `grace` as a duration (`10m`), or none.
pub fn parse_grace(grace: Option<&str>) -> Result<Option<Duration>, Refused> {
    match grace.map(str::trim) {
        None | Some("") | Some("0") | Some("0s") => Ok(None),
        Some(g) => humantime::parse_duration(g).map(Some).map_err(|_| Refused {
            refusal: Refusal::BadRequest(format!("`{g}` is not a duration like 10m")),
            reason: Reason::InvalidRequest,
        }),
    }
}

fn filter_from_query(query: Option<&str>) -> Result<KeyFilter, Refused> {
    let mut filter = KeyFilter::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| Refused {
            refusal: Refusal::BadRequest(format!("bad query parameter `{what}`")),
            reason: Reason::InvalidRequest,
        };
        match k {
            "owner" => filter.owner = Some(keygate_core::encoding::form_decode(v)),
            "kind" => filter.kind = Some(KeyKind::parse(v).ok_or_else(|| bad("kind"))?),
            "include_revoked" => {
                filter.include_revoked = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("include_revoked")),
                }
            }
            "limit" => {
                let limit: i64 = v.parse().map_err(|_| bad("limit"))?;
                if !(1..=MAX_LIST_LIMIT).contains(&limit) {
                    return Err(Refused {
                        refusal: Refusal::BadRequest(format!(
                            "`limit` must be from 1 to {MAX_LIST_LIMIT}"
                        )),
                        reason: Reason::InvalidRequest,
                    });
                }
                filter.limit = Some(limit);
            }
            _ => return Err(bad(k)),
        }
    }
    Ok(filter)
}
