//! The errors of the API-key service: why a key was refused
//! ([`KeyError`]), why a management operation failed ([`ManageError`]) and
//! why a device flow gave no key ([`DeviceError`]). Each keeps its cause
//! for the log; none holds HTTP types (the proxy's error edge maps them to
//! responses), and the text of a variant is safe to show the caller.

use crate::limits::Limited;
use keygate_auth::AuthError;
use keygate_auth::grants::GrantError;
use keygate_core::Reason;
use keygate_store::StoreError;

/// Why a key was refused; remembered (here and in Redis) for unknown,
/// revoked, expired and rejected keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    Unknown,
    Revoked,
    Expired,
    /// The provider no longer honours the key's credential (offline session
    /// ended, client secret changed): why, and what to do.
    Rejected(String),
}

impl KeyRefusal {
    /// The form kept in the shared negative cache.
    pub(crate) fn encode(&self) -> String {
        match self {
            KeyRefusal::Unknown => "unknown".into(),
            KeyRefusal::Revoked => "revoked".into(),
            KeyRefusal::Expired => "expired".into(),
            KeyRefusal::Rejected(why) => format!("rejected:{why}"),
        }
    }

    pub(crate) fn decode(text: &str) -> Option<KeyRefusal> {
        Some(match text {
            "unknown" => KeyRefusal::Unknown,
            "revoked" => KeyRefusal::Revoked,
            "expired" => KeyRefusal::Expired,
            other => KeyRefusal::Rejected(other.strip_prefix("rejected:")?.to_owned()),
        })
    }
}

impl From<KeyRefusal> for KeyError {
    fn from(r: KeyRefusal) -> Self {
        match r {
            KeyRefusal::Unknown => KeyError::Unknown,
            KeyRefusal::Revoked => KeyError::Revoked,
            KeyRefusal::Expired => KeyError::Expired,
            KeyRefusal::Rejected(why) => KeyError::Rejected(why),
        }
    }
}

/// Why a request's API key was not honoured.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Wrong shape or checksum: never looked up.
    #[error("malformed API key (wrong shape or checksum)")]
    Malformed,
    /// No record has this key.
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked (or rotated without a grace period).
    #[error("API key has been revoked")]
    Revoked,
    /// The key is past its expiry.
    #[error("API key has expired")]
    Expired,
    /// The provider refused the key's credential (offline session ended,
    /// user disabled or no longer linked, client secret changed); the text
    /// says why and what to do (no provider URL: only its OAuth error and
    /// description).
    #[error("the provider no longer accepts this API key: {0}")]
    Rejected(String),
    /// The key may not use this method.
    #[error("this API key may not use {0}")]
    MethodNotAllowed(String),
    /// The key may not use this route.
    #[error("this API key may not use this route")]
    RouteNotAllowed,
    /// The key may not be used from the client's address.
    #[error("this API key may not be used from this address")]
    NetworkNotAllowed,
    /// Over its rate limit or quota.
    #[error("{}", .0.description)]
    Limited(Limited),
    /// The store cannot be reached and nothing usable is cached.
    #[error("the API-key store is unavailable; try again shortly")]
    StoreUnavailable,
    /// The provider cannot be reached for the exchange.
    #[error("the OpenID provider is unavailable; try again shortly")]
    ProviderUnavailable,
    /// The provider's token for the key does not verify.
    #[error("the provider's token for this API key is not accepted: {0}")]
    TokenNotAccepted(#[source] AuthError),
    /// `keygate token`: a restricted key may not hand out its token.
    #[error("a restricted API key cannot hand out its provider token")]
    Restricted,
    /// `keygate token`: a limited key may not hand out its token.
    #[error(
        "a rate-limited API key cannot hand out its provider token (requests with it would not be counted)"
    )]
    LimitedToken,
}

impl KeyError {
    /// The short reason for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            KeyError::Malformed => Reason::ApiKeyMalformed,
            KeyError::Unknown => Reason::ApiKeyUnknown,
            KeyError::Revoked => Reason::ApiKeyRevoked,
            KeyError::Expired => Reason::ApiKeyExpired,
            KeyError::Rejected(_) => Reason::ApiKeyRejected,
            KeyError::MethodNotAllowed(_) => Reason::ApiKeyMethodNotAllowed,
            KeyError::RouteNotAllowed => Reason::ApiKeyRouteNotAllowed,
            KeyError::NetworkNotAllowed => Reason::ApiKeyNetworkNotAllowed,
            KeyError::Limited(l) => l.reason,
            KeyError::StoreUnavailable => Reason::StoreUnavailable,
            KeyError::ProviderUnavailable => Reason::ProviderUnavailable,
            KeyError::TokenNotAccepted(_) => Reason::ApiKeyTokenRejected,
            KeyError::Restricted => Reason::ApiKeyRestricted,
            KeyError::LimitedToken => Reason::ApiKeyLimited,
        }
    }
}

