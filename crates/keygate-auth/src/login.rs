//! Browser login as an OpenID relying party: the authorization code flow with
//! PKCE (S256), `state` and `nonce`.
//!
//! 1. [`start_login`] builds the provider's authorization URL and a
//!    [`PendingLogin`] (state, nonce, PKCE verifier, where to return) that the
//!    caller seals into a short-lived cookie.
//! 2. At the callback the caller checks `state` against the pending login,
//!    then [`exchange_code`] trades the code and the verifier for tokens.
//! 3. [`verify_id_token`] verifies the **ID token** against the relying
//!    party's audience (`id-token-audience`, by default keygate's client id)
//!    and the nonce. The access token is verified elsewhere, against the
//!    resource server's audience: the two audiences are never conflated
//!    (seed 001), and every error names the ID token and the failed check.
//!
//! [`safe_return_to`] is the open-redirect guard for the URL the user returns
//! to after login: only same-site relative paths pass.

use crate::oauth::{self, Answer, describe, pkce_challenge};
use crate::provider::Keys;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keygate_core::Secret;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most clock-skew leeway accepted, whatever the caller asks.
const MAX_LEEWAY_SECS: u64 = 60;
/// ID tokens longer than this are refused unread.
const MAX_ID_TOKEN_SIZE: usize = 16 * 1024;
/// Return-to paths longer than this are replaced by `/`.
const MAX_RETURN_TO: usize = 2048;

/// The start of a login: where to send the browser, and what to remember.
#[derive(Clone, Debug)]
pub struct LoginStart {
    /// The provider's authorization URL with all request parameters.
    pub authorization_url: String,
    /// What the callback needs; sealed into a short-lived cookie by the caller.
    pub pending: PendingLogin,
}

/// A login in progress, between the redirect to the provider and the callback.
/// It holds the PKCE verifier: keep it sealed (encrypted) on the client.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingLogin {
    /// The `state` sent; the callback's `state` must equal it.
    pub state: String,
    /// The `nonce` sent; the ID token's `nonce` must equal it.
    pub nonce: String,
    /// The PKCE code verifier (its S256 challenge was sent).
    pub pkce_verifier: String,
    /// Where to send the user after login (already passed [`safe_return_to`]).
    pub return_to: String,
    /// Unix time the login started, for the caller's expiry check.
    pub created_at: u64,
}

/// Tokens from the authorization code grant. `Debug` redacts the tokens.
#[derive(Clone, Debug)]
pub struct CodeTokens {
    /// The access token (for the resource server).
    pub access_token: Secret,
    /// The ID token (for the relying party); verify it with [`verify_id_token`].
    pub id_token: Secret,
    /// The refresh token, when issued.
    pub refresh_token: Option<Secret>,
    /// Lifetime of the access token in seconds, when the provider says.
    pub expires_in: Option<u64>,
    /// Lifetime of the refresh token in seconds (a Keycloak extension).
    pub refresh_expires_in: Option<u64>,
}

/// Why a login step failed. Token values never appear in a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The authorization endpoint is not an absolute http(s) URL.
    #[error("the authorization endpoint is not a usable URL: {0}")]
    BadEndpoint(String),
    /// The provider refused the code exchange (an OAuth error such as
    /// `invalid_grant`): the code was used, expired, or the verifier is wrong.
    #[error("the provider refused the authorization code: {error}{}", describe(.description))]
    Rejected {
        /// The OAuth `error` code.
        error: String,
        /// The provider's `error_description`, if any.
        description: Option<String>,
    },
    /// The provider could not be asked or gave no usable answer.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The ID token failed the named check (`signature`, `issuer`,
    /// `audience`, `authorized party (azp)`, `nonce`, `expired`, `malformed`,
    /// `unknown key`, `algorithm`, `not yet valid`, `token type`).
    #[error("ID token rejected: {0} check failed")]
    IdToken(&'static str),
}

