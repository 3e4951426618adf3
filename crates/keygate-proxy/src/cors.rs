//! CORS (the Fetch standard's cross-origin protocol), with gatekeeper's
//! option names. When `cors-origins` or `cors-origin-patterns` is set,
//! keygate owns CORS: it answers preflights itself, without a credential
//! (a browser never sends one on a preflight), and sets the CORS headers of
//! every response, its own refusals included, for allowed origins only. The
//! upstream's own CORS headers are removed so that a page never sees two
//! answers. Origins are compared exactly (scheme, host and port, in lower
//! case); patterns are an explicit opt-in and match the whole origin.

use crate::error::GatewayError;
use crate::respond::{Body, Refusal, Refused};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use keygate_core::Reason;
use keygate_core::config::Config;

/// The CORS policy, built once from the config.
pub struct Cors {
    /// `*`: any origin (never with credentials: refused at start-up).
    any: bool,
    /// Exact origins, in lower case.
    origins: Vec<String>,
    /// Whole-origin patterns.
    patterns: Vec<regex::Regex>,
    methods: Vec<Method>,
    /// Allowed request headers, in lower case.
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// The response headers CORS is made of, removed from the upstream's
/// answers while keygate owns CORS.
const CORS_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

impl Cors {
    /// The policy of `config`, or `None` when no origin is allowed (CORS off).
    pub fn from_config(config: &Config) -> Result<Option<Cors>, GatewayError> {
        if config.cors_origins.is_empty() && config.cors_origin_patterns.is_empty() {
            return Ok(None);
        }
        let mut any = false;
        let mut origins = Vec::new();
        for origin in &config.cors_origins {
            let origin = origin.trim();
            if origin == "*" {
                any = true;
                continue;
            }
            origins
                .push(parse_origin(origin).map_err(|e| GatewayError::config("cors-origins", e))?);
        }
        if any && config.cors_credentials {
            return Err(GatewayError::config(
                "cors-origins",
                "`*` cannot be combined with `cors-credentials: true`",
            ));
        }
        let mut patterns = Vec::new();
        for pattern in &config.cors_origin_patterns {
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                GatewayError::config("cors-origin-patterns", format!("`{pattern}`: {e}"))
            })?;
            patterns.push(re);
        }
        let mut methods = Vec::new();
        for m in &config.cors_methods {
            let method =
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
                    GatewayError::config("cors-methods", format!("`{m}` is not a method"))
                })?;
            methods.push(method);
        }
        let mut headers: Vec<String> = if config.cors_headers.is_empty() {
            vec![
                "authorization".into(),
                "content-type".into(),
                config.api_keys.header.to_ascii_lowercase(),
            ]
        } else {
            Vec::new()
        };
        for h in &config.cors_headers {
            let name = HeaderName::try_from(h.trim()).map_err(|_| {
                GatewayError::config("cors-headers", format!("`{h}` is not a header name"))
            })?;
            headers.push(name.as_str().to_owned());
        }
        headers.dedup();
        let mut exposed = Vec::new();
        for h in &config.cors_exposed_headers {
            let name = HeaderName::try_from(h.trim()).map_err(|_| {
                GatewayError::config(
                    "cors-exposed-headers",
                    format!("`{h}` is not a header name"),
                )
            })?;
            exposed.push(name.as_str().to_owned());
        }
        let list = |items: Vec<&str>, key: &'static str| {
            HeaderValue::try_from(items.join(", ")).map_err(|e| GatewayError::config(key, e))
        };
        Ok(Some(Cors {
            any,
            origins,
            patterns,
            allow_methods: list(methods.iter().map(Method::as_str).collect(), "cors-methods")?,
            methods,
            allow_headers: list(headers.iter().map(String::as_str).collect(), "cors-headers")?,
            headers,
            expose: match exposed.is_empty() {
                true => None,
                false => Some(list(
                    exposed.iter().map(String::as_str).collect(),
                    "cors-exposed-headers",
                )?),
            },
            credentials: config.cors_credentials,
            max_age: HeaderValue::from(config.cors_max_age.as_secs()),
        }))
    }

    /// Whether pages of `origin` may call (by list, pattern or `*`).
    pub fn allows(&self, origin: &str) -> bool {
        self.named(origin) || self.any
    }

    /// Whether `origin` is allowed by name or pattern (not just by `*`).
    fn named(&self, origin: &str) -> bool {
        let lower = origin.to_ascii_lowercase();
        self.origins.contains(&lower) || self.patterns.iter().any(|p| p.is_match(&lower))
    }

    /// Whether a cookie-authenticated write from `origin` is as good as one
    /// from this site: with `cors-credentials`, an allowed origin's page is.
    pub fn trusts_writes_from(&self, origin: &str) -> bool {
        self.credentials && self.named(origin)
    }

    /// A preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) answered: 204 with the allowed
    /// methods and headers, or a refusal naming what is not allowed.
    /// `None` when the request is not a preflight.
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Result<Response<Body>, Refused>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?.to_str().ok().unwrap_or("");
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let refuse = |why: String| {
            Some(Err(Refused::new(
                Refusal::Forbidden(why),
                Reason::CorsRefused,
            )))
        };
        if !self.allows(origin) {
            return refuse("CORS: this origin is not allowed (cors-origins)".into());
        }
        let asked_method = asked.to_str().ok().unwrap_or("");
        if !self.methods.iter().any(|m| m.as_str() == asked_method) {
            return refuse(format!(
                "CORS: method `{}` is not allowed (cors-methods)",
                printable(asked_method)
            ));
        }
        for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(list) = value.to_str() else {
                return refuse("CORS: malformed Access-Control-Request-Headers".into());
            };
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    return refuse(format!(
                        "CORS: header `{}` is not allowed (cors-headers)",
                        printable(name)
                    ));
                }
            }
        }
        let mut resp = crate::respond::empty(StatusCode::NO_CONTENT);
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(Ok(resp))
    }

    /// Sets the CORS headers of a response to a request from `origin`
    /// (none for a request without `Origin` or from an origin not allowed).
    /// The upstream's own are removed first, by [`Cors::strip_upstream`].
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        // The answer depends on Origin unless it is the same for all.
        if !(self.any && self.origins.is_empty() && self.patterns.is_empty()) {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin else { return };
        let Ok(text) = origin.to_str() else { return };
        if self.named(text) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        } else if self.any {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            return;
        }
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// Removes the CORS headers an upstream set: keygate answers for it.
    pub fn strip_upstream(&self, headers: &mut HeaderMap) {
        for name in &CORS_RESPONSE_HEADERS {
            headers.remove(name);
        }
    }
}

