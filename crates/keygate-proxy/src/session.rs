//! The HTTP side of browser sessions: the service itself is the
//! `keygate-sessions` crate (re-exported here); this module adds the
//! redirects the login flow answers with.

use crate::respond::{self, Body};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

pub use keygate_sessions::*;

/// A request's `Cookie` header values, for [`Sessions::read`] and the
/// login cookie.
pub fn cookie_headers(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The redirect that starts a login and comes back to `return_to`.
pub fn login_redirect(return_to: &str) -> Response<Body> {
    let target = format!(
        "/oauth/authorize?return_to={}",
        keygate_core::encoding::encode_path(return_to)
    );
    redirect(&target, &[])
}

pub(crate) fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut resp = respond::empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}
