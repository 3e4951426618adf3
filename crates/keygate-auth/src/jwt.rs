//! Bearer JWT validation, exactly in this order:
//! size limit → header parse → algorithm allow-list → key by `kid` →
//! signature → `iss` → `exp`/`nbf`/`iat` (with leeway) → introspection when
//! due → `sub` → `aud` → `azp` → token type.
//! No claim is read before the signature verifies.
//!
//! Keycloak's lightweight access tokens carry no `aud`, `sub`, roles or
//! names: with `token-introspection: auto` (the default) keygate asks the
//! provider's introspection endpoint (RFC 7662) about such a token, with its
//! own client credentials, and checks and uses the claims of the answer.
//! `always` does so for every token; `never` refuses lightweight tokens.
//! Answers are cached by token until its `exp`, and concurrent requests with
//! the same token wait for one introspection.
//!
//! Verified identities are cached until the token's `exp`, in a bounded
//! in-memory cache, so steady traffic pays one signature check per token
//! rather than per request. The cache is keyed by a fast hash of the token
//! under a random per-process key (foldhash), and a hit counts only when
//! the cached identity's token equals the presented one byte for byte: a
//! collision (which nobody can aim for without the key) is a miss, never
//! another caller's identity. A SHA-256 of every token would cost more than
//! the rest of a cached request's checks together.

use crate::error::AuthError;
use crate::grants::{GrantError, Grants};
use crate::provider::{Keys, Provider};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keygate_core::breaker::shared_while_up;
pub use keygate_core::config::TokenIntrospection;
use keygate_core::{AuthMethod, Identity, Secret};
use moka::sync::Cache;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Settings for [`JwtVerifier`].
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// Accepted `aud` values; one must be present.
    pub audiences: Vec<String>,
    /// Accepted algorithms (asymmetric only; names like `RS256`).
    pub algorithms: Vec<String>,
    /// Clock-skew leeway (at most 60 s; the config enforces it).
    pub leeway: Duration,
    /// Tokens longer than this are refused unread.
    pub max_token_size: usize,
    /// Entries in the verified-token cache.
    pub cache_size: u64,
    /// Accepted `azp` values; empty accepts any.
    pub authorized_parties: Vec<String>,
    /// Which tokens are introspected at the provider.
    pub introspection: TokenIntrospection,
    /// keygate's client id, for introspection.
    pub client_id: String,
    /// keygate's client secret, for introspection (empty: none).
    pub client_secret: Secret,
}

type TokenHash = [u8; 32];

/// Verifies bearer JWTs against the provider's keys.
pub struct JwtVerifier {
    provider: Arc<Provider>,
    settings: VerifierSettings,
    algorithms: Vec<Algorithm>,
    /// Verified identities.
    cache: TokenCache,
    grants: Grants,
    introspections: moka::future::Cache<TokenHash, Arc<Introspected>>,
}

/// One introspection answer, kept until the token's `exp`.
struct Introspected {
    expires_at: u64,
    answer: Map<String, Value>,
}

/// Expires a cache entry at the `exp` of the token it is about.
struct UntilExp;

/// A cached value that knows when its token expires.
trait ExpiresAt {
    fn expires_at(&self) -> u64;
}

impl ExpiresAt for Identity {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl ExpiresAt for Introspected {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl<K, V: ExpiresAt> moka::Expiry<K, Arc<V>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Arc<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.expires_at().saturating_sub(now_secs()),
        ))
    }
}

/// Verified identities until their token's `exp`, by token: keyed by a fast
/// hash of the token under a random per-process key (foldhash); a hit
/// counts only when the cached identity's token equals the presented one
/// byte for byte, so a collision is a miss, never another caller's identity.
pub struct TokenCache {
    entries: Cache<u64, Arc<Identity>>,
    keys: foldhash::quality::RandomState,
    leeway: u64,
}

