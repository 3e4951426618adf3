//! Every response keygate itself writes (errors, health, forward-auth), and
//! the error edge: the one place where the services' typed errors
//! ([`KeyError`], [`ManageError`], [`DeviceError`],
//! [`SessionError`]) become a [`Refusal`]
//! with its HTTP status and a reason for logs and metrics. Bodies are small
//! JSON objects `{"error": …, "error_description": …}`; never a token or a
//! cause (a provider URL, a database message): causes go to the log.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use keygate_core::Reason;
use keygate_keys::{DeviceError, KeyError, ManageError};
use keygate_sessions::SessionError;

use crate::upstream::UpstreamBody;

/// The body of every response: the upstream's, streamed, or keygate's own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// `Retry-After` (seconds) of every 503: keygate's dependencies are probed
/// again within half a second of a failure, and load is shed per request,
/// so a client may try again after a second.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 1;

/// Why keygate answered instead of the upstream.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// 400: the request is ambiguous or malformed (bad path, bad header).
    BadRequest(String),
    /// 401 without a credential.
    NoCredential,
    /// 401 with a bad credential; the text is safe for the client.
    BadCredential(String),
    /// 401: the session cookie names a session that has ended (logged
    /// out, expired, its refresh refused) or cannot be opened; its
    /// cookies are cleared, and a browser is sent to log in again.
    SessionEnded,
    /// 401 for a DPoP-bound token (RFC 9449 §7.1): a `DPoP` challenge with
    /// `error` (`invalid_dpop_proof` or `invalid_token`) and the accepted
    /// proof algorithms.
    Dpop {
        /// `invalid_dpop_proof` or `invalid_token`.
        error: &'static str,
        /// Safe for the client.
        description: String,
        /// The `algs` of the challenge (`ES256 PS256 …`).
        algs: String,
    },
    /// 403: authenticated but not allowed.
    Forbidden(String),
    /// 404 under `/oauth/`.
    NotFound,
    /// 404: no upstream serves this host and path (`upstreams` without
    /// `upstream-url`).
    NoUpstream,
    /// 405: the credential may not use this method (API-key restriction).
    MethodNotAllowed(String),
    /// 408: the client stopped sending its request body for
    /// `upstream-idle-timeout`.
    RequestTimeout,
    /// 409: the request conflicts with the state of what it names (a
    /// revoked key cannot be renewed).
    Conflict(String),
    /// 429: the credential is over its rate limit or quota; retry after
    /// this many seconds.
    TooManyRequests(String, u64),
    /// 502: the upstream could not be reached or broke the exchange.
    BadGateway,
    /// 503 with `Retry-After`: a dependency (the provider, the key store,
    /// Redis) cannot answer and nothing valid is cached, or keygate is at
    /// `max-concurrent-requests`.
    Unavailable(String),
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl Refusal {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NoCredential
            | Refusal::SessionEnded
            | Refusal::BadCredential(_)
            | Refusal::Dpop { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::NotFound | Refusal::NoUpstream => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "invalid_request",
            Refusal::NoCredential | Refusal::SessionEnded => "unauthorized",
            Refusal::BadCredential(_) => "invalid_token",
            Refusal::Dpop { error, .. } => error,
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotFound | Refusal::NoUpstream => "not_found",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::Conflict(_) => "conflict",
            Refusal::TooManyRequests(..) => "rate_limited",
            Refusal::BadGateway => "bad_gateway",
            Refusal::Unavailable(_) => "temporarily_unavailable",
            Refusal::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The reason for logs and metrics when nothing more specific is known.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::BadRequest(_) => Reason::InvalidRequest,
            Refusal::NoCredential => Reason::Unauthorized,
            Refusal::SessionEnded => Reason::SessionEnded,
            Refusal::BadCredential(_) => Reason::InvalidToken,
            Refusal::Dpop { .. } => Reason::DpopProofInvalid,
            Refusal::Forbidden(_) => Reason::Forbidden,
            Refusal::NotFound => Reason::NotFound,
            Refusal::NoUpstream => Reason::NoUpstream,
            Refusal::MethodNotAllowed(_) => Reason::MethodNotAllowed,
            Refusal::RequestTimeout => Reason::RequestTimeout,
            Refusal::Conflict(_) => Reason::KeyConflict,
            Refusal::TooManyRequests(..) => Reason::RateLimited,
            Refusal::BadGateway => Reason::BadGateway,
            Refusal::Unavailable(_) => Reason::TemporarilyUnavailable,
            Refusal::GatewayTimeout => Reason::GatewayTimeout,
        }
    }

    /// The human-readable `error_description`.
    pub fn description(&self) -> &str {
        match self {
            Refusal::BadRequest(d)
            | Refusal::BadCredential(d)
            | Refusal::Forbidden(d)
            | Refusal::MethodNotAllowed(d)
            | Refusal::Conflict(d)
            | Refusal::TooManyRequests(d, _)
            | Refusal::Unavailable(d) => d,
            Refusal::Dpop { description, .. } => description,
            Refusal::NoCredential => "a bearer token is required",
            Refusal::SessionEnded => {
                "the session has ended or its cookie is not valid; log in again"
            }
            Refusal::NotFound => "no such keygate endpoint",
            Refusal::NoUpstream => "no upstream serves this host and path",
            Refusal::RequestTimeout => {
                "the request body stalled; send it without pausing (upstream-idle-timeout)"
            }
            Refusal::BadGateway => "the upstream could not be reached",
            Refusal::GatewayTimeout => "the upstream did not answer in time",
        }
    }

    /// The response, with `WWW-Authenticate` on 401s (RFC 6750).
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json(self.status(), &error_body(self.code(), self.description()));
        let challenge = match &self {
            Refusal::NoCredential | Refusal::SessionEnded => {
                Some("Bearer realm=\"keygate\"".to_owned())
            }
            Refusal::BadCredential(d) => Some(format!(
                "Bearer realm=\"keygate\", error=\"invalid_token\", error_description=\"{}\"",
                d.replace(['"', '\\'], "'")
            )),
            Refusal::Dpop {
                error,
                description,
                algs,
            } => Some(format!(
                "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{algs}\"",
                description.replace(['"', '\\'], "'")
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        let retry_after = match &self {
            Refusal::TooManyRequests(_, retry_after) => Some(*retry_after),
            Refusal::Unavailable(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}

impl Refused {
    /// A refusal and its reason.
    pub fn new(refusal: Refusal, reason: Reason) -> Refused {
        Refused { refusal, reason }
    }
}

/// A refusal with the short reason recorded in logs and metrics.
#[derive(Debug)]
pub struct Refused {
    /// What the client gets.
    pub refusal: Refusal,
    /// Why, for operators.
    pub reason: Reason,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        let reason = refusal.reason();
        Refused { refusal, reason }
    }
}

impl From<KeyError> for Refused {
    fn from(e: KeyError) -> Self {
        let reason = e.reason();
        let refusal = match e {
            KeyError::Malformed
            | KeyError::Unknown
            | KeyError::Revoked
            | KeyError::Expired
            | KeyError::Rejected(_)
            | KeyError::TokenNotAccepted(_) => Refusal::BadCredential(e.to_string()),
            KeyError::MethodNotAllowed(_) => Refusal::MethodNotAllowed(e.to_string()),
            KeyError::RouteNotAllowed
            | KeyError::NetworkNotAllowed
            | KeyError::Restricted
            | KeyError::LimitedToken => Refusal::Forbidden(e.to_string()),
            KeyError::Limited(l) => Refusal::TooManyRequests(l.description, l.retry_after),
            KeyError::StoreUnavailable | KeyError::ProviderUnavailable => {
                Refusal::Unavailable(e.to_string())
            }
            // A variant added later: refused, never let through.
            _ => Refusal::Unavailable("the API key cannot be checked now".into()),
        };
        Refused { refusal, reason }
    }
}

impl From<ManageError> for Refused {
    fn from(e: ManageError) -> Self {
        let reason = e.reason();
        let refusal = match e {
            ManageError::Invalid(why) => Refusal::BadRequest(why),
            ManageError::NotFound => Refusal::NotFound,
            ManageError::NotAllowed(why) => Refusal::Forbidden(why),
            ManageError::Conflict(why) => Refusal::Conflict(why),
            ManageError::Store(cause) => {
                tracing::warn!(error = %cause, "key store failed");
                Refusal::Unavailable("the API-key store is unavailable; try again shortly".into())
            }
            ManageError::Provider(cause) => {
                tracing::warn!(error = %cause, "the OpenID provider failed");
                Refusal::Unavailable("the OpenID provider is unavailable; try again shortly".into())
            }
            // A well-formed request the provider refused (an unknown client,
            // a wrong secret, a scope the client may not have): 403 with
            // keygate's own words and the OAuth error code, never the
            // provider's description (that is in the log).
            ManageError::ProviderRefused(code) => Refusal::Forbidden(match code.as_str() {
                "invalid_client" | "unauthorized_client" => format!(
                    "the OpenID provider refused the client's credentials ({code}): check client_id and client_secret"
                ),
                "invalid_scope" => format!(
                    "the OpenID provider refused the scopes for this client ({code}): check scopes"
                ),
                _ => format!(
                    "the OpenID provider refused the request ({code}); keygate's log has its description"
                ),
            }),
            other => {
                tracing::error!(error = %other, "key management failed");
                Refusal::Unavailable("the key could not be made; try again shortly".into())
            }
        };
        Refused { refusal, reason }
    }
}

impl From<SessionError> for Refused {
    fn from(e: SessionError) -> Self {
        let reason = e.reason();
        let refusal = match e {
            SessionError::Ended(_) => Refusal::SessionEnded,
            other => Refusal::Unavailable(other.to_string()),
        };
        Refused { refusal, reason }
    }
}

/// A device flow that ended without a key, as the OAuth-shaped answer of
/// `POST /oauth/keys/device/token` (RFC 8628 §3.5 codes); `Err` for a
/// failure on keygate's or the provider's side (503, cause logged).
pub fn device_outcome(e: DeviceError) -> Result<Response<Body>, Refused> {
    let (status, body) = match &e {
        DeviceError::SlowDown(interval) => (
            StatusCode::ACCEPTED,
            serde_json::json!({ "status": "slow_down", "interval": interval }),
        ),
        DeviceError::Denied | DeviceError::Expired | DeviceError::Unknown => {
            let code = match e {
                DeviceError::Denied => "access_denied",
                DeviceError::Expired => "expired_token",
                _ => "unknown_flow",
            };
            (StatusCode::BAD_REQUEST, error_body(code, &e.to_string()))
        }
        // Not the flow's fault: the user's account at the provider needs a
        // link an administrator makes.
        DeviceError::NotLinked(why) => (StatusCode::FORBIDDEN, error_body("not_linked", why)),
        _ => {
            tracing::warn!(error = %e, "device flow failed");
            return Err(Refused {
                refusal: Refusal::Unavailable(
                    "the OpenID provider could not complete the device flow".into(),
                ),
                reason: Reason::ProviderUnavailable,
            });
        }
    };
    Ok(json(status, &body))
}

fn error_body(code: &str, description: &str) -> serde_json::Value {
    serde_json::json!({ "error": code, "error_description": description })
}

/// A JSON response that is never cached.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A plain-text response (for Prometheus).
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An empty response with a status.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    resp
}
