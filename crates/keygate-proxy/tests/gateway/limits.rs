//! The callers' rate limits: per subject for bearer tokens, per client
//! address on public routes (through trusted proxies: the forwarded
//! address), 429 with `Retry-After` and `RateLimit-*`, and one limit across
//! replicas that share Redis.

use keygate_testkit::*;

const PUBLIC: &str = "resources:\n  - uri: /public/*\n    white-listed: true\n";

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn statuses(n: usize, send: impl Fn() -> reqwest::RequestBuilder) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send().send().await.unwrap().status().as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_subject_gets_its_own_rate_limit() {
    let stack = Stack::start("rate-limit-subject: 1/min burst 3\n").await;
    let alice = stack.idp.token("alice").await;
    let bob = stack.idp.token("bob").await;
    let get = |token: &str| stack.http.get(stack.keygate.url("/api")).bearer_auth(token);
    let first = get(&alice).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(header(&first, "ratelimit-remaining").as_deref(), Some("2"));
    assert_eq!(statuses(2, || get(&alice)).await, [200, 200]);
    let refused = get(&alice).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        header(&refused, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("this user"),
        "{body}"
    );
    // Another subject is not affected, and a new token of alice's is not a new budget.
    assert_eq!(get(&bob).send().await.unwrap().status(), 200);
    let again = stack.idp.token("alice").await;
    assert_eq!(get(&again).send().await.unwrap().status(), 429);
    let metrics = stack.keygate.metrics().await;
    assert!(metrics.contains("reason=\"rate_limited\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_callers_are_limited_per_address() {
    let stack = Stack::start(&format!("rate-limit-address: 1/min burst 2\n{PUBLIC}")).await;
    let get = |xff: &'static str| {
        stack
            .http
            .get(stack.keygate.url("/public/hello"))
            .header("x-forwarded-for", xff)
    };
    // Not a trusted proxy: X-Forwarded-For is not believed, so a client
    // cannot rotate it to get a new budget.
    assert_eq!(statuses(3, || get("203.0.113.1")).await, [200, 200, 429]);
    assert_eq!(get("203.0.113.2").send().await.unwrap().status(), 429);
    // Authenticated callers are not counted per address.
    let token = stack.idp.token("alice").await;
    let resp = stack
        .http
        .get(stack.keygate.url("/api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Behind a trusted proxy, the forwarded address is the client.
    let behind = Stack::start(&format!(
        "rate-limit-address: 1/min burst 2\ntrusted-proxies: [127.0.0.1/32]\n{PUBLIC}"
    ))
    .await;
    let get = |xff: &'static str| {
        behind
            .http
            .get(behind.keygate.url("/public/hello"))
            .header("x-forwarded-for", xff)
    };
    assert_eq!(statuses(3, || get("203.0.113.1")).await, [200, 200, 429]);
    // Another client of the proxy; a forged left-most entry changes nothing.
    assert_eq!(statuses(2, || get("203.0.113.2")).await, [200, 200]);
    assert_eq!(
        get("198.51.100.9, 203.0.113.1")
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    // IPv6 clients share a budget per /64.
    assert_eq!(
        statuses(3, || get("2001:db8:5:6::1")).await,
        [200, 200, 429]
    );
    assert_eq!(get("2001:db8:5:6::2").send().await.unwrap().status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_redis_share_the_limit() {
    let redis = RedisServer::start().await;
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let extra = format!(
        "rate-limit-subject: 1/min burst 4\nredis-url: {}\n",
        redis.url()
    );
    let one = Keygate::start(&idp, &upstream, &extra).await;
    let two = Keygate::start(&idp, &upstream, &extra).await;
    one.wait_ready().await;
    two.wait_ready().await;
    let token = idp.token("alice").await;
    let http = client();
    let mut seen = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &one } else { &two };
        let resp = http
            .get(replica.url("/api"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        seen.push(resp.status().as_u16());
    }
    assert_eq!(seen, [200, 200, 200, 200, 429, 429]);
}
