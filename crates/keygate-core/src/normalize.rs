//! Path normalization: phase 1 of the request pipeline.
//!
//! Every request path is normalized exactly once, before routing; the rules
//! match the normalized path and the same normalized path is what keygate
//! forwards upstream, so keygate and the upstream can never disagree about
//! which resource a request names.
//!
//! [`normalize_path`] takes the path component of the request target (the
//! query already cut at the first `?`) and:
//!
//! 1. requires it to start with `/` (`*`, as in `OPTIONS *`, is not a path);
//! 2. rejects what is ambiguous between servers instead of guessing: an
//!    encoded slash `%2F`, a backslash (raw or `%5C`), NUL (raw or `%00`), a
//!    malformed escape (`%`, `%2`, `%G1`), and raw `#`, `?`, spaces, control
//!    characters and non-ASCII bytes;
//! 3. percent-decodes only the unreserved characters (`A–Z a–z 0–9 - . _ ~`)
//!    and re-emits every other escape with upper-case hex, so `%7e` becomes
//!    `~` and `%3a` becomes `%3A`;
//! 4. rejects, unless told otherwise, what an upstream that decodes the path
//!    a second time would read differently from keygate: an encoded `%`
//!    (`%25`, so `%252e%252e` cannot become `..` behind keygate) and escapes
//!    that do not decode to UTF-8 (`%FF`, the overlong `%C0%AE` some
//!    decoders turn into `.`). Spring Security's `StrictHttpFirewall` refuses
//!    the same paths by default. [`NormalizeOptions::allow_encoded_percent`]
//!    and [`NormalizeOptions::allow_non_utf8`] loosen this; the escapes are
//!    then forwarded as written (upper-case hex), never decoded;
//! 5. when `merge_slashes` is on, collapses runs of `/` into one;
//! 6. removes `.` and `..` segments (RFC 3986 §5.2.4), including those spelled
//!    `%2e`, after steps 3 and 5, so neither encoding nor `//` can hide a dot
//!    segment. A `..` that would climb above the root is rejected, never
//!    clamped. A dot segment carrying a `;` parameter (`..;`, `.;x`) is
//!    rejected too: servlet containers treat `/a/..;/b` as `/b`.
//!
//! A trailing slash is kept as given (`/admin/` stays `/admin/`). Paths that
//! need none of this (the common case) are returned unchanged after one scan.
//!
//! Path parameters other than on dot segments are forwarded as is; the rules
//! (`crate::rules`) match the path without them, as servlet containers read it.

/// Options for [`normalize_path`]. The default is the strict behaviour.
#[derive(Clone, Copy, Debug, Default)]
pub struct NormalizeOptions {
    /// Collapse runs of `/` into one before dot segments are removed.
    pub merge_slashes: bool,
    /// Accept `%25` (an encoded `%`) in paths. Off by default: an upstream
    /// that decodes twice would see another path than the one authorized.
    pub allow_encoded_percent: bool,
    /// Accept escapes whose bytes are not UTF-8 (`%FF`, overlong `%C0%AE`).
    /// Off by default.
    pub allow_non_utf8: bool,
}

impl NormalizeOptions {
    /// The strict options with `merge_slashes` as given.
    pub const fn strict(merge_slashes: bool) -> Self {
        NormalizeOptions {
            merge_slashes,
            allow_encoded_percent: false,
            allow_non_utf8: false,
        }
    }
}

/// Why a request path was rejected. Each message is short and safe to send
/// to the client in a 400 response.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with `/`")]
    NotAbsolute,
    /// The path contains `%2F`, which servers disagree on.
    #[error("an encoded `/` (%2F) is not allowed in the path")]
    EncodedSlash,
    /// The path contains `\` or `%5C`, which some servers treat as `/`.
    #[error("`\\` is not allowed in the path")]
    Backslash,
    /// The path contains a NUL byte, raw or as `%00`.
    #[error("NUL is not allowed in the path")]
    Nul,
    /// A `..` segment would climb above the root.
    #[error("the path climbs above the root")]
    EscapesRoot,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadPercentEncoding,
    /// A raw `#`, `?`, space, control character or non-ASCII byte.
    #[error("invalid character in the path")]
    InvalidCharacter,
    /// A `.` or `..` segment followed by a `;` parameter, such as `..;`.
    #[error("a dot segment with a `;` parameter is not allowed in the path")]
    DotSegmentParameter,
    /// `%25`: an encoded `%`, which an upstream that decodes twice reads as
    /// another escape.
    #[error("an encoded `%` (%25) is not allowed in the path")]
    EncodedPercent,
    /// Percent-escapes whose bytes are not valid UTF-8.
    #[error("percent-escapes in the path must decode to UTF-8")]
    NonUtf8Escape,
}