impl LoginError {
    /// True when the failure is the provider's (network, 5xx), not the user's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LoginError::Unavailable(_) | LoginError::Random)
    }
}

/// Builds the authorization request: `response_type=code`, `client_id`,
/// `redirect_uri`, `scope` (always with `openid`), `state` and `nonce` (256
/// random bits, base64url), `code_challenge` (S256 of a 43-character verifier)
/// and `code_challenge_method=S256`. `return_to` passes through
/// [`safe_return_to`].
pub fn start_login(
    authorization_endpoint: &str,
    client_id: &str,
    redirect_uri: &str,
    scopes: &[String],
    return_to: &str,
) -> Result<LoginStart, LoginError> {
    let mut url = reqwest::Url::parse(authorization_endpoint)
        .map_err(|e| LoginError::BadEndpoint(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(LoginError::BadEndpoint(format!(
            "`{}` is not an http(s) URL",
            url.scheme()
        )));
    }
    let random = || oauth::random_token().map_err(|_| LoginError::Random);
    let state = random()?;
    let nonce = random()?;
    let pkce_verifier = random()?;
    let challenge = pkce_challenge(&pkce_verifier);
    let scope = scope_with_openid(scopes);
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(LoginStart {
        authorization_url: url.into(),
        pending: PendingLogin {
            state,
            nonce,
            pkce_verifier,
            return_to: safe_return_to(return_to),
            created_at: keygate_core::unix_now(),
        },
    })
}

/// `openid` first, then the configured scopes, each once.
fn scope_with_openid(scopes: &[String]) -> String {
    let mut out: Vec<&str> = vec!["openid"];
    for scope in scopes.iter().flat_map(|s| s.split_ascii_whitespace()) {
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    out.join(" ")
}

/// The open-redirect guard: returns `candidate` (without any fragment) when
/// it is a same-site relative path, else `/`.
///
/// It must start with a single `/` (not `//`, not `/\`), contain no control
/// characters, whitespace or backslashes, and all of this (but whitespace)
/// must still hold after percent-decoding once (so `/%2F%2Fevil.example` and `/%5Cevil` are
/// refused, as are `https:evil`, `javascript:…` and the empty string).
pub fn safe_return_to(candidate: &str) -> String {
    let path = candidate.split('#').next().unwrap_or_default();
    if path.len() > MAX_RETURN_TO || !is_local_path(path) || path.chars().any(char::is_whitespace) {
        return "/".to_owned();
    }
    // Decoded, a space (`%20`) is fine; control characters are not.
    match keygate_core::encoding::percent_decode(path) {
        Some(decoded) if is_local_path(&decoded) => path.to_owned(),
        _ => "/".to_owned(),
    }
}

fn is_local_path(path: &str) -> bool {
    let mut chars = path.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && !path.chars().any(|c| c == '\\' || c.is_control())
}

#[derive(Deserialize)]
struct RawCodeTokens {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_expires_in: Option<u64>,
}

/// POSTs the authorization code with the PKCE verifier to the token endpoint,
/// authenticating with `client_secret_basic` (id and secret form-urlencoded
/// first, RFC 6749 §2.3.1). A 400/401/403 with an OAuth error is
/// [`LoginError::Rejected`]; network errors, other statuses and unusable
/// answers are [`LoginError::Unavailable`].
pub async fn exchange_code(
    provider: &crate::Provider,
    token_endpoint: &str,
    client_id: &str,
    client_secret: &Secret,
    code: &str,
    redirect_uri: &str,
    pkce_verifier: &str,
) -> Result<CodeTokens, LoginError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", pkce_verifier),
    ];
    let answer = provider
        .post_form(token_endpoint, Some((client_id, client_secret)), &form)
        .await
        .map_err(|oauth::Unreachable(why)| LoginError::Unavailable(why))?;
    let body = match answer {
        Answer::Ok(body) => body,
        Answer::OAuth(_, e) => {
            return Err(LoginError::Rejected {
                error: e.error,
                description: e.error_description,
            });
        }
    };
    // The serde error is not shown: it may quote a token.
    let raw: RawCodeTokens = serde_json::from_slice(&body).map_err(|_| {
        LoginError::Unavailable("the token endpoint's answer is not a token response".into())
    })?;
    let id_token = raw.id_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        LoginError::Unavailable(
            "the token endpoint returned no ID token (is `openid` in the scope?)".into(),
        )
    })?;
    Ok(CodeTokens {
        access_token: Secret::new(raw.access_token),
        id_token: Secret::new(id_token),
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        expires_in: raw.expires_in,
        refresh_expires_in: raw.refresh_expires_in,
    })
}

