//! Fuzzes what keygate reads of a bearer JWT: the unverified header
//! (`jws::header`), the claims turned into an `Identity` (`from_claims`),
//! and the full `jsonwebtoken::decode` with a fixed RS256 key, which no
//! fuzzed token may pass.
//!
//! Input: text used as a compact JWT; its payload part (base64url) and the
//! text itself are also tried as JSON claim objects.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keygate_auth::jws::header as parse_header;
use keygate_core::{AuthMethod, Identity, Secret};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Public half of a 2048-bit RSA key made with `openssl genrsa 2048` for
/// these tests; the private half was used once to sign the seed tokens in
/// `corpus/jwt_header_claims/` and then discarded (see docs/fuzzing.md).
const RSA_N: &str = "s2jd1nyCZOqXFNWcRS-_-qxHZs1QZSfZ8Cedimx5MbEu1eSRa2Yzl9Vwrp16KUrQUxsvq37DgraGl_ZJRnbmFch0Zc30EjqOC0mWOuFTNvDuADEkMcttNiJoJUfD0GX_rmUWeb1KiT3GGlimnBxxFSpXVdK1ODWzeyNNSFa2SUQXlr1olWqpv1wD_3EQ4xpVBvfnEetoU9GBlbtQmqaWVz61Vo6sf7btz4_6Uhn0T0u_7N22ytT0pNHfDlO6nExrX_wxSS_hQSRlGKZXJFfMlbzao442X8IOS5G3nWwcXLzAIMjuNs6ATE_fK-m8ZnVTBkb00Quo4ktKzzsc-m8JMQ";
const RSA_E: &str = "AQAB";

fn verifier() -> &'static (DecodingKey, Validation) {
    static VERIFIER: OnceLock<(DecodingKey, Validation)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = DecodingKey::from_rsa_components(RSA_N, RSA_E)
            .unwrap_or_else(|e| panic!("fixed RSA key refused: {e}"));
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&["https://idp.fuzz.invalid/realms/fuzz"]);
        validation.set_audience(&["keygate"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        (key, validation)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // The unverified header: only a three-part token with a base64url JSON
    // header whose `alg` is a string passes, and `alg` is read as written.
    if let Ok(header) = parse_header(text) {
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 3, "{text:?}");
        let json = URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap_or_else(|e| panic!("header accepted but not base64url: {e}"));
        // serde_json skips the fields it ignores without checking their
        // UTF-8, so compare against a lossy reading of the header.
        let value: Value = serde_json::from_str(&String::from_utf8_lossy(&json))
            .unwrap_or_else(|e| panic!("header accepted but not JSON: {e}"));
        assert_eq!(
            value.get("alg").and_then(Value::as_str),
            Some(header.alg.as_str())
        );
        assert_eq!(
            value.get("kid").and_then(Value::as_str),
            header.kid.as_deref()
        );
    }

    // No fuzzed token verifies: the input holds no valid RS256 signature
    // over claims that are still valid.
    let (key, validation) = verifier();
    if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(text, key, validation) {
        panic!("fuzzed token verified: {:?}", data.claims);
    }

    // Claims, from the payload part and from the text itself.
    if let Some(payload) = text.split('.').nth(1)
        && let Ok(json) = URL_SAFE_NO_PAD.decode(payload)
        && let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(&json)
    {
        check_identity(claims, text);
    }
    if let Ok(claims) = serde_json::from_str::<Map<String, Value>>(text) {
        check_identity(claims, text);
    }
});

fn check_identity(claims: Map<String, Value>, token: &str) {
    let id = Identity::from_claims(claims.clone(), Secret::new(token), AuthMethod::Jwt);
    let str_claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);

    assert_eq!(id.subject, str_claim("sub").unwrap_or_default());
    assert_eq!(id.username, str_claim("preferred_username"));
    assert_eq!(id.email, str_claim("email"));
    assert_eq!(
        id.expires_at,
        claims.get("exp").and_then(Value::as_u64).unwrap_or(0)
    );
    assert_eq!(id.method, AuthMethod::Jwt);
    assert_eq!(id.access_token.expose(), token);
    assert!(id.key_id.is_none());
    assert_eq!(id.claims, claims);

    // Roles: the realm roles, then `client:role` for each client role.
    let mut expected = string_list(claims.get("realm_access").and_then(|r| r.get("roles")));
    if let Some(Value::Object(clients)) = claims.get("resource_access") {
        for (client, access) in clients {
            for role in string_list(access.get("roles")) {
                expected.push(format!("{client}:{role}"));
            }
        }
    }
    assert_eq!(id.roles, expected);
    for role in &id.roles {
        assert!(id.has_role(role));
    }
    assert_eq!(id.groups, string_list(claims.get("groups")));

    // Scopes: the `scope` claim split on spaces, no empty entries.
    for scope in &id.scopes {
        assert!(!scope.is_empty() && !scope.contains(' '), "{scope:?}");
    }
    let joined = id.scopes.join(" ");
    let scope = str_claim("scope").unwrap_or_default();
    let expected_scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    assert_eq!(joined, expected_scopes.join(" "));
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}
