//! Every response keygate itself writes (errors, health, forward-auth), and
//! the one mapping from a refusal to its HTTP status. Bodies are small JSON
//! objects `{"error": …, "error_description": …}`; never a token or a cause
//! chain (causes go to the log).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// The body of every response: the upstream's, streamed, or keygate's own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Why keygate answered instead of the upstream.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// 400: the request is ambiguous or malformed (bad path, bad header).
    BadRequest(String),
    /// 401 without a credential.
    NoCredential,
    /// 401 with a bad credential; the text is safe for the client.
    BadCredential(String),
    /// 403: authenticated but not allowed.
    Forbidden(String),
    /// 404 under `/oauth/`.
    NotFound,
    /// 405: the credential may not use this method (API-key restriction).
    MethodNotAllowed(String),
    /// 429: the credential is over its rate limit or quota; retry after
    /// this many seconds.
    TooManyRequests(String, u64),
    /// 502: the upstream could not be reached or broke the exchange.
    BadGateway,
    /// 503: the provider is unreachable and nothing valid is cached.
    Unavailable(String),
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl Refusal {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NoCredential | Refusal::BadCredential(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
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
            Refusal::NoCredential => "unauthorized",
            Refusal::BadCredential(_) => "invalid_token",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::TooManyRequests(..) => "rate_limited",
            Refusal::BadGateway => "bad_gateway",
            Refusal::Unavailable(_) => "temporarily_unavailable",
            Refusal::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The human-readable `error_description`.
    pub fn description(&self) -> &str {
        match self {
            Refusal::BadRequest(d)
            | Refusal::BadCredential(d)
            | Refusal::Forbidden(d)
            | Refusal::MethodNotAllowed(d)
            | Refusal::TooManyRequests(d, _)
            | Refusal::Unavailable(d) => d,
            Refusal::NoCredential => "a bearer token is required",
            Refusal::NotFound => "no such keygate endpoint",
            Refusal::BadGateway => "the upstream could not be reached",
            Refusal::GatewayTimeout => "the upstream did not answer in time",
        }
    }

    /// The response, with `WWW-Authenticate` on 401s (RFC 6750).
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json(self.status(), &error_body(self.code(), self.description()));
        let challenge = match &self {
            Refusal::NoCredential => Some("Bearer realm=\"keygate\"".to_owned()),
            Refusal::BadCredential(d) => Some(format!(
                "Bearer realm=\"keygate\", error=\"invalid_token\", error_description=\"{}\"",
                d.replace(['"', '\\'], "'")
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        if let Refusal::TooManyRequests(_, retry_after) = &self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        resp
    }
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
