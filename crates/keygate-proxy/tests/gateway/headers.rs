//! What reaches the upstream: spoofed identity headers never do; keygate's do.

use keygate_testkit::*;

#[tokio::test(flavor = "multi_thread")]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    let bob = stack.idp.token("bob").await;
    for path in ["/api", "/public/x"] {
        let (code, body) = raw_get(
            stack.keygate.addr,
            path,
            &[
                ("Authorization", &format!("Bearer {bob}")),
                ("X-Auth-Subject", "admin-subject"),
                ("x-auth-roles", "admin"),
                ("X_Auth_Email", "root@example.com"),
                ("X-AUTH-USERNAME", "root"),
                ("x_auth-groups", "/admins"),
                ("X-Auth-Key-Id", "forged"),
            ],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let echo = Echo(serde_json::from_str(&body).unwrap());
        for name in echo.header_names() {
            let norm = name.to_ascii_lowercase().replace('_', "-");
            if norm.starts_with("x-auth-") {
                let value = echo.header(&name).unwrap();
                assert!(
                    ![
                        "admin-subject",
                        "admin",
                        "root@example.com",
                        "root",
                        "/admins",
                        "forged"
                    ]
                    .contains(&value.as_str()),
                    "{path}: spoofed {name}: {value}"
                );
            }
        }
        assert!(echo.header("x_auth_email").is_none());
        assert!(echo.header("x-auth-key-id").is_none());
        if path == "/api" {
            assert_eq!(echo.header("x-auth-username").unwrap(), "bob");
            assert!(
                !echo
                    .header("x-auth-roles")
                    .unwrap()
                    .split(',')
                    .any(|r| r == "admin")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn add_claims_static_headers_and_token_header() {
    let stack = Stack::start(
        "add-claims: [given_name, allowed-origins, email_verified, evil]\nheaders:\n  X-Team: blue\nenable-token-header: true\n",
    )
    .await;
    let token = stack
        .idp
        .sign(
            serde_json::json!({"evil": "x\r\nX-Injected: 1"}),
            serde_json::json!({}),
        )
        .await;
    let echo = Echo(stack.get("/api", Some(&token)).await.json().await.unwrap());
    assert_eq!(echo.header("x-auth-given-name").unwrap(), "Alice");
    assert_eq!(echo.header("x-auth-email-verified").unwrap(), "true");
    assert!(echo.header("x-auth-allowed-origins").is_some());
    assert!(
        echo.header("x-auth-evil").is_none(),
        "claim values with control characters are dropped"
    );
    assert!(echo.header("x-injected").is_none());
    assert_eq!(echo.header("x-team").unwrap(), "blue");
    assert_eq!(echo.header("x-auth-token").unwrap(), token);
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_header_can_be_withheld() {
    let stack = Stack::start("enable-authorization-header: false\n").await;
    let token = stack.idp.token("alice").await;
    let echo = Echo(stack.get("/api", Some(&token)).await.json().await.unwrap());
    assert!(echo.header("authorization").is_none());
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_replaced_unless_from_a_trusted_proxy() {
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let resp = stack
        .http
        .get(stack.keygate.url("/api"))
        .bearer_auth(&token)
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(echo.header("x-request-id").unwrap(), "abc-123");
    assert!(
        echo.header("x-forwarded-host")
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let trusted = Stack::start("trusted-proxies: [127.0.0.0/8]\n").await;
    let token = trusted.idp.token("alice").await;
    let echo = Echo(
        trusted
            .http
            .get(trusted.keygate.url("/api"))
            .bearer_auth(&token)
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(
        echo.header("x-forwarded-for").unwrap(),
        "203.0.113.9, 127.0.0.1"
    );
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "https");
}
