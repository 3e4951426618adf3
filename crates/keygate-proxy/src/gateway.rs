//! The gateway: everything a request needs, built once from the config.

use crate::error::GatewayError;
use http::HeaderName;
use keygate_auth::{JwtVerifier, Provider, ProviderSettings, VerifierSettings};
use keygate_core::config::Config;
use keygate_keys::ApiKeys;
use std::sync::Arc;

/// Shared, immutable per-process state of the pipeline.
pub struct Gateway {
    /// The validated configuration.
    pub config: Config,
    /// Bearer JWT verification with the top-level audiences (the default
    /// site's, and the login's and key pages').
    pub verifier: JwtVerifier,
    /// The upstreams: `upstreams:` in order, then the top-level
    /// `upstream-url` when set ([`crate::sites`]).
    pub sites: Vec<crate::sites::Site>,
    /// Whether the listener serves TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// API keys, when a server secret is configured.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Browser sessions, when `encryption-key` is set.
    pub sessions: Option<crate::session::Sessions>,
    /// The Redis shared by replicas, when `redis-url` is set.
    pub redis: Option<keygate_store::Redis>,
    /// `pass-override-headers`, parsed: the override headers let through.
    pub override_headers: Vec<HeaderName>,
    /// OpenTelemetry tracing is on (`otel-endpoint`).
    pub tracing: bool,
    /// The CORS policy, when `cors-origins` or `cors-origin-patterns` is set.
    pub cors: Option<crate::cors::Cors>,
    /// The callers' rate limiter, when `rate-limit-subject` or
    /// `rate-limit-address` is set.
    pub limiter: Option<keygate_keys::Limiter>,
    /// DPoP proofs and their replay memory.
    pub dpop: crate::dpop::Dpop,
}

impl Gateway {
    /// Builds the gateway from a validated config (see `Config::validate`).
    /// Starts nothing; [`Gateway::start_background`] starts the key refresh.
    pub fn new(config: Config) -> Result<Arc<Self>, GatewayError> {
        Self::assemble(config, None).map(Arc::new)
    }

    /// Builds the gateway and opens the API-key store (when API keys are on).
    pub async fn build(config: Config) -> Result<Arc<Self>, GatewayError> {
        Self::build_after(config, None).await
    }

    /// Builds the gateway that replaces `previous` on a reload. What must
    /// outlive a reload is taken over: the provider with its loaded keys
    /// (when the provider settings are the same) and the browser sessions
    /// ended by back-channel logout. Everything else is built anew.
    pub async fn build_after(
        config: Config,
        previous: Option<&Gateway>,
    ) -> Result<Arc<Self>, GatewayError> {
        let mut gateway = Self::assemble(config, previous)?;
        gateway.api_keys = ApiKeys::from_config(
            &gateway.config,
            Arc::clone(gateway.verifier.provider()),
            gateway.redis.clone(),
        )
        .await
        .map_err(|e| GatewayError::config("store-url", e))?
        .map(Arc::new);
        Ok(Arc::new(gateway))
    }

    /// Whether this gateway's provider was taken over from the one it
    /// replaced (same settings, keys already loaded).
    pub fn same_provider(&self, other: &Gateway) -> bool {
        Arc::ptr_eq(self.verifier.provider(), other.verifier.provider())
    }

