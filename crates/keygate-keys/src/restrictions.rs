//! What a key may do: it must be live (not revoked, not expired), and its
//! restrictions (methods, route prefixes, client networks) must allow the
//! request.

use crate::error::{KeyError, KeyRefusal};
use keygate_core::config::Cidr;
use keygate_core::unix_now;
use keygate_store::KeyRecord;
use std::net::IpAddr;

/// Refused when the record is revoked or expired.
pub(crate) fn check_validity(record: &KeyRecord) -> Result<(), KeyRefusal> {
    if record.revoked_at.is_some() {
        return Err(KeyRefusal::Revoked);
    }
    if record.expires_at.is_some_and(|e| e <= unix_now() as i64) {
        return Err(KeyRefusal::Expired);
    }
    Ok(())
}

/// Refused when a restriction of the key does not allow the request.
pub(crate) fn check_restrictions(
    record: &KeyRecord,
    method: &str,
    path: &str,
    ip: IpAddr,
) -> Result<(), KeyError> {
    if !record.allowed_methods.is_empty()
        && !record
            .allowed_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    {
        return Err(KeyError::MethodNotAllowed(method.to_owned()));
    }
    if !record.allowed_prefixes.is_empty()
        && !record
            .allowed_prefixes
            .iter()
            .any(|p| path_has_prefix(path, p))
    {
        return Err(KeyError::RouteNotAllowed);
    }
    if !record.allowed_cidrs.is_empty()
        && !record
            .allowed_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c))
            .any(|c| c.contains(ip))
    {
        return Err(KeyError::NetworkNotAllowed);
    }
    Ok(())
}

/// `/reports` allows `/reports`, `/reports/…`, not `/reportsX`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// An address or CIDR as stored.
pub(crate) fn parse_cidr(s: &str) -> Option<Cidr> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_respect_segments() {
        assert!(path_has_prefix("/reports", "/reports"));
        assert!(path_has_prefix("/reports/1", "/reports/"));
        assert!(!path_has_prefix("/reportsX", "/reports"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
