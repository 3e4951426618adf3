//! The OpenID provider: discovery, and its signing keys (JWKS).
//!
//! Keys are fetched at start-up (retrying with back-off while the provider is
//! down), refreshed in the background, and re-fetched at once when a token
//! names an unknown `kid`: one fetch at a time (single-flight) and at most one
//! per `min_refresh_interval`, so a flood of forged `kid`s costs the provider
//! at most one request per interval. Once loaded, keys are never dropped
//! because the provider is unreachable: an outage keeps serving cached keys.
//!
//! Every call to the provider — discovery, keys, and through
//! [`Provider::post_form`] the token, device, revocation and introspection
//! endpoints — waits at most `openid-provider-timeout` and goes through one
//! [`Breaker`]: while the provider fails, one call at a time probes it and
//! the others fail at once (503 for what needs it), so an outage costs one
//! timeout, not one per request, and keygate uses the provider again within
//! [`BREAKER_OPEN`] of its return.

use crate::oauth::{self, Answer, Unreachable};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use keygate_core::Secret;
use keygate_core::breaker::{Breaker, BreakerStats};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long calls to the provider fail fast after it failed, before one is
/// let through to probe it.
pub const BREAKER_OPEN: Duration = Duration::from_millis(500);

/// Settings for [`Provider`].
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// Issuer URL, with or without `/.well-known/openid-configuration`.
    pub discovery_url: String,
    /// Background refresh period.
    pub refresh_interval: Duration,
    /// Least time between two fetches triggered by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// Timeout of each request to the provider.
    pub timeout: Duration,
    /// Accept any TLS certificate (dangerous; for development only).
    pub skip_tls_verify: bool,
}

/// The parts of the discovery document keygate uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    /// `issuer`: every token's `iss` must equal it.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `token_endpoint`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// `authorization_endpoint`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// `device_authorization_endpoint` (RFC 8628).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// `revocation_endpoint` (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// `introspection_endpoint` (RFC 7662).
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// `end_session_endpoint` (RP-initiated logout).
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// One verification key.
pub struct VerifyKey {
    /// The key.
    pub key: DecodingKey,
    /// The JWK's `alg`, when it names one: the token must use exactly it.
    pub alg: Option<Algorithm>,
}

/// Loaded provider state: its metadata and keys by `kid`.
pub struct Keys {
    /// The discovery document.
    pub metadata: Metadata,
    /// Keys by `kid` (keys without a `kid` are stored under "").
    pub by_kid: HashMap<String, VerifyKey>,
    /// Increases with every successful fetch.
    pub generation: u64,
}

/// Health of the provider connection, for `/oauth/health`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProviderHealth {
    /// The keys have been loaded at least once.
    pub keys_loaded: bool,
    /// Number of keys held.
    pub keys: usize,
    /// Seconds since the last successful fetch.
    pub last_refresh_age_secs: Option<u64>,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
}

/// The provider and its cached keys. Cheap to share (`Arc`).
pub struct Provider {
    settings: ProviderSettings,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<Keys>>>,
    status: RwLock<(Option<Instant>, Option<String>)>,
    /// When the keys were last fetched, and whether that worked.
    fetch_lock: Mutex<Option<LastFetch>>,
    breaker: Breaker,
}

/// The last fetch of the keys.
#[derive(Clone, Copy)]
struct LastFetch {
    at: Instant,
    ok: bool,
}

/// Why a fetch failed; logged, never sent to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Network or HTTP failure.
    #[error("request to {url} failed: {source}")]
    Http {
        /// What was fetched.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The discovery document's issuer differs from the configured one.
    #[error("discovery document says issuer `{found}` but discovery-url is `{expected}`")]
    IssuerMismatch {
        /// From the configuration.
        expected: String,
        /// From the document.
        found: String,
    },
    /// The JWKS held no usable signing key.
    #[error("the provider's JWKS holds no usable signing key")]
    NoKeys,
    /// The provider failed recently: the call was not made (see [`Breaker`]).
    #[error("{0}")]
    FailingFast(keygate_core::breaker::Open),
}

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

