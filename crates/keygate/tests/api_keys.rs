//! API keys end to end: created through the admin API, the CLI and the
//! device flow; used; restricted; revoked; expired; exchanged for real
//! provider tokens (dev/idp) that the upstream receives instead of the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::browser::act_as_user;
use keygate_testkit::*;
use serde_json::{Value, json};
use std::time::Duration;

const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef-0123456789";

/// keygate with API keys on, a SQLite store in `dir`, and the admin API.
fn keys_config(dir: &tempfile::TempDir, extra: &str) -> String {
    keys_config_with(&format!("sqlite://{}/keys.db", dir.path().display()), extra)
}

fn keys_config_with(store_url: &str, extra: &str) -> String {
    format!(
        "store-url: {store_url}\n\
         listen-admin: 127.0.0.1:0\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n  admin-role: admin\n  negative-cache-ttl: 2s\n  record-cache-ttl: 1s\n  refresh-margin: 1s\n\
         {extra}"
    )
}

fn admin_url(stack: &Stack, path: &str) -> String {
    format!(
        "http://{}{path}",
        stack.keygate.admin_addr.expect("admin API on")
    )
}

async fn create_service_key(stack: &Stack, body: Value) -> Value {
    let alice = stack.idp.token("alice").await;
    let resp = admin_post(stack, "/admin/v1/keys", &alice, &body).await;
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    resp.json().await.unwrap()
}

fn svc() -> Value {
    json!({"client_id": "svc-reporting", "client_secret": "svc-reporting-secret", "description": "reporting job"})
}