/// Normalizes the path component of a request target as described in the
/// [module documentation](self).
///
/// ```
/// use keygate_core::normalize::{normalize_path, NormalizeOptions, PathError};
/// let opts = NormalizeOptions::strict(true);
/// assert_eq!(normalize_path("/public/%2e%2e//admin/", opts).as_deref(), Ok("/admin/"));
/// assert_eq!(normalize_path("/public/..%2fadmin", opts), Err(PathError::EncodedSlash));
/// assert_eq!(normalize_path("/public/%252e%252e/admin", opts), Err(PathError::EncodedPercent));
/// ```
pub fn normalize_path(raw: &str, opts: NormalizeOptions) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_rewrite(bytes, opts)? {
        return Ok(raw.to_owned());
    }
    let decoded = decode(bytes, opts)?;
    remove_dot_segments(&decoded, opts)
}

/// The fast-path scan: validates raw characters and reports whether the path
/// needs decoding, slash merging or dot-segment removal. Stops at the first
/// reason to rewrite; [`decode`] then validates the whole path again.
fn needs_rewrite(bytes: &[u8], opts: NormalizeOptions) -> Result<bool, PathError> {
    // `bytes[0]` is the leading `/`; the first segment starts after it.
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'%' => return Ok(true),
            b'/' => {
                let segment = &bytes[segment_start..i];
                if (opts.merge_slashes && segment.is_empty()) || is_dot_like(segment) {
                    return Ok(true);
                }
                segment_start = i + 1;
            }
            _ => check_raw(b)?,
        }
    }
    Ok(is_dot_like(&bytes[segment_start..]))
}

/// `.`, `..`, or either followed by a `;` parameter.
fn is_dot_like(segment: &[u8]) -> bool {
    matches!(
        segment,
        [b'.'] | [b'.', b'.'] | [b'.', b';', ..] | [b'.', b'.', b';', ..]
    )
}

/// `.%3B…` or `..%3B…` (after [`decode`], hex is upper-case): an upstream
/// that decodes `%3B` before it reads path parameters sees `..;`.
fn is_dot_with_encoded_parameter(segment: &str) -> bool {
    segment.starts_with(".%3B") || segment.starts_with("..%3B")
}

/// Accepts the raw (not percent-encoded) bytes allowed in a path, other
/// than `%` and `/` which the callers handle.
fn check_raw(b: u8) -> Result<(), PathError> {
    match b {
        0 => Err(PathError::Nul),
        b'\\' => Err(PathError::Backslash),
        b'#' | b'?' => Err(PathError::InvalidCharacter),
        0x21..=0x7e => Ok(()),
        // Controls, space, DEL and every byte of a non-ASCII character.
        _ => Err(PathError::InvalidCharacter),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Validates every byte, decodes escapes of unreserved characters and
/// rewrites the others with upper-case hex. Runs of escaped non-ASCII bytes
/// must form UTF-8 unless `opts.allow_non_utf8`.
fn decode(bytes: &[u8], opts: NormalizeOptions) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    // The bytes of the current run of escaped non-ASCII bytes.
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            check_utf8_run(&mut run, opts)?;
            if b != b'/' {
                check_raw(b)?;
            }
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadPercentEncoding);
        };
        let v = (hi << 4) | lo;
        if v >= 0x80 {
            run.push(v);
        } else {
            check_utf8_run(&mut run, opts)?;
        }
        match v {
            0 => return Err(PathError::Nul),
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            b'%' if !opts.allow_encoded_percent => return Err(PathError::EncodedPercent),
            v if is_unreserved(v) => out.push(char::from(v)),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
        }
        i += 3;
    }
    check_utf8_run(&mut run, opts)?;
    Ok(out)
}

