//! Browser-session state sealed into cookies.
//!
//! A [`SessionState`] (the provider's tokens plus what keygate needs to manage
//! the session) is serialised to JSON and sealed with AES-256-GCM under the
//! `encryption-key` ([`CookieSealer`]). The sealed form is
//! `version (1) || nonce (12) || ciphertext || tag (16)`, encoded as base64url
//! without padding; the additional authenticated data is the cookie name
//! followed by the version byte, so a value cannot be replayed under another
//! cookie name. Anything that does not open cleanly — tampering, truncation, a
//! wrong key or name, bad base64 or JSON — is [`SessionError::Invalid`], which
//! callers turn into a 401 or a login redirect, never a 500.
//!
//! Sealed values larger than one cookie comfortably holds are split into
//! chunks of at most [`CHUNK`] bytes, sent as cookies `name`, `name-1`,
//! `name-2`, … ([`set_cookie_headers`]) and reassembled from the request's
//! `Cookie` headers ([`read_cookie`]). Every cookie is `Path=/; HttpOnly;
//! SameSite=Lax`, plus `Secure` when `secure-cookie` is on.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use keygate_core::Secret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest value, in bytes, of one session cookie chunk. With the name and the
/// attributes a `Set-Cookie` stays under the 4096 bytes browsers accept.
pub const CHUNK: usize = 3800;

/// Version byte of the sealed format; part of the AAD as well.
const SEAL_VERSION: u8 = 1;

/// Length of the AES-GCM authentication tag.
const TAG_LEN: usize = 16;

/// Length of the AES-256 key.
const KEY_LEN: usize = 32;

/// Fewest distinct byte values accepted in the 32 bytes of key material: random
/// keys have about 30; repeated bytes or short repeated patterns are refused.
const MIN_DISTINCT_KEY_BYTES: usize = 8;

/// What the key error message tells the operator to do.
const KEY_ADVICE: &str = "the encryption-key must be exactly 32 random bytes, given raw or as \
     44-character base64, 43-character base64url or 64-character hex; \
     generate one with `openssl rand -base64 32`";

/// What a browser session holds (sealed into cookies or, later, stored
/// server-side).
///
/// Note that the derived `Serialize` writes the tokens as `[redacted]` (that is
/// what [`Secret`] serialises to); [`CookieSealer`] serialises the real values
/// itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionState {
    /// The access token forwarded upstream as the bearer token.
    pub access_token: Secret,
    /// The refresh token, when the provider issued one.
    pub refresh_token: Option<Secret>,
    /// The ID token, kept for `id_token_hint` at logout.
    pub id_token: Option<Secret>,
    /// The user's `sub`.
    pub subject: String,
    /// The provider's session id (`sid`), for back-channel logout.
    pub sid: Option<String>,
    /// When the access token expires (Unix seconds).
    pub access_expires_at: u64,
    /// When the whole session ends (Unix seconds), bounded by the refresh
    /// token's lifetime.
    pub session_expires_at: u64,
    /// When the user logged in (Unix milliseconds; 0 for sessions sealed
    /// before keygate recorded it): a back-channel logout of the user ends
    /// the sessions that began before it, not later ones.
    pub created_at_ms: u64,
    /// keygate's own random id of this login (empty for sessions sealed
    /// before keygate gave them one): a logout remembers it, so that no
    /// copy of the session's cookie opens the session again.
    #[serde(default)]
    pub id: String,
    /// Not part of the sealed state: the last logout check that found this
    /// session not ended (see [`LogoutCheck`]).
    #[serde(skip)]
    pub logout_checked: LogoutCheck,
}

/// Memo of a logout check: the generation of the set of ended sessions at
/// which this session was last found not ended. The keeper of that set
/// raises the generation after each logout it adds, so a session checked at
/// the current generation needs no new lookups. A copy (a refreshed
/// session) starts unchecked.
#[derive(Debug)]
pub struct LogoutCheck(std::sync::atomic::AtomicU64);

impl LogoutCheck {
    const NEVER: u64 = u64::MAX;

    /// Whether the session was found not ended at `generation`.
    pub fn is(&self, generation: u64) -> bool {
        generation != Self::NEVER && self.0.load(std::sync::atomic::Ordering::Acquire) == generation
    }

    /// Records that the session was found not ended at `generation`.
    pub fn set(&self, generation: u64) {
        self.0
            .store(generation, std::sync::atomic::Ordering::Release);
    }
}

