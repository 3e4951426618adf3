//! Request hygiene, part of phase 1 (normalize): what the client sent that
//! could steer the upstream after keygate has decided is removed *before*
//! keygate adds a header of its own.
//!
//! - The client's hop-by-hop headers (RFC 9110 §7.6.1), including every
//!   header its `Connection` names: processed first, so no `Connection:` list
//!   can remove the `Authorization`, `X-Auth-*`, `X-Forwarded-*`,
//!   `X-Request-Id` or static headers keygate sets later (the class of
//!   Apache CVE-2022-31813 and Traefik CVE-2024-45410).
//! - `Upgrade`: only `websocket`, on a `GET`, survives (and is re-added by
//!   the forward phase once the request is authorized); `h2c` and every
//!   other protocol, and `HTTP2-Settings`, never reach the upstream (h2c
//!   smuggling).
//! - Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, …) from
//!   a peer that is not one of `trusted-proxies`: keygate writes its own.
//! - Method and URL overrides (`X-HTTP-Method-Override`, `X-Original-URL`,
//!   …), unless `pass-override-headers` names them; those let through are
//!   authorized too.
//! - keygate's own cookies (the session and its chunks, the pending login).
//! - Header names with `_` (which WSGI, CGI and Rack read as `-`), as nginx
//!   drops them by default.

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers frameworks read as the request's real method.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers frameworks (IIS URL Rewrite, Symfony, Zend, Laminas…) read as the
/// request's real URL.
pub const URL_OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-destinationurl",
];

/// Headers that only a trusted proxy may send: frameworks read them as the
/// client's address, scheme, host, port or path prefix.
const FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-original-uri",
    "x-original-method",
    "x-original-host",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-url-scheme",
    "front-end-https",
];

/// Hop-by-hop headers removed from every request and response.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// What the client's hop-by-hop headers asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HopByHop {
    /// A well-formed websocket upgrade: `GET`, `Connection: upgrade`,
    /// `Upgrade: websocket` and nothing else.
    pub websocket: bool,
    /// The client asked for another protocol (`h2c`, `TLS/1.0`, …): refused
    /// by stripping it, and counted.
    pub refused_upgrade: bool,
}

/// Removes the client's hop-by-hop headers: every fixed one and every one
/// its `Connection` header names (but never `Host` or `Content-Length`, which
/// frame the request rather than the hop). Run before keygate adds any
/// header, so a `Connection` list can only remove what the client sent.
pub fn strip_client_hop_by_hop(method: &Method, headers: &mut HeaderMap) -> HopByHop {
    // Most requests carry none: one pass over the names, no lookups.
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return HopByHop::default();
    }
    let mut asks_upgrade = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("upgrade") {
                asks_upgrade = true;
            }
            if let Ok(name) = HeaderName::try_from(token)
                && name != header::HOST
                && name != header::CONTENT_LENGTH
            {
                named.push(name);
            }
        }
    }
    let mut protocols = headers.get_all(header::UPGRADE).iter();
    let upgrade = match (protocols.next(), protocols.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.as_bytes().trim_ascii()),
        (Some(_), Some(_)) => Some(&b"(several)"[..]),
    };
    let websocket = asks_upgrade
        && method == Method::GET
        && upgrade.is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"));
    let refused_upgrade = upgrade.is_some() && !websocket;
    for name in named {
        headers.remove(name);
    }
    remove_present(headers, present);
    if refused_upgrade {
        metrics::counter!("keygate_refused_upgrades_total").increment(1);
    }
    HopByHop {
        websocket,
        refused_upgrade,
    }
}

/// Removes the hop-by-hop headers of an upstream response, including those
/// its `Connection` names.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    // Usually just `Connection: keep-alive`: the names `Connection` lists
    // that are not among the fixed ones are parsed, only then.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(n))
            })
            .filter_map(|n| HeaderName::try_from(n).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    remove_present(headers, present);
}

/// Which of the fixed hop-by-hop headers `headers` has: bit `i` for
/// `HOP_BY_HOP[i]` (bit 0: `Connection`). One pass over the names.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    present
}

