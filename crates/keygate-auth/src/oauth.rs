//! The one OAuth client of keygate: a form POST to a provider endpoint
//! (token, device authorization, revocation, introspection) as a
//! confidential client, and the values every flow needs (PKCE, random
//! state). The grants ([`crate::grants`]), the login code exchange
//! ([`crate::login`]) and `keygate token` ([`crate::client`]) all post
//! through [`post_form`].
//!
//! The client authenticates with HTTP Basic (`client_secret_basic`: id and
//! secret form-urlencoded first, RFC 6749 §2.3.1), marked sensitive so no
//! HTTP-level log prints it. Answers are sorted once: a 2xx body, an OAuth
//! error (400/401/403 with `{"error": …}`), or unreachable (network error,
//! timeout, any other status) with a cause that names the URL and never a
//! token or a body.

use base64::Engine as _;
use keygate_core::Secret;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;

/// Random bytes in `state`, `nonce` and the PKCE verifier (256 bits; the
/// verifier is 43 base64url characters, the least RFC 7636 allows).
const RANDOM_BYTES: usize = 32;

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Clone, Debug, Deserialize)]
pub struct OAuthError {
    /// The OAuth `error` code.
    pub error: String,
    /// The provider's `error_description`, if any.
    #[serde(default)]
    pub error_description: Option<String>,
}

/// What one POST gave, before a flow reads it.
#[derive(Debug)]
pub enum Answer {
    /// 2xx with its body.
    Ok(Vec<u8>),
    /// 400/401/403 with an OAuth error body, and the status.
    OAuth(u16, OAuthError),
}

/// The endpoint could not be asked, or gave no usable answer: why, naming
/// the URL (for the log; never a token or a body).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// The system random generator failed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// POSTs `form` to `url`, as the client `client_id` (with HTTP Basic) when
/// given, asking for JSON. A child span of the request's trace (target
/// `keygate::trace`: exported only with `otel-endpoint`).
#[tracing::instrument(target = "keygate::trace", name = "provider POST", skip_all, fields(otel.kind = "client", url.full = %url))]
pub async fn post_form(
    http: &reqwest::Client,
    url: &str,
    client: Option<(&str, &Secret)>,
    form: &[(&str, &str)],
) -> Result<Answer, Unreachable> {
    let mut request = http.post(url).header(ACCEPT, "application/json").form(form);
    if let Some((id, secret)) = client {
        let auth = client_basic_auth(id, secret)
            .ok_or_else(|| Unreachable("cannot build the client authentication".into()))?;
        request = request.header(AUTHORIZATION, auth);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Unreachable(format!("request to {url} failed: {}", cause(&e))))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        Unreachable(format!(
            "reading the answer from {url} failed: {}",
            cause(&e)
        ))
    })?;
    if status.is_success() {
        return Ok(Answer::Ok(body.to_vec()));
    }
    if matches!(status.as_u16(), 400 | 401 | 403)
        && let Ok(error) = serde_json::from_slice::<OAuthError>(&body)
    {
        return Ok(Answer::OAuth(status.as_u16(), error));
    }
    Err(Unreachable(format!(
        "{url} answered HTTP {}",
        status.as_u16()
    )))
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`,
/// marked sensitive; `None` when the id or secret cannot be carried in a
/// header.
pub fn client_basic_auth(client_id: &str, client_secret: &Secret) -> Option<HeaderValue> {
    let pair = format!(
        "{}:{}",
        keygate_core::encoding::form_encode(client_id),
        keygate_core::encoding::form_encode(client_secret.expose())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A reqwest error's kind, for a log line (its `Display` names the URL only).
pub fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.to_string()
    }
}

/// ` (description)` when the provider gave one.
pub fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// The PKCE S256 challenge: base64url(SHA-256(verifier)), unpadded.
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// 256 random bits, base64url without padding (43 characters).
pub fn random_token() -> Result<String, RandomError> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; RANDOM_BYTES];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_id_and_secret_first() {
        let value = client_basic_auth("my client", &Secret::new("p@ss:word")).unwrap();
        assert!(value.is_sensitive());
        let text = value.to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+client:p%40ss%3Aword");
        assert!(client_basic_auth("a", &Secret::new("\n")).is_some());
    }

    #[test]
    fn pkce_and_random_values() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
