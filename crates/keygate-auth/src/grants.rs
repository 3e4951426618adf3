//! The provider's token endpoint, as a confidential client: the grants that
//! API keys are exchanged with (client credentials for service keys, refresh
//! or the JWT authorization grant (RFC 7523) for personal keys), the device
//! authorization grant (RFC 8628) that creates a personal key, token
//! exchange toward an upstream's audience (RFC 8693), and token revocation
//! (RFC 7009).
//!
//! Endpoints come from the provider's discovery document; the client
//! authenticates with HTTP Basic (`client_secret_basic`, id and secret
//! form-urlencoded first, RFC 6749 §2.3.1); bodies are form-encoded.
//!
//! Outcomes are sorted for the edge: [`GrantError::Rejected`] means the
//! caller's credential is bad (401), [`GrantError::Unavailable`] means the
//! provider could not answer (503). Token values never reach a log line or an
//! error message.

use crate::oauth::{self, Answer, OAuthError, describe};
use crate::provider::Provider;
use keygate_core::Secret;
use serde::Deserialize;
use std::sync::Arc;

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 7523 §2.1: a JWT used as an authorization grant.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 8628 §3.2: the polling interval when the provider names none.
const DEFAULT_DEVICE_INTERVAL: u64 = 5;

/// Tokens from a successful grant. `Debug` redacts the tokens.
#[derive(Clone, Debug)]
pub struct TokenResponse {
    /// The access token to forward upstream.
    pub access_token: Secret,
    /// Lifetime of the access token in seconds, when the provider says.
    pub expires_in: Option<u64>,
    /// A refresh token (rotated or offline), when issued.
    pub refresh_token: Option<Secret>,
    /// The granted scope, when the provider says.
    pub scope: Option<String>,
}

/// Why a grant produced no token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The provider refused (a 400/401/403 with an OAuth error such as
    /// `invalid_grant`, `invalid_client`, `unauthorized_client`,
    /// `access_denied`): the caller's credential is bad → 401.
    #[error("the provider refused the grant: {error}{}", describe(.description))]
    Rejected {
        /// The OAuth `error` code.
        error: String,
        /// The provider's `error_description`, if any.
        description: Option<String>,
    },
    /// The provider could not be asked or gave no usable answer (network
    /// error, timeout, 5xx, unparsable answer, discovery not loaded) → 503.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider's discovery document names no such endpoint.
    #[error("the provider has no {0}")]
    NotSupported(&'static str),
}

impl GrantError {
    /// True when the failure is the provider's or ours, not the caller's (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            GrantError::Unavailable(_) | GrantError::NotSupported(_)
        )
    }

    /// The OAuth error code of a rejection.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            GrantError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The answer to a device authorization request (RFC 8628 §3.2).
#[derive(Clone, Debug)]
pub struct DeviceAuthorization {
    /// The code to poll with; secret.
    pub device_code: Secret,
    /// The code the user enters at `verification_uri`.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// `verification_uri` with the user code filled in, when offered.
    pub verification_uri_complete: Option<String>,
    /// Lifetime of the codes in seconds.
    pub expires_in: u64,
    /// Least seconds between two polls (5 when the provider names none).
    pub interval: u64,
    /// The PKCE verifier (RFC 7636) whose S256 challenge went with the
    /// request; the polls send it. Keycloak requires PKCE on the device
    /// grant of a client that enforces it for logins (`Missing parameter:
    /// code_challenge_method`); other providers ignore it. Secret.
    pub code_verifier: Secret,
}

/// The state of a device authorization, from one poll.
#[derive(Clone, Debug)]
pub enum DevicePoll {
    /// The user has not finished yet (`authorization_pending`).
    Pending,
    /// Polling too fast (`slow_down`): add 5 s to the interval.
    SlowDown,
    /// The user approved; here are the tokens.
    Done(TokenResponse),
    /// The user refused (`access_denied`).
    Denied,
    /// The device code expired (`expired_token`).
    Expired,
}

/// Runs grants at the provider's token endpoint. Cheap to share.
pub struct Grants {
    provider: Arc<Provider>,
}