impl TokenCache {
    /// At most `size` identities; `leeway` past `exp` an identity is still
    /// served (the clock-skew allowance the verification itself grants).
    pub fn new(size: u64, leeway: Duration) -> Self {
        TokenCache {
            entries: Cache::builder()
                .max_capacity(size)
                .expire_after(UntilExp)
                .build(),
            keys: foldhash::quality::RandomState::default(),
            leeway: leeway.as_secs(),
        }
    }

    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.keys.hash_one(token.as_bytes())
    }

    /// The identity verified for exactly `token`, while it is valid.
    pub fn get(&self, token: &str) -> Option<Arc<Identity>> {
        let key = self.key(token);
        let identity = self.entries.get(&key)?;
        if identity.access_token.expose().as_bytes() != token.as_bytes() {
            return None;
        }
        // The cache expires entries at `exp`; check again so that an entry
        // read in the instant of expiry is not honoured.
        if identity.expires_at + self.leeway > now_secs() {
            return Some(identity);
        }
        self.entries.invalidate(&key);
        None
    }

    /// Keeps `identity`, verified for `token`, until its `exp`.
    pub fn insert(&self, token: &str, identity: Arc<Identity>) {
        self.entries.insert(self.key(token), identity);
    }
}

impl JwtVerifier {
    /// Creates a verifier. Algorithm names not known to the JWT library are
    /// refused here; `none` and HMAC algorithms are never accepted.
    pub fn new(provider: Arc<Provider>, settings: VerifierSettings) -> Result<Self, String> {
        let algorithms = crate::jws::algorithms(&settings.algorithms)?;
        let cache = TokenCache::new(settings.cache_size, settings.leeway);
        let introspections = moka::future::Cache::builder()
            .max_capacity(settings.cache_size)
            .expire_after(UntilExp)
            .build();
        Ok(JwtVerifier {
            grants: Grants::new(Arc::clone(&provider)),
            provider,
            settings,
            algorithms,
            cache,
            introspections,
        })
    }

