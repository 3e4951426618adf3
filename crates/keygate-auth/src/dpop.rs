//! DPoP proofs (RFC 9449): the check that the caller of a sender-constrained
//! access token holds the private key the token is bound to.
//!
//! A DPoP-bound access token carries `cnf.jkt`, the SHA-256 thumbprint
//! (RFC 7638) of the client's public key. With each request the client sends
//! a proof, a JWT in the `DPoP` header signed with that key, naming the
//! request's method (`htm`) and URL (`htu`), when it was made (`iat`), a
//! unique id (`jti`) and the hash of the access token (`ath`).
//! [`verify_proof`] checks all of it, in the order of RFC 9449 §4.3:
//!
//! 1. a compact JWS of at most [`MAX_PROOF_SIZE`] bytes;
//! 2. `typ` is `dpop+jwt`;
//! 3. `alg` is one of keygate's asymmetric algorithms (`none` and HMAC never);
//! 4. the header's `jwk` is a public key (no private or symmetric members);
//! 5. the signature verifies with that key;
//! 6. `jti`, `htm`, `htu`, `iat` and `ath` are present and well formed;
//! 7. `htm` is the request's method and `htu` its URL, both as the client
//!    sent them (scheme, host and path compared after RFC 3986 §6.2.2–6.2.3
//!    normalization, query and fragment ignored);
//! 8. `iat` is at most `max-age` old and not in the future beyond the leeway;
//! 9. `ath` is the hash of the presented access token;
//! 10. the key's thumbprint is the token's `cnf.jkt`.
//!
//! The `jti` is returned for the caller's replay check: a proof is accepted
//! once (the proxy remembers `jti`s for as long as a proof is fresh, shared
//! through Redis when configured). Nothing here reads a clock or a cache, so
//! every step is unit-tested.

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keygate_core::Reason;
use serde_json::{Map, Value};
use std::time::Duration;

/// Proofs longer than this are refused unread (a proof carries one public
/// key; an RSA-4096 proof is about 1.5 KB).
pub const MAX_PROOF_SIZE: usize = 4096;

/// Longest accepted `jti` (the RFC suggests 96 bits of randomness; UUIDs
/// are 36 characters).
const MAX_JTI_LEN: usize = 128;

/// What a proof must match: the request as the client sent it, and the
/// token it comes with.
#[derive(Debug)]
pub struct Expected<'a> {
    /// The request's method, as sent (`GET`).
    pub method: &'a str,
    /// The request's URL as the client sent it: scheme, host (and port) and
    /// path; a query is ignored.
    pub url: &'a str,
    /// The access token presented with the proof (for `ath`).
    pub access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    /// The time, seconds since the Unix epoch.
    pub now: u64,
}

/// How proofs are judged.
#[derive(Clone, Debug)]
pub struct ProofSettings {
    /// Accepted signature algorithms (`signing-algorithms`).
    pub algorithms: Vec<Algorithm>,
    /// How old a proof may be (`dpop-max-age`).
    pub max_age: Duration,
    /// How far in the future `iat` may be (`clock-skew`).
    pub leeway: Duration,
}

impl ProofSettings {
    /// How long a proof's `jti` must be remembered: as long as the proof
    /// could still be accepted.
    pub fn replay_window(&self) -> Duration {
        self.max_age + self.leeway * 2
    }

    /// The `algs` of a `WWW-Authenticate: DPoP` challenge.
    pub fn algs(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A proof that passed every check; its `jti` still has to be new.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The proof's `jti`.
    pub jti: String,
}

/// Why a proof was refused. The text is safe to send to the client: it
/// never repeats the proof or the token, and names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// The request has no `DPoP` header.
    #[error("a DPoP-bound token needs a DPoP proof in the `DPoP` header")]
    Missing,
    /// More than one `DPoP` header.
    #[error("more than one DPoP header")]
    Multiple,
    /// Not a compact JWS with JSON parts, or too large.
    #[error("the DPoP proof is malformed")]
    Malformed,
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    /// `alg` is not accepted.
    #[error("the DPoP proof's algorithm is not accepted")]
    Algorithm,
    /// The header's `jwk` is missing, private, symmetric or unusable.
    #[error("the DPoP proof's jwk must be an asymmetric public key")]
    BadKey,
    /// The signature does not verify with the header's key.
    #[error("the DPoP proof's signature is invalid")]
    BadSignature,
    /// A required claim is missing or of the wrong type.
    #[error("the DPoP proof has no valid `{0}` claim")]
    MissingClaim(&'static str),
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for another HTTP method (htm)")]
    WrongMethod,
    /// `htu` is not the request's URL.
    #[error(
        "the DPoP proof is for another URL (htu must be the URL the request was sent to, \
         without query)"
    )]
    WrongUrl,
    /// `iat` is older than `dpop-max-age`.
    #[error("the DPoP proof is too old: make a new proof for each request")]
    Stale,
    /// `iat` is in the future beyond the leeway.
    #[error("the DPoP proof is dated in the future")]
    FromFuture,
    /// `ath` is not the hash of the presented token.
    #[error("the DPoP proof was made for another access token (ath)")]
    WrongToken,
    /// The proof's key is not the one the token is bound to.
    #[error("the DPoP proof is signed with a key the token is not bound to (cnf.jkt)")]
    WrongKey,
    /// The proof's `jti` was seen before.
    #[error("the DPoP proof was used before: make a new proof for each request")]
    Replayed,
}