/// Which endpoint of the discovery document.
#[derive(Clone, Copy)]
enum Endpoint {
    Token,
    DeviceAuthorization,
    Revocation,
    Introspection,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl From<RawTokenResponse> for TokenResponse {
    fn from(raw: RawTokenResponse) -> Self {
        TokenResponse {
            access_token: Secret::new(raw.access_token),
            expires_in: raw.expires_in,
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
            scope: raw.scope,
        }
    }
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

impl Grants {
    /// Grants at `provider`'s endpoints, over its HTTP client.
    pub fn new(provider: Arc<Provider>) -> Self {
        Grants { provider }
    }

    /// Whether the provider answers (its breaker is closed).
    pub fn is_up(&self) -> bool {
        self.provider.is_up()
    }

    /// The provider's issuer from its discovery document (the audience of
    /// keygate's assertions); `None` before discovery has loaded.
    pub fn provider_issuer(&self) -> Option<String> {
        self.provider.keys().map(|k| k.metadata.issuer.clone())
    }

    /// The provider's HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        self.provider.http()
    }

    /// The client-credentials grant: a service account's access token.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &Secret,
        scopes: &[String],
    ) -> Result<TokenResponse, GrantError> {
        let scope = scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let result = self
            .token_grant(client_id, client_secret, &form)
            .await
            .and_then(|answer| tokens_from(answer, "client_credentials"));
        self.count("client_credentials", &result);
        result
    }

