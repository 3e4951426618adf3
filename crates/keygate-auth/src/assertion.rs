//! keygate's own signing key, and the assertions it signs with it for the
//! JWT authorization grant (RFC 7523): personal keys backed by
//! `jwt-grant` are exchanged by sending the provider a short, single-use
//! JWT that says "this is user `sub`", signed by keygate, which the
//! provider trusts as an identity provider.
//!
//! The key is ECDSA P-256 (`ES256`, which every provider and FIPS builds of
//! Keycloak verify), **derived** from the server secret with HKDF and the
//! configured key generation: every replica with the same server secret
//! signs with the same key, nothing new has to be stored or distributed,
//! and raising the generation rotates it. [`AssertionSigner::jwks`] is what
//! `/oauth/jwks` publishes: this generation's public key and the one before,
//! so that replicas still on the old generation during a rolling restart
//! keep being trusted. Keys are named by their RFC 7638 thumbprint.
//!
//! An assertion carries `iss` (keygate's issuer identifier), `sub` (the
//! user), `aud` (the provider's issuer, one string: Keycloak refuses a
//! list), `iat`, `exp` (`iat` + the configured lifetime) and a random
//! `jti`; the provider refuses a `jti` it has seen.
//!
//! ```
//! use keygate_auth::assertion::AssertionSigner;
//! use std::time::Duration;
//!
//! let signer = AssertionSigner::new(&[7u8; 32], "https://api.example.com", 1)?;
//! let assertion = signer.sign("user-1", "https://login.example.com/realms/acme",
//!     Duration::from_secs(60))?;
//! assert_eq!(assertion.expose().split('.').count(), 3);
//! assert_eq!(signer.jwks()["keys"][0]["kid"], signer.kid());
//! # Ok::<(), keygate_auth::apikey::CryptoError>(())
//! ```

use crate::apikey::{CryptoError, MIN_SERVER_SECRET_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use keygate_core::{Secret, unix_now};
use std::fmt;
use std::time::Duration;

/// The HKDF salt of the signing key (the server secret is the input).
const SIGNING_SALT: &[u8] = b"keygate jwt-grant signing key";
/// How many derivations are tried before giving up: one fails only when
/// the 32 derived bytes are not below the curve order (odds about 2^-32).
const DERIVE_ATTEMPTS: u32 = 8;
/// An RFC 5915 `ECPrivateKey` for P-256 without its optional public key
/// (AWS-LC computes it): `SEQUENCE { INTEGER 1, OCTET STRING (32) d, [0]
/// OID prime256v1 }`, around the 32 bytes of `d`.
const EC_PRIVATE_KEY_HEAD: [u8; 7] = [0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
const EC_PRIVATE_KEY_TAIL: [u8; 12] = [
    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// Random bytes in a `jti` (128 bits).
const JTI_BYTES: usize = 16;

/// One generation's key pair and its public JWK.
struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    jwk: serde_json::Value,
}

/// Signs keygate's assertions; publishes its public keys. Cheap to share
/// behind an `Arc`. `Debug` shows the issuer and key id only.
pub struct AssertionSigner {
    issuer: String,
    current: SigningKey,
    previous: Option<serde_json::Value>,
    rng: SystemRandom,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("kid", &self.current.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// The signer of `issuer` with the key of `generation` (at least 1)
    /// derived from `server_secret` (at least [`MIN_SERVER_SECRET_LEN`]
    /// bytes).
    pub fn new(server_secret: &[u8], issuer: &str, generation: u32) -> Result<Self, CryptoError> {
        if server_secret.len() < MIN_SERVER_SECRET_LEN {
            return Err(CryptoError::ServerSecretTooShort(server_secret.len()));
        }
        if generation == 0 {
            return Err(CryptoError::Derive);
        }
        let current = derive_key(server_secret, generation)?;
        let previous = match generation {
            1 => None,
            g => Some(derive_key(server_secret, g - 1)?.jwk),
        };
        Ok(AssertionSigner {
            issuer: issuer.to_owned(),
            current,
            previous,
            rng: SystemRandom::new(),
        })
    }

    /// keygate's issuer identifier, the `iss` of every assertion.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id (RFC 7638 thumbprint) assertions are signed with now.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// The JWK Set `/oauth/jwks` serves: this generation's public key first,
    /// then the previous generation's, if any.
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys = vec![self.current.jwk.clone()];
        keys.extend(self.previous.clone());
        serde_json::json!({ "keys": keys })
    }

    /// A new assertion that `subject` is the user, for the provider whose
    /// issuer is `audience`, valid for `lifetime` from now, with a fresh
    /// random `jti`. It is a bearer credential for the user until it
    /// expires (or is used): hence a [`Secret`].
    pub fn sign(
        &self,
        subject: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<Secret, CryptoError> {
        let mut jti = [0u8; JTI_BYTES];
        self.rng.fill(&mut jti).map_err(|_| CryptoError::Random)?;
        let iat = unix_now();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": iat,
            "exp": iat + lifetime.as_secs().max(1),
            "jti": b64(&jti),
        });
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": self.current.kid });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .current
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| CryptoError::Derive)?;
        Ok(Secret::new(format!("{input}.{}", b64(signature.as_ref()))))
    }
}