    fn assemble(config: Config, previous: Option<&Gateway>) -> Result<Self, GatewayError> {
        // Install the metrics recorder before anything records.
        crate::metrics::handle();
        let discovery_url = config.discovery_url.clone().unwrap_or_default();
        if config.skip_openid_provider_tls_verify {
            tracing::warn!(
                "skip-openid-provider-tls-verify is ON: keygate accepts ANY certificate from the provider; \
                 a network attacker can then forge the provider's keys. Never use this in production."
            );
        }
        let same_provider = |old: &Config| {
            old.discovery_url == config.discovery_url
                && old.jwks_refresh_interval == config.jwks_refresh_interval
                && old.jwks_min_refresh_interval == config.jwks_min_refresh_interval
                && old.openid_provider_timeout == config.openid_provider_timeout
                && old.skip_openid_provider_tls_verify == config.skip_openid_provider_tls_verify
        };
        let provider = match previous {
            Some(old) if same_provider(&old.config) => Arc::clone(old.verifier.provider()),
            _ => Provider::new(ProviderSettings {
                discovery_url,
                refresh_interval: config.jwks_refresh_interval,
                min_refresh_interval: config.jwks_min_refresh_interval,
                timeout: config.openid_provider_timeout,
                skip_tls_verify: config.skip_openid_provider_tls_verify,
            })
            .map_err(|e| GatewayError::config("discovery-url", e))?,
        };
        let settings = VerifierSettings {
            audiences: config.access_token_audience.clone(),
            algorithms: config.signing_algorithms.clone(),
            leeway: config.clock_skew,
            max_token_size: config.max_token_size,
            cache_size: config.token_cache_size,
            authorized_parties: config.access_token_azp.clone(),
            introspection: config.token_introspection,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
        };
        let verifier = JwtVerifier::new(Arc::clone(&provider), settings.clone())
            .map_err(|e| GatewayError::config("signing-algorithms", e))?;
        let mut sites = Vec::with_capacity(config.upstreams.len() + 1);
        for u in &config.upstreams {
            sites.push(crate::sites::Site::from_upstream(
                &config, u, &provider, &settings,
            )?);
        }
        if config
            .upstream_url
            .as_deref()
            .is_some_and(|u| !u.is_empty())
        {
            sites.push(crate::sites::Site::default_site(&config, &provider)?);
        }
        if sites.is_empty() {
            // `validate` refuses this too; `site()` relies on it.
            return Err(GatewayError::config(
                "upstream-url",
                "keygate needs an upstream: set upstream-url or list upstreams",
            ));
        }
        let mut override_headers = Vec::new();
        for name in &config.pass_override_headers {
            if !crate::hygiene::is_override_header(name) {
                return Err(GatewayError::config(
                    "pass-override-headers",
                    format!(
                        "`{name}` is not a method- or URL-override header keygate knows ({})",
                        crate::hygiene::METHOD_OVERRIDE_HEADERS
                            .iter()
                            .chain(crate::hygiene::URL_OVERRIDE_HEADERS)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let name = HeaderName::try_from(name.to_ascii_lowercase())
                .map_err(|e| GatewayError::config("pass-override-headers", e))?;
            override_headers.push(name);
        }
        let cors = crate::cors::Cors::from_config(&config)?;
        let tls = config.tls_cert.is_some();
        let redis = keygate_store::Redis::from_config(&config)?;
        let mut sessions = crate::session::Sessions::from_config(
            &config,
            Arc::clone(verifier.provider()),
            redis.clone(),
        )?;
        if let (Some(new), Some(old)) = (&mut sessions, previous.and_then(|p| p.sessions.as_ref()))
        {
            new.take_over_logouts(old);
        }
        let limiter = (config.rate_limit_subject.is_some() || config.rate_limit_address.is_some())
            .then(|| keygate_keys::Limiter::new(redis.clone()));
        let tracing = config.otel_endpoint.is_some();
        let dpop = crate::dpop::Dpop::from_config(&config, &verifier, redis.clone());
        Ok(Gateway {
            config,
            verifier,
            sites,
            tls,
            api_keys: None,
            sessions,
            redis,
            override_headers,
            tracing,
            cors,
            limiter,
            dpop,
        })
    }

    /// The site phase 2 chose for the request.
    pub fn site(&self, ctx: &crate::context::RequestCtx) -> &crate::sites::Site {
        // `ctx.site` is 0 or the index phase 2 chose from these sites, and
        // there is always one: `assemble` refuses a gateway without.
        &self.sites[ctx.site]
    }

    /// Whether keygate sets or reads a header of this (lower-case) name
    /// because of its config: a `headers:` entry or the API-key header.
    pub fn is_configured_header(&self, name: &str) -> bool {
        self.sites
            .iter()
            .flat_map(|s| &s.static_headers)
            .any(|(n, _)| n.as_str() == name)
            || self.config.api_keys.header.eq_ignore_ascii_case(name)
    }

    /// Whether the TCP peer is one of `trusted-proxies`, whose forwarding
    /// headers (`X-Forwarded-*`, `X-Original-*`) keygate believes.
    pub fn trusted_peer(&self, ip: std::net::IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Starts the background work: the provider's key loading and refresh,
    /// and metrics upkeep. Aborting the returned task stops both.
    pub fn start_background(&self) -> tokio::task::JoinHandle<()> {
        /// Aborts the key-refresh task when the returned task is aborted.
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let keys = AbortOnDrop(self.verifier.provider().start());
        let api_keys = self.api_keys.clone();
        let changes = api_keys
            .clone()
            .map(|k| AbortOnDrop(tokio::spawn(k.watch_store_changes())));
        let keepalive = api_keys
            .clone()
            .map(|k| AbortOnDrop(tokio::spawn(k.run_offline_keepalive())));
        tokio::spawn(async move {
            let _keys = keys;
            let _changes = changes;
            let _keepalive = keepalive;
            // Histograms keep raw samples until upkeep folds them into their
            // buckets; without it memory would grow with every request.
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                crate::metrics::handle().run_upkeep();
                if let Some(keys) = &api_keys {
                    keys.flush_last_used().await;
                }
            }
        })
    }
}
