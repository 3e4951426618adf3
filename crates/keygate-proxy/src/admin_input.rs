//! What the admin API accepts, field by field: the grammars its OpenAPI
//! document (`openapi.json`) states as `pattern`s, checked before a
//! request reaches key management, so that the API refuses exactly what
//! the document calls invalid and accepts what it calls valid. A test
//! holds every grammar here equal to the document's pattern; the key
//! service's own parsers (durations, limits, CIDRs) accept every string a
//! grammar matches.

use crate::respond::{Refusal, Refused};
use keygate_core::Reason;
use keygate_keys::NewServiceKey;
use regex::Regex;
use std::sync::OnceLock;

/// A grammar of one field: its pattern (as in the document) and, for the
/// error message, what a value looks like.
pub(crate) struct Grammar {
    pub(crate) pattern: &'static str,
    like: &'static str,
    compiled: OnceLock<Option<Regex>>,
}

impl Grammar {
    const fn new(pattern: &'static str, like: &'static str) -> Grammar {
        Grammar {
            pattern,
            like,
            compiled: OnceLock::new(),
        }
    }

    /// True when `value` is in the grammar. A pattern that does not compile
    /// (a bug a test catches) matches nothing.
    pub(crate) fn matches(&self, value: &str) -> bool {
        self.compiled
            .get_or_init(|| {
                Regex::new(self.pattern)
                    .map_err(|e| tracing::error!(pattern = self.pattern, error = %e, "admin API grammar does not compile"))
                    .ok()
            })
            .as_ref()
            .is_some_and(|re| re.is_match(value))
    }

    /// `Ok` when `value` is in the grammar, else a 400 naming `field`.
    pub(crate) fn check(&self, field: &str, value: &str) -> Result<(), Refused> {
        if self.matches(value) {
            return Ok(());
        }
        Err(Refused {
            refusal: Refusal::BadRequest(format!("`{field}` must be {}", self.like)),
            reason: Reason::InvalidRequest,
        })
    }
}

/// A key's lifetime: whole seconds, minutes, hours and days (`90d`,
/// `1d12h`), or `never`.
pub(crate) static LIFETIME: Grammar = Grammar::new(
    r"^(never|([1-9][0-9]{0,5}[smhd])+)$",
    "a duration like 90d or 1d12h (s, m, h, d), or never",
);

/// How long a rotated key keeps working: a duration, or `0`/`0s` for none.
pub(crate) static GRACE: Grammar = Grammar::new(
    r"^(0|0s|([1-9][0-9]{0,5}[smhd])+)$",
    "a duration like 10m or 1h30m (s, m, h, d), or 0s",
);

/// A new key's rate limit.
pub(crate) static RATE_LIMIT: Grammar = Grammar::new(
    r"^(unlimited|[1-9][0-9]{0,5}/(s|sec|second|m|min|minute|h|hour)( burst [1-9][0-9]{0,8})?)$",
    "a rate limit like 100/s, 6000/min burst 500 or 20/h, or unlimited",
);

/// A new key's quota.
pub(crate) static QUOTA: Grammar = Grammar::new(
    r"^(unlimited|[1-9][0-9]{0,17}/(day|d|month|mo))$",
    "a quota like 10000/day or 250000/month, or unlimited",
);

/// A changed rate limit: as for a new key, or `default`.
pub(crate) static RATE_LIMIT_CHANGE: Grammar = Grammar::new(
    r"^(default|unlimited|[1-9][0-9]{0,5}/(s|sec|second|m|min|minute|h|hour)( burst [1-9][0-9]{0,8})?)$",
    "a rate limit like 100/s, 6000/min burst 500 or 20/h, unlimited, default or null",
);

/// A changed quota: as for a new key, or `default`.
pub(crate) static QUOTA_CHANGE: Grammar = Grammar::new(
    r"^(default|unlimited|[1-9][0-9]{0,17}/(day|d|month|mo))$",
    "a quota like 10000/day or 250000/month, unlimited, default or null",
);

/// A client id or secret: printable ASCII (RFC 6749 appendix A.1 and
/// A.2, `VSCHAR`), at least one character.
pub(crate) static CLIENT_CREDENTIAL: Grammar =
    Grammar::new(r"^[\x20-\x7E]+$", "one or more printable ASCII characters");

/// A scope (RFC 6749 §3.3, `scope-token`).
pub(crate) static SCOPE: Grammar = Grammar::new(
    r"^[\x21\x23-\x5B\x5D-\x7E]+$",
    "a scope: printable ASCII without spaces, quotes or backslashes",
);

/// A route prefix.
pub(crate) static ROUTE_PREFIX: Grammar = Grammar::new(r"^/", "a path starting with /");

/// An IPv4 or IPv6 address, or a network in CIDR notation.
pub(crate) static CIDR: Grammar = Grammar::new(
    concat!(
        r"^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?",
        r"|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
        r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
        r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
        r"|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
    ),
    "an IPv4 or IPv6 address or CIDR like 10.20.0.0/16 or 2001:db8::/32",
);

/// The most keys one list returns.
pub(crate) const MAX_LIST_LIMIT: i64 = 10_000;