/// `scheme://host[:port]`, in lower case, as browsers send `Origin`.
fn parse_origin(origin: &str) -> Result<String, String> {
    let lower = origin.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!(
            "`{origin}` is not an origin: write scheme://host[:port], e.g. https://app.example.com"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{origin}`: the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err(format!(
            "`{origin}` is not an origin: no path, no trailing `/`, no wildcard (use cors-origin-patterns for those)"
        ));
    }
    Ok(lower)
}

/// A client-sent value, safe to repeat in an error message.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Result<Option<Cors>, GatewayError> {
        let config: Config = serde_yaml_ng::from_str(&format!(
            "discovery-url: http://127.0.0.1:1/realms/acme\nclient-id: keygate\nupstream-url: http://127.0.0.1:2\n{yaml}"
        ))
        .unwrap();
        Cors::from_config(&config)
    }

    fn preflight(cors: &Cors, origin: &str, method: &str, headers: &str) -> u16 {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        match cors.preflight(&Method::OPTIONS, &h).unwrap() {
            Ok(resp) => resp.status().as_u16(),
            Err(refused) => refused.refusal.into_response().status().as_u16(),
        }
    }

    #[test]
    fn off_without_origins() {
        assert!(cors("").unwrap().is_none());
    }

    #[test]
    fn exact_origins_only() {
        let c = cors("cors-origins: [https://App.example.com]\n")
            .unwrap()
            .unwrap();
        assert!(c.allows("https://app.example.com"));
        assert!(!c.allows("https://app.example.com.evil.test"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com:8443"));
        assert!(!c.allows("null"));
    }

    #[test]
    fn patterns_match_the_whole_origin() {
        let c = cors("cors-origin-patterns: ['https://[a-z0-9-]+\\.preview\\.example\\.com']\n")
            .unwrap()
            .unwrap();
        assert!(c.allows("https://pr-12.preview.example.com"));
        assert!(!c.allows("https://pr-12.preview.example.com.evil.test"));
        assert!(!c.allows("https://evil.test/?https://pr-12.preview.example.com"));
    }

    #[test]
    fn refuses_origins_that_are_not_origins() {
        for bad in [
            "https://app.example.com/",
            "app.example.com",
            "https://*.example.com",
            "ftp://x",
        ] {
            let err = cors(&format!("cors-origins: ['{bad}']\n")).err().unwrap();
            assert!(err.to_string().contains("cors-origins"), "{bad}: {err}");
        }
        assert!(cors("cors-origins: ['*']\ncors-credentials: true\n").is_err());
        assert!(cors("cors-origin-patterns: ['(']\n").is_err());
    }

    #[test]
    fn preflight_checks_origin_method_and_headers() {
        let c = cors("cors-origins: [https://app.example.com]\ncors-methods: [GET, POST]\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            preflight(
                &c,
                "https://app.example.com",
                "POST",
                "Authorization, content-type"
            ),
            204
        );
        assert_eq!(
            preflight(&c, "https://app.example.com", "POST", "x-api-key"),
            204
        );
        assert_eq!(preflight(&c, "https://app.example.com", "DELETE", ""), 403);
        assert_eq!(
            preflight(&c, "https://app.example.com", "GET", "x-custom"),
            403
        );
        assert_eq!(preflight(&c, "https://other.example.com", "GET", ""), 403);
        // Not a preflight: no Access-Control-Request-Method.
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
        assert!(c.preflight(&Method::OPTIONS, &h).is_none());
        assert!(c.preflight(&Method::GET, &h).is_none());
    }

    #[test]
    fn decorates_allowed_origins_only_and_replaces_the_upstreams() {
        let c = cors(
            "cors-origins: [https://app.example.com]\ncors-credentials: true\ncors-exposed-headers: [X-Request-Id]\n",
        )
        .unwrap()
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("*"),
        );
        c.strip_upstream(&mut h);
        assert!(h.is_empty());
        c.decorate(Some(&HeaderValue::from_static("https://evil.test")), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(h.get(header::VARY).unwrap(), "Origin");
        let mut h = HeaderMap::new();
        c.decorate(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(
            h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).unwrap(),
            "true"
        );
        assert_eq!(
            h.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).unwrap(),
            "x-request-id"
        );
        assert!(c.trusts_writes_from("https://app.example.com"));
        assert!(!c.trusts_writes_from("https://evil.test"));
    }

    #[test]
    fn star_answers_star_without_credentials() {
        let c = cors("cors-origins: ['*']\n").unwrap().unwrap();
        let mut h = HeaderMap::new();
        c.decorate(Some(&HeaderValue::from_static("https://any.test")), &mut h);
        assert_eq!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "*");
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert!(h.get(header::VARY).is_none());
        assert!(!c.trusts_writes_from("https://any.test"));
    }
}
