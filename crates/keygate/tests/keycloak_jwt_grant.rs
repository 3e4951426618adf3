//! Personal keys backed by the JWT authorization grant (RFC 7523), against
//! the real Keycloak (`dev/keycloak`, 26.6 or newer): keygate signs a short
//! assertion for the key's owner with its own key (published at
//! `/oauth/jwks`), and Keycloak, which trusts keygate as an identity provider
//! of type `jwt-authorization-grant`, answers with a token carrying the
//! user's current roles. Keycloak finds the user through a link (federated
//! identity) to that identity provider; keygate makes it when it may
//! (`link-users`, its service account holding `manage-users`), else an
//! administrator does (`kcadm-setup.sh --link`).
//!
//! Each test creates what it changes (clients, users, roles, identity
//! providers, realms) with unique names, so they share one Keycloak.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::keycloak::{Keycloak, REALM};
use keygate_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef-0123456789";

/// A name no other test uses: `prefix-<pid>-<nanos>`.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// GET `path` through keygate with `key` in `X-API-Key`.
async fn get(keygate: &Keygate, path: &str, key: &str) -> reqwest::Response {
    client()
        .get(keygate.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

/// Starts keygate's device flow for a personal key and approves it at
/// Keycloak as `user` (its login and device pages, over HTTP); the answer to
/// the poll that follows.
async fn device_flow(keygate: &Keygate, issuer: &str, user: &str) -> (u16, Value) {
    let start = client()
        .post(keygate.url("/oauth/keys/device"))
        .json(&json!({"description": "jwt grant"}))
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
    let status = poll.status().as_u16();
    (status, poll.json().await.unwrap())
}

/// A new personal key for `user`: its key and id.
async fn new_key(keygate: &Keygate, issuer: &str, user: &str) -> (String, String) {
    let (status, body) = device_flow(keygate, issuer, user).await;
    assert_eq!(status, 201, "{body}");
    (
        body["key"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    )
}

/// keygate's client in `realm`: confidential, the device grant, the JWT
/// authorization grant with identity provider `alias`, access tokens that
/// live `lifespan` seconds and carry its own audience; with `service_account`
/// its service account may link users (`manage-users`). Its internal id.
async fn create_keygate_client(
    kc: &Keycloak,
    realm: &str,
    client_id: &str,
    alias: &str,
    lifespan: u32,
    service_account: bool,
) -> String {
    let rep = json!({
        "clientId": client_id,
        "secret": format!("{client_id}-secret"),
        "publicClient": false,
        "standardFlowEnabled": false,
        "directAccessGrantsEnabled": false,
        "serviceAccountsEnabled": service_account,
        "attributes": {
            "oauth2.device.authorization.grant.enabled": "true",
            "oauth2.jwt.authorization.grant.enabled": "true",
            "oauth2.jwt.authorization.grant.idp": alias,
            "access.token.lifespan": lifespan.to_string(),
        },
        "protocolMappers": [{
            "name": "audience",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "config": {"included.client.audience": client_id, "access.token.claim": "true"}
        }],
    });
    let (status, body) = kc
        .realm_admin(realm, Method::POST, "/clients", Some(rep))
        .await;
    assert_eq!(status, 201, "creating client {client_id}: {body}");
    let (_, found) = kc
        .realm_admin(
            realm,
            Method::GET,
            &format!("/clients?clientId={client_id}"),
            None,
        )
        .await;
    let uuid = found[0]["id"].as_str().unwrap().to_owned();
    if service_account {
        kc.grant_realm_management_in(realm, &uuid, "manage-users")
            .await;
    }
    uuid
}

/// keygate's YAML for client `client` of `issuer`, keys in `store`.
fn keygate_yaml(
    issuer: &str,
    client: &str,
    upstream: &Upstream,
    store: &std::path::Path,
    listen: &str,
    api_keys: &str,
) -> String {
    format!(
        "listen: {listen}\ndiscovery-url: {issuer}\nclient-id: {client}\nclient-secret: {client}-secret\n\
         upstream-url: {}\nlog-level: warn\nstore-url: sqlite://{}/keys.db\n\
         resources:\n  - uri: /role/*\n    roles: [jag-role]\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n  negative-cache-ttl: 1s\n  record-cache-ttl: 1s\n{api_keys}",
        upstream.url(),
        store.display()
    )
}

/// The `api-keys` lines of the JWT grant's backing.
fn jwt_grant_keys(kg_issuer: &str, alias: &str, link_users: bool) -> String {
    format!(
        "  personal-backing: jwt-grant\n  jwt-grant:\n    issuer: {kg_issuer}\n    \
         identity-provider: {alias}\n    link-users: {link_users}\n"
    )
}

/// Sends `assertion` to Keycloak's token endpoint of `realm` as `client`.
async fn jwt_bearer(kc: &Keycloak, realm: &str, client: &str, assertion: &str) -> (u16, Value) {
    let resp = client_http()
        .post(format!(
            "{}/realms/{realm}/protocol/openid-connect/token",
            kc.base
        ))
        .basic_auth(client, Some(format!("{client}-secret")))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn client_http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Item 13.4, end to end in realm acme: keygate links the user when the key
/// is made; the key works through keygate with no offline session at
/// Keycloak; a realm role granted and removed at Keycloak shows at the next
/// exchange; Keycloak's answers to replayed, expired and unknown-subject
/// assertions; a disabled user is refused (and works again when enabled); a
/// removed link is refused with what to do, and a new key links again; a
/// second replica on the same store and secret signs with the same key;
/// revoking a key stops it at once here and within `record-cache-ttl` on
/// the other replica; a pending required action refuses the key, an admin's
/// sign-out of the user does not.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_jwt_grant_personal_keys_end_to_end() {
    let kc = Keycloak::shared().await;
    let name = unique("jag");
    let issuer = kc.issuer();
    let kg_issuer = format!("https://{name}.keygate.test");
    let client_uuid = create_keygate_client(&kc, REALM, &name, &name, 10, true).await;
    let user = format!("{name}-u");
    let uid = kc.create_user_in(REALM, &user).await;
    let role_exists = kc
        .realm_admin(REALM, Method::GET, "/roles/jag-role", None)
        .await
        .0
        == 200;
    if !role_exists {
        kc.create_realm_role_in(REALM, "jag-role").await;
    }

    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = keygate_yaml(
        &issuer,
        &name,
        &upstream,
        dir.path(),
        "127.0.0.1:0",
        &jwt_grant_keys(&kg_issuer, &name, true),
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;

    // keygate publishes its public key; Keycloak fetches it from there.
    let jwks = client()
        .get(keygate.url("/oauth/jwks"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    assert_eq!(
        jwks.headers()["content-type"].to_str().unwrap(),
        "application/jwk-set+json"
    );
    let jwks: Value = jwks.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none());
    kc.create_jwt_grant_idp_in(REALM, &name, &kg_issuer, &keygate.url("/oauth/jwks"), 5)
        .await;

    // The key: made through the device flow; keygate links the user.
    assert!(kc.links_in(REALM, &uid).await.is_empty());
    let (key1, id1) = new_key(&keygate, &issuer, &user).await;
    let links = kc.links_in(REALM, &uid).await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["identityProvider"], name.as_str());
    assert_eq!(links[0]["userId"], uid.as_str());
    assert_eq!(links[0]["userName"], user.as_str());

    let resp = get(&keygate, "/x", &key1).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-auth-username").unwrap(), user);
    assert_eq!(echo.header("x-auth-method").unwrap(), "api-key");
    assert_eq!(echo.header("x-auth-key-id").unwrap(), id1);
    let token = echo.header("authorization").unwrap()["Bearer ".len()..].to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], uid.as_str(), "{claims}");
    assert_eq!(claims["azp"], name.as_str(), "{claims}");
    // A transient session: nothing kept at Keycloak for the key.
    assert!(claims.get("sid").is_none(), "{claims}");
    // Scope `openid`, as with the device flow: the upstream may call userinfo.
    assert!(
        claims["scope"].as_str().unwrap().contains("openid"),
        "{claims}"
    );
    let info = client_http()
        .get(format!("{issuer}/protocol/openid-connect/userinfo"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["preferred_username"], user.as_str());
    let (status, offline) = kc
        .admin(
            Method::GET,
            &format!("/users/{uid}/offline-sessions/{client_uuid}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(offline, json!([]), "no offline session behind the key");

    // The user's current roles at each exchange (tokens live 10 s, so
    // keygate exchanges again after 5 s).
    assert_eq!(get(&keygate, "/role/x", &key1).await.status(), 403);
    kc.set_realm_role_in(REALM, &uid, "jag-role", true).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get(&keygate, "/role/x", &key1).await.status(), 200);
    kc.set_realm_role_in(REALM, &uid, "jag-role", false).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get(&keygate, "/role/x", &key1).await.status(), 403);

    // What Keycloak answers to assertions keygate would never send: the
    // same one twice, an expired one, one for a user without a link.
    let signer =
        keygate_auth::assertion::AssertionSigner::new(SERVER_SECRET.as_bytes(), &kg_issuer, 1)
            .unwrap();
    let once = signer.sign(&uid, &issuer, Duration::from_secs(60)).unwrap();
    let (status, body) = jwt_bearer(&kc, REALM, &name, once.expose()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let (status, body) = jwt_bearer(&kc, REALM, &name, once.expose()).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));
    assert_eq!(body["error_description"], "Token reuse detected");
    let short = signer.sign(&uid, &issuer, Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, body) = jwt_bearer(&kc, REALM, &name, short.expose()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_description"], "Token is not active");
    let stranger = signer
        .sign("no-such-user", &issuer, Duration::from_secs(60))
        .unwrap();
    let (status, body) = jwt_bearer(&kc, REALM, &name, stranger.expose()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_description"], "User not found");

    // A disabled user: refused, with the reason; enabled again: back.
    kc.set_user_enabled_in(REALM, &uid, false).await;
    let direct = signer.sign(&uid, &issuer, Duration::from_secs(60)).unwrap();
    let (status, body) = jwt_bearer(&kc, REALM, &name, direct.expose()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_description"], "User is not enabled");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resp = get(&keygate, "/x", &key1).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("User is not enabled") && text.contains("disabled at the provider"),
        "{text}"
    );
    kc.set_user_enabled_in(REALM, &uid, true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&keygate, "/x", &key1).await.status(), 200);

    // The link removed at Keycloak: refused, saying what to do; a new key
    // links the user again, and the first key works again too.
    let (status, body) = kc
        .admin(
            Method::DELETE,
            &format!("/users/{uid}/federated-identity/{name}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resp = get(&keygate, "/x", &key1).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("User not found")
            && text.contains("not linked to keygate")
            && text.contains("create a new key at /oauth/keys"),
        "{text}"
    );
    let (key2, _) = new_key(&keygate, &issuer, &user).await;
    assert_eq!(kc.links_in(REALM, &uid).await.len(), 1);
    assert_eq!(get(&keygate, "/x", &key2).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&keygate, "/x", &key1).await.status(), 200);

    // The owner sees how each key is backed.
    let mine: Value = client()
        .get(keygate.url("/oauth/keys"))
        .header("x-api-key", &key2)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let backings: Vec<&str> = mine["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["backing"].as_str().unwrap())
        .collect();
    assert_eq!(backings, ["jwt-grant", "jwt-grant"], "{mine}");

    // A second replica (same store, same server secret) signs with the same
    // key: Keycloak accepts its assertions with the keys it already has.
    let replica = Keygate::start_yaml(&yaml).await;
    replica.wait_ready().await;
    let theirs: Value = client()
        .get(replica.url("/oauth/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs, jwks);
    assert_eq!(get(&replica, "/x", &key1).await.status(), 200);

    // Revoked by its owner: refused at once on this replica, within
    // record-cache-ttl (1 s) on the other; the other key keeps working.
    let resp = client()
        .delete(keygate.url(&format!("/oauth/keys/{id1}")))
        .header("x-api-key", &key2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = get(&keygate, "/x", &key1).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(refusal_text(resp).await, "API key has been revoked");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&replica, "/x", &key1).await.status(), 401);
    assert_eq!(get(&replica, "/x", &key2).await.status(), 200);
    assert_eq!(get(&keygate, "/x", &key2).await.status(), 200);

    // A required action pending at Keycloak refuses the key until it is
    // done; an admin's "Sign out" of the user (not-before) does not stop it.
    let (status, body) = kc
        .admin(
            Method::PUT,
            &format!("/users/{uid}"),
            Some(json!({"requiredActions": ["UPDATE_PASSWORD"]})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resp = get(&keygate, "/x", &key2).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("Account is not fully set up") && text.contains("sign in there once"),
        "{text}"
    );
    let (status, body) = kc
        .admin(
            Method::PUT,
            &format!("/users/{uid}"),
            Some(json!({"requiredActions": []})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = kc
        .admin(Method::POST, &format!("/users/{uid}/logout"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = get(&keygate, "/x", &key2).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    let metrics = keygate.metrics().await;
    assert!(
        counter(
            &metrics,
            "keygate_provider_grants_total",
            &["grant=\"jwt_bearer\"", "result=\"ok\""]
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "keygate_provider_grants_total",
            &["grant=\"jwt_bearer\"", "result=\"rejected\""]
        ) >= 2.0
    );
}

/// Runs `deploy/keycloak/kcadm-setup.sh` (docs/keycloak.md) with
/// Keycloak's own `kcadm.sh` against `realm`: keygate's client `kg`, the
/// `jwt-grant` mode and `extra` arguments; its output.
fn run_setup_script(kc: &Keycloak, realm: &str, gateway: &str, extra: &[&str]) -> String {
    let root = repo_root();
    let out = std::process::Command::new(root.join("deploy/keycloak/kcadm-setup.sh"))
        .args(["--server", &kc.base, "--realm", realm])
        .args(["--gateway-url", gateway, "--client", "kg"])
        .args(extra)
        .arg("jwt-grant")
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

/// Without `link-users` keygate holds no admin right at Keycloak, and a
/// user nobody linked gets no key: the device flow ends with 403
/// `not_linked` and what to do, as does a user whose id an administrator
/// linked to another account (Keycloak would answer with that account's
/// token). The set-up script (docs/keycloak.md, mode `jwt-grant`) makes
/// keygate's identity provider and client in a new realm; run again with
/// `--link USER` it links the user as the admin, and the user's next key
/// works; with the user's link replaced by the other account's, the key is
/// refused, never answered with the other account's token.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_jwt_grant_without_link_users_needs_an_admins_link() {
    let kc = Keycloak::shared().await;
    let realm = unique("jagsetup");
    let port = free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let text = run_setup_script(
        &kc,
        &realm,
        &gateway,
        &["--secrets-file", secrets.to_str().unwrap()],
    );
    assert!(
        text.contains("identity provider keygate: created"),
        "{text}"
    );
    let (_, idp) = kc
        .realm_admin(
            &realm,
            Method::GET,
            "/identity-provider/instances/keygate",
            None,
        )
        .await;
    assert_eq!(idp["providerId"], "jwt-authorization-grant", "{idp}");
    assert_eq!(idp["config"]["issuer"], gateway.as_str());
    assert_eq!(idp["config"]["jwksUrl"], format!("{gateway}/oauth/jwks"));
    let (_, clients) = kc
        .realm_admin(&realm, Method::GET, "/clients?clientId=kg", None)
        .await;
    let attributes = &clients[0]["attributes"];
    assert_eq!(attributes["oauth2.jwt.authorization.grant.enabled"], "true");
    assert_eq!(attributes["oauth2.jwt.authorization.grant.idp"], "keygate");
    assert_eq!(clients[0]["serviceAccountsEnabled"], false);

    let secret = std::fs::read_to_string(&secrets).unwrap();
    let secret = secret
        .lines()
        .find_map(|l| l.strip_prefix("kg="))
        .unwrap()
        .to_owned();
    let user = "linked-later";
    let uid = kc.create_user_in(&realm, user).await;
    let issuer = format!("{}/realms/{realm}", kc.base);
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {issuer}\nclient-id: kg\nclient-secret: {secret}\n\
         upstream-url: {}\nlog-level: warn\nstore-url: sqlite://{}/keys.db\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n{}",
        upstream.url(),
        dir.path().display(),
        jwt_grant_keys(&gateway, "keygate", false)
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;

    let (status, body) = device_flow(&keygate, &issuer, user).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "not_linked");
    let text = body["error_description"].as_str().unwrap();
    assert!(
        text.contains("not linked to keygate's identity provider `keygate`")
            && text.contains("ask an administrator"),
        "{text}"
    );
    assert!(kc.links_in(&realm, &uid).await.is_empty());

    // Another account linked with this user's id: Keycloak would answer the
    // user's assertion with that account's token; keygate refuses it.
    let impostor = kc.create_user_in(&realm, "impostor").await;
    let link = |id: &str, name: &str| json!({"identityProvider": "keygate", "userId": id, "userName": name});
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            &format!("/users/{impostor}/federated-identity/keygate"),
            Some(link(&uid, user)),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = device_flow(&keygate, &issuer, user).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "not_linked");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains("links your id to another account"), "{text}");
    let unlink = |id: String| {
        let kc = &kc;
        let realm = &realm;
        async move {
            let (status, body) = kc
                .realm_admin(
                    realm,
                    Method::DELETE,
                    &format!("/users/{id}/federated-identity/keygate"),
                    None,
                )
                .await;
            assert_eq!(status, 204, "{body}");
        }
    };
    unlink(impostor.clone()).await;
    // Short-lived tokens, so that the key is exchanged again soon below.
    let (_, clients) = kc
        .realm_admin(&realm, Method::GET, "/clients?clientId=kg", None)
        .await;
    let mut rep = clients[0].clone();
    rep["attributes"]["access.token.lifespan"] = "10".into();
    let kg_uuid = rep["id"].as_str().unwrap().to_owned();
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::PUT,
            &format!("/clients/{kg_uuid}"),
            Some(rep),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    let text = run_setup_script(&kc, &realm, &gateway, &["--link", user]);
    assert!(
        text.contains(&format!("user {user}: linked to keygate")),
        "{text}"
    );
    let links = kc.links_in(&realm, &uid).await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["userId"], uid.as_str());
    let (key, _) = new_key(&keygate, &issuer, user).await;
    let resp = get(&keygate, "/x", &key).await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-auth-username").unwrap(), user);

    // The user's link replaced by the impostor's: the next exchange gets the
    // impostor's token, which keygate refuses.
    unlink(uid.clone()).await;
    let (status, body) = kc
        .realm_admin(
            &realm,
            Method::POST,
            &format!("/users/{impostor}/federated-identity/keygate"),
            Some(link(&uid, user)),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resp = get(&keygate, "/x", &key).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(text.contains("a token for another user"), "{text}");
    kc.realm_admin(&realm, Method::DELETE, "", None).await;
}

/// Why the JWT grant: in a realm whose offline sessions idle out after 8 s
/// (access tokens live 4 s), a personal key made while keygate backed
/// personal keys with offline sessions keeps working after keygate switches
/// to `personal-backing: jwt-grant` (same store), next to a new key backed
/// by the JWT grant; Keycloak holds one offline session, the first key's.
/// Both unused for three times the idle limit (and no keep-alive): the
/// offline-backed key has lost its session and is refused with what to do;
/// the JWT-grant key works.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_jwt_grant_keys_outlive_idle_offline_sessions_and_old_keys_keep_working() {
    let kc = Keycloak::shared().await;
    let realm = unique("jagidle");
    let port = free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    let rep = json!({
        "realm": realm,
        "enabled": true,
        "sslRequired": "none",
        "offlineSessionIdleTimeout": 8,
        "accessTokenLifespan": 4,
        "users": [{
            "username": "sleeper",
            "enabled": true,
            "email": "sleeper@example.com",
            "emailVerified": true,
            "firstName": "Sleepy",
            "lastName": "User",
            "realmRoles": ["offline_access"],
            "credentials": [{"type": "password", "value": "sleeper", "temporary": false}]
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
    kc.create_jwt_grant_idp_in(
        &realm,
        "keygate",
        &gateway,
        &format!("{gateway}/oauth/jwks"),
        5,
    )
    .await;
    let client_uuid = create_keygate_client(&kc, &realm, "kg", "keygate", 4, true).await;
    let issuer = format!("{}/realms/{realm}", kc.base);
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let no_keepalive = "  offline-keepalive: 0\n";

    // First, personal keys backed by offline sessions.
    let offline = Keygate::start_yaml(&keygate_yaml(
        &issuer,
        "kg",
        &upstream,
        dir.path(),
        "127.0.0.1:0",
        no_keepalive,
    ))
    .await;
    offline.wait_ready().await;
    let (old_key, _) = new_key(&offline, &issuer, "sleeper").await;
    assert_eq!(get(&offline, "/x", &old_key).await.status(), 200);
    drop(offline);

    // Then the JWT grant for new keys, on the same store.
    let granted = Keygate::start_yaml(&keygate_yaml(
        &issuer,
        "kg",
        &upstream,
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &format!(
            "{no_keepalive}{}",
            jwt_grant_keys(&gateway, "keygate", true)
        ),
    ))
    .await;
    granted.wait_ready().await;
    let (new, _) = new_key(&granted, &issuer, "sleeper").await;
    assert_eq!(get(&granted, "/x", &new).await.status(), 200);
    assert_eq!(get(&granted, "/x", &old_key).await.status(), 200);
    let mine: Value = client()
        .get(granted.url("/oauth/keys"))
        .header("x-api-key", &new)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut backings: Vec<&str> = mine["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["backing"].as_str().unwrap())
        .collect();
    backings.sort();
    assert_eq!(backings, ["jwt-grant", "offline-session"], "{mine}");
    let (_, users) = kc
        .realm_admin(
            &realm,
            Method::GET,
            "/users?username=sleeper&exact=true",
            None,
        )
        .await;
    let uid = users[0]["id"].as_str().unwrap().to_owned();
    let (_, sessions) = kc
        .realm_admin(
            &realm,
            Method::GET,
            &format!("/users/{uid}/offline-sessions/{client_uuid}"),
            None,
        )
        .await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");

    // Three times the idle limit without a request.
    tokio::time::sleep(Duration::from_secs(24)).await;

    let resp = get(&granted, "/x", &new).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let resp = get(&granted, "/x", &old_key).await;
    assert_eq!(resp.status(), 401);
    let text = refusal_text(resp).await;
    assert!(
        text.contains("offline session") && text.contains("create a new key at /oauth/keys"),
        "{text}"
    );
    kc.realm_admin(&realm, Method::DELETE, "", None).await;
}
