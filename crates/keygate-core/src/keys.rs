//! API-key kinds, shared by the key format (`keygate-auth`), the key store
//! (`keygate-store`) and the pipeline.

use serde::{Deserialize, Serialize};

/// The two kinds of API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// `kgs_…`: bound to a service-account client; exchanged with the
    /// client-credentials grant.
    Service,
    /// `kgp_…`: bound to a user's offline session; exchanged with the
    /// refresh grant, so it carries the user's current roles.
    Personal,
}

impl KeyKind {
    /// `service` or `personal` (the stored and displayed name).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Service => "service",
            KeyKind::Personal => "personal",
        }
    }

    /// The key prefix: `kgs_` or `kgp_`.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Service => "kgs_",
            KeyKind::Personal => "kgp_",
        }
    }

    /// Parses `service` / `personal`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(KeyKind::Service),
            "personal" => Some(KeyKind::Personal),
            _ => None,
        }
    }

    /// The kind whose prefix starts `key`, if any.
    pub fn from_key(key: &str) -> Option<Self> {
        if key.starts_with("kgs_") {
            Some(KeyKind::Service)
        } else if key.starts_with("kgp_") {
            Some(KeyKind::Personal)
        } else {
            None
        }
    }
}