impl Default for LogoutCheck {
    fn default() -> Self {
        LogoutCheck(std::sync::atomic::AtomicU64::new(Self::NEVER))
    }
}

impl Clone for LogoutCheck {
    fn clone(&self) -> Self {
        LogoutCheck::default()
    }
}

/// The plaintext form inside the sealed cookie, with the secrets as plain
/// strings. Only built inside [`CookieSealer::seal`] and [`CookieSealer::open`].
#[derive(Serialize, Deserialize)]
struct SealedState {
    #[serde(rename = "at")]
    access_token: String,
    #[serde(rename = "rt", default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(rename = "it", default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(rename = "sub")]
    subject: String,
    #[serde(rename = "sid", default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(rename = "aexp")]
    access_expires_at: u64,
    #[serde(rename = "sexp")]
    session_expires_at: u64,
    #[serde(rename = "cms", default)]
    created_at_ms: u64,
    #[serde(rename = "jti", default, skip_serializing_if = "String::is_empty")]
    id: String,
}

impl SealedState {
    fn from_state(state: &SessionState) -> Self {
        SealedState {
            access_token: state.access_token.expose().to_owned(),
            refresh_token: state.refresh_token.as_ref().map(|s| s.expose().to_owned()),
            id_token: state.id_token.as_ref().map(|s| s.expose().to_owned()),
            subject: state.subject.clone(),
            sid: state.sid.clone(),
            access_expires_at: state.access_expires_at,
            session_expires_at: state.session_expires_at,
            created_at_ms: state.created_at_ms,
            id: state.id.clone(),
        }
    }

    fn into_state(self) -> SessionState {
        SessionState {
            access_token: Secret::new(self.access_token),
            refresh_token: self.refresh_token.map(Secret::new),
            id_token: self.id_token.map(Secret::new),
            subject: self.subject,
            sid: self.sid,
            access_expires_at: self.access_expires_at,
            session_expires_at: self.session_expires_at,
            created_at_ms: self.created_at_ms,
            id: self.id,
            logout_checked: LogoutCheck::default(),
        }
    }
}

/// Errors of session sealing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The encryption key is not 32 bytes of usable key material.
    #[error("weak encryption-key: {0}")]
    WeakKey(String),
    /// The cookie value did not open: tampered, truncated, sealed with another
    /// key or for another cookie, or not a session at all.
    #[error("invalid session cookie")]
    Invalid,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

/// Seals and opens [`SessionState`]s with AES-256-GCM under the
/// `encryption-key`.
pub struct CookieSealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieSealer([redacted])")
    }
}

