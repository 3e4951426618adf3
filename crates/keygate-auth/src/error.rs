//! Why a credential was not accepted.

use keygate_core::Reason;

/// A credential that could not be verified. The `Display` text is short and
/// safe to send to the client; it never contains the token, and claim values
/// only of a token whose signature verified (its `aud` and `azp`, shortened).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is longer than `max-token-size`.
    #[error("token is too large")]
    TooLarge,
    /// Not three base64url parts, or a header or payload that is not JSON.
    #[error("token is malformed")]
    Malformed,
    /// The header names an algorithm outside the allow-list (`none`, HMAC, …).
    #[error("token algorithm `{0}` is not accepted")]
    UnsupportedAlgorithm(String),
    /// No key of the provider has the token's `kid`, even after re-reading
    /// them. Names the issuer keygate trusts (public: its discovery).
    #[error(
        "token is signed with a key that {0} does not publish: a token of another \
         provider or realm (keygate trusts the issuer of `discovery-url`), or one signed \
         with a key that has since been removed"
    )]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` (or `iat`) is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is not the provider's issuer. Names both (the token's only
    /// once its signature verified, shortened).
    #[error(
        "token issuer {found} is not keygate's provider {expected}: Keycloak writes the URL \
         a token was requested at into `iss`; request tokens at the `discovery-url` keygate \
         uses, or set Keycloak's hostname (docs/keycloak.md#the-issuer)"
    )]
    WrongIssuer {
        /// The provider's issuer.
        expected: String,
        /// The token's `iss`.
        found: String,
    },
    /// `aud` holds none of `access-token-audience`. Names what keygate
    /// accepts and what the (signature-verified) token carries.
    #[error(
        "token audience is not accepted: keygate accepts {accepted}, the token has aud {aud} \
         and azp {azp}; the token's client needs an Audience mapper \
         (docs/keycloak.md#the-audience-mapper)"
    )]
    WrongAudience {
        /// `access-token-audience`, as a list.
        accepted: String,
        /// The token's `aud`, as a list.
        aud: String,
        /// The token's `azp`, or `-`.
        azp: String,
    },
    /// A token without `aud` or `sub` that keygate could not introspect
    /// (`token-introspection: never`, or no `client-secret`).
    #[error(
        "token has no `{0}` claim: a lightweight access token, which keygate introspects \
         when `token-introspection` is `auto` or `always` and `client-secret` is set"
    )]
    Lightweight(&'static str),
    /// The provider's introspection says the token is not active.
    #[error("the provider says the token is not active (revoked, or its session ended)")]
    Inactive,
    /// `azp` is not one of `access-token-azp`.
    #[error("token was issued to a client that is not accepted (azp)")]
    WrongAuthorizedParty,
    /// A required claim is missing.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// An ID, refresh or logout token was presented as an access token.
    #[error("token is not an access token")]
    WrongTokenType,
    /// The provider's keys are not loaded (provider unreachable since start-up).
    #[error("the OpenID provider is unavailable")]
    ProviderUnavailable,
}

impl AuthError {
    /// A stable, short machine-readable reason for logs and metrics labels.
    pub fn reason(&self) -> Reason {
        match self {
            AuthError::TooLarge => Reason::TokenTooLarge,
            AuthError::Malformed => Reason::TokenMalformed,
            AuthError::UnsupportedAlgorithm(_) => Reason::UnsupportedAlgorithm,
            AuthError::UnknownKey(_) => Reason::UnknownKey,
            AuthError::BadSignature => Reason::BadSignature,
            AuthError::Expired => Reason::Expired,
            AuthError::NotYetValid => Reason::NotYetValid,
            AuthError::WrongIssuer { .. } => Reason::WrongIssuer,
            AuthError::WrongAudience { .. } => Reason::WrongAudience,
            AuthError::Lightweight(_) => Reason::LightweightToken,
            AuthError::Inactive => Reason::InactiveToken,
            AuthError::MissingClaim(_) => Reason::MissingClaim,
            AuthError::WrongAuthorizedParty => Reason::WrongAzp,
            AuthError::WrongTokenType => Reason::WrongTokenType,
            AuthError::ProviderUnavailable => Reason::ProviderUnavailable,
        }
    }

    /// True when the failure is ours or the provider's, not the caller's (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::ProviderUnavailable)
    }
}
