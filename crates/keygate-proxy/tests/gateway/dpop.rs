//! DPoP (RFC 9449) end to end with tokens dev/idp signs bound to a test
//! key (`cnf.jkt`): a bound token passes only with a fresh proof of its key
//! for this request, once; the proof never reaches the upstream. The same
//! checks with tokens Keycloak itself binds are in
//! `crates/keygate/tests/keycloak_tokens.rs`.

use keygate_testkit::*;
use serde_json::{Value, json};

/// A token for alice bound to `key`.
async fn bound_token(idp: &Idp, key: &DpopKey) -> String {
    idp.sign(json!({"cnf": {"jkt": key.jkt()}, "typ": "DPoP"}), json!({}))
        .await
}

/// GET `path` with `Authorization: <scheme> <token>` and the proofs given.
async fn get(
    keygate: &Keygate,
    path: &str,
    scheme: &str,
    token: &str,
    proofs: &[&str],
) -> reqwest::Response {
    let mut req = client()
        .get(keygate.url(path))
        .header("authorization", format!("{scheme} {token}"));
    for p in proofs {
        req = req.header("dpop", *p);
    }
    req.send().await.unwrap()
}

/// The status, the body and the `WWW-Authenticate` of a refusal; the
/// request must not have reached the upstream.
async fn refusal(resp: reqwest::Response) -> (u16, Value, String) {
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("method").is_none(), "reached the upstream: {body}");
    (status, body, challenge)
}