impl CookieSealer {
    /// Builds a sealer from `encryption_key`: exactly 32 bytes of key
    /// material, given as the raw 32 bytes, 44-character standard base64,
    /// 43-character base64url (unpadded) or 64-character hex. Surrounding
    /// whitespace of an encoded key is ignored. Anything else, or key material
    /// with too few distinct bytes (such as all zeros), is
    /// [`SessionError::WeakKey`].
    pub fn new(encryption_key: &[u8]) -> Result<Self, SessionError> {
        let trimmed = encryption_key.trim_ascii();
        let material = decode_key(encryption_key)
            .or_else(|| {
                // Whitespace around an encoded key (a trailing newline from a
                // file), never around raw key bytes.
                matches!(trimmed.len(), 43 | 44 | 64)
                    .then(|| decode_key(trimmed))
                    .flatten()
            })
            .ok_or_else(|| {
                SessionError::WeakKey(format!(
                    "got {} bytes that are not 32 bytes of key material; {KEY_ADVICE}",
                    encryption_key.len()
                ))
            })?;
        let mut distinct = [false; 256];
        for b in material.iter() {
            distinct[usize::from(*b)] = true;
        }
        if distinct.iter().filter(|seen| **seen).count() < MIN_DISTINCT_KEY_BYTES {
            return Err(SessionError::WeakKey(format!(
                "the key material is too regular to be random; {KEY_ADVICE}"
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &material)
            .map_err(|_| SessionError::WeakKey(KEY_ADVICE.to_owned()))?;
        Ok(CookieSealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Seals `state` for the cookie `cookie_name`: JSON, AES-256-GCM with a
    /// random nonce and AAD `cookie_name || version`, then
    /// `version || nonce || ciphertext || tag` as base64url without padding.
    pub fn seal(&self, state: &SessionState, cookie_name: &str) -> Result<String, SessionError> {
        let json = serde_json::to_vec(&SealedState::from_state(state))
            .map_err(|_| SessionError::Invalid)?;
        self.seal_bytes(json, cookie_name)
    }

    /// Opens a value sealed by [`CookieSealer::seal`] with the same key for
    /// the same `cookie_name`. Any failure is [`SessionError::Invalid`].
    pub fn open(&self, value: &str, cookie_name: &str) -> Result<SessionState, SessionError> {
        let plaintext = self.open_bytes(value, cookie_name)?;
        let sealed: SealedState =
            serde_json::from_slice(&plaintext).map_err(|_| SessionError::Invalid)?;
        Ok(sealed.into_state())
    }

    /// Seals any serializable value (e.g. a pending login) for `cookie_name`.
    pub fn seal_json<T: Serialize>(
        &self,
        value: &T,
        cookie_name: &str,
    ) -> Result<String, SessionError> {
        let json = serde_json::to_vec(value).map_err(|_| SessionError::Invalid)?;
        self.seal_bytes(json, cookie_name)
    }

    /// Opens a value sealed by [`CookieSealer::seal_json`].
    pub fn open_json<T: DeserializeOwned>(
        &self,
        value: &str,
        cookie_name: &str,
    ) -> Result<T, SessionError> {
        let plaintext = self.open_bytes(value, cookie_name)?;
        serde_json::from_slice(&plaintext).map_err(|_| SessionError::Invalid)
    }

    fn seal_bytes(&self, mut in_out: Vec<u8>, cookie_name: &str) -> Result<String, SessionError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SessionError::Random)?;
        let aad = aad(cookie_name);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut in_out,
            )
            .map_err(|_| SessionError::Invalid)?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        blob.push(SEAL_VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&in_out);
        Ok(URL_SAFE_NO_PAD.encode(blob))
    }

    fn open_bytes(&self, value: &str, cookie_name: &str) -> Result<Vec<u8>, SessionError> {
        let blob = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| SessionError::Invalid)?;
        let Some((&version, rest)) = blob.split_first() else {
            return Err(SessionError::Invalid);
        };
        if version != SEAL_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SessionError::Invalid);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SessionError::Invalid)?;
        let aad = aad(cookie_name);
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut in_out)
            .map_err(|_| SessionError::Invalid)?;
        Ok(plaintext.to_vec())
    }
}

/// AAD: the cookie name followed by the version byte.
fn aad(cookie_name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(cookie_name.len() + 1);
    aad.extend_from_slice(cookie_name.as_bytes());
    aad.push(SEAL_VERSION);
    aad
}

/// The 32 bytes of key material in `key`, by its length: raw (32), standard
/// or URL-safe base64 padded (44) or unpadded (43), hex (64).
fn decode_key(key: &[u8]) -> Option<[u8; KEY_LEN]> {
    let bytes = match key.len() {
        KEY_LEN => key.to_vec(),
        44 => STANDARD
            .decode(key)
            .or_else(|_| URL_SAFE.decode(key))
            .ok()?,
        43 => URL_SAFE_NO_PAD
            .decode(key)
            .or_else(|_| STANDARD_NO_PAD.decode(key))
            .ok()?,
        64 => keygate_core::encoding::hex_decode(std::str::from_utf8(key).ok()?)?,
        _ => return None,
    };
    bytes.try_into().ok()
}

/// Whether `name` is an RFC 6265 cookie name (an RFC 2616 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

/// Name of chunk `index`: `name` for 0, `name-{index}` after.
fn chunk_name(name: &str, index: usize) -> String {
    if index == 0 {
        name.to_owned()
    } else {
        format!("{name}-{index}")
    }
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}")
}

