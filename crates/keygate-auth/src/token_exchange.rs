//! Token exchange toward one upstream (RFC 8693, Keycloak's standard token
//! exchange): the caller's access token is exchanged for one whose audience
//! is just that upstream, so the upstream never receives a token that
//! another service would also accept.
//!
//! Each upstream with `token-exchange` has one [`TokenExchanger`]. Exchanged
//! tokens are cached by the SHA-256 of the caller's token until shortly
//! before they expire; concurrent requests with the same token wait for one
//! exchange. A refusal is cached briefly too (a misconfigured client must
//! not cost one provider call per request), an unreachable provider is not:
//! the next request asks again. The caller never gets its own token
//! forwarded instead: a refusal is a 403, an outage a 503.

use crate::grants::{GrantError, Grants};
use crate::provider::Provider;
use keygate_core::Secret;
use keygate_core::breaker::shared_while_up;
use moka::future::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a refusal is remembered for one caller token.
pub const REFUSAL_TTL: Duration = Duration::from_secs(10);

/// The lifetime assumed when the provider names none.
const DEFAULT_LIFETIME: u64 = 60;

/// What one upstream's exchange asks for.
#[derive(Clone, Debug)]
pub struct ExchangeSettings {
    /// The audience the exchanged token is for (the upstream's client id).
    pub audience: String,
    /// Scopes to request (Keycloak: the optional client scope whose
    /// Audience mapper makes `audience` available to keygate's client).
    pub scopes: Vec<String>,
    /// keygate's client id, the requesting client.
    pub client_id: String,
    /// keygate's client secret.
    pub client_secret: Secret,
    /// Cached exchanged tokens at most.
    pub cache_size: u64,
}

/// Why no exchanged token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The provider refused the exchange (for the log: the OAuth error and
    /// the provider's description; never sent to the client).
    #[error("the provider refused the token exchange: {0}")]
    Refused(String),
    /// The provider could not be asked.
    #[error("the provider is unavailable for the token exchange")]
    Unavailable,
}

/// One exchange's outcome, as cached.
#[derive(Debug)]
enum Outcome {
    Token { token: Secret, renew_at: Instant },
    Refused { why: String, until: Instant },
}

impl Outcome {
    fn until(&self) -> Instant {
        match self {
            Outcome::Token { renew_at, .. } => *renew_at,
            Outcome::Refused { until, .. } => *until,
        }
    }
}

struct UntilRenewal;

impl moka::Expiry<[u8; 32], Arc<Outcome>> for UntilRenewal {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Outcome>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until().saturating_duration_since(created_at))
    }
}

/// Exchanges callers' tokens for one upstream's audience, with a cache.
pub struct TokenExchanger {
    grants: Grants,
    settings: ExchangeSettings,
    cache: Cache<[u8; 32], Arc<Outcome>>,
}

impl std::fmt::Debug for TokenExchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchanger")
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

impl TokenExchanger {
    /// An exchanger at `provider`'s token endpoint.
    pub fn new(provider: Arc<Provider>, settings: ExchangeSettings) -> Self {
        let cache = Cache::builder()
            .max_capacity(settings.cache_size)
            .expire_after(UntilRenewal)
            .build();
        TokenExchanger {
            grants: Grants::new(provider),
            settings,
            cache,
        }
    }

    /// The audience tokens are exchanged for.
    pub fn audience(&self) -> &str {
        &self.settings.audience
    }

    /// The token to forward instead of `subject`: cached, or exchanged once
    /// however many requests ask at the same time.
    pub async fn exchange(&self, subject: &Secret) -> Result<Secret, ExchangeError> {
        let key = sha256(subject.expose().as_bytes());
        // Twice at most: an entry read in the instant it expires is dropped
        // and asked for again.
        for _ in 0..2 {
            let mut fresh = false;
            // Concurrent first uses share one exchange, except while the
            // provider is failing: then each request asks its breaker, which
            // lets one probe and answers the rest at once, where sharing
            // would make them all wait for the probe.
            let ask = async {
                fresh = true;
                self.ask(subject).await.map(Arc::new)
            };
            let outcome = shared_while_up(&self.cache, key, self.grants.is_up(), ask)
                .await
                .map_err(|e| (*e).clone())?;
            metrics::counter!("keygate_token_exchange_cache_total",
                "result" => if fresh { "miss" } else { "hit" })
            .increment(1);
            if outcome.until() <= Instant::now() && !fresh {
                self.cache.invalidate(&key).await;
                continue;
            }
            return match &*outcome {
                Outcome::Token { token, .. } => Ok(token.clone()),
                Outcome::Refused { why, .. } => Err(ExchangeError::Refused(why.clone())),
            };
        }
        Err(ExchangeError::Unavailable)
    }

    /// One exchange at the provider; a refusal becomes a cached outcome,
    /// an outage an error (not cached).
    async fn ask(&self, subject: &Secret) -> Result<Outcome, ExchangeError> {
        let s = &self.settings;
        let result = self
            .grants
            .token_exchange(
                &s.client_id,
                &s.client_secret,
                subject,
                &s.audience,
                &s.scopes,
            )
            .await;
        match result {
            Ok(tokens) => {
                let lifetime = tokens.expires_in.unwrap_or(DEFAULT_LIFETIME);
                Ok(Outcome::Token {
                    token: tokens.access_token,
                    renew_at: Instant::now() + Duration::from_secs(renew_after(lifetime)),
                })
            }
            Err(GrantError::Rejected { error, description }) => {
                let why = match description {
                    Some(d) => format!("{error}: {d}"),
                    None => error,
                };
                tracing::warn!(
                    audience = %s.audience,
                    client_id = %s.client_id,
                    provider_said = %why,
                    "the provider refused to exchange a caller's token for the upstream's \
                     audience; the request is refused (docs/keycloak.md#token-exchange)"
                );
                Ok(Outcome::Refused {
                    why,
                    until: Instant::now() + REFUSAL_TTL,
                })
            }
            Err(e) => {
                tracing::warn!(audience = %s.audience, error = %e, "token exchange failed");
                Err(ExchangeError::Unavailable)
            }
        }
    }
}

/// Seconds after which an exchanged token of `lifetime` seconds is renewed:
/// a tenth of its life before it expires, at least 5 s and at most 30 s
/// before, and never later than its half-life for very short tokens.
fn renew_after(lifetime: u64) -> u64 {
    let margin = (lifetime / 10).clamp(5, 30);
    lifetime.saturating_sub(margin).max(lifetime / 2)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_shortly_before_expiry() {
        assert_eq!(renew_after(300), 270);
        assert_eq!(renew_after(3600), 3570);
        assert_eq!(renew_after(60), 54);
        assert_eq!(renew_after(8), 4);
        assert_eq!(renew_after(0), 0);
    }
}
