//! Forward-auth: `/oauth/auth` runs phases 1–4 on the original method and
//! URI that a front proxy reports — `X-Forwarded-Method` + `X-Forwarded-Uri`
//! (Traefik) or `X-Original-Method` + `X-Original-URI` (nginx) — and answers
//! 200 with the headers to inject, 401 or 403. The reported method and URI
//! are believed only from `trusted-proxies`.

use crate::context::{Credential, RequestCtx};
use crate::gateway::Gateway;
use crate::hygiene;
use crate::respond::{self, Body, Refusal, Refused};
use crate::{authenticate, forward, normalize, pipeline};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::Reason;

/// Answers one forward-auth request.
pub async fn handle(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
    credential: Credential,
) -> Result<Response<Body>, Refused> {
    // The front proxy expects 401/403, never a redirect to login: it cannot
    // follow one (nginx turns it into a 500).
    ctx.browser = false;
    if !ctx.trusted {
        return Err(Refused {
            refusal: Refusal::Forbidden("forward-auth is answered only to trusted-proxies".into()),
            reason: Reason::UntrustedProxy,
        });
    }
    let (method, uri) = original_request(req.headers())?;
    normalize::check_method(&method)?;
    let (path, query) = normalize::normalize(gw, &uri)?;
    // A DPoP proof names the URL the client sent its request to: the
    // original one, as the front proxy reports it.
    let mut credential = credential;
    if let Credential::Dpop(dpop) = &mut credential {
        let raw_path = uri.split_once('?').map_or(uri.as_str(), |(p, _)| p);
        dpop.url = ctx.client_url(gw.tls, req.headers(), raw_path);
    }
    ctx.method = method;
    ctx.path = path;
    ctx.query = query;
    // The Origin check of cookie-authenticated writes, on the original
    // method (the auth request itself is a GET).
    authenticate::csrf_check(gw, ctx, &credential, req.headers())?;
    // The front proxy forwards the client's request itself, override
    // headers included, and keygate cannot remove them: every one present is
    // authorized as the upstream would read it.
    let mut headers = req.headers().clone();
    let overrides = hygiene::take_overrides(&mut headers, &all_override_headers()).map_err(
        |hygiene::BadOverride(why)| Refused {
            refusal: Refusal::BadRequest(why.into()),
            reason: Reason::BadOverrideHeader,
        },
    )?;
    let identity = pipeline::check(gw, ctx, &credential, &overrides, req.headers()).await?;
    let mut resp = respond::empty(StatusCode::OK);
    if let Some(identity) = &identity {
        let site = gw.site(ctx);
        let exchanged = forward::upstream_token(site, identity).await?;
        forward::identity_headers(gw, site, identity, exchanged.as_ref(), resp.headers_mut());
    }
    Ok(resp)
}

fn all_override_headers() -> Vec<http::HeaderName> {
    hygiene::METHOD_OVERRIDE_HEADERS
        .iter()
        .chain(hygiene::URL_OVERRIDE_HEADERS)
        .map(|h| http::HeaderName::from_static(h))
        .collect()
}

/// The original method and request target a front proxy reports, from
/// `X-Forwarded-Method`/`-Uri` or `X-Original-Method`/`-URI` (both pairs
/// present and disagreeing is refused). A full URL is cut to its path and
/// query.
pub fn original_request(headers: &HeaderMap) -> Result<(Method, String), Refused> {
    // Each header at most once and readable: a second value (one the client
    // sent, one the proxy added) or bytes that are not visible ASCII would
    // make the header count as absent and let the other pair decide.
    let get = |name: &'static str| -> Result<Option<&str>, Refused> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v.to_str().map(Some).map_err(|_| Refused {
                refusal: Refusal::BadRequest(format!("{name} is not visible ASCII")),
                reason: Reason::BadOriginalRequest,
            }),
            (Some(_), Some(_)) => Err(Refused {
                refusal: Refusal::BadRequest(format!("{name} appears more than once")),
                reason: Reason::BadOriginalRequest,
            }),
        }
    };
    let (fm, fu) = (get("x-forwarded-method")?, get("x-forwarded-uri")?);
    let (om, ou) = (get("x-original-method")?, get("x-original-uri")?);
    // A front proxy sets one pair and passes the client's other headers
    // through; a client that adds the other pair must not choose what is
    // authorized. Both pairs present and disagreeing: refuse.
    let conflict = matches!((fu, ou), (Some(a), Some(b)) if a != b)
        || matches!((fm, om), (Some(a), Some(b)) if !a.trim().eq_ignore_ascii_case(b.trim()));
    if conflict {
        return Err(Refused {
            refusal: Refusal::BadRequest(
                "X-Forwarded-Method/Uri and X-Original-Method/URI disagree; the front proxy must set (or clear) both"
                    .into(),
            ),
            reason: Reason::ConflictingOriginalRequest,
        });
    }
    let (method, uri) = match (fm.or(om), fu.or(ou)) {
        (Some(m), Some(u)) => (m, u),
        _ => {
            return Err(Refused {
                refusal: Refusal::BadRequest(
                    "forward-auth needs X-Forwarded-Method and X-Forwarded-Uri, or X-Original-Method and X-Original-URI"
                        .into(),
                ),
                reason: Reason::MissingOriginalRequest,
            });
        }
    };
    let method =
        Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()).map_err(|_| Refused {
            refusal: Refusal::BadRequest("the original method is not a valid HTTP method".into()),
            reason: Reason::BadOriginalMethod,
        })?;
    // Traefik sends the path and query; some set-ups send a full URL.
    let uri = match uri.find("://") {
        Some(i) => uri[i + 3..]
            .find('/')
            .map(|p| &uri[i + 3 + p..])
            .unwrap_or("/"),
        None => uri,
    };
    Ok((method, uri.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_cannot_choose_the_authorized_uri_with_the_other_header_pair() {
        let spoofed = headers(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/admin/x"),
            ("x-forwarded-uri", "/public/x"),
        ]);
        assert!(original_request(&spoofed).is_err());
        let spoofed = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/admin/x"),
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/x"),
        ]);
        assert!(original_request(&spoofed).is_err());
    }

    #[test]
    fn a_repeated_or_unreadable_header_cannot_hand_the_decision_to_the_other_pair() {
        let mut h = headers(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/x"),
        ]);
        h.insert(
            "x-forwarded-uri",
            HeaderValue::from_bytes(b"/admin/\xff").unwrap(),
        );
        h.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        assert!(original_request(&h).is_err());
        let mut h = headers(&[("x-forwarded-method", "GET")]);
        h.append("x-forwarded-uri", HeaderValue::from_static("/public/x"));
        h.append("x-forwarded-uri", HeaderValue::from_static("/admin/x"));
        assert!(original_request(&h).is_err());
    }

    #[test]
    fn reads_either_pair_and_full_urls() {
        let (m, u) = original_request(&headers(&[
            ("x-original-method", "post"),
            ("x-original-uri", "/a?b=1"),
        ]))
        .unwrap();
        assert_eq!((m.as_str(), u.as_str()), ("POST", "/a?b=1"));
        let (_, u) = original_request(&headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "https://h.example/p/q"),
        ]))
        .unwrap();
        assert_eq!(u, "/p/q");
        let same = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/a"),
            ("x-original-method", "get"),
            ("x-original-uri", "/a"),
        ]);
        assert!(original_request(&same).is_ok());
    }
}
