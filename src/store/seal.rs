//! Encryption at rest for the stored values that can hold credentials: job
//! specs (request headers incl. `Authorization`, bodies), job results,
//! webhook URLs and payloads, webhook secrets and idempotency responses.
//!
//! Why a whole module for a few lines of crypto: the *format* is the contract
//! with every database ezthrottle ever wrote, so it lives in one place.
//!
//! A sealed value is `MAGIC (4) || VERSION (1) || nonce (12) || ciphertext+tag`,
//! ChaCha20-Poly1305 (RustCrypto `chacha20poly1305`, 256-bit key) with a fresh
//! random 96-bit nonce per value and the column it belongs to as associated
//! data, so a value cannot be moved to another column unnoticed. The magic
//! prefix starts with a NUL byte, which no stored text value (JSON, URLs,
//! secrets) and no HTTP header block starts with: that is how values written
//! before a key was configured (plaintext) stay readable.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::config::EncryptionKey;

/// Marks a sealed value.
pub const MAGIC: &[u8; 4] = b"\0EZS";
/// Format version after the magic.
pub const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed with another key, or modified.
    #[error(
        "cannot decrypt a stored value (wrong storage.encryption_key, or the value was modified)"
    )]
    Decrypt,
    #[error("stored value is sealed with an unknown format version {0}")]
    Version(u8),
    #[error("stored value is truncated")]
    Truncated,
    #[error("stored value is encrypted but no storage.encryption_key is configured")]
    NoKey,
}

/// Seals and opens stored values with one key.
#[derive(Clone)]
pub struct Seal {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(<key redacted>)")
    }
}

/// Whether `value` carries the sealed-value prefix.
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

impl Seal {
    pub fn new(key: &EncryptionKey) -> Seal {
        Seal {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key.as_bytes())),
        }
    }

    /// Encrypt `plain` for the column `purpose` (associated data).
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: purpose.as_bytes(),
                },
            )
            // Only fails for messages beyond ~256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt a value made by [`Seal::seal`] for the same `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::Truncated)?;
        let (&version, rest) = rest.split_first().ok_or(SealError::Truncated)?;
        if version != VERSION {
            return Err(SealError::Version(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SealError::Decrypt)
    }
}

/// A stored value as read back: sealed values are opened, anything else is
/// a plaintext value written before a key was configured.
pub fn unseal(seal: Option<&Seal>, purpose: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
    if !is_sealed(stored) {
        return Ok(stored.to_vec());
    }
    match seal {
        Some(s) => s.open(purpose, stored),
        None => Err(SealError::NoKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let s = Seal::new(&key(7));
        let a = s.seal("jobs.spec", b"Authorization: Bearer sk_live_1");
        let b = s.seal("jobs.spec", b"Authorization: Bearer sk_live_1");
        assert!(is_sealed(&a));
        assert_ne!(a, b, "a nonce is never reused");
        assert!(!a.windows(7).any(|w| w == b"sk_live"));
        assert_eq!(
            s.open("jobs.spec", &a).unwrap(),
            b"Authorization: Bearer sk_live_1"
        );
        assert_eq!(s.open("jobs.spec", &s.seal("jobs.spec", b"")).unwrap(), b"");
    }

    #[test]
    fn tampering_wrong_key_and_wrong_column_are_errors() {
        let s = Seal::new(&key(7));
        let sealed = s.seal("jobs.spec", b"secret");
        for i in [HEADER_LEN, sealed.len() - 1, MAGIC.len() + 2] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(s.open("jobs.spec", &t), Err(SealError::Decrypt), "byte {i}");
        }
        let mut v = sealed.clone();
        v[MAGIC.len()] = 9;
        assert_eq!(s.open("jobs.spec", &v), Err(SealError::Version(9)));
        assert_eq!(
            s.open("jobs.spec", &sealed[..HEADER_LEN + 3]),
            Err(SealError::Truncated)
        );
        assert_eq!(
            Seal::new(&key(8)).open("jobs.spec", &sealed),
            Err(SealError::Decrypt)
        );
        assert_eq!(s.open("jobs.result", &sealed), Err(SealError::Decrypt));
    }

    #[test]
    fn plaintext_written_before_the_key_stays_readable() {
        let s = Seal::new(&key(1));
        assert_eq!(unseal(Some(&s), "x", b"{\"a\":1}").unwrap(), b"{\"a\":1}");
        assert_eq!(unseal(None, "x", b"plain").unwrap(), b"plain");
        let sealed = s.seal("x", b"v");
        assert_eq!(unseal(Some(&s), "x", &sealed).unwrap(), b"v");
        assert_eq!(unseal(None, "x", &sealed), Err(SealError::NoKey));
    }
}
