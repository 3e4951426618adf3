//! `keygate_auth::grants` against the real provider (`dev/idp`): client
//! credentials, refresh, the device flow completed by the test acting as the
//! user on the provider's own pages, revocation, and a provider outage.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keygate_testkit::browser::act_as_user;

use keygate_auth::grants::{DevicePoll, GrantError, Grants};
use keygate_auth::{Provider, ProviderSettings};
use keygate_core::Secret;
use keygate_testkit::{Idp, claims_of};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const CLIENT: &str = "keygate";
const SECRET: &str = "keygate-secret";

fn settings(idp: &Idp) -> ProviderSettings {
    ProviderSettings {
        discovery_url: idp.issuer.clone(),
        refresh_interval: Duration::from_secs(300),
        min_refresh_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        skip_tls_verify: false,
    }
}

/// A provider with its discovery document and keys loaded.
async fn provider(idp: &Idp) -> Arc<Provider> {
    let provider = Provider::new(settings(idp)).unwrap();
    provider.start();
    for _ in 0..200 {
        if provider.keys().is_some() {
            return provider;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the provider's keys never loaded");
}

async fn grants(idp: &Idp) -> Grants {
    Grants::new(provider(idp).await)
}

fn secret(s: &str) -> Secret {
    Secret::new(s)
}

/// The password grant for `user` (client `keygate`): the whole answer.
async fn password_grant(idp: &Idp, user: &str, scope: &str) -> Value {
    let resp: Value = reqwest::Client::new()
        .post(idp.token_endpoint())
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", user),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        resp["refresh_token"].is_string(),
        "no refresh token: {resp}"
    );
    resp
}

fn assert_rejected(result: Result<impl std::fmt::Debug, GrantError>, code: &str) {
    match result {
        Err(GrantError::Rejected { error, .. }) => assert_eq!(error, code),
        other => panic!("expected Rejected({code}), got {other:?}"),
    }
}

fn assert_unavailable(result: Result<impl std::fmt::Debug, GrantError>) {
    match result {
        Err(GrantError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// ---------------------------------------------------------------- client credentials

#[tokio::test]
async fn client_credentials_returns_the_service_accounts_jwt() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let tokens = grants
        .client_credentials("svc-reporting", &secret("svc-reporting-secret"), &[])
        .await
        .unwrap();
    let claims = claims_of(tokens.access_token.expose());
    assert_eq!(claims["azp"], "svc-reporting");
    assert_eq!(claims["iss"], idp.issuer.as_str());
    assert_eq!(
        claims["preferred_username"],
        "service-account-svc-reporting"
    );
    assert!(tokens.expires_in.unwrap() > 0);
    assert!(tokens.refresh_token.is_none());
    assert!(!format!("{tokens:?}").contains(tokens.access_token.expose()));
}

#[tokio::test]
async fn client_credentials_with_a_bad_secret_is_rejected_as_invalid_client() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let result = grants
        .client_credentials("svc-reporting", &secret("wrong-secret"), &[])
        .await;
    assert_rejected(result, "invalid_client");
    let unknown = grants
        .client_credentials("no-such-client", &secret("x"), &[])
        .await;
    assert_rejected(unknown, "invalid_client");
}

#[tokio::test]
async fn grant_not_enabled_for_the_client_is_rejected_as_unauthorized_client() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let rt = password_grant(&idp, "alice", "openid").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let result = grants
        .refresh(
            "svc-reporting",
            &secret("svc-reporting-secret"),
            &secret(&rt),
        )
        .await;
    assert_rejected(result, "unauthorized_client");
}

// ---------------------------------------------------------------- refresh

#[tokio::test]
async fn refresh_returns_a_new_access_token_for_the_user() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let first = password_grant(&idp, "alice", "openid").await;
    let rt = secret(first["refresh_token"].as_str().unwrap());
    let tokens = grants.refresh(CLIENT, &secret(SECRET), &rt).await.unwrap();
    let claims = claims_of(tokens.access_token.expose());
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["azp"], CLIENT);
    assert_ne!(
        tokens.access_token.expose(),
        first["access_token"].as_str().unwrap()
    );
    assert!(tokens.expires_in.unwrap() > 0);
}

#[tokio::test]
async fn bogus_refresh_token_is_rejected_as_invalid_grant() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let result = grants
        .refresh(CLIENT, &secret(SECRET), &secret("not-a-refresh-token"))
        .await;
    assert_rejected(result, "invalid_grant");
}

#[tokio::test]
async fn refresh_with_a_bad_client_secret_is_rejected_as_invalid_client() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let rt = password_grant(&idp, "bob", "openid").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let result = grants.refresh(CLIENT, &secret("wrong"), &secret(&rt)).await;
    assert_rejected(result, "invalid_client");
}

// ---------------------------------------------------------------- revocation

#[tokio::test]
async fn revoked_refresh_token_no_longer_refreshes() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let rt = secret(
        password_grant(&idp, "alice", "openid offline_access").await["refresh_token"]
            .as_str()
            .unwrap(),
    );
    // Works before the revocation.
    grants.refresh(CLIENT, &secret(SECRET), &rt).await.unwrap();
    // A revocation with a bad client secret is refused and revokes nothing.
    assert_rejected(
        grants
            .revoke(CLIENT, &secret("wrong"), &rt, "refresh_token")
            .await,
        "invalid_client",
    );
    grants.refresh(CLIENT, &secret(SECRET), &rt).await.unwrap();

    grants
        .revoke(CLIENT, &secret(SECRET), &rt, "refresh_token")
        .await
        .unwrap();
    assert_rejected(
        grants.refresh(CLIENT, &secret(SECRET), &rt).await,
        "invalid_grant",
    );
    // RFC 7009 §2.2: revoking an unknown or already revoked token is fine.
    grants
        .revoke(CLIENT, &secret(SECRET), &rt, "refresh_token")
        .await
        .unwrap();
    grants
        .revoke(CLIENT, &secret(SECRET), &secret("never-issued"), "")
        .await
        .unwrap();
}

