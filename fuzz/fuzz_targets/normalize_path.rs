//! Fuzzes `normalize_path`, phase 1 of the pipeline: whatever it accepts must
//! be a path the rules can match and the upstream reads the same way.
//!
//! Input: one byte of options (bit 0 `merge_slashes`, bit 1
//! `allow_encoded_percent`, bit 2 `allow_non_utf8`), then the raw path.

#![no_main]

use keygate_core::normalize::{NormalizeOptions, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = NormalizeOptions {
        allow_encoded_percent: flags & 2 != 0,
        allow_non_utf8: flags & 4 != 0,
        ..NormalizeOptions::strict(flags & 1 != 0)
    };
    let Ok(out) = normalize_path(raw, opts) else {
        return;
    };
    check_output(raw, &out, opts);

    // Idempotence: the forwarded path normalizes to itself.
    assert_eq!(
        normalize_path(&out, opts).as_deref(),
        Ok(out.as_str()),
        "not idempotent: {raw:?} -> {out:?} ({opts:?})"
    );

    // Loosening an option never changes what the strict options accepted.
    let loose = NormalizeOptions {
        allow_encoded_percent: true,
        allow_non_utf8: true,
        ..opts
    };
    assert_eq!(
        normalize_path(raw, loose).as_deref(),
        Ok(out.as_str()),
        "loosened options changed the result of {raw:?} ({opts:?})"
    );
});

fn check_output(raw: &str, out: &str, opts: NormalizeOptions) {
    let ctx = || format!("{raw:?} -> {out:?} ({opts:?})");
    assert!(out.starts_with('/'), "not absolute: {}", ctx());
    if opts.merge_slashes {
        assert!(!out.contains("//"), "`//` left: {}", ctx());
    }
    for &b in out.as_bytes() {
        assert!(
            (0x21..=0x7e).contains(&b) && !matches!(b, b'\\' | b'#' | b'?'),
            "byte {b:#04x} left: {}",
            ctx()
        );
    }
    for segment in out[1..].split('/') {
        assert!(
            !is_dot_like(segment.as_bytes()),
            "dot segment {segment:?} left: {}",
            ctx()
        );
    }

    // Every escape is well-formed, upper-case, and not one that must have
    // been decoded (unreserved) or refused (`/`, `\`, NUL, `%` unless allowed).
    let bytes = out.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).unwrap_or_else(|| {
            panic!("truncated escape: {}", ctx());
        });
        assert!(
            hex.iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
            "escape {:?} not upper-case hex: {}",
            String::from_utf8_lossy(hex),
            ctx()
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
            .unwrap_or_else(|_| panic!("bad escape: {}", ctx()));
        assert!(
            !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
            "unreserved escape %{:02X} not decoded: {}",
            v,
            ctx()
        );
        assert!(
            !matches!(v, 0 | b'/' | b'\\'),
            "escape %{v:02X} let through: {}",
            ctx()
        );
        if !opts.allow_encoded_percent {
            assert_ne!(v, b'%', "%25 let through: {}", ctx());
        }
        decoded.push(v);
        i += 3;
    }

    // What an upstream that decodes the path once sees: UTF-8 (unless
    // allowed otherwise) and still no dot segment.
    if !opts.allow_non_utf8 {
        assert!(
            std::str::from_utf8(&decoded).is_ok(),
            "decodes to non-UTF-8: {}",
            ctx()
        );
    }
    if !opts.allow_encoded_percent {
        for segment in decoded[1..].split(|&b| b == b'/') {
            assert!(
                !is_dot_like(segment),
                "decoding once yields a dot segment: {}",
                ctx()
            );
        }
    }
}

/// `.`, `..`, or either followed by a `;` parameter.
fn is_dot_like(segment: &[u8]) -> bool {
    matches!(
        segment,
        [b'.'] | [b'.', b'.'] | [b'.', b';', ..] | [b'.', b'.', b';', ..]
    )
}