/// Verifies the ID token, in this order: size → header → algorithm
/// (RS/PS/ES/EdDSA) → key by `kid` → signature → `iss` == the provider's
/// issuer → `aud` contains `id_token_audience` → `exp`/`nbf` (leeway at most
/// 60 s) → `iat` not in the future → `azp` == `id_token_audience` when `aud`
/// has several values or `azp` is present → `typ` is `ID` when present →
/// `nonce` == `nonce`. Returns the claims.
pub fn verify_id_token(
    id_token: &str,
    keys: &Keys,
    algorithms: &[Algorithm],
    id_token_audience: &str,
    nonce: &str,
    leeway_secs: u64,
) -> Result<Map<String, Value>, LoginError> {
    let leeway = leeway_secs.min(MAX_LEEWAY_SECS);
    if id_token.len() > MAX_ID_TOKEN_SIZE {
        return Err(LoginError::IdToken("malformed"));
    }
    let header = crate::jws::header(id_token).map_err(|_| LoginError::IdToken("malformed"))?;
    let alg = crate::jws::allowed(&header, algorithms).ok_or(LoginError::IdToken("algorithm"))?;
    let key = crate::jws::key_for(keys, header.kid.as_deref(), alg).map_err(|e| match e {
        crate::jws::KeyError::Unknown => LoginError::IdToken("unknown key"),
        crate::jws::KeyError::Algorithm => LoginError::IdToken("algorithm"),
    })?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[keys.metadata.issuer.as_str()]);
    validation.set_audience(&[id_token_audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(id_token, &key.key, &validation)
        .map_err(|e| LoginError::IdToken(check_of(e.kind())))?
        .claims;

    if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
        && iat > keygate_core::unix_now() + leeway
    {
        return Err(LoginError::IdToken("not yet valid"));
    }
    let several_audiences = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == id_token_audience => {}
        None if !several_audiences => {}
        _ => return Err(LoginError::IdToken("authorized party (azp)")),
    }
    // Keycloak marks its tokens with `typ`: an access or refresh token that
    // happens to carry the right audience is no ID token.
    if let Some(typ) = claims.get("typ")
        && !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("ID"))
    {
        return Err(LoginError::IdToken("token type"));
    }
    let nonce_ok = !nonce.is_empty()
        && claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|found| {
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    found.as_bytes(),
                    nonce.as_bytes(),
                )
                .is_ok()
            });
    if !nonce_ok {
        return Err(LoginError::IdToken("nonce"));
    }
    Ok(claims)
}