    /// The refresh grant: a new access token (and maybe a rotated refresh
    /// token, which the caller must store back) with the user's current roles.
    pub async fn refresh(
        &self,
        client_id: &str,
        client_secret: &Secret,
        refresh_token: &Secret,
    ) -> Result<TokenResponse, GrantError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        let result = self
            .token_grant(client_id, client_secret, &form)
            .await
            .and_then(|answer| tokens_from(answer, "refresh_token"));
        self.count("refresh_token", &result);
        result
    }

    /// Standard token exchange (RFC 8693; Keycloak's "standard token
    /// exchange", 26.2+): the caller's access token (`subject_token`) for
    /// one whose audience is just `audience`, with the optional `scopes`
    /// (Keycloak: the client scopes that carry that audience). keygate's
    /// client must be allowed to exchange, and must be in the subject
    /// token's audience.
    pub async fn token_exchange(
        &self,
        client_id: &str,
        client_secret: &Secret,
        subject_token: &Secret,
        audience: &str,
        scopes: &[String],
    ) -> Result<TokenResponse, GrantError> {
        let scope = scopes.join(" ");
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject_token.expose()),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("audience", audience),
        ];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let result = self
            .token_grant(client_id, client_secret, &form)
            .await
            .and_then(|answer| tokens_from(answer, "token_exchange"));
        self.count("token_exchange", &result);
        result
    }

    /// The JWT authorization grant (RFC 7523 §2.1): an access token for the
    /// user the `assertion` (signed by keygate, see
    /// [`crate::assertion`]) names, with the user's current roles, for
    /// `scope` (empty: the client's defaults). Keycloak issues no refresh
    /// token for it and keeps no session (a transient one).
    pub async fn jwt_bearer(
        &self,
        client_id: &str,
        client_secret: &Secret,
        assertion: &Secret,
        scope: &str,
    ) -> Result<TokenResponse, GrantError> {
        let mut form = vec![
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.expose()),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        let result = self
            .token_grant(client_id, client_secret, &form)
            .await
            .and_then(|answer| tokens_from(answer, "jwt_bearer"));
        self.count("jwt_bearer", &result);
        result
    }

    /// Starts a device authorization (RFC 8628 §3.1) for `scope`
    /// (`openid offline_access` for a personal key).
    pub async fn device_authorization(
        &self,
        client_id: &str,
        client_secret: &Secret,
        scope: &str,
    ) -> Result<DeviceAuthorization, GrantError> {
        let code_verifier = oauth::random_token()
            .map_err(|_| GrantError::Unavailable("no random bits for PKCE".into()))?;
        let challenge = oauth::pkce_challenge(&code_verifier);
        let mut form = vec![
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        let result = self
            .post(
                Endpoint::DeviceAuthorization,
                client_id,
                client_secret,
                &form,
            )
            .await
            .and_then(|answer| match answer {
                Answer::Ok(body) => {
                    let raw: RawDeviceAuthorization =
                        serde_json::from_slice(&body).map_err(|_| {
                            GrantError::Unavailable(
                                "the device authorization answer is not a device authorization"
                                    .into(),
                            )
                        })?;
                    Ok(DeviceAuthorization {
                        device_code: Secret::new(raw.device_code),
                        user_code: raw.user_code,
                        verification_uri: raw.verification_uri,
                        verification_uri_complete: raw.verification_uri_complete,
                        expires_in: raw.expires_in,
                        interval: raw.interval.unwrap_or(DEFAULT_DEVICE_INTERVAL),
                        code_verifier: Secret::new(code_verifier),
                    })
                }
                Answer::OAuth(_, e) => Err(rejected(e, "device_authorization")),
            });
        self.count("device_authorization", &result);
        result
    }

    /// Polls once for the outcome of a device authorization (RFC 8628 §3.4),
    /// with its PKCE verifier.
    pub async fn device_poll(
        &self,
        client_id: &str,
        client_secret: &Secret,
        device_code: &Secret,
        code_verifier: &Secret,
    ) -> Result<DevicePoll, GrantError> {
        let form = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.expose()),
            ("code_verifier", code_verifier.expose()),
        ];
        let result = self
            .token_grant(client_id, client_secret, &form)
            .await
            .and_then(|answer| match answer {
                Answer::OAuth(_, e) => match e.error.as_str() {
                    "authorization_pending" => Ok(DevicePoll::Pending),
                    "slow_down" => Ok(DevicePoll::SlowDown),
                    "access_denied" => Ok(DevicePoll::Denied),
                    "expired_token" => Ok(DevicePoll::Expired),
                    _ => Err(rejected(e, "device_code")),
                },
                ok => tokens_from(ok, "device_code").map(DevicePoll::Done),
            });
        match &result {
            Ok(DevicePoll::Denied | DevicePoll::Expired) => counter("device_code", "rejected"),
            Ok(_) => counter("device_code", "ok"),
            Err(e) => self.count_error("device_code", e),
        }
        result
    }

    /// Revokes `token` at the provider (RFC 7009). `hint` is the
    /// `token_type_hint` (`refresh_token`, `access_token`; empty for none).
    /// An unknown or already revoked token is not an error (RFC 7009 §2.2).
    pub async fn revoke(
        &self,
        client_id: &str,
        client_secret: &Secret,
        token: &Secret,
        hint: &str,
    ) -> Result<(), GrantError> {
        let mut form = vec![("token", token.expose())];
        if !hint.is_empty() {
            form.push(("token_type_hint", hint));
        }
        let result = self
            .post(Endpoint::Revocation, client_id, client_secret, &form)
            .await
            .and_then(|answer| match answer {
                Answer::Ok(_) => Ok(()),
                Answer::OAuth(_, e) => Err(rejected(e, "revocation")),
            });
        self.count("revocation", &result);
        result
    }

    /// Asks the provider about an access token (RFC 7662). The answer's
    /// members, `active` among them; [`GrantError::Rejected`] when the
    /// provider refused keygate's client credentials.
    pub async fn introspect(
        &self,
        client_id: &str,
        client_secret: &Secret,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, GrantError> {
        let form = [("token", token), ("token_type_hint", "access_token")];
        let result = self
            .post(Endpoint::Introspection, client_id, client_secret, &form)
            .await
            .and_then(|answer| match answer {
                Answer::Ok(body) => serde_json::from_slice(&body).map_err(|_| {
                    GrantError::Unavailable(
                        "the introspection endpoint's answer is not a JSON object".into(),
                    )
                }),
                Answer::OAuth(_, e) => Err(rejected(e, "introspection")),
            });
        self.count("introspection", &result);
        result
    }

    async fn token_grant(
        &self,
        client_id: &str,
        client_secret: &Secret,
        form: &[(&str, &str)],
    ) -> Result<Answer, GrantError> {
        self.post(Endpoint::Token, client_id, client_secret, form)
            .await
    }

    /// POSTs `form` to `endpoint` as the client (HTTP Basic).
    async fn post(
        &self,
        endpoint: Endpoint,
        client_id: &str,
        client_secret: &Secret,
        form: &[(&str, &str)],
    ) -> Result<Answer, GrantError> {
        let url = self.endpoint(endpoint)?;
        self.provider
            .post_form(&url, Some((client_id, client_secret)), form)
            .await
            .map_err(|oauth::Unreachable(why)| GrantError::Unavailable(why))
    }

    fn endpoint(&self, endpoint: Endpoint) -> Result<String, GrantError> {
        let keys = self.provider.keys().ok_or_else(|| {
            GrantError::Unavailable("the provider's discovery document is not loaded".into())
        })?;
        let m = &keys.metadata;
        let (url, name) = match endpoint {
            Endpoint::Token => (&m.token_endpoint, "token endpoint"),
            Endpoint::DeviceAuthorization => (
                &m.device_authorization_endpoint,
                "device authorization endpoint",
            ),
            Endpoint::Revocation => (&m.revocation_endpoint, "revocation endpoint"),
            Endpoint::Introspection => (&m.introspection_endpoint, "introspection endpoint"),
        };
        url.clone().ok_or(GrantError::NotSupported(name))
    }
}

