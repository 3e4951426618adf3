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
    /// `kgp_…`: bound to a user; exchanged with the refresh grant of the
    /// user's offline session or with the JWT authorization grant (its
    /// [`Backing`]), so it carries the user's current roles.
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

/// What a key is exchanged with at the provider: decided when the key is
/// made and stored with it, so a key keeps its backing when the
/// configuration's choice for new keys changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// Service keys: the client-credentials grant with the sealed client
    /// secret of the key's service-account client.
    ClientCredentials,
    /// Personal keys: the refresh grant with the user's sealed offline
    /// refresh token (`scope=offline_access`).
    OfflineSession,
    /// Personal keys: the JWT authorization grant (RFC 7523) with an
    /// assertion keygate signs for the user; no session at the provider.
    JwtGrant,
}

impl Backing {
    /// `client-credentials`, `offline-session` or `jwt-grant` (the stored
    /// and displayed name).
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::ClientCredentials => "client-credentials",
            Backing::OfflineSession => "offline-session",
            Backing::JwtGrant => "jwt-grant",
        }
    }

    /// Parses what [`Backing::as_str`] gives.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client-credentials" => Some(Backing::ClientCredentials),
            "offline-session" => Some(Backing::OfflineSession),
            "jwt-grant" => Some(Backing::JwtGrant),
            _ => None,
        }
    }

    /// Whether a key of `kind` may have this backing.
    pub fn fits(self, kind: KeyKind) -> bool {
        match kind {
            KeyKind::Service => self == Backing::ClientCredentials,
            KeyKind::Personal => matches!(self, Backing::OfflineSession | Backing::JwtGrant),
        }
    }
}

/// The backing of new personal keys (`api-keys.personal-backing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PersonalBacking {
    /// The user's offline session (the default).
    #[default]
    OfflineSession,
    /// The JWT authorization grant (`api-keys.jwt-grant`).
    JwtGrant,
}

impl From<PersonalBacking> for Backing {
    fn from(p: PersonalBacking) -> Self {
        match p {
            PersonalBacking::OfflineSession => Backing::OfflineSession,
            PersonalBacking::JwtGrant => Backing::JwtGrant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backings_round_trip_and_fit_their_kinds() {
        for b in [
            Backing::ClientCredentials,
            Backing::OfflineSession,
            Backing::JwtGrant,
        ] {
            assert_eq!(Backing::parse(b.as_str()), Some(b));
        }
        assert_eq!(Backing::parse("offline"), None);
        assert!(Backing::ClientCredentials.fits(KeyKind::Service));
        assert!(!Backing::JwtGrant.fits(KeyKind::Service));
        assert!(Backing::JwtGrant.fits(KeyKind::Personal));
        assert!(!Backing::ClientCredentials.fits(KeyKind::Personal));
        assert_eq!(
            Backing::from(PersonalBacking::default()),
            Backing::OfflineSession
        );
    }
}