/// Errors of the management operations (CLI, admin API, self-service).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The request is invalid; the text says why (safe for the caller).
    #[error("{0}")]
    Invalid(String),
    /// No such key (or not the caller's).
    #[error("no such key")]
    NotFound,
    /// A well-formed request the configuration does not allow (a lifetime
    /// over the kind's maximum, no expiry); the text says why.
    #[error("{0}")]
    NotAllowed(String),
    /// The key's state does not allow the request (revoked, personal, or
    /// rotated since); the text says why.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error("key store: {0}")]
    Store(#[from] StoreError),
    /// The provider could not be reached or gave no usable answer.
    #[error("provider: {0}")]
    Provider(#[source] GrantError),
    /// The provider refused the credentials (the OAuth error code, e.g.
    /// `unauthorized_client` for a wrong client secret, reduced to
    /// `[A-Za-z0-9_]`).
    #[error("the provider refused the request ({0})")]
    ProviderRefused(String),
    /// Sealing a new key's secret failed.
    #[error("cannot seal the key's secret: {0}")]
    Crypto(#[from] keygate_auth::apikey::CryptoError),
}

impl ManageError {
    /// The short reason for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            ManageError::Invalid(_) => Reason::InvalidRequest,
            ManageError::NotFound => Reason::NotFound,
            ManageError::NotAllowed(_) => Reason::KeyPolicy,
            ManageError::Conflict(_) => Reason::KeyConflict,
            ManageError::Store(_) => Reason::StoreUnavailable,
            ManageError::Provider(_) => Reason::ProviderUnavailable,
            ManageError::ProviderRefused(_) => Reason::ProviderRefused,
            ManageError::Crypto(_) => Reason::InternalError,
        }
    }
}

/// A grant failure as a management error: refused (the caller's mistake)
/// or unavailable (the provider's).
pub(crate) fn grant_failure(e: GrantError) -> ManageError {
    if !e.is_unavailable() {
        tracing::warn!(error = %e, "the OpenID provider refused a grant for key management");
    }
    match e.oauth_error() {
        Some(code) if !e.is_unavailable() => ManageError::ProviderRefused(
            code.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect(),
        ),
        _ => ManageError::Provider(e),
    }
}

/// Why polling a device authorization did not give a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No such flow (finished, expired or never started).
    #[error("unknown or finished device flow")]
    Unknown,
    /// Poll less often: wait this many seconds.
    #[error("slow down")]
    SlowDown(u64),
    /// The user refused.
    #[error("the user denied the request")]
    Denied,
    /// The user did not finish in time.
    #[error("the device code expired")]
    Expired,
    /// The key would be backed by the JWT grant, and the provider finds no
    /// user through keygate's identity provider: the text says what to do.
    #[error("{0}")]
    NotLinked(String),
    /// The provider failed or gave no usable answer (the cause is for the
    /// log only: it may name the provider's URL).
    #[error("provider: {0}")]
    Provider(#[source] DeviceFailure),
}

/// What went wrong at the provider or in keygate while finishing a device
/// flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceFailure {
    /// The poll failed.
    #[error("{0}")]
    Grant(#[from] GrantError),
    /// The provider issued no refresh (offline) token.
    #[error("the provider issued no offline token")]
    NoOfflineToken,
    /// The provider's access token does not verify.
    #[error("the provider's token is not accepted: {0}")]
    Token(#[from] AuthError),
    /// The new key could not be made or sealed.
    #[error("{0}")]
    Crypto(#[from] keygate_auth::apikey::CryptoError),
    /// The new key could not be stored.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The user could not be linked to keygate's identity provider.
    #[error("linking the user: {0}")]
    Link(#[from] keygate_auth::links::LinkError),
    /// The provider's answer was none keygate knows.
    #[error("unexpected device poll answer")]
    Unexpected,
}

/// The exchange of a key for a provider token failed (shared by the
/// concurrent requests that waited for it).
#[derive(Debug)]
pub(crate) enum ExchangeError {
    Refused(KeyRefusal),
    Unavailable,
    Verify(AuthError),
}

impl From<&ExchangeError> for KeyError {
    fn from(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::Refused(r) => r.clone().into(),
            ExchangeError::Unavailable => KeyError::ProviderUnavailable,
            ExchangeError::Verify(e) => KeyError::TokenNotAccepted(e.clone()),
        }
    }
}

/// Why a record lookup gave no record.
pub(crate) enum Lookup {
    Refused(KeyRefusal),
    Store(StoreError),
}
