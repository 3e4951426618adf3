//! The per-request context that every phase reads and writes, and the
//! credential a request presents. The trusted-peer decision
//! (`trusted-proxies`) is made once, when the context is created.

use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use keygate_core::Reason;
use keygate_core::{Identity, Secret};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::respond::Refusal;

/// What the log phase reports about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Forwarded (or, in forward-auth, approved) with a verified identity.
    Allow,
    /// Forwarded without a credential (white-listed, or unmatched without default deny).
    Public,
    /// Refused: 401 or 403.
    Deny,
    /// Refused as the client's error: a malformed or ambiguous request (400).
    Invalid,
    /// Refused: keygate/provider/upstream trouble (5xx).
    Error,
    /// One of keygate's own endpoints (`/oauth/health`, …).
    Internal,
}

impl Decision {
    /// How many decisions there are.
    pub const COUNT: usize = 6;

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Public => "public",
            Decision::Deny => "deny",
            Decision::Invalid => "invalid",
            Decision::Error => "error",
            Decision::Internal => "internal",
        }
    }
}

/// The per-request context every phase reads and writes.
pub struct RequestCtx {
    /// `X-Request-Id`: the client's when it sent a sane one, else generated.
    pub request_id: HeaderValue,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the peer is one of `trusted-proxies`, whose forwarding
    /// headers keygate believes: decided once, here.
    pub trusted: bool,
    /// An untrusted peer sent forwarding headers (removed in phase 1): it
    /// relays someone else's request.
    pub relayed: bool,
    /// The method being authorized (in forward-auth: the original one).
    pub method: Method,
    /// The normalized path (set by the normalize phase).
    pub path: String,
    /// The query string, passed through untouched; never used for matching.
    pub query: Option<String>,
    /// The matched rule's `uri`, or `unmatched` (`name:…` for an upstream of
    /// `upstreams`).
    pub route: String,
    /// The index in `Gateway::sites` of the upstream phase 2 chose.
    pub site: usize,
    /// The verified caller, if any.
    pub identity: Option<Arc<Identity>>,
    /// Outcome for the log line.
    pub decision: Decision,
    /// Short reason for the log line and metrics (`ok`, `expired`, …).
    pub reason: Reason,
    /// When the request arrived.
    pub started: Instant,
    /// A browser navigation (GET/HEAD accepting HTML, not XHR/fetch): without
    /// a credential it is sent to login instead of getting a 401.
    pub browser: bool,
    /// `Set-Cookie` values to add to the response (a refreshed session).
    pub set_cookies: Vec<String>,
    /// An API key's rate-limit and quota headers, for the response.
    pub limit_headers: keygate_keys::LimitHeaders,
    /// The request's `Origin`, kept for the response's CORS headers (only
    /// when CORS is on).
    pub origin: Option<HeaderValue>,
}

impl RequestCtx {
    /// Starts a context for a request that just arrived from `peer`
    /// (`trusted`: one of `trusted-proxies`).
    pub fn new(headers: &HeaderMap, method: Method, peer: SocketAddr, trusted: bool) -> Self {
        let method_is_read = matches!(method, Method::GET | Method::HEAD);
        RequestCtx {
            request_id: request_id(headers),
            peer,
            trusted,
            relayed: false,
            method,
            path: String::new(),
            query: None,
            route: String::new(),
            site: 0,
            identity: None,
            decision: Decision::Error,
            reason: Reason::Ok,
            started: Instant::now(),
            browser: method_is_read && is_browser_navigation(headers),
            set_cookies: Vec::new(),
            limit_headers: Vec::new(),
            origin: None,
        }
    }