#[tokio::test(flavor = "multi_thread")]
async fn bound_token_passes_with_a_proof_and_the_upstream_never_sees_it() {
    let stack = Stack::start("").await;
    let key = DpopKey::new();
    let token = bound_token(&stack.idp, &key).await;
    let url = stack.keygate.url("/api/orders");
    let proof = key.proof("GET", &url, Some(&token));
    let resp = get(
        &stack.keygate,
        "/api/orders?page=2",
        "DPoP",
        &token,
        &[&proof],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(echo.header("x-auth-dpop-jkt").unwrap(), key.jkt());
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert!(echo.header("dpop").is_none(), "the proof is keygate's");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_a_bound_token_sent_as_bearer_with_a_dpop_challenge() {
    let stack = Stack::start("").await;
    let key = DpopKey::new();
    let token = bound_token(&stack.idp, &key).await;
    let proof = key.proof("GET", &stack.keygate.url("/api/x"), Some(&token));
    let (status, body, challenge) =
        refusal(get(&stack.keygate, "/api/x", "Bearer", &token, &[&proof]).await).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token");
    assert!(
        challenge.starts_with("DPoP error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains("algs=\"RS256"), "{challenge}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Authorization: DPoP"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_missing_replayed_and_mismatched_proofs() {
    let stack = Stack::start("").await;
    let key = DpopKey::new();
    let token = bound_token(&stack.idp, &key).await;
    let url = stack.keygate.url("/api/x");
    let expect = |want: &'static str| {
        move |(status, body, challenge): (u16, Value, String)| {
            assert_eq!(status, 401, "{body}");
            assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
            assert!(
                challenge.starts_with("DPoP error=\"invalid_dpop_proof\""),
                "{challenge}"
            );
            let desc = body["error_description"].as_str().unwrap();
            assert!(desc.contains(want), "`{want}` not in `{desc}`");
        }
    };
    let ka = &stack.keygate;
    expect("needs a DPoP proof")(refusal(get(ka, "/api/x", "DPoP", &token, &[]).await).await);
    let good = key.proof("GET", &url, Some(&token));
    let two = key.proof("GET", &url, Some(&token));
    expect("more than one")(refusal(get(ka, "/api/x", "DPoP", &token, &[&good, &two]).await).await);
    // Once accepted, never again.
    assert_eq!(
        get(ka, "/api/x", "DPoP", &token, &[&good]).await.status(),
        200
    );
    expect("used before")(refusal(get(ka, "/api/x", "DPoP", &token, &[&good]).await).await);
    // Another method, another path, another host.
    let post = key.proof("POST", &url, Some(&token));
    expect("another HTTP method")(refusal(get(ka, "/api/x", "DPoP", &token, &[&post]).await).await);
    let other_path = key.proof("GET", &ka.url("/api/y"), Some(&token));
    expect("another URL")(refusal(get(ka, "/api/x", "DPoP", &token, &[&other_path]).await).await);
    let other_host = key.proof("GET", &url.replace("127.0.0.1", "localhost"), Some(&token));
    expect("another URL")(refusal(get(ka, "/api/x", "DPoP", &token, &[&other_host]).await).await);
    // Made for another token, or for none.
    let other_token = stack.idp.token("bob").await;
    let wrong_ath = key.proof("GET", &url, Some(&other_token));
    expect("another access token")(
        refusal(get(ka, "/api/x", "DPoP", &token, &[&wrong_ath]).await).await,
    );
    let no_ath = key.proof("GET", &url, None);
    expect("`ath`")(refusal(get(ka, "/api/x", "DPoP", &token, &[&no_ath]).await).await);
    // Too old, and from the future.
    let stale = key.proof_at("GET", &url, Some(&token), now() - 600);
    expect("too old")(refusal(get(ka, "/api/x", "DPoP", &token, &[&stale]).await).await);
    let future = key.proof_at("GET", &url, Some(&token), now() + 600);
    expect("future")(refusal(get(ka, "/api/x", "DPoP", &token, &[&future]).await).await);
    // Garbage.
    expect("malformed")(refusal(get(ka, "/api/x", "DPoP", &token, &["not.a.proof"]).await).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_a_proof_of_another_key() {
    let stack = Stack::start("").await;
    let (key, thief) = (DpopKey::new(), DpopKey::new());
    let token = bound_token(&stack.idp, &key).await;
    // A thief with the token but not the key makes a perfect proof of its own.
    let proof = thief.proof("GET", &stack.keygate.url("/api/x"), Some(&token));
    let (status, body, challenge) =
        refusal(get(&stack.keygate, "/api/x", "DPoP", &token, &[&proof]).await).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token", "{body}");
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("cnf.jkt"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unbound_tokens_stay_bearer_unless_dpop_is_required() {
    let stack = Stack::start("").await;
    let key = DpopKey::new();
    let plain = stack.idp.token("alice").await;
    let url = stack.keygate.url("/api/x");
    // An unbound token under the DPoP scheme is refused: the client thinks
    // it is bound and is wrong.
    let proof = key.proof("GET", &url, Some(&plain));
    let (status, body, _) =
        refusal(get(&stack.keygate, "/api/x", "DPoP", &plain, &[&proof]).await).await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not bound"),
        "{body}"
    );
    assert_eq!(stack.get("/api/x", Some(&plain)).await.status(), 200);
    // A typ of DPoP without cnf is not an access token.
    let fake = stack.idp.sign(json!({"typ": "DPoP"}), json!({})).await;
    assert_eq!(stack.get("/api/x", Some(&fake)).await.status(), 401);

    let strict = Keygate::start(&stack.idp, &stack.upstream, "require-dpop: true\n").await;
    strict.wait_ready().await;
    let resp = client()
        .get(strict.url("/api/x"))
        .bearer_auth(&plain)
        .send()
        .await
        .unwrap();
    let (status, body, challenge) = refusal(resp).await;
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("DPoP error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("require-dpop"),
        "{body}"
    );
    let token = bound_token(&stack.idp, &key).await;
    let proof = key.proof("GET", &strict.url("/api/x"), Some(&token));
    assert_eq!(
        get(&strict, "/api/x", "DPoP", &token, &[&proof])
            .await
            .status(),
        200
    );
}

/// Two replicas sharing Redis: a proof accepted by one is refused by the
/// other; with Redis down a proof is refused (503), never accepted unchecked.
#[tokio::test(flavor = "multi_thread")]
async fn a_proof_is_accepted_once_across_replicas_sharing_redis() {
    let mut redis = RedisServer::start().await;
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let extra = format!("redis-url: {}\n", redis.url());
    let a = Keygate::start(&idp, &upstream, &extra).await;
    let b = Keygate::start(&idp, &upstream, &extra).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let key = DpopKey::new();
    let token = bound_token(&idp, &key).await;
    // Both replicas behind one name: the proof names the URL the client used.
    let htu = "http://api.example.test/api/x";
    let send = |k: &Keygate, proof: String| {
        client()
            .get(k.url("/api/x"))
            .header("host", "api.example.test")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
    };
    let proof = key.proof("GET", htu, Some(&token));
    assert_eq!(send(&a, proof.clone()).await.unwrap().status(), 200);
    let (status, body, _) = refusal(send(&b, proof).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("used before"),
        "{body}"
    );
    redis.stop_server();
    let (status, body, _) =
        refusal(send(&b, key.proof("GET", htu, Some(&token))).await.unwrap()).await;
    assert_eq!(status, 503, "{body}");
}
