//! Envelope-free field encryption with AES-256-GCM and a rotating keyring.
//!
//! Text form of a ciphertext: `<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`. The key id travels
//! with the ciphertext, so after a rotation (new key first in `BILLING_ENCRYPTION_KEYS`) old
//! rows still decrypt. The bill id and the field name are bound as associated data: a
//! ciphertext copied to another bill or another column fails to decrypt. Every failure is
//! closed and typed; no error ever carries plaintext.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::fmt;
use uuid::Uuid;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a keyring could not be built or a value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("BILLING_ENCRYPTION_KEYS is empty: set it to kid:base64(32 random bytes)[,kid:...], e.g. k1:$(openssl rand -base64 32)")]
    NoKeys,
    #[error(
        "BILLING_ENCRYPTION_KEYS entry {index} is not of the form kid:base64(32 bytes): {reason}"
    )]
    BadKeySpec { index: usize, reason: String },
    #[error("BILLING_ENCRYPTION_KEYS names key id '{0}' twice")]
    DuplicateKeyId(String),
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext was encrypted with unknown key id '{0}'")]
    UnknownKeyId(String),
    #[error("ciphertext failed authentication (tampered, or bound to another bill or field)")]
    Tampered,
}

/// The keys that decrypt; the first one also encrypts.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Parses `kid:base64(32 bytes)[,kid:base64(32 bytes)...]`.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (index, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let bad = |reason: &str| CryptoError::BadKeySpec {
                index,
                reason: reason.to_owned(),
            };
            let (kid, b64) = entry.split_once(':').ok_or_else(|| bad("missing ':'"))?;
            if kid.is_empty()
                || kid.len() > 32
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad("key id must be 1-32 characters of [A-Za-z0-9_-]"));
            }
            let bytes = B64
                .decode(b64.trim())
                .map_err(|_| bad("key is not valid base64"))?;
            if bytes.len() != 32 {
                return Err(bad("key must decode to exactly 32 bytes"));
            }
            if keys.iter().any(|(id, _)| id == kid) {
                return Err(CryptoError::DuplicateKeyId(kid.to_owned()));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad("bad key length"))?;
            keys.push((kid.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// A keyring with one fresh random key, for tests and the local demo.
    pub fn generate_spec(kid: &str) -> String {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        format!("{kid}:{}", B64.encode(key))
    }

    /// The id of the key that encrypts.
    pub fn primary_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Encrypts `plaintext` for `field` of bill `bill_id` with the primary key.
    pub fn encrypt(&self, bill_id: Uuid, field: &str, plaintext: &str) -> String {
        let (kid, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(bill_id, field);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        let mut out = String::with_capacity(kid.len() + 1 + blob.len() * 4 / 3 + 4);
        out.push_str(kid);
        out.push(':');
        B64.encode_string(&blob, &mut out);
        out
    }

    /// Decrypts a value produced by [`Keyring::encrypt`] for the same bill and field.
    pub fn decrypt(&self, bill_id: Uuid, field: &str, text: &str) -> Result<String, CryptoError> {
        let (kid, b64) = text.split_once(':').ok_or(CryptoError::Malformed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, c)| c)
            .ok_or_else(|| CryptoError::UnknownKeyId(kid.chars().take(32).collect()))?;
        let blob = B64.decode(b64).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let aad = associated_data(bill_id, field);
        let pt = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Malformed)
    }
}