fn check_of(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "issuer",
        ErrorKind::InvalidAudience => "audience",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => "issuer",
            "aud" => "audience",
            "exp" => "expired",
            _ => "malformed",
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => "algorithm",
        _ => "malformed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn safe_return_to_refuses_open_redirects() {
        for attack in [
            "//evil.example",
            "//evil.example/path",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "/%5Cevil",
            "/%5cevil",
            "https:evil",
            "https://evil.example",
            "/\\evil",
            "\\\\/evil",
            "\\/evil",
            "javascript:alert(1)",
            " /x",
            "",
            "x/y",
            "/a\\b",
            "/a%0d%0aSet-Cookie:x=1",
            "/a\r\nLocation: //evil",
            "/a\tb",
            "/%FF",
            "#/x",
        ] {
            assert_eq!(safe_return_to(attack), "/", "{attack:?} must be refused");
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(5000))), "/");
    }

    #[test]
    fn safe_return_to_keeps_local_paths_without_fragment() {
        assert_eq!(safe_return_to("/"), "/");
        assert_eq!(safe_return_to("/app/x?y=1"), "/app/x?y=1");
        assert_eq!(safe_return_to("/app/x?y=1#z"), "/app/x?y=1");
        assert_eq!(safe_return_to("/a/b%20c?q=%2F"), "/a/b%20c?q=%2F");
        assert_eq!(safe_return_to("/x:y"), "/x:y");
    }

    fn query(url: &str) -> HashMap<String, String> {
        reqwest::Url::parse(url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn start_login_builds_a_complete_pkce_request() {
        let start = start_login(
            "https://idp.example/realms/acme/protocol/openid-connect/auth?kc_idp_hint=x",
            "APP-frontend",
            "https://gw.example/oauth/callback",
            &["email".to_owned(), "openid profile".to_owned()],
            "//evil.example",
        )
        .unwrap();
        let url = &start.authorization_url;
        assert!(url.starts_with("https://idp.example/realms/acme/protocol/openid-connect/auth?"));
        let q = query(url);
        assert_eq!(q["kc_idp_hint"], "x");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "APP-frontend");
        assert_eq!(q["redirect_uri"], "https://gw.example/oauth/callback");
        assert_eq!(q["scope"], "openid email profile");
        assert_eq!(q["state"], start.pending.state);
        assert_eq!(q["nonce"], start.pending.nonce);
        assert_eq!(q["code_challenge_method"], "S256");
        // Recompute the challenge from the verifier.
        let verifier = &start.pending.pkce_verifier;
        assert!((43..=128).contains(&verifier.len()));
        assert!(
            verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
        assert_eq!(q["code_challenge"], expected);
        assert_ne!(q["code_challenge"], *verifier);
        assert_eq!(start.pending.return_to, "/");
        assert!(start.pending.created_at > 0);
    }

    #[test]
    fn start_login_randomness_differs_between_calls() {
        let a = start_login("http://idp/auth", "c", "http://gw/cb", &[], "/app").unwrap();
        let b = start_login("http://idp/auth", "c", "http://gw/cb", &[], "/app").unwrap();
        assert_eq!(query(&a.authorization_url)["scope"], "openid");
        assert_eq!(a.pending.return_to, "/app");
        for (x, y) in [
            (&a.pending.state, &b.pending.state),
            (&a.pending.nonce, &b.pending.nonce),
            (&a.pending.pkce_verifier, &b.pending.pkce_verifier),
        ] {
            assert!(x.len() >= 22 && y.len() >= 22);
            assert_ne!(x, y);
        }
        assert_ne!(a.pending.state, a.pending.nonce);
    }

    #[test]
    fn start_login_refuses_bad_endpoints() {
        for bad in [
            "not a url",
            "/relative/auth",
            "javascript:alert(1)",
            "ftp://idp/auth",
        ] {
            assert!(
                matches!(
                    start_login(bad, "c", "http://gw/cb", &[], "/"),
                    Err(LoginError::BadEndpoint(_))
                ),
                "{bad}"
            );
        }
    }

    const ISSUER: &str = crate::jws::test_keys::ISSUER;

    /// An Ed25519 key pair: the signing key and provider `Keys` holding the
    /// public key under `kid` "k1".
    fn test_keys() -> (EncodingKey, Keys) {
        crate::jws::test_keys::pair()
    }

    fn id_claims() -> Value {
        let now = keygate_core::unix_now();
        json!({
            "iss": ISSUER, "sub": "alice", "aud": "APP-frontend", "azp": "APP-frontend",
            "typ": "ID", "nonce": "n-1", "iat": now, "exp": now + 300,
        })
    }

    fn sign(key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn failed_check(token: &str, keys: &Keys, aud: &str, nonce: &str) -> String {
        verify_id_token(token, keys, &crate::jws::ASYMMETRIC, aud, nonce, 30)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn verify_id_token_names_each_failed_check() {
        let (key, keys) = test_keys();
        let good = sign(&key, &id_claims());
        let claims = verify_id_token(
            &good,
            &keys,
            &crate::jws::ASYMMETRIC,
            "APP-frontend",
            "n-1",
            30,
        )
        .unwrap();
        assert_eq!(claims["sub"], "alice");

        let msg = failed_check(&good, &keys, "APP-backend", "n-1");
        assert_eq!(msg, "ID token rejected: audience check failed");
        assert_eq!(
            failed_check(&good, &keys, "APP-frontend", "n-2"),
            "ID token rejected: nonce check failed"
        );
        assert!(failed_check(&good, &keys, "APP-frontend", "").contains("nonce"));

        let with = |patch: Value| {
            let mut c = id_claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            sign(&key, &c)
        };
        let cases = [
            (json!({"iss": "http://other/realms/acme"}), "issuer"),
            (json!({"exp": keygate_core::unix_now() - 120}), "expired"),
            (json!({"nonce": null}), "nonce"),
            (json!({"azp": "keygate"}), "authorized party (azp)"),
            (
                json!({"aud": ["APP-frontend", "keygate"], "azp": null}),
                "authorized party (azp)",
            ),
            (json!({"typ": "Bearer"}), "token type"),
            (
                json!({"iat": keygate_core::unix_now() + 600}),
                "not yet valid",
            ),
        ];
        for (patch, check) in cases {
            let token = with(patch.clone());
            assert_eq!(
                failed_check(&token, &keys, "APP-frontend", "n-1"),
                format!("ID token rejected: {check} check failed"),
                "{patch}"
            );
        }
        // Several audiences are fine when azp names the relying party.
        let multi = with(json!({"aud": ["APP-frontend", "keygate"]}));
        assert!(
            verify_id_token(
                &multi,
                &keys,
                &crate::jws::ASYMMETRIC,
                "APP-frontend",
                "n-1",
                30
            )
            .is_ok()
        );
        // No azp with a single audience is fine too.
        let no_azp = with(json!({"azp": null}));
        assert!(
            verify_id_token(
                &no_azp,
                &keys,
                &crate::jws::ASYMMETRIC,
                "APP-frontend",
                "n-1",
                30
            )
            .is_ok()
        );
    }

    #[test]
    fn verify_id_token_checks_signature_key_and_shape() {
        let (key, keys) = test_keys();
        let (other_key, _) = test_keys();
        let forged = sign(&other_key, &id_claims());
        assert_eq!(
            failed_check(&forged, &keys, "APP-frontend", "n-1"),
            "ID token rejected: signature check failed"
        );
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("nope".into());
        let unknown = jsonwebtoken::encode(&header, &id_claims(), &key).unwrap();
        assert!(failed_check(&unknown, &keys, "APP-frontend", "n-1").contains("unknown key"));
        assert!(failed_check("a.b", &keys, "APP-frontend", "n-1").contains("malformed"));

        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"k1"}"#),
            b64(&id_claims().to_string())
        );
        assert!(failed_check(&none, &keys, "APP-frontend", "n-1").contains("algorithm"));
        let hs = format!(
            "{}.{}.x",
            b64(r#"{"alg":"HS256","kid":"k1"}"#),
            b64(&id_claims().to_string())
        );
        assert!(failed_check(&hs, &keys, "APP-frontend", "n-1").contains("algorithm"));
        // A stretched leeway is capped at 60 s.
        let mut c = id_claims();
        c["exp"] = json!(keygate_core::unix_now() - 120);
        let expired = sign(&key, &c);
        assert!(
            verify_id_token(
                &expired,
                &keys,
                &crate::jws::ASYMMETRIC,
                "APP-frontend",
                "n-1",
                3600
            )
            .is_err()
        );
    }
}