    /// The signature algorithms accepted (`signing-algorithms`): the one
    /// list for access, ID and logout tokens.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The provider whose keys this verifier uses.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Verifies `token` and returns the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if token.len() > self.settings.max_token_size {
            return Err(AuthError::TooLarge);
        }
        if let Some(identity) = self.cache.get(token) {
            metrics::counter!("keygate_token_cache_total", "result" => "hit").increment(1);
            return Ok(identity);
        }
        metrics::counter!("keygate_token_cache_total", "result" => "miss").increment(1);
        // Boxed: the uncached path (JWKS refresh, introspection) has a large
        // future that every cached request would otherwise carry.
        let identity = Arc::new(Box::pin(self.verify_uncached(token)).await?);
        self.cache.insert(token, Arc::clone(&identity));
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, AuthError> {
        let header = crate::jws::header(token).map_err(|_| AuthError::Malformed)?;
        let alg = crate::jws::allowed(&header, &self.algorithms)
            .ok_or_else(|| AuthError::UnsupportedAlgorithm(truncate(&header.alg)))?;
        let kid = header.kid.unwrap_or_default();

        let keys = self.provider.keys().ok_or(AuthError::ProviderUnavailable)?;
        let keys = if keys.by_kid.contains_key(&kid) {
            keys
        } else {
            self.provider
                .refresh_for_unknown_kid(keys.generation)
                .await
                .map_err(|()| AuthError::ProviderUnavailable)?
        };
        let signed = self.check_signature(token, alg, &kid, &keys)?;
        let gap = lightweight_gap(&signed);
        let can_introspect = !self.settings.client_secret.expose().is_empty();
        let claims = match (self.settings.introspection, gap) {
            (TokenIntrospection::Always, _) | (TokenIntrospection::Auto, Some(_))
                if can_introspect =>
            {
                self.introspect(
                    token,
                    sha256(token.as_bytes()),
                    &signed,
                    &keys.metadata.issuer,
                )
                .await?
            }
            (_, Some(claim)) => return Err(AuthError::Lightweight(claim)),
            (_, None) => signed,
        };
        self.check_claims(&claims)?;
        Ok(Identity::from_claims(
            claims,
            Secret::new(token),
            AuthMethod::Jwt,
        ))
    }

    /// Signature, `iss`, `exp`/`nbf`/`iat`: what the token proves by itself.
    fn check_signature(
        &self,
        token: &str,
        alg: Algorithm,
        kid: &str,
        keys: &Keys,
    ) -> Result<Map<String, Value>, AuthError> {
        let key = crate::jws::key_for(keys, Some(kid), alg).map_err(|e| match e {
            crate::jws::KeyError::Unknown => AuthError::UnknownKey(keys.metadata.issuer.clone()),
            crate::jws::KeyError::Algorithm => AuthError::UnsupportedAlgorithm(format!("{alg:?}")),
        })?;
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `iss` is compared below, once the signature has verified, so that
        // a mismatch can name the token's issuer.
        // `aud` and `sub` are checked after introspection, which a
        // lightweight token (it has neither) needs first.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if iss != keys.metadata.issuer {
            return Err(wrong_issuer(&keys.metadata.issuer, iss));
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
            && iat > now_secs() + self.settings.leeway.as_secs()
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }

    /// The provider's claims for a token whose signature verified: its
    /// introspection answer, which must say `active` (and name the same
    /// issuer, when it names one). Bounded by the token's own `exp`.
    async fn introspect(
        &self,
        token: &str,
        hash: TokenHash,
        signed: &Map<String, Value>,
        issuer: &str,
    ) -> Result<Map<String, Value>, AuthError> {
        let exp = signed.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let ask = async {
            let answer = self
                .grants
                .introspect(
                    &self.settings.client_id,
                    &self.settings.client_secret,
                    token,
                )
                .await?;
            let active = answer.get("active") == Some(&Value::Bool(true));
            metrics::counter!("keygate_introspections_total",
                    "result" => if active { "active" } else { "inactive" })
            .increment(1);
            Ok::<_, GrantError>(Arc::new(Introspected {
                expires_at: exp,
                answer,
            }))
        };
        // Concurrent requests with one token share one introspection, except
        // while the provider is failing: then each asks its breaker, which
        // lets one probe and answers the rest at once.
        let up = self.provider.is_up();
        let introspected = shared_while_up(&self.introspections, hash, up, ask).await;
        let introspected = introspected.map_err(|e| {
            metrics::counter!("keygate_introspections_total", "result" => "error").increment(1);
            match &*e {
                GrantError::Rejected { .. } => tracing::error!(
                    client_id = %self.settings.client_id,
                    error = %e,
                    "the provider refused keygate's client credentials at its introspection \
                     endpoint: check client-id and client-secret"
                ),
                _ if self.provider.is_up() => {
                    tracing::warn!(error = %e, "token introspection failed")
                }
                // The provider's breaker warned once for the outage.
                _ => tracing::debug!(error = %e, "token introspection failed"),
            }
            AuthError::ProviderUnavailable
        })?;
        let answer = &introspected.answer;
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthError::Inactive);
        }
        if let Some(iss) = answer.get("iss").and_then(Value::as_str)
            && iss != issuer
        {
            return Err(wrong_issuer(issuer, iss));
        }
        let mut claims = answer.clone();
        claims.remove("active");
        let answer_exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(exp);
        claims.insert("exp".into(), Value::from(exp.min(answer_exp)));
        Ok(claims)
    }

    /// `sub`, `aud`, `azp` and the token type, on the final claims.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        if !claims.get("sub").is_some_and(Value::is_string) {
            return Err(AuthError::MissingClaim("sub"));
        }
        let aud: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(AuthError::MissingClaim("aud")),
        };
        if !aud
            .iter()
            .any(|a| self.settings.audiences.iter().any(|ok| ok == a))
        {
            let azp = claims.get("azp").and_then(Value::as_str).unwrap_or("-");
            return Err(AuthError::WrongAudience {
                accepted: list_text(self.settings.audiences.iter().map(String::as_str)),
                aud: list_text(aud.into_iter()),
                azp: truncate_to(azp, 64),
            });
        }
        if !self.settings.authorized_parties.is_empty() {
            let azp = claims.get("azp").and_then(Value::as_str).unwrap_or("");
            if !self.settings.authorized_parties.iter().any(|a| a == azp) {
                return Err(AuthError::WrongAuthorizedParty);
            }
        }
        // Keycloak marks ID, refresh and logout tokens with `typ`; none of
        // them may stand in for an access token. A DPoP-bound access token
        // says `DPoP` (and carries `cnf.jkt`, whose proof the proxy checks).
        if let Some(typ) = claims.get("typ").and_then(Value::as_str)
            && !(typ.eq_ignore_ascii_case("Bearer")
                || typ.eq_ignore_ascii_case("at+jwt")
                || (typ.eq_ignore_ascii_case("DPoP") && crate::dpop::bound_key(claims).is_some()))
        {
            return Err(AuthError::WrongTokenType);
        }
        Ok(())
    }
}