// ---------------------------------------------------------------- device flow

/// A minimal browser: keeps cookies, follows redirects, submits forms.
#[tokio::test]
async fn device_flow_end_to_end_gives_an_offline_refresh_token() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let auth = grants
        .device_authorization(CLIENT, &secret(SECRET), "openid offline_access")
        .await
        .unwrap();
    assert!(!auth.user_code.is_empty());
    assert!(
        auth.verification_uri.starts_with(&idp.issuer),
        "{}",
        auth.verification_uri
    );
    assert!(auth.expires_in > 0);
    assert!(auth.interval > 0);
    assert!(!format!("{auth:?}").contains(auth.device_code.expose()));
    let complete = auth.verification_uri_complete.clone().unwrap();
    assert!(complete.contains(&auth.user_code));

    // Before the user acts.
    let poll = grants
        .device_poll(
            CLIENT,
            &secret(SECRET),
            &auth.device_code,
            &auth.code_verifier,
        )
        .await
        .unwrap();
    assert!(matches!(poll, DevicePoll::Pending), "{poll:?}");

    let page = act_as_user(&complete, "bob", true).await;
    assert!(page.body.contains("Sign-in Success"), "{}", page.body);

    let tokens = match grants
        .device_poll(
            CLIENT,
            &secret(SECRET),
            &auth.device_code,
            &auth.code_verifier,
        )
        .await
        .unwrap()
    {
        DevicePoll::Done(tokens) => tokens,
        other => panic!("expected Done, got {other:?}"),
    };
    let claims = claims_of(tokens.access_token.expose());
    assert_eq!(claims["preferred_username"], "bob");
    assert_eq!(claims["azp"], CLIENT);
    let scope = tokens.scope.clone().unwrap();
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
    let offline = tokens
        .refresh_token
        .clone()
        .expect("an offline refresh token");

    // The offline token is what a personal key is exchanged with.
    let refreshed = grants
        .refresh(CLIENT, &secret(SECRET), &offline)
        .await
        .unwrap();
    assert_eq!(
        claims_of(refreshed.access_token.expose())["preferred_username"],
        "bob"
    );

    // The device code is spent.
    assert!(
        grants
            .device_poll(
                CLIENT,
                &secret(SECRET),
                &auth.device_code,
                &auth.code_verifier
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn device_flow_aborted_by_the_user_is_denied() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let auth = grants
        .device_authorization(CLIENT, &secret(SECRET), "openid offline_access")
        .await
        .unwrap();
    act_as_user(
        auth.verification_uri_complete.as_deref().unwrap(),
        "alice",
        false,
    )
    .await;
    let poll = grants
        .device_poll(
            CLIENT,
            &secret(SECRET),
            &auth.device_code,
            &auth.code_verifier,
        )
        .await
        .unwrap();
    assert!(matches!(poll, DevicePoll::Denied), "{poll:?}");
}

#[tokio::test]
async fn device_authorization_with_a_bad_secret_is_rejected() {
    let idp = Idp::start().await;
    let grants = grants(&idp).await;
    let result = grants
        .device_authorization(CLIENT, &secret("wrong"), "openid")
        .await;
    assert_rejected(result, "invalid_client");
    let bogus = grants
        .device_poll(
            CLIENT,
            &secret(SECRET),
            &secret("no-such-device-code"),
            &secret("v"),
        )
        .await;
    assert_rejected(bogus, "invalid_grant");
}

// ---------------------------------------------------------------- outages

#[tokio::test]
async fn provider_down_makes_every_grant_unavailable() {
    let mut idp = Idp::start().await;
    let grants = grants(&idp).await;
    let rt = secret(
        password_grant(&idp, "alice", "openid").await["refresh_token"]
            .as_str()
            .unwrap(),
    );
    idp.kill();
    assert_unavailable(
        grants
            .client_credentials("svc-reporting", &secret("svc-reporting-secret"), &[])
            .await,
    );
    assert_unavailable(grants.refresh(CLIENT, &secret(SECRET), &rt).await);
    assert_unavailable(
        grants
            .device_authorization(CLIENT, &secret(SECRET), "openid offline_access")
            .await,
    );
    assert_unavailable(
        grants
            .device_poll(CLIENT, &secret(SECRET), &secret("code"), &secret("v"))
            .await,
    );
    assert_unavailable(
        grants
            .revoke(CLIENT, &secret(SECRET), &rt, "refresh_token")
            .await,
    );
    let err = grants
        .refresh(CLIENT, &secret(SECRET), &rt)
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert!(!err.to_string().contains(rt.expose()));
}

#[tokio::test]
async fn discovery_not_loaded_is_unavailable() {
    let idp = Idp::start().await;
    // Never started: no discovery document, no endpoints.
    let grants = Grants::new(Provider::new(settings(&idp)).unwrap());
    assert_unavailable(
        grants
            .client_credentials("svc-reporting", &secret("svc-reporting-secret"), &[])
            .await,
    );
}
