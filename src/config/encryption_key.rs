//! The `[storage]` encryption key (`encryption_key_file` /
//! `encryption_key_env`) as parsed from its text. The config reads and
//! validates it; the store's `seal.rs` encrypts with it.

/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit storage key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; KEY_LEN]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> EncryptionKey {
        EncryptionKey(bytes)
    }

    /// The key material, for the cipher (`store::seal`) alone.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parse the text of a key file or variable: 64 hex digits, or standard
    /// base64 (padding optional) of exactly 32 bytes; surrounding whitespace
    /// (a trailing newline) is ignored. The message never echoes the input.
    pub fn parse(text: &str) -> Result<EncryptionKey, String> {
        use base64::Engine;
        let t = text.trim();
        if t.is_empty() {
            return Err("is empty; expected 32 bytes as 64 hex digits or base64".into());
        }
        let bytes = if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|_| "is not valid hex".to_string())?
        } else {
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            engine.decode(t).map_err(|_| {
                format!(
                    "is neither 64 hex digits nor base64 ({} characters); generate one with `openssl rand -base64 32`",
                    t.chars().count()
                )
            })?
        };
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "decodes to {} bytes; expected exactly {KEY_LEN} (`openssl rand -base64 32`)",
                bytes.len()
            )
        })?;
        Ok(EncryptionKey(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn keys_parse_from_hex_or_base64_only_at_32_bytes() {
        let hex = "00".repeat(31) + "ff";
        let mut want = [0u8; KEY_LEN];
        want[31] = 0xff;
        assert_eq!(
            EncryptionKey::parse(&format!("{hex}\n")).unwrap(),
            EncryptionKey(want)
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        assert_eq!(EncryptionKey::parse(&b64).unwrap(), key(5));
        assert_eq!(
            EncryptionKey::parse(b64.trim_end_matches('=')).unwrap(),
            key(5)
        );
        let short = base64::engine::general_purpose::STANDARD.encode([5u8; 16]);
        let e = EncryptionKey::parse(&short).unwrap_err();
        assert!(e.contains("16 bytes"), "{e}");
        assert!(EncryptionKey::parse("").is_err());
        let e = EncryptionKey::parse("not a key at all!").unwrap_err();
        assert!(!e.contains("not a key"), "never echoes the input: {e}");
        assert!(!format!("{:?}", key(5)).contains('5'));
    }
}
