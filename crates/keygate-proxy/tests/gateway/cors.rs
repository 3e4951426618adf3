//! CORS over HTTP: preflights answered by keygate without a credential, the
//! CORS headers on every response (keygate's refusals too) for allowed
//! origins only, the upstream's own replaced, and the CSRF rule for
//! cookie-authenticated writes from an allowed origin. The real browser's
//! side is `browser::cors_fetch_with_credentials_from_another_port_in_chromium`.

use keygate_testkit::*;

const APP: &str = "https://app.example.com";
const CORS: &str = "cors-origins: [https://app.example.com]\ncors-credentials: true\n\
                    cors-exposed-headers: [X-Request-Id]\ncors-max-age: 1h\n";

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn preflight(stack: &Stack, origin: &str, method: &str, headers: &str) -> reqwest::Response {
    let mut req = stack
        .http
        .request(reqwest::Method::OPTIONS, stack.keygate.url("/api/items"))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        req = req.header("access-control-request-headers", headers);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_is_answered_without_a_credential_for_allowed_origins_only() {
    let stack = Stack::start(CORS).await;
    let ok = preflight(&stack, APP, "PUT", "authorization, content-type").await;
    assert_eq!(ok.status(), 204);
    assert_eq!(
        header(&ok, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert_eq!(
        header(&ok, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(
        header(&ok, "access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert!(
        header(&ok, "access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(
        header(&ok, "access-control-max-age").as_deref(),
        Some("3600")
    );
    assert!(header(&ok, "vary").unwrap().contains("Origin"));

    for (origin, method, headers) in [
        ("https://evil.example.com", "GET", ""),
        ("https://app.example.com.evil.test", "GET", ""),
        (APP, "TRACE", ""),
        (APP, "GET", "x-not-allowed"),
    ] {
        let refused = preflight(&stack, origin, method, headers).await;
        assert_eq!(refused.status(), 403, "{origin} {method} {headers}");
        let allow = header(&refused, "access-control-allow-origin");
        assert!(allow.is_none() || origin == APP, "{origin}: {allow:?}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("CORS:"),
            "{body}"
        );
    }
    // The preflights never reached the upstream; a plain OPTIONS is proxied
    // (and needs a credential like any request).
    let plain = stack
        .http
        .request(reqwest::Method::OPTIONS, stack.keygate.url("/api/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    assert_eq!(
        header(&plain, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_carry_cors_headers_for_allowed_origins_and_replace_the_upstreams() {
    let stack = Stack::start(CORS).await;
    let token = stack.idp.token("alice").await;
    let get = |origin: Option<&'static str>, path: &'static str| {
        let mut req = stack.http.get(stack.keygate.url(path)).bearer_auth(&token);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let allowed = get(Some(APP), "/upstream-cors/items").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert_eq!(
        header(&allowed, "access-control-expose-headers").as_deref(),
        Some("x-request-id")
    );
    // The upstream's `*` and its preflight header are gone.
    assert_eq!(
        allowed
            .headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert!(header(&allowed, "access-control-allow-methods").is_none());

    let other = get(Some("https://evil.example.com"), "/upstream-cors/items")
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(header(&other, "access-control-allow-origin").is_none());
    assert!(header(&other, "access-control-allow-credentials").is_none());
    let none = get(None, "/api/items").await.unwrap();
    assert!(header(&none, "access-control-allow-origin").is_none());

    // keygate's own refusal is readable by the allowed page (to send it to login).
    let refused = stack
        .http
        .get(stack.keygate.url("/api/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_off_leaves_options_and_the_upstreams_headers_alone() {
    let stack = Stack::start("").await;
    let resp = preflight(&stack, APP, "GET", "").await;
    assert_eq!(
        resp.status(),
        401,
        "no CORS: a preflight is an ordinary request"
    );
    let token = stack.idp.token("alice").await;
    let resp = stack
        .http
        .get(stack.keygate.url("/upstream-cors/items"))
        .header("origin", APP)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[test]
fn star_with_credentials_is_refused_at_start_up() {
    let yaml = base_config(
        "http://127.0.0.1:1/realms/acme",
        "http://127.0.0.1:2",
        "cors-origins: ['*']\ncors-credentials: true\n",
    );
    let mut config: keygate_core::config::Config = serde_yaml_ng::from_str(&yaml).unwrap();
    let errors = config.validate().unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("cors-origins")),
        "{errors:?}"
    );
}