/// Removes the fixed hop-by-hop headers `present` names.
fn remove_present(headers: &mut HeaderMap, present: u16) {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Header names with `_`: WSGI, CGI, PHP and Rack map `X_Forwarded_For`
/// and `X-Forwarded-For` to the same variable, so a client could pose as a
/// header keygate writes. Removed like nginx does by default
/// (`underscores_in_headers off`); with `underscores-in-headers` only those
/// that would read as a header keygate manages (`managed`, given the name
/// with `-` for `_`) are removed.
pub fn strip_underscore_headers(
    headers: &mut HeaderMap,
    allow: bool,
    managed: impl Fn(&str) -> bool,
) {
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| !allow || managed(&n.as_str().replace('_', "-")))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether keygate itself reads or writes a header of this (lower-case,
/// `-`-separated) name on the way to the upstream.
pub fn is_managed_header(name: &str) -> bool {
    FORWARDING_HEADERS.contains(&name)
        || is_override_header(name)
        || HOP_BY_HOP.iter().any(|h| h.as_str() == name)
        || matches!(
            name,
            "authorization" | "cookie" | "host" | "x-request-id" | "content-length"
        )
        || keygate_core::config::is_identity_header(name)
}

/// Removes the forwarding headers of a peer that is not a trusted proxy;
/// true when there were any.
pub fn strip_untrusted_forwarding(headers: &mut HeaderMap) -> bool {
    // One pass over the names; a lookup only for those present.
    if !headers
        .keys()
        .any(|n| FORWARDING_HEADERS.contains(&n.as_str()))
    {
        return false;
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| FORWARDING_HEADERS.contains(&n.as_str()))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
    true
}

/// Whether `name` is a method- or URL-override header keygate knows.
pub fn is_override_header(name: &str) -> bool {
    METHOD_OVERRIDE_HEADERS
        .iter()
        .chain(URL_OVERRIDE_HEADERS)
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// What a request's override headers that are let through ask for.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The method an allowed method override names.
    pub method: Option<Method>,
    /// The request target an allowed URL override names.
    pub target: Option<String>,
}

/// A request's override headers could not be understood.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOverride(pub &'static str);

/// Removes the override headers not in `allowed` and reads the allowed ones.
pub fn take_overrides(
    headers: &mut HeaderMap,
    allowed: &[HeaderName],
) -> Result<Overrides, BadOverride> {
    let mut out = Overrides::default();
    if !headers.keys().any(|n| is_override_header(n.as_str())) {
        return Ok(out);
    }
    for name in METHOD_OVERRIDE_HEADERS.iter().chain(URL_OVERRIDE_HEADERS) {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            continue;
        }
        if !allowed.contains(&name) {
            headers.remove(&name);
            continue;
        }
        let value = single(headers, &name)?;
        if METHOD_OVERRIDE_HEADERS.contains(&name.as_str()) {
            let method = Method::from_bytes(value.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| BadOverride("a method-override header does not name a method"))?;
            if out.method.as_ref().is_some_and(|m| *m != method) {
                return Err(BadOverride("method-override headers disagree"));
            }
            out.method = Some(method);
        } else {
            let target = value.trim();
            if !target.starts_with('/') {
                return Err(BadOverride("a URL-override header must hold a path"));
            }
            if out.target.as_deref().is_some_and(|t| t != target) {
                return Err(BadOverride("URL-override headers disagree"));
            }
            out.target = Some(target.to_owned());
        }
    }
    Ok(out)
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, BadOverride> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .map_err(|_| BadOverride("an override header is not ASCII")),
        _ => Err(BadOverride("an override header appears more than once")),
    }
}

