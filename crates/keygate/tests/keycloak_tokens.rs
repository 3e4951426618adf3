//! Keycloak 26's newer token features with the real Keycloak (`dev/keycloak`):
//! standard token exchange toward an upstream's audience (RFC 8693) and
//! DPoP-bound tokens (RFC 9449) that Keycloak itself binds. Each test makes
//! its own clients and client scopes through the admin REST API, so the
//! tests stay independent on the one Keycloak of the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::keycloak::Keycloak;
use keygate_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A name no other test uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

async fn create(kc: &Keycloak, path: &str, body: Value) {
    let (status, answer) = kc.admin(Method::POST, path, Some(body)).await;
    assert_eq!(status, 201, "POST {path}: {answer}");
}

/// The internal id of client `client_id`.
async fn client_uuid(kc: &Keycloak, client_id: &str) -> String {
    let (_, list) = kc
        .admin(Method::GET, &format!("/clients?clientId={client_id}"), None)
        .await;
    list[0]["id"].as_str().unwrap().to_owned()
}

/// A confidential client `id` (secret `id-secret`) that may use the
/// password grant, with an Audience mapper for each of `audiences`.
async fn password_client(kc: &Keycloak, id: &str, audiences: &[&str], attributes: Value) {
    let mappers: Vec<Value> = audiences
        .iter()
        .map(|aud| {
            json!({
                "name": format!("audience-{aud}"), "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.client.audience": aud, "access.token.claim": "true",
                           "introspection.token.claim": "true"}
            })
        })
        .collect();
    create(
        kc,
        "/clients",
        json!({
            "clientId": id, "secret": format!("{id}-secret"), "publicClient": false,
            "standardFlowEnabled": false, "directAccessGrantsEnabled": true,
            "attributes": attributes, "protocolMappers": mappers,
        }),
    )
    .await;
}

/// An upstream's client `id` (no flows: it only ever receives tokens) and
/// a client scope of the same name whose Audience mapper puts it in `aud`.
async fn upstream_client_and_scope(kc: &Keycloak, id: &str) {
    create(
        kc,
        "/clients",
        json!({"clientId": id, "publicClient": false, "standardFlowEnabled": false,
               "directAccessGrantsEnabled": false}),
    )
    .await;
    create(
        kc,
        "/client-scopes",
        json!({
            "name": id, "protocol": "openid-connect",
            "attributes": {"include.in.token.scope": "true"},
            "protocolMappers": [{
                "name": format!("audience-{id}"), "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.client.audience": id, "access.token.claim": "true",
                           "introspection.token.claim": "true"}
            }]
        }),
    )
    .await;
}

/// Makes client scope `scope` an optional scope of client `client_id`.
async fn add_optional_scope(kc: &Keycloak, client_id: &str, scope: &str) {
    let client = client_uuid(kc, client_id).await;
    let (_, scopes) = kc.admin(Method::GET, "/client-scopes", None).await;
    let scope_id = scopes
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == scope)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, answer) = kc
        .admin(
            Method::PUT,
            &format!("/clients/{client}/optional-client-scopes/{scope_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{answer}");
}

/// A password-grant access token of `client` for `user`.
async fn user_token(kc: &Keycloak, client: &str, user: &str) -> String {
    kc.access_token(client, &format!("{client}-secret"), user)
        .await
}

/// keygate as client `client_id` (secret `client_id-secret`) in front of
/// `upstream`, with `extra` config.
async fn keygate(kc: &Keycloak, client_id: &str, upstream: &Upstream, extra: &str) -> Keygate {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {}\nclient-id: {client_id}\n\
         client-secret: {client_id}-secret\nupstream-url: {}\nlog-level: warn\n{extra}",
        kc.issuer(),
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    keygate
}

/// The audiences of a token, as a list.
fn audiences(token: &str) -> Vec<String> {
    match &claims_of(token)["aud"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("aud {other}"),
    }
}

const EXCHANGES_OK: &str = "keygate_provider_grants_total{grant=\"token_exchange\",result=\"ok\"}";

