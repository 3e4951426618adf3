//! Browser sessions at the HTTP level: login through keygate at dev/idp with
//! the seed-001 two-client set-up (keygate as `APP-frontend`, access tokens
//! for `APP-backend`), the session cookie on API calls, XHR vs page loads,
//! open redirects, tampered cookies and logout.

use keygate_testkit::browser::{Browser, Page, first_form, login_at};
use keygate_testkit::*;
use serde_json::Value;

const KEY: &str = "0123456789abcdefghijklmnopqrstuv";

struct Web {
    idp: Idp,
    _upstream: Upstream,
    keygate: Keygate,
    base: String,
}

/// keygate as client APP-frontend on a known port (the provider must know
/// the callback URL), with `extra` config.
async fn start(extra: &str) -> Web {
    start_with(&[], extra).await
}

/// Like [`start`], with extra arguments for the provider.
async fn start_with(idp_args: &[&str], extra: &str) -> Web {
    // Hold the port while the provider and the upstream pick theirs, so
    // neither can take it; release it just before keygate binds it.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let callback = format!("{base}/oauth/callback");
    let mut args = vec!["--redirect-uri", callback.as_str()];
    args.extend_from_slice(idp_args);
    let idp = Idp::start_with(&args).await;
    let upstream = Upstream::start().await;
    drop(reserved);
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: APP-frontend\nclient-secret: frontend-secret\n\
         upstream-url: {}\nlog-level: warn\nencryption-key: {KEY}\nsecure-cookie: false\n{extra}",
        idp.issuer,
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    Web {
        idp,
        _upstream: upstream,
        keygate,
        base,
    }
}

const SEED_001: &str = "access-token-audience: [APP-backend]\n";