/// Whether a cookie name is one of keygate's: `kg_session` and `kg_login`,
/// and their chunks `kg_session-N`, `kg_login-N`.
pub fn is_keygate_cookie(name: &str) -> bool {
    [crate::session::SESSION_COOKIE, crate::session::LOGIN_COOKIE]
        .iter()
        .any(|ours| {
            name.strip_prefix(ours).is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('-')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

/// Removes keygate's own cookies from the request's `Cookie` headers (all of
/// them joined into one, as RFC 9113 §8.2.3 allows); other cookies pass
/// unchanged and in order.
pub fn strip_keygate_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let mut found = false;
    let mut kept: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        // A session cookie is kilobytes long: pairs and names are found
        // with memchr, not byte by byte.
        let bytes = value.as_bytes();
        let mut start = 0;
        while start <= bytes.len() {
            let end = memchr::memchr(b';', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            let pair = bytes[start..end].trim_ascii();
            start = end + 1;
            if pair.is_empty() {
                continue;
            }
            let name = &pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())];
            let ours = std::str::from_utf8(name.trim_ascii()).is_ok_and(is_keygate_cookie);
            if ours {
                found = true;
            } else {
                kept.push(pair);
            }
        }
    }
    if !found {
        return;
    }
    let joined = kept.join(&b"; "[..]);
    headers.remove(header::COOKIE);
    if joined.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keygate_cookies_are_removed_with_odd_spacing_chunks_and_several_headers() {
        let cases = [
            ("a=1; kg_session=xyz; b=2", Some("a=1; b=2")),
            ("kg_session=xyz", None),
            ("kg_session=x; kg_session-1=y;kg_login=z", None),
            ("a=1;b=2", Some("a=1;b=2")),
            (
                " a=1 ;  kg_session-2=q ; kg_sessionx=3 ",
                Some("a=1; kg_sessionx=3"),
            ),
            ("a=1; ; b", Some("a=1; ; b")),
            ("a=1; ; kg_login=x; b", Some("a=1; b")),
        ];
        for (cookie, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_static(cookie));
            strip_keygate_cookies(&mut h);
            let got = h.get(header::COOKIE).map(|v| v.to_str().unwrap());
            assert_eq!(got, want, "{cookie}");
        }
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; kg_session=s"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("kg_session-1=t; b=2"),
        );
        strip_keygate_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn connection_names_only_remove_what_the_client_sent() {
        let mut h = map(&[
            (
                "connection",
                "close, x-auth-subject, authorization, host, x-forwarded-for",
            ),
            ("authorization", "Bearer client"),
            ("x-keep", "1"),
            ("host", "h"),
        ]);
        let hop = strip_client_hop_by_hop(&Method::GET, &mut h);
        assert!(!hop.websocket);
        assert!(!h.contains_key("authorization"));
        assert!(!h.contains_key("connection"));
        assert!(h.contains_key("host"));
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn only_websocket_upgrades_on_get_survive() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        let hop = strip_client_hop_by_hop(&Method::GET, &mut h);
        assert_eq!(
            hop,
            HopByHop {
                websocket: false,
                refused_upgrade: true
            }
        );
        assert!(h.is_empty());
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "WebSocket")]);
        assert!(strip_client_hop_by_hop(&Method::GET, &mut h).websocket);
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(!strip_client_hop_by_hop(&Method::POST, &mut h).websocket);
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]);
        assert!(!strip_client_hop_by_hop(&Method::GET, &mut h).websocket);
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!strip_client_hop_by_hop(&Method::GET, &mut h).websocket);
    }

    #[test]
    fn keygate_cookies_are_removed_and_others_kept_in_order() {
        let mut h = map(&[
            ("cookie", "a=1; kg_session=sealed; kg_session-1=x"),
            ("cookie", "kg_login=l; b=2; kg_sessionx=keep"),
        ]);
        strip_keygate_cookies(&mut h);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2; kg_sessionx=keep");
        let mut h = map(&[("cookie", "kg_session=sealed")]);
        strip_keygate_cookies(&mut h);
        assert!(!h.contains_key("cookie"));
        let mut h = map(&[("cookie", "a=1;b=2")]);
        strip_keygate_cookies(&mut h);
        assert_eq!(h.get("cookie").unwrap(), "a=1;b=2");
    }

    #[test]
    fn override_headers_are_removed_unless_allowed() {
        let mut h = map(&[
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
        ]);
        let o = take_overrides(&mut h, &[]).unwrap();
        assert!(o.method.is_none() && o.target.is_none() && h.is_empty());
        let mut h = map(&[("x-http-method-override", "delete")]);
        let allowed = [HeaderName::from_static("x-http-method-override")];
        let o = take_overrides(&mut h, &allowed).unwrap();
        assert_eq!(o.method, Some(Method::DELETE));
        assert!(h.contains_key("x-http-method-override"));
        let mut h = map(&[
            ("x-http-method-override", "GET"),
            ("x-http-method-override", "DELETE"),
        ]);
        assert!(take_overrides(&mut h, &allowed).is_err());
    }
}