/// Splits a sealed value into cookies `name`, `name-1`, `name-2`, … each
/// value at most [`CHUNK`] bytes, and returns the `Set-Cookie` header values
/// (`name=…; Path=/; HttpOnly; SameSite=Lax; Max-Age=N`, plus `; Secure` when
/// `secure`). `previous_chunks` is how many chunks the request carried (the
/// count [`read_cookie`] returns): the chunk names among those that the new
/// value no longer uses get clearing headers (`Max-Age=0`).
pub fn set_cookie_headers(
    name: &str,
    sealed: &str,
    max_age_secs: u64,
    secure: bool,
    previous_chunks: usize,
) -> Vec<String> {
    debug_assert!(
        is_token(name),
        "cookie name {name:?} is not an RFC 6265 token"
    );
    debug_assert!(
        sealed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "sealed cookie values are base64url"
    );
    let mut chunks = Vec::new();
    let mut rest = sealed;
    loop {
        let mut end = rest.len().min(CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        chunks.push(chunk);
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
    let mut headers: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| set_cookie(&chunk_name(name, i), chunk, max_age_secs, secure))
        .collect();
    headers.extend(
        (chunks.len()..previous_chunks).map(|i| set_cookie(&chunk_name(name, i), "", 0, secure)),
    );
    headers
}

/// `Set-Cookie` values that delete `name` and `name-1` … `name-{chunks}`.
/// Passing the count [`read_cookie`] returned clears every chunk the request
/// carried (and one spare name, which is harmless).
pub fn clear_cookie_headers(name: &str, chunks: usize, secure: bool) -> Vec<String> {
    debug_assert!(
        is_token(name),
        "cookie name {name:?} is not an RFC 6265 token"
    );
    (0..=chunks)
        .map(|i| set_cookie(&chunk_name(name, i), "", 0, secure))
        .collect()
}

/// Reassembles a chunked cookie value from a request's `Cookie` header values
/// (all of them; each `a=b; c=d`). Returns `None` when `name` is absent;
/// otherwise the value of `name` followed by `name-1`, `name-2`, … up to the
/// first missing index, and how many chunks were found. When a name occurs
/// more than once, its first occurrence counts.
pub fn read_cookie<'a>(
    cookie_headers: &[&'a str],
    name: &str,
) -> Option<(std::borrow::Cow<'a, str>, usize)> {
    // One pass over the headers, pair by pair (`;` found with memchr: a
    // session cookie is kilobytes long and usually in one piece, then
    // borrowed, not copied). Chunks `name-1`, `name-2`, … are noted as they
    // come, in any order; the first occurrence of a name counts.
    let mut first: Option<&'a str> = None;
    let mut chunks: Vec<(usize, &'a str)> = Vec::new();
    for header in cookie_headers {
        let bytes = header.as_bytes();
        let mut start = 0;
        for end in memchr::memchr_iter(b';', bytes).chain(std::iter::once(bytes.len())) {
            let pair = &header[start..end];
            start = end + 1;
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let Some(rest) = k.trim().strip_prefix(name) else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            if rest.is_empty() {
                first.get_or_insert(v);
            } else if let Some(index) = rest
                .strip_prefix('-')
                .filter(|n| !n.starts_with(['0', '+']))
                .and_then(|n| n.parse::<usize>().ok())
                && !chunks.iter().any(|(i, _)| *i == index)
            {
                chunks.push((index, v));
            }
        }
    }
    let first = first?;
    let chunk = |index: usize| chunks.iter().find(|(i, _)| *i == index).map(|(_, v)| *v);
    let Some(second) = chunk(1) else {
        return Some((std::borrow::Cow::Borrowed(first), 1));
    };
    let mut value = String::with_capacity(first.len() * 2);
    value.push_str(first);
    value.push_str(second);
    let mut count = 2;
    while let Some(next) = chunk(count) {
        value.push_str(next);
        count += 1;
    }
    Some((std::borrow::Cow::Owned(value), count))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NAME: &str = "kg_session";

    fn random_key() -> [u8; 32] {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).unwrap();
        key
    }

    fn sealer() -> CookieSealer {
        CookieSealer::new(&random_key()).unwrap()
    }

    fn state() -> SessionState {
        SessionState {
            access_token: Secret::new("access.token.value"),
            refresh_token: Some(Secret::new("refresh.token.value")),
            id_token: Some(Secret::new("id.token.value")),
            subject: "user-123".to_owned(),
            sid: Some("sid-456".to_owned()),
            access_expires_at: 1_700_000_300,
            session_expires_at: 1_700_036_000,
            created_at_ms: 1_700_000_000_000,
            id: "login-789".to_owned(),
            logout_checked: LogoutCheck::default(),
        }
    }

    fn assert_same(a: &SessionState, b: &SessionState) {
        assert_eq!(a.access_token.expose(), b.access_token.expose());
        assert_eq!(
            a.refresh_token.as_ref().map(Secret::expose),
            b.refresh_token.as_ref().map(Secret::expose)
        );
        assert_eq!(
            a.id_token.as_ref().map(Secret::expose),
            b.id_token.as_ref().map(Secret::expose)
        );
        assert_eq!(a.subject, b.subject);
        assert_eq!(a.sid, b.sid);
        assert_eq!(a.access_expires_at, b.access_expires_at);
        assert_eq!(a.session_expires_at, b.session_expires_at);
        assert_eq!(a.created_at_ms, b.created_at_ms);
        assert_eq!(a.id, b.id);
    }

    fn large_state() -> SessionState {
        let mut s = state();
        s.access_token = Secret::new("a".repeat(10 * 1024));
        s
    }

    /// Value of a `Set-Cookie` header as `name=value` (for building a request
    /// `Cookie` header).
    fn pair(header: &str) -> &str {
        header.split(';').next().unwrap()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let sealer = sealer();
        let sealed = sealer.seal(&state(), NAME).unwrap();
        assert!(
            sealed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_same(&sealer.open(&sealed, NAME).unwrap(), &state());

        let mut minimal = state();
        minimal.refresh_token = None;
        minimal.id_token = None;
        minimal.sid = None;
        let sealed = sealer.seal(&minimal, NAME).unwrap();
        assert_same(&sealer.open(&sealed, NAME).unwrap(), &minimal);
    }

    #[test]
    fn sealed_value_hides_tokens_and_nonce_varies() {
        let sealer = sealer();
        let a = sealer.seal(&state(), NAME).unwrap();
        let b = sealer.seal(&state(), NAME).unwrap();
        assert_ne!(a, b);
        let blob = URL_SAFE_NO_PAD.decode(&a).unwrap();
        let text = String::from_utf8_lossy(&blob);
        assert!(!text.contains("access.token.value"));
        assert!(!text.contains("user-123"));
    }

    #[test]
    fn tampered_byte_anywhere_is_invalid() {
        let sealer = sealer();
        let sealed = sealer.seal(&state(), NAME).unwrap();
        let blob = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..blob.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[i] ^= flip;
                let value = URL_SAFE_NO_PAD.encode(&bad);
                assert!(
                    matches!(sealer.open(&value, NAME), Err(SessionError::Invalid)),
                    "byte {i} flipped by {flip:#x} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_value_is_invalid() {
        let sealer = sealer();
        let sealed = sealer.seal(&state(), NAME).unwrap();
        let blob = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for len in 0..blob.len() {
            let value = URL_SAFE_NO_PAD.encode(&blob[..len]);
            assert!(matches!(
                sealer.open(&value, NAME),
                Err(SessionError::Invalid)
            ));
        }
        for len in 0..sealed.len() {
            assert!(matches!(
                sealer.open(&sealed[..len], NAME),
                Err(SessionError::Invalid)
            ));
        }
    }

    #[test]
    fn wrong_key_is_invalid() {
        let sealed = sealer().seal(&state(), NAME).unwrap();
        assert!(matches!(
            sealer().open(&sealed, NAME),
            Err(SessionError::Invalid)
        ));
    }

    #[test]
    fn value_sealed_for_another_cookie_name_is_invalid() {
        let sealer = sealer();
        let sealed = sealer.seal(&state(), "other_cookie").unwrap();
        assert!(matches!(
            sealer.open(&sealed, NAME),
            Err(SessionError::Invalid)
        ));
        assert!(sealer.open(&sealed, "other_cookie").is_ok());
    }

    #[test]
    fn garbage_and_empty_values_are_invalid() {
        let sealer = sealer();
        for value in [
            "",
            "!!!not base64!!!",
            "a",
            "AAAA",
            "abc=",
            "////++++",
            "A".repeat(200).as_str(),
            "\u{1F600}",
            "eyJhbGciOiJIUzI1NiJ9.e30.sig",
        ] {
            assert!(
                matches!(sealer.open(value, NAME), Err(SessionError::Invalid)),
                "{value:?} was accepted"
            );
        }
    }

    #[test]
    fn valid_ciphertext_of_bad_json_is_invalid() {
        // Seal non-session plaintext with the right key and name by hand.
        let key = random_key();
        let sealer = CookieSealer::new(&key).unwrap();
        let nonce = [7u8; NONCE_LEN];
        let mut in_out = b"{\"not\":\"a session\"}".to_vec();
        sealer
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(NAME).as_slice()),
                &mut in_out,
            )
            .unwrap();
        let mut blob = vec![SEAL_VERSION];
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&in_out);
        let value = URL_SAFE_NO_PAD.encode(blob);
        assert!(matches!(
            sealer.open(&value, NAME),
            Err(SessionError::Invalid)
        ));
    }

    #[test]
    fn weak_keys_are_rejected() {
        let random = random_key();
        let cases: Vec<Vec<u8>> = vec![
            random[..16].to_vec(),
            random[..31].to_vec(),
            [random.as_slice(), &[1]].concat(),
            vec![0u8; 32],
            vec![b'x'; 32],
            b"abcdabcdabcdabcdabcdabcdabcdabcd".to_vec(),
            b"password".to_vec(),
            Vec::new(),
            STANDARD.encode(&random[..16]).into_bytes(),
            STANDARD.encode([0u8; 32]).into_bytes(),
            "g".repeat(64).into_bytes(),
            "00".repeat(32).into_bytes(),
            STANDARD
                .encode([random.as_slice(), &[1]].concat())
                .into_bytes(),
        ];
        for key in cases {
            match CookieSealer::new(&key) {
                Err(SessionError::WeakKey(message)) => {
                    assert!(message.contains("openssl rand -base64 32"), "{message}");
                    assert!(message.contains("32"), "{message}");
                }
                other => panic!("key {key:?} not rejected: {other:?}"),
            }
        }
    }

    #[test]
    fn accepted_encodings_of_one_key_behave_the_same() {
        let key = random_key();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let encodings: Vec<Vec<u8>> = vec![
            key.to_vec(),
            STANDARD.encode(key).into_bytes(),
            URL_SAFE_NO_PAD.encode(key).into_bytes(),
            hex.clone().into_bytes(),
            hex.to_uppercase().into_bytes(),
            format!("  {}\n", STANDARD.encode(key)).into_bytes(),
        ];
        let sealers: Vec<CookieSealer> = encodings
            .iter()
            .map(|e| CookieSealer::new(e).unwrap())
            .collect();
        for sealing in &sealers {
            let sealed = sealing.seal(&state(), NAME).unwrap();
            for opening in &sealers {
                assert_same(&opening.open(&sealed, NAME).unwrap(), &state());
            }
        }
    }

    #[test]
    fn debug_output_is_redacted() {
        let key = [
            0x42u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
            23, 24, 25, 26, 27, 28, 29, 30, 31,
        ];
        let sealer = CookieSealer::new(&key).unwrap();
        assert_eq!(format!("{sealer:?}"), "CookieSealer([redacted])");
        let shown = format!("{:?}", state());
        assert!(!shown.contains("access.token.value"));
        assert!(!shown.contains("refresh.token.value"));
    }

    #[test]
    fn large_state_chunks_and_reassembles() {
        let sealer = sealer();
        let sealed = sealer.seal(&large_state(), NAME).unwrap();
        let headers = set_cookie_headers(NAME, &sealed, 3600, true, 0);
        assert!(headers.len() >= 3, "{} chunks", headers.len());
        for (i, header) in headers.iter().enumerate() {
            let (cookie_name, value) = pair(header).split_once('=').unwrap();
            assert_eq!(cookie_name, chunk_name(NAME, i));
            assert!(value.len() <= CHUNK);
            assert!(header.len() < 4096);
            assert!(header.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"));
        }

        // One Cookie header, with other cookies around and chunks out of order.
        let mut pairs: Vec<&str> = headers.iter().map(|h| pair(h)).collect();
        pairs.reverse();
        let single = format!("theme=dark; {}; lang=en", pairs.join("; "));
        let (value, count) = read_cookie(&[&single], NAME).unwrap();
        assert_eq!(count, headers.len());
        assert_eq!(value, sealed);
        assert_same(&sealer.open(&value, NAME).unwrap(), &large_state());

        // One Cookie header per chunk.
        let several: Vec<&str> = headers.iter().map(|h| pair(h)).collect();
        let (value, count) = read_cookie(&several, NAME).unwrap();
        assert_eq!(count, headers.len());
        assert_eq!(value, sealed);
    }

    #[test]
    fn small_state_is_one_cookie() {
        let sealed = sealer().seal(&state(), NAME).unwrap();
        let headers = set_cookie_headers(NAME, &sealed, 60, false, 0);
        assert_eq!(headers.len(), 1);
        assert_eq!(
            headers[0],
            format!("{NAME}={sealed}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60")
        );
        assert_eq!(
            read_cookie(&[&format!("{NAME}={sealed}")], NAME),
            Some((sealed.into(), 1))
        );
    }

    #[test]
    fn missing_middle_chunk_truncates_and_fails_cleanly() {
        let sealer = sealer();
        let sealed = sealer.seal(&large_state(), NAME).unwrap();
        let headers = set_cookie_headers(NAME, &sealed, 3600, true, 0);
        assert!(headers.len() >= 3);
        let kept: Vec<&str> = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, h)| pair(h))
            .collect();
        let joined = kept.join("; ");
        let (value, count) = read_cookie(&[&joined], NAME).unwrap();
        assert_eq!(count, 1);
        assert!(value.len() < sealed.len());
        assert!(matches!(
            sealer.open(&value, NAME),
            Err(SessionError::Invalid)
        ));
    }

    #[test]
    fn absent_cookie_reads_as_none() {
        assert_eq!(read_cookie(&[], NAME), None);
        assert_eq!(read_cookie(&["other=1; kg_session-1=abc"], NAME), None);
        assert_eq!(read_cookie(&["kg_session_x=1; x_kg_session=2"], NAME), None);
        assert_eq!(read_cookie(&["garbage; ;=; kg"], NAME), None);
    }

    #[test]
    fn read_cookie_takes_first_duplicate_and_unquotes() {
        let got = read_cookie(
            &["kg_session=\"abc\"", "kg_session=zzz; kg_session-1=def"],
            NAME,
        );
        assert_eq!(got, Some(("abcdef".into(), 2)));
    }

    #[test]
    fn read_cookie_takes_chunks_by_their_exact_names_only() {
        // Not chunks: a leading zero or sign, a suffix, another prefix.
        let got = read_cookie(
            &["kg_session-01=x; kg_session-+1=x; kg_session-1x=x; x-kg_session-1=x; kg_session=a"],
            NAME,
        );
        assert_eq!(got, Some(("a".into(), 1)));
        // Chunks in any order and header, stopping at the first gap.
        let got = read_cookie(
            &[
                "kg_session-2=c; kg_session-4=e",
                "kg_session=a;kg_session-1=b",
            ],
            NAME,
        );
        assert_eq!(got, Some(("abc".into(), 3)));
    }

    #[test]
    fn clear_headers_have_max_age_zero() {
        let headers = clear_cookie_headers(NAME, 2, false);
        assert_eq!(
            headers,
            vec![
                format!("{NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
                format!("{NAME}-1=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
                format!("{NAME}-2=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
            ]
        );
    }

    #[test]
    fn secure_flag_present_iff_secure() {
        let sealed = sealer().seal(&large_state(), NAME).unwrap();
        for secure in [true, false] {
            let all = set_cookie_headers(NAME, &sealed, 10, secure, 8)
                .into_iter()
                .chain(clear_cookie_headers(NAME, 3, secure));
            for header in all {
                assert_eq!(header.contains("; Secure"), secure, "{header}");
                assert!(header.contains("; HttpOnly"));
                assert!(header.contains("; SameSite=Lax"));
                assert!(header.contains("; Path=/"));
            }
        }
    }

    #[test]
    fn previous_chunk_leftovers_are_cleared() {
        let sealed = sealer().seal(&state(), NAME).unwrap();
        let headers = set_cookie_headers(NAME, &sealed, 600, true, 4);
        assert_eq!(headers.len(), 4);
        assert!(headers[0].starts_with(&format!("{NAME}={sealed};")));
        assert!(headers[0].contains("Max-Age=600"));
        for (i, header) in headers.iter().enumerate().skip(1) {
            assert_eq!(
                *header,
                format!("{NAME}-{i}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure")
            );
        }
        // Fewer previous chunks than the new value uses: nothing extra.
        let big = sealer().seal(&large_state(), NAME).unwrap();
        let n = set_cookie_headers(NAME, &big, 600, true, 0).len();
        let again = set_cookie_headers(NAME, &big, 600, true, 2);
        assert_eq!(again.len(), n);
        assert!(again.iter().all(|h| !h.contains("Max-Age=0")));
    }

    #[test]
    fn token_check_matches_rfc6265() {
        assert!(is_token("kg_session"));
        assert!(is_token("__Host-kg"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a=b"));
        assert!(!is_token("a;b"));
        assert!(!is_token("ä"));
    }
}
