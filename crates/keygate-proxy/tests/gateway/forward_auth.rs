//! Forward-auth through a real nginx (`auth_request`), and the
//! `trusted-proxies` check.

use keygate_testkit::*;

const RULES: &str = "resources:\n  - uri: /public/*\n    white-listed: true\n  - uri: /admin/*\n    roles: [admin]\n";

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_allows_denies_and_passes_identity() {
    let stack = Stack::start(&format!("trusted-proxies: [127.0.0.1]\n{RULES}")).await;
    let nginx = Nginx::forward_auth(stack.keygate.addr, stack.upstream.addr).await;
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let http = client();
    let alice = stack.idp.token("alice").await;
    let bob = stack.idp.token("bob").await;

    let resp = http
        .get(format!("{base}/admin/x?q=1"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.path(), "/admin/x");
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {alice}")
    );

    assert_eq!(
        http.get(format!("{base}/admin/x"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let resp = http.get(format!("{base}/admin/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        http.get(format!("{base}/public/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The original URI is what is authorized, normalized by keygate.
    let (code, _) = raw_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port)),
        "/public/%2e%2e/admin/x",
        &[("Authorization", &format!("Bearer {bob}"))],
    )
    .await;
    assert_eq!(code, 403);
    // A client cannot pick the authorized URI with the other header pair.
    let resp = http
        .get(format!("{base}/admin/x"))
        .header("X-Forwarded-Uri", "/public/x")
        .header("X-Forwarded-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
    assert!(
        resp.text().await.unwrap().find("\"path\"").is_none(),
        "must not reach the upstream"
    );
    // Spoofed identity headers are overwritten by nginx with keygate's answer.
    let resp = http
        .get(format!("{base}/api"))
        .bearer_auth(&bob)
        .header("X-Auth-Roles", "admin")
        .send()
        .await
        .unwrap();
    let echo = Echo(resp.json().await.unwrap());
    assert!(
        !echo
            .header("x-auth-roles")
            .unwrap()
            .split(',')
            .any(|r| r == "admin")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_is_refused_when_not_a_trusted_proxy() {
    let stack = Stack::start(&format!("trusted-proxies: [10.0.0.0/8]\n{RULES}")).await;
    let nginx = Nginx::forward_auth(stack.keygate.addr, stack.upstream.addr).await;
    let alice = stack.idp.token("alice").await;
    let resp = client()
        .get(format!("http://127.0.0.1:{}/admin/x", nginx.port))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_answers_directly() {
    let stack = Stack::start(&format!("trusted-proxies: [127.0.0.1]\n{RULES}")).await;
    let http = client();
    let alice = stack.idp.token("alice").await;
    let bob = stack.idp.token("bob").await;
    let ask = |method: &'static str, uri: &'static str, token: Option<String>, traefik: bool| {
        let mut req = http.get(stack.keygate.url("/oauth/auth"));
        req = if traefik {
            req.header("X-Forwarded-Method", method)
                .header("X-Forwarded-Uri", uri)
        } else {
            req.header("X-Original-Method", method)
                .header("X-Original-URI", uri)
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let resp = ask("GET", "/admin/x?y=1", Some(alice.clone()), true)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-auth-username"], "alice");
    assert_eq!(
        resp.headers()["authorization"].to_str().unwrap(),
        format!("Bearer {alice}")
    );
    assert_eq!(
        ask("GET", "/admin/x", Some(bob.clone()), false)
            .await
            .unwrap()
            .status(),
        403
    );
    let resp = ask("GET", "/admin/x", None, true).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(
        ask("GET", "/public/x", None, false).await.unwrap().status(),
        200
    );
    // Missing original request headers: 400.
    assert_eq!(
        http.get(stack.keygate.url("/oauth/auth"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let untrusted = Stack::start(RULES).await;
    let resp = client()
        .get(untrusted.keygate.url("/oauth/auth"))
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Uri", "/public/x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "forward-auth answers only trusted proxies"
    );
}