    /// The host the client used: `X-Forwarded-Host` from a trusted proxy,
    /// else `Host`.
    pub fn client_host<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self.trusted {
            true => get("x-forwarded-host").or(get("host")),
            false => get("host"),
        }
    }

    /// The scheme the client used: `X-Forwarded-Proto` from a trusted proxy,
    /// else that of keygate's listener (`tls`).
    pub fn client_scheme(&self, tls: bool, headers: &HeaderMap) -> &'static str {
        let forwarded = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok());
        match (self.trusted, forwarded) {
            (true, Some(p)) if p.eq_ignore_ascii_case("https") => "https",
            (true, Some(p)) if p.eq_ignore_ascii_case("http") => "http",
            _ if tls => "https",
            _ => "http",
        }
    }

    /// The URL the client sent the request to, `scheme://host/path`, as it
    /// sent it (`path`: the raw path, without the query).
    pub fn client_url(&self, tls: bool, headers: &HeaderMap, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.client_scheme(tls, headers),
            self.client_host(headers).unwrap_or_default()
        )
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the right-most `X-Forwarded-For` entry that `is_trusted`
    /// does not accept (the left-most ones are the client's to write).
    pub fn client_ip(&self, headers: &HeaderMap, is_trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
        let mut ip = self.peer.ip().to_canonical();
        if !self.trusted {
            return ip;
        }
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Ok(hop) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            ip = hop.to_canonical();
            if !is_trusted(ip) {
                break;
            }
        }
        ip
    }

    /// Records a refusal's decision and reason for the log.
    pub fn refused(&mut self, refusal: &Refusal, reason: Reason) {
        self.decision = match refusal {
            Refusal::NoCredential
            | Refusal::SessionEnded
            | Refusal::BadCredential(_)
            | Refusal::Forbidden(_)
            | Refusal::MethodNotAllowed(_)
            | Refusal::TooManyRequests(..) => Decision::Deny,
            Refusal::BadRequest(_)
            | Refusal::RequestTimeout
            | Refusal::NotFound
            | Refusal::NoUpstream
            | Refusal::Conflict(_) => Decision::Invalid,
            _ => Decision::Error,
        };
        self.reason = reason;
    }
}

/// The credential a request presents, taken out of its headers in phase 1
/// (API keys are removed from the request there, so no key ever reaches
/// the upstream).
pub enum Credential {
    /// Nothing presented.
    None,
    /// `Authorization: Bearer <JWT>`.
    Bearer(Secret),
    /// `Authorization: DPoP <JWT>` with its proof (RFC 9449).
    Dpop(Box<DpopCredential>),
    /// An API key, from the key header, `Bearer kg…` or Basic's password.
    ApiKey(Secret),
    /// An `Authorization` header keygate cannot use; the text says why.
    Unusable(&'static str, Reason),
    /// A browser session from the session cookie.
    Session(Box<crate::session::SessionCookie>),
    /// A session cookie (in this many chunks) that cannot be opened:
    /// tampered, truncated, or sealed with a key keygate no longer has.
    InvalidSession(usize),
}

/// A DPoP-bound token as presented: the token, the request's `DPoP`
/// header (exactly one, else why not), and the URL the client sent the
/// request to (the proof's `htu` must name it).
pub struct DpopCredential {
    /// The access token.
    pub token: Secret,
    /// The proof, or why there is none usable (missing, several).
    pub proof: Result<String, keygate_auth::dpop::DpopError>,
    /// `scheme://host/path` as the client sent it.
    pub url: String,
}

/// `ip` as text in `buf` (what `Display` writes, without its formatting
/// machinery for IPv4, the common case).
pub fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(*octet).as_bytes();
                buf[n..n + d.len()].copy_from_slice(d);
                n += d.len();
            }
            &buf[..n]
        }
        v6 => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let n = usize::try_from(cursor.position()).unwrap_or(0);
            &buf[..n]
        }
    }
}

/// `Accept` names HTML and no `X-Requested-With`: a page load, not an API call.
fn is_browser_navigation(headers: &HeaderMap) -> bool {
    !headers.contains_key("x-requested-with")
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"))
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id")
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("-"))
}

pub use crate::respond::Refused;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.255",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes(), "{ip}");
        }
    }
}
