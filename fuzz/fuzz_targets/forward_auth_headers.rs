//! Fuzzes how forward-auth reads the original request from the front
//! proxy's headers (`original_request`), then normalizes the path it found.
//!
//! Input: header lines `name: value` separated by `\n`. A name of one digit
//! `0`–`3` stands for `x-forwarded-uri`, `x-original-uri`,
//! `x-forwarded-method`, `x-original-method`, so that the fuzzer reaches the
//! interesting headers quickly. Invalid names or values are skipped; repeated
//! names are appended, as hyper would.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate_core::normalize::{NormalizeOptions, normalize_path};
use keygate_proxy::forward_auth::original_request;
use libfuzzer_sys::fuzz_target;

const SHORT_NAMES: [&str; 4] = [
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-method",
    "x-original-method",
];

fuzz_target!(|data: &[u8]| {
    let headers = header_map(data);
    let result = original_request(&headers);

    // A client that adds the other header pair must not choose what is
    // authorized: both present and different is refused.
    let raw = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    if let (Some(fu), Some(ou)) = (raw("x-forwarded-uri"), raw("x-original-uri"))
        && fu != ou
    {
        assert!(
            result.is_err(),
            "X-Forwarded-Uri {:?} and X-Original-URI {:?} differ, yet {:?} was accepted",
            String::from_utf8_lossy(fu),
            String::from_utf8_lossy(ou),
            result.as_ref().ok()
        );
    }
    if let (Some(fm), Some(om)) = (raw("x-forwarded-method"), raw("x-original-method"))
        && !fm.trim_ascii().eq_ignore_ascii_case(om.trim_ascii())
    {
        assert!(
            result.is_err(),
            "X-Forwarded-Method {:?} and X-Original-Method {:?} differ, yet {:?} was accepted",
            String::from_utf8_lossy(fm),
            String::from_utf8_lossy(om),
            result.as_ref().ok()
        );
    }

    let Ok((method, uri)) = result else {
        return;
    };
    // What is authorized is what one of the headers said.
    let reported = raw("x-forwarded-uri").or(raw("x-original-uri"));
    let reported = reported.map(String::from_utf8_lossy).unwrap_or_default();
    assert!(
        reported.ends_with(&uri) || uri == "/",
        "{uri:?} is not the tail of {reported:?}"
    );
    assert!(!method.as_str().is_empty());

    let path = uri.split_once('?').map_or(uri.as_str(), |(p, _)| p);
    for merge in [false, true] {
        let opts = NormalizeOptions::strict(merge);
        if let Ok(normal) = normalize_path(path, opts) {
            assert!(normal.starts_with('/'));
            assert_eq!(
                normalize_path(&normal, opts).as_deref(),
                Ok(normal.as_str())
            );
        }
    }
});

fn header_map(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let name = match name {
            [d @ b'0'..=b'3'] => HeaderName::from_static(SHORT_NAMES[usize::from(d - b'0')]),
            _ => match HeaderName::from_bytes(name) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    headers
}
