//! Self-service API-key endpoints under `/oauth/` (JSON):
//!
//! | endpoint | who | what |
//! |---|---|---|
//! | `GET /oauth/keys` | any authenticated caller | the caller's own keys |
//! | `DELETE /oauth/keys/{id}` | the key's owner | revoke it |
//! | `POST /oauth/keys/device` | anyone | start creating a personal key: the provider's device authorization (RFC 8628) |
//! | `POST /oauth/keys/device/token` | whoever started the flow | poll; the new key once the user has approved |
//! | `GET /oauth/token` | an API-key holder | the provider access token the key stands for (`keygate token`) |
//!
//! A personal key is created through keygate, which is the confidential
//! client: the user approves at the provider's verification page, keygate
//! receives the offline refresh token, stores it encrypted under the new key
//! and answers the key exactly once.

use crate::context::{Credential, RequestCtx};
use crate::gateway::Gateway;
use crate::respond::{self, Body, Refusal, Refused};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use keygate_core::Identity;
use keygate_core::Reason;
use keygate_keys::ApiKeys;
use keygate_store::KeyFilter;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// Largest JSON body these endpoints read.
const MAX_BODY: usize = 64 * 1024;

/// Dispatches `/oauth/keys…` and `/oauth/token`.
pub async fn serve(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
    credential: Credential,
) -> Result<Response<Body>, Refused> {
    let Some(keys) = gw.api_keys.as_deref() else {
        return Err(Refusal::NotFound.into());
    };
    let method = req.method().clone();
    let path = ctx.path.clone();
    if is_key_page(&method, &path, ctx.browser) {
        return key_page(gw, keys, ctx, &method, &path, req, &credential).await;
    }
    match (method, path.as_str()) {
        (Method::GET, "/oauth/token") | (Method::POST, "/oauth/token") => {
            let Credential::ApiKey(key) = &credential else {
                return Err(Refused {
                    refusal: Refusal::NoCredential,
                    reason: Reason::NoCredential,
                });
            };
            let (token, expires_in) = keys
                .token_for(
                    key.expose(),
                    ctx.peer.ip(),
                    &gw.verifier,
                    &mut ctx.limit_headers,
                )
                .await?;
            Ok(respond::json(
                StatusCode::OK,
                &json!({ "access_token": token.expose(), "token_type": "Bearer", "expires_in": expires_in }),
            ))
        }
        (Method::GET, "/oauth/keys") => {
            let identity = identify(gw, ctx, &credential).await?;
            let filter = KeyFilter {
                owner: Some(identity.subject.clone()),
                kind: None,
                include_revoked: false,
                limit: Some(500),
            };
            let list = keys.list(&filter).await?;
            Ok(respond::json(StatusCode::OK, &json!({ "keys": list })))
        }
        (Method::DELETE, p)
            if p.starts_with("/oauth/keys/") && !p["/oauth/keys/".len()..].contains('/') =>
        {
            let identity = identify(gw, ctx, &credential).await?;
            let id = &p["/oauth/keys/".len()..];
            let actor = identity
                .username
                .clone()
                .unwrap_or_else(|| identity.subject.clone());
            keys.revoke(id, Some(&identity.subject), &actor).await?;
            Ok(respond::empty(StatusCode::NO_CONTENT))
        }
        (Method::POST, "/oauth/keys/device") => {
            #[derive(serde::Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Start {
                #[serde(default)]
                description: String,
                #[serde(default)]
                expires_in: Option<String>,
            }
            let start: Start = read_json(req).await?;
            let started = keys
                .start_device(start.description, start.expires_in.as_deref())
                .await?;
            Ok(respond::json(StatusCode::OK, &started))
        }
        (Method::POST, "/oauth/keys/device/token") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Poll {
                flow_id: String,
            }
            let poll: Poll = read_json(req).await?;
            poll_device(gw, keys, &poll.flow_id).await
        }
        _ => Err(Refusal::NotFound.into()),
    }
}

async fn poll_device(
    gw: &Gateway,
    keys: &ApiKeys,
    flow_id: &str,
) -> Result<Response<Body>, Refused> {
    match keys.poll_device(flow_id, &gw.verifier).await {
        Ok(None) => Ok(respond::json(
            StatusCode::ACCEPTED,
            &json!({ "status": "authorization_pending" }),
        )),
        Ok(Some(created)) => Ok(respond::json(
            StatusCode::CREATED,
            &json!({
                "id": created.id, "key": created.key.expose(), "prefix": created.prefix,
                "kind": created.kind, "expires_at": created.expires_at,
            }),
        )),
        Err(e) => respond::device_outcome(e),
    }
}

/// The caller of a management endpoint, by bearer JWT or API key.
async fn identify(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    credential: &Credential,
) -> Result<Arc<Identity>, Refused> {
    // Management endpoints always need a credential, whatever default-deny says.
    crate::authenticate::verify_credential(gw, credential, ctx).await
}

/// Reads a small JSON body; an empty body is `{}`.
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refused> {
    let bad = |why: String| Refused {
        refusal: Refusal::BadRequest(why),
        reason: Reason::BadBody,
    };
    let body: Bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| bad(format!("the body must be JSON of at most {MAX_BODY} bytes")))?
        .to_bytes();
    // No body at all is an empty object (every field left out); anything
    // else must be JSON, so whitespace alone is refused like any non-JSON.
    let body = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// The HTML key page's routes: the page itself for browsers, and its forms.
fn is_key_page(method: &Method, path: &str, browser: bool) -> bool {
    if *method == Method::GET {
        return path == "/oauth/keys" && browser;
    }
    if *method != Method::POST {
        return false;
    }
    matches!(path, "/oauth/keys/new" | "/oauth/keys/new/finish")
        || path
            .strip_prefix("/oauth/keys/")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(id, action)| {
                !id.is_empty() && !id.contains('/') && matches!(action, "revoke" | "renew")
            })
}

async fn key_page(
    gw: &Gateway,
    keys: &ApiKeys,
    ctx: &mut RequestCtx,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
    credential: &Credential,
) -> Result<Response<Body>, Refused> {
    let identity = identify(gw, ctx, credential).await?;
    if *method == Method::GET {
        let notice = match ctx.query.as_deref() {
            Some("done=revoked") => Some("The key was revoked."),
            Some("done=renewed") => Some("The key was renewed."),
            _ => None,
        };
        return crate::keypage::list(keys, &identity, notice).await;
    }
    let body: Bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| Refused {
            refusal: Refusal::BadRequest("the form is too large".into()),
            reason: Reason::BadBody,
        })?
        .to_bytes();
    let form = crate::keypage::parse_form(&body);
    let actor = identity
        .username
        .clone()
        .unwrap_or_else(|| identity.subject.clone());
    match path {
        "/oauth/keys/new" => crate::keypage::create(keys, &form).await,
        "/oauth/keys/new/finish" => crate::keypage::finish(gw, keys, &form).await,
        _ => {
            let rest = &path["/oauth/keys/".len()..];
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            if action == "revoke" {
                keys.revoke(id, Some(&identity.subject), &actor).await?;
                Ok(crate::keypage::see_other("/oauth/keys?done=revoked"))
            } else {
                let expires_in = form
                    .iter()
                    .find(|(k, _)| k == "expires_in")
                    .map(|(_, v)| v.as_str());
                keys.renew(id, Some(&identity.subject), expires_in, &actor)
                    .await?;
                Ok(crate::keypage::see_other("/oauth/keys?done=renewed"))
            }
        }
    }
}
