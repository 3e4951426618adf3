//! Conformance with a real Keycloak 26 (`dev/keycloak`, realm `acme`): the
//! seeds' set-ups end to end with keygate and a real upstream. This file
//! starts with seed 000 (an API-only service behind a gatekeeper sidecar).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::keycloak::Keycloak;
use keygate_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// keygate as seed 000's gatekeeper: client `gatekeeper`, default deny.
async fn gatekeeper(kc: &Keycloak, upstream: &Upstream, extra: &str) -> Keygate {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {}\nclient-id: gatekeeper\nclient-secret: gatekeeper-secret\n\
         upstream-url: {}\nlog-level: warn\nenable-default-deny: true\n{extra}",
        kc.issuer(),
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    keygate
}

async fn get(keygate: &Keygate, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(keygate.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Seed 000: a password-grant token of `my_client_app`, whose `api` client
/// scope adds the `gatekeeper` audience, passes keygate; the upstream gets
/// the token and the identity Keycloak issued.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seed_000_password_grant_token_passes_the_sidecar() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let keygate = gatekeeper(&kc, &upstream, "").await;
    let token = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    let claims = claims_of(&token);
    assert!(
        claims["aud"]
            .as_array()
            .is_some_and(|a| a.contains(&"gatekeeper".into()))
            || claims["aud"] == "gatekeeper",
        "Keycloak's token lacks the gatekeeper audience: {claims}"
    );
    let resp = get(&keygate, "/api/items", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert_eq!(echo.header("x-auth-email").unwrap(), "alice@example.com");
    let roles = echo.header("x-auth-roles").unwrap();
    assert!(roles.split(',').any(|r| r == "admin"), "{roles}");
    assert!(
        roles.split(',').any(|r| r == "APP-backend:editor"),
        "{roles}"
    );
    let groups = echo.header("x-auth-groups").unwrap();
    assert!(groups.split(',').any(|g| g == "/ops/oncall"), "{groups}");
}

/// Seed 000's pitfall: without the Audience mapper (client
/// `no_audience_app`) the token is not for gatekeeper: 401, and the error
/// says which audiences keygate accepts.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seed_000_token_without_the_audience_mapper_is_refused() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let keygate = gatekeeper(&kc, &upstream, "").await;
    let token = kc
        .access_token("no_audience_app", "no_audience_app-secret", "alice")
        .await;
    let resp = get(&keygate, "/api/items", Some(&token)).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    // The error names what keygate accepts, what the token carries, and the
    // guide's section on the Audience mapper (which must exist).
    let text = body["error_description"].as_str().unwrap();
    let aud = claims_of(&token)["aud"].clone();
    let first_aud = aud
        .as_array()
        .map_or(aud.as_str(), |a| a[0].as_str())
        .unwrap();
    for part in [
        "keygate accepts [gatekeeper]",
        "azp no_audience_app",
        first_aud,
        "docs/keycloak.md#the-audience-mapper",
    ] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    assert!(
        challenge.contains("keygate accepts [gatekeeper]"),
        "{challenge}"
    );
    // No credential at all, and a tampered Keycloak token.
    assert_eq!(get(&keygate, "/api/items", None).await.status(), 401);
    let good = kc
        .access_token("my_client_app", "my_client_app-secret", "bob")
        .await;
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        get(&keygate, "/api/items", Some(&tampered)).await.status(),
        401
    );
}

/// Seed 000's rules on Keycloak's claims: realm roles, client roles
/// (`client:role` from `resource_access`), groups by full path, and default
/// deny for everything else.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seed_000_realm_role_client_role_and_group_rules() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let keygate = gatekeeper(
        &kc,
        &upstream,
        "resources:\n\
         \x20 - uri: /public/*\n    white-listed: true\n\
         \x20 - uri: /admin/*\n    roles: [admin]\n\
         \x20 - uri: /edit/*\n    roles: [APP-backend:editor]\n\
         \x20 - uri: /oncall/*\n    groups: [/ops/oncall]\n\
         \x20 - uri: /view/*\n    roles: [APP-backend:viewer, APP-backend:editor]\n    require-any-role: true\n",
    )
    .await;
    let alice = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    let bob = kc
        .access_token("my_client_app", "my_client_app-secret", "bob")
        .await;
    let cases = [
        ("/public/x", None, 200),
        ("/anything", None, 401),
        ("/anything", Some(&bob), 200),
        ("/admin/x", Some(&alice), 200),
        ("/admin/x", Some(&bob), 403),
        ("/edit/x", Some(&alice), 200),
        ("/edit/x", Some(&bob), 403),
        ("/oncall/x", Some(&alice), 200),
        ("/oncall/x", Some(&bob), 403),
        ("/view/x", Some(&alice), 200),
        ("/view/x", Some(&bob), 200),
    ];
    for (path, token, want) in cases {
        let status = get(&keygate, path, token.map(String::as_str))
            .await
            .status();
        assert_eq!(
            status.as_u16(),
            want,
            "{path} as {:?}",
            token.map(|t| claims_of(t)["preferred_username"].clone())
        );
    }
}

