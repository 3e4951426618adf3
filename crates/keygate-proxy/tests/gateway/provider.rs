//! The provider down at start-up, down after start-up, and hung.

use keygate_testkit::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_at_start_then_up() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}/realms/acme");
    let upstream = Upstream::start().await;
    let keygate = Keygate::start_yaml(&base_config(
        &issuer,
        &upstream.url(),
        "jwks-refresh-interval: 1s\nresources:\n  - uri: /public/*\n    white-listed: true\n",
    ))
    .await;
    let http = client();
    // keygate started although the provider is down: protected routes get 503,
    // never a pass; white-listed routes still work.
    let resp = http
        .get(keygate.url("/api"))
        .bearer_auth("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(
        http.get(keygate.url("/api")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        http.get(keygate.url("/public/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let health: serde_json::Value = http
        .get(keygate.url("/oauth/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["provider"]["keys_loaded"], false);
    assert!(health["provider"]["last_error"].is_string());
    assert_eq!(
        http.get(keygate.url("/oauth/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    // The provider comes up: keygate picks its keys up by itself.
    let idp = Idp::start_on(port, &[]).await;
    keygate.wait_ready().await;
    let token = idp.token("alice").await;
    assert_eq!(
        http.get(keygate.url("/api"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_after_start_keeps_serving_with_cached_keys() {
    let mut stack =
        Stack::start("jwks-refresh-interval: 1s\njwks-min-refresh-interval: 100ms\n").await;
    let used = stack.idp.token("alice").await;
    let unused = stack.idp.token("bob").await;
    let forged_kid = stack
        .idp
        .sign(
            serde_json::json!({}),
            serde_json::json!({"kid": "rotated-while-down"}),
        )
        .await;
    assert_eq!(stack.get("/api", Some(&used)).await.status(), 200);
    stack.idp.kill();
    // Let at least one background refresh fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stack.get("/api", Some(&used)).await.status(),
        200,
        "cached identity"
    );
    assert_eq!(
        stack.get("/api", Some(&unused)).await.status(),
        200,
        "cached keys verify new tokens"
    );
    let health: serde_json::Value = stack.get("/oauth/health", None).await.json().await.unwrap();
    assert_eq!(health["provider"]["keys_loaded"], true);
    assert!(health["provider"]["last_error"].is_string(), "{health}");
    // A key keygate cannot fetch: 503 (it may be a real rotation), never a pass.
    assert_eq!(stack.get("/api", Some(&forged_kid)).await.status(), 503);
    let i = used.len() - 10;
    let swap = if &used[i..=i] == "A" { "B" } else { "A" };
    let bad = format!("{}{swap}{}", &used[..i], &used[i + 1..]);
    assert_eq!(stack.get("/api", Some(&bad)).await.status(), 401);
}

/// With `token-introspection: always`, while the provider hangs one request
/// at a time probes it; the others with the same token get their 503 at
/// once, instead of sharing (and waiting for) the probe's introspection.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_introspection_costs_one_probe_not_one_wait_per_request() {
    let stack = Stack::start("token-introspection: always\nopenid-provider-timeout: 1s\n").await;
    let token = stack.idp.token("alice").await;
    assert_eq!(stack.get("/api/x", Some(&token)).await.status(), 200);
    let fresh = stack.idp.token("alice").await;
    stack.idp.freeze();
    // The first introspection waits out openid-provider-timeout and opens
    // the breaker; the answer already given stays cached meanwhile.
    assert_eq!(stack.get("/api/x", Some(&fresh)).await.status(), 503);
    assert_eq!(stack.get("/api/x", Some(&token)).await.status(), 200);
    let bearer = format!("Bearer {fresh}");
    crate::one_probe_per_round(&stack.keygate.url("/api/x"), ("authorization", &bearer)).await;
    stack.idp.thaw();
}