/// The claim a lightweight token lacks (`aud` or `sub`), if any.
fn lightweight_gap(claims: &Map<String, Value>) -> Option<&'static str> {
    if !claims.contains_key("aud") {
        Some("aud")
    } else if !claims.contains_key("sub") {
        Some("sub")
    } else {
        None
    }
}

/// `[a, b]`: at most 8 values of at most 64 visible ASCII characters each.
fn list_text<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut items: Vec<String> = values.take(9).map(|v| truncate_to(v, 64)).collect();
    if items.len() > 8 {
        items.truncate(8);
        items.push("...".into());
    }
    format!("[{}]", items.join(", "))
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            _ => "required",
        }),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::UnsupportedAlgorithm("mismatch".into()),
        _ => AuthError::Malformed,
    }
}

/// `iss` of a signature-verified token is not `expected`.
fn wrong_issuer(expected: &str, found: &str) -> AuthError {
    AuthError::WrongIssuer {
        expected: expected.to_owned(),
        found: truncate_to(found, 96),
    }
}

/// Keeps attacker-chosen text short before it reaches an error message.
fn truncate(s: &str) -> String {
    truncate_to(s, 16)
}

/// At most `n` visible ASCII characters of `s` (others dropped).
fn truncate_to(s: &str, n: usize) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(n).collect()
}

