//! The JWS core every signed token keygate reads goes through (access
//! tokens in [`crate::jwt`], ID tokens in [`crate::login`], logout tokens in
//! [`crate::logout`]): the header read unverified but only for `alg`, `kid`
//! and `typ`; one list of algorithms, asymmetric only, from
//! `signing-algorithms`; the key chosen by `kid`, and refused when its JWK
//! names another `alg`.

use crate::provider::{Keys, VerifyKey};
use base64::Engine as _;
use jsonwebtoken::Algorithm;

/// Every asymmetric algorithm keygate can verify (the default of
/// `signing-algorithms`). `none` and HMAC are never accepted: a token
/// "signed" with the provider's public key as an HMAC secret is refused.
pub const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The algorithm list from `signing-algorithms`; the error names an
/// unknown or symmetric algorithm.
pub fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|name| {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("unknown algorithm `{name}`"))?;
            match ASYMMETRIC.contains(&alg) {
                true => Ok(alg),
                false => Err(format!(
                    "`{name}` is symmetric; keygate accepts only asymmetric algorithms"
                )),
            }
        })
        .collect()
}

/// The parts of a JWT header keygate reads before verifying.
#[derive(Debug, serde::Deserialize)]
pub struct Header {
    /// `alg`, as written.
    pub alg: String,
    /// `kid`, when present.
    #[serde(default)]
    pub kid: Option<String>,
    /// `typ`, when present.
    #[serde(default)]
    pub typ: Option<String>,
}

/// Not three base64url parts with a JSON header (an encrypted JWE has five).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct Malformed;

/// Reads the header of a compact JWS.
pub fn header(token: &str) -> Result<Header, Malformed> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Malformed)
}

/// The header's algorithm, when it is one of `allowed`.
pub fn allowed(header: &Header, allowed: &[Algorithm]) -> Option<Algorithm> {
    header.alg.parse().ok().filter(|a| allowed.contains(a))
}

/// Why no key verifies the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// No key has this `kid`.
    Unknown,
    /// The key's JWK names another algorithm.
    Algorithm,
}

/// The provider's key for `kid` (keys without one are under ""), usable
/// with `alg`.
pub fn key_for<'k>(
    keys: &'k Keys,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k VerifyKey, KeyError> {
    let key = keys
        .by_kid
        .get(kid.unwrap_or_default())
        .ok_or(KeyError::Unknown)?;
    match key.alg.is_some_and(|a| a != alg) {
        true => Err(KeyError::Algorithm),
        false => Ok(key),
    }
}

/// Provider keys for unit tests: one Ed25519 key under `kid` "k1".
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_keys {
    use crate::provider::{Keys, Metadata, VerifyKey};
    use aws_lc_rs::signature::KeyPair as _;
    use jsonwebtoken::{DecodingKey, EncodingKey};
    use std::collections::HashMap;

    /// The test provider's issuer.
    pub(crate) const ISSUER: &str = "http://idp.example/realms/acme";

    /// A signing key and the provider keys that hold its public half.
    pub(crate) fn pair() -> (EncodingKey, Keys) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let mut by_kid = HashMap::new();
        by_kid.insert(
            "k1".to_owned(),
            VerifyKey {
                key: DecodingKey::from_ed_der(&public),
                alg: None,
            },
        );
        let metadata = Metadata {
            issuer: ISSUER.to_owned(),
            jwks_uri: format!("{ISSUER}/certs"),
            token_endpoint: None,
            authorization_endpoint: None,
            device_authorization_endpoint: None,
            revocation_endpoint: None,
            introspection_endpoint: None,
            end_session_endpoint: None,
        };
        (
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            Keys {
                metadata,
                by_kid,
                generation: 1,
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_algorithm_list_refuses_symmetric_and_unknown_names() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            algorithms(&names(&["RS256", "EdDSA"])).unwrap(),
            [Algorithm::RS256, Algorithm::EdDSA]
        );
        assert!(
            algorithms(&names(&["HS256"]))
                .unwrap_err()
                .contains("symmetric")
        );
        assert!(
            algorithms(&names(&["none"]))
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn header_and_algorithm_checks() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = |h: &str| format!("{}.e30.sig", b64(h));
        let h = header(&token(r#"{"alg":"none","kid":"k1"}"#)).unwrap();
        assert_eq!(allowed(&h, &ASYMMETRIC), None);
        let h = header(&token(r#"{"alg":"HS256"}"#)).unwrap();
        assert_eq!(allowed(&h, &ASYMMETRIC), None);
        let h = header(&token(r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#)).unwrap();
        assert_eq!(allowed(&h, &ASYMMETRIC), Some(Algorithm::EdDSA));
        assert_eq!(allowed(&h, &[Algorithm::RS256]), None);
        assert_eq!(h.typ.as_deref(), Some("JWT"));
        assert_eq!(header("a.b").unwrap_err(), Malformed);
        assert_eq!(header("a.b.c.d.e").unwrap_err(), Malformed);
        assert_eq!(
            header(&format!("{}.e30.s", b64("not json"))).unwrap_err(),
            Malformed
        );

        let (_, mut keys) = test_keys::pair();
        assert!(key_for(&keys, Some("k1"), Algorithm::EdDSA).is_ok());
        assert_eq!(
            key_for(&keys, Some("k2"), Algorithm::EdDSA).err(),
            Some(KeyError::Unknown)
        );
        assert_eq!(
            key_for(&keys, None, Algorithm::EdDSA).err(),
            Some(KeyError::Unknown)
        );
        if let Some(k) = keys.by_kid.get_mut("k1") {
            k.alg = Some(Algorithm::ES256);
        }
        assert_eq!(
            key_for(&keys, Some("k1"), Algorithm::EdDSA).err(),
            Some(KeyError::Algorithm)
        );
    }
}