impl Provider {
    /// Creates the provider client; nothing is fetched yet (see [`Provider::start`]).
    pub fn new(settings: ProviderSettings) -> Result<Arc<Self>, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")));
        if settings.skip_tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        Ok(Arc::new(Provider {
            http: builder.build()?,
            settings,
            keys: RwLock::new(None),
            status: RwLock::new((None, None)),
            fetch_lock: Mutex::new(None),
            breaker: Breaker::new("provider", BREAKER_OPEN),
        }))
    }

    /// The HTTP client used for the provider. Calls made with it directly
    /// bypass the breaker: prefer [`Provider::post_form`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// [`oauth::post_form`] to one of the provider's endpoints, through the
    /// breaker: refused at once while the provider is failing, except for
    /// the one probe. An OAuth error answer is an answer: the provider is up.
    pub async fn post_form(
        &self,
        url: &str,
        client: Option<(&str, &Secret)>,
        form: &[(&str, &str)],
    ) -> Result<Answer, Unreachable> {
        let call = self
            .breaker
            .enter()
            .map_err(|open| Unreachable(open.to_string()))?;
        let result = oauth::post_form(&self.http, url, client, form).await;
        match &result {
            Ok(_) => call.succeeded(),
            Err(e) => call.failed(e),
        }
        result
    }

    /// Whether the provider answers (its breaker is closed).
    pub fn is_up(&self) -> bool {
        self.breaker.is_closed()
    }

    /// How many calls probed a failing provider, and how many failed fast.
    pub fn breaker_stats(&self) -> BreakerStats {
        self.breaker.stats()
    }

    /// The expected issuer, from the configuration.
    pub fn configured_issuer(&self) -> &str {
        let url = self.settings.discovery_url.trim_end_matches('/');
        url.strip_suffix(WELL_KNOWN)
            .unwrap_or(url)
            .trim_end_matches('/')
    }

    /// The loaded keys, if any. Cheap: one read lock and an `Arc` clone.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// Installs `keys` as if fetched (unit tests of the verifiers).
    #[cfg(test)]
    pub(crate) fn install_keys(&self, keys: Keys) {
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::new(keys));
        }
    }

    /// Starts the background task: load (retrying with back-off until it
    /// works), then refresh every `refresh_interval`. Returns at once.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                match this.fetch_now().await {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        tokio::time::sleep(this.settings.refresh_interval).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot load the provider's keys");
                        tokio::time::sleep(backoff).await;
                        let cap = this.settings.refresh_interval.min(Duration::from_secs(30));
                        backoff = (backoff * 2).min(cap);
                    }
                }
            }
        })
    }

    /// Health for `/oauth/health`.
    pub fn health(&self) -> ProviderHealth {
        let keys = self.keys();
        let (last_ok, last_error) = self.status.read().map(|s| s.clone()).unwrap_or_default();
        ProviderHealth {
            keys_loaded: keys.is_some(),
            keys: keys.map(|k| k.by_kid.len()).unwrap_or(0),
            last_refresh_age_secs: last_ok.map(|t| t.elapsed().as_secs()),
            last_error,
        }
    }

    /// Called when a token names a `kid` not in the key set of generation
    /// `seen_generation`. Waits for (or performs) one fetch that started after
    /// the caller looked, respecting `min_refresh_interval` after a fetch that
    /// worked. Returns the key set to look in again, or `Err` when the
    /// provider could not be reached (the caller cannot tell a rotated key
    /// from a forged one then).
    ///
    /// Callers never line up for a fetch each: one that waited for the lock
    /// while another fetched takes that fetch's outcome. While the provider
    /// fails, the fetch goes through the breaker (one probe, the rest fail
    /// at once) with no pause first, so keys are read again as soon as the
    /// provider answers.
    pub async fn refresh_for_unknown_kid(&self, seen_generation: u64) -> Result<Arc<Keys>, ()> {
        let arrived = Instant::now();
        let mut last = self.fetch_lock.lock().await;
        if let Some(keys) = self.keys()
            && keys.generation > seen_generation
        {
            // Someone fetched after the caller looked: look there, fetch no more.
            return Ok(keys);
        }
        if let Some(done) = *last {
            if done.at >= arrived {
                // A fetch ended while this caller waited: its answer stands.
                return match done.ok {
                    true => self.keys().ok_or(()),
                    false => Err(()),
                };
            }
            if done.ok {
                let next = done.at + self.settings.min_refresh_interval;
                tokio::time::sleep_until(next.into()).await;
            }
        }
        let result = self.fetch_keys_locked().await;
        *last = Some(LastFetch {
            at: Instant::now(),
            ok: result.is_ok(),
        });
        match result {
            Ok(()) => self.keys().ok_or(()),
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the provider's keys for an unknown kid failed");
                Err(())
            }
        }
    }

    async fn fetch_now(&self) -> Result<(), FetchError> {
        let mut last = self.fetch_lock.lock().await;
        let result = self.fetch_keys_locked().await;
        *last = Some(LastFetch {
            at: Instant::now(),
            ok: result.is_ok(),
        });
        result
    }

    /// Discovery (when not yet done) and JWKS. Caller holds `fetch_lock`.
    async fn fetch_keys_locked(&self) -> Result<(), FetchError> {
        let result = self.fetch_inner().await;
        metrics::counter!("keygate_jwks_fetches_total", "result" => if result.is_ok() { "ok" } else { "error" })
            .increment(1);
        if let Ok(mut status) = self.status.write() {
            match &result {
                Ok(()) => *status = (Some(Instant::now()), None),
                Err(e) => status.1 = Some(e.to_string()),
            }
        }
        result
    }

    async fn fetch_inner(&self) -> Result<(), FetchError> {
        let previous = self.keys();
        let metadata = match &previous {
            Some(k) => k.metadata.clone(),
            None => self.discover().await?,
        };
        let url = metadata.jwks_uri.clone();
        let set: JwkSet = self.get_json(&url).await?;
        let by_kid = convert_keys(&set.keys);
        if by_kid.is_empty() {
            return Err(FetchError::NoKeys);
        }
        let generation = previous.map(|k| k.generation + 1).unwrap_or(1);
        tracing::debug!(keys = by_kid.len(), generation, "provider keys loaded");
        let keys = Arc::new(Keys {
            metadata,
            by_kid,
            generation,
        });
        if let Ok(mut slot) = self.keys.write() {
            *slot = Some(keys);
        }
        Ok(())
    }

    async fn discover(&self) -> Result<Metadata, FetchError> {
        let expected = self.configured_issuer().to_owned();
        let url = format!("{expected}{WELL_KNOWN}");
        let metadata: Metadata = self.get_json(&url).await?;
        if metadata.issuer.trim_end_matches('/') != expected {
            return Err(FetchError::IssuerMismatch {
                expected,
                found: metadata.issuer,
            });
        }
        Ok(metadata)
    }

    #[tracing::instrument(target = "keygate::trace", name = "provider GET", skip_all, fields(otel.kind = "client", url.full = %url))]
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let call = self.breaker.enter().map_err(FetchError::FailingFast)?;
        let wrap = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let result = async {
            self.http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(wrap)?
                .json()
                .await
                .map_err(wrap)
        }
        .await;
        match &result {
            Ok(_) => call.succeeded(),
            Err(e) => call.failed(e),
        }
        result
    }
}

fn convert_keys(keys: &[Jwk]) -> HashMap<String, VerifyKey> {
    let mut out = HashMap::new();
    for jwk in keys {
        // Encryption keys and symmetric keys never verify a signature here.
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        {
            continue;
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                out.insert(kid, VerifyKey { key, alg });
            }
            Err(e) => {
                tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping a JWK keygate cannot use");
            }
        }
    }
    out
}