async fn admin_post(stack: &Stack, path: &str, token: &str, body: &Value) -> reqwest::Response {
    stack
        .http
        .post(admin_url(stack, path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn with_key(stack: &Stack, method: &str, path: &str, key: &str) -> reqwest::Response {
    stack
        .http
        .request(method.parse().unwrap(), stack.keygate.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_key_is_exchanged_for_a_provider_token_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let created = create_service_key(&stack, svc()).await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kgs_") && key.len() == 42, "{key}");
    assert_eq!(created["prefix"], &key[..8]);

    // The three ways of presenting a key.
    let by_header = with_key(&stack, "GET", "/reports/1", &key).await;
    let by_bearer = stack
        .http
        .get(stack.keygate.url("/reports/1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let by_basic = stack
        .http
        .get(stack.keygate.url("/reports/1"))
        .basic_auth("anyone", Some(&key))
        .send()
        .await
        .unwrap();
    for resp in [by_header, by_bearer, by_basic] {
        assert_eq!(resp.status(), 200);
        let echo = Echo(resp.json().await.unwrap());
        let authorization = echo.header("authorization").unwrap();
        let token = authorization.strip_prefix("Bearer ").unwrap();
        assert!(
            !token.starts_with("kg"),
            "the upstream gets a provider token"
        );
        let claims = claims_of(token);
        assert_eq!(claims["iss"], stack.idp.issuer.as_str());
        assert_eq!(claims["azp"], "svc-reporting");
        // Signed by the provider: keygate's verifier (JWKS from the provider) accepts it.
        stack.keygate.gateway.verifier.verify(token).await.unwrap();
        assert_eq!(echo.header("x-auth-method").unwrap(), "api-key");
        assert_eq!(
            echo.header("x-auth-key-id").unwrap(),
            created["id"].as_str().unwrap()
        );
        assert_eq!(
            echo.header("x-auth-username").unwrap(),
            "service-account-svc-reporting"
        );
        assert!(echo.header("x-api-key").is_none());
        let all = echo.0.to_string();
        assert!(!all.contains(&key), "the key reached the upstream: {all}");
    }

    tokio::time::sleep(Duration::from_millis(5500)).await;
    // Revoked through the admin API: refused on this process at once.
    let alice = stack.idp.token("alice").await;
    let id = created["id"].as_str().unwrap();
    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/revoke"),
        &alice,
        &json!({}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = with_key(&stack, "GET", "/reports/1", &key).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let shown: Value = stack
        .http
        .get(admin_url(&stack, &format!("/admin/v1/keys/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["key"]["status"], "revoked");
    // Last use is written in batches (every 5 s), not once per request.
    assert!(shown["key"]["last_used_at"].as_i64().is_some(), "{shown}");
    let actions: Vec<&str> = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "revoke"]);
    assert_eq!(shown["audit"][0]["actor"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_first_uses_make_one_provider_call() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let created = create_service_key(&stack, svc()).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let before = stack.idp.grant_count("client_credentials").await;
    // One HTTP/2 connection carries all 1,000 requests at once.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = stack.keygate.url("/api/x");
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (h2, url, key) = (h2.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                h2.get(&url)
                    .header("X-API-Key", key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let after = stack.idp.grant_count("client_credentials").await;
    assert_eq!(
        after - before,
        1,
        "1,000 concurrent first uses must cause exactly one provider call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_checksum_and_unknown_keys_are_refused_without_provider_calls() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let created = create_service_key(&stack, svc()).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let before = stack.idp.grant_count("client_credentials").await;
    let mut typo: Vec<char> = key.chars().collect();
    typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    let resp = with_key(&stack, "GET", "/api", &typo).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{body}"
    );
    assert!(!body.to_string().contains(&typo));
    // A well-formed key that was never issued.
    let unknown = keygate_auth::apikey::generate(keygate_core::keys::KeyKind::Service).unwrap();
    let resp = with_key(&stack, "GET", "/api", unknown.expose()).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("unknown"),
        "{body}"
    );
    assert_eq!(stack.idp.grant_count("client_credentials").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn restrictions_are_enforced_and_expired_keys_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let mut body = svc();
    body["allowed_methods"] = json!(["GET"]);
    body["allowed_prefixes"] = json!(["/reports"]);
    let key = create_service_key(&stack, body).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        with_key(&stack, "GET", "/reports/7", &key).await.status(),
        200
    );
    let resp = with_key(&stack, "POST", "/reports/7", &key).await;
    assert_eq!(resp.status(), 405);
    assert!(resp.text().await.unwrap().contains("may not use POST"));
    assert_eq!(
        with_key(&stack, "GET", "/reportsX", &key).await.status(),
        403
    );
    assert_eq!(with_key(&stack, "GET", "/admin", &key).await.status(), 403);
    assert_eq!(
        with_key(&stack, "GET", "/oauth/token", &key).await.status(),
        403
    );
    // A key limited to GET may use GET /oauth/token, but the raw provider
    // token would escape its limits: not handed out.
    let mut body = svc();
    body["allowed_methods"] = json!(["GET"]);
    let get_only = create_service_key(&stack, body).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = with_key(&stack, "GET", "/oauth/token", &get_only).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("restricted"));

    let mut body = svc();
    body["allowed_cidrs"] = json!(["10.0.0.0/8"]);
    let key = create_service_key(&stack, body).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = with_key(&stack, "GET", "/reports", &key).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("address"));

    let mut body = svc();
    body["expires_in"] = json!("2s");
    let key = create_service_key(&stack, body).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        with_key(&stack, "GET", "/reports", &key).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let resp = with_key(&stack, "GET", "/reports", &key).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("expired"));

    // Longer than the maximum lifetime: well-formed, but the configuration
    // does not allow it (403), refused at creation.
    let alice = stack.idp.token("alice").await;
    let mut body = svc();
    body["expires_in"] = json!("400d");
    let resp = admin_post(&stack, "/admin/v1/keys", &alice, &body).await;
    assert_eq!(resp.status(), 403);
    let refusal: Value = resp.json().await.unwrap();
    assert_eq!(
        refusal["error_description"],
        "the longest lifetime of a service key is 365d"
    );
    // Not a duration: malformed (400).
    body["expires_in"] = json!("400 days");
    let resp = admin_post(&stack, "/admin/v1/keys", &alice, &body).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_needs_the_admin_role_and_publishes_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let bob = stack.idp.token("bob").await;
    let url = admin_url(&stack, "/admin/v1/keys");
    assert_eq!(stack.http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        stack
            .http
            .get(&url)
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        stack
            .http
            .post(&url)
            .bearer_auth(&bob)
            .json(&svc())
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let key = create_service_key(&stack, svc()).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        stack
            .http
            .get(&url)
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "keys cannot administer keys"
    );
    let alice = stack.idp.token("alice").await;
    let list: Value = stack
        .http
        .get(format!("{url}?kind=service"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&key));

    let doc: Value = stack
        .http
        .get(admin_url(&stack, "/admin/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    validate_openapi(&doc);
}

/// Structural validation of an OpenAPI 3.1 document: required top-level
/// fields, every operation with responses, every `$ref` resolving.
fn validate_openapi(doc: &Value) {
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/admin/v1/keys",
        "/admin/v1/keys/{id}",
        "/admin/v1/keys/{id}/revoke",
        "/admin/v1/keys/{id}/rotate",
        "/admin/v1/keys/{id}/renew",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                ["get", "post", "put", "delete", "patch"].contains(&method.as_str()),
                "{path} {method}"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{path} {method}"
            );
            assert!(op["operationId"].is_string(), "{path} {method}");
        }
    }
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

/// Starts a personal key's device flow at keygate: the flow's id and the
/// page where the user approves it.
async fn device_start(stack: &Stack) -> (String, String) {
    let start: Value = stack
        .http
        .post(stack.keygate.url("/oauth/keys/device"))
        .json(&json!({"description": "notebook", "expires_in": "14d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        start["flow_id"].as_str().unwrap().to_owned(),
        start["verification_uri_complete"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// Asks keygate for the key of a device flow.
async fn device_poll(stack: &Stack, flow: &str) -> reqwest::Response {
    stack
        .http
        .post(stack.keygate.url("/oauth/keys/device/token"))
        .json(&json!({"flow_id": flow}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_key_via_device_flow_carries_the_users_current_roles() {
    let dir = tempfile::tempdir().unwrap();
    // Short-lived tokens, and refresh tokens that work once (Keycloak's
    // "Revoke Refresh Token"): every exchange must store the new one back.
    let stack = Stack::start_with(
        &["--access-token-ttl", "4", "--rotate-refresh-tokens"],
        &keys_config(&dir, ""),
    )
    .await;
    // The user (or `keygate keys create --kind personal`) starts the flow at keygate.
    let (flow, approve_at) = device_start(&stack).await;
    assert_eq!(
        device_poll(&stack, &flow).await.status(),
        202,
        "pending until the user approves"
    );
    act_as_user(&approve_at, "bob", true).await;
    let resp = device_poll(&stack, &flow).await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kgp_"));

    let echo = Echo(
        with_key(&stack, "GET", "/api", &key)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "bob");
    assert!(!echo.header("x-auth-roles").unwrap().contains("auditor"));

    // A role given at the provider shows up at the next exchange (tokens live 4 s here).
    let resp = reqwest::Client::new()
        .put(format!("{}/admin/users/bob", stack.idp.base()))
        .json(&json!({"realm_roles": ["offline_access", "default-roles-acme", "user", "auditor"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let echo = Echo(
        with_key(&stack, "GET", "/api", &key)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert!(
        echo.header("x-auth-roles")
            .unwrap()
            .split(',')
            .any(|r| r == "auditor"),
        "{:?}",
        echo.header("x-auth-roles")
    );

    // The user lists and revokes their own key with their own credential.
    let bob = stack.idp.token("bob").await;
    let mine: Value = stack
        .http
        .get(stack.keygate.url("/oauth/keys"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["keys"].as_array().unwrap().len(), 1);
    assert_eq!(mine["keys"][0]["description"], "notebook");
    let id = created["id"].as_str().unwrap();
    let alice = stack.idp.token("alice").await;
    let resp = stack
        .http
        .delete(stack.keygate.url(&format!("/oauth/keys/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "not alice's key");
    let resp = stack
        .http
        .delete(stack.keygate.url(&format!("/oauth/keys/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 401);
    // The offline session was revoked at the provider (RFC 7009).
    let metrics = stack.keygate.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keygate_provider_grants_total")
                && l.contains("grant=\"revocation\"")
                && l.contains("result=\"ok\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_outage_without_a_cached_token_is_503_never_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(&keys_config(&dir, "")).await;
    let key = create_service_key(&stack, svc()).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.idp.kill();
    let resp = with_key(&stack, "GET", "/api", &key).await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_creates_lists_and_revokes_service_keys() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        base_config(
            &stack.idp.issuer,
            &stack.upstream.url(),
            &keys_config(&dir, ""),
        )
        .replace("listen-admin: 127.0.0.1:0\n", ""),
    )
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "svc-reporting-secret\n").unwrap();
    let keygate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let cfg = config.to_str().unwrap();
    let (ok, out, err) = keygate(&[
        "keys",
        "create",
        "--config",
        cfg,
        "--kind",
        "service",
        "--client-id",
        "svc-reporting",
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--description",
        "nightly export",
        "--expires-in",
        "30d",
        "--json",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["expires_at"].as_i64().is_some());
    // Without --json the key alone is the first line of stdout.
    let (ok, out, _) = keygate(&[
        "keys",
        "create",
        "--config",
        cfg,
        "--kind",
        "service",
        "--client-id",
        "svc-reporting",
        "--client-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(ok);
    assert!(out.lines().next().unwrap().starts_with("kgs_"));
    // A wrong client secret is caught at creation.
    std::fs::write(&secret, "wrong").unwrap();
    let (ok, _, err) = keygate(&[
        "keys",
        "create",
        "--config",
        cfg,
        "--kind",
        "service",
        "--client-id",
        "svc-reporting",
        "--client-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("invalid_client"), "{err}");

    // The running gateway shares the store: the CLI's key works there.
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 200);
    let (ok, out, _) = keygate(&["keys", "list", "--config", cfg, "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!out.contains(&key));
    let (ok, _, err) = keygate(&["keys", "revoke", &id, "--config", cfg]);
    assert!(ok, "{err}");
    // Another process revoked it: refused here once the record cache (1 s) lapses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 401);
    let (ok, out, _) = keygate(&["keys", "show", &id, "--config", cfg, "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["key"]["status"], "revoked");
}

/// The same flow on a real PostgreSQL server: create, use, revoke, refuse.
#[tokio::test(flavor = "multi_thread")]
async fn service_keys_on_postgresql() {
    let pg = keygate_testkit::PgServer::start().await;
    let url = pg.create_database("keygate_e2e").await;
    let stack = Stack::start(&keys_config_with(&url, "")).await;
    assert_eq!(
        stack
            .keygate
            .gateway
            .api_keys
            .as_ref()
            .unwrap()
            .store()
            .backend(),
        "postgres"
    );
    let created = create_service_key(&stack, svc()).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let echo = Echo(
        with_key(&stack, "GET", "/api", &key)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(echo.header("x-auth-method").unwrap(), "api-key");
    let alice = stack.idp.token("alice").await;
    let id = created["id"].as_str().unwrap();
    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/revoke"),
        &alice,
        &json!({}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 401);
}

/// Rotation keeps the old key for the grace period; renew extends expiry.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_with_grace_and_renew_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let mut body = svc();
    body["expires_in"] = json!("1d");
    let created = create_service_key(&stack, body).await;
    let (id, old) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    let alice = stack.idp.token("alice").await;
    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/rotate"),
        &alice,
        &json!({"key": old, "grace": "3s"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id.as_str());
    // The old key first, with nothing cached yet: it opens the previous secret.
    assert_eq!(
        with_key(&stack, "GET", "/api", &old).await.status(),
        200,
        "old key works during the grace period"
    );
    assert_eq!(with_key(&stack, "GET", "/api", &new).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        with_key(&stack, "GET", "/api", &old).await.status(),
        401,
        "old key stops after the grace period"
    );
    assert_eq!(with_key(&stack, "GET", "/api", &new).await.status(), 200);

    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/renew"),
        &alice,
        &json!({"expires_in": "30d"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let renewed: Value = resp.json().await.unwrap();
    let expires = renewed["key"]["expires_at"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expires > now + 29 * 86_400, "{renewed}");
    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/renew"),
        &alice,
        &json!({"expires_in": "5000d"}),
    )
    .await;
    assert_eq!(resp.status(), 403, "beyond the maximum lifetime");

    // A revoked key cannot be renewed, rotated or given limits: the key's
    // state, not the request, is in the way (409).
    let resp = admin_post(
        &stack,
        &format!("/admin/v1/keys/{id}/revoke"),
        &alice,
        &json!({}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    for (op, body) in [
        ("renew", json!({"expires_in": "30d"})),
        ("rotate", json!({"key": new})),
        ("limits", json!({"rate_limit": "5/s"})),
    ] {
        let resp = admin_post(&stack, &format!("/admin/v1/keys/{id}/{op}"), &alice, &body).await;
        assert_eq!(resp.status(), 409, "{op}");
        let refusal: Value = resp.json().await.unwrap();
        assert_eq!(refusal["error"], "conflict", "{op}");
    }
}

/// `keygate keys create --kind personal --gateway URL`: the CLI shows the
/// verification address, the user approves at the provider, the CLI prints the key.
#[tokio::test(flavor = "multi_thread")]
async fn cli_creates_a_personal_key_through_the_gateway() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&keys_config(&dir, "")).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "keys",
            "create",
            "--kind",
            "personal",
            "--gateway",
            &stack.keygate.url(""),
            "--description",
            "laptop",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel::<String>();
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(url) = line.trim().strip_prefix("http") {
                let _ = url_tx.send(format!("http{url}"));
            }
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the CLI printed no verification address");
    act_as_user(&url, "alice", true).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = rest.join().unwrap();
    assert!(out.status.success(), "{stderr}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kgp_"));
    let echo = Echo(
        with_key(&stack, "GET", "/api", &key)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
}

/// One process, no Redis: limits are counted in memory. The kind's default
/// applies to keys without their own; the CLI changes a key's own limits.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_quotas_on_one_gateway_and_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "  rate-limit-service: 2/min burst 2\n";
    let config_text = keys_config(&dir, "").replace(
        "  refresh-margin: 1s\n",
        &format!("  refresh-margin: 1s\n{limits}"),
    );
    let stack = Stack::start(&config_text).await;
    let created = create_service_key(&stack, svc()).await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    for left in ["1", "0"] {
        let resp = with_key(&stack, "GET", "/reports", &key).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "2");
        assert_eq!(resp.headers()["ratelimit-remaining"], left);
    }
    let resp = with_key(&stack, "GET", "/reports", &key).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // A limited key does not hand out its provider token: requests with it
    // would escape the counters.
    let resp = with_key(&stack, "GET", "/oauth/token", &key).await;
    assert!(
        resp.status() == 403 || resp.status() == 429,
        "{}",
        resp.status()
    );
    // A refused request is not forwarded and costs the provider nothing.
    let before = stack.idp.grant_count("client_credentials").await;
    assert_eq!(
        with_key(&stack, "GET", "/reports", &key).await.status(),
        429
    );
    assert_eq!(stack.idp.grant_count("client_credentials").await, before);

    // The CLI lifts the limit for this key.
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        base_config(&stack.idp.issuer, &stack.upstream.url(), &config_text)
            .replace("listen-admin: 127.0.0.1:0\n", ""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "limits", "--config", config.to_str().unwrap(), &id])
        .args(["--rate-limit", "unlimited", "--quota", "1000/day", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["rate_limit"], "unlimited");
    assert_eq!(view["quota"], "1000/day");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "limits", "--config", config.to_str().unwrap(), &id])
        .args(["--quota", "3/week"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a quota"));
    // SQLite announces nothing: this process sees the change within record-cache-ttl (1 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = with_key(&stack, "GET", "/reports", &key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("ratelimit-limit").is_none());
    assert_eq!(resp.headers()["x-quota-limit"], "1000");
    let resp = with_key(&stack, "GET", "/oauth/token", &key).await;
    assert_eq!(resp.status(), 403, "a quota is a limit too");
    assert!(resp.text().await.unwrap().contains("rate-limited"));
    let shown: Value = stack
        .http
        .get(admin_url(&stack, &format!("/admin/v1/keys/{id}")))
        .bearer_auth(stack.idp.token("alice").await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = shown["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "limits");
    assert!(last["actor"].as_str().unwrap().starts_with("cli:"));
}

/// A personal key backed by an offline session is never refreshed twice at
/// once (its refresh token may rotate). While the provider hangs, one
/// request probes it with the key's refresh, and the key's other requests
/// get their 503 at once instead of waiting for that refresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_provider_costs_a_personal_key_one_probe_not_one_wait_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with(
        &["--access-token-ttl", "3"],
        &keys_config(&dir, "openid-provider-timeout: 1s\n"),
    )
    .await;
    let (flow, approve_at) = device_start(&stack).await;
    act_as_user(&approve_at, "bob", true).await;
    let created: Value = device_poll(&stack, &flow).await.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 200);
    // The exchanged token expires; the next request must refresh the key.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stack.idp.freeze();
    // The first refresh waits out openid-provider-timeout and opens the breaker.
    assert_eq!(with_key(&stack, "GET", "/api", &key).await.status(), 503);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let asked: Vec<_> = (0..20)
            .map(|_| {
                let (http, url, key) = (stack.http.clone(), stack.keygate.url("/api"), key.clone());
                tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    let resp = http.get(url).header("X-API-Key", key).send().await.unwrap();
                    (resp.status().as_u16(), start.elapsed())
                })
            })
            .collect();
        let mut slow = 0;
        for asked in asked {
            let (status, took) = asked.await.unwrap();
            assert_eq!(status, 503, "round {round}");
            slow += usize::from(took > Duration::from_millis(500));
        }
        assert!(
            slow <= 1,
            "round {round}: {slow} of 20 waited for the provider"
        );
    }
    stack.idp.thaw();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while with_key(&stack, "GET", "/api", &key).await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the key is not refreshed once the provider answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