/// Interprets a token endpoint answer as tokens.
fn tokens_from(answer: Answer, grant: &str) -> Result<TokenResponse, GrantError> {
    match answer {
        Answer::Ok(body) => serde_json::from_slice::<RawTokenResponse>(&body)
            .map(TokenResponse::from)
            .map_err(|_| {
                // The serde error is not shown: it may quote the body.
                GrantError::Unavailable(
                    "the token endpoint's answer is not a token response".into(),
                )
            }),
        Answer::OAuth(_, e) => Err(rejected(e, grant)),
    }
}

fn rejected(e: OAuthError, grant: &str) -> GrantError {
    tracing::debug!(grant, error = %e.error, description = ?e.error_description, "the provider refused a grant");
    GrantError::Rejected {
        error: e.error,
        description: e.error_description,
    }
}

impl Grants {
    fn count<T>(&self, grant: &'static str, result: &Result<T, GrantError>) {
        match result {
            Ok(_) => counter(grant, "ok"),
            Err(e) => self.count_error(grant, e),
        }
    }

    /// Counts a failure; an unavailable provider is also logged (the
    /// message names the endpoint and the HTTP status or network cause,
    /// never a token): as a warning while the provider otherwise answers,
    /// at debug level while its breaker is open (the breaker has warned
    /// once for the outage; a line per request would flood the log).
    fn count_error(&self, grant: &'static str, e: &GrantError) {
        match e {
            GrantError::Rejected { .. } => counter(grant, "rejected"),
            _ => {
                if self.provider.is_up() {
                    tracing::warn!(grant, error = %e, "a grant at the provider failed");
                } else {
                    tracing::debug!(grant, error = %e, "a grant at the provider failed");
                }
                counter(grant, "unavailable");
            }
        }
    }
}

fn counter(grant: &'static str, result: &'static str) {
    metrics::counter!("keygate_provider_grants_total", "grant" => grant, "result" => result)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_response_debug_redacts_tokens() {
        let raw: RawTokenResponse = serde_json::from_str(
            r#"{"access_token":"eyJ.secret.at","expires_in":300,"refresh_token":"rt-secret","scope":"openid","token_type":"Bearer"}"#,
        )
        .unwrap();
        let tokens = TokenResponse::from(raw);
        let text = format!("{tokens:?}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(tokens.expires_in, Some(300));
        assert_eq!(tokens.refresh_token.unwrap().expose(), "rt-secret");
    }

    #[test]
    fn unparsable_token_answer_is_unavailable_and_not_quoted() {
        let err = tokens_from(
            Answer::Ok(br#"{"access_token": 12, "x": "leak-me"}"#.to_vec()),
            "refresh_token",
        )
        .unwrap_err();
        assert!(err.is_unavailable());
        assert!(!err.to_string().contains("leak-me"));
    }

    #[test]
    fn oauth_errors_become_rejections() {
        let err = tokens_from(
            Answer::OAuth(
                400,
                OAuthError {
                    error: "invalid_grant".into(),
                    error_description: Some("Token is not active".into()),
                },
            ),
            "refresh_token",
        )
        .unwrap_err();
        assert_eq!(err.oauth_error(), Some("invalid_grant"));
        assert!(!err.is_unavailable());
        assert_eq!(
            err.to_string(),
            "the provider refused the grant: invalid_grant (Token is not active)"
        );
    }
}
