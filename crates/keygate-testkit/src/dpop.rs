//! [`DpopKey`]: a client's DPoP key (RFC 9449), generated per test, that
//! makes proofs for the provider's token endpoint and for keygate.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use serde_json::{Value, json};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A P-256 key pair and its public JWK.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    /// The public key as a JWK (`kty`, `crv`, `x`, `y`).
    pub jwk: Value,
}

impl Default for DpopKey {
    fn default() -> Self {
        Self::new()
    }
}

impl DpopKey {
    /// A new random key.
    pub fn new() -> DpopKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        DpopKey { pair, jwk }
    }

    /// The RFC 7638 SHA-256 thumbprint: a bound token's `cnf.jkt`.
    pub fn jkt(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A proof for `htm` `htu`, made now, for `token` (its `ath`) when given.
    pub fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.proof_at(htm, htu, token, crate::now())
    }

    /// A proof made at `iat`.
    pub fn proof_at(&self, htm: &str, htu: &str, token: Option<&str>, iat: u64) -> String {
        let mut claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": htm, "htu": htu, "iat": iat,
        });
        if let Some(token) = token {
            claims["ath"] = json!(b64(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                token.as_bytes()
            )
            .as_ref()));
        }
        self.sign(&claims)
    }

    /// A proof with exactly these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}
