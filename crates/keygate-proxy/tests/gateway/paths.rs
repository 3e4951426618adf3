//! Path attacks: none reaches a protected route without its roles.
//! Requests are written raw so no client library normalizes them first.

use keygate_testkit::*;

const RULES: &str = r#"
resources:
  - uri: /public/*
    white-listed: true
  - uri: /admin/*
    roles: [admin]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn traversal_and_encoding_tricks_do_not_bypass_rules() {
    let stack = Stack::start(RULES).await;
    let bob = stack.idp.token("bob").await;
    let auth = format!("Bearer {bob}");
    let h = [("Authorization", auth.as_str())];
    let addr = stack.keygate.addr;
    // Normalized onto /admin: refused for bob (403), never forwarded.
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin/x",
        "//admin",
        "/admin/",
        "/public/./../admin",
        "/%61dmin",
    ] {
        let (code, body) = raw_get(addr, target, &h).await;
        assert_eq!(code, 403, "{target}: {body}");
    }
    // Without a credential the same paths get 401, not the public route.
    for target in ["/public/../admin", "/public/%2e%2e/admin", "//admin"] {
        let (code, _) = raw_get(addr, target, &[]).await;
        assert_eq!(code, 401, "{target}");
    }
    // Ambiguous encodings are refused outright.
    for target in [
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public%2f..%2fadmin",
        "/admin%00",
        "/public/%00/../admin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/../admin",
        "/public/..;/admin",
    ] {
        let (code, body) = raw_get(addr, target, &h).await;
        assert_eq!(code, 400, "{target}: {body}");
        assert!(body.contains("invalid_request"), "{target}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fragments_and_queries_never_take_part_in_matching() {
    let stack = Stack::start(RULES).await;
    let addr = stack.keygate.addr;
    // A query that looks like a path does not make /admin public.
    let (code, _) = raw_get(addr, "/admin?/public/x", &[]).await;
    assert_eq!(code, 401);
    let (code, _) = raw_get(addr, "/public/x?/admin", &[]).await;
    assert_eq!(code, 200);
    // A raw fragment is refused or dropped, never matched as part of the path.
    let (code, _) = raw_get(addr, "/public/x#/../../admin", &[]).await;
    assert!(code == 400 || code == 200, "{code}");
    let (code, _) = raw_get(addr, "/admin#/public", &[]).await;
    assert!(code == 400 || code == 401, "{code}");
    let (code, _) = raw_get(addr, "/public%23/../admin", &[]).await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_the_normalized_path() {
    let stack = Stack::start(RULES).await;
    let alice = stack.idp.token("alice").await;
    let auth = format!("Bearer {alice}");
    let (code, body) = raw_get(
        stack.keygate.addr,
        "/public/../admin/%7euser/./x",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/admin/~user/x");
}

/// Paths are case-sensitive, as URIs are: `/ADMIN` is not `/admin`. With a
/// case-insensitive upstream, `case-insensitive-paths: true` makes rules match
/// in any case.
#[tokio::test(flavor = "multi_thread")]
async fn case_sensitivity_is_explicit() {
    let stack = Stack::start(RULES).await;
    let bob = stack.idp.token("bob").await;
    // Case-sensitive: /ADMIN is another (unlisted) path: needs a credential, not admin.
    assert_eq!(stack.get("/ADMIN", Some(&bob)).await.status(), 200);
    assert_eq!(stack.get("/ADMIN", None).await.status(), 401);
    let ci = Stack::start(&format!("case-insensitive-paths: true\n{RULES}")).await;
    let bob = ci.idp.token("bob").await;
    assert_eq!(ci.get("/ADMIN", Some(&bob)).await.status(), 403);
    assert_eq!(ci.get("/Admin/x", Some(&bob)).await.status(), 403);
    assert_eq!(ci.get("/PUBLIC/x", None).await.status(), 200);
}
