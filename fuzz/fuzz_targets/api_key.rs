//! Fuzzes the API-key format: `parse`, `has_key_prefix` and `display_prefix`
//! on arbitrary strings, single-character changes of a genuine key (the CRC
//! must catch every one), and `KeyCrypto::open` of arbitrary blobs.
//!
//! Input: the candidate key as text (lossily decoded).

#![no_main]

use std::sync::OnceLock;

use keygate_auth::apikey::{
    self, DISPLAY_PREFIX_LEN, KEY_LEN, KeyCrypto, KeyFormatError, PREFIX_LEN,
};
use keygate_core::keys::KeyKind;
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct Fixture {
    crypto: KeyCrypto,
    key: String,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let crypto = KeyCrypto::new(b"fuzz-server-secret-0123456789abcdef")
            .unwrap_or_else(|e| panic!("server secret refused: {e}"));
        let key = apikey::generate(KeyKind::Personal)
            .unwrap_or_else(|e| panic!("generate failed: {e}"))
            .expose()
            .to_owned();
        let sealed = crypto
            .seal(&key, "key-1", b"offline-refresh-token")
            .unwrap_or_else(|e| panic!("seal failed: {e}"));
        Fixture {
            crypto,
            key,
            sealed,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s: &str = &s;

    // has_key_prefix is exactly "starts with kgs_ or kgp_".
    let prefixed = s.starts_with("kgs_") || s.starts_with("kgp_");
    assert_eq!(apikey::has_key_prefix(s), prefixed, "{s:?}");

    match apikey::parse(s) {
        Ok(kind) => {
            assert!(apikey::has_key_prefix(s), "{s:?}");
            assert!(s.starts_with(kind.prefix()), "{s:?}");
            assert_eq!(s.len(), KEY_LEN, "{s:?}");
            assert!(
                s.as_bytes()[PREFIX_LEN..]
                    .iter()
                    .all(u8::is_ascii_alphanumeric),
                "{s:?}"
            );
        }
        // A bad checksum is only reported for something shaped like a key.
        Err(KeyFormatError::BadChecksum) => {
            assert!(prefixed && s.len() == KEY_LEN, "{s:?}");
        }
        Err(_) => {}
    }

    // display_prefix: the first 8 characters, never the whole of a longer key.
    let shown = apikey::display_prefix(s);
    let chars = s.chars().count();
    assert!(s.starts_with(&shown), "{s:?} -> {shown:?}");
    assert_eq!(shown.chars().count(), chars.min(DISPLAY_PREFIX_LEN));
    if chars > DISPLAY_PREFIX_LEN {
        assert_ne!(shown, s);
        assert!(shown.len() < s.len());
    }

    let fx = fixture();

    // One character of a genuine key changed to another base62 character:
    // the checksum catches it.
    if let [pos, sym, ..] = data {
        let pos = PREFIX_LEN + usize::from(*pos) % (KEY_LEN - PREFIX_LEN);
        let mut bytes = fx.key.clone().into_bytes();
        let new = BASE62[usize::from(*sym) % BASE62.len()];
        if bytes[pos] != new {
            bytes[pos] = new;
            let changed = String::from_utf8(bytes).unwrap_or_default();
            assert_eq!(
                apikey::parse(&changed),
                Err(KeyFormatError::BadChecksum),
                "{changed:?}"
            );
        }
    }

    // Arbitrary blobs never open; the genuine blob opens only with its key
    // and id.
    assert!(fx.crypto.open(&fx.key, "key-1", data).is_err());
    if s != fx.key {
        assert!(fx.crypto.open(s, "key-1", &fx.sealed).is_err());
    }
    if s != "key-1" {
        assert!(fx.crypto.open(&fx.key, s, &fx.sealed).is_err());
    }
});
