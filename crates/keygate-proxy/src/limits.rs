//! Phase 4, continued: the callers' rate limits. A bearer or session caller
//! is counted per subject (`rate-limit-subject`); a request a public route
//! lets through without a credential, per client address
//! (`rate-limit-address`). API keys have their own limits, checked when the
//! key is ([`keygate_keys::Limiter`]). The counters are the same GCRA ones:
//! shared through Redis when `redis-url` is set, per replica otherwise. A
//! refusal is 429 with `Retry-After` and the `RateLimit-*` headers.

use crate::context::{Credential, RequestCtx};
use crate::gateway::Gateway;
use crate::respond::{Refusal, Refused};
use http::HeaderMap;
use keygate_core::Identity;
use std::net::IpAddr;

/// Counts the request against the limit of its subject or its address.
pub async fn run(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    credential: &Credential,
    identity: Option<&Identity>,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    let Some(limiter) = &gw.limiter else {
        return Ok(());
    };
    let (id, what, rate) = match (identity, credential) {
        (Some(_), Credential::ApiKey(_)) => return Ok(()),
        (Some(identity), _) => match gw.config.rate_limit_subject {
            Some(rate) => (format!("sub:{}", identity.subject), "this user", rate),
            None => return Ok(()),
        },
        (None, _) => match gw.config.rate_limit_address {
            Some(rate) => (
                address_key(ctx.client_ip(headers, |ip| gw.trusted_peer(ip))),
                "this address",
                rate,
            ),
            None => return Ok(()),
        },
    };
    // Boxed: the limiter's future (Redis) stays out of every request's.
    Box::pin(limiter.check_for(&id, what, Some(rate), None, &mut ctx.limit_headers))
        .await
        .map_err(|l| {
            Refused::new(
                Refusal::TooManyRequests(l.description, l.retry_after),
                l.reason,
            )
        })
}

/// The counter of an address: IPv4 as is, IPv6 per /64 (one host's
/// share of a network: counting each address would let it rotate freely).
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:203.0.113.7"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(address_key(mapped.to_canonical()), "ip:203.0.113.7");
    }
}