impl DpopError {
    /// The reason for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            DpopError::Missing | DpopError::Multiple => Reason::DpopProofMissing,
            DpopError::Replayed => Reason::DpopProofReplayed,
            DpopError::WrongKey => Reason::DpopWrongKey,
            _ => Reason::DpopProofInvalid,
        }
    }
}

/// Verifies a DPoP proof against the request and its bound token; see the
/// module docs for the checks.
pub fn verify_proof(
    proof: &str,
    expected: &Expected<'_>,
    settings: &ProofSettings,
) -> Result<VerifiedProof, DpopError> {
    if proof.len() > MAX_PROOF_SIZE {
        return Err(DpopError::Malformed);
    }
    let header = proof_header(proof)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopError::WrongType);
    }
    let alg: Algorithm = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .filter(|a| settings.algorithms.contains(a))
        .ok_or(DpopError::Algorithm)?;
    let jwk = public_jwk(&header)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopError::BadKey)?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(proof, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
            | jsonwebtoken::errors::ErrorKind::InvalidEddsaKey => DpopError::BadKey,
            _ => DpopError::Malformed,
        })?
        .claims;

    let text = |name: &'static str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(DpopError::MissingClaim(name))
    };
    let jti = text("jti")?;
    if jti.len() > MAX_JTI_LEN {
        return Err(DpopError::MissingClaim("jti"));
    }
    let htm = text("htm")?;
    let htu = text("htu")?;
    let ath = text("ath")?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(DpopError::MissingClaim("iat"))?;

    if htm != expected.method {
        return Err(DpopError::WrongMethod);
    }
    match (normalize_url(htu), normalize_url(expected.url)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(DpopError::WrongUrl),
    }
    if iat > expected.now + settings.leeway.as_secs() {
        return Err(DpopError::FromFuture);
    }
    if iat + settings.max_age.as_secs() < expected.now {
        return Err(DpopError::Stale);
    }
    if !same(ath.as_bytes(), token_hash(expected.access_token).as_bytes()) {
        return Err(DpopError::WrongToken);
    }
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| DpopError::BadKey)?;
    if !same(thumbprint.as_bytes(), expected.jkt.as_bytes()) {
        return Err(DpopError::WrongKey);
    }
    Ok(VerifiedProof {
        jti: jti.to_owned(),
    })
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub fn token_hash(access_token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The token's `cnf.jkt`, when it is bound to a key.
pub fn bound_key(claims: &Map<String, Value>) -> Option<&str> {
    claims
        .get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(Value::as_str)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The proof's header as JSON (read before verifying only for `typ`, `alg`
/// and `jwk`, which the verification itself needs).
fn proof_header(proof: &str) -> Result<Map<String, Value>, DpopError> {
    let mut parts = proof.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| DpopError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| DpopError::Malformed)
}

/// The header's `jwk`, refused when it holds private-key members or is a
/// symmetric key (RFC 9449 §4.3 step 7).
fn public_jwk(header: &Map<String, Value>) -> Result<Jwk, DpopError> {
    let raw = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(DpopError::BadKey)?;
    const PRIVATE: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];
    if PRIVATE.iter().any(|m| raw.contains_key(*m)) {
        return Err(DpopError::BadKey);
    }
    if !matches!(
        raw.get("kty").and_then(Value::as_str),
        Some("EC" | "RSA" | "OKP")
    ) {
        return Err(DpopError::BadKey);
    }
    serde_json::from_value(Value::Object(raw.clone())).map_err(|_| DpopError::BadKey)
}