/// The key pair of `generation`: HKDF-SHA-256 (salt [`SIGNING_SALT`], input
/// the server secret, info naming the generation and the attempt) gives
/// the private scalar; a value the curve does not accept is derived again
/// with the next attempt number.
fn derive_key(server_secret: &[u8], generation: u32) -> Result<SigningKey, CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SIGNING_SALT).extract(server_secret);
    for attempt in 0..DERIVE_ATTEMPTS {
        let info =
            format!("keygate jwt-grant ES256 key v1 generation {generation} attempt {attempt}");
        let mut scalar = [0u8; 32];
        prk.expand(&[info.as_bytes()], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut scalar))
            .map_err(|_| CryptoError::Derive)?;
        let mut der =
            Vec::with_capacity(EC_PRIVATE_KEY_HEAD.len() + 32 + EC_PRIVATE_KEY_TAIL.len());
        der.extend_from_slice(&EC_PRIVATE_KEY_HEAD);
        der.extend_from_slice(&scalar);
        der.extend_from_slice(&EC_PRIVATE_KEY_TAIL);
        scalar.fill(0);
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der);
        der.fill(0);
        if let Ok(pair) = pair {
            return signing_key(pair);
        }
    }
    Err(CryptoError::Derive)
}

/// The key id and public JWK of a key pair.
fn signing_key(pair: EcdsaKeyPair) -> Result<SigningKey, CryptoError> {
    // Uncompressed point: 0x04 || x (32) || y (32).
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CryptoError::Derive);
    }
    let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
    // RFC 7638: the required members, in lexicographic order, no spaces.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "kid": kid, "alg": "ES256", "use": "sig",
    });
    Ok(SigningKey { pair, kid, jwk })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const SERVER: &[u8] = b"0123456789abcdef0123456789abcdef-server";
    const ISSUER: &str = "https://keygate.example.com";
    const AUDIENCE: &str = "https://login.example.com/realms/acme";

    fn decoding_key(jwk: &serde_json::Value) -> DecodingKey {
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap()
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
        v.leeway = 0;
        v
    }

    fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
        let mut it = token.split('.').map(|p| {
            serde_json::from_slice::<serde_json::Value>(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap(),
            )
        });
        (it.next().unwrap().unwrap(), it.next().unwrap().unwrap())
    }

    #[test]
    fn signs_claims_the_provider_checks() {
        let signer = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let before = unix_now();
        let token = signer
            .sign("user-1", AUDIENCE, Duration::from_secs(60))
            .unwrap();
        let jwks = signer.jwks();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token.expose(),
            &decoding_key(&jwks["keys"][0]),
            &validation(),
        )
        .unwrap();
        let (header, claims) = parts(token.expose());
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], signer.kid());
        assert_eq!(data.claims, claims);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "user-1");
        // One string, not a list: Keycloak refuses "Multiple audiences".
        assert_eq!(claims["aud"], AUDIENCE);
        let iat = claims["iat"].as_u64().unwrap();
        assert!(iat >= before && iat <= unix_now());
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        assert_eq!(
            claims.as_object().unwrap().len(),
            6,
            "no other claims: {claims}"
        );
    }

    #[test]
    fn every_assertion_has_its_own_jti() {
        let signer = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let token = signer.sign("u", AUDIENCE, Duration::from_secs(60)).unwrap();
            let (_, claims) = parts(token.expose());
            assert!(seen.insert(claims["jti"].as_str().unwrap().to_owned()));
        }
    }

    #[test]
    fn rejects_an_altered_assertion_and_another_secrets_key() {
        let signer = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let key = decoding_key(&signer.jwks()["keys"][0]);
        let token = signer
            .sign("user-1", AUDIENCE, Duration::from_secs(60))
            .unwrap();
        let token = token.expose();
        // Another subject under the same signature.
        let (_, mut claims) = parts(token);
        claims["sub"] = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            token.split('.').next().unwrap(),
            b64(claims.to_string().as_bytes()),
            token.split('.').nth(2).unwrap()
        );
        assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &validation()).is_err());
        // A signer with another server secret has another key.
        let other =
            AssertionSigner::new(b"another server secret, 32 bytes or more", ISSUER, 1).unwrap();
        assert_ne!(other.kid(), signer.kid());
        let theirs = other
            .sign("user-1", AUDIENCE, Duration::from_secs(60))
            .unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(theirs.expose(), &key, &validation())
                .is_err()
        );
    }

    #[test]
    fn replicas_agree_and_generations_rotate() {
        let a = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let b = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks(), b.jwks());
        assert_eq!(a.jwks()["keys"].as_array().unwrap().len(), 1);

        let next = AssertionSigner::new(SERVER, ISSUER, 2).unwrap();
        assert_ne!(next.kid(), a.kid());
        let keys = next.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], next.kid());
        // The previous generation's key is still published...
        assert_eq!(keys[1], a.jwks()["keys"][0]);
        // ...so an old replica's assertion still verifies with it.
        let old = a.sign("u", AUDIENCE, Duration::from_secs(60)).unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                old.expose(),
                &decoding_key(&keys[1]),
                &validation()
            )
            .is_ok()
        );
        assert!(AssertionSigner::new(SERVER, ISSUER, 0).is_err());
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        let signer = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let jwk = &signer.jwks()["keys"][0];
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
        assert!(jwk.get("d").is_none(), "no private part: {jwk}");
        let canonical =
            serde_json::json!({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]});
        // serde_json's map is ordered by key: the RFC 7638 form.
        let thumb = b64(digest::digest(&digest::SHA256, canonical.to_string().as_bytes()).as_ref());
        assert_eq!(jwk["kid"], thumb);
    }

    #[test]
    fn short_server_secrets_are_refused_and_debug_hides_the_key() {
        assert_eq!(
            AssertionSigner::new(b"short", ISSUER, 1).unwrap_err(),
            CryptoError::ServerSecretTooShort(5)
        );
        let signer = AssertionSigner::new(SERVER, ISSUER, 1).unwrap();
        let text = format!("{signer:?}");
        assert!(
            text.contains(ISSUER) && text.contains(signer.kid()),
            "{text}"
        );
        assert!(!text.contains("pair"), "{text}");
    }
}
