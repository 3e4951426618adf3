//! Bearer JWT validation end to end: dev/idp issues (or signs) the token,
//! keygate verifies it, the echo upstream reports what reached it.

use keygate_testkit::*;
use serde_json::{Value, json};

async fn refused(stack: &Stack, token: &str) -> (u16, Value, Option<String>) {
    let resp = stack.get("/api/things", Some(token)).await;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.get("method").is_none(),
        "the request must not reach the upstream: {body}"
    );
    (status, body, challenge)
}

async fn assert_refused(stack: &Stack, token: &str, needle: &str) {
    let (status, body, challenge) = refused(stack, token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token", "{body}");
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.contains(needle), "expected `{needle}` in `{desc}`");
    assert!(challenge.unwrap().starts_with("Bearer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn accepts_valid_token_and_forwards_identity() {
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let resp = stack.get("/api/things?x=1", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(
        !resp.headers().contains_key("x-hop"),
        "hop-by-hop headers named in Connection are removed"
    );
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.path(), "/api/things");
    assert_eq!(echo.0["query"], "x=1");
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(
        echo.header("x-auth-subject").unwrap(),
        "a11ce000-0000-4000-a000-000000000001"
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert_eq!(echo.header("x-auth-email").unwrap(), "alice@example.com");
    assert_eq!(echo.header("x-auth-method").unwrap(), "jwt");
    let roles = echo.header("x-auth-roles").unwrap();
    assert!(roles.split(',').any(|r| r == "admin"), "{roles}");
    assert!(
        roles.split(',').any(|r| r == "APP-backend:editor"),
        "{roles}"
    );
    assert_eq!(echo.header("x-auth-groups").unwrap(), "/ops,/ops/oncall");
    let expires_in: u64 = echo.header("x-auth-expiresin").unwrap().parse().unwrap();
    assert!(expires_in > 0 && expires_in <= 300);
    assert!(
        echo.header("x-auth-token").is_none(),
        "X-Auth-Token is opt-in"
    );
    assert_eq!(echo.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "http");
    assert!(echo.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn accepts_service_account_token() {
    let stack = Stack::start("").await;
    let token = stack
        .idp
        .client_credentials("svc-reporting", "svc-reporting-secret")
        .await;
    let resp = stack.get("/api/things", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("x-auth-username").unwrap(),
        "service-account-svc-reporting"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_missing_token() {
    let stack = Stack::start("").await;
    let resp = stack.get("/api/things", None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"keygate\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_alg_none() {
    let stack = Stack::start("").await;
    let valid = stack.idp.token("alice").await;
    let payload = valid.split('.').nth(1).unwrap();
    let token = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_refused(&stack, &token, "algorithm `none` is not accepted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_hs256_signed_with_the_providers_rsa_public_key() {
    // The classic key-confusion attack: sign with HMAC using the public key
    // (here its JWK JSON text, as a verifier that blindly used "the key" would).
    let stack = Stack::start("").await;
    let jwks = stack.idp.jwks().await;
    let jwk = &jwks["keys"][0];
    let secret = jwk.to_string();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]});
    let valid = stack.idp.token("alice").await;
    let payload = valid.split('.').nth(1).unwrap();
    let signing_input = format!("{}.{payload}", b64(header.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    let token = format!("{signing_input}.{}", b64(sig.as_ref()));
    assert_refused(&stack, &token, "algorithm `HS256` is not accepted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_tampered_payload() {
    let stack = Stack::start("").await;
    let valid = stack.idp.token("bob").await;
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&b64_decode(&parts[1])).unwrap();
    claims["realm_access"]["roles"] = json!(["admin"]);
    parts[1] = b64(claims.to_string().as_bytes());
    assert_refused(&stack, &parts.join("."), "signature is invalid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_wrong_issuer() {
    let stack = Stack::start("").await;
    let token = stack
        .idp
        .sign(
            json!({"iss": "https://evil.example/realms/acme"}),
            json!({}),
        )
        .await;
    assert_refused(&stack, &token, "issuer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_wrong_audience() {
    let stack = Stack::start("").await;
    let token = stack
        .idp
        .sign(json!({"aud": ["APP-backend", "account"]}), json!({}))
        .await;
    assert_refused(&stack, &token, "audience").await;
    let token = stack.idp.sign(json!({"aud": null}), json!({})).await;
    assert_refused(&stack, &token, "aud").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accepts_configured_backend_audience() {
    let stack = Stack::start("access-token-audience: [APP-backend]\n").await;
    let token = stack
        .idp
        .sign(json!({"aud": "APP-backend"}), json!({}))
        .await;
    assert_eq!(stack.get("/x", Some(&token)).await.status(), 200);
    let token = stack.idp.sign(json!({"aud": "keygate"}), json!({})).await;
    assert_eq!(stack.get("/x", Some(&token)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_token_of_a_client_not_in_access_token_azp() {
    let stack = Stack::start("access-token-azp: [APP-frontend]\n").await;
    // dev/idp's password grant for client `keygate` gives azp `keygate`.
    let token = stack.idp.token("alice").await;
    assert_refused(&stack, &token, "azp").await;
    let token = stack
        .idp
        .sign(json!({"azp": "APP-frontend"}), json!({}))
        .await;
    assert_eq!(stack.get("/x", Some(&token)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_expired() {
    let stack = Stack::start("").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = stack
        .idp
        .sign(json!({"exp": now - 120, "iat": now - 420}), json!({}))
        .await;
    assert_refused(&stack, &token, "expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_nbf_in_the_future() {
    let stack = Stack::start("").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = stack.idp.sign(json!({"nbf": now + 600}), json!({})).await;
    assert_refused(&stack, &token, "not valid yet").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_missing_exp() {
    let stack = Stack::start("").await;
    let token = stack.idp.sign(json!({"exp": null}), json!({})).await;
    assert!(claims_of(&token).get("exp").is_none());
    assert_refused(&stack, &token, "`exp`").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_unknown_kid_the_provider_never_had() {
    let stack = Stack::start("").await;
    let token = stack
        .idp
        .sign(json!({}), json!({"kid": "never-published"}))
        .await;
    assert_refused(&stack, &token, "does not publish").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_oversized_token() {
    let stack = Stack::start("max-token-size: 4096\n").await;
    let token = stack
        .idp
        .sign(json!({"padding": "x".repeat(5000)}), json!({}))
        .await;
    assert_refused(&stack, &token, "too large").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_malformed_base64_and_json() {
    let stack = Stack::start("").await;
    assert_refused(&stack, "not-a-jwt", "malformed").await;
    assert_refused(&stack, "e30.e30", "malformed").await;
    assert_refused(&stack, "%%%.***.!!!", "malformed").await;
    let valid = stack.idp.token("alice").await;
    let parts: Vec<&str> = valid.split('.').collect();
    let bad_json = format!("{}.{}.{}", parts[0], b64(b"{\"sub\": "), parts[2]);
    assert_refused(&stack, &bad_json, "").await;
    let bad_header = format!("{}.{}.{}", b64(b"{not json"), parts[1], parts[2]);
    assert_refused(&stack, &bad_header, "malformed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_id_token_as_access_token() {
    let stack = Stack::start("").await;
    let token = stack.idp.sign(json!({"typ": "ID"}), json!({})).await;
    assert_refused(&stack, &token, "not an access token").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_accepts_new_tokens_without_errors() {
    let stack = Stack::start("jwks-min-refresh-interval: 200ms\n").await;
    let old = stack.idp.token("alice").await;
    let old_kid = claims_kid(&old);
    // Steady traffic with the old token while the provider rotates its key.
    let url = stack.keygate.url("/api/things");
    let traffic = {
        let (http, url, old) = (stack.http.clone(), url.clone(), old.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..100 {
                statuses.push(
                    http.get(&url)
                        .bearer_auth(&old)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    let new_kid = stack.idp.rotate().await;
    assert_ne!(new_kid, old_kid);
    // Many concurrent first uses of new-key tokens: all must pass.
    let mut tasks = Vec::new();
    for user in ["alice", "bob", "carol", "alice", "bob"] {
        let token = stack.idp.token(user).await;
        assert_eq!(claims_kid(&token), new_kid);
        for _ in 0..10 {
            let (http, url, token) = (stack.http.clone(), url.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                http.get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        traffic.await.unwrap().iter().all(|s| *s == 200),
        "no request may fail during rotation"
    );
}

fn claims_kid(token: &str) -> String {
    let header: Value =
        serde_json::from_slice(&b64_decode(token.split('.').next().unwrap())).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}
