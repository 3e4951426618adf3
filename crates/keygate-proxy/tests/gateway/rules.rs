//! Route rules end to end: which tokens reach which routes.

use keygate_testkit::*;

const RULES: &str = r#"
resources:
  - uri: /public/*
    white-listed: true
  - uri: /admin/*
    roles: [admin]
  - uri: /editors/*
    roles: ["APP-backend:editor"]
  - uri: /both/*
    roles: [admin, "APP-backend:viewer"]
  - uri: /either/*
    roles: [admin, "APP-backend:viewer"]
    require-any-role: true
  - uri: /ops/*
    groups: [/ops, /sre]
  - uri: /scoped/*
    scopes: [email]
  - uri: /reports
    methods: [get]
    roles: [user]
  - uri: /reports
    methods: [POST, delete]
    roles: [admin]
"#;

async fn status(stack: &Stack, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut req = stack
        .http
        .request(method.parse().unwrap(), stack.keygate.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn realm_and_client_roles() {
    let stack = Stack::start(RULES).await;
    let (alice, bob, carol) = (
        stack.idp.token("alice").await,
        stack.idp.token("bob").await,
        stack.idp.token("carol").await,
    );
    assert_eq!(status(&stack, "GET", "/admin/x", Some(&alice)).await, 200);
    assert_eq!(status(&stack, "GET", "/admin/x", Some(&bob)).await, 403);
    assert_eq!(status(&stack, "GET", "/editors/x", Some(&alice)).await, 200);
    assert_eq!(status(&stack, "GET", "/editors/x", Some(&bob)).await, 403);
    assert_eq!(status(&stack, "GET", "/editors/x", Some(&carol)).await, 403);
    let body: serde_json::Value = stack
        .get("/admin/x", Some(&bob))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("admin"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_roles_by_default_any_with_require_any_role() {
    let stack = Stack::start(RULES).await;
    let (alice, bob) = (stack.idp.token("alice").await, stack.idp.token("bob").await);
    // alice: admin but not APP-backend:viewer; bob: viewer but not admin.
    assert_eq!(status(&stack, "GET", "/both/x", Some(&alice)).await, 403);
    assert_eq!(status(&stack, "GET", "/both/x", Some(&bob)).await, 403);
    assert_eq!(status(&stack, "GET", "/either/x", Some(&alice)).await, 200);
    assert_eq!(status(&stack, "GET", "/either/x", Some(&bob)).await, 200);
    let carol = stack.idp.token("carol").await;
    assert_eq!(status(&stack, "GET", "/either/x", Some(&carol)).await, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_any_of() {
    let stack = Stack::start(RULES).await;
    assert_eq!(
        status(
            &stack,
            "GET",
            "/ops/x",
            Some(&stack.idp.token("alice").await)
        )
        .await,
        200
    );
    assert_eq!(
        status(&stack, "GET", "/ops/x", Some(&stack.idp.token("bob").await)).await,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes() {
    let stack = Stack::start(RULES).await;
    let with_email = stack.idp.token_with_scope("bob", "openid email").await;
    assert_eq!(
        status(&stack, "GET", "/scoped/x", Some(&with_email)).await,
        200
    );
    let without = stack
        .idp
        .sign(
            serde_json::json!({"scope": "openid profile"}),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        status(&stack, "GET", "/scoped/x", Some(&without)).await,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn white_listed_needs_no_credential_and_gets_no_identity() {
    let stack = Stack::start(RULES).await;
    let resp = stack
        .http
        .get(stack.keygate.url("/public/page"))
        .header("X-Auth-Subject", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert!(echo.header("x-auth-subject").is_none());
    assert!(echo.header_names().iter().all(|h| !h.starts_with("x-auth")));
}

#[tokio::test(flavor = "multi_thread")]
async fn method_case_and_method_filters() {
    let stack = Stack::start(RULES).await;
    let bob = stack.idp.token("bob").await;
    assert_eq!(status(&stack, "GET", "/reports", Some(&bob)).await, 200);
    assert_eq!(status(&stack, "POST", "/reports", Some(&bob)).await, 403);
    assert_eq!(status(&stack, "DELETE", "/reports", Some(&bob)).await, 403);
    let alice = stack.idp.token("alice").await;
    assert_eq!(status(&stack, "POST", "/reports", Some(&alice)).await, 200);
    // A lower-case method on the wire matches the rule written in any case.
    let (code, _) = raw_get_method(&stack, "get", "/reports", &bob).await;
    assert_eq!(code, 200);
    let (code, _) = raw_get_method(&stack, "post", "/reports", &bob).await;
    assert_eq!(code, 403);
}

async fn raw_get_method(stack: &Stack, method: &str, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(stack.keygate.addr)
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    (text.split(' ').nth(1).unwrap().parse().unwrap(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn default_deny_on_and_off() {
    let stack = Stack::start(RULES).await;
    assert_eq!(status(&stack, "GET", "/unlisted", None).await, 401);
    assert_eq!(
        status(
            &stack,
            "GET",
            "/unlisted",
            Some(&stack.idp.token("carol").await)
        )
        .await,
        200
    );
    let open = Stack::start(
        "enable-default-deny: false\nresources:\n  - uri: /admin/*\n    roles: [admin]\n",
    )
    .await;
    assert_eq!(status(&open, "GET", "/unlisted", None).await, 200);
    assert_eq!(status(&open, "GET", "/admin/x", None).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn match_claims_apply_to_every_authenticated_request() {
    let stack = Stack::start(
        "match-claims:\n  email: '.*@example\\.com'\n  preferred_username: 'alice|bob'\n",
    )
    .await;
    assert_eq!(
        status(&stack, "GET", "/x", Some(&stack.idp.token("alice").await)).await,
        200
    );
    assert_eq!(
        status(&stack, "GET", "/x", Some(&stack.idp.token("carol").await)).await,
        403
    );
    // Anchored: a suffix after the match is not enough.
    let evil = stack
        .idp
        .sign(
            serde_json::json!({"email": "alice@example.com.evil.org"}),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status(&stack, "GET", "/x", Some(&evil)).await, 403);
    let missing = stack
        .idp
        .sign(serde_json::json!({"email": null}), serde_json::json!({}))
        .await;
    assert_eq!(status(&stack, "GET", "/x", Some(&missing)).await, 403);
}
