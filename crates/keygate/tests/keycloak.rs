//! Conformance with a real Keycloak 26 (`dev/keycloak`, realm `acme`): the
//! seeds' set-ups end to end with keygate and a real upstream. This file
//! starts with seed 000 (an API-only service behind a gatekeeper sidecar).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::keycloak::Keycloak;
use common::*;
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
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
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
