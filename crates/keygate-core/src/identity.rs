//! The verified identity of a caller, whatever credential it presented.

use crate::Secret;
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::{Arc, OnceLock};

/// How the caller authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A bearer JWT issued by the provider.
    Jwt,
    /// A keygate API key exchanged for a provider token.
    ApiKey,
    /// A browser session cookie.
    Session,
}

impl AuthMethod {
    /// The value of the `X-Auth-Method` header.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api-key",
            AuthMethod::Session => "session",
        }
    }
}

/// A caller whose credential has been verified. Built only by the
/// authentication phase; everything after it reads, never writes.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `sub` claim.
    pub subject: String,
    /// `preferred_username` claim, when present.
    pub username: Option<String>,
    /// `email` claim, when present.
    pub email: Option<String>,
    /// Realm roles (`realm_access.roles`) followed by client roles written
    /// `client:role` (from `resource_access.<client>.roles`).
    pub roles: Vec<String>,
    /// `groups` claim (Keycloak writes full paths such as `/ops`).
    pub groups: Vec<String>,
    /// `scope` claim split on spaces.
    pub scopes: Vec<String>,
    /// All claims of the access token, for `match-claims` and `add-claims`.
    pub claims: Map<String, Value>,
    /// The provider access token to forward upstream.
    pub access_token: Secret,
    /// Expiry of the access token, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The credential kind the caller presented.
    pub method: AuthMethod,
    /// The API key id, for API-key callers.
    pub key_id: Option<String>,
    /// Values derived from this identity once and reused while it is cached
    /// (the proxy keeps its prebuilt upstream headers here): see
    /// [`Identity::derived`]. Private, so a changed identity can only be made
    /// by [`Identity::reissued`], which starts it empty.
    derived: OnceLock<Arc<dyn Any + Send + Sync>>,
    /// This identity re-issued for a browser session, made once: see
    /// [`Identity::as_session`].
    session: OnceLock<Arc<Identity>>,
}

impl Identity {
    /// Builds an identity from verified access-token claims. Missing or oddly
    /// typed optional claims are treated as absent, never as an error.
    pub fn from_claims(
        claims: Map<String, Value>,
        access_token: Secret,
        method: AuthMethod,
    ) -> Self {
        let str_claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let mut roles = string_list(claims.get("realm_access").and_then(|r| r.get("roles")));
        if let Some(Value::Object(clients)) = claims.get("resource_access") {
            for (client, access) in clients {
                for role in string_list(access.get("roles")) {
                    roles.push(format!("{client}:{role}"));
                }
            }
        }
        let scopes = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Identity {
            subject: str_claim("sub").unwrap_or_default(),
            username: str_claim("preferred_username"),
            email: str_claim("email"),
            roles,
            groups: string_list(claims.get("groups")),
            scopes,
            expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            claims,
            access_token,
            method,
            key_id: None,
            derived: OnceLock::new(),
            session: OnceLock::new(),
        }
    }

    /// The same verified caller, re-issued for another credential (an API
    /// key or a browser session that stands for this token): `method` and
    /// `key_id` are its own, and nothing derived from the original (such as
    /// its prebuilt headers, which name the method) is carried over.
    pub fn reissued(&self, method: AuthMethod, key_id: Option<String>) -> Identity {
        Identity {
            subject: self.subject.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            roles: self.roles.clone(),
            groups: self.groups.clone(),
            scopes: self.scopes.clone(),
            claims: self.claims.clone(),
            access_token: self.access_token.clone(),
            expires_at: self.expires_at,
            method,
            key_id,
            derived: OnceLock::new(),
            session: OnceLock::new(),
        }
    }

    /// The same verified caller as a browser session's (`method` session),
    /// re-issued once and kept with this identity, so the session's
    /// requests share it (and the headers derived from it) instead of
    /// copying the claims each time.
    pub fn as_session(&self) -> Arc<Identity> {
        Arc::clone(
            self.session
                .get_or_init(|| Arc::new(self.reissued(AuthMethod::Session, None))),
        )
    }

    /// A value derived from this identity, built by `build` on first use and
    /// kept as long as the identity is; `None` when a value of another type
    /// was kept first.
    pub fn derived<T: Any + Send + Sync>(&self, build: impl FnOnce() -> T) -> Option<&T> {
        self.derived
            .get_or_init(|| Arc::new(build()))
            .downcast_ref::<T>()
    }

    /// True when the identity holds the role (`name` for a realm role,
    /// `client:name` for a client role).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_keycloak_shaped_claims() {
        let claims = json!({
            "sub": "36fa", "preferred_username": "alice", "email": "alice@example.com",
            "exp": 1673171296u64,
            "realm_access": {"roles": ["admin", "user"]},
            "resource_access": {"APP-backend": {"roles": ["editor"]}},
            "scope": "openid email  api",
            "groups": ["/ops", "/ops/oncall"]
        });
        let Value::Object(map) = claims else {
            unreachable!()
        };
        let id = Identity::from_claims(map, Secret::new("t"), AuthMethod::Jwt);
        assert_eq!(id.subject, "36fa");
        assert_eq!(id.username.as_deref(), Some("alice"));
        assert_eq!(id.roles, ["admin", "user", "APP-backend:editor"]);
        assert_eq!(id.scopes, ["openid", "email", "api"]);
        assert_eq!(id.groups, ["/ops", "/ops/oncall"]);
        assert_eq!(id.expires_at, 1673171296);
        assert!(id.has_role("APP-backend:editor"));
        assert!(!id.has_role("editor"));
    }

    #[test]
    fn reissued_identities_start_without_derived_values() {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let id = Identity::from_claims(claims, Secret::new("t"), AuthMethod::Jwt);
        assert_eq!(
            id.derived(|| "built for jwt".to_owned()).unwrap(),
            "built for jwt"
        );
        // Kept: a second builder is not called.
        assert_eq!(id.derived(|| "again".to_owned()).unwrap(), "built for jwt");
        // Another type than the one kept.
        assert!(id.derived(|| 7u32).is_none());
        let key = id.reissued(AuthMethod::ApiKey, Some("k1".into()));
        assert_eq!(key.method, AuthMethod::ApiKey);
        assert_eq!(key.key_id.as_deref(), Some("k1"));
        assert_eq!(key.subject, "alice");
        assert_eq!(
            key.derived(|| "built for key".to_owned()).unwrap(),
            "built for key"
        );
        // A plain clone is the same identity, derived values included.
        assert_eq!(id.clone().derived(String::new).unwrap(), "built for jwt");
    }
}
