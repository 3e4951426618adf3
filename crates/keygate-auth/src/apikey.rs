//! API keys: their format, their stored hash, and the secrets sealed under them.
//!
//! A key is `kgs_` (service) or `kgp_` (personal), then 32 base62 characters
//! from the operating system's CSPRNG (about 190 bits), then 6 base62
//! characters encoding the CRC32 of everything before them:
//!
//! ```text
//! kgp_3xY0q…(32 random chars)…Zr 00AbC9
//! └┬─┘└──────────┬──────────────┘└──┬─┘
//! kind       random part         CRC32
//! ```
//!
//! The checksum lets [`parse`] refuse typos and secret scanners' false
//! positives without a store lookup; the prefix makes leaked keys findable.
//!
//! [`KeyCrypto`] holds what is derived from the server secret:
//! - the **hash** stored for a key is HMAC-SHA-256 under a key derived (HKDF)
//!   from the server secret, so a stolen database alone cannot be used to test
//!   guesses offline; comparison is constant-time;
//! - the provider secret a key is exchanged with (a service account's client
//!   secret, a user's offline refresh token) is **sealed** with AES-256-GCM
//!   under a key derived from the API key itself *and* the server secret, and
//!   bound to the key's record id as associated data: the database alone, or
//!   the server secret alone, opens nothing, and a blob moved to another
//!   record does not open.
//!
//! ```
//! use keygate_auth::apikey::{self, KeyCrypto};
//! use keygate_core::keys::KeyKind;
//!
//! let key = apikey::generate(KeyKind::Personal)?;
//! assert_eq!(apikey::parse(key.expose()), Ok(KeyKind::Personal));
//!
//! let crypto = KeyCrypto::new(&[7u8; 32])?;
//! let stored = crypto.hash(key.expose());
//! assert!(crypto.hash_matches(key.expose(), &stored));
//!
//! let sealed = crypto.seal(key.expose(), "key-id-1", b"offline-refresh-token")?;
//! let opened = crypto.open(key.expose(), "key-id-1", &sealed)?;
//! assert_eq!(opened.expose(), "offline-refresh-token");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{constant_time, hkdf, hmac};
use keygate_core::Secret;
use keygate_core::keys::KeyKind;
use std::fmt;

/// Length of the kind prefix (`kgs_`, `kgp_`).
pub const PREFIX_LEN: usize = 4;
/// Number of random base62 characters.
pub const RANDOM_LEN: usize = 32;
/// Number of base62 characters of the CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = PREFIX_LEN + RANDOM_LEN + CHECKSUM_LEN;
/// Length of [`display_prefix`].
pub const DISPLAY_PREFIX_LEN: usize = 8;
/// Least length of the server secret given to [`KeyCrypto::new`].
pub const MIN_SERVER_SECRET_LEN: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Bytes at or above this are rejected when drawing base62 characters, so
/// that `byte % 62` is uniform (248 = 4 × 62).
const REJECT_FROM: u8 = 248;

const HASH_INFO: &[u8] = b"keygate api-key hash v1";
const SEAL_INFO: &[u8] = b"keygate api-key secret v1";
const SEAL_VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// Why a string is not a well-formed API key. The `Display` text is short,
/// safe to send to the client, and never contains the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// Wrong length, unknown prefix, or a character outside base62.
    #[error("not a keygate API key")]
    WrongShape,
    /// The shape is right but the checksum does not match (a typo, or a
    /// string that only looks like a key).
    #[error("API key checksum does not match")]
    BadChecksum,
}

/// A failure of [`KeyCrypto`] or of key generation. Never contains key or
/// secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The configured server secret is too short to derive keys from.
    #[error("the server secret must be at least {MIN_SERVER_SECRET_LEN} bytes long (it has {0})")]
    ServerSecretTooShort(usize),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Key derivation or key setup failed.
    #[error("key derivation failed")]
    Derive,
    /// A sealed secret is malformed, was sealed under another API key, server
    /// secret or key id, or was altered.
    #[error("the sealed secret cannot be opened")]
    Open,
}