/// A URL reduced for comparison (RFC 3986 §6.2.2 and §6.2.3): scheme and
/// host in lower case, the default port dropped, dot segments removed,
/// percent-encodings of unreserved characters decoded and the others in
/// upper case, an empty path as `/`; query and fragment dropped. `None`
/// for what is not an absolute http(s) URL.
fn normalize_url(url: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return None;
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return None;
    }
    parsed.set_query(None);
    parsed.set_fragment(None);
    let path = normalize_percent(parsed.path());
    parsed.set_path(&path);
    Some(parsed.into())
}

/// Percent-encodings of unreserved characters decoded, the others written
/// with upper-case hex digits.
fn normalize_percent(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    const URL: &str = "https://api.example.com/orders/1";
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    }

    /// A client's P-256 key and its public JWK.
    struct Client {
        pair: EcdsaKeyPair,
        jwk: Value,
    }

    impl Client {
        fn new() -> Client {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_ref(),
            )
            .unwrap();
            let point = pair.public_key().as_ref();
            let jwk = json!({
                "kty": "EC", "crv": "P-256",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            });
            Client { pair, jwk }
        }

        fn jkt(&self) -> String {
            serde_json::from_value::<Jwk>(self.jwk.clone())
                .unwrap()
                .thumbprint(ThumbprintHash::SHA256)
                .unwrap()
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
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

        fn header(&self) -> Value {
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk})
        }

        fn claims(&self, now: u64) -> Value {
            json!({
                "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": URL, "iat": now,
                "ath": token_hash(TOKEN),
            })
        }

        fn proof(&self, now: u64) -> String {
            self.sign(&self.header(), &self.claims(now))
        }
    }

    fn settings() -> ProofSettings {
        ProofSettings {
            algorithms: crate::jws::ASYMMETRIC.to_vec(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn check(proof: &str, jkt: &str) -> Result<VerifiedProof, DpopError> {
        check_at(proof, jkt, "GET", URL, NOW)
    }

    fn check_at(
        proof: &str,
        jkt: &str,
        method: &str,
        url: &str,
        now: u64,
    ) -> Result<VerifiedProof, DpopError> {
        verify_proof(
            proof,
            &Expected {
                method,
                url,
                access_token: TOKEN,
                jkt,
                now,
            },
            &settings(),
        )
    }

    #[test]
    fn accepts_a_valid_proof_and_returns_its_jti() {
        let c = Client::new();
        let got = check(&c.proof(NOW), &c.jkt()).unwrap();
        assert_eq!(got.jti, "e1j3V_bKic8-LAEB");
    }

    #[test]
    fn rfc_7638_thumbprint_example() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rejects_a_proof_signed_with_another_key_than_cnf_jkt() {
        let (c, other) = (Client::new(), Client::new());
        assert_eq!(check(&other.proof(NOW), &c.jkt()), Err(DpopError::WrongKey));
    }

    #[test]
    fn rejects_a_proof_whose_signature_does_not_match_its_jwk() {
        let (c, other) = (Client::new(), Client::new());
        // `other` signs but names `c`'s public key in the header.
        let forged = other.sign(&c.header(), &c.claims(NOW));
        assert_eq!(check(&forged, &c.jkt()), Err(DpopError::BadSignature));
    }

    #[test]
    fn rejects_alg_none_and_hmac() {
        let c = Client::new();
        let mut header = c.header();
        header["alg"] = json!("none");
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(c.claims(NOW).to_string().as_bytes())
        );
        assert_eq!(check(&unsigned, &c.jkt()), Err(DpopError::Algorithm));
        header["alg"] = json!("HS256");
        assert_eq!(
            check(&c.sign(&header, &c.claims(NOW)), &c.jkt()),
            Err(DpopError::Algorithm)
        );
    }

    #[test]
    fn rejects_a_wrong_typ() {
        let c = Client::new();
        for typ in [json!("JWT"), json!(null), json!("DPOP+JWT ")] {
            let mut header = c.header();
            header["typ"] = typ;
            assert_eq!(
                check(&c.sign(&header, &c.claims(NOW)), &c.jkt()),
                Err(DpopError::WrongType)
            );
        }
    }

    #[test]
    fn rejects_a_jwk_with_private_members_or_a_symmetric_key() {
        let c = Client::new();
        let mut header = c.header();
        header["jwk"]["d"] = json!("c2VjcmV0");
        assert_eq!(
            check(&c.sign(&header, &c.claims(NOW)), &c.jkt()),
            Err(DpopError::BadKey)
        );
        header["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(
            check(&c.sign(&header, &c.claims(NOW)), &c.jkt()),
            Err(DpopError::BadKey)
        );
        let mut header = c.header();
        header.as_object_mut().unwrap().remove("jwk");
        assert_eq!(
            check(&c.sign(&header, &c.claims(NOW)), &c.jkt()),
            Err(DpopError::BadKey)
        );
    }

    #[test]
    fn rejects_a_proof_for_another_method_or_url() {
        let c = Client::new();
        let p = c.proof(NOW);
        assert_eq!(
            check_at(&p, &c.jkt(), "POST", URL, NOW),
            Err(DpopError::WrongMethod)
        );
        assert_eq!(
            check_at(&p, &c.jkt(), "get", URL, NOW),
            Err(DpopError::WrongMethod)
        );
        for url in [
            "https://api.example.com/orders/2",
            "http://api.example.com/orders/1",
            "https://evil.example.com/orders/1",
            "https://api.example.com:8443/orders/1",
            "https://api.example.com/orders/1/",
        ] {
            assert_eq!(
                check_at(&p, &c.jkt(), "GET", url, NOW),
                Err(DpopError::WrongUrl),
                "{url}"
            );
        }
    }

    #[test]
    fn htu_is_compared_after_normalization_and_without_query() {
        let c = Client::new();
        let p = c.proof(NOW);
        for url in [
            "https://API.Example.com/orders/1",
            "https://api.example.com:443/orders/1",
            "https://api.example.com/orders/./1",
            "https://api.example.com/%6Frders/1",
            "https://api.example.com/orders/1?page=2",
            "https://api.example.com/orders/1#top",
        ] {
            assert!(check_at(&p, &c.jkt(), "GET", url, NOW).is_ok(), "{url}");
        }
        let mut claims = c.claims(NOW);
        claims["htu"] = json!("https://api.example.com/orders/1?x=1");
        assert!(check(&c.sign(&c.header(), &claims), &c.jkt()).is_ok());
        claims["htu"] = json!("/orders/1");
        assert_eq!(
            check(&c.sign(&c.header(), &claims), &c.jkt()),
            Err(DpopError::WrongUrl)
        );
        assert_eq!(
            normalize_percent("/a%2fb%7e%41"),
            "/a%2Fb~A",
            "reserved stay encoded (upper case), unreserved decoded"
        );
    }

    #[test]
    fn rejects_stale_and_future_proofs() {
        let c = Client::new();
        assert_eq!(check(&c.proof(NOW - 61), &c.jkt()), Err(DpopError::Stale));
        assert!(check(&c.proof(NOW - 60), &c.jkt()).is_ok());
        assert_eq!(
            check(&c.proof(NOW + 6), &c.jkt()),
            Err(DpopError::FromFuture)
        );
        assert!(check(&c.proof(NOW + 5), &c.jkt()).is_ok());
    }

    #[test]
    fn rejects_a_proof_made_for_another_token() {
        let c = Client::new();
        let mut claims = c.claims(NOW);
        claims["ath"] = json!(token_hash("another.token.value"));
        assert_eq!(
            check(&c.sign(&c.header(), &claims), &c.jkt()),
            Err(DpopError::WrongToken)
        );
    }

    #[test]
    fn rejects_missing_claims() {
        let c = Client::new();
        for claim in ["jti", "htm", "htu", "iat", "ath"] {
            let mut claims = c.claims(NOW);
            claims.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                check(&c.sign(&c.header(), &claims), &c.jkt()),
                Err(DpopError::MissingClaim(claim)),
                "{claim}"
            );
        }
        let mut claims = c.claims(NOW);
        claims["jti"] = json!("x".repeat(MAX_JTI_LEN + 1));
        assert_eq!(
            check(&c.sign(&c.header(), &claims), &c.jkt()),
            Err(DpopError::MissingClaim("jti"))
        );
    }

    #[test]
    fn rejects_malformed_and_oversized_proofs() {
        let c = Client::new();
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert_eq!(check(bad, &c.jkt()), Err(DpopError::Malformed), "{bad}");
        }
        let mut claims = c.claims(NOW);
        claims["pad"] = json!("x".repeat(MAX_PROOF_SIZE));
        assert_eq!(
            check(&c.sign(&c.header(), &claims), &c.jkt()),
            Err(DpopError::Malformed)
        );
    }

    #[test]
    fn reads_cnf_jkt() {
        let claims = json!({"cnf": {"jkt": "abc"}});
        assert_eq!(bound_key(claims.as_object().unwrap()), Some("abc"));
        assert_eq!(bound_key(json!({}).as_object().unwrap()), None);
    }
}
