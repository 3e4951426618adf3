//! Fuzzes the session cookies: opening attacker-chosen cookie values, reading
//! attacker-chosen `Cookie` headers, and sealing then reopening values and
//! sessions derived from the input (through the chunked `Set-Cookie` form).
//!
//! Input: `Cookie` header values separated by `\n`; the same text is opened
//! as a sealed value and used as the payload of the round trips.

#![no_main]

use std::sync::OnceLock;

use keygate_auth::session::{CookieSealer, SessionState, read_cookie, set_cookie_headers};
use keygate_core::Secret;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const SESSION: &str = "kg_session";
const LOGIN: &str = "kg_login";

fn sealer() -> &'static CookieSealer {
    static SEALER: OnceLock<CookieSealer> = OnceLock::new();
    SEALER.get_or_init(|| {
        // 32 distinct bytes: passes the key-strength check.
        let key: Vec<u8> = (0u8..32).collect();
        CookieSealer::new(&key).unwrap_or_else(|e| panic!("fixed key refused: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let sealer = sealer();

    // Nothing the fuzzer writes was sealed under this key.
    assert!(
        sealer.open(&text, SESSION).is_err(),
        "forged session opened"
    );
    assert!(
        sealer.open_json::<Value>(&text, LOGIN).is_err(),
        "forged login state opened"
    );

    // Attacker-chosen Cookie headers.
    let headers: Vec<&str> = text.split('\n').collect();
    if let Some((value, count)) = read_cookie(&headers, SESSION) {
        assert!(count >= 1);
        assert!(text.contains(SESSION));
        assert!(value.len() <= text.len());
        assert!(
            sealer.open(&value, SESSION).is_err(),
            "forged chunks opened"
        );
    }

    // Round trip of a value derived from the input.
    let login = json!({ "state": &*text, "n": data.len(), "bytes": data.get(..8) });
    let sealed = sealer
        .seal_json(&login, LOGIN)
        .unwrap_or_else(|e| panic!("seal_json failed: {e}"));
    let opened: Value = sealer
        .open_json(&sealed, LOGIN)
        .unwrap_or_else(|e| panic!("own sealed value refused: {e}"));
    assert_eq!(opened, login);
    assert!(
        sealer.open_json::<Value>(&sealed, SESSION).is_err(),
        "value opened under another cookie name"
    );

    // A session derived from the input, repeated so that some need chunks.
    let repeat = usize::from(data.first().copied().unwrap_or(0) % 4) + 1;
    let big = text.repeat(repeat);
    let state = SessionState {
        access_token: Secret::new(big.as_str()),
        refresh_token: (data.len() % 2 == 0).then(|| Secret::new(text.as_ref())),
        id_token: None,
        subject: text.chars().take(40).collect(),
        sid: (data.len() % 3 == 0).then(|| text.to_string()),
        access_expires_at: data.len() as u64,
        session_expires_at: u64::MAX - data.len() as u64,
        created_at_ms: 1_700_000_000_000,
        id: text.chars().rev().take(16).collect(),
        logout_checked: Default::default(),
    };
    let sealed = sealer
        .seal(&state, SESSION)
        .unwrap_or_else(|e| panic!("seal failed: {e}"));
    let previous = usize::from(data.last().copied().unwrap_or(0) % 5);
    let set_cookies = set_cookie_headers(SESSION, &sealed, 600, true, previous);
    let pairs: Vec<&str> = set_cookies
        .iter()
        .filter(|h| !h.contains("Max-Age=0"))
        .map(|h| h.split(';').next().unwrap_or(""))
        .collect();
    let joined = pairs.join("; ");
    let (value, count) = read_cookie(&[&joined], SESSION)
        .unwrap_or_else(|| panic!("own Set-Cookie not read back"));
    assert_eq!(value, sealed);
    assert_eq!(count, pairs.len());
    let back = sealer
        .open(&value, SESSION)
        .unwrap_or_else(|e| panic!("own session refused: {e}"));
    assert_eq!(back.access_token.expose(), state.access_token.expose());
    assert_eq!(
        back.refresh_token.as_ref().map(Secret::expose),
        state.refresh_token.as_ref().map(Secret::expose)
    );
    assert_eq!(back.subject, state.subject);
    assert_eq!(back.sid, state.sid);
    assert_eq!(back.access_expires_at, state.access_expires_at);
    assert_eq!(back.session_expires_at, state.session_expires_at);
    assert_eq!(back.id, state.id);

    // The genuine cookies first, the attacker's after: the genuine value is
    // what is read (extra chunk names can only make it longer, never other).
    let mut mixed: Vec<&str> = pairs.clone();
    mixed.extend(headers.iter().copied());
    let (value, more) =
        read_cookie(&mixed, SESSION).unwrap_or_else(|| panic!("genuine cookie lost among others"));
    assert!(value.starts_with(&sealed));
    assert!(more >= count);
});
