//! [`Reason`]: why keygate answered as it did, for the access log's `reason`
//! field and the `reason` label of `keygate_requests_total`. One closed set,
//! so a label cannot carry free text (a token, a URL, a database message)
//! and every value is documented in one place.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $text:literal,)*) => {
        /// Why a request was allowed or refused: the short, stable label of
        /// logs and metrics. Never shown as the reason to a client.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The label, e.g. `"api_key_revoked"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// The request was let through.
    Ok => "ok",
    // ---- the request itself (400, 405) ----
    /// The path cannot be normalized safely (encoded separators, `..` above the root, …).
    InvalidPath => "invalid_path",
    /// No, several or conflicting `Host` headers.
    BadHost => "bad_host",
    /// A method keygate does not pass through (`TRACE`, `TRACK`, `CONNECT`).
    MethodRefused => "method_refused",
    /// A malformed header of `pass-override-headers` (e.g. `X-HTTP-Method-Override`).
    BadOverrideHeader => "bad_override_header",
    /// Forward-auth: the original request's headers are malformed.
    BadOriginalRequest => "bad_original_request",
    /// Forward-auth: the original request's headers disagree.
    ConflictingOriginalRequest => "conflicting_original_request",
    /// Forward-auth: the original URI is missing.
    MissingOriginalRequest => "missing_original_request",
    /// Forward-auth: the original method is not a method.
    BadOriginalMethod => "bad_original_method",
    /// A request body keygate's endpoint cannot read.
    BadBody => "bad_body",
    /// A request to keygate's own endpoint is invalid.
    InvalidRequest => "invalid_request",
    /// No such keygate endpoint or key.
    NotFound => "not_found",
    /// No upstream serves this host and path (`upstreams` without `upstream-url`).
    NoUpstream => "no_upstream",
    /// The method is not allowed.
    MethodNotAllowed => "method_not_allowed",
    /// The client stopped sending its request body (`upstream-idle-timeout`).
    RequestTimeout => "request_timeout",
    // ---- the credential (401) ----
    /// No credential on a protected route.
    NoCredential => "no_credential",
    /// A refused credential.
    InvalidToken => "invalid_token",
    /// Unauthenticated.
    Unauthorized => "unauthorized",
    /// More than one credential (bearer token, API key, cookie) in one request.
    AmbiguousCredential => "ambiguous_credential",
    /// An `Authorization` scheme keygate does not take.
    UnsupportedScheme => "unsupported_scheme",
    /// The token is larger than keygate accepts.
    TokenTooLarge => "token_too_large",
    /// The token is not a JWS keygate can parse.
    TokenMalformed => "token_malformed",
    /// The token's `alg` is not in `signing-algorithms`.
    UnsupportedAlgorithm => "unsupported_algorithm",
    /// No provider key has the token's `kid`.
    UnknownKey => "unknown_key",
    /// The signature does not verify.
    BadSignature => "bad_signature",
    /// The token has expired.
    Expired => "expired",
    /// The token's `nbf` or `iat` is in the future.
    NotYetValid => "not_yet_valid",
    /// The token's `iss` is not the provider's.
    WrongIssuer => "wrong_issuer",
    /// The token's `aud` does not name this service.
    WrongAudience => "wrong_audience",
    /// A lightweight access token without the claims keygate needs.
    LightweightToken => "lightweight_token",
    /// Introspection says the token is no longer active.
    InactiveToken => "inactive_token",
    /// A required claim is missing.
    MissingClaim => "missing_claim",
    /// The token's `azp` is not an allowed client.
    WrongAzp => "wrong_azp",
    /// Not an access token (an ID or refresh token).
    WrongTokenType => "wrong_token_type",
    /// A DPoP-bound token without its proof (or with several `DPoP` headers).
    DpopProofMissing => "dpop_proof_missing",
    /// A DPoP proof that fails its checks (signature, `htm`, `htu`, `iat`, `ath`, …).
    DpopProofInvalid => "dpop_proof_invalid",
    /// A DPoP proof used before.
    DpopProofReplayed => "dpop_proof_replayed",
    /// A DPoP proof signed with another key than the token is bound to.
    DpopWrongKey => "dpop_wrong_key",
    /// A DPoP-bound token sent as a plain bearer token.
    DpopBoundToken => "dpop_bound_token",
    /// The `DPoP` scheme with a token that is not bound to a key.
    DpopUnboundToken => "dpop_unbound_token",
    /// `require-dpop`: a bearer token that is not DPoP-bound.
    DpopRequired => "dpop_required",
    /// Not an API key of keygate's format.
    ApiKeyMalformed => "api_key_malformed",
    /// No such API key.
    ApiKeyUnknown => "api_key_unknown",
    /// The API key was revoked.
    ApiKeyRevoked => "api_key_revoked",
    /// The API key has expired.
    ApiKeyExpired => "api_key_expired",
    /// The provider refused the key's exchange (its client or user is gone).
    ApiKeyRejected => "api_key_rejected",
    /// The provider's token for the key is not accepted here.
    ApiKeyTokenRejected => "api_key_token_rejected",
    /// The session cookie names a session that no longer exists.
    SessionEnded => "session_ended",
    /// The session cookie cannot be opened: tampered, truncated, or sealed
    /// with a key this gateway no longer has.
    SessionInvalid => "session_invalid",
    /// The session was logged out (here or by back-channel logout).
    SessionLoggedOut => "session_logged_out",
    /// The session expired and cannot be refreshed.
    SessionExpired => "session_expired",
    /// The provider refused the session's refresh.
    SessionRefreshRefused => "session_refresh_refused",
    /// The login callback's code was refused by the provider.
    CodeRejected => "code_rejected",
    /// The login's ID token failed its checks.
    IdTokenRejected => "id_token_rejected",
    /// The login could not complete.
    LoginFailed => "login_failed",
    /// The provider refused the login (its `error` on the callback).
    LoginRefused => "login_refused",
    /// The login callback lacks `code` or `state`.
    BadCallback => "bad_callback",
    /// A callback without a login in progress (or after it expired).
    NoPendingLogin => "no_pending_login",
    /// The callback's `state` is not the login's.
    StateMismatch => "state_mismatch",
    /// The login's access token failed keygate's checks.
    AccessTokenRejected => "access_token_rejected",
    /// A back-channel logout request without a `logout_token`.
    BadLogoutRequest => "bad_logout_request",
    /// A back-channel logout token failed its checks or was replayed.
    BadLogoutToken => "bad_logout_token",
    /// A logout could not be recorded where every replica sees it.
    LogoutFailed => "logout_failed",
    // ---- authorization (403, 405, 429) ----
    /// The route's rule refused the identity.
    NotAllowed => "not_allowed",
    /// Refused.
    Forbidden => "forbidden",
    /// A cookie-authenticated write without the CSRF header.
    Csrf => "csrf",
    /// The admin API needs the admin role.
    NotAdmin => "not_admin",
    /// `localhost-metrics`: metrics asked for from another host.
    NotLocal => "not_local",
    /// A CORS preflight from an origin, or for a method or header, that
    /// `cors-*` does not allow.
    CorsRefused => "cors_refused",
    /// Forward-auth or `X-Forwarded-*` from a peer not in `trusted-proxies`.
    UntrustedProxy => "untrusted_proxy",
    /// API keys are not configured.
    ApiKeysDisabled => "api_keys_disabled",
    /// The API key may not use this method.
    ApiKeyMethodNotAllowed => "api_key_method_not_allowed",
    /// The API key may not use this route.
    ApiKeyRouteNotAllowed => "api_key_route_not_allowed",
    /// The API key may not be used from this address.
    ApiKeyNetworkNotAllowed => "api_key_network_not_allowed",
    /// A restricted API key may not hand out its token.
    ApiKeyRestricted => "api_key_restricted",
    /// A rate-limited API key may not hand out its token.
    ApiKeyLimited => "api_key_limited",
    /// Over the rate limit.
    RateLimited => "rate_limited",
    /// Over the quota.
    QuotaExceeded => "quota_exceeded",
    /// The provider refused a request for key management.
    ProviderRefused => "provider_refused",
    /// A key-management request the configuration does not allow (a
    /// lifetime over the kind's maximum, a key without an expiry).
    KeyPolicy => "key_policy",
    /// A key-management request that conflicts with the key's state (it is
    /// revoked, personal, or the key given is no longer its current one).
    KeyConflict => "key_conflict",
    /// The provider refused to exchange the caller's token for the upstream's audience.
    TokenExchangeRefused => "token_exchange_refused",
    // ---- keygate's side and its dependencies (502, 503, 504) ----
    /// The provider cannot be reached, or its keys never loaded.
    ProviderUnavailable => "provider_unavailable",
    /// The API-key store cannot be reached.
    StoreUnavailable => "store_unavailable",
    /// The session store (Redis) cannot be reached.
    SessionStoreUnavailable => "session_store_unavailable",
    /// A session could not be sealed.
    SessionFailed => "session_failed",
    /// Something unavailable.
    TemporarilyUnavailable => "temporarily_unavailable",
    /// The upstream could not be reached or broke the exchange.
    BadGateway => "bad_gateway",
    /// The upstream did not answer in time.
    GatewayTimeout => "gateway_timeout",
    /// keygate failed (a bug or a resource limit); the log has the cause.
    InternalError => "internal_error",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_has_its_own_lowercase_label() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s} twice");
        }
        assert_eq!(Reason::ApiKeyRevoked.to_string(), "api_key_revoked");
    }
}