/// Ends a run of escaped non-ASCII bytes: it must be UTF-8 (strictly: no
/// overlong forms, no surrogates) unless `opts.allow_non_utf8`.
fn check_utf8_run(run: &mut Vec<u8>, opts: NormalizeOptions) -> Result<(), PathError> {
    if run.is_empty() {
        return Ok(());
    }
    let valid = std::str::from_utf8(run).is_ok();
    run.clear();
    if valid || opts.allow_non_utf8 {
        Ok(())
    } else {
        Err(PathError::NonUtf8Escape)
    }
}

/// Merges slashes (when asked) and removes dot segments from a decoded path
/// that starts with `/`.
fn remove_dot_segments(path: &str, opts: NormalizeOptions) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." | ".." => {
                if segment == ".." && kept.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                // `/a/..` is `/`, `/a/b/.` is `/a/b/`: a final dot segment
                // leaves a trailing slash (RFC 3986 §5.2.4).
                if last {
                    kept.push("");
                }
            }
            s if is_dot_like(s.as_bytes()) || is_dot_with_encoded_parameter(s) => {
                return Err(PathError::DotSegmentParameter);
            }
            // An empty segment is a `//`; the empty last one is the
            // trailing slash, kept as given.
            "" if opts.merge_slashes && !last => {}
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGE: NormalizeOptions = NormalizeOptions::strict(true);
    const KEEP: NormalizeOptions = NormalizeOptions::strict(false);

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize_path(raw, MERGE)
    }

    #[test]
    fn leaves_plain_paths_unchanged() {
        for p in [
            "/",
            "/admin",
            "/admin/",
            "/a/b.c/.well-known/x",
            "/a/...",
            "/a/b-c_d~e!$&'()*+,;=:@",
        ] {
            assert_eq!(norm(p).as_deref(), Ok(p), "{p}");
            assert_eq!(normalize_path(p, KEEP).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn rejects_relative_paths() {
        for p in ["", "admin", "*", "%2Fadmin", "http://x/admin"] {
            assert_eq!(norm(p), Err(PathError::NotAbsolute), "{p}");
        }
    }

    #[test]
    fn removes_dot_dot_traversal() {
        assert_eq!(norm("/public/../admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/a/b/../../c").as_deref(), Ok("/c"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/..").as_deref(), Ok("/"));
    }

    #[test]
    fn removes_percent_encoded_dot_dot() {
        assert_eq!(norm("/public/%2e%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/public/%2E%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/public/.%2E/admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/a/%2e").as_deref(), Ok("/a/"));
        assert_eq!(norm("/%2e%2e"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn removes_single_dot_segments() {
        assert_eq!(norm("/a/./b/").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(norm("/.").as_deref(), Ok("/"));
        assert_eq!(norm("/./././admin").as_deref(), Ok("/admin"));
    }

    #[test]
    fn rejects_encoded_slash() {
        assert_eq!(norm("/public/..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/public/..%2Fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn rejects_escape_above_root() {
        assert_eq!(norm("/.."), Err(PathError::EscapesRoot));
        assert_eq!(norm("/../admin"), Err(PathError::EscapesRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(normalize_path("/..", KEEP), Err(PathError::EscapesRoot));
    }

    #[test]
    fn merges_slashes_when_enabled() {
        assert_eq!(norm("//admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
    }

    #[test]
    fn keeps_slashes_when_merge_disabled() {
        assert_eq!(normalize_path("//admin", KEEP).as_deref(), Ok("//admin"));
        assert_eq!(normalize_path("/a//b/", KEEP).as_deref(), Ok("/a//b/"));
    }

    #[test]
    fn double_slash_cannot_hide_dot_dot() {
        // Merging happens before dot removal: `/a//..` is `/a/..`, i.e. `/`,
        // and an empty segment cannot absorb a `..` that would escape.
        assert_eq!(norm("/a//..").as_deref(), Ok("/"));
        assert_eq!(norm("//..//admin"), Err(PathError::EscapesRoot));
        assert_eq!(norm("/.//../admin"), Err(PathError::EscapesRoot));
        assert_eq!(norm("/public//../admin").as_deref(), Ok("/admin"));
        // Without merging, RFC 3986 applies to the empty segment as written,
        // and the result is what is forwarded, so nothing is hidden either.
        assert_eq!(
            normalize_path("/public//../admin", KEEP).as_deref(),
            Ok("/public/admin")
        );
        assert_eq!(normalize_path("//..", KEEP).as_deref(), Ok("/"));
    }

    #[test]
    fn rejects_nul() {
        assert_eq!(norm("/%00"), Err(PathError::Nul));
        assert_eq!(norm("/a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn rejects_backslash() {
        assert_eq!(norm("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(norm("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/public\\..\\admin"), Err(PathError::Backslash));
    }

    #[test]
    fn rejects_malformed_percent_encoding() {
        for p in ["/%", "/a%", "/%2", "/%G1", "/%1G", "/%%41", "/%é"] {
            assert_eq!(norm(p), Err(PathError::BadPercentEncoding), "{p}");
        }
    }

    #[test]
    fn rejects_invalid_characters() {
        for p in [
            "/a#frag", "/a b", "/é", "/a\tb", "/a\r\nb", "/a\x7fb", "/a?b", "/%41#",
        ] {
            assert_eq!(norm(p), Err(PathError::InvalidCharacter), "{p:?}");
        }
    }

    #[test]
    fn decodes_only_unreserved_characters() {
        assert_eq!(norm("/%7e").as_deref(), Ok("/~"));
        assert_eq!(norm("/%41").as_deref(), Ok("/A"));
        assert_eq!(norm("/%61%2D%5f%30").as_deref(), Ok("/a-_0"));
        assert_eq!(norm("/%3a").as_deref(), Ok("/%3A"));
        assert_eq!(norm("/%c3%a9").as_deref(), Ok("/%C3%A9"));
        assert_eq!(norm("/%20%23%3F").as_deref(), Ok("/%20%23%3F"));
    }

    #[test]
    fn rejects_encoded_percent_that_a_second_decoding_would_read() {
        assert_eq!(norm("/%252e%252e/admin"), Err(PathError::EncodedPercent));
        assert_eq!(norm("/a%25"), Err(PathError::EncodedPercent));
        assert_eq!(norm("/public/%25%32%65"), Err(PathError::EncodedPercent));
        // Loosened explicitly: forwarded as written, never decoded again.
        let loose = NormalizeOptions {
            allow_encoded_percent: true,
            ..MERGE
        };
        assert_eq!(
            normalize_path("/%252e%252e/admin", loose).as_deref(),
            Ok("/%252e%252e/admin")
        );
    }

    #[test]
    fn rejects_escapes_that_are_not_utf8() {
        for p in [
            "/%FF",
            "/a%C0%AE/x",
            "/%C0%AE%C0%AE/admin",
            "/%C3",
            "/%C3/%A9",
            "/%ED%A0%80",
            "/%E9t%E9",
        ] {
            assert_eq!(norm(p), Err(PathError::NonUtf8Escape), "{p}");
        }
        assert_eq!(norm("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(norm("/%F0%9F%94%91").as_deref(), Ok("/%F0%9F%94%91"));
        let loose = NormalizeOptions {
            allow_non_utf8: true,
            ..MERGE
        };
        assert_eq!(normalize_path("/%c0%ae", loose).as_deref(), Ok("/%C0%AE"));
    }

    #[test]
    fn encoded_letters_cannot_dodge_matching() {
        assert_eq!(norm("/%61dmin").as_deref(), Ok("/admin"));
    }

    #[test]
    fn keeps_trailing_slash() {
        assert_eq!(norm("/admin/").as_deref(), Ok("/admin/"));
        assert_eq!(norm("/admin/%2e/").as_deref(), Ok("/admin/"));
    }

    #[test]
    fn rejects_dot_segment_with_parameter() {
        for p in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/%2e%2e;/admin",
            "/.;/admin",
            "/a/..;",
            "/a/..%3B/b",
            "/a/.%3b/b",
            "/a/%2e%2e%3b/b",
            "/a/..%3Bx=1",
        ] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParameter), "{p}");
        }
        // A parameter on a normal segment is left alone.
        assert_eq!(
            norm("/a;jsessionid=1/b").as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(norm("/a/...;x").as_deref(), Ok("/a/...;x"));
    }
}
