//! The upstreams of one process (`upstream-url` and `upstreams:`), each a
//! [`Site`] with its own rules, audiences and headers, and the choice of the
//! site for a request by host and path prefix (in phase 2, so forward-auth
//! evaluates the rules of the upstream the front proxy will call).
//!
//! Choice: among the `upstreams` whose `hosts` name the request's host (or
//! that name none), the one with the longest `path-prefix` that the path
//! equals or continues with `/`; a site naming hosts wins over one that
//! names none at the same prefix. When none matches, the top-level
//! `upstream-url` takes the request; without it, 404.

use crate::error::GatewayError;
use crate::upstream::Upstream;
use http::{HeaderName, HeaderValue};
use keygate_auth::token_exchange::{ExchangeSettings, TokenExchanger};
use keygate_auth::{JwtVerifier, Provider, VerifierSettings};
use keygate_core::config::TokenExchangeConfig;
use keygate_core::config::{Config, UpstreamConfig, is_identity_header};
use keygate_core::rules::{RuleOptions, RuleSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One upstream and what applies to its requests.
pub struct Site {
    /// `upstreams[].name`; `None` for the top-level `upstream-url`.
    pub name: Option<String>,
    /// Lower-case hosts, `*.domain` for subdomains; empty: any host.
    hosts: Vec<String>,
    /// `/orders`; empty: every path.
    prefix: String,
    strip_prefix: bool,
    case_insensitive: bool,
    /// Its compiled rules.
    pub rules: RuleSet,
    /// Its own token checks when its audiences differ; `None`: the gateway's.
    pub verifier: Option<JwtVerifier>,
    /// Where its requests go.
    pub upstream: Upstream,
    /// `headers:` (top-level, then its own), prebuilt.
    pub static_headers: Vec<(HeaderName, HeaderValue)>,
    /// `add-claims:` (top-level, then its own) with their header names.
    pub claim_headers: Vec<(String, HeaderName)>,
    /// Whether its identity headers are those of the top-level config, so
    /// they may be kept on a cached identity (shared by every site).
    pub default_headers: bool,
    /// `token-exchange`: the caller's token is exchanged for one whose
    /// audience is just this upstream before it is forwarded.
    pub token_exchange: Option<TokenExchanger>,
}

impl Site {
    /// The site of the top-level `upstream-url`, `resources` and headers.
    pub fn default_site(config: &Config, provider: &Arc<Provider>) -> Result<Site, GatewayError> {
        let (static_headers, claim_headers) =
            headers(&config.headers, &config.add_claims, "headers", "add-claims")?;
        Ok(Site {
            name: None,
            hosts: Vec::new(),
            prefix: String::new(),
            strip_prefix: false,
            case_insensitive: config.case_insensitive_paths,
            rules: rules(config, &config.resources, &config.match_claims)?,
            verifier: None,
            upstream: Upstream::new(config)?,
            static_headers,
            claim_headers,
            default_headers: true,
            token_exchange: exchanger(config, config.token_exchange.as_ref(), provider),
        })
    }

    /// The site of one `upstreams:` entry.
    pub fn from_upstream(
        config: &Config,
        u: &UpstreamConfig,
        provider: &Arc<Provider>,
        settings: &VerifierSettings,
    ) -> Result<Site, GatewayError> {
        let mut match_claims = config.match_claims.clone();
        match_claims.extend(u.match_claims.clone());
        let mut all_headers = config.headers.clone();
        all_headers.extend(u.headers.clone());
        let mut add_claims = config.add_claims.clone();
        add_claims.extend(u.add_claims.iter().cloned());
        let (static_headers, claim_headers) =
            headers(&all_headers, &add_claims, "upstreams", "upstreams")?;
        let verifier = match u.access_token_audience.is_empty() {
            true => None,
            false => Some(
                JwtVerifier::new(
                    Arc::clone(provider),
                    VerifierSettings {
                        audiences: u.access_token_audience.clone(),
                        ..settings.clone()
                    },
                )
                .map_err(|e| GatewayError::config("upstreams", e))?,
            ),
        };
        let mut upstream_config = config.clone();
        upstream_config.upstream_url = Some(u.url.clone());
        Ok(Site {
            name: Some(u.name.clone()),
            hosts: u.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            prefix: u.path_prefix.clone().unwrap_or_default(),
            strip_prefix: u.strip_prefix,
            case_insensitive: config.case_insensitive_paths,
            rules: rules(config, &u.resources, &match_claims)
                .map_err(|e| GatewayError::config("upstreams", format!("`{}`: {e}", u.name)))?,
            verifier,
            upstream: Upstream::new(&upstream_config)
                .map_err(|e| GatewayError::config("upstreams", format!("`{}`: {e}", u.name)))?,
            default_headers: u.headers.is_empty() && u.add_claims.is_empty(),
            static_headers,
            claim_headers,
            token_exchange: exchanger(config, u.token_exchange.as_ref(), provider),
        })
    }

    /// Whether it serves `host` (without the port).
    fn serves_host(&self, host: &str) -> bool {
        self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => h == host,
            })
    }

    /// Whether `path` is under its prefix.
    fn serves_path(&self, path: &str) -> bool {
        if self.prefix.is_empty() {
            return true;
        }
        let (path, prefix) = match self.case_insensitive {
            true => (path.to_ascii_lowercase(), self.prefix.to_ascii_lowercase()),
            false => (path.to_owned(), self.prefix.clone()),
        };
        path == prefix
            || path
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The path sent upstream: without the prefix with `strip-prefix`.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        match self.strip_prefix {
            true => match &path[self.prefix.len().min(path.len())..] {
                "" => "/",
                rest => rest,
            },
            false => path,
        }
    }
}