/// Follows the login from `start` as `user` until the browser is back on keygate.
async fn login(browser: &mut Browser, web: &Web, start: &str, user: &str) -> Page {
    login_at(browser, &web.base, start, user).await
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_two_clients_forwards_the_backend_access_token() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    let page = login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app/page%3Fx%3D1",
        "alice",
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.url.path(), "/app/page");
    assert_eq!(page.url.query(), Some("x=1"));
    let echo = Echo(serde_json::from_str(&page.body).unwrap());
    let token = echo
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let claims = claims_of(&token);
    assert!(
        claims["aud"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "APP-backend"),
        "{claims}"
    );
    assert_eq!(claims["azp"], "APP-frontend");
    assert_eq!(echo.header("x-auth-method").unwrap(), "session");
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    // The SPA's API calls carry the cookie only; the upstream gets the bearer token.
    let api = browser.get(&format!("{}/api/items", web.base)).await;
    assert_eq!(api.status, 200);
    let echo = Echo(serde_json::from_str(&api.body).unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {token}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_token_audience_errors_name_the_access_token_not_the_id_token() {
    // keygate is APP-frontend but expects access tokens for APP-frontend (the
    // default), while the provider issues them for keygate/APP-backend: the
    // ID token is fine, the access token is not — and the error says so.
    let web = start("").await;
    let mut browser = Browser::new();
    let mut page = browser.get(&format!("{}/oauth/authorize", web.base)).await;
    for _ in 0..10 {
        if page.url.as_str().starts_with(&web.base) {
            break;
        }
        let (action, mut fields) = first_form(&page.body).unwrap();
        for (name, value) in fields.iter_mut() {
            if name == "username" || name == "password" {
                *value = "alice".into();
            }
        }
        let target = action
            .map(|a| page.url.join(&a).unwrap())
            .unwrap_or(page.url.clone());
        page = browser.go(target, Some(fields)).await;
    }
    assert_eq!(page.status, 401, "{}", page.body);
    let body: Value = serde_json::from_str(&page.body).unwrap();
    let text = body["error_description"].as_str().unwrap();
    assert!(
        text.contains("access token") && text.contains("audience"),
        "{text}"
    );
    assert!(!text.contains("ID token"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn page_loads_go_to_login_and_api_calls_get_401() {
    let web = start(SEED_001).await;
    let http = client();
    let resp = http
        .get(format!("{}/app/page?x=1", web.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "/oauth/authorize?return_to=/app/page%3Fx%3D1"
    );
    for headers in [
        vec![("accept", "application/json")],
        vec![
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ],
    ] {
        let mut req = http.get(format!("{}/api/items", web.base));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get("location").is_none());
    }
    // /oauth/authorize sends the browser to the provider with PKCE, state and nonce.
    let resp = http
        .get(format!("{}/oauth/authorize", web.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&web.idp.issuer), "{location}");
    for p in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "client_id=APP-frontend",
        "scope=openid",
    ] {
        assert!(location.contains(p), "{p} in {location}");
    }
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("kg_login=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn return_to_never_leaves_the_gateway() {
    let web = start(SEED_001).await;
    for evil in [
        "//evil.example",
        "https:evil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/\\evil.example",
        "https://evil.example/",
    ] {
        let mut browser = Browser::new();
        let start = format!("/oauth/authorize?return_to={}", evil.replace('\\', "%5C"));
        let page = login(&mut browser, &web, &start, "bob").await;
        assert!(
            page.url.as_str().starts_with(&web.base),
            "{evil}: {}",
            page.url
        );
        assert_eq!(page.url.path(), "/", "{evil}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_or_truncated_cookies_are_no_session_never_a_500() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let good = browser.cookies.get("kg_session").unwrap().clone();
    let http = client();
    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    for (case, value) in [
        String::from_utf8(flipped).unwrap(),
        good[..good.len() / 2].to_owned(),
        "garbage".into(),
        String::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let resp = http
            .get(format!("{}/api/items", web.base))
            .header("accept", "application/json")
            .header("cookie", format!("kg_session={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        if value.is_empty() {
            continue;
        }
        // An API client is told that its session is the trouble (not that
        // a bearer token is missing), and the useless cookie is cleared.
        let cleared = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("kg_session=;"));
        assert!(cleared, "case {case}: the cookie is not cleared");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains("session has ended"),
            "case {case}: {description}"
        );
    }
    let resp = http
        .get(format!("{}/api/items", web.base))
        .header("cookie", format!("kg_session={good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_clears_the_session_and_goes_to_the_provider() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let session = browser.cookies.get("kg_session").unwrap().clone();
    let resp = client()
        .get(format!("{}/oauth/logout", web.base))
        .header("cookie", format!("kg_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&web.idp.issuer) && location.contains("id_token_hint="),
        "{location}"
    );
    let cleared: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("kg_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert!(web.keygate.gateway.sessions.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_authenticated_writes_need_this_sites_origin() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let http = client();
    let post = |origin: Option<&str>| {
        let mut req = http
            .post(format!("{}/api/items", web.base))
            .header("cookie", cookie.clone())
            .body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    assert_eq!(post(Some(&web.base)).await.unwrap().status(), 200);
    assert_eq!(
        post(Some("https://evil.example")).await.unwrap().status(),
        403
    );
    assert_eq!(post(None).await.unwrap().status(), 403);
    // A bearer token is not sent by browsers on their own: no Origin needed.
    let token = web.idp.token("alice").await;
    let resp = http
        .post(format!("{}/api/items", web.base))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 403);
}

/// keygate with cookie sessions that refresh, and a provider whose access
/// tokens live 3 s; `extra` is more configuration.
async fn start_refreshing(extra: &str) -> Web {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start_with(&[
        "--redirect-uri",
        &format!("{base}/oauth/callback"),
        "--access-token-ttl",
        "3",
    ])
    .await;
    let upstream = Upstream::start().await;
    drop(reserved);
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: APP-frontend\nclient-secret: frontend-secret\n\
         upstream-url: {}\nlog-level: warn\nencryption-key: {KEY}\nsecure-cookie: false\n\
         access-token-audience: [APP-backend]\nenable-refresh-tokens: true\nclock-skew: 0s\n{extra}",
        idp.issuer,
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    Web {
        idp,
        _upstream: upstream,
        keygate,
        base,
    }
}

/// Tokens live 3 s here: after that the session is refreshed transparently,
/// once for many concurrent requests, and the browser gets the new cookie.
#[tokio::test(flavor = "multi_thread")]
async fn expired_access_tokens_are_refreshed_once_per_session() {
    let web = start_refreshing("").await;
    let mut browser = Browser::new();
    let page = login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let first = Echo(serde_json::from_str(&page.body).unwrap())
        .header("authorization")
        .unwrap();
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let stats = |idp: &Idp| {
        let url = format!("{}/admin/stats", idp.base());
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["by_grant"]["refresh_token"].as_u64().unwrap_or(0)
        }
    };
    let before = stats(&web.idp).await;
    let http = client();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (http, url, cookie) = (
                http.clone(),
                format!("{}/api/items", web.base),
                cookie.clone(),
            );
            tokio::spawn(async move {
                let resp = http.get(url).header("cookie", cookie).send().await.unwrap();
                let set_cookie = resp.headers().contains_key("set-cookie");
                (
                    resp.status().as_u16(),
                    set_cookie,
                    resp.text().await.unwrap(),
                )
            })
        })
        .collect();
    for t in tasks {
        let (status, set_cookie, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(set_cookie, "the refreshed session is sent back");
        let echo = Echo(serde_json::from_str(&body).unwrap());
        assert_ne!(
            echo.header("authorization").unwrap(),
            first,
            "a new access token"
        );
    }
    assert_eq!(
        stats(&web.idp).await - before,
        1,
        "one refresh for ten concurrent requests"
    );
}

/// OpenID Back-Channel Logout: the provider posts a signed logout token; the
/// user's sessions end at once. Forged or malformed tokens are refused.
#[tokio::test(flavor = "multi_thread")]
async fn backchannel_logout_ends_the_users_sessions() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let http = client();
    let api = || {
        http.get(format!("{}/api/items", web.base))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(api().await.unwrap().status(), 200);
    let event = serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let sign = |claims: Value| web.idp.sign(claims, serde_json::json!({}));
    let post = |token: String| {
        http.post(format!("{}/oauth/backchannel-logout", web.base))
            .form(&[("logout_token", token)])
            .send()
    };
    // Refused: wrong audience, no event, a nonce, no sid/sub.
    let base = |extra: Value| {
        let mut c = serde_json::json!({"typ": "Logout", "aud": "APP-frontend", "events": event, "realm_access": null,
            "resource_access": null, "scope": null, "azp": null});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    for bad in [
        base(serde_json::json!({"aud": "keygate"})),
        base(serde_json::json!({"events": null})),
        base(serde_json::json!({"nonce": "n"})),
        base(serde_json::json!({"sub": null, "sid": null})),
    ] {
        assert_eq!(post(sign(bad).await).await.unwrap().status(), 400);
    }
    assert_eq!(
        api().await.unwrap().status(),
        200,
        "refused tokens end nothing"
    );
    // A valid logout token for alice (by `sub`) ends her session here.
    let resp = post(sign(base(serde_json::json!({"sid": null}))).await)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = api().await.unwrap();
    assert_eq!(resp.status(), 401);
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text
        .find(start)
        .unwrap_or_else(|| panic!("`{start}` not in {text}"))
        + start.len();
    let j = text[i..].find(end).unwrap() + i;
    &text[i..j]
}

/// The self-service key page, as a browser uses it (forms, no JavaScript):
/// create a personal key through the provider's approval, use it, revoke it.
#[tokio::test(flavor = "multi_thread")]
async fn key_page_creates_lists_and_revokes_personal_keys() {
    let dir = tempfile::tempdir().unwrap();
    let web = start(&format!(
        "{SEED_001}store-url: sqlite://{}/keys.db\napi-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n",
        dir.path().display()
    ))
    .await;
    let mut browser = Browser::new();
    login(&mut browser, &web, "/oauth/authorize?return_to=/", "alice").await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let http = client();
    let get_page = || {
        http.get(format!("{}/oauth/keys", web.base))
            .header("accept", "text/html")
            .header("cookie", cookie.clone())
            .send()
    };
    let post = |path: &str, form: Vec<(&str, String)>, origin: bool| {
        let mut req = http
            .post(format!("{}{path}", web.base))
            .header("cookie", cookie.clone())
            .form(&form);
        if origin {
            req = req.header("origin", web.base.clone());
        }
        req.send()
    };
    let page = get_page().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("You have no API keys yet")
    );

    let approve = post(
        "/oauth/keys/new",
        vec![
            ("description", "notebook <laptop>".into()),
            ("expires_in", "14d".into()),
        ],
        true,
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let href = between(&approve, "<a href=\"", "\"").replace("&amp;", "&");
    let flow = between(&approve, "name=\"flow_id\" value=\"", "\"").to_owned();
    keygate_testkit::browser::act_as_user(&href, "alice", true).await;
    let shown = post("/oauth/keys/new/finish", vec![("flow_id", flow)], true)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = between(&shown, "<code id=\"key\">", "</code>").to_owned();
    assert!(key.starts_with("kgp_"), "{shown}");
    assert!(shown.contains("only time the key is shown"));
    let echo = Echo(
        http.get(format!("{}/api/items", web.base))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");

    let listing = get_page().await.unwrap().text().await.unwrap();
    assert!(listing.contains(&key[..8]), "the prefix is listed");
    assert!(!listing.contains(&key), "the key itself never is");
    assert!(
        listing.contains("notebook &lt;laptop&gt;"),
        "descriptions are escaped"
    );
    let id = between(&listing, "id=\"renew-", "\"").to_owned();
    // Without this site's Origin the form post is refused (CSRF).
    assert_eq!(
        post(&format!("/oauth/keys/{id}/revoke"), vec![], false)
            .await
            .unwrap()
            .status(),
        403
    );
    let resp = post(&format!("/oauth/keys/{id}/revoke"), vec![], true)
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/oauth/keys?done=revoked");
    let resp = http
        .get(format!("{}/api/items", web.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// A user with many groups gets tokens too large for one cookie: the session
/// is split into numbered cookies and reassembled on the next request.
#[tokio::test(flavor = "multi_thread")]
async fn large_sessions_are_split_into_chunks_and_reassembled() {
    let web = start(SEED_001).await;
    let groups: Vec<String> = (0..150)
        .map(|i| format!("/projects/team-{i:03}/members"))
        .collect();
    let resp = reqwest::Client::new()
        .put(format!("{}/admin/users/bob", web.idp.base()))
        .json(&serde_json::json!({ "groups": groups }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut browser = Browser::new();
    let page = login(&mut browser, &web, "/oauth/authorize?return_to=/app", "bob").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let chunks: Vec<&String> = browser
        .cookies
        .keys()
        .filter(|k| k.starts_with("kg_session"))
        .collect();
    assert!(
        chunks.len() >= 2,
        "expected several cookies, got {chunks:?}"
    );
    for name in &chunks {
        assert!(browser.cookies[*name].len() <= 3800, "{name} is too large");
    }
    let api = browser.get(&format!("{}/api/items", web.base)).await;
    assert_eq!(api.status, 200);
    let echo = Echo(serde_json::from_str(&api.body).unwrap());
    assert!(
        echo.header("x-auth-groups")
            .unwrap()
            .contains("/projects/team-149/members")
    );
}

/// A refresh the provider refuses ends the session: API calls get 401 and the
/// cookie is cleared, page loads go to login.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_refresh_ends_the_session() {
    let web = start_with(
        &["--access-token-ttl", "3"],
        &format!("{SEED_001}enable-refresh-tokens: true\nclock-skew: 0s\n"),
    )
    .await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let http = client();
    // Logging out revokes the refresh token at the provider; a copy of the old
    // cookie then cannot be refreshed.
    let resp = http
        .get(format!("{}/oauth/logout", web.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let resp = http
        .get(format!("{}/api/items", web.base))
        .header("accept", "application/json")
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let cleared: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("kg_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let resp = http
        .get(format!("{}/app", web.base))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/oauth/authorize")
    );
}

/// Forward-auth never answers with a login redirect (front proxies cannot
/// follow one), but a session cookie is a credential there too.
#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_gets_401_not_a_redirect_and_accepts_sessions() {
    let web = start(&format!("{SEED_001}trusted-proxies: [127.0.0.1]\n")).await;
    let http = client();
    let ask = |cookie: Option<String>| {
        let mut req = http
            .get(format!("{}/oauth/auth", web.base))
            .header("accept", "text/html")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/app/page");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    assert_eq!(ask(None).await.unwrap().status(), 401);
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let resp = ask(Some(cookie.clone())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-auth-method"], "session");
    // A cookie-authenticated write reported by the front proxy is checked
    // for this site's Origin like any other, though the auth request is a GET.
    let write = |origin: &'static str| {
        http.get(format!("{}/oauth/auth", web.base))
            .header("cookie", cookie.clone())
            .header("x-forwarded-method", "POST")
            .header("x-forwarded-uri", "/app/items")
            .header("x-forwarded-host", "app.example.com")
            .header("origin", origin)
            .send()
    };
    let resp = write("https://evil.example").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("cross-site"));
    assert_eq!(
        write("https://app.example.com").await.unwrap().status(),
        200
    );
}

/// Logs `user` in through a fresh browser; the session's `Cookie` header.
async fn session_of(web: &Web, user: &str) -> String {
    let mut browser = Browser::new();
    login(&mut browser, web, "/oauth/authorize?return_to=/app", user).await;
    format!("kg_session={}", browser.cookies.get("kg_session").unwrap())
}

/// The status of an API call with a session cookie.
async fn api_status(web: &Web, cookie: &str) -> u16 {
    client()
        .get(format!("{}/api/items", web.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// CWE-613: after `/oauth/logout` a copy of the old session cookie (kept by
/// an attacker, a proxy log, another tab) no longer opens the session, also
/// with cookie sessions, whose cookie carries the tokens itself.
#[tokio::test(flavor = "multi_thread")]
async fn logout_makes_every_copy_of_the_cookie_session_useless() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies.get("kg_session").unwrap());
    let http = client();
    let api = || {
        http.get(format!("{}/api/items", web.base))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(api().await.unwrap().status(), 200);
    let resp = http
        .get(format!("{}/oauth/logout", web.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let resp = api().await.unwrap();
    assert_eq!(resp.status(), 401, "the old cookie still opens the session");
    // Another login of the same user is a new session and works.
    let mut again = Browser::new();
    login(&mut again, &web, "/oauth/authorize?return_to=/app", "alice").await;
    let fresh = format!("kg_session={}", again.cookies.get("kg_session").unwrap());
    let resp = http
        .get(format!("{}/api/items", web.base))
        .header("cookie", fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// keygate's own cookies (the session and its chunks, the pending login)
/// are credentials for keygate, not for the upstream: they never reach it;
/// the application's cookies pass unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn keygate_cookies_never_reach_the_upstream() {
    let web = start(SEED_001).await;
    let mut browser = Browser::new();
    login(
        &mut browser,
        &web,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let session = browser.cookies.get("kg_session").unwrap().clone();
    let resp = client()
        .get(format!("{}/api/items", web.base))
        .header(
            "cookie",
            format!("theme=dark; kg_session={session}; kg_login=pending; lang=en"),
        )
        .header("cookie", "kg_login-1=more; csrftoken=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    let cookies: Vec<String> = echo.0["headers"]["cookie"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cookies,
        vec!["theme=dark; lang=en; csrftoken=abc".to_owned()]
    );
    // A request with only keygate's cookies reaches the upstream with none.
    let resp = client()
        .get(format!("{}/api/items", web.base))
        .header("cookie", format!("kg_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(Echo(resp.json().await.unwrap()).header("cookie").is_none());
}

/// OpenID Connect Back-Channel Logout 1.0 §2.4–2.8, every MUST the receiver
/// has: a token without `exp`, `iat` or `jti`, with the event not a JSON
/// object, with a `typ` other than `logout+jwt`, signed with HS256 or
/// `none`, sent as JSON instead of a form, or replayed, is refused with 400;
/// a valid one is answered 200 with `Cache-Control: no-store`.
#[tokio::test(flavor = "multi_thread")]
async fn backchannel_logout_refuses_replayed_and_incomplete_logout_tokens() {
    let web = start(SEED_001).await;
    let cookie = session_of(&web, "bob").await;
    let http = client();
    let event = serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let claims = |extra: Value| {
        let mut c = serde_json::json!({"typ": "Logout", "aud": "APP-frontend", "events": event,
            "realm_access": null, "resource_access": null, "scope": null, "azp": null,
            "sid": null, "sub": "b0b00000-0000-4000-a000-000000000002"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let post = |token: String| {
        http.post(format!("{}/oauth/backchannel-logout", web.base))
            .form(&[("logout_token", token)])
            .send()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let refused = [
        (
            "no exp",
            claims(serde_json::json!({"exp": null})),
            serde_json::json!({}),
        ),
        (
            "no iat",
            claims(serde_json::json!({"iat": null})),
            serde_json::json!({}),
        ),
        (
            "no jti",
            claims(serde_json::json!({"jti": null})),
            serde_json::json!({}),
        ),
        (
            "expired",
            claims(serde_json::json!({"exp": now - 600, "iat": now - 900})),
            serde_json::json!({}),
        ),
        (
            "too old",
            claims(serde_json::json!({"iat": now - 3600, "exp": now + 600})),
            serde_json::json!({}),
        ),
        (
            "future iat",
            claims(serde_json::json!({"iat": now + 3600})),
            serde_json::json!({}),
        ),
        (
            "event not an object",
            claims(
                serde_json::json!({"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}),
            ),
            serde_json::json!({}),
        ),
        (
            "typ at+jwt",
            claims(serde_json::json!({})),
            serde_json::json!({"typ": "at+jwt"}),
        ),
        (
            "wrong issuer",
            claims(serde_json::json!({"iss": "https://evil.example"})),
            serde_json::json!({}),
        ),
    ];
    for (what, c, header) in refused {
        let resp = post(web.idp.sign(c, header).await).await.unwrap();
        assert_eq!(resp.status(), 400, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
    }
    // Unsigned and HMAC-signed tokens, built by hand.
    let payload = b64(claims(
        serde_json::json!({"iss": web.idp.issuer, "iat": now, "exp": now + 60, "jti": "x"}),
    )
    .to_string()
    .as_bytes());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"HS256","kid":"k"}"#] {
        let token = format!("{}.{payload}.{}", b64(header.as_bytes()), b64(b"sig"));
        assert_eq!(post(token).await.unwrap().status(), 400, "{header}");
    }
    // Not a form.
    let valid = web
        .idp
        .sign(
            claims(serde_json::json!({})),
            serde_json::json!({"typ": "logout+jwt"}),
        )
        .await;
    let resp = http
        .post(format!("{}/oauth/backchannel-logout", web.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"logout_token": valid}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        api_status(&web, &cookie).await,
        200,
        "refused tokens end nothing"
    );
    // The valid token ends bob's session.
    let resp = post(valid.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(api_status(&web, &cookie).await, 401);
    // Replayed after bob logged in again: refused, the new session lives.
    let fresh = session_of(&web, "bob").await;
    let resp = post(valid).await.unwrap();
    assert_eq!(resp.status(), 400, "a replayed logout token was accepted");
    assert_eq!(api_status(&web, &fresh).await, 200);
}

/// While the provider hangs, one request of a session whose access token
/// has expired probes it with the session's refresh; the session's other
/// requests get their 503 at once instead of waiting for that refresh. The
/// session is refreshed as soon as the provider answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_provider_costs_a_session_one_probe_not_one_wait_per_request() {
    let web = start_refreshing("openid-provider-timeout: 1s\n").await;
    let cookie = session_of(&web, "alice").await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    web.idp.freeze();
    // The first refresh waits out openid-provider-timeout and opens the breaker.
    assert_eq!(api_status(&web, &cookie).await, 503);
    crate::one_probe_per_round(&format!("{}/api/items", web.base), ("cookie", &cookie)).await;
    web.idp.thaw();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while api_status(&web, &cookie).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session is not refreshed once the provider answers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
