//! Several upstreams in one process: requests routed by host and path
//! prefix, each upstream with its own rules, audiences and headers, the
//! top-level `upstream-url` for the rest, and forward-auth evaluating the
//! rules of the upstream the front proxy will call.

use keygate_testkit::*;
use serde_json::json;

struct Three {
    idp: Idp,
    default: Upstream,
    orders: Upstream,
    billing: Upstream,
    keygate: Keygate,
    http: reqwest::Client,
}

async fn three(with_default: bool) -> Three {
    let idp = Idp::start().await;
    let (default, orders, billing) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let upstreams = format!(
        "upstreams:\n\
         - name: orders\n  url: {}\n  path-prefix: /orders\n  strip-prefix: true\n  \
           headers: {{X-Site: orders}}\n  add-claims: [preferred_username]\n  \
           resources:\n    - uri: /orders/*\n      roles: [admin]\n\
         - name: billing\n  url: {}\n  hosts: [billing.example.test]\n  \
           access-token-audience: [billing-api]\n\
         trusted-proxies: [127.0.0.1/32]\n\
         resources:\n  - uri: /public/*\n    white-listed: true\n",
        orders.url(),
        billing.url()
    );
    let mut yaml = base_config(&idp.issuer, &default.url(), &upstreams);
    if !with_default {
        yaml = yaml
            .lines()
            .filter(|l| !l.starts_with("upstream-url:"))
            .collect::<Vec<_>>()
            .join("\n");
        yaml.push('\n');
    }
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    Three {
        idp,
        default,
        orders,
        billing,
        keygate,
        http: client(),
    }
}

async fn echo(resp: reqwest::Response) -> Echo {
    assert_eq!(resp.status(), 200);
    Echo(resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_to_the_upstream_of_their_host_and_prefix_with_its_rules() {
    let t = three(true).await;
    let (alice, bob) = (t.idp.token("alice").await, t.idp.token("bob").await);
    let get = |path: &str, token: &str| t.http.get(t.keygate.url(path)).bearer_auth(token).send();

    // /orders: its upstream, the prefix stripped, its headers and its rule.
    let seen = echo(get("/orders/42?x=1", &alice).await.unwrap()).await;
    assert_eq!(seen.0["path"], "/42");
    assert_eq!(seen.0["query"], "x=1");
    assert_eq!(seen.header("x-site").as_deref(), Some("orders"));
    assert!(
        seen.header("x-auth-preferred-username").is_some(),
        "its add-claims"
    );
    assert_eq!(
        seen.header("host"),
        Some(t.orders.addr.to_string()),
        "the orders upstream"
    );
    assert_eq!(
        get("/orders/42", &bob).await.unwrap().status(),
        403,
        "admin only"
    );

    // Not under /orders: the default upstream, the top-level rules, no X-Site.
    let seen = echo(get("/ordersx", &bob).await.unwrap()).await;
    assert_eq!(seen.0["path"], "/ordersx");
    assert_eq!(seen.header("host"), Some(t.default.addr.to_string()));
    assert!(seen.header("x-site").is_none());
    assert!(seen.header("x-auth-preferred-username").is_none());
    let public = t.http.get(t.keygate.url("/public/a")).send().await.unwrap();
    assert_eq!(public.status(), 200);

    // billing.example.test: its own audience. Alice's token is for keygate,
    // not for billing; a billing-api token is not accepted elsewhere.
    let billing = |token: &str| {
        t.http
            .get(t.keygate.url("/invoices"))
            .header("host", "billing.example.test")
            .bearer_auth(token)
            .send()
    };
    assert_eq!(billing(&alice).await.unwrap().status(), 401);
    let for_billing = t.idp.sign(json!({"aud": "billing-api"}), json!({})).await;
    let seen = echo(billing(&for_billing).await.unwrap()).await;
    assert_eq!(seen.0["path"], "/invoices");
    assert_eq!(seen.header("host"), Some(t.billing.addr.to_string()));
    assert_eq!(get("/anything", &for_billing).await.unwrap().status(), 401);

    // The log and metrics name the upstream.
    let metrics = t.keygate.metrics().await;
    assert!(metrics.contains("route=\"orders:/orders/*\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_evaluates_the_rules_of_the_matching_upstream() {
    let t = three(true).await;
    let (alice, bob) = (t.idp.token("alice").await, t.idp.token("bob").await);
    let ask = |uri: &'static str, host: &'static str, token: &str| {
        t.http
            .get(t.keygate.url("/oauth/auth"))
            .header("x-original-method", "GET")
            .header("x-original-uri", uri)
            .header("x-forwarded-host", host)
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        ask("/orders/1", "api.example.test", &alice)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ask("/orders/1", "api.example.test", &bob)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        ask("/other", "api.example.test", &bob)
            .await
            .unwrap()
            .status(),
        200
    );
    // The billing host wants its own audience.
    assert_eq!(
        ask("/x", "billing.example.test", &bob)
            .await
            .unwrap()
            .status(),
        401
    );
    let resp = ask("/orders/1", "api.example.test", &alice).await.unwrap();
    assert!(
        resp.headers().contains_key("x-auth-preferred-username"),
        "its add-claims"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_upstream_url_an_unserved_path_is_404() {
    let t = three(false).await;
    let alice = t.idp.token("alice").await;
    let resp = t
        .http
        .get(t.keygate.url("/elsewhere"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let ok = t
        .http
        .get(t.keygate.url("/orders/1"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