/// Seed 000's gatekeeper config file, with `discovery-url` at this Keycloak,
/// loads in the real binary (gatekeeper-only options warned about) and
/// serves a Keycloak token.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seed_000_gatekeeper_config_file_serves_with_the_binary() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keycloak-gatekeeper.conf");
    std::fs::write(
        &file,
        format!(
            "# is the url for retrieve the OpenID configuration\n\
             discovery-url: {}\n\
             client-id:  gatekeeper\n\
             client-secret: gatekeeper-secret\n\
             listen: 127.0.0.1:{port}\n\
             enable-refresh-tokens: true\n\
             secure-cookie: false\n\
             enable-logging: true\n\
             enable-default-deny: true\n\
             enable-session-cookies: true\n\
             no-redirects: true\n\
             encryption-key: random-char-sequence-0123456789a\n\
             upstream-url: {}\n",
            kc.issuer(),
            upstream.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..150 {
        if let Ok(r) = reqwest::get(format!("{base}/oauth/ready")).await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    let resp = client()
        .get(format!("{base}/api"))
        .bearer_auth(&token)
        .send()
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "keygate with the gatekeeper file never became ready");
    assert_eq!(resp.unwrap().status(), 200);
}

/// Seeds 002 and 003: a service key bound to a third party's
/// service-account client (`partner-acme`, whose audience client scope adds
/// `gatekeeper`), created through the admin API with a Keycloak admin's
/// token, used with Kong's `apikey` header and with `X-API-Key`; keygate runs
/// the client-credentials grant at Keycloak and forwards Keycloak's token,
/// never the key; revoked, refused.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seeds_002_003_service_key_for_a_partner_client() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let admin = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    for header in ["apikey", "X-API-Key"] {
        let dir = tempfile::tempdir().unwrap();
        let keygate = gatekeeper(
            &kc,
            &upstream,
            &format!(
                "store-url: sqlite://{}/keys.db\nlisten-admin: 127.0.0.1:0\n\
                 api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n  \
                 admin-role: admin\n  header: {header}\n",
                dir.path().display()
            ),
        )
        .await;
        let admin_api = format!("http://{}", keygate.admin_addr.unwrap());
        let resp = client()
            .post(format!("{admin_api}/admin/v1/keys"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({
                "client_id": "partner-acme",
                "client_secret": "partner-acme-secret",
                "description": "ACME's integration"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{header}: {:?}", resp.text().await);
        let created: serde_json::Value = resp.json().await.unwrap();
        let key = created["key"].as_str().unwrap().to_owned();
        let use_key = || {
            client()
                .get(keygate.url("/partner/orders"))
                .header(header, &key)
                .send()
        };
        let resp = use_key().await.unwrap();
        assert_eq!(resp.status(), 200, "{header}");
        let echo = Echo(resp.json().await.unwrap());
        let token = echo.header("authorization").unwrap()["Bearer ".len()..].to_owned();
        let claims = claims_of(&token);
        assert_eq!(claims["iss"], kc.issuer().as_str());
        assert_eq!(claims["azp"], "partner-acme");
        assert_eq!(
            echo.header("x-auth-username").unwrap(),
            "service-account-partner-acme"
        );
        assert!(
            !echo.0.to_string().contains(&key),
            "the key reached the upstream"
        );
        // A wrong secret is refused at creation, by Keycloak.
        let resp = client()
            .post(format!("{admin_api}/admin/v1/keys"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"client_id": "partner-acme", "client_secret": "wrong"}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_client_error(),
            "{header}: {status} {:?}",
            resp.text().await
        );
        // Revoked: refused.
        let id = created["id"].as_str().unwrap();
        let resp = client()
            .post(format!("{admin_api}/admin/v1/keys/{id}/revoke"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(use_key().await.unwrap().status(), 401, "{header}");
    }
}

/// A name no other test uses: `prefix-<pid>-<nanos>`.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates a confidential client with direct access grants in realm acme
/// (`extra` is merged into its representation); returns its internal id.
async fn create_client(kc: &Keycloak, client_id: &str, secret: &str, extra: Value) -> String {
    let mut rep = json!({
        "clientId": client_id,
        "secret": secret,
        "publicClient": false,
        "directAccessGrantsEnabled": true,
        "standardFlowEnabled": false,
        "defaultClientScopes": ["basic", "profile", "email", "roles", "groups", "api"],
    });
    if let (Value::Object(rep), Value::Object(extra)) = (&mut rep, extra) {
        rep.extend(extra);
    }
    let (status, body) = kc.admin(Method::POST, "/clients", Some(rep)).await;
    assert_eq!(status, 201, "creating client {client_id}: {body}");
    let (_, found) = kc
        .admin(Method::GET, &format!("/clients?clientId={client_id}"), None)
        .await;
    found[0]["id"].as_str().unwrap().to_owned()
}

/// Item 5: a client with Keycloak's lightweight access tokens (no `aud`,
/// `sub`, roles, groups or names in the JWT). keygate introspects them with
/// its own client credentials (`token-introspection: auto`, the default), so
/// role and group rules and the identity headers still work; concurrent
/// requests with one new token share one introspection; a token whose
/// session ended is inactive (401); with `never` they are refused with an
/// error that says why.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_lightweight_access_tokens_are_introspected() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let name = unique("lightweight");
    let uuid = create_client(
        &kc,
        &name,
        "lightweight-secret",
        json!({"attributes": {"client.use.lightweight.access.token.enabled": "true"}}),
    )
    .await;
    let keygate = gatekeeper(
        &kc,
        &upstream,
        "resources:\n\
         \x20 - uri: /admin/*\n    roles: [admin]\n\
         \x20 - uri: /oncall/*\n    groups: [/ops/oncall]\n",
    )
    .await;
    let alice = kc.access_token(&name, "lightweight-secret", "alice").await;
    let lightweight = claims_of(&alice);
    assert!(
        lightweight.get("aud").is_none() && lightweight.get("realm_access").is_none(),
        "Keycloak's token is not lightweight: {lightweight}"
    );

    // 20 concurrent requests with the new token: one introspection.
    let introspections = |text: String| {
        counter(
            &text,
            "keygate_introspections_total",
            &["result=\"active\""],
        )
    };
    let before = introspections(keygate.metrics().await);
    let requests = (0..20).map(|_| get(&keygate, "/admin/x", Some(&alice)));
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.status(), 200);
    }
    let after = introspections(keygate.metrics().await);
    assert_eq!(
        after - before,
        1.0,
        "concurrent requests were not coalesced"
    );
    let resp = get(&keygate, "/oncall/x", Some(&alice)).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert_eq!(echo.header("x-auth-email").unwrap(), "alice@example.com");
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {alice}")
    );
    let bob = kc.access_token(&name, "lightweight-secret", "bob").await;
    assert_eq!(get(&keygate, "/admin/x", Some(&bob)).await.status(), 403);

    // A token whose Keycloak session has ended is not active.
    let carol_tokens = kc
        .password_token(&name, "lightweight-secret", "carol")
        .await;
    let carol = carol_tokens["access_token"].as_str().unwrap();
    let sid = claims_of(carol)["sid"].as_str().unwrap().to_owned();
    let (status, body) = kc
        .admin(Method::DELETE, &format!("/sessions/{sid}"), None)
        .await;
    assert!(
        status == 204 || status == 200,
        "ending carol's session: {status} {body}"
    );
    let resp = get(&keygate, "/x", Some(carol)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(text.contains("not active"), "{text}");

    // `never`: refused, and the error names the fix.
    let strict = gatekeeper(&kc, &upstream, "token-introspection: never\n").await;
    let resp = get(&strict, "/x", Some(&alice)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("lightweight") && text.contains("token-introspection"),
        "{text}"
    );
    kc.admin(Method::DELETE, &format!("/clients/{uuid}"), None)
        .await;
}

/// The `kid` in a JWT's header.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&b64_decode(header)).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// Creates realm `realm` with a confidential client `rot` (secret
/// `rot-secret`, direct access grants, audience `rot`) and a user `u`
/// (password `u`).
async fn create_realm(kc: &Keycloak, realm: &str) {
    let rep = json!({
        "realm": realm,
        "enabled": true,
        "sslRequired": "none",
        "clients": [{
            "clientId": "rot",
            "secret": "rot-secret",
            "publicClient": false,
            "directAccessGrantsEnabled": true,
            "standardFlowEnabled": false,
            "protocolMappers": [{
                "name": "audience rot",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.client.audience": "rot",
                    "access.token.claim": "true",
                    "introspection.token.claim": "true"
                }
            }]
        }],
        "users": [{
            "username": "u",
            "enabled": true,
            "email": "u@example.com",
            "emailVerified": true,
            "firstName": "U",
            "lastName": "Ser",
            "credentials": [{"type": "password", "value": "u", "temporary": false}]
        }]
    });
    let resp = client()
        .post(format!("{}/admin/realms", kc.base))
        .bearer_auth(kc.admin_token().await)
        .json(&rep)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(
        status,
        201,
        "creating realm {realm}: {:?}",
        resp.text().await
    );
}

/// A password-grant access token of client `rot` for user `u` in `realm`.
async fn realm_token(kc: &Keycloak, realm: &str) -> String {
    access_token(
        &format!("{}/realms/{realm}/protocol/openid-connect/token", kc.base),
        &[
            ("grant_type", "password"),
            ("client_id", "rot"),
            ("client_secret", "rot-secret"),
            ("username", "u"),
            ("password", "u"),
        ],
    )
    .await
}

/// Key rotation in Keycloak, as an admin does it, with no failed request: a
/// new RSA key provider with a higher priority (new tokens carry its `kid`;
/// keygate re-reads the JWKS for it), then the old key made passive, then
/// disabled and removed. Requests with old and new tokens run all along.
/// In a realm of its own, since rotation changes every token of a realm.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_key_rotation_fails_no_request() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let realm = unique("rotation");
    create_realm(&kc, &realm).await;
    let issuer = format!("{}/realms/{realm}", kc.base);
    let keygate = Keygate::start_yaml(&format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {issuer}\nclient-id: rot\nclient-secret: rot-secret\n\
         upstream-url: {}\nlog-level: warn\njwks-min-refresh-interval: 100ms\n",
        upstream.url()
    ))
    .await;
    keygate.wait_ready().await;
    let old = realm_token(&kc, &realm).await;
    assert_eq!(get(&keygate, "/x", Some(&old)).await.status(), 200);

    // Requests with the old token and with fresh tokens, all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url, old) = (stop.clone(), keygate.url("/x"), old.clone());
        let (base, realm) = (kc.base.clone(), realm.clone());
        tokio::spawn(async move {
            let kc = Keycloak { base };
            let mut failures = Vec::new();
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let fresh = realm_token(&kc, &realm).await;
                for token in [&old, &fresh] {
                    let status = client()
                        .get(&url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap()
                        .status();
                    sent += 1;
                    if status != 200 {
                        failures.push((status.as_u16(), kid_of(token)));
                    }
                }
            }
            (sent, failures)
        })
    };

    let (_, components) = kc
        .realm_admin(
            &realm,
            Method::GET,
            "/components?type=org.keycloak.keys.KeyProvider",
            None,
        )
        .await;
    let old_rsa: Vec<Value> = components
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["providerId"] == "rsa-generated")
        .cloned()
        .collect();
    assert_eq!(old_rsa.len(), 1, "{components}");
    let old_rsa = old_rsa[0].clone();
    let realm_id = old_rsa["parentId"].as_str().unwrap().to_owned();
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            "/components",
            Some(json!({
                "name": "rsa-rotated",
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm_id,
                "config": {"priority": ["200"], "keySize": ["2048"], "algorithm": ["RS256"]},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new = realm_token(&kc, &realm).await;
    assert_ne!(
        kid_of(&new),
        kid_of(&old),
        "Keycloak still signs with the old key"
    );
    assert_eq!(get(&keygate, "/x", Some(&new)).await.status(), 200);

    // The old key passive (verifies, signs nothing), then disabled, then removed.
    let id = old_rsa["id"].as_str().unwrap();
    for (active, enabled) in [("false", "true"), ("false", "false")] {
        let mut rep = old_rsa.clone();
        rep["config"]["active"] = json!([active]);
        rep["config"]["enabled"] = json!([enabled]);
        let (status, body) = kc
            .realm_admin(&realm, Method::PUT, &format!("/components/{id}"), Some(rep))
            .await;
        assert_eq!(status, 204, "{body}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (status, body) = kc
        .realm_admin(&realm, Method::DELETE, &format!("/components/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, failures) = load.await.unwrap();
    assert!(sent > 10, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "failed requests during rotation: {failures:?}"
    );
    // The removal took effect: a keygate that never saw the old key refuses it.
    let fresh = Keygate::start_yaml(&format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {issuer}\nclient-id: rot\nclient-secret: rot-secret\n\
         upstream-url: {}\nlog-level: warn\n",
        upstream.url()
    ))
    .await;
    fresh.wait_ready().await;
    assert_eq!(get(&fresh, "/x", Some(&old)).await.status(), 401);
    assert_eq!(get(&fresh, "/x", Some(&new)).await.status(), 200);
    kc.realm_admin(&realm, Method::DELETE, "", None).await;
}

/// A Keycloak of this test's own on `port` (the shared one must not stop):
/// `dev/keycloak/keycloak.sh start`, until its `READY` line.
async fn start_private_keycloak(port: u16) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new("bash")
        .arg(repo_root().join("dev/keycloak/keycloak.sh"))
        .args(["start", "--port", &port.to_string(), "--exit-with"])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(600), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("READY ") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "a private Keycloak on port {port} did not start (its output is above)"
    );
    child
}

/// Stops the private Keycloak on `port` (`keycloak.sh stop PORT`) and waits
/// until nothing answers there.
async fn stop_private_keycloak(mut child: tokio::process::Child, port: u16) {
    let status = tokio::process::Command::new("bash")
        .arg(repo_root().join("dev/keycloak/keycloak.sh"))
        .args(["stop", &port.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "keycloak.sh stop {port} failed");
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Keycloak still answers on port {port} after stop");
}

/// Keycloak stopped mid-test: what keygate can check alone (a token signed
/// with a key it holds) keeps working; whatever needs Keycloak fails closed
/// with a 503 (a lightweight token's introspection, a service key's first
/// exchange), never a 200; when Keycloak returns (a fresh start: new signing
/// keys), keygate recovers on its own, with no restart: tokens with the new
/// `kid`, introspection and key exchanges work again.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_stopped_mid_test_fails_closed_and_keygate_recovers() {
    let port = free_port();
    let child = start_private_keycloak(port).await;
    let kc = Keycloak {
        base: format!("http://127.0.0.1:{port}"),
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keygate = gatekeeper(
        &kc,
        &upstream,
        &format!(
            "store-url: sqlite://{}/keys.db\nlisten-admin: 127.0.0.1:0\n\
             jwks-min-refresh-interval: 200ms\nopenid-provider-timeout: 2s\n\
             api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n  \
             admin-role: admin\n",
            dir.path().display()
        ),
    )
    .await;
    let admin_api = format!("http://{}", keygate.admin_addr.unwrap());
    let lightweight_client = |kc: &Keycloak| {
        let kc = Keycloak {
            base: kc.base.clone(),
        };
        async move {
            create_client(
                &kc,
                "lightweight",
                "lightweight-secret",
                json!({"attributes": {"client.use.lightweight.access.token.enabled": "true"}}),
            )
            .await
        }
    };
    lightweight_client(&kc).await;
    let alice = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    let unseen = kc
        .access_token("my_client_app", "my_client_app-secret", "bob")
        .await;
    let lightweight = kc
        .access_token("lightweight", "lightweight-secret", "alice")
        .await;
    let create_key = || {
        client()
            .post(format!("{admin_api}/admin/v1/keys"))
            .bearer_auth(&alice)
            .json(&json!({"client_id": "partner-acme", "client_secret": "partner-acme-secret"}))
            .send()
    };
    let resp = create_key().await.unwrap();
    assert_eq!(resp.status(), 201);
    let key = resp.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let use_key = || {
        client()
            .get(keygate.url("/x"))
            .header("x-api-key", &key)
            .send()
    };
    assert_eq!(get(&keygate, "/x", Some(&alice)).await.status(), 200);

    stop_private_keycloak(child, port).await;
    // Self-contained tokens signed with a key keygate holds: still fine.
    assert_eq!(get(&keygate, "/x", Some(&alice)).await.status(), 200);
    assert_eq!(get(&keygate, "/x", Some(&unseen)).await.status(), 200);
    // What needs Keycloak fails closed.
    let resp = get(&keygate, "/x", Some(&lightweight)).await;
    assert_eq!(
        resp.status(),
        503,
        "a lightweight token while Keycloak is down"
    );
    let resp = use_key().await.unwrap();
    assert_eq!(
        resp.status(),
        503,
        "a service key's first exchange while Keycloak is down"
    );
    let resp = create_key().await.unwrap();
    assert!(
        resp.status().is_server_error(),
        "key creation while Keycloak is down: {}",
        resp.status()
    );

    // Keycloak returns, with new signing keys; keygate was not restarted.
    let child = start_private_keycloak(port).await;
    lightweight_client(&kc).await;
    let after = kc
        .access_token("my_client_app", "my_client_app-secret", "alice")
        .await;
    assert_ne!(kid_of(&after), kid_of(&alice), "Keycloak kept its keys");
    let mut recovered = false;
    for _ in 0..50 {
        if get(&keygate, "/x", Some(&after)).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "keygate did not take Keycloak's new keys");
    let lightweight = kc
        .access_token("lightweight", "lightweight-secret", "alice")
        .await;
    assert_eq!(get(&keygate, "/x", Some(&lightweight)).await.status(), 200);
    let resp = use_key().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the service key after Keycloak returned"
    );
    stop_private_keycloak(child, port).await;
}

/// The access-token lifespan of the seed-001 test client, in seconds: short,
/// so that the browser test sees keygate refresh the session's token.
const SPA_TOKEN_LIFESPAN: u64 = 10;

/// Creates user `username` (password `password`, e-mail verified) in realm
/// acme with `realm_roles`; returns its id.
async fn create_user(
    kc: &Keycloak,
    username: &str,
    password: &str,
    realm_roles: &[&str],
) -> String {
    let rep = json!({
        "username": username,
        "enabled": true,
        "email": format!("{username}@example.com"),
        "emailVerified": true,
        "firstName": "Test",
        "lastName": "User",
        "credentials": [{"type": "password", "value": password, "temporary": false}],
    });
    let (status, body) = kc.admin(Method::POST, "/users", Some(rep)).await;
    assert_eq!(status, 201, "creating user {username}: {body}");
    let (_, found) = kc
        .admin(
            Method::GET,
            &format!("/users?username={username}&exact=true"),
            None,
        )
        .await;
    let id = found[0]["id"].as_str().unwrap().to_owned();
    for role in realm_roles {
        set_realm_role(kc, &id, role, true).await;
    }
    id
}

/// Grants (`grant`) or removes a realm role of user `id`.
async fn set_realm_role(kc: &Keycloak, id: &str, role: &str, grant: bool) {
    let (status, rep) = kc.admin(Method::GET, &format!("/roles/{role}"), None).await;
    assert_eq!(status, 200, "reading role {role}: {rep}");
    let method = if grant { Method::POST } else { Method::DELETE };
    let (status, body) = kc
        .admin(
            method,
            &format!("/users/{id}/role-mappings/realm"),
            Some(json!([rep])),
        )
        .await;
    assert_eq!(status, 204, "changing role {role} of {id}: {body}");
}

/// The user's sessions at Keycloak: online ones, and offline ones of client `uuid`.
async fn sessions_of(kc: &Keycloak, user: &str, uuid: &str) -> (Vec<Value>, Vec<Value>) {
    let (status, online) = kc
        .admin(Method::GET, &format!("/users/{user}/sessions"), None)
        .await;
    assert_eq!(status, 200, "{online}");
    let (status, offline) = kc
        .admin(
            Method::GET,
            &format!("/users/{user}/offline-sessions/{uuid}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{offline}");
    let list = |v: Value| v.as_array().cloned().unwrap_or_default();
    (list(online), list(offline))
}

/// Seeds 001 and 004 in Chromium at Keycloak (`dev/browser/keycloak.mjs`):
/// keygate is the SPA's relying party (a copy of `APP-frontend` per test:
/// confidential, PKCE, audience `APP-backend`, a 10 s access-token lifespan,
/// back-channel logout to keygate) and the personal keys' client (device
/// grant, `offline_access`). In the browser: Keycloak's login page, the
/// SPA's API call with the cookie alone, the token refreshed after its
/// lifespan, two personal keys approved on Keycloak's device page, logout
/// (Keycloak's session ends too: checked with the admin API, and the next
/// visit needs Keycloak's login page), then an admin's logout in Keycloak
/// ends keygate's session by back-channel logout. With the keys: the user's
/// roles on each exchange (granted and removed in Keycloak), `keygate token`,
/// revoke (Keycloak's offline session goes), an offline session an admin
/// deleted, and a disabled user, each with an error that says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_seeds_001_004_login_refresh_keys_and_logout_in_chromium() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");

    let name = unique("spa");
    let secret = "spa-secret";
    let uuid = create_client(
        &kc,
        &name,
        secret,
        json!({
            "standardFlowEnabled": true,
            "directAccessGrantsEnabled": false,
            "redirectUris": [format!("{base}/oauth/callback")],
            "defaultClientScopes": ["basic", "profile", "email", "roles", "web-origins", "acr", "groups"],
            "optionalClientScopes": ["offline_access"],
            "attributes": {
                "pkce.code.challenge.method": "S256",
                "post.logout.redirect.uris": format!("{base}/*"),
                "backchannel.logout.url": format!("{base}/oauth/backchannel-logout"),
                "backchannel.logout.session.required": "true",
                "access.token.lifespan": SPA_TOKEN_LIFESPAN.to_string(),
                "oauth2.device.authorization.grant.enabled": "true"
            },
            "protocolMappers": [{
                "name": "audience APP-backend",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.client.audience": "APP-backend",
                    "access.token.claim": "true",
                    "introspection.token.claim": "true"
                }
            }]
        }),
    )
    .await;
    let user = unique("dana");
    let password = user.as_str();
    let user_id = create_user(&kc, &user, password, &["user"]).await;

    let dir = tempfile::tempdir().unwrap();
    drop(reserved);
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: {name}\nclient-secret: {secret}\n\
         upstream-url: {}\nlog-level: warn\nencryption-key: 0123456789abcdefghijklmnopqrstuv\n\
         secure-cookie: false\nenable-refresh-tokens: true\naccess-token-audience: [APP-backend]\n\
         store-url: sqlite://{}/keys.db\n\
         api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n\
         \x20 negative-cache-ttl: 1s\n",
        kc.issuer(),
        upstream.url(),
        dir.path().display()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;

    let shots = tempfile::tempdir().unwrap();
    let mut child = chromium_script("keycloak.mjs", shots.path())
        .args(["--keygate", &base, "--keycloak", &kc.base, "--user", &user])
        .args(["--password", password, "--audience", "APP-backend"])
        .args(["--lifespan", &SPA_TOKEN_LIFESPAN.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start node: is Node.js installed?");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut keys = std::collections::HashMap::new();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("dev/browser/keycloak.mjs is silent; it said: {seen:?}"))
            .unwrap();
        let Some(line) = line else {
            panic!("dev/browser/keycloak.mjs ended; it said: {seen:?}");
        };
        if let Some(rest) = line.strip_prefix("@key ") {
            let (name, key) = rest.split_once(' ').unwrap();
            keys.insert(name.to_owned(), key.to_owned());
            seen.push(format!("@key {name}"));
            continue;
        }
        seen.push(line.clone());
        match line.as_str() {
            "@logged-out" => {
                let (online, offline) = sessions_of(&kc, &user_id, &uuid).await;
                assert!(
                    online.is_empty(),
                    "keygate's logout left Keycloak sessions: {online:?}"
                );
                assert!(
                    !offline.is_empty(),
                    "the personal keys have no offline session"
                );
            }
            "@logged-in-again" => {
                // An admin signs the session out (Sessions → Sign out): Keycloak
                // sends its back-channel logout to keygate.
                let (online, _) = sessions_of(&kc, &user_id, &uuid).await;
                assert_eq!(online.len(), 1, "{online:?}");
                let sid = online[0]["id"].as_str().unwrap();
                let (status, body) = kc
                    .admin(Method::DELETE, &format!("/sessions/{sid}"), None)
                    .await;
                assert_eq!(status, 204, "admin sign-out: {body}");
            }
            "E2E OK" => break,
            l if l.starts_with("E2E FAILED") => panic!("dev/browser/keycloak.mjs: {seen:?}"),
            _ => continue,
        }
        stdin.write_all(b"next\n").await.unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{seen:?}");

    // Seed 004 with the keys the browser made.
    let notebook = keys["notebook"].clone();
    let laptop = keys["laptop"].clone();
    let roles = |resp: reqwest::Response| async move {
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        let echo = Echo(serde_json::from_str(&text).unwrap());
        echo.header("x-auth-roles").unwrap_or_default()
    };
    let before = roles(get(&keygate, "/api/x", Some(&notebook)).await).await;
    assert!(
        before.contains("user") && !before.contains("admin"),
        "{before}"
    );
    // keygate exchanges again at `exp - refresh-margin`, or half the token's
    // lifetime when that is shorter: role changes show within it.
    let renewal = Duration::from_secs(SPA_TOKEN_LIFESPAN / 2 + 1);
    set_realm_role(&kc, &user_id, "admin", true).await;
    tokio::time::sleep(renewal).await;
    let granted = roles(get(&keygate, "/api/x", Some(&notebook)).await).await;
    assert!(
        granted.contains("admin"),
        "a role granted in Keycloak is not in the next exchange: {granted}"
    );
    set_realm_role(&kc, &user_id, "admin", false).await;
    tokio::time::sleep(renewal).await;
    let removed = roles(get(&keygate, "/api/x", Some(&laptop)).await).await;
    assert!(
        !removed.contains("admin"),
        "a role removed in Keycloak is still there: {removed}"
    );

    // `keygate token` with the personal key: a Keycloak access token.
    let cache = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("token")
        .env_remove("OIDC_CLIENT_ID")
        .env("KEYGATE_TOKEN_CACHE", cache.path())
        .env("KEYGATE_URL", keygate.url(""))
        .env("KEYGATE_API_KEY", &notebook)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "keygate token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims = claims_of(&stdout);
    assert_eq!(claims["iss"], kc.issuer().as_str());
    assert_eq!(claims["azp"], name.as_str());
    assert_eq!(claims["preferred_username"], user.as_str());

    // Revoke the laptop key: its offline token is revoked at Keycloak.
    let (_, list) = {
        let resp = get(&keygate, "/oauth/keys", Some(&notebook)).await;
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    let id = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["description"] == "laptop")
        .unwrap_or_else(|| panic!("no laptop key in {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both keys were approved in one browser session, so Keycloak gave them
    // one offline session: revoking the laptop key leaves it for the
    // notebook key, which keeps working after its next exchange.
    let (_, offline) = sessions_of(&kc, &user_id, &uuid).await;
    assert_eq!(offline.len(), 1, "{offline:?}");
    let revoke = |id: String| {
        let url = keygate.url(&format!("/oauth/keys/{id}"));
        let notebook = notebook.clone();
        async move {
            let resp = client()
                .delete(url)
                .bearer_auth(&notebook)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204);
        }
    };
    revoke(id).await;
    let resp = get(&keygate, "/api/x", Some(&laptop)).await;
    assert_eq!(resp.status(), 401);
    assert!(refusal_text(resp).await.contains("revoked"));
    let (_, offline) = sessions_of(&kc, &user_id, &uuid).await;
    assert_eq!(
        offline.len(),
        1,
        "revoking one key ended the other's offline session"
    );
    tokio::time::sleep(renewal).await;
    let still = roles(get(&keygate, "/api/x", Some(&notebook)).await).await;
    assert!(still.contains("user"), "{still}");

    // A disabled user's key is refused, saying so.
    let (kc_ref, user_ref) = (&kc, &user_id);
    let enable = |on: bool| async move {
        let (status, body) = kc_ref
            .admin(
                Method::PUT,
                &format!("/users/{user_ref}"),
                Some(json!({"enabled": on})),
            )
            .await;
        assert_eq!(status, 204, "{body}");
    };
    enable(false).await;
    tokio::time::sleep(renewal).await;
    let resp = get(&keygate, "/api/x", Some(&notebook)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("the user's account is disabled at the provider"),
        "{text}"
    );
    enable(true).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the 1 s negative cache
    roles(get(&keygate, "/api/x", Some(&notebook)).await).await;

    // A third key, approved from another device (a fresh login and consent
    // at Keycloak, as `keygate keys create --kind personal` does it): a
    // session of its own.
    let start = client()
        .post(keygate.url("/oauth/keys/device"))
        .json(&json!({"description": "cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let start: Value = start.json().await.unwrap();
    let uri = start["verification_uri_complete"].as_str().unwrap();
    assert!(uri.starts_with(&kc.issuer()), "{uri}");
    let page = keygate_testkit::browser::act_as_user(uri, &user, true).await;
    assert!(
        page.body.contains("Device Login Successful"),
        "{}",
        page.body
    );
    let poll = client()
        .post(keygate.url("/oauth/keys/device/token"))
        .json(&json!({"flow_id": start["flow_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 201);
    let cli = poll.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    roles(get(&keygate, "/api/x", Some(&cli)).await).await;
    let (_, offline) = sessions_of(&kc, &user_id, &uuid).await;
    assert_eq!(offline.len(), 2, "{offline:?}");

    // Revoking the notebook key, the last of its session, ends that offline
    // session at Keycloak.
    let notebook_id = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["description"] == "notebook")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client()
        .delete(keygate.url(&format!("/oauth/keys/{notebook_id}")))
        .bearer_auth(&cli)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, offline) = sessions_of(&kc, &user_id, &uuid).await;
    assert_eq!(
        offline.len(),
        1,
        "revoke left the offline session: {offline:?}"
    );

    // An admin ends the last offline session (Users → user → Sessions →
    // Sign out): the key is refused with what to do next.
    let sid = offline[0]["id"].as_str().unwrap();
    let (status, body) = kc
        .admin(
            Method::DELETE,
            &format!("/sessions/{sid}?isOffline=true"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(renewal).await;
    let resp = get(&keygate, "/api/x", Some(&cli)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("offline session") && text.contains("create a new key at /oauth/keys"),
        "{text}"
    );

    kc.admin(Method::DELETE, &format!("/users/{user_id}"), None)
        .await;
    kc.admin(Method::DELETE, &format!("/clients/{uuid}"), None)
        .await;
}

/// Item 7, the issuer: Keycloak writes the URL a token was requested at into
/// `iss`, so a token fetched at `localhost` fails at a keygate that
/// discovered `127.0.0.1`; and a token of another realm is signed with keys
/// this realm does not publish. Both errors name what keygate trusts, and
/// the first the token's issuer, so the fix is plain.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_issuer_mismatches_name_both_issuers() {
    let kc = Keycloak::shared().await;
    let upstream = Upstream::start().await;
    let keygate = gatekeeper(&kc, &upstream, "").await;

    let port = reqwest::Url::parse(&kc.base).unwrap().port().unwrap();
    let other_host = format!("http://localhost:{port}/realms/acme");
    let token = access_token(
        &format!("{other_host}/protocol/openid-connect/token"),
        &[
            ("grant_type", "password"),
            ("client_id", "my_client_app"),
            ("client_secret", "my_client_app-secret"),
            ("username", "alice"),
            ("password", "alice"),
        ],
    )
    .await;
    assert_eq!(claims_of(&token)["iss"], other_host.as_str());
    let resp = get(&keygate, "/x", Some(&token)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains(&format!(
            "token issuer {other_host} is not keygate's provider {}",
            kc.issuer()
        )) && text.contains("docs/keycloak.md#the-issuer"),
        "{text}"
    );
    let guide = std::fs::read_to_string(repo_root().join("docs/keycloak.md")).unwrap();
    assert!(
        guide.contains("\n## The issuer\n"),
        "docs/keycloak.md lacks the section the error names"
    );

    let realm = unique("other");
    create_realm(&kc, &realm).await;
    let foreign = realm_token(&kc, &realm).await;
    let resp = get(&keygate, "/x", Some(&foreign)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains(&format!(
            "signed with a key that {} does not publish",
            kc.issuer()
        )) && text.contains("another provider or realm"),
        "{text}"
    );
    kc.realm_admin(&realm, Method::DELETE, "", None).await;
}

/// Runs docs/keycloak.md's set-up script, `deploy/keycloak/kcadm-setup.sh`,
/// with Keycloak's own `kcadm.sh` against `realm` (all modes: keygate's
/// client `kg`, app client `my_app`, partner `p1`); returns its stdout and
/// stderr.
fn run_setup_script(
    kc: &Keycloak,
    realm: &str,
    gateway: &str,
    secrets: &std::path::Path,
) -> String {
    let root = repo_root();
    let out = std::process::Command::new(root.join("deploy/keycloak/kcadm-setup.sh"))
        .args([
            "--server",
            &kc.base,
            "--realm",
            realm,
            "--gateway-url",
            gateway,
        ])
        .args([
            "--client",
            "kg",
            "--app-client",
            "my_app",
            "--allow-password-grant",
        ])
        .args(["--partner", "p1", "--secrets-file"])
        .arg(secrets)
        .arg("all")
        .env("KCADM", root.join("dev/keycloak/kcadm.sh"))
        .env("KEYCLOAK_ADMIN", "admin")
        .env("KEYCLOAK_ADMIN_PASSWORD", "admin")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kcadm-setup.sh failed: {text}");
    text
}

/// Item 8: the admin guide's script sets up every mode on an existing
/// Keycloak, so the guide cannot go stale. In a new realm, run twice (the
/// second run creates nothing and keeps the secrets), then one keygate uses
/// what it set up: sidecar (an app client's password-grant token carries
/// keygate's audience and full-path groups), service keys (the partner's
/// client-credentials token passes, and a service key bound to it works),
/// the browser login (code flow with PKCE at Keycloak's login page, back to
/// keygate, the upstream gets a token for keygate) and personal keys (the
/// device grant with offline_access, approved at Keycloak).
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_guide_kcadm_setup_script_sets_up_every_mode() {
    let kc = Keycloak::shared().await;
    let realm = unique("guide");
    let port = free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let secrets_file = dir.path().join("secrets");

    let first = run_setup_script(&kc, &realm, &gateway, &secrets_file);
    for line in [
        format!("realm {realm}: created"),
        "client scope kg-audience: created".into(),
        "client scope groups: created".into(),
        "client kg: created".into(),
        "client my_app: created".into(),
        "client p1: created".into(),
    ] {
        assert!(first.contains(&line), "no `{line}` in: {first}");
    }
    let secrets_text = std::fs::read_to_string(&secrets_file).unwrap();
    let secrets: std::collections::HashMap<&str, &str> = secrets_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(secrets.len(), 3, "{:?}", secrets.keys());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secrets_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the secrets file is readable by others");
    let second = run_setup_script(&kc, &realm, &gateway, &secrets_file);
    assert!(
        !second.contains("created"),
        "the second run created: {second}"
    );
    assert_eq!(
        std::fs::read_to_string(&secrets_file).unwrap(),
        secrets_text
    );
    for secret in secrets.values() {
        assert!(
            !first.contains(secret) && !second.contains(secret),
            "a client secret was printed"
        );
    }

    // A user in group /ops with realm role `admin` (keygate's admin API).
    let user = unique("u");
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            "/groups",
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            "/roles",
            Some(json!({"name": "admin"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            "/users",
            Some(json!({
                "username": user, "enabled": true, "email": format!("{user}@example.com"),
                "emailVerified": true, "firstName": "Guide", "lastName": "User",
                "groups": ["/ops"],
                "credentials": [{"type": "password", "value": user, "temporary": false}],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, found) = kc
        .realm_admin(
            &realm,
            Method::GET,
            &format!("/users?username={user}&exact=true"),
            None,
        )
        .await;
    let user_id = found[0]["id"].as_str().unwrap().to_owned();
    let (_, role) = kc
        .realm_admin(&realm, Method::GET, "/roles/admin", None)
        .await;
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            &format!("/users/{user_id}/role-mappings/realm"),
            Some(json!([role])),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    let issuer = format!("{}/realms/{realm}", kc.base);
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {issuer}\nclient-id: kg\nclient-secret: {}\n\
         upstream-url: {}\nlog-level: warn\nenable-default-deny: true\n\
         encryption-key: 0123456789abcdefghijklmnopqrstuv\nsecure-cookie: false\n\
         store-url: sqlite://{}/keys.db\nlisten-admin: 127.0.0.1:0\n\
         api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n  admin-role: admin\n\
         resources:\n  - uri: /ops/*\n    groups: [/ops]\n",
        secrets["kg"],
        upstream.url(),
        dir.path().display()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    let token_endpoint = format!("{issuer}/protocol/openid-connect/token");

    // Sidecar: my_app's token is for keygate and carries full-path groups.
    let app_token = access_token(
        &token_endpoint,
        &[
            ("grant_type", "password"),
            ("client_id", "my_app"),
            ("client_secret", secrets["my_app"]),
            ("username", &user),
            ("password", &user),
        ],
    )
    .await;
    let claims = claims_of(&app_token);
    assert!(claims["aud"].to_string().contains("\"kg\""), "{claims}");
    assert_eq!(claims["groups"], json!(["/ops"]), "{claims}");
    assert_eq!(
        get(&keygate, "/ops/x", Some(&app_token)).await.status(),
        200
    );
    assert_eq!(get(&keygate, "/ops/x", None).await.status(), 401);

    // Service keys: the partner's own token, then a key bound to it.
    let partner_token = access_token(
        &token_endpoint,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "p1"),
            ("client_secret", secrets["p1"]),
        ],
    )
    .await;
    assert_eq!(
        get(&keygate, "/partner/x", Some(&partner_token))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&keygate, "/ops/x", Some(&partner_token)).await.status(),
        403,
        "the service account is in no group"
    );
    let admin_api = format!("http://{}", keygate.admin_addr.unwrap());
    let resp = client()
        .post(format!("{admin_api}/admin/v1/keys"))
        .bearer_auth(&app_token)
        .json(&json!({"client_id": "p1", "client_secret": secrets["p1"], "description": "p1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let key = resp.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = get(&keygate, "/partner/x", Some(&key)).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("x-auth-username").unwrap(),
        "service-account-p1"
    );

    // The browser login (spa, forward-auth): Keycloak accepts keygate's
    // redirect URI and PKCE; the upstream gets keygate's token for `kg`.
    let mut browser = keygate_testkit::browser::Browser::new();
    let page = keygate_testkit::browser::login_at(
        &mut browser,
        &gateway,
        "/oauth/authorize?return_to=/ops/page",
        &user,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let echo = Echo(serde_json::from_str(&page.body).unwrap());
    let token = echo.header("authorization").unwrap()["Bearer ".len()..].to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["azp"], "kg", "{claims}");
    assert!(claims["aud"].to_string().contains("\"kg\""), "{claims}");

    // Personal keys: the device grant with offline_access, approved at
    // Keycloak, gives a key that works.
    let personal = device_flow_key(&keygate, &issuer, &user).await;
    let resp = get(&keygate, "/ops/x", Some(&personal)).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-auth-username").unwrap(), user);
}

/// A personal key created through keygate's device flow and approved at
/// Keycloak (its own login and consent pages, driven over HTTP).
async fn device_flow_key(keygate: &Keygate, issuer: &str, user: &str) -> String {
    let start = client()
        .post(keygate.url("/oauth/keys/device"))
        .json(&json!({"description": "idle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200, "{:?}", start.text().await);
    let start: Value = start.json().await.unwrap();
    let uri = start["verification_uri_complete"].as_str().unwrap();
    assert!(uri.starts_with(issuer), "{uri}");
    let page = keygate_testkit::browser::act_as_user(uri, user, true).await;
    assert!(
        page.body.contains("Device Login Successful"),
        "{}",
        page.body
    );
    let poll = client()
        .post(keygate.url("/oauth/keys/device/token"))
        .json(&json!({"flow_id": start["flow_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 201, "{:?}", poll.text().await);
    poll.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Item 6: Keycloak ends offline sessions idle longer than Offline Session
/// Idle. In a realm where that is 8 s (and access tokens live 4 s, so no
/// cached token hides the session's end), a personal key on a keygate with
/// `offline-keepalive: 2s` is not used for 24 s and still works, and its
/// offline session is still listed at Keycloak; the same kind of key on a
/// keygate with the keep-alive off has lost its session and is refused with
/// a message that says to create a new key. The realm revokes refresh
/// tokens on use (*Revoke Refresh Token*), so every keep-alive rotates the
/// key's refresh token.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_idle_personal_keys_keep_their_offline_sessions() {
    let kc = Keycloak::shared().await;
    let realm = unique("idle");
    let rep = json!({
        "realm": realm,
        "enabled": true,
        "sslRequired": "none",
        "offlineSessionIdleTimeout": 8,
        "accessTokenLifespan": 4,
        // Refresh tokens are single-use: the exchange must use the token
        // the keep-alive stored, not the one sealed under the key.
        "revokeRefreshToken": true,
        "refreshTokenMaxReuse": 0,
        "clients": [{
            "clientId": "kg",
            "secret": "kg-secret",
            "publicClient": false,
            "standardFlowEnabled": true,
            "redirectUris": ["http://127.0.0.1/*"],
            "attributes": {"oauth2.device.authorization.grant.enabled": "true"},
            "protocolMappers": [{
                "name": "audience kg",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.client.audience": "kg", "access.token.claim": "true"}
            }]
        }],
        "users": [{
            "username": "idler",
            "enabled": true,
            "email": "idler@example.com",
            "emailVerified": true,
            "firstName": "Idle",
            "lastName": "User",
            "realmRoles": ["offline_access"],
            "credentials": [{"type": "password", "value": "idler", "temporary": false}]
        }]
    });
    let resp = client()
        .post(format!("{}/admin/realms", kc.base))
        .bearer_auth(kc.admin_token().await)
        .json(&rep)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let issuer = format!("{}/realms/{realm}", kc.base);
    let upstream = Upstream::start().await;
    let start = |keepalive: &'static str| {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "listen: 127.0.0.1:0\ndiscovery-url: {issuer}\nclient-id: kg\nclient-secret: kg-secret\n\
             upstream-url: {}\nlog-level: warn\nstore-url: sqlite://{}/keys.db\n\
             api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n  \
             offline-keepalive: {keepalive}\n  offline-keepalive-check: 1s\n  negative-cache-ttl: 1s\n",
            upstream.url(),
            dir.path().display()
        );
        async move {
            let keygate = Keygate::start_yaml(&yaml).await;
            keygate.wait_ready().await;
            (keygate, dir)
        }
    };
    let (kept, _kept_dir) = start("2s").await;
    let (idle, _idle_dir) = start("0").await;
    let kept_key = device_flow_key(&kept, &issuer, "idler").await;
    let idle_key = device_flow_key(&idle, &issuer, "idler").await;
    assert_eq!(get(&kept, "/x", Some(&kept_key)).await.status(), 200);
    assert_eq!(get(&idle, "/x", Some(&idle_key)).await.status(), 200);

    // Three times the idle limit without a request.
    tokio::time::sleep(Duration::from_secs(24)).await;

    let resp = get(&kept, "/x", Some(&kept_key)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-auth-username").unwrap(), "idler");
    let refreshed = counter(
        &kept.metrics().await,
        "keygate_offline_keepalives_total",
        &["result=\"refreshed\""],
    );
    assert!(refreshed >= 3.0, "{refreshed} keep-alives");

    let resp = get(&idle, "/x", Some(&idle_key)).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("offline session") && text.contains("create a new key at /oauth/keys"),
        "{text}"
    );

    // At Keycloak: the kept key's offline session is the only one left.
    let (_, users) = kc
        .realm_admin(
            &realm,
            Method::GET,
            "/users?username=idler&exact=true",
            None,
        )
        .await;
    let user_id = users[0]["id"].as_str().unwrap().to_owned();
    let (_, clients) = kc
        .realm_admin(&realm, Method::GET, "/clients?clientId=kg", None)
        .await;
    let uuid = clients[0]["id"].as_str().unwrap().to_owned();
    let (status, offline) = kc
        .realm_admin(
            &realm,
            Method::GET,
            &format!("/users/{user_id}/offline-sessions/{uuid}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{offline}");
    assert_eq!(offline.as_array().unwrap().len(), 1, "{offline}");
}
