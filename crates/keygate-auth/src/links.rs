//! The one call keygate makes to Keycloak's admin REST API: linking a user
//! to keygate's identity provider, so that the JWT authorization grant
//! finds the user named by keygate's assertions.
//!
//! Keycloak looks the assertion's `sub` up among the users' *federated
//! identities* (links) of the identity provider whose issuer signed it, and
//! answers `invalid_grant` / `User not found` for a user without a link.
//! keygate links user `U` with the external user id `U` itself (the
//! provider's own subject), once, when the user creates a personal key and
//! `api-keys.jwt-grant.link-users` is on:
//!
//! ```text
//! POST {base}/admin/realms/{realm}/users/{U}/federated-identity/{alias}
//! {"identityProvider": alias, "userId": U, "userName": username}
//! ```
//!
//! as keygate's client's service account (client credentials), which needs
//! the `realm-management` role `manage-users`: Keycloak requires it for
//! adding a link (with `view-users` it answers 403). The admin API's base is
//! the issuer's with `/realms/` replaced by `/admin/realms/`.

use crate::grants::{GrantError, Grants};
use keygate_core::Secret;
use reqwest::StatusCode;

/// What linking did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linked {
    /// The link was made now.
    Created,
    /// The user was already linked to the identity provider (Keycloak
    /// answers 409 `User is already linked with provider`); whether with
    /// the expected id, only a grant tells.
    Existing,
}

/// Why a user could not be linked. Never holds a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// keygate's own access token could not be had.
    #[error("keygate's client credentials: {0}")]
    Grant(#[from] GrantError),
    /// The provider's issuer is not a Keycloak realm's (`…/realms/NAME`).
    #[error(
        "the issuer {0} is not a Keycloak realm's (…/realms/NAME): keygate cannot link users there"
    )]
    NotKeycloak(String),
    /// Keycloak refused keygate's service account (HTTP 401 or 403).
    #[error(
        "Keycloak refused to link the user (HTTP {0}): keygate's client's service account needs the realm-management role manage-users"
    )]
    Forbidden(u16),
    /// Keycloak knows no such user or identity provider (HTTP 404).
    #[error("Keycloak knows no such user or identity provider `{0}` (HTTP 404)")]
    NotFound(String),
    /// Keycloak could not be asked, or answered something else.
    #[error("the admin API is unavailable: {0}")]
    Unavailable(String),
}

impl LinkError {
    /// True when the failure is the provider's or the network's (503),
    /// not the set-up's.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LinkError::Grant(e) => e.is_unavailable(),
            LinkError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// Links user `user_id` (named `username`) to the identity provider
/// `alias`, with `user_id` as the external id, as the client `client_id`.
pub async fn link_user(
    grants: &Grants,
    client_id: &str,
    client_secret: &Secret,
    alias: &str,
    user_id: &str,
    username: &str,
) -> Result<Linked, LinkError> {
    let issuer = grants.provider_issuer().ok_or_else(|| {
        LinkError::Unavailable("the provider's discovery document is not loaded".into())
    })?;
    let admin = admin_base(&issuer).ok_or(LinkError::NotKeycloak(issuer))?;
    let token = grants
        .client_credentials(client_id, client_secret, &[])
        .await?;
    let url = format!(
        "{admin}/users/{}/federated-identity/{}",
        path_segment(user_id),
        path_segment(alias)
    );
    let response = grants
        .http()
        .post(&url)
        .bearer_auth(token.access_token.expose())
        .json(&serde_json::json!({
            "identityProvider": alias,
            "userId": user_id,
            "userName": username,
        }))
        .send()
        .await
        .map_err(|e| {
            LinkError::Unavailable(format!(
                "request to {url} failed: {}",
                crate::oauth::cause(&e)
            ))
        })?;
    match response.status() {
        s if s.is_success() => Ok(Linked::Created),
        StatusCode::CONFLICT => Ok(Linked::Existing),
        s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            Err(LinkError::Forbidden(s.as_u16()))
        }
        StatusCode::NOT_FOUND => Err(LinkError::NotFound(alias.to_owned())),
        s => Err(LinkError::Unavailable(format!(
            "{url} answered HTTP {}",
            s.as_u16()
        ))),
    }
}

/// Keycloak's admin API of the realm whose issuer is `issuer`:
/// `https://h/realms/acme` → `https://h/admin/realms/acme` (also under a
/// path prefix such as `/auth`).
pub fn admin_base(issuer: &str) -> Option<String> {
    let issuer = issuer.trim_end_matches('/');
    let at = issuer.rfind("/realms/")?;
    let (base, realm) = (&issuer[..at], &issuer[at + "/realms/".len()..]);
    if realm.is_empty() || realm.contains('/') {
        return None;
    }
    Some(format!("{base}/admin/realms/{realm}"))
}

/// `text` as one URL path segment: unreserved characters kept, everything
/// else percent-encoded.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_api_base_from_the_issuer() {
        assert_eq!(
            admin_base("https://sso.example.com/realms/acme").as_deref(),
            Some("https://sso.example.com/admin/realms/acme")
        );
        assert_eq!(
            admin_base("http://127.0.0.1:8080/auth/realms/acme/").as_deref(),
            Some("http://127.0.0.1:8080/auth/admin/realms/acme")
        );
        assert_eq!(admin_base("https://login.example.com/oauth2"), None);
        assert_eq!(admin_base("https://sso.example.com/realms/"), None);
        assert_eq!(admin_base("https://sso.example.com/realms/a/b"), None);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            path_segment("36fa0f91-f94d-4a0c-afed-6b7d952e47da"),
            "36fa0f91-f94d-4a0c-afed-6b7d952e47da"
        );
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
    }
}
