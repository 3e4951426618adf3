//! The secret an API key record stores: the client secret (service keys) or
//! the offline refresh token (personal keys), sealed under the API key
//! itself with [`KeyCrypto::seal`], so the store alone opens nothing.
//!
//! A personal key's secret is also sealed under the server secret alone
//! (the *revocation envelope*): revoking a key revokes its offline session
//! at the provider without the user's key, and the offline-session
//! keep-alive refreshes it.
//!
//! Encoding: `version (1) || len(by_key) (u32, big-endian) || by_key ||
//! by_server?`.

use crate::apikey::{CryptoError, KeyCrypto};
use keygate_core::Secret;

/// The pseudo-key the revocation envelope is sealed under (with the server
/// secret, as every seal is).
const REVOCATION_KEY: &str = "keygate-revocation-envelope-v1";

const VERSION: u8 = 1;

/// A record's stored secret, as sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret {
    by_key: Vec<u8>,
    by_server: Option<Vec<u8>>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("revocable", &self.by_server.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredSecret {
    /// Seals `secret` for the record `key_id` under `key`; with `revocable`
    /// (personal keys) also under the server secret alone.
    pub fn seal(
        crypto: &KeyCrypto,
        key: &str,
        key_id: &str,
        secret: &[u8],
        revocable: bool,
    ) -> Result<Self, CryptoError> {
        let by_key = crypto.seal(key, key_id, secret)?;
        let by_server = match revocable {
            true => Some(crypto.seal(REVOCATION_KEY, key_id, secret)?),
            false => None,
        };
        Ok(StoredSecret { by_key, by_server })
    }

    /// Opens the copy sealed under `key`.
    pub fn open(&self, crypto: &KeyCrypto, key: &str, key_id: &str) -> Result<Secret, CryptoError> {
        crypto.open(key, key_id, &self.by_key)
    }

    /// Opens the copy sealed under the server secret alone (personal keys).
    pub fn open_for_revocation(
        &self,
        crypto: &KeyCrypto,
        key_id: &str,
    ) -> Result<Secret, CryptoError> {
        let sealed = self.by_server.as_deref().ok_or(CryptoError::Open)?;
        crypto.open(REVOCATION_KEY, key_id, sealed)
    }

    /// The same copy under the key, and `secret` (a rotated refresh token)
    /// as the revocation envelope: what the keep-alive, which has no key,
    /// can store.
    pub fn with_revocation(
        &self,
        crypto: &KeyCrypto,
        key_id: &str,
        secret: &[u8],
    ) -> Result<Self, CryptoError> {
        Ok(StoredSecret {
            by_key: self.by_key.clone(),
            by_server: Some(crypto.seal(REVOCATION_KEY, key_id, secret)?),
        })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let extra = self.by_server.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(5 + self.by_key.len() + extra);
        out.push(VERSION);
        out.extend_from_slice(&(self.by_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.by_key);
        if let Some(s) = &self.by_server {
            out.extend_from_slice(s);
        }
        out
    }

    /// Reads the stored form; [`CryptoError::Open`] when it is malformed.
    pub fn decode(blob: &[u8]) -> Result<Self, CryptoError> {
        let (&version, rest) = blob.split_first().ok_or(CryptoError::Open)?;
        if version != VERSION || rest.len() < 4 {
            return Err(CryptoError::Open);
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err(CryptoError::Open);
        }
        let (by_key, by_server) = rest.split_at(len);
        Ok(StoredSecret {
            by_key: by_key.to_vec(),
            by_server: (!by_server.is_empty()).then(|| by_server.to_vec()),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apikey::generate;
    use keygate_core::keys::KeyKind;

    const SERVER: &[u8] = b"0123456789abcdef0123456789abcdef-server";

    #[test]
    fn round_trip_with_and_without_revocation() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let key = generate(KeyKind::Personal).unwrap();
        let key = key.expose();
        let stored = StoredSecret::seal(&crypto, key, "id-1", b"refresh-1", true).unwrap();
        let read = StoredSecret::decode(&stored.encode()).unwrap();
        assert_eq!(read, stored);
        assert_eq!(
            read.open(&crypto, key, "id-1").unwrap().expose(),
            "refresh-1"
        );
        assert_eq!(
            read.open_for_revocation(&crypto, "id-1").unwrap().expose(),
            "refresh-1"
        );
        // Another record's id, another key: nothing opens.
        assert!(read.open(&crypto, key, "id-2").is_err());
        assert!(read.open_for_revocation(&crypto, "id-2").is_err());
        let other = generate(KeyKind::Personal).unwrap();
        assert!(read.open(&crypto, other.expose(), "id-1").is_err());

        let rotated = read.with_revocation(&crypto, "id-1", b"refresh-2").unwrap();
        assert_eq!(
            rotated.open(&crypto, key, "id-1").unwrap().expose(),
            "refresh-1"
        );
        assert_eq!(
            rotated
                .open_for_revocation(&crypto, "id-1")
                .unwrap()
                .expose(),
            "refresh-2"
        );

        let service = StoredSecret::seal(&crypto, key, "id-3", b"client-secret", false).unwrap();
        let service = StoredSecret::decode(&service.encode()).unwrap();
        assert!(service.open_for_revocation(&crypto, "id-3").is_err());
        assert!(!format!("{service:?}").contains("client-secret"));
    }

    #[test]
    fn truncated_or_unknown_versions_are_refused() {
        let crypto = KeyCrypto::new(SERVER).unwrap();
        let key = generate(KeyKind::Service).unwrap();
        let blob = StoredSecret::seal(&crypto, key.expose(), "id", b"s", true)
            .unwrap()
            .encode();
        assert!(StoredSecret::decode(&blob[..4]).is_err());
        assert!(StoredSecret::decode(&[]).is_err());
        assert!(StoredSecret::decode(&[2, 0, 0, 0, 0]).is_err());
        // A length past the end.
        assert!(StoredSecret::decode(&[1, 0, 0, 0, 9, 1]).is_err());
        // One byte of the sealed copy changed: decodes, but does not open.
        let mut altered = blob.clone();
        altered[10] ^= 1;
        let altered = StoredSecret::decode(&altered).unwrap();
        assert!(altered.open(&crypto, key.expose(), "id").is_err());
    }
}