fn associated_data(bill_id: Uuid, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 1 + field.len());
    aad.extend_from_slice(bill_id.as_bytes());
    aad.push(b'|');
    aad.extend_from_slice(field.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    #[test]
    fn round_trip_and_key_id_is_stored_with_the_ciphertext() {
        let k = ring(&Keyring::generate_spec("k1"));
        let bill = Uuid::now_v7();
        let ct = k.encrypt(bill, "email", "jane@example.com");
        assert!(ct.starts_with("k1:"));
        assert!(!ct.contains("jane"));
        assert_eq!(k.decrypt(bill, "email", &ct).unwrap(), "jane@example.com");
    }

    #[test]
    fn same_plaintext_encrypts_differently_each_time() {
        let k = ring(&Keyring::generate_spec("k1"));
        let bill = Uuid::now_v7();
        assert_ne!(
            k.encrypt(bill, "email", "x@y.z"),
            k.encrypt(bill, "email", "x@y.z")
        );
    }

    #[test]
    fn tampering_with_any_byte_is_detected() {
        let k = ring(&Keyring::generate_spec("k1"));
        let bill = Uuid::now_v7();
        let ct = k.encrypt(bill, "phone", "+821012345678");
        let (kid, b64) = ct.split_once(':').unwrap();
        let blob = B64.decode(b64).unwrap();
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            let text = format!("{kid}:{}", B64.encode(&t));
            assert_eq!(
                k.decrypt(bill, "phone", &text),
                Err(CryptoError::Tampered),
                "byte {i}"
            );
        }
    }

    #[test]
    fn ciphertext_is_bound_to_its_bill_and_field() {
        let k = ring(&Keyring::generate_spec("k1"));
        let bill = Uuid::now_v7();
        let ct = k.encrypt(bill, "email", "jane@example.com");
        assert_eq!(
            k.decrypt(Uuid::now_v7(), "email", &ct),
            Err(CryptoError::Tampered)
        );
        assert_eq!(k.decrypt(bill, "phone", &ct), Err(CryptoError::Tampered));
    }

    #[test]
    fn unknown_key_id_fails_closed() {
        let old = ring(&Keyring::generate_spec("old"));
        let other = ring(&Keyring::generate_spec("other"));
        let bill = Uuid::now_v7();
        let ct = old.encrypt(bill, "name", "Jane");
        assert_eq!(
            other.decrypt(bill, "name", &ct),
            Err(CryptoError::UnknownKeyId("old".into()))
        );
    }

    #[test]
    fn malformed_ciphertexts_are_rejected() {
        let k = ring(&Keyring::generate_spec("k1"));
        let bill = Uuid::now_v7();
        for bad in ["", "nocolon", "k1:!!!", "k1:AAAA"] {
            assert_eq!(
                k.decrypt(bill, "name", bad),
                Err(CryptoError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn rotation_keeps_old_keys_decrypting_and_encrypts_with_the_new_one() {
        let old_spec = Keyring::generate_spec("2025");
        let old = ring(&old_spec);
        let bill = Uuid::now_v7();
        let before = old.encrypt(bill, "email", "kim@example.kr");
        let rotated = ring(&format!("{},{}", Keyring::generate_spec("2026"), old_spec));
        assert_eq!(
            rotated.decrypt(bill, "email", &before).unwrap(),
            "kim@example.kr"
        );
        let after = rotated.encrypt(bill, "email", "kim@example.kr");
        assert!(after.starts_with("2026:"));
        assert_eq!(rotated.primary_key_id(), "2026");
    }

    #[test]
    fn bad_key_specs_say_what_to_fix() {
        assert_eq!(Keyring::parse("").unwrap_err(), CryptoError::NoKeys);
        assert!(matches!(
            Keyring::parse("k1"),
            Err(CryptoError::BadKeySpec { .. })
        ));
        assert!(matches!(
            Keyring::parse("k1:c2hvcnQ="),
            Err(CryptoError::BadKeySpec { .. })
        ));
        assert!(matches!(
            Keyring::parse("bad id:AAAA"),
            Err(CryptoError::BadKeySpec { .. })
        ));
        let spec = Keyring::generate_spec("k1");
        assert_eq!(
            Keyring::parse(&format!("{spec},{spec}")).unwrap_err(),
            CryptoError::DuplicateKeyId("k1".into())
        );
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let k = ring(&Keyring::generate_spec("k1"));
        let s = format!("{k:?}");
        assert!(s.contains("k1"));
        assert!(!s.contains("Aes"));
    }
}