/// Item 2 of issue 13 with Keycloak's standard token exchange: the upstream
/// gets a token whose only audience is its own client, for the same user
/// with the same roles; one exchange per caller token (cached, and
/// coalesced across concurrent requests); forward-auth hands out the same.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_token_exchange_narrows_the_forwarded_token_to_the_upstream() {
    let kc = Keycloak::shared().await;
    let (kg, app, orders) = (unique("kgx"), unique("appx"), unique("orders"));
    upstream_client_and_scope(&kc, &orders).await;
    password_client(
        &kc,
        &kg,
        &[],
        json!({"standard.token.exchange.enabled": "true"}),
    )
    .await;
    add_optional_scope(&kc, &kg, &orders).await;
    // The front end's tokens are for keygate's client (and, as Keycloak
    // adds, `account`): a token the orders service would never accept.
    password_client(&kc, &app, &[&kg], json!({})).await;
    let upstream = Upstream::start().await;
    let keygate = keygate(
        &kc,
        &kg,
        &upstream,
        &format!(
            "token-exchange:\n  audience: {orders}\n  scopes: [{orders}]\n\
             trusted-proxies: [127.0.0.1/32]\n"
        ),
    )
    .await;

    let alice = user_token(&kc, &app, "alice").await;
    assert!(!audiences(&alice).contains(&orders));
    let before = metric(&keygate.metrics().await, EXCHANGES_OK);
    let resp = client()
        .get(keygate.url("/orders/1"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    let forwarded = echo.header("authorization").unwrap()["Bearer ".len()..].to_owned();
    assert_ne!(forwarded, alice);
    assert!(
        !echo.0.to_string().contains(&alice),
        "the caller's own token reached the upstream"
    );
    let claims = claims_of(&forwarded);
    assert_eq!(audiences(&forwarded), vec![orders.clone()], "{claims}");
    assert_eq!(claims["sub"], claims_of(&alice)["sub"]);
    assert_eq!(claims["azp"], kg.as_str());
    assert_eq!(claims["iss"], kc.issuer().as_str());
    assert!(
        claims["realm_access"]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("admin")),
        "{claims}"
    );
    // The identity headers are the caller's, as keygate verified them.
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");

    // Cached: the same token, the same exchanged token, no new exchange.
    let resp = client()
        .get(keygate.url("/orders/2"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {forwarded}")
    );
    assert_eq!(metric(&keygate.metrics().await, EXCHANGES_OK), before + 1);

    // 20 concurrent first uses of a new token: one exchange.
    let bob = user_token(&kc, &app, "bob").await;
    let requests = (0..20).map(|i| {
        client()
            .get(keygate.url(&format!("/orders/{i}")))
            .bearer_auth(&bob)
            .send()
    });
    let mut tokens = std::collections::HashSet::new();
    for resp in futures_util::future::join_all(requests).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        let echo = Echo(resp.json().await.unwrap());
        tokens.insert(echo.header("authorization").unwrap());
    }
    assert_eq!(tokens.len(), 1, "one exchanged token for all 20");
    assert_eq!(metric(&keygate.metrics().await, EXCHANGES_OK), before + 2);

    // Forward-auth answers with the exchanged token too.
    let resp = client()
        .get(keygate.url("/oauth/auth"))
        .bearer_auth(&alice)
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/orders/3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["authorization"].to_str().unwrap(),
        format!("Bearer {forwarded}")
    );
}