/// Checks a new service key's fields against their grammars.
pub(crate) fn check_new_key(new: &NewServiceKey) -> Result<(), Refused> {
    CLIENT_CREDENTIAL.check("client_id", &new.client_id)?;
    CLIENT_CREDENTIAL.check("client_secret", new.client_secret.expose())?;
    if let Some(lifetime) = &new.expires_in {
        LIFETIME.check("expires_in", lifetime)?;
    }
    for scope in &new.scopes {
        SCOPE.check("scopes", scope)?;
    }
    for prefix in &new.allowed_prefixes {
        ROUTE_PREFIX.check("allowed_prefixes", prefix)?;
    }
    for cidr in &new.allowed_cidrs {
        CIDR.check("allowed_cidrs", cidr)?;
    }
    if let Some(rate) = &new.rate_limit {
        RATE_LIMIT.check("rate_limit", rate)?;
    }
    if let Some(quota) = &new.quota {
        QUOTA.check("quota", quota)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use keygate_core::limits::{Quota, RateLimit};

    /// Every grammar, and where the document states it.
    fn grammars() -> Vec<(&'static Grammar, String)> {
        let new = "/components/schemas/NewServiceKey/properties";
        let body = |op: &str| {
            format!(
                "/paths/~1admin~1v1~1keys~1{{id}}~1{op}/post/requestBody/content/application~1json/schema/properties"
            )
        };
        vec![
            (&CLIENT_CREDENTIAL, format!("{new}/client_id")),
            (&CLIENT_CREDENTIAL, format!("{new}/client_secret")),
            (&LIFETIME, format!("{new}/expires_in")),
            (&SCOPE, format!("{new}/scopes/items")),
            (&ROUTE_PREFIX, format!("{new}/allowed_prefixes/items")),
            (&CIDR, format!("{new}/allowed_cidrs/items")),
            (&RATE_LIMIT, format!("{new}/rate_limit")),
            (&QUOTA, format!("{new}/quota")),
            (&LIFETIME, format!("{}/expires_in", body("renew"))),
            (&GRACE, format!("{}/grace", body("rotate"))),
            (&RATE_LIMIT_CHANGE, format!("{}/rate_limit", body("limits"))),
            (&QUOTA_CHANGE, format!("{}/quota", body("limits"))),
        ]
    }

    #[test]
    fn every_grammar_is_the_documents_pattern_and_compiles() {
        let doc: serde_json::Value = serde_json::from_str(crate::admin::OPENAPI).unwrap();
        for (grammar, pointer) in grammars() {
            let schema = doc
                .pointer(&pointer)
                .unwrap_or_else(|| panic!("no {pointer}"));
            assert_eq!(
                schema["pattern"].as_str(),
                Some(grammar.pattern),
                "{pointer}"
            );
            Regex::new(grammar.pattern).unwrap();
        }
        let limit = doc
            .pointer("/paths/~1admin~1v1~1keys/get/parameters")
            .and_then(|p| p.as_array())
            .and_then(|p| p.iter().find(|p| p["name"] == "limit"))
            .unwrap();
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], MAX_LIST_LIMIT);
    }

    #[test]
    fn what_the_grammars_accept_the_parsers_accept() {
        for ok in ["90d", "1d12h", "999999d", "1s", "1m1m", "never"] {
            assert!(LIFETIME.matches(ok), "{ok}");
            if ok != "never" {
                humantime::parse_duration(ok).unwrap();
            }
        }
        for bad in [
            "", "0s", "0d", "90 d", " 90d", "90d\n", "1w", "1y", "90days", "Never",
        ] {
            assert!(!LIFETIME.matches(bad), "{bad:?}");
        }
        for ok in ["0", "0s", "10m", "1h30m"] {
            assert!(GRACE.matches(ok), "{ok}");
        }
        assert!(!GRACE.matches("") && !GRACE.matches("00") && !GRACE.matches("10 m"));
        for ok in [
            "1/s",
            "999999/s",
            "6000/min burst 500",
            "20/h",
            "1/second burst 999999999",
        ] {
            assert!(RATE_LIMIT.matches(ok), "{ok}");
            ok.parse::<RateLimit>().unwrap();
        }
        for bad in [
            "0/s",
            "1000001/s",
            "1/s  burst 2",
            "1/s burst 0",
            "Unlimited",
            "default",
            "",
        ] {
            assert!(!RATE_LIMIT.matches(bad), "{bad:?}");
        }
        assert!(RATE_LIMIT_CHANGE.matches("default") && RATE_LIMIT_CHANGE.matches("5/s"));
        for ok in ["1/day", "999999999999999999/mo", "10000/d", "250000/month"] {
            assert!(QUOTA.matches(ok), "{ok}");
            ok.parse::<Quota>().unwrap();
        }
        for bad in ["0/day", "1 /day", "1/year", "default"] {
            assert!(!QUOTA.matches(bad), "{bad:?}");
        }
        assert!(QUOTA_CHANGE.matches("default"));
        for ok in [
            "10.20.0.0/16",
            "127.0.0.1",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "::",
            "::1",
            "::/0",
            "2001:db8::/32",
            "1:2:3:4:5:6:7:8/128",
            "1:2:3:4:5:6:7::",
            "1::8",
            "fe80::1:2",
        ] {
            assert!(CIDR.matches(ok), "{ok}");
            let parsed: keygate_core::config::Cidr =
                serde_json::from_value(serde_json::Value::String(ok.into())).unwrap();
            let _ = parsed;
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "01.2.3.4",
            "1.2.3",
            "::1/129",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "localhost",
            "10.0.0.0/08",
        ] {
            assert!(!CIDR.matches(bad), "{bad:?}");
        }
        assert!(CLIENT_CREDENTIAL.matches("svc-reporting") && !CLIENT_CREDENTIAL.matches(""));
        assert!(!CLIENT_CREDENTIAL.matches("é") && !CLIENT_CREDENTIAL.matches("a\u{0}"));
        assert!(SCOPE.matches("openid") && !SCOPE.matches("a b") && !SCOPE.matches("a\"b"));
    }
}