fn sha256(data: &[u8]) -> TokenHash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn now_secs() -> u64 {
    keygate_core::unix_now()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    use crate::jws::test_keys;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const AUD: &str = "api";

    fn identity_for(token: &str, expires_at: u64) -> Arc<Identity> {
        let claims = json!({"sub": "alice", "exp": expires_at});
        Arc::new(Identity::from_claims(
            claims.as_object().unwrap().clone(),
            Secret::new(token),
            AuthMethod::Jwt,
        ))
    }

    #[test]
    fn token_cache_serves_only_the_token_it_was_given() {
        let cache = TokenCache::new(100, Duration::from_secs(0));
        let later = now_secs() + 300;
        cache.insert("a.b.c", identity_for("a.b.c", later));
        assert_eq!(cache.get("a.b.c").unwrap().subject, "alice");
        assert!(cache.get("a.b.d").is_none());
        assert!(cache.get("a.b.c ").is_none());
        // An entry whose identity is for another token (what a hash
        // collision would look like) is a miss.
        let key = cache.key("x.y.z");
        cache
            .entries
            .insert(key, identity_for("other.token.here", later));
        assert!(cache.get("x.y.z").is_none());
    }

    #[test]
    fn token_cache_drops_expired_identities() {
        let cache = TokenCache::new(100, Duration::from_secs(0));
        cache.insert("a.b.c", identity_for("a.b.c", now_secs() - 1));
        assert!(cache.get("a.b.c").is_none());
    }

    /// A verifier over the test provider's keys (or none loaded).
    fn verifier(loaded: bool) -> (EncodingKey, JwtVerifier) {
        let provider = Provider::new(crate::ProviderSettings {
            discovery_url: test_keys::ISSUER.into(),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            skip_tls_verify: false,
        })
        .unwrap();
        let (key, keys) = test_keys::pair();
        if loaded {
            provider.install_keys(keys);
        }
        let settings = VerifierSettings {
            audiences: vec![AUD.into()],
            algorithms: crate::jws::ASYMMETRIC
                .iter()
                .map(|a| format!("{a:?}"))
                .collect(),
            leeway: Duration::from_secs(5),
            max_token_size: 16 * 1024,
            cache_size: 100,
            authorized_parties: Vec::new(),
            introspection: TokenIntrospection::Never,
            client_id: "keygate".into(),
            client_secret: Secret::default(),
        };
        (key, JwtVerifier::new(provider, settings).unwrap())
    }

    fn claims() -> Value {
        json!({ "iss": test_keys::ISSUER, "aud": AUD, "sub": "u1", "exp": now_secs() + 300 })
    }

    fn sign(key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[tokio::test]
    async fn a_well_signed_token_verifies_and_its_claims_are_read() {
        let (key, v) = verifier(true);
        let id = v.verify(&sign(&key, &claims())).await.unwrap();
        assert_eq!(id.subject, "u1");
    }

    #[tokio::test]
    async fn alg_none_and_hmac_are_refused_before_any_key_lookup() {
        // No keys are loaded: a lookup would answer ProviderUnavailable.
        let (_, v) = verifier(false);
        let body = b64(&claims().to_string());
        for alg in ["none", "HS256", "HS512"] {
            let token = format!(
                "{}.{body}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}","kid":"k1"}}"#))
            );
            assert_eq!(
                v.verify(&token).await.err(),
                Some(AuthError::UnsupportedAlgorithm(alg.into())),
                "{alg}"
            );
        }
    }

    #[tokio::test]
    async fn tampered_forged_and_foreign_tokens_are_refused() {
        let (key, v) = verifier(true);
        let good = sign(&key, &claims());
        // One claim changed after signing.
        let mut parts: Vec<&str> = good.split('.').collect();
        let altered = b64(&json!({ "iss": test_keys::ISSUER, "aud": AUD, "sub": "admin", "exp": now_secs() + 300 }).to_string());
        parts[1] = &altered;
        assert_eq!(
            v.verify(&parts.join(".")).await.err(),
            Some(AuthError::BadSignature)
        );
        // Signed by another key under the same kid.
        let (other, _) = test_keys::pair();
        assert_eq!(
            v.verify(&sign(&other, &claims())).await.err(),
            Some(AuthError::BadSignature)
        );
        let with = |k: &str, val: Value| {
            let mut c = claims();
            c[k] = val;
            sign(&key, &c)
        };
        assert_eq!(
            v.verify(&with("exp", json!(now_secs() - 60))).await.err(),
            Some(AuthError::Expired)
        );
        assert!(matches!(
            v.verify(&with("iss", json!("http://evil.example")))
                .await
                .err(),
            Some(AuthError::WrongIssuer { .. })
        ));
        assert!(matches!(
            v.verify(&with("aud", json!("other-api"))).await.err(),
            Some(AuthError::WrongAudience { .. })
        ));
        assert_eq!(
            v.verify(&with("typ", json!("ID"))).await.err(),
            Some(AuthError::WrongTokenType)
        );
        assert_eq!(v.verify("a.b").await.err(), Some(AuthError::Malformed));
        assert_eq!(
            v.verify(&"x".repeat(16 * 1024 + 1)).await.err(),
            Some(AuthError::TooLarge)
        );
    }

    #[test]
    fn truncates_attacker_text() {
        assert_eq!(
            truncate("HS256\n\u{1b}[31mxxxxxxxxxxxxxxxxxxxx"),
            "HS256[31mxxxxxxx"
        );
    }
}