/// Generates a new key of `kind` from the operating system's CSPRNG.
///
/// Fails only when the random number generator does (then no key is made).
pub fn generate(kind: KeyKind) -> Result<Secret, CryptoError> {
    let rng = SystemRandom::new();
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(kind.prefix());
    let mut buf = [0u8; 64];
    let mut drawn = 0;
    while drawn < RANDOM_LEN {
        rng.fill(&mut buf).map_err(|_| CryptoError::Random)?;
        for &b in &buf {
            // Rejection sampling: no modulo bias.
            if b < REJECT_FROM && drawn < RANDOM_LEN {
                key.push(char::from(BASE62[usize::from(b % 62)]));
                drawn += 1;
            }
        }
    }
    let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
    key.push_str(&checksum);
    Ok(Secret::new(key))
}

/// Checks the shape and checksum of `candidate` (no lookup) and returns its kind.
pub fn parse(candidate: &str) -> Result<KeyKind, KeyFormatError> {
    let bytes = candidate.as_bytes();
    if bytes.len() != KEY_LEN {
        return Err(KeyFormatError::WrongShape);
    }
    let kind = KeyKind::from_key(candidate).ok_or(KeyFormatError::WrongShape)?;
    let (body, checksum) = bytes.split_at(PREFIX_LEN + RANDOM_LEN);
    if !bytes[PREFIX_LEN..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::WrongShape);
    }
    let expected = encode_checksum(crc32fast::hash(body));
    if expected.as_bytes() != checksum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(kind)
}

/// True when `s` starts with a keygate key prefix: tells an API key from a
/// JWT in `Authorization: Bearer` (a JWT starts with `ey`).
pub fn has_key_prefix(s: &str) -> bool {
    KeyKind::from_key(s).is_some()
}

/// The first 8 characters of `key` (prefix and 4 random characters): stored
/// and shown so that people can tell their keys apart. Reveals 24 of ~190 bits.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// A CRC32 as 6 base62 digits, most significant first, padded with `0`.
fn encode_checksum(mut crc: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Hashing and sealing keys derived from the server secret.
pub struct KeyCrypto {
    hash_key: hmac::Key,
    server_secret: Vec<u8>,
    rng: SystemRandom,
}

impl fmt::Debug for KeyCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyCrypto([redacted])")
    }
}

impl KeyCrypto {
    /// Derives the hashing key from `server_secret`, which must be at least
    /// [`MIN_SERVER_SECRET_LEN`] bytes.
    pub fn new(server_secret: &[u8]) -> Result<Self, CryptoError> {
        if server_secret.len() < MIN_SERVER_SECRET_LEN {
            return Err(CryptoError::ServerSecretTooShort(server_secret.len()));
        }
        let mut hash_key = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(server_secret)
            .expand(&[HASH_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut hash_key))
            .map_err(|_| CryptoError::Derive)?;
        Ok(KeyCrypto {
            hash_key: hmac::Key::new(hmac::HMAC_SHA256, &hash_key),
            server_secret: server_secret.to_vec(),
            rng: SystemRandom::new(),
        })
    }

