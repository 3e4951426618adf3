//! Back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0,
//! §2.4–2.6), verified on the same JWS core as access and ID tokens
//! ([`crate::jws`]): one algorithm list, the key by `kid` (and the JWK's
//! own `alg`), then the signature, `iss`, `aud`, `exp`; then what a logout
//! token must be: a fresh `iat`, a `jti`, the back-channel logout event, no
//! `nonce`, and a `sid` or a `sub`.
//!
//! Replay (a `jti` seen before) is the caller's to check: it needs the
//! state shared by replicas.

use crate::jws;
use crate::provider::Keys;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

/// The event a back-channel logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Whose sessions a logout token ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogoutOf {
    /// One provider session.
    Session(String),
    /// Every session of the user (that began before `iat`).
    User(String),
}

/// A verified logout token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutToken {
    /// Whose sessions end.
    pub of: LogoutOf,
    /// `jti`, for the replay check.
    pub jti: String,
    /// `iat`, seconds since the epoch.
    pub issued_at: u64,
}

/// Why a logout token was refused: the check that failed, for the caller's
/// 400 (`invalid logout token: …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LogoutError(pub &'static str);

/// Verifies `token` as a logout token for `audience` (keygate's client id
/// or `id-token-audience`), signed by `keys` with one of `algorithms`, issued
/// within `max_age` seconds (`leeway` either way).
pub fn verify_logout_token(
    token: &str,
    keys: &Keys,
    algorithms: &[Algorithm],
    audience: &str,
    leeway: u64,
    max_age: u64,
    now: u64,
) -> Result<LogoutToken, LogoutError> {
    let header = jws::header(token).map_err(|_| LogoutError("malformed or encrypted"))?;
    if let Some(typ) = &header.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "logout+jwt" && typ != "jwt" {
            return Err(LogoutError("typ is not logout+jwt"));
        }
    }
    let alg = jws::allowed(&header, algorithms).ok_or(LogoutError("algorithm"))?;
    let key = jws::key_for(keys, header.kid.as_deref(), alg).map_err(|e| match e {
        jws::KeyError::Unknown => LogoutError("unknown key"),
        jws::KeyError::Algorithm => LogoutError("algorithm"),
    })?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.set_issuer(&[keys.metadata.issuer.as_str()]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
    validation.validate_exp = true;
    validation.leeway = leeway;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => LogoutError("expired"),
            ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                "exp" => LogoutError("no exp"),
                "iat" => LogoutError("no iat"),
                _ => LogoutError("a required claim is missing"),
            },
            _ => LogoutError("signature, issuer or audience"),
        })?
        .claims;
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(LogoutError("iat is not a number"))?;
    if iat > now + leeway {
        return Err(LogoutError("issued in the future"));
    }
    if iat + max_age + leeway < now {
        return Err(LogoutError("issued too long ago"));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or(LogoutError("no jti"))?;
    let event = claims
        .get("events")
        .and_then(|e| e.get(BACKCHANNEL_EVENT))
        .ok_or(LogoutError("no back-channel logout event"))?;
    if !event.is_object() {
        return Err(LogoutError(
            "the back-channel logout event must be a JSON object",
        ));
    }
    if claims.contains_key("nonce") {
        return Err(LogoutError("a logout token must not carry a nonce"));
    }
    let of = match (
        claims.get("sid").and_then(Value::as_str),
        claims.get("sub").and_then(Value::as_str),
    ) {
        (Some(sid), _) => LogoutOf::Session(sid.to_owned()),
        (None, Some(sub)) => LogoutOf::User(sub.to_owned()),
        (None, None) => return Err(LogoutError("neither sid nor sub")),
    };
    Ok(LogoutToken {
        of,
        jti: jti.to_owned(),
        issued_at: iat,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jws::test_keys;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const AUD: &str = "keygate";
    const NOW: u64 = 1_800_000_000;

    fn sign(key: &EncodingKey, claims: &Value, typ: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": test_keys::ISSUER, "aud": AUD, "iat": NOW - 5, "exp": NOW + 120,
            "jti": "j1", "sid": "s1", "sub": "u1",
            "events": { BACKCHANNEL_EVENT: {} },
        })
    }

    fn verify(token: &str, keys: &Keys) -> Result<LogoutToken, LogoutError> {
        verify_logout_token(token, keys, &jws::ASYMMETRIC, AUD, 5, 600, NOW)
    }

    #[test]
    fn a_valid_logout_token_names_the_session_or_the_user() {
        let (key, keys) = test_keys::pair();
        let token = verify(&sign(&key, &claims(), "logout+jwt"), &keys).unwrap();
        assert_eq!(token.of, LogoutOf::Session("s1".into()));
        assert_eq!(token.jti, "j1");
        let mut by_user = claims();
        by_user.as_object_mut().unwrap().remove("sid");
        let token = verify(&sign(&key, &by_user, "JWT"), &keys).unwrap();
        assert_eq!(token.of, LogoutOf::User("u1".into()));
    }

    #[test]
    fn each_failed_check_is_named() {
        let (key, keys) = test_keys::pair();
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = claims();
            f(c.as_object_mut().unwrap());
            verify(&sign(&key, &c, "logout+jwt"), &keys).unwrap_err().0
        };
        assert_eq!(
            with(&|c| {
                c.insert("nonce".into(), json!("n"));
            }),
            "a logout token must not carry a nonce"
        );
        assert_eq!(
            with(&|c| {
                c.remove("events");
            }),
            "no back-channel logout event"
        );
        assert_eq!(
            with(&|c| {
                c.insert("events".into(), json!({ BACKCHANNEL_EVENT: "x" }));
            }),
            "the back-channel logout event must be a JSON object"
        );
        assert_eq!(
            with(&|c| {
                c.remove("jti");
            }),
            "no jti"
        );
        assert_eq!(
            with(&|c| {
                c.remove("sid");
                c.remove("sub");
            }),
            "neither sid nor sub"
        );
        assert_eq!(
            with(&|c| {
                c.insert("iat".into(), json!(NOW + 60));
            }),
            "issued in the future"
        );
        assert_eq!(
            with(&|c| {
                c.insert("iat".into(), json!(NOW - 3600));
            }),
            "issued too long ago"
        );
        assert_eq!(
            with(&|c| {
                c.insert("aud".into(), json!("someone-else"));
            }),
            "signature, issuer or audience"
        );
        assert_eq!(
            with(&|c| {
                c.remove("exp");
            }),
            "no exp"
        );
        let wrong_typ = verify(&sign(&key, &claims(), "at+jwt"), &keys).unwrap_err();
        assert_eq!(wrong_typ.0, "typ is not logout+jwt");
        // An algorithm outside the list, whatever the key.
        let token = sign(&key, &claims(), "logout+jwt");
        let refused =
            verify_logout_token(&token, &keys, &[Algorithm::RS256], AUD, 5, 600, NOW).unwrap_err();
        assert_eq!(refused.0, "algorithm");
        assert_eq!(
            verify("a.b", &keys).unwrap_err().0,
            "malformed or encrypted"
        );
        // Signed by another key under the same kid.
        let (other, _) = test_keys::pair();
        let forged = sign(&other, &claims(), "logout+jwt");
        assert_eq!(
            verify(&forged, &keys).unwrap_err().0,
            "signature, issuer or audience"
        );
    }
}
