//! What callers of the key service send and get back: the parameters of a
//! new service key, a new key (shown once) and a key as listed (never the
//! key, its hash or its secret).

use keygate_core::{Secret, unix_now};
use keygate_store::KeyRecord;

/// What a new key's creator gets, once.
#[derive(Debug, serde::Serialize)]
pub struct CreatedKey {
    /// The key's id.
    pub id: String,
    /// The full key: shown this once, never stored.
    pub key: Secret,
    /// The display prefix.
    pub prefix: String,
    /// `service` or `personal`.
    pub kind: &'static str,
    /// Expiry, seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Parameters of a new service key.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServiceKey {
    /// The service-account client the key stands for.
    pub client_id: String,
    /// Its secret (stored encrypted under the new key).
    pub client_secret: Secret,
    /// Who the key belongs to (free text for service keys).
    #[serde(default)]
    pub owner: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Lifetime such as `90d`; the configured default when absent; `never` if allowed.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Scopes requested in the client-credentials grant.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Allowed methods (empty: all).
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// Allowed route prefixes (empty: all).
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Allowed client networks (empty: all).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Try the client credentials at the provider before storing the key.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The key's own rate limit (`100/s burst 200`, or `unlimited`); the
    /// kind's default when absent.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// The key's own usage quota (`10000/day`, or `unlimited`); the kind's
    /// default when absent.
    #[serde(default)]
    pub quota: Option<String>,
}

fn yes() -> bool {
    true
}

/// A key as shown to operators and owners: never the key, hash or secret.
#[derive(Debug, serde::Serialize)]
pub struct KeyView {
    /// Id.
    pub id: String,
    /// Display prefix.
    pub prefix: String,
    /// `service` or `personal`.
    pub kind: &'static str,
    /// Owner (subject or name).
    pub owner: String,
    /// Free text.
    pub description: String,
    /// Service-account client, for service keys.
    pub client_id: Option<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Allowed methods.
    pub allowed_methods: Vec<String>,
    /// Allowed route prefixes.
    pub allowed_prefixes: Vec<String>,
    /// Allowed client networks.
    pub allowed_cidrs: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub expires_at: Option<i64>,
    /// Seconds since the epoch (written in batches).
    pub last_used_at: Option<i64>,
    /// Seconds since the epoch.
    pub revoked_at: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// The key's own rate limit; `null`: its kind's default.
    pub rate_limit: Option<String>,
    /// The key's own usage quota; `null`: its kind's default.
    pub quota: Option<String>,
    /// What the key is exchanged with: `client-credentials`,
    /// `offline-session` or `jwt-grant`.
    pub backing: &'static str,
}

impl From<&KeyRecord> for KeyView {
    fn from(r: &KeyRecord) -> Self {
        let status = if r.revoked_at.is_some() {
            "revoked"
        } else if r.expires_at.is_some_and(|e| e <= unix_now() as i64) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            id: r.id.clone(),
            prefix: r.prefix.clone(),
            kind: r.kind.as_str(),
            owner: r.owner.clone(),
            description: r.description.clone(),
            client_id: r.client_id.clone(),
            scopes: r.scopes.clone(),
            allowed_methods: r.allowed_methods.clone(),
            allowed_prefixes: r.allowed_prefixes.clone(),
            allowed_cidrs: r.allowed_cidrs.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            status,
            rate_limit: r.rate_limit.clone(),
            quota: r.quota.clone(),
            backing: r.backing.as_str(),
        }
    }
}
