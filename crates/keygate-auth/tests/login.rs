//! The authorization code flow with PKCE against the real provider (dev/idp),
//! as keygate's login will run it: `keygate_auth::login` builds the request, a
//! user signs in through the provider's pages, the code is exchanged and the
//! ID token verified against the relying party (`APP-frontend`), never
//! against the access token's audience (seed 001).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keygate_testkit::*;

use keygate_auth::login::{LoginError, LoginStart, exchange_code, start_login, verify_id_token};
use keygate_auth::provider::Keys;
use keygate_auth::{Provider, ProviderSettings};
use keygate_core::Secret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const CALLBACK: &str = "http://127.0.0.1:9/oauth/callback";
const CLIENT: &str = "APP-frontend";
const SECRET: &str = "frontend-secret";
const ALICE: &str = "a11ce000-0000-4000-a000-000000000001";

async fn keys(idp: &Idp) -> (Arc<Provider>, Arc<Keys>) {
    let provider = Provider::new(ProviderSettings {
        discovery_url: idp.issuer.clone(),
        refresh_interval: Duration::from_secs(300),
        min_refresh_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        skip_tls_verify: false,
    })
    .unwrap();
    provider.start();
    for _ in 0..200 {
        if let Some(keys) = provider.keys() {
            return (provider, keys);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the provider's keys never loaded");
}

/// The `action` of the provider's login form (`id="kc-form-login"`).
fn login_form_action(html: &str) -> Option<String> {
    let form = &html[html.find("id=\"kc-form-login\"")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let len = form[start..].find('"')?;
    Some(form[start..start + len].replace("&amp;", "&"))
}

/// Acts as a browser at `url`: follows redirects keeping cookies, signs in as
/// `user` on the login form, and stops at the redirect to [`CALLBACK`],
/// returning its query parameters (nothing listens there).
async fn sign_in(url: &str, user: &str) -> HashMap<String, String> {
    let http = client(); // redirects are not followed
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut url = reqwest::Url::parse(url).unwrap();
    let mut form: Option<Vec<(&str, &str)>> = None;
    for _ in 0..20 {
        let mut req = match &form {
            Some(fields) => http.post(url.clone()).form(fields),
            None => http.get(url.clone()),
        };
        if !cookies.is_empty() {
            let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", header.join("; "));
        }
        let resp = req.send().await.unwrap();
        for value in resp.headers().get_all("set-cookie") {
            let first = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = first.trim().split_once('=') {
                if value.is_empty() {
                    cookies.remove(name);
                } else {
                    cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        if resp.status().is_redirection() {
            let location = resp.headers()["location"].to_str().unwrap().to_owned();
            url = url.join(&location).unwrap();
            if url.as_str().starts_with(CALLBACK) {
                return url.query_pairs().into_owned().collect();
            }
            form = None;
            continue;
        }
        let status = resp.status();
        let body = resp.text().await.unwrap();
        let Some(action) = login_form_action(&body) else {
            panic!("no login form (HTTP {status}) at {url}: {body}");
        };
        assert!(form.is_none(), "the provider refused the login: {body}");
        url = url.join(&action).unwrap();
        form = Some(vec![("username", user), ("password", user)]);
    }
    panic!("the login did not reach the callback");
}

struct LoggedIn {
    start: LoginStart,
    code: String,
}

/// Starts a login for `APP-frontend` and signs alice in.
async fn log_in(keys: &Keys) -> LoggedIn {
    let endpoint = keys.metadata.authorization_endpoint.as_deref().unwrap();
    let start = start_login(endpoint, CLIENT, CALLBACK, &["email".into()], "/app/x?y=1").unwrap();
    assert_eq!(start.pending.return_to, "/app/x?y=1");
    let query = sign_in(&start.authorization_url, "alice").await;
    assert!(!query.contains_key("error"), "{query:?}");
    assert_eq!(query["state"], start.pending.state, "state must round-trip");
    LoggedIn {
        code: query["code"].clone(),
        start,
    }
}

fn token_endpoint(keys: &Keys) -> &str {
    keys.metadata.token_endpoint.as_deref().unwrap()
}

#[tokio::test]
async fn code_flow_with_pkce_verifies_the_id_token_for_the_relying_party() {
    let idp = Idp::start_with(&["--redirect-uri", CALLBACK]).await;
    let (provider, keys) = keys(&idp).await;
    let login = log_in(&keys).await;
    let secret = Secret::new(SECRET);

    let tokens = exchange_code(
        &provider,
        token_endpoint(&keys),
        CLIENT,
        &secret,
        &login.code,
        CALLBACK,
        &login.start.pending.pkce_verifier,
    )
    .await
    .unwrap();
    assert!(tokens.refresh_token.is_some());
    assert!(tokens.expires_in.is_some());
    assert!(!format!("{tokens:?}").contains(tokens.id_token.expose()));

    // The ID token is for the relying party, with our nonce.
    let nonce = &login.start.pending.nonce;
    let claims = verify_id_token(
        tokens.id_token.expose(),
        &keys,
        &keygate_auth::jws::ASYMMETRIC,
        CLIENT,
        nonce,
        30,
    )
    .unwrap();
    assert_eq!(claims["sub"], ALICE);
    assert_eq!(claims["nonce"], nonce.as_str());

    // The access token is for the resource servers: a different audience
    // (seed 001). Verifying the ID token against one of them fails, and says
    // which token and which check.
    let access = claims_of(tokens.access_token.expose());
    assert_eq!(
        access["aud"],
        serde_json::json!(["keygate", "APP-backend", "account"])
    );
    for audience in ["keygate", "APP-backend"] {
        let err = verify_id_token(
            tokens.id_token.expose(),
            &keys,
            &keygate_auth::jws::ASYMMETRIC,
            audience,
            nonce,
            30,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ID token") && err.contains("audience"),
            "{err}"
        );
    }
    let err = verify_id_token(
        tokens.id_token.expose(),
        &keys,
        &keygate_auth::jws::ASYMMETRIC,
        CLIENT,
        "other-nonce",
        30,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ID token") && err.contains("nonce"), "{err}");
    // The access token is no ID token, even where its audience would match.
    let err = verify_id_token(
        tokens.access_token.expose(),
        &keys,
        &keygate_auth::jws::ASYMMETRIC,
        "keygate",
        nonce,
        30,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ID token"), "{err}");

    // A code is good once.
    let again = exchange_code(
        &provider,
        token_endpoint(&keys),
        CLIENT,
        &secret,
        &login.code,
        CALLBACK,
        &login.start.pending.pkce_verifier,
    )
    .await;
    assert!(
        matches!(&again, Err(LoginError::Rejected { error, .. }) if error == "invalid_grant"),
        "{again:?}"
    );
}

#[tokio::test]
async fn code_exchange_needs_the_right_verifier_and_client() {
    let idp = Idp::start_with(&["--redirect-uri", CALLBACK]).await;
    let (provider, keys) = keys(&idp).await;

    // Another login's verifier: PKCE refuses.
    let login = log_in(&keys).await;
    let other = start_login("http://x/auth", CLIENT, CALLBACK, &[], "/").unwrap();
    let wrong = exchange_code(
        &provider,
        token_endpoint(&keys),
        CLIENT,
        &Secret::new(SECRET),
        &login.code,
        CALLBACK,
        &other.pending.pkce_verifier,
    )
    .await;
    assert!(
        matches!(wrong, Err(LoginError::Rejected { .. })),
        "{wrong:?}"
    );

    // A wrong client secret: refused, not "unavailable".
    let login = log_in(&keys).await;
    let bad_client = exchange_code(
        &provider,
        token_endpoint(&keys),
        CLIENT,
        &Secret::new("wrong"),
        &login.code,
        CALLBACK,
        &login.start.pending.pkce_verifier,
    )
    .await;
    assert!(
        matches!(bad_client, Err(LoginError::Rejected { .. })),
        "{bad_client:?}"
    );

    // Nothing listening: unavailable.
    let down = exchange_code(
        &provider,
        "http://127.0.0.1:9/token",
        CLIENT,
        &Secret::new(SECRET),
        &login.code,
        CALLBACK,
        &login.start.pending.pkce_verifier,
    )
    .await;
    assert!(matches!(&down, Err(e) if e.is_unavailable()), "{down:?}");
}