/// The index of the site for a request to `host` (any case, port allowed)
/// and the normalized `path`, or `None` when no upstream takes it.
pub fn choose(sites: &[Site], host: Option<&str>, path: &str) -> Option<usize> {
    let host = host
        .map(|h| strip_port(h).trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    let mut best: Option<(usize, (usize, bool))> = None;
    for (i, site) in sites.iter().enumerate() {
        if site.name.is_none() || !site.serves_host(&host) || !site.serves_path(path) {
            continue;
        }
        let rank = (site.prefix.len(), !site.hosts.is_empty());
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
        .or_else(|| sites.iter().position(|s| s.name.is_none()))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The exchanger of a site's `token-exchange`, as keygate's client.
fn exchanger(
    config: &Config,
    exchange: Option<&TokenExchangeConfig>,
    provider: &Arc<Provider>,
) -> Option<TokenExchanger> {
    exchange.map(|e| {
        TokenExchanger::new(
            Arc::clone(provider),
            ExchangeSettings {
                audience: e.audience.clone(),
                scopes: e.scopes.clone(),
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                cache_size: config.token_cache_size,
            },
        )
    })
}

fn rules(
    config: &Config,
    resources: &[keygate_core::config::Resource],
    match_claims: &BTreeMap<String, String>,
) -> Result<RuleSet, GatewayError> {
    RuleSet::new(
        resources,
        match_claims,
        RuleOptions {
            default_deny: config.enable_default_deny,
            case_insensitive: config.case_insensitive_paths,
        },
    )
    .map_err(GatewayError::from)
}

type Headers = (Vec<(HeaderName, HeaderValue)>, Vec<(String, HeaderName)>);

fn headers(
    static_headers: &BTreeMap<String, String>,
    add_claims: &[String],
    headers_key: &'static str,
    claims_key: &'static str,
) -> Result<Headers, GatewayError> {
    let mut out = Vec::new();
    for (name, value) in static_headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|e| GatewayError::config(headers_key, e))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|e| GatewayError::config(headers_key, e))?;
        out.push((name, value));
    }
    let mut claims = Vec::new();
    for claim in add_claims {
        let suffix = claim_header_suffix(claim);
        let name = HeaderName::try_from(format!("x-auth-{suffix}")).map_err(|_| {
            GatewayError::config(claims_key, format!("`{claim}` cannot be a header name"))
        })?;
        if suffix.is_empty() {
            return Err(GatewayError::config(
                claims_key,
                format!("`{claim}` cannot be a header name"),
            ));
        }
        debug_assert!(is_identity_header(name.as_str()));
        claims.push((claim.clone(), name));
    }
    Ok((out, claims))
}

/// `given_name` → `Given-Name`: the `X-Auth-` suffix of an `add-claims` header.
pub(crate) fn claim_header_suffix(claim: &str) -> String {
    claim
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites(yaml: &str) -> Vec<Site> {
        let mut config: Config = serde_yaml_ng::from_str(&format!(
            "discovery-url: http://127.0.0.1:1/realms/acme\nclient-id: keygate\n{yaml}"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        config.validate().unwrap_or_else(|e| panic!("{e:?}"));
        let gw = crate::Gateway::new(config).unwrap_or_else(|e| panic!("{e}"));
        let gw = Arc::try_unwrap(gw).unwrap_or_else(|_| panic!("shared"));
        gw.sites
    }

    fn name(sites: &[Site], host: &str, path: &str) -> String {
        match choose(sites, Some(host), path) {
            Some(i) => sites[i].name.clone().unwrap_or_else(|| "default".into()),
            None => "none".into(),
        }
    }

    #[test]
    fn chooses_by_host_then_longest_prefix() {
        let s = sites(
            "upstream-url: http://127.0.0.1:9\nupstreams:\n\
             - {name: orders, url: 'http://127.0.0.1:10', path-prefix: /orders}\n\
             - {name: history, url: 'http://127.0.0.1:11', path-prefix: /orders/history}\n\
             - {name: billing, url: 'http://127.0.0.1:12', hosts: [billing.example.com]}\n\
             - {name: tenants, url: 'http://127.0.0.1:13', hosts: ['*.tenants.example.com'], path-prefix: /orders}\n",
        );
        assert_eq!(name(&s, "api.example.com", "/orders"), "orders");
        assert_eq!(name(&s, "api.example.com", "/orders/1"), "orders");
        assert_eq!(name(&s, "api.example.com", "/ordersx"), "default");
        assert_eq!(name(&s, "api.example.com", "/orders/history/2"), "history");
        assert_eq!(name(&s, "Billing.Example.com:8443", "/anything"), "billing");
        assert_eq!(name(&s, "billing.example.com.", "/orders/1"), "orders");
        assert_eq!(name(&s, "a.tenants.example.com", "/orders/1"), "tenants");
        assert_eq!(name(&s, "tenants.example.com", "/orders/1"), "orders");
        assert_eq!(name(&s, "xtenants.example.com", "/orders/1"), "orders");
    }

    #[test]
    fn without_upstream_url_an_unmatched_request_has_no_upstream() {
        let s = sites(
            "upstreams:\n- {name: orders, url: 'http://127.0.0.1:10', path-prefix: /orders, strip-prefix: true}\n",
        );
        assert_eq!(name(&s, "h", "/orders/7"), "orders");
        assert_eq!(name(&s, "h", "/other"), "none");
        assert_eq!(s[0].upstream_path("/orders/7"), "/7");
        assert_eq!(s[0].upstream_path("/orders"), "/");
    }

    #[test]
    fn the_claim_header_suffix_is_title_case() {
        assert_eq!(claim_header_suffix("given_name"), "Given-Name");
        assert_eq!(claim_header_suffix("email"), "Email");
        assert_eq!(claim_header_suffix("a.b:c"), "A-B-C");
    }
}
