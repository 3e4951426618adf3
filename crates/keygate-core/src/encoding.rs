//! The text encodings keygate writes and reads, each in one place: hex for
//! hashes and ids, `application/x-www-form-urlencoded` for OAuth requests,
//! forms and query strings, and percent-encoding for URL components.
//! (Request paths have their own, stricter decoder: [`crate::normalize`].)

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// The bytes of a hex string (either case); `None` when it is not hex.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    ::hex::decode(text).ok()
}

/// One value, `application/x-www-form-urlencoded` (space as `+`).
pub fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One `application/x-www-form-urlencoded` value decoded: `+` is a space,
/// `%XX` a byte; a `%` without two hex digits stays; bytes that are not
/// UTF-8 become U+FFFD.
pub fn form_decode(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// The name/value pairs of a form body or query string, decoded.
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

/// Percent-decodes once (`+` stays `+`); `None` when the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// What [`encode_path`] leaves as it is: letters, digits, `-._~/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A path (with its `/`s) percent-encoded for use as a query value.
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_decode("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn form_values() {
        assert_eq!(form_encode("a b&c=d/é*"), "a+b%26c%3Dd%2F%C3%A9*");
        assert_eq!(form_decode("a+b%26c%3Dd%2F%C3%A9"), "a b&c=d/é");
        // A stray `%`, and one at the very end, stay.
        assert_eq!(form_decode("100%+x%4"), "100% x%4");
        assert_eq!(form_decode("%41"), "A");
        assert_eq!(
            form_pairs("a=1&b=x+y&c=%2F"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y".to_owned()),
                ("c".to_owned(), "/".to_owned())
            ]
        );
    }

    #[test]
    fn percent_decoding_keeps_plus_and_refuses_non_utf8() {
        assert_eq!(percent_decode("/a%20b+c").as_deref(), Some("/a b+c"));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(encode_path("/app/x y?z"), "/app/x%20y%3Fz");
    }
}
