//! `token-exchange` when the provider will not exchange: dev/idp knows no
//! RFC 8693 grant, so it refuses every exchange (403), and once it is gone
//! keygate answers 503. Either way the caller's own token is never forwarded
//! in place of the exchanged one. The exchange that succeeds, its cache and
//! its coalescing are tested against Keycloak
//! (`crates/keygate/tests/keycloak_tokens.rs`).

use keygate_testkit::*;
use serde_json::Value;

const REJECTED: &str =
    "keygate_provider_grants_total{grant=\"token_exchange\",result=\"rejected\"}";
const UNAVAILABLE: &str =
    "keygate_provider_grants_total{grant=\"token_exchange\",result=\"unavailable\"}";
const EXCHANGE: &str = "token-exchange:\n  audience: orders-api\n  scopes: [orders-api]\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_exchange_is_a_403_and_the_upstream_gets_nothing() {
    let stack = Stack::start(EXCHANGE).await;
    let token = stack.idp.token("alice").await;
    let before = metric(&stack.keygate.metrics().await, REJECTED);
    for _ in 0..3 {
        let resp = stack.get("/api/orders", Some(&token)).await;
        assert_eq!(resp.status(), 403);
        let body: Value = resp.json().await.unwrap();
        assert!(body.get("method").is_none(), "reached the upstream: {body}");
        assert_eq!(body["error"], "forbidden");
        let desc = body["error_description"].as_str().unwrap();
        assert!(
            desc.contains("token exchange") && desc.contains("orders-api"),
            "{desc}"
        );
    }
    let metrics = stack.keygate.metrics().await;
    assert!(
        metrics.contains("reason=\"token_exchange_refused\""),
        "{metrics}"
    );
    // The refusal is remembered briefly: one provider call for three requests.
    assert_eq!(metric(&metrics, REJECTED), before + 1, "{metrics}");
    // Public routes need no token, so no exchange.
    let stack = Stack::start(&format!(
        "{EXCHANGE}resources:\n  - uri: /public/*\n    white-listed: true\n"
    ))
    .await;
    assert_eq!(stack.get("/public/x", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_provider_is_a_503_never_the_callers_token() {
    let mut stack = Stack::start(EXCHANGE).await;
    let token = stack.idp.token("alice").await;
    // The token verifies with the keys keygate already holds; the exchange
    // needs the provider, which is gone.
    let before = metric(&stack.keygate.metrics().await, UNAVAILABLE);
    stack.idp.kill();
    let resp = stack.get("/api/x", Some(&token)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("method").is_none(), "reached the upstream: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("token exchange"),
        "{body}"
    );
    // An outage is not remembered: each request asks again.
    assert_eq!(stack.get("/api/x", Some(&token)).await.status(), 503);
    let metrics = stack.keygate.metrics().await;
    assert_eq!(metric(&metrics, UNAVAILABLE), before + 2, "{metrics}");
}

/// While the provider hangs, one request at a time probes it; the others
/// with the same token get their 503 at once, instead of sharing (and
/// waiting for) the probe's exchange.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_provider_costs_one_probe_not_one_wait_per_request() {
    let stack = Stack::start(&format!("{EXCHANGE}openid-provider-timeout: 1s\n")).await;
    let token = stack.idp.token("alice").await;
    stack.idp.freeze();
    // The first exchange waits out openid-provider-timeout and opens the breaker.
    assert_eq!(stack.get("/api/x", Some(&token)).await.status(), 503);
    let bearer = format!("Bearer {token}");
    crate::one_probe_per_round(&stack.keygate.url("/api/x"), ("authorization", &bearer)).await;
    stack.idp.thaw();
}