/// When Keycloak refuses the exchange (the audience is not available to
/// keygate's client, or keygate's client may not exchange at all), the
/// request gets a 403 that says so; the upstream gets nothing, never the
/// caller's own token.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_token_exchange_refused_is_a_403_not_the_original_token() {
    let kc = Keycloak::shared().await;
    let (kg, app, billing) = (unique("kgr"), unique("appr"), unique("billing"));
    // The upstream's client exists, but keygate's client has no scope that
    // makes it available.
    upstream_client_and_scope(&kc, &billing).await;
    password_client(
        &kc,
        &kg,
        &[],
        json!({"standard.token.exchange.enabled": "true"}),
    )
    .await;
    password_client(&kc, &app, &[&kg], json!({})).await;
    let upstream = Upstream::start().await;
    let keygate = keygate(
        &kc,
        &kg,
        &upstream,
        &format!("token-exchange:\n  audience: {billing}\n"),
    )
    .await;
    let alice = user_token(&kc, &app, "alice").await;
    let resp = client()
        .get(keygate.url("/invoices"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("method").is_none(), "reached the upstream: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("token exchange to audience `{billing}`")),
        "{body}"
    );

    // keygate's client without standard token exchange enabled.
    let (kg2, app2) = (unique("kgn"), unique("appn"));
    password_client(&kc, &kg2, &[], json!({})).await;
    add_optional_scope(&kc, &kg2, &billing).await;
    password_client(&kc, &app2, &[&kg2], json!({})).await;
    let keygate = self::keygate(
        &kc,
        &kg2,
        &upstream,
        &format!("token-exchange:\n  audience: {billing}\n  scopes: [{billing}]\n"),
    )
    .await;
    let alice = user_token(&kc, &app2, "alice").await;
    let resp = client()
        .get(keygate.url("/invoices"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let metrics = keygate.metrics().await;
    assert!(
        metrics.contains("reason=\"token_exchange_refused\""),
        "{metrics}"
    );
}

/// Item 3 of issue 13: a token Keycloak binds to the client's key with a
/// DPoP proof at its token endpoint (`cnf.jkt`, `typ: DPoP`) passes keygate
/// only with a fresh proof of that key for this request; as a bearer token,
/// without a proof, with a replayed proof or with a thief's proof it is
/// refused with a `DPoP` challenge. The upstream gets the token as a
/// bearer token with the key's thumbprint, never the proof.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_dpop_bound_token_needs_a_proof_of_its_key() {
    let kc = Keycloak::shared().await;
    let kg = unique("kgd");
    password_client(&kc, &kg, &[&kg], json!({})).await;
    let upstream = Upstream::start().await;
    let keygate = keygate(&kc, &kg, &upstream, "").await;

    // The client asks Keycloak for a token bound to its key.
    let key = DpopKey::new();
    let resp = client()
        .post(kc.token_endpoint())
        .header("dpop", key.proof("POST", &kc.token_endpoint(), None))
        .form(&[
            ("grant_type", "password"),
            ("client_id", kg.as_str()),
            ("client_secret", &format!("{kg}-secret")),
            ("username", "alice"),
            ("password", "alice"),
        ])
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["cnf"]["jkt"], key.jkt().as_str(), "{claims}");
    assert_eq!(claims["typ"], "DPoP");

    let url = keygate.url("/api/orders");
    let send = |scheme: &str, proof: Option<String>| {
        let mut req = client()
            .get(keygate.url("/api/orders"))
            .header("authorization", format!("{scheme} {token}"));
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send()
    };
    let proof = key.proof("GET", &url, Some(&token));
    let resp = send("DPoP", Some(proof.clone())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(echo.header("x-auth-dpop-jkt").unwrap(), key.jkt());
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert!(echo.header("dpop").is_none());

    let challenge = |resp: &reqwest::Response| {
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    // As a bearer token.
    let resp = send("Bearer", None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).starts_with("DPoP error=\"invalid_token\""));
    // Without a proof, with the used proof, with a thief's proof.
    let resp = send("DPoP", None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).starts_with("DPoP error=\"invalid_dpop_proof\""));
    let resp = send("DPoP", Some(proof)).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("used before"),
        "{body}"
    );
    let thief = DpopKey::new();
    let resp = send("DPoP", Some(thief.proof("GET", &url, Some(&token))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).starts_with("DPoP error=\"invalid_token\""));
    // A proof made for Keycloak's token endpoint is not one for keygate.
    let resp = send(
        "DPoP",
        Some(key.proof("POST", &kc.token_endpoint(), Some(&token))),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Keycloak refuses to exchange a DPoP-bound token for another client than
/// the one it was issued to ("Sender-constrained token exchange rejected"):
/// with `token-exchange` on, such a token gets keygate's 403, never
/// forwarded as it is.
#[tokio::test(flavor = "multi_thread")]
async fn keycloak_dpop_bound_token_is_not_exchanged() {
    let kc = Keycloak::shared().await;
    let (kg, app, orders) = (unique("kgdx"), unique("appdx"), unique("ordersdx"));
    upstream_client_and_scope(&kc, &orders).await;
    password_client(
        &kc,
        &kg,
        &[],
        json!({"standard.token.exchange.enabled": "true"}),
    )
    .await;
    add_optional_scope(&kc, &kg, &orders).await;
    password_client(&kc, &app, &[&kg], json!({})).await;
    let upstream = Upstream::start().await;
    let keygate = keygate(
        &kc,
        &kg,
        &upstream,
        &format!("token-exchange:\n  audience: {orders}\n  scopes: [{orders}]\n"),
    )
    .await;
    let key = DpopKey::new();
    let answer: Value = client()
        .post(kc.token_endpoint())
        .header("dpop", key.proof("POST", &kc.token_endpoint(), None))
        .form(&[
            ("grant_type", "password"),
            ("client_id", app.as_str()),
            ("client_secret", &format!("{app}-secret")),
            ("username", "alice"),
            ("password", "alice"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let url = keygate.url("/orders/1");
    let resp = client()
        .get(&url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", key.proof("GET", &url, Some(&token)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("method").is_none(), "reached the upstream: {body}");
}