    /// The value stored for `key`: HMAC-SHA-256 of the whole key.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.hash_key, key.as_bytes());
        let mut out = [0u8; 32];
        for (o, b) in out.iter_mut().zip(tag.as_ref()) {
            *o = *b;
        }
        out
    }

    /// Whether `stored` is the hash of `key`, compared in constant time.
    pub fn hash_matches(&self, key: &str, stored: &[u8]) -> bool {
        constant_time::verify_slices_are_equal(&self.hash(key), stored).is_ok()
    }

    /// Seals `plaintext` (a client secret or refresh token) under `key` for
    /// the record `key_id`: `version (1) || nonce (12) || ciphertext || tag (16)`.
    pub fn seal(&self, key: &str, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let aead = self.sealing_key(key)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut in_out = plaintext.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key_id.as_bytes()),
            &mut in_out,
        )
        .map_err(|_| CryptoError::Derive)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// Opens what [`KeyCrypto::seal`] sealed under the same `key` and
    /// `key_id`. The plaintext must be UTF-8.
    pub fn open(&self, key: &str, key_id: &str, sealed: &[u8]) -> Result<Secret, CryptoError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(CryptoError::Open);
        };
        if version != SEAL_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let aead = self.sealing_key(key)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = aead
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut in_out)
            .map_err(|_| CryptoError::Open)?;
        let text = std::str::from_utf8(plaintext).map_err(|_| CryptoError::Open)?;
        Ok(Secret::new(text))
    }

    /// AES-256-GCM key = HKDF-SHA-256(ikm = API key, salt = server secret,
    /// info = "keygate api-key secret v1").
    fn sealing_key(&self, key: &str) -> Result<LessSafeKey, CryptoError> {
        let mut bytes = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, &self.server_secret)
            .extract(key.as_bytes())
            .expand(&[SEAL_INFO], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| CryptoError::Derive)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CryptoError::Derive)?;
        Ok(LessSafeKey::new(unbound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SERVER: &[u8] = b"0123456789abcdef0123456789abcdef-server";

    fn key(kind: KeyKind) -> String {
        generate(kind).unwrap().expose().to_owned()
    }

    /// Builds a key from a prefix and random part with a correct checksum.
    fn with_checksum(prefix: &str, random: &str) -> String {
        let body = format!("{prefix}{random}");
        let crc = encode_checksum(crc32fast::hash(body.as_bytes()));
        format!("{body}{crc}")
    }

    #[test]
    fn generate_parse_round_trip_both_kinds() {
        for kind in [KeyKind::Service, KeyKind::Personal] {
            let k = key(kind);
            assert_eq!(k.len(), KEY_LEN);
            assert!(k.starts_with(kind.prefix()));
            assert_eq!(parse(&k), Ok(kind));
            assert!(has_key_prefix(&k));
            assert_eq!(display_prefix(&k), k[..8]);
        }
    }

    #[test]
    fn ten_thousand_keys_are_distinct_and_parse() {
        let mut seen = HashSet::new();
        for i in 0..10_000 {
            let kind = if i % 2 == 0 {
                KeyKind::Service
            } else {
                KeyKind::Personal
            };
            let k = key(kind);
            assert_eq!(parse(&k), Ok(kind), "{k}");
            assert!(seen.insert(k));
        }
    }

    #[test]
    fn random_part_uses_the_whole_alphabet_roughly_evenly() {
        let mut counts = [0u32; 62];
        for _ in 0..2_000 {
            let k = key(KeyKind::Service);
            for b in k[PREFIX_LEN..PREFIX_LEN + RANDOM_LEN].bytes() {
                let i = BASE62.iter().position(|&c| c == b).unwrap();
                counts[i] += 1;
            }
        }
        // 64,000 draws, ~1032 per symbol; a biased generator (e.g. modulo
        // over 256) would skew the first 8 symbols by ~25%.
        for (i, &c) in counts.iter().enumerate() {
            assert!((850..1220).contains(&c), "symbol {i} drawn {c} times");
        }
    }

    #[test]
    fn checksum_is_fixed_width_and_zero_padded() {
        assert_eq!(encode_checksum(0), "000000");
        assert_eq!(encode_checksum(61), "00000z");
        assert_eq!(encode_checksum(62), "000010");
        assert_eq!(encode_checksum(u32::MAX).len(), CHECKSUM_LEN);
    }

    #[test]
    fn rejects_one_changed_character() {
        let k = key(KeyKind::Personal);
        for pos in PREFIX_LEN..KEY_LEN {
            let mut bytes = k.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(
                parse(&changed),
                Err(KeyFormatError::BadChecksum),
                "position {pos}"
            );
        }
    }

    #[test]
    fn rejects_a_swapped_pair() {
        let k = key(KeyKind::Service);
        let mut refused = 0;
        let mut tried = 0;
        for pos in PREFIX_LEN..KEY_LEN - 1 {
            let mut bytes = k.clone().into_bytes();
            if bytes[pos] == bytes[pos + 1] {
                continue;
            }
            bytes.swap(pos, pos + 1);
            tried += 1;
            if parse(&String::from_utf8(bytes).unwrap()).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, tried);
    }

    #[test]
    fn rejects_a_truncated_or_extended_key() {
        let k = key(KeyKind::Personal);
        assert_eq!(parse(&k[..KEY_LEN - 1]), Err(KeyFormatError::WrongShape));
        assert_eq!(parse(&k[..20]), Err(KeyFormatError::WrongShape));
        assert_eq!(parse(""), Err(KeyFormatError::WrongShape));
        assert_eq!(parse(&format!("{k}0")), Err(KeyFormatError::WrongShape));
    }

    #[test]
    fn rejects_wrong_prefix() {
        let random = "a".repeat(RANDOM_LEN);
        for prefix in ["kgx_", "KGS_", "kgs-", "ghp_", "eyJh"] {
            let candidate = with_checksum(prefix, &random);
            assert_eq!(
                parse(&candidate),
                Err(KeyFormatError::WrongShape),
                "{prefix}"
            );
            assert!(!has_key_prefix(&candidate));
        }
    }

    #[test]
    fn rejects_non_base62_characters() {
        let k = key(KeyKind::Service);
        for bad in ['-', '_', '+', '/', '=', ' ', '.', 'é'] {
            let mut chars: Vec<char> = k.chars().collect();
            chars[10] = bad;
            let candidate: String = chars.into_iter().collect();
            assert_eq!(
                parse(&candidate),
                Err(KeyFormatError::WrongShape),
                "{bad:?}"
            );
        }
        // A non-ASCII character of the same byte length is still refused.
        let mut chars: Vec<char> = k.chars().collect();
        chars.truncate(KEY_LEN - 2);
        chars.push('é');
        assert!(parse(&chars.into_iter().collect::<String>()).is_err());
    }

    #[test]
    fn checksum_covers_the_prefix() {
        let random = "Q".repeat(RANDOM_LEN);
        let personal = with_checksum("kgp_", &random);
        assert_eq!(parse(&personal), Ok(KeyKind::Personal));
        let relabelled = format!("kgs_{}", &personal[PREFIX_LEN..]);
        assert_eq!(parse(&relabelled), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn errors_never_echo_the_candidate() {
        let k = key(KeyKind::Personal);
        let mut bytes = k.clone().into_bytes();
        bytes[KEY_LEN - 1] = if bytes[KEY_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        let bad = String::from_utf8(bytes).unwrap();
        for e in [parse(&bad).unwrap_err(), parse(&k[..30]).unwrap_err()] {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(&k[PREFIX_LEN..12]), "{text}");
        }
    }

    #[test]
    fn has_key_prefix_tells_keys_from_jwts() {
        assert!(has_key_prefix("kgs_anything"));
        assert!(has_key_prefix("kgp_"));
        assert!(!has_key_prefix("eyJhbGciOiJSUzI1NiJ9.e30.sig"));
        assert!(!has_key_prefix("kg"));
        assert!(!has_key_prefix(""));
    }

    #[test]
    fn display_prefix_is_eight_characters() {
        assert_eq!(display_prefix("kgp_abcdefgh"), "kgp_abcd");
        assert_eq!(display_prefix("kgp_"), "kgp_");
        assert_eq!(display_prefix("kgp_ééééé"), "kgp_éééé");
    }

    #[test]
    fn short_server_secret_is_refused() {
        let err = KeyCrypto::new(&[1u8; 31]).unwrap_err();
        assert_eq!(err, CryptoError::ServerSecretTooShort(31));
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        assert!(KeyCrypto::new(&[]).is_err());
        assert!(KeyCrypto::new(&[1u8; 32]).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let text = format!("{crypto:?}");
        assert_eq!(text, "KeyCrypto([redacted])");
        assert_eq!(
            format!("{:?}", generate(KeyKind::Service).unwrap()),
            "[redacted]"
        );
    }

    #[test]
    fn hash_is_stable() {
        let k = key(KeyKind::Service);
        let a = KeyCrypto::new(SERVER).unwrap();
        let b = KeyCrypto::new(SERVER).unwrap();
        assert_eq!(a.hash(&k), a.hash(&k));
        assert_eq!(a.hash(&k), b.hash(&k));
    }

    #[test]
    fn hash_is_keyed_by_the_server_secret() {
        let k = key(KeyKind::Service);
        let a = KeyCrypto::new(SERVER).unwrap();
        let b = KeyCrypto::new(b"another-server-secret-of-32-bytes!!").unwrap();
        assert_ne!(a.hash(&k), b.hash(&k));
        assert!(!b.hash_matches(&k, &a.hash(&k)));
        // Not a plain SHA-256 of the key.
        let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k.as_bytes());
        assert_ne!(a.hash(&k).as_slice(), plain.as_ref());
    }

    #[test]
    fn hash_matches_rejects_a_different_key() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Personal);
        let other = key(KeyKind::Personal);
        let stored = crypto.hash(&k);
        assert!(crypto.hash_matches(&k, &stored));
        assert!(!crypto.hash_matches(&other, &stored));
        assert!(!crypto.hash_matches(&k, &stored[..31]));
        assert!(!crypto.hash_matches(&k, &[]));
    }

    #[test]
    fn seal_open_round_trip() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Service);
        for plaintext in ["svc-reporting-secret", "", "ünïcödé refresh token"] {
            let sealed = crypto.seal(&k, "id-1", plaintext.as_bytes()).unwrap();
            assert_eq!(sealed[0], SEAL_VERSION);
            assert_eq!(sealed.len(), 1 + NONCE_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(
                crypto.open(&k, "id-1", &sealed).unwrap().expose(),
                plaintext
            );
        }
    }

    #[test]
    fn open_fails_with_another_api_key() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let sealed = crypto
            .seal(&key(KeyKind::Service), "id-1", b"secret")
            .unwrap();
        let err = crypto
            .open(&key(KeyKind::Service), "id-1", &sealed)
            .unwrap_err();
        assert_eq!(err, CryptoError::Open);
    }

    #[test]
    fn open_fails_with_another_server_secret() {
        let k = key(KeyKind::Personal);
        let a = KeyCrypto::new(SERVER).unwrap();
        let b = KeyCrypto::new(b"another-server-secret-of-32-bytes!!").unwrap();
        let sealed = a.seal(&k, "id-1", b"refresh").unwrap();
        assert_eq!(b.open(&k, "id-1", &sealed).unwrap_err(), CryptoError::Open);
    }

    #[test]
    fn open_fails_with_another_key_id() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Personal);
        let sealed = crypto.seal(&k, "id-1", b"refresh").unwrap();
        assert_eq!(
            crypto.open(&k, "id-2", &sealed).unwrap_err(),
            CryptoError::Open
        );
        assert_eq!(crypto.open(&k, "", &sealed).unwrap_err(), CryptoError::Open);
    }

    #[test]
    fn open_fails_on_any_flipped_bit() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Service);
        let sealed = crypto.seal(&k, "id-1", b"client-secret").unwrap();
        for byte in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = sealed.clone();
                tampered[byte] ^= bit;
                assert!(crypto.open(&k, "id-1", &tampered).is_err(), "byte {byte}");
            }
        }
    }

    #[test]
    fn open_fails_on_a_truncated_blob() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Service);
        let sealed = crypto.seal(&k, "id-1", b"client-secret").unwrap();
        for len in 0..sealed.len() {
            assert_eq!(
                crypto.open(&k, "id-1", &sealed[..len]).unwrap_err(),
                CryptoError::Open,
                "length {len}"
            );
        }
    }

    #[test]
    fn open_refuses_non_utf8_plaintext() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Service);
        let sealed = crypto.seal(&k, "id-1", &[0xff, 0xfe]).unwrap();
        assert_eq!(
            crypto.open(&k, "id-1", &sealed).unwrap_err(),
            CryptoError::Open
        );
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let k = key(KeyKind::Service);
        let a = crypto.seal(&k, "id-1", b"same").unwrap();
        let b = crypto.seal(&k, "id-1", b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
    }
}
